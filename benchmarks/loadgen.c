// SPDX-License-Identifier: MIT
/*
 * loadgen.c - the ping-pong and connection-rate load in C, for
 * benchmarks/compare: the same exchanges as workloads.py's pp_* and cr_*,
 * without a Python interpreter's time per message on both ends, so that the
 * stack between them is most of what is measured.
 *
 *   loadgen pp_server PORT SIZE          echo SIZE-byte messages, one client
 *   loadgen pp_client HOST PORT SIZE ROUNDS [WARMUP]
 *   loadgen cr_server PORT               accept, 1 byte in, 1 out, wait EOF
 *   loadgen cr_client HOST PORT SECONDS
 *
 * Servers listen on 127.0.0.1 (or on $LOADGEN_BIND, for the Podman bed's test
 * host), print "ready" and run until killed. Clients
 * print one JSON line (the same keys as workloads.py). Every socket wait is
 * bounded (5 s), every loop by a count or a deadline. This is a test tool:
 * it must not be built into slirpy, and it talks only to the address given.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdbool.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SIZE 65536
#define MAX_ROUNDS 10000000L
#define CR_SAMPLES 2000000L	/* connection times kept for percentiles */

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void set_timeouts(int fd)
{
	struct timeval tv = { .tv_sec = 5 };
	int one = 1;

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static struct sockaddr_in addr_of(const char *host, const char *port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };

	sa.sin_port = htons((uint16_t)atoi(port));
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
		fprintf(stderr, "bad address %s\n", host);
		exit(2);
	}
	return sa;
}

static int listen_on(const char *port)
{
	const char *bind_to = getenv("LOADGEN_BIND");
	struct sockaddr_in sa = addr_of(bind_to ? bind_to : "127.0.0.1", port);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	if (fd < 0)
		die("socket");
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 1024) < 0)
		die("listen");
	printf("ready\n");
	fflush(stdout);
	return fd;
}

/* Read (@out false) or write all @len bytes. Return: 1 done, 0 EOF or error. */
static int io_all(int fd, char *buf, size_t len, bool out)
{
	while (len) {
		ssize_t n = out ? write(fd, buf, len) : read(fd, buf, len);

		if (n <= 0)
			return 0;
		buf += n;
		len -= (size_t)n;
	}
	return 1;
}

static size_t size_arg(const char *s)
{
	long v = atol(s);

	if (v < 1 || v > MAX_SIZE) {
		fprintf(stderr, "size must be 1..%d\n", MAX_SIZE);
		exit(2);
	}
	return (size_t)v;
}

static int pp_server(const char *port, size_t size)
{
	static char buf[MAX_SIZE];
	int lfd = listen_on(port), fd = accept(lfd, NULL, NULL);

	if (fd < 0)
		die("accept");
	set_timeouts(fd);
	while (io_all(fd, buf, size, false) && io_all(fd, buf, size, true))
		;
	return 0;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static int pp_client(const char *host, const char *port, size_t size, long rounds,
		     long warmup)
{
	static char buf[MAX_SIZE];
	struct sockaddr_in sa = addr_of(host, port);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	double *rtt, sum = 0;
	long i;

	if (rounds < 1 || rounds > MAX_ROUNDS || warmup < 0 || warmup > MAX_ROUNDS) {
		fprintf(stderr, "rounds must be 1..%ld\n", MAX_ROUNDS);
		return 2;
	}
	rtt = calloc((size_t)rounds, sizeof(*rtt));
	if (fd < 0 || !rtt)
		die("socket");
	set_timeouts(fd);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		die("connect");
	memset(buf, 'x', size);
	for (i = -warmup; i < rounds; i++) {
		double t0 = now_s();

		if (!io_all(fd, buf, size, true) || !io_all(fd, buf, size, false))
			die("ping-pong");
		if (i >= 0)
			rtt[i] = (now_s() - t0) * 1e6;
	}
	for (i = 0; i < rounds; i++)
		sum += rtt[i];
	qsort(rtt, (size_t)rounds, sizeof(*rtt), cmp_double);
	printf("{\"rounds\": %ld, \"median_us\": %.3f, \"p99_us\": %.3f, \"mean_us\": %.3f}\n",
	       rounds, rtt[rounds / 2], rtt[rounds * 99 / 100], sum / (double)rounds);
	free(rtt);
	close(fd);
	return 0;
}

static _Noreturn void cr_server(const char *port)
{
	int lfd = listen_on(port);

	for (;;) {	/* killed by compare when the client is done */
		int fd = accept(lfd, NULL, NULL);
		char c;

		if (fd < 0)
			continue;
		set_timeouts(fd);
		if (read(fd, &c, 1) == 1 && c == 'q' && write(fd, "r", 1) == 1)
			(void)read(fd, &c, 1);	/* EOF: the client closes first */
		close(fd);
	}
}

/* Percentile @q (0..1) of the @n sorted samples in @v. */
static double pct(const float *v, long n, double q)
{
	return n ? (double)v[(long)((double)(n - 1) * q)] : 0.0;
}

static int cmp_float(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;

	return (x > y) - (x < y);
}

/*
 * cr_client - connections for @seconds, one at a time. Besides the rate it
 * prints the distribution of connect() times and of whole-connection times
 * (µs) and how many connections took over 0.9 s (a dropped SYN costs the
 * 1 s initial RTO), so that a slow run can be told apart: a few connections
 * that wait a second (retransmits) or all of them a little slower (CPU,
 * e.g. a port search in the stack's namespace).
 */
static int cr_client(const char *host, const char *port, double seconds)
{
	struct sockaddr_in sa = addr_of(host, port);
	double t0 = now_s(), deadline = t0 + seconds, elapsed;
	float *conn_us = calloc(CR_SAMPLES, sizeof(*conn_us));
	float *total_us = calloc(CR_SAMPLES, sizeof(*total_us));
	long ok = 0, errors = 0, n = 0, over_900ms = 0;

	if (!conn_us || !total_us)
		die("calloc");
	while (now_s() < deadline && ok + errors < MAX_ROUNDS) {
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		double c0 = now_s(), c1 = c0;
		char c = 0;

		if (fd < 0)
			die("socket");
		set_timeouts(fd);
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
		    (c1 = now_s(), write(fd, "q", 1) == 1) && read(fd, &c, 1) == 1 && c == 'r')
			ok++;
		else
			errors++;
		close(fd);
		if (now_s() - c0 > 0.9)
			over_900ms++;
		if (n < CR_SAMPLES) {
			conn_us[n] = (float)((c1 - c0) * 1e6);
			total_us[n++] = (float)((now_s() - c0) * 1e6);
		}
	}
	elapsed = now_s() - t0;
	qsort(conn_us, (size_t)n, sizeof(*conn_us), cmp_float);
	qsort(total_us, (size_t)n, sizeof(*total_us), cmp_float);
	printf("{\"ok\": %ld, \"errors\": %ld, \"elapsed\": %.6f, \"rate\": %.3f, "
	       "\"connect_p50_us\": %.1f, \"connect_p99_us\": %.1f, \"connect_max_us\": %.1f, "
	       "\"conn_p50_us\": %.1f, \"conn_p99_us\": %.1f, \"conn_max_us\": %.1f, "
	       "\"over_900ms\": %ld}\n",
	       ok, errors, elapsed, (double)ok / elapsed,
	       pct(conn_us, n, 0.5), pct(conn_us, n, 0.99), pct(conn_us, n, 1),
	       pct(total_us, n, 0.5), pct(total_us, n, 0.99), pct(total_us, n, 1), over_900ms);
	free(conn_us);
	free(total_us);
	return 0;
}

int main(int argc, char **argv)
{
	const char *role = argc > 1 ? argv[1] : "";

	if (!strcmp(role, "pp_server") && argc == 4)
		return pp_server(argv[2], size_arg(argv[3]));
	if (!strcmp(role, "pp_client") && (argc == 6 || argc == 7))
		return pp_client(argv[2], argv[3], size_arg(argv[4]), atol(argv[5]),
				 argc == 7 ? atol(argv[6]) : 200);
	if (!strcmp(role, "cr_server") && argc == 3)
		cr_server(argv[2]);
	if (!strcmp(role, "cr_client") && argc == 5)
		return cr_client(argv[2], argv[3], atof(argv[4]));
	fprintf(stderr, "usage: loadgen pp_server PORT SIZE | pp_client HOST PORT SIZE ROUNDS "
		"[WARMUP] | cr_server PORT | cr_client HOST PORT SECONDS\n");
	return 2;
}
