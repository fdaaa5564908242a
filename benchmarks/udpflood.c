// SPDX-License-Identifier: MIT
/*
 * udpflood.c - the UDP packets/s row of benchmarks/podman_bench.py: a sender
 * for the container (the image's busybox has no `nc -u`, and no libc, so
 * this is built statically on the machine and bind-mounted) and the
 * receiver that counts on the test host.
 *
 *   udpflood send HOST PORT SIZE COUNT SECONDS
 *       send at most COUNT datagrams of SIZE bytes to HOST:PORT, for at
 *       most SECONDS, as fast as the socket takes them; print one JSON line
 *       {"sent", "seconds", "errors"}
 *   udpflood recv PORT IDLE_MS MAX_SECONDS
 *       bind 0.0.0.0:PORT, print "ready", count datagrams until none came
 *       for IDLE_MS after the first one, or MAX_SECONDS in all; print one
 *       JSON line {"received", "bytes", "seconds"} where seconds runs from
 *       the first datagram to the last.
 *
 * Every loop is bounded by a count and a deadline. This is a test tool: it
 * must not be built into slirpy, and it sends only to the address given.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64		/* datagrams per sendmmsg/recvmmsg */
#define MAX_SIZE 65507
#define MAX_COUNT 1000000000L
#define RCVBUF (8 << 20)

/**
 * now_s() - CLOCK_MONOTONIC in seconds.
 */
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

/**
 * flood() - send up to @count datagrams of @size bytes for at most @seconds.
 * @host: IPv4 address of the receiver
 * @port: its UDP port
 * @size: payload bytes per datagram
 * @count: upper bound on datagrams
 * @seconds: upper bound on time
 *
 * Return: 0; the counts go to stdout as JSON.
 */
static int flood(const char *host, int port, size_t size, long count, double seconds)
{
	static char payload[MAX_SIZE];
	struct mmsghdr msgs[BATCH];
	struct iovec iov = { .iov_base = payload, .iov_len = size };
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(port) };
	long sent = 0, errors = 0;
	double t0, end;
	int fd, i;

	if (inet_pton(AF_INET, host, &to.sin_addr) != 1) {
		fprintf(stderr, "bad address %s\n", host);
		return 1;
	}
	fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0)
		die("socket");
	if (connect(fd, (struct sockaddr *)&to, sizeof(to)) < 0)
		die("connect");
	memset(msgs, 0, sizeof(msgs));
	for (i = 0; i < BATCH; i++) {
		msgs[i].msg_hdr.msg_iov = &iov;
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	t0 = now_s();
	end = t0 + seconds;
	while (sent < count && now_s() < end) {
		long want = count - sent < BATCH ? count - sent : BATCH;
		int n = sendmmsg(fd, msgs, (unsigned int)want, 0);

		if (n < 0) {
			/* ENOBUFS, or ECONNREFUSED from an ICMP error: not sent. */
			errors++;
			continue;
		}
		sent += n;
	}
	printf("{\"sent\": %ld, \"seconds\": %.6f, \"errors\": %ld}\n", sent, now_s() - t0,
	       errors);
	close(fd);
	return 0;
}

/**
 * count_in() - count datagrams on 0.0.0.0:@port until @idle_ms without one.
 * @port: UDP port to bind
 * @idle_ms: quiet time, after the first datagram, that ends the count
 * @max_seconds: upper bound on the whole wait
 *
 * Return: 0; the counts go to stdout as JSON.
 */
static int count_in(int port, int idle_ms, double max_seconds)
{
	static char bufs[BATCH][2048];
	struct mmsghdr msgs[BATCH];
	struct iovec iovs[BATCH];
	struct sockaddr_in me = { .sin_family = AF_INET, .sin_port = htons(port) };
	struct pollfd pfd;
	long received = 0, bytes = 0;
	double first = 0, last = 0, end = now_s() + max_seconds;
	int fd, i, rcvbuf = RCVBUF;

	fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	if (fd < 0)
		die("socket");
	/* SO_RCVBUFFORCE needs CAP_NET_ADMIN (the bed's root has it); else capped. */
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)) < 0)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	if (bind(fd, (struct sockaddr *)&me, sizeof(me)) < 0)
		die("bind");
	memset(msgs, 0, sizeof(msgs));
	for (i = 0; i < BATCH; i++) {
		iovs[i].iov_base = bufs[i];
		iovs[i].iov_len = sizeof(bufs[i]);
		msgs[i].msg_hdr.msg_iov = &iovs[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	printf("ready\n");
	fflush(stdout);
	pfd.fd = fd;
	pfd.events = POLLIN;
	while (now_s() < end) {
		int wait_ms = received ? idle_ms : 200;
		int n;

		if (poll(&pfd, 1, wait_ms) == 0) {
			if (received)
				break;
			continue;
		}
		n = recvmmsg(fd, msgs, BATCH, 0, NULL);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			die("recvmmsg");
		}
		last = now_s();
		if (!received)
			first = last;
		received += n;
		for (i = 0; i < n; i++)
			bytes += msgs[i].msg_len;
	}
	printf("{\"received\": %ld, \"bytes\": %ld, \"seconds\": %.6f}\n", received, bytes,
	       last - first);
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 7 && !strcmp(argv[1], "send")) {
		size_t size = strtoul(argv[4], NULL, 10);
		long count = strtol(argv[5], NULL, 10);

		if (size < 1 || size > MAX_SIZE || count < 1 || count > MAX_COUNT) {
			fprintf(stderr, "SIZE 1..%d, COUNT 1..%ld\n", MAX_SIZE, MAX_COUNT);
			return 2;
		}
		return flood(argv[2], atoi(argv[3]), size, count, atof(argv[6]));
	}
	if (argc == 5 && !strcmp(argv[1], "recv"))
		return count_in(atoi(argv[2]), atoi(argv[3]), atof(argv[4]));
	fprintf(stderr, "usage: udpflood send HOST PORT SIZE COUNT SECONDS\n"
		"       udpflood recv PORT IDLE_MS MAX_SECONDS\n");
	return 2;
}
