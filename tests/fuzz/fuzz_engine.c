// SPDX-License-Identifier: MIT
/*
 * fuzz_engine.c - libFuzzer harness for the slirpy C engine.
 *
 * Links every csrc .c file directly (no cffi, no Python) and drives the public API
 * (csrc/slirpy.h) the way Python does: an engine with no TAP, frames fed with
 * sl_engine_input_frame() under a fake clock, sl_engine_poll() after every
 * frame, the punt queue and the captured output drained, timers run at the
 * end with the clock far in the future.
 *
 * Input format (tests/fuzz/make_corpus.py writes seeds in it):
 *   byte 0: configuration bits
 *     0x01 virtio_net_hdr in front of every frame (vnet_hdr_len = 10)
 *     0x02 offload (GSO / partial checksum; only with 0x01)
 *     0x04 IPv6 enabled
 *     0x08 host loopback DISABLED (N+2 gives ENETUNREACH)
 *     0x10 DNS forwarding disabled
 *     0x60 MTU: 1500, 68, 9000, 65520
 *     0x80 port forwards: TCP and UDP listeners on loopback handed to the
 *          engine (guest 10.0.2.100 port 80 / 5353, or fd00::100 with
 *          0x04); a loopback client from port 40080 connects and one from
 *          40053 sends a datagram before the first frame is polled, so the
 *          engine's SYN and datagram toward the guest are what the frames
 *          answer
 *   then records until the input ends:
 *     2 bytes big-endian frame length (clipped to what is left)
 *     1 byte clock step: < 200 -> step * 10 ms; else (step - 199) * 30 s
 *     the frame bytes (virtio header included when 0x01 is set)
 *
 * Where the engine's sockets may go: nowhere but this process's own
 * loopback. LLVMFuzzerInitialize() moves the process into a new, empty
 * network namespace (only "lo", brought up here; no other interface, no
 * route) and refuses to run if it cannot. On top of that, connect() from the
 * engine is wrapped (-Wl,--wrap=connect in run.sh): any destination other than
 * 127.0.0.0/8 or ::1 fails with ENETUNREACH before reaching the kernel. Every
 * outbound engine socket (TCP, UDP, ping) is connect()ed before it sends, so
 * nothing the fuzzer writes can leave the machine.
 *
 * So that the TCP and UDP translation paths see real peers, the harness
 * listens on 127.0.0.1 and ::1 port 7777 (TCP: accept, write a 28-byte line
 * then 96 KiB, half-close; UDP: echo). The seed corpus aims at N+2:7777.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "slirpy.h"

#define FZ_PORT 7777
#define FZ_MAX_ACCEPTED 64
#define FZ_OUTBUF (65535 + 14 + 10 + 64)
#define FZ_START_NS (1000ULL * 1000000000ULL)

int __real_connect(int fd, const struct sockaddr *sa, socklen_t len);

/**
 * __wrap_connect() - let the engine connect only to loopback.
 * Return: what connect() returns, or -1/ENETUNREACH for any other address.
 */
int __wrap_connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	static const uint8_t lo6[16] = { [15] = 1 };

	if (sa->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
		const struct sockaddr_in *sin = (const void *)sa;

		if ((ntohl(sin->sin_addr.s_addr) >> 24) == 127)
			return __real_connect(fd, sa, len);
	} else if (sa->sa_family == AF_INET6 &&
		   len >= sizeof(struct sockaddr_in6)) {
		const struct sockaddr_in6 *sin6 = (const void *)sa;

		if (!memcmp(&sin6->sin6_addr, lo6, 16))
			return __real_connect(fd, sa, len);
	}
	errno = ENETUNREACH;
	return -1;
}

struct fz_peers {
	int tcp4, tcp6, udp4, udp6;
	int accepted[FZ_MAX_ACCEPTED];
	int naccepted;
};

static struct fz_peers peers = { -1, -1, -1, -1, { 0 }, 0 };

static int write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = write(fd, text, strlen(text));
	close(fd);
	return n == (ssize_t)strlen(text) ? 0 : -1;
}

/* Leave the machine's network: a fresh netns with only lo, up. */
static void isolate(void)
{
	struct ifreq ifr;
	int s;

	if (unshare(CLONE_NEWNET) < 0) {
		uid_t uid = getuid();
		gid_t gid = getgid();
		char map[64];

		if (unshare(CLONE_NEWUSER | CLONE_NEWNET) < 0) {
			perror("fuzz_engine: cannot create a network namespace");
			abort();
		}
		snprintf(map, sizeof(map), "0 %u 1", (unsigned)uid);
		write_file("/proc/self/uid_map", map);
		write_file("/proc/self/setgroups", "deny");
		snprintf(map, sizeof(map), "0 %u 1", (unsigned)gid);
		write_file("/proc/self/gid_map", map);
	}
	s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "lo");
	if (s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) < 0) {
		perror("fuzz_engine: SIOCGIFFLAGS lo");
		abort();
	}
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) {
		perror("fuzz_engine: SIOCSIFFLAGS lo");
		abort();
	}
	close(s);
}

static int peer_socket(int family, int type)
{
	struct sockaddr_in sin = { .sin_family = AF_INET,
				   .sin_port = htons(FZ_PORT),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6,
				     .sin6_port = htons(FZ_PORT),
				     .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	int one = 1;
	int fd = socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if ((family == AF_INET ?
		     bind(fd, (struct sockaddr *)&sin, sizeof(sin)) :
		     bind(fd, (struct sockaddr *)&sin6, sizeof(sin6))) < 0 ||
	    (type == SOCK_STREAM && listen(fd, 128) < 0)) {
		close(fd);
		return -1;
	}
	return fd;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	isolate();
	peers.tcp4 = peer_socket(AF_INET, SOCK_STREAM);
	peers.tcp6 = peer_socket(AF_INET6, SOCK_STREAM);
	peers.udp4 = peer_socket(AF_INET, SOCK_DGRAM);
	peers.udp6 = peer_socket(AF_INET6, SOCK_DGRAM);
	return 0;
}

/* Play the host side: accept and greet TCP clients, echo UDP. */
static void serve_peers(void)
{
	static const char hello[] = "hello from the fuzz harness\n";
	static uint8_t bulk[96 << 10];
	int ls[2] = { peers.tcp4, peers.tcp6 };
	int us[2] = { peers.udp4, peers.udp6 };
	uint8_t buf[2048];
	int i, k;

	for (i = 0; i < 2; i++) {
		for (k = 0; ls[i] >= 0 && k < 8; k++) {
			int c = accept4(ls[i], NULL, NULL,
					SOCK_NONBLOCK | SOCK_CLOEXEC);

			if (c < 0)
				break;
			if (send(c, hello, sizeof(hello) - 1, MSG_NOSIGNAL) < 0 ||
			    peers.naccepted == FZ_MAX_ACCEPTED) {
				close(c);
				continue;
			}
			/* Then more than a window's worth: host->guest
			 * segmentation, GSO, peek offsets, window stalls. */
			send(c, bulk, sizeof(bulk), MSG_NOSIGNAL | MSG_DONTWAIT);
			shutdown(c, SHUT_WR);
			peers.accepted[peers.naccepted++] = c;
		}
		for (k = 0; us[i] >= 0 && k < 8; k++) {
			struct sockaddr_in6 from;
			socklen_t flen = sizeof(from);
			ssize_t n = recvfrom(us[i], buf, sizeof(buf), 0,
					     (struct sockaddr *)&from, &flen);

			if (n < 0)
				break;
			sendto(us[i], buf, (size_t)n, MSG_NOSIGNAL,
			       (struct sockaddr *)&from, flen);
		}
	}
	/* Read what the engine forwarded so its sends never block. */
	for (i = 0; i < peers.naccepted; i++)
		while (recv(peers.accepted[i], buf, sizeof(buf), 0) > 0)
			;
}

#define FZ_FWD_TCP_CLIENT 40080
#define FZ_FWD_UDP_CLIENT 40053

struct fz_fwd {
	int tcp_client, udp_client;
};

/* A loopback socket bound to @port (and to 0 for the listeners). */
static int fwd_socket(int type, uint16_t port)
{
	struct sockaddr_in sin = { .sin_family = AF_INET,
				   .sin_port = htons(port),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	int one = 1;
	int fd = socket(AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	/* RST on close: no TIME-WAIT, the fixed client port is free again. */
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
	    (type == SOCK_STREAM && !port && listen(fd, 8) < 0)) {
		close(fd);
		return -1;
	}
	return fd;
}

static uint16_t local_port(int fd)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);

	if (getsockname(fd, (struct sockaddr *)&sin, &len) < 0)
		return 0;
	return ntohs(sin.sin_port);
}

/*
 * Hand the engine a TCP and a UDP listener (it owns them from then on) and
 * make a loopback client knock on each. Failures only mean less coverage.
 */
static void add_forwards(struct sl_engine *e, const struct sl_config *c,
			 struct fz_fwd *fw)
{
	static const uint8_t guest6[16] = { 0xfd, [14] = 0x01, [15] = 0x00 };
	const uint8_t *gaddr = c->ipv6 ? guest6 : c->guest4;
	int family = c->ipv6 ? 6 : 4;
	int lt = fwd_socket(SOCK_STREAM, 0), lu = fwd_socket(SOCK_DGRAM, 0);
	struct sockaddr_in to = { .sin_family = AF_INET,
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

	fw->tcp_client = fw->udp_client = -1;
	if (lt >= 0) {
		to.sin_port = htons(local_port(lt));
		if (sl_engine_add_listener(e, lt, SL_TCP, gaddr, family, 80,
					   1) < 0) {
			close(lt);
		} else {
			fw->tcp_client = fwd_socket(SOCK_STREAM,
						    FZ_FWD_TCP_CLIENT);
			if (fw->tcp_client >= 0)
				connect(fw->tcp_client,
					(struct sockaddr *)&to, sizeof(to));
		}
	}
	if (lu >= 0) {
		to.sin_port = htons(local_port(lu));
		if (sl_engine_add_listener(e, lu, SL_UDP, gaddr, family, 5353,
					   2) < 0) {
			close(lu);
		} else {
			fw->udp_client = fwd_socket(SOCK_DGRAM,
						    FZ_FWD_UDP_CLIENT);
			if (fw->udp_client >= 0)
				sendto(fw->udp_client, "knock", 5, 0,
				       (struct sockaddr *)&to, sizeof(to));
		}
	}
}

/* The forwarded clients read what the guest sent them, then go away. */
static void serve_forwards(const struct fz_fwd *fw)
{
	uint8_t buf[2048];

	if (fw->tcp_client >= 0)
		while (recv(fw->tcp_client, buf, sizeof(buf), 0) > 0)
			;
	if (fw->udp_client >= 0)
		while (recv(fw->udp_client, buf, sizeof(buf), 0) > 0)
			;
}

static void drain(struct sl_engine *e)
{
	static uint8_t out[FZ_OUTBUF];
	struct sl_event ev;
	int n;

	while (sl_engine_next_event(e, &ev) > 0)
		if (ev.len > SL_EVENT_DATA_MAX)
			abort();
	while ((n = sl_engine_take_output(e, out, sizeof(out))) != 0)
		if (n < 0)
			abort();	/* a frame larger than any frame can be */
}

/* FUZZ_DEBUG=1: show what an input reached (for checking seeds). */
static void print_counters(const struct sl_engine *e)
{
	uint64_t c[128];
	int i, n = sl_engine_counters(e, c, 128);

	for (i = 0; i < n; i++)
		if (c[i])
			fprintf(stderr, "  %s=%llu\n", sl_counter_name(i),
				(unsigned long long)c[i]);
}

static void make_config(struct sl_config *c, uint8_t bits)
{
	static const uint16_t mtus[4] = { 1500, 68, 9000, 65520 };
	static const uint8_t prefix6[16] = { 0xfd };	/* fd00::/64 */

	memset(c, 0, sizeof(*c));
	memcpy(c->net4, "\x0a\x00\x02\x00", 4);	/* 10.0.2.0/24 */
	c->prefix4 = 24;
	memcpy(c->gw4, "\x0a\x00\x02\x02", 4);
	memcpy(c->dns4, "\x0a\x00\x02\x03", 4);
	memcpy(c->guest4, "\x0a\x00\x02\x64", 4);
	c->ipv6 = !!(bits & 0x04);
	memcpy(c->prefix6, prefix6, 16);
	c->mtu = mtus[(bits >> 5) & 3];
	c->host_loopback = !(bits & 0x08);
	c->dns_enabled = !(bits & 0x10);
	c->dns_udp_port = FZ_PORT;
	c->dns_tcp_port = FZ_PORT;
	c->vnet_hdr_len = (bits & 0x01) ? 10 : 0;
	c->offload = (bits & 0x03) == 0x03;
	c->flow_events = !!(bits & 0x02);	/* slirpy run -v's flow events */
	/* Small caps: the fuzzer reaches them, and fds stay few. */
	c->max_tcp_flows = 32;
	c->max_udp_flows = 32;
	c->max_icmp_flows = 8;
	c->max_half_open = 16;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz_fwd fw = { -1, -1 };
	struct sl_config cfg;
	struct sl_engine *e;
	uint64_t now = FZ_START_NS;
	size_t off = 1;
	int i;

	if (size < 1)
		return 0;
	make_config(&cfg, data[0]);
	e = sl_engine_new(&cfg);
	if (!e)
		abort();
	if (data[0] & 0x80)
		add_forwards(e, &cfg, &fw);
	while (off + 3 <= size) {
		size_t len = ((size_t)data[off] << 8) | data[off + 1];
		uint8_t step = data[off + 2];

		off += 3;
		if (len > size - off)
			len = size - off;
		now += step < 200 ? step * 10000000ULL :
				    (uint64_t)(step - 199) * 30000000000ULL;
		if (sl_engine_input_frame(e, now, data + off, len) < 0)
			abort();
		off += len;
		drain(e);
		serve_peers();
		serve_forwards(&fw);
		sl_engine_poll(e, now, 64);
		drain(e);
	}
	/* Let the host side answer, then fire every timer there is. */
	serve_peers();
	sl_engine_poll(e, now, 64);
	drain(e);
	for (i = 1; i <= 4; i++) {
		now += (uint64_t)i * 3600 * 1000000000ULL;
		sl_engine_flush(e, now);
		sl_engine_poll(e, now, 64);
		drain(e);
	}
	if (getenv("FUZZ_DEBUG"))
		print_counters(e);
	sl_engine_free(e);
	if (fw.tcp_client >= 0)
		close(fw.tcp_client);
	if (fw.udp_client >= 0)
		close(fw.udp_client);
	for (i = 0; i < peers.naccepted; i++)
		close(peers.accepted[i]);
	peers.naccepted = 0;
	return 0;
}
