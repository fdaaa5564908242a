// SPDX-License-Identifier: MIT
/*
 * fuzz_engine.c - libFuzzer harness for the slirpy C engine.
 *
 * Links every csrc .c file directly (no cffi, no Python) and drives the public API
 * (csrc/slirpy.h) the way Python does: an engine with no TAP, frames fed with
 * sl_engine_input_frame() under a fake clock, sl_engine_poll() after every
 * frame, the punt queue and the captured output drained; when an engine is
 * retired, every timer is run with the clock far in the future.
 *
 * Input format (tests/fuzz/make_corpus.py writes seeds in it):
 *   byte 0: configuration bits
 *     0x01 virtio_net_hdr in front of every frame (vnet_hdr_len = 10)
 *     0x02 offload (GSO / partial checksum; only with 0x01)
 *     0x04 IPv6 enabled
 *     0x08 host loopback DISABLED (N+2 gives ENETUNREACH)
 *     0x10 DNS forwarding disabled
 *     0x18 (both) instead: shared-address mode (pasta's model, where those
 *          two settings do not apply): the guest owns 10.0.2.100 /
 *          fd00::100, ARP and NDP answer every other address with one MAC
 *          (9a:55:9a:55:9a:55), no RA when the MTU bits are 1500 or 68
 *          (pasta's --no-ra), inbound peers appear as 169.254.1.2 /
 *          fe80::1, and the address-map table has five entries (see
 *          shared_config()), all with loopback targets; every 16th input
 *          of such an engine clears the gateway's map, the next restores it
 *     0x60 MTU: 1500, 68, 9000, 65520
 *     0x80 port forwards: TCP and UDP listeners on loopback handed to the
 *          engine (guest 10.0.2.100 port 80 / 5353, or fd00::100 with
 *          0x04); at the start of every input a loopback client from
 *          port 40080 connects (the previous one is reset) and one from
 *          40053 sends a datagram, so the engine's SYN and datagram toward
 *          the guest are what the frames answer
 *   then records until the input ends:
 *     2 bytes big-endian frame length (clipped to what is left)
 *     1 byte clock step: < 200 -> step * 10 ms; else (step - 199) * 30 s
 *     the frame bytes (virtio header included when 0x01 is set)
 *
 * Persistent engines: an engine lives across inputs, so that flows, timers
 * and half-finished connections from earlier inputs meet the frames of later
 * ones (and so that an input costs no socket(), epoll_create() or timerfd
 * set-up). There is one engine per configuration byte in use (at most
 * FZ_SLOTS, the least recently used one is retired), each with its own fake
 * clock that only moves forward. An engine is retired (every timer run with
 * the clock hours ahead, then freed) after FUZZ_RECYCLE inputs (default
 * 1000), when its TCP table refused a SYN for being full, or when its history
 * file is full; the next input with that byte gets a new one.
 *
 * Environment:
 *   FUZZ_RECYCLE=N  inputs per engine (1 = a fresh engine per input, the
 *                   old behaviour: a crash then reproduces from one input)
 *   FUZZ_FRESH=1    same as FUZZ_RECYCLE=1
 *   FUZZ_HISTORY=DIR  every input an engine has seen since it was created is
 *                   kept in DIR/history-XX (XX: the configuration byte), a
 *                   memory-mapped file, so it survives a crash with no
 *                   syscall per input. Records: 4-byte little-endian length,
 *                   the input; a zero length ends it.
 *   FUZZ_REPLAY=1   each input given is such a history: a new engine is fed
 *                   every record in order, then retired. Reproduces a
 *                   finding that needed state from earlier inputs:
 *                     FUZZ_REPLAY=1 fuzz_engine DIR/history-XX
 *   FUZZ_DEBUG=1    print the engine's non-zero counters after each input
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
 * Egress policy: every engine starts with a policy that denies little the
 * seeds use (TCP ports 1-1023, UDP port 9, ICMP to 198.18.0.0/15, host
 * ports 7000-7099), so that refusals and the lookup run on every input;
 * every 16th input of an engine switches to the same policy plus a first
 * rule denying the host's port 7777 (closing the flows to the harness's
 * peers: RST, host socket reset) and the next one back (see set_policy()).
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
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "slirpy.h"

#define FZ_PORT 7777
#define FZ_MAX_ACCEPTED 64
#define FZ_OUTBUF (65535 + 14 + 10 + 64)
#define FZ_START_NS (1000ULL * 1000000000ULL)
#define FZ_SLOTS 32
#define FZ_RECYCLE 1000
#define FZ_HIST_BYTES (4u << 20)

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

/* What an epoll tag in the harness's own epoll names (high 32 bits). */
enum fz_tag { FZ_LISTEN = 1, FZ_UDP, FZ_ACCEPTED, FZ_FWD_CLIENT };

struct fz_peers {
	int tcp4, tcp6, udp4, udp6;
	int ep;			/* epoll over all the harness's sockets */
	int accepted[FZ_MAX_ACCEPTED];	/* a ring; -1 = empty */
	unsigned int next;
};

static struct fz_peers peers = { -1, -1, -1, -1, -1, { 0 }, 0 };

/* One engine per configuration byte in use. */
struct fz_slot {
	struct sl_engine *e;
	int bits;		/* the configuration byte; -1 = unused */
	uint64_t now;		/* its fake clock */
	uint32_t inputs;	/* inputs since it was created */
	uint64_t used;		/* LRU stamp */
	uint16_t fwd_tcp_port, fwd_udp_port;	/* its forward listeners */
	int tcp_client, udp_client;
	uint8_t *hist;		/* mapped DIR/history-XX, or NULL */
	size_t hist_len;
};

static struct {
	uint32_t recycle;
	bool replay, debug;
	const char *histdir;
	int c_flow_cap;		/* index of drop_flow_cap in the counters */
	uint64_t stamp;
	struct fz_slot slots[FZ_SLOTS];
} fz = { .recycle = FZ_RECYCLE, .c_flow_cap = -1 };

static void watch(int fd, enum fz_tag tag)
{
	struct epoll_event ev = {
		.events = EPOLLIN,
		.data.u64 = ((uint64_t)tag << 32) | (uint32_t)fd,
	};

	if (fd >= 0 && epoll_ctl(peers.ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		abort();
}

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
	const char *v;
	int i;

	(void)argc;
	(void)argv;
	isolate();
	peers.ep = epoll_create1(EPOLL_CLOEXEC);
	if (peers.ep < 0)
		abort();
	for (i = 0; i < FZ_MAX_ACCEPTED; i++)
		peers.accepted[i] = -1;
	peers.tcp4 = peer_socket(AF_INET, SOCK_STREAM);
	peers.tcp6 = peer_socket(AF_INET6, SOCK_STREAM);
	peers.udp4 = peer_socket(AF_INET, SOCK_DGRAM);
	peers.udp6 = peer_socket(AF_INET6, SOCK_DGRAM);
	watch(peers.tcp4, FZ_LISTEN);
	watch(peers.tcp6, FZ_LISTEN);
	watch(peers.udp4, FZ_UDP);
	watch(peers.udp6, FZ_UDP);
	for (i = 0; i < FZ_SLOTS; i++)
		fz.slots[i].bits = -1;
	v = getenv("FUZZ_RECYCLE");
	if (v && atoi(v) > 0)
		fz.recycle = (uint32_t)atoi(v);
	v = getenv("FUZZ_FRESH");
	if (v && *v && strcmp(v, "0"))
		fz.recycle = 1;
	v = getenv("FUZZ_REPLAY");
	fz.replay = v && *v && strcmp(v, "0");
	fz.debug = getenv("FUZZ_DEBUG") != NULL;
	v = getenv("FUZZ_HISTORY");
	fz.histdir = v && *v && !fz.replay ? v : NULL;
	for (i = 0; sl_counter_name(i); i++)
		if (!strcmp(sl_counter_name(i), "drop_flow_cap"))
			fz.c_flow_cap = i;
	return 0;
}

static void forget_accepted(int fd)
{
	int i;

	for (i = 0; i < FZ_MAX_ACCEPTED; i++)
		if (peers.accepted[i] == fd)
			peers.accepted[i] = -1;
	close(fd);
}

/* Keep @fd among the accepted connections; the oldest one makes room. */
static void keep_accepted(int fd)
{
	int *slot = &peers.accepted[peers.next];

	peers.next = (peers.next + 1) % FZ_MAX_ACCEPTED;
	if (*slot >= 0)
		close(*slot);
	*slot = fd;
	watch(fd, FZ_ACCEPTED);
}

/*
 * Play the host side: accept and greet TCP clients, echo UDP, read what the
 * engine forwarded so that its sends never block. One epoll_wait() when
 * nothing is ready, which is most frames.
 */
static void serve_peers(void)
{
	static const char hello[] = "hello from the fuzz harness\n";
	static uint8_t bulk[96 << 10];
	struct epoll_event evs[16];
	uint8_t buf[2048];
	int i, k, n = epoll_wait(peers.ep, evs, 16, 0);

	for (i = 0; i < n; i++) {
		int fd = (int)(uint32_t)evs[i].data.u64;
		enum fz_tag tag = (enum fz_tag)(evs[i].data.u64 >> 32);

		switch (tag) {
		case FZ_LISTEN:
			for (k = 0; k < 8; k++) {
				int c = accept4(fd, NULL, NULL,
						SOCK_NONBLOCK | SOCK_CLOEXEC);

				if (c < 0)
					break;
				if (send(c, hello, sizeof(hello) - 1,
					 MSG_NOSIGNAL) < 0) {
					close(c);
					continue;
				}
				/* Then more than a window's worth:
				 * host->guest segmentation, GSO, peek
				 * offsets, window stalls. */
				send(c, bulk, sizeof(bulk),
				     MSG_NOSIGNAL | MSG_DONTWAIT);
				shutdown(c, SHUT_WR);
				keep_accepted(c);
			}
			break;
		case FZ_UDP:
			for (k = 0; k < 8; k++) {
				struct sockaddr_in6 from;
				socklen_t flen = sizeof(from);
				ssize_t r = recvfrom(fd, buf, sizeof(buf), 0,
						     (struct sockaddr *)&from,
						     &flen);

				if (r < 0)
					break;
				sendto(fd, buf, (size_t)r, MSG_NOSIGNAL,
				       (struct sockaddr *)&from, flen);
			}
			break;
		case FZ_ACCEPTED:
		case FZ_FWD_CLIENT:
			for (k = 0; k < 64; k++) {
				ssize_t r = recv(fd, buf, sizeof(buf), 0);

				if (r > 0)
					continue;
				if (r == 0 || errno != EAGAIN) {
					/* Done: stop watching it. */
					if (tag == FZ_ACCEPTED)
						forget_accepted(fd);
					else
						epoll_ctl(peers.ep,
							  EPOLL_CTL_DEL, fd,
							  NULL);
				}
				break;
			}
			break;
		}
	}
}

#define FZ_FWD_TCP_CLIENT 40080
#define FZ_FWD_UDP_CLIENT 40053

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
 * Hand the engine a TCP and a UDP listener (it owns them from then on).
 * Failures only mean less coverage.
 */
static void add_forwards(struct fz_slot *s, const struct sl_config *c)
{
	static const uint8_t guest6[16] = { 0xfd, [14] = 0x01, [15] = 0x00 };
	const uint8_t *gaddr = c->ipv6 ? guest6 : c->guest4;
	int family = c->ipv6 ? 6 : 4;
	int lt = fwd_socket(SOCK_STREAM, 0), lu = fwd_socket(SOCK_DGRAM, 0);

	if (lt >= 0) {
		s->fwd_tcp_port = local_port(lt);
		if (sl_engine_add_listener(s->e, lt, SL_TCP, gaddr, family,
					   80, 1) < 0) {
			close(lt);
			s->fwd_tcp_port = 0;
		}
	}
	if (lu >= 0) {
		s->fwd_udp_port = local_port(lu);
		if (sl_engine_add_listener(s->e, lu, SL_UDP, gaddr, family,
					   5353, 2) < 0) {
			close(lu);
			s->fwd_udp_port = 0;
		}
	}
}

static void close_clients(struct fz_slot *s)
{
	/* SO_LINGER 0: an RST, no TIME-WAIT; the fixed port is free again. */
	if (s->tcp_client >= 0)
		close(s->tcp_client);
	if (s->udp_client >= 0)
		close(s->udp_client);
	s->tcp_client = s->udp_client = -1;
}

/*
 * At the start of every input: a new loopback client knocks on each
 * forward (the previous one is reset), so that the engine's SYN and
 * datagram toward the guest are what the input's frames answer.
 */
static void knock(struct fz_slot *s)
{
	struct sockaddr_in to = { .sin_family = AF_INET,
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

	close_clients(s);
	if (s->fwd_tcp_port) {
		to.sin_port = htons(s->fwd_tcp_port);
		s->tcp_client = fwd_socket(SOCK_STREAM, FZ_FWD_TCP_CLIENT);
		if (s->tcp_client >= 0) {
			connect(s->tcp_client, (struct sockaddr *)&to,
				sizeof(to));
			watch(s->tcp_client, FZ_FWD_CLIENT);
		}
	}
	if (s->fwd_udp_port) {
		to.sin_port = htons(s->fwd_udp_port);
		s->udp_client = fwd_socket(SOCK_DGRAM, FZ_FWD_UDP_CLIENT);
		if (s->udp_client >= 0) {
			sendto(s->udp_client, "knock", 5, 0,
			       (struct sockaddr *)&to, sizeof(to));
			watch(s->udp_client, FZ_FWD_CLIENT);
		}
	}
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

#define FZ_SHARED(bits) (((bits) & 0x18) == 0x18)

static struct sl_addr_map fz_map(int family, const void *match,
				 const void *target, bool dns_only,
				 uint16_t port)
{
	struct sl_addr_map m = {
		.family = (uint8_t)family, .dns_only = dns_only,
		.target_port = port,
	};

	memcpy(m.match, match, family == 4 ? 4 : 16);
	memcpy(m.target, target, family == 4 ? 4 : 16);
	return m;
}

/* Map 1: the gateway to the host's loopback (--map-host-loopback). */
static struct sl_addr_map fz_gw_map(void)
{
	return fz_map(4, "\x0a\x00\x02\x02", "\x7f\x00\x00\x01", false, 0);
}

/*
 * Shared-address mode's part of the configuration (see the top): the maps
 * of pasta's --dns-forward (IPv4 and, to an IPv4-mapped target, IPv6),
 * --map-host-loopback (gateway, IPv4 and IPv6) and --map-guest-addr, all
 * to this process's loopback (the harness's peers on port 7777).
 */
static void shared_config(struct sl_config *c, uint8_t bits)
{
	static const uint8_t lo6[16] = { [15] = 1 };
	static const uint8_t mapped_lo[16] = { [10] = 0xff, [11] = 0xff, 127, 0, 0, 1 };
	static const uint8_t gw6[16] = { 0xfd, [15] = 0x02 };
	static const uint8_t dns6[16] = { 0xfd, [15] = 0x03 };
	static const uint8_t guest6[16] = { 0xfd, [14] = 0x01, [15] = 0x00 };
	static const uint8_t ll1[16] = { 0xfe, 0x80, [15] = 0x01 };

	c->shared_addr = 1;
	memcpy(c->our_mac, "\x9a\x55\x9a\x55\x9a\x55", 6);
	memcpy(c->guest6, guest6, 16);
	memcpy(c->peer_sub4, "\xa9\xfe\x01\x02", 4);
	memcpy(c->peer_sub6, ll1, 16);
	c->no_ra = !(bits & 0x40);
	c->maps[0] = fz_map(4, "\xa9\xfe\x01\x01", "\x7f\x00\x00\x01", true,
			    FZ_PORT);
	c->maps[1] = fz_gw_map();
	c->maps[2] = fz_map(4, "\xa9\xfe\x01\x02", "\x7f\x00\x00\x01", false, 0);
	c->maps[3] = fz_map(6, gw6, lo6, false, 0);
	c->maps[4] = fz_map(6, dns6, mapped_lo, true, FZ_PORT);
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
	if (FZ_SHARED(bits))
		shared_config(c, bits);
}

/* Map DIR/history-XX for a new engine and mark it empty. */
static void open_history(struct fz_slot *s)
{
	char path[4096];
	int fd;

	s->hist = NULL;
	s->hist_len = 0;
	if (!fz.histdir)
		return;
	snprintf(path, sizeof(path), "%s/history-%02x", fz.histdir, s->bits);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0 || ftruncate(fd, FZ_HIST_BYTES) < 0) {
		perror("fuzz_engine: history file");
		abort();
	}
	s->hist = mmap(NULL, FZ_HIST_BYTES, PROT_READ | PROT_WRITE,
		       MAP_SHARED, fd, 0);
	close(fd);
	if (s->hist == MAP_FAILED) {
		perror("fuzz_engine: mmap history");
		abort();
	}
	memset(s->hist, 0, 4);
}

/* Append one input to the history. Return: false when it is full. */
static bool record(struct fz_slot *s, const uint8_t *data, size_t size)
{
	uint32_t len = (uint32_t)size;

	if (!s->hist)
		return true;
	if (s->hist_len + 8 + size > FZ_HIST_BYTES)
		return false;
	memcpy(s->hist + s->hist_len + 4, data, size);
	memset(s->hist + s->hist_len + 4 + size, 0, 4);	/* the end */
	memcpy(s->hist + s->hist_len, &len, 4);	/* little-endian host */
	s->hist_len += 4 + size;
	return true;
}

/* Retire a slot's engine: every timer fired hours ahead, then freed. */
static void retire(struct fz_slot *s)
{
	int i;

	if (!s->e)
		return;
	serve_peers();
	sl_engine_poll(s->e, s->now, 64);
	drain(s->e);
	for (i = 1; i <= 4; i++) {
		s->now += (uint64_t)i * 3600 * 1000000000ULL;
		sl_engine_flush(s->e, s->now);
		sl_engine_poll(s->e, s->now, 64);
		drain(s->e);
	}
	sl_engine_free(s->e);
	close_clients(s);
	if (s->hist)
		munmap(s->hist, FZ_HIST_BYTES);
	memset(s, 0, sizeof(*s));
	s->bits = -1;
	s->tcp_client = s->udp_client = -1;
}

static struct sl_policy_rule fz_rule(uint32_t id, uint8_t match, uint8_t family,
				     uint8_t plen, uint8_t protos, uint16_t lo,
				     uint16_t hi, const uint8_t *addr)
{
	struct sl_policy_rule r = {
		.rule_id = id, .match = match, .family = family,
		.prefix_len = plen, .action = SL_POLICY_DENY,
		.proto_mask = protos, .port_lo = lo, .port_hi = hi,
	};

	if (addr)
		memcpy(r.addr, addr, family == 4 ? 4 : 16);
	return r;
}

/* The engine's policy (see the top): @closing adds the 7777 rule first. */
static void set_policy(struct fz_slot *s, bool closing)
{
	static const uint8_t any[16], bench[4] = { 198, 18, 0, 0 };
	struct sl_policy_rule r[7];
	uint32_t n = 0;

	if (closing)
		r[n++] = fz_rule(5, SL_PM_HOST, 4, 0, SL_PP_TCP | SL_PP_UDP,
				 FZ_PORT, FZ_PORT, NULL);
	r[n++] = fz_rule(0, SL_PM_CIDR, 4, 0, SL_PP_TCP, 1, 1023, any);
	r[n++] = fz_rule(0, SL_PM_CIDR, 6, 0, SL_PP_TCP, 1, 1023, any);
	r[n++] = fz_rule(1, SL_PM_CIDR, 4, 0, SL_PP_UDP, 9, 9, any);
	r[n++] = fz_rule(2, SL_PM_CIDR, 4, 15, SL_PP_ICMP, 0, 65535, bench);
	r[n++] = fz_rule(3, SL_PM_HOST, 0, 0, 0, 7000, 7099, NULL);
	if (sl_engine_set_policy(s->e, s->now, r, n, 6, SL_POLICY_ALLOW) < 0)
		abort();
}

/* The slot for configuration byte @bits, with a live engine. */
static struct fz_slot *get_slot(uint8_t bits)
{
	struct fz_slot *s = NULL, *lru = &fz.slots[0];
	struct sl_config cfg;
	int i;

	for (i = 0; i < FZ_SLOTS; i++) {
		if (fz.slots[i].bits == bits)
			s = &fz.slots[i];
		if (fz.slots[i].used < lru->used)
			lru = &fz.slots[i];
	}
	if (!s) {
		s = lru;
		retire(s);
		make_config(&cfg, bits);
		s->bits = bits;
		s->tcp_client = s->udp_client = -1;
		s->now = FZ_START_NS;
		s->e = sl_engine_new(&cfg);
		if (!s->e)
			abort();
		if (bits & 0x80)
			add_forwards(s, &cfg);
		set_policy(s, false);
		open_history(s);
	}
	s->used = ++fz.stamp;
	return s;
}

/* Feed one input (a configuration byte, then records) to its engine. */
static void run_input(const uint8_t *data, size_t size)
{
	uint64_t c[128];
	struct fz_slot *s;
	size_t off = 1;
	bool retire_now;

	if (size < 1)
		return;
	s = get_slot(data[0]);
	if (!record(s, data, size)) {
		/* Full: start over so that the history stays complete. */
		retire(s);
		s = get_slot(data[0]);
		record(s, data, size);
	}
	knock(s);
	if (s->inputs % 16 == 15 || s->inputs % 16 == 0)
		set_policy(s, s->inputs % 16 == 15);
	if (FZ_SHARED(s->bits) && (s->inputs % 16 == 7 || s->inputs % 16 == 8)) {
		struct sl_addr_map gw = fz_gw_map(), none = { 0 };

		if (sl_engine_set_addr_map(s->e, 1,
					   s->inputs % 16 == 7 ? &none : &gw) < 0)
			abort();
	}
	drain(s->e);
	while (off + 3 <= size) {
		size_t len = ((size_t)data[off] << 8) | data[off + 1];
		uint8_t step = data[off + 2];

		off += 3;
		if (len > size - off)
			len = size - off;
		s->now += step < 200 ? step * 10000000ULL :
				       (uint64_t)(step - 199) * 30000000000ULL;
		if (sl_engine_input_frame(s->e, s->now, data + off, len) < 0)
			abort();
		off += len;
		drain(s->e);
		serve_peers();
		sl_engine_poll(s->e, s->now, 64);
		drain(s->e);
	}
	/* Let the host side answer. */
	serve_peers();
	sl_engine_poll(s->e, s->now, 64);
	drain(s->e);
	if (fz.debug)
		print_counters(s->e);
	/* A full TCP table refuses every new SYN: nothing left to learn. */
	retire_now = ++s->inputs >= fz.recycle && !fz.replay;
	if (fz.c_flow_cap >= 0 &&
	    sl_engine_counters(s->e, c, 128) > fz.c_flow_cap &&
	    c[fz.c_flow_cap])
		retire_now = true;
	if (retire_now)
		retire(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t off = 0;
	int i;

	if (!fz.replay) {
		run_input(data, size);
		return 0;
	}
	/* A history: records of a 4-byte length and an input, in order,
	 * on engines that start (and end) with this file. */
	for (i = 0; i < FZ_SLOTS; i++)
		retire(&fz.slots[i]);
	while (off + 4 <= size) {
		uint32_t len;

		memcpy(&len, data + off, 4);
		off += 4;
		if (!len || len > size - off)
			break;
		run_input(data + off, len);
		off += len;
	}
	for (i = 0; i < FZ_SLOTS; i++)
		retire(&fz.slots[i]);
	return 0;
}
