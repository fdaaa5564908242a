// SPDX-License-Identifier: MIT
/*
 * engine.c - the engine's life cycle, its epoll loop, frame dispatch, output
 * to the TAP, the punt queue, counters and timers.
 *
 * This file routes; it does not speak any protocol. A frame from the TAP is
 * parsed once (wire.c), checked for addresses the guest may not use, and
 * handed to arp.c, icmp.c, udp.c or tcp.c. Slow-path work (DHCP) is copied
 * into the bounded punt queue for Python. Nothing here blocks or allocates
 * per packet. What the engine shares and what each module owns is in
 * internal.h.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>

#include "internal.h"

#define SL_EPOLL_BATCH 64
#define SL_SCAN_IDLE_NS (1000 * NSEC_PER_MSEC)

static const char *const counter_names[] = {
#define SL_CTR_NAME(n) #n,
	SL_COUNTERS(SL_CTR_NAME)
#undef SL_CTR_NAME
};

void sl_count(struct sl_engine *e, enum sl_counter_id c)
{
	e->ctr[c]++;
}

int sl_engine_ncounters(void)
{
	return SL_C_COUNT;
}

const char *sl_counter_name(int i)
{
	return i >= 0 && i < SL_C_COUNT ? counter_names[i] : NULL;
}

int sl_engine_counters(const struct sl_engine *e, uint64_t *out, int n)
{
	int i;

	for (i = 0; i < n && i < SL_C_COUNT; i++)
		out[i] = e->ctr[i];
	return i;
}

static void mac_from_v4(uint8_t mac[6], const uint8_t a[4])
{
	mac[0] = 0x52;
	mac[1] = 0x55;
	memcpy(mac + 2, a, 4);
}

static void mac_from_v6(uint8_t mac[6], const uint8_t a[16])
{
	mac[0] = 0x52;
	mac[1] = 0x56;
	memcpy(mac + 2, a + 12, 4);
}

/**
 * sl_mac_for() - the MAC address of one of our virtual hosts, by IP.
 * Any other address gets the gateway's MAC: everything off-link is behind it.
 * In shared-address mode every address is behind one MAC (cfg.our_mac).
 */
const uint8_t *sl_mac_for(const struct sl_engine *e, int family,
			  const uint8_t *addr)
{
	if (e->cfg.shared_addr)
		return e->gw_mac;
	if (family == 4)
		return memcmp(addr, e->cfg.dns4, 4) ? e->gw_mac : e->dns_mac;
	return addr[15] == 3 && !memcmp(addr, e->cfg.prefix6, 8) ?
		       e->dns6_mac : e->gw6_mac;
}

/*
 * Default flow caps: 3840 sockets in all, so that with SL_FD_RESERVE for
 * Python slirpy stays under 4096 descriptors whatever RLIMIT_NOFILE is (a
 * higher limit is no reason to let one guest hold more). Larger caps must
 * be asked for (--limit); clamp_to_fd_limit() still bounds them.
 */
#define SL_DEFAULT_TCP_FLOWS 1856
#define SL_DEFAULT_UDP_FLOWS 1856
#define SL_DEFAULT_ICMP_FLOWS 128

static void set_defaults(struct sl_config *c)
{
	if (!c->max_tcp_flows)
		c->max_tcp_flows = SL_DEFAULT_TCP_FLOWS;
	if (!c->max_udp_flows)
		c->max_udp_flows = SL_DEFAULT_UDP_FLOWS;
	if (!c->max_icmp_flows)
		c->max_icmp_flows = SL_DEFAULT_ICMP_FLOWS;
	if (!c->max_half_open)
		c->max_half_open = 512;
	if (!c->udp_idle_s)
		c->udp_idle_s = 60;
	if (!c->tcp_idle_s)
		c->tcp_idle_s = 7200;
	if (c->mtu < 68)
		c->mtu = 1500;
}

#define SL_FD_RESERVE 256

/* @cap * @budget / @want, at least 1. */
static uint32_t scale_cap(uint32_t cap, uint64_t budget, uint64_t want)
{
	uint64_t v = cap * budget / want;

	return v ? (uint32_t)v : 1;
}

/**
 * clamp_to_fd_limit() - scale the flow caps down to the fd budget.
 * @c: the configuration, defaults already applied
 *
 * Every flow holds one socket. Keep the sum of the flow caps under the
 * process's RLIMIT_NOFILE, less a reserve for what Python needs (API and
 * DNS sockets, forwarded-port listeners, the TAP): a guest that floods
 * flows then meets drop_flow_cap (or, for UDP/ICMP, LRU eviction) instead
 * of starving the control plane of file descriptors with EMFILE.
 */
static void clamp_to_fd_limit(struct sl_config *c)
{
	uint64_t want = (uint64_t)c->max_tcp_flows + c->max_udp_flows +
			c->max_icmp_flows;
	uint64_t budget;
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
		return;
	budget = rl.rlim_cur > 2 * SL_FD_RESERVE ? rl.rlim_cur - SL_FD_RESERVE :
						   rl.rlim_cur / 2;
	if (want <= budget)
		return;
	c->max_tcp_flows = scale_cap(c->max_tcp_flows, budget, want);
	c->max_udp_flows = scale_cap(c->max_udp_flows, budget, want);
	c->max_icmp_flows = scale_cap(c->max_icmp_flows, budget, want);
	if (c->max_half_open > c->max_tcp_flows)
		c->max_half_open = c->max_tcp_flows;
}

struct sl_engine *sl_engine_new(const struct sl_config *cfg)
{
	struct sl_engine *e = calloc(1, sizeof(*e));
	struct epoll_event ev = { .events = EPOLLIN };

	if (!e)
		return NULL;
	e->cfg = *cfg;
	set_defaults(&e->cfg);
	clamp_to_fd_limit(&e->cfg);
	e->tapfd = -1;
	e->timerfd = -1;
	mac_from_v4(e->gw_mac, e->cfg.gw4);
	mac_from_v4(e->dns_mac, e->cfg.dns4);
	{
		uint8_t a[16];

		memcpy(a, e->cfg.prefix6, 16);
		a[15] = 2;
		mac_from_v6(e->gw6_mac, a);
		a[15] = 3;
		mac_from_v6(e->dns6_mac, a);
	}
	if (memcmp(e->cfg.our_mac, "\0\0\0\0\0\0", 6)) {
		/* One MAC for every virtual host (shared mode: every address). */
		memcpy(e->gw_mac, e->cfg.our_mac, 6);
		memcpy(e->dns_mac, e->cfg.our_mac, 6);
		memcpy(e->gw6_mac, e->cfg.our_mac, 6);
		memcpy(e->dns6_mac, e->cfg.our_mac, 6);
	}
	e->rxbuf = malloc(SL_FRAME_MAX);
	e->txbuf = malloc(SL_FRAME_MAX);
	e->epfd = epoll_create1(EPOLL_CLOEXEC);
	e->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (!e->rxbuf || !e->txbuf || e->epfd < 0 || e->timerfd < 0 ||
	    sl_flow_init(e) < 0 || sl_tcp_init(e) < 0 || sl_udp_init(e) < 0)
		goto fail;
	ev.data.u64 = 0;	/* tag 0: the timerfd */
	if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->timerfd, &ev) < 0)
		goto fail;
	return e;
fail:
	sl_engine_free(e);
	return NULL;
}

void sl_engine_free(struct sl_engine *e)
{
	int i;

	if (!e)
		return;
	sl_tcp_fini(e);
	sl_flow_fini(e);
	sl_policy_fini(e);
	sl_splice_fini(e);
	sl_lorelay_fini(e);
	sl_udp_fini(e);
	for (i = 0; i < SL_MAX_LISTENERS; i++)
		if (e->listeners[i].used)
			close(e->listeners[i].fd);
	if (e->test.out) {
		while (e->test.out->count) {
			free(e->test.out->frame[e->test.out->head]);
			e->test.out->head = (e->test.out->head + 1) %
					    SL_TEST_OUT_CAP;
			e->test.out->count--;
		}
		free(e->test.out);
	}
	if (e->tapfd >= 0)
		close(e->tapfd);
	if (e->timerfd >= 0)
		close(e->timerfd);
	if (e->epfd >= 0)
		close(e->epfd);
	free(e->rxbuf);
	free(e->txbuf);
	free(e);
}

int sl_engine_fd(const struct sl_engine *e)
{
	return e->epfd;
}

/**
 * sl_engine_set_tap() - hand the engine the TAP fd (non-blocking, opened
 * with IFF_VNET_HDR when cfg.vnet_hdr_len is 10). The engine owns it now.
 */
int sl_engine_set_tap(struct sl_engine *e, int fd)
{
	struct epoll_event ev = { .events = EPOLLIN };

	ev.data.u64 = (uint64_t)SL_TAG_TAP << 56;
	if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
		return -errno;
	e->tapfd = fd;
	return 0;
}

int sl_engine_set_guest_mac(struct sl_engine *e, const uint8_t mac[6])
{
	memcpy(e->guest_mac, mac, 6);
	e->guest_mac_known = true;
	return 0;
}

/**
 * sl_engine_set_shared_addrs() - follow a host address change (shared mode)
 * @e: engine, created with cfg.shared_addr
 * @guest4: the guest's IPv4 address now (zeros: none)
 * @guest6: the guest's IPv6 address now (zeros: none)
 * @peer_sub4: how a loopback or own-address client appears now (IPv4)
 * @peer_sub6: the same for IPv6
 *
 * The guest owns the host's addresses, so when the host's change, ARP/NDP's
 * "not ours to answer" address and the inbound peer substitution move with
 * them; the IPv6 prefix follows the new address's /64. Existing flows keep
 * their addresses.
 *
 * Return: 0, or -EINVAL when @e is not in shared mode.
 */
int sl_engine_set_shared_addrs(struct sl_engine *e, const uint8_t guest4[4],
			       const uint8_t guest6[16], const uint8_t peer_sub4[4],
			       const uint8_t peer_sub6[16])
{
	static const uint8_t zero6[16];

	if (!e->cfg.shared_addr)
		return -EINVAL;
	memcpy(e->cfg.guest4, guest4, 4);
	memcpy(e->cfg.guest6, guest6, 16);
	memcpy(e->cfg.peer_sub4, peer_sub4, 4);
	memcpy(e->cfg.peer_sub6, peer_sub6, 16);
	if (memcmp(guest6, zero6, 16)) {
		memcpy(e->cfg.prefix6, guest6, 8);
		memset(e->cfg.prefix6 + 8, 0, 8);
	}
	return 0;
}

int sl_epoll_set(struct sl_engine *e, struct sl_flow *f, uint32_t events)
{
	struct epoll_event ev = { .events = events };
	int op = f->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;

	if (f->events == events)
		return 0;
	ev.data.u64 = sl_flow_tag(f);
	if (!events)
		op = EPOLL_CTL_DEL;
	if (epoll_ctl(e->epfd, op, f->fd, &ev) < 0)
		return -errno;
	f->events = events;
	return 0;
}

/* Deterministic fault injection for tests: a xorshift PRNG, no clock. */
static bool fault_drop(struct sl_engine *e, uint32_t permille)
{
	uint32_t x;

	if (!permille)
		return false;
	x = e->test.prng;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	e->test.prng = x;
	return x % 1000 < permille;
}

int sl_engine_set_fault(struct sl_engine *e, uint32_t drop_in_permille,
			uint32_t drop_out_permille, uint32_t seed)
{
	e->test.drop_in = drop_in_permille;
	e->test.drop_out = drop_out_permille;
	e->test.prng = seed ? seed : 2463534242u;
	return 0;
}

static void test_out_push(struct sl_engine *e, const struct iovec *iov,
			  int iovcnt, size_t total)
{
	struct sl_test_out *q = e->test.out;
	uint8_t *copy;
	size_t off = 0;
	uint32_t slot;
	int i;

	if (!q) {
		q = e->test.out = calloc(1, sizeof(*q));
		if (!q)
			return;
	}
	if (q->count == SL_TEST_OUT_CAP) {
		sl_count(e, SL_C_tap_write_errors);
		return;
	}
	copy = malloc(total);
	if (!copy)
		return;
	for (i = 0; i < iovcnt; i++) {
		memcpy(copy + off, iov[i].iov_base, iov[i].iov_len);
		off += iov[i].iov_len;
	}
	slot = (q->head + q->count) % SL_TEST_OUT_CAP;
	q->frame[slot] = copy;
	q->len[slot] = (uint32_t)total;
	q->count++;
}

/**
 * sl_output() - send one frame to the guest.
 * @vh: virtio header for GSO/partial-csum frames, or NULL for a plain frame
 * @iov: the frame starting at the Ethernet header; iov[-1] is NOT used, the
 *       virtio header is prepended here when the TAP has one.
 *
 * Return: 0, or -1 when the frame was dropped (counted).
 */
int sl_output(struct sl_engine *e, const struct virtio_net_hdr *vh,
	      struct iovec *iov, int iovcnt)
{
	struct virtio_net_hdr zero = { 0 };
	struct iovec v[8];
	size_t total = 0;
	int i, n = 0;

	if (iovcnt > 7)
		return -1;
	if (fault_drop(e, e->test.drop_out)) {
		sl_count(e, SL_C_drop_fault_out);
		return -1;
	}
	if (e->cfg.vnet_hdr_len) {
		v[n].iov_base = (void *)(vh ? vh : &zero);
		v[n].iov_len = sizeof(zero);
		total += sizeof(zero);
		n++;
	}
	for (i = 0; i < iovcnt; i++) {
		v[n++] = iov[i];
		total += iov[i].iov_len;
	}
	e->ctr[SL_C_frames_out]++;
	e->ctr[SL_C_bytes_out] += total;
	if (e->tapfd < 0) {
		test_out_push(e, v, n, total);
		return 0;
	}
	if (writev(e->tapfd, v, n) < 0) {
		sl_count(e, SL_C_tap_write_errors);
		return -1;
	}
	return 0;
}

int sl_engine_take_output(struct sl_engine *e, uint8_t *buf, size_t cap)
{
	struct sl_test_out *q = e->test.out;
	uint32_t len;

	if (!q || !q->count)
		return 0;
	len = q->len[q->head];
	if (len > cap)
		return -(int)len;
	memcpy(buf, q->frame[q->head], len);
	free(q->frame[q->head]);
	q->head = (q->head + 1) % SL_TEST_OUT_CAP;
	q->count--;
	return (int)len;
}

void sl_punt_event(struct sl_engine *e, const struct sl_event *ev)
{
	struct sl_punt *q = &e->punt;

	if (q->count == SL_PUNT_CAP) {
		sl_count(e, SL_C_drop_punt_full);
		return;
	}
	q->ev[(q->head + q->count) % SL_PUNT_CAP] = *ev;
	q->count++;
	sl_count(e, SL_C_punted);
}

void sl_notice(struct sl_engine *e, const char *text)
{
	struct sl_event ev;

	memset(&ev, 0, offsetof(struct sl_event, data));
	ev.type = SL_EV_NOTICE;
	ev.len = (uint32_t)strnlen(text, SL_EVENT_DATA_MAX - 1);
	memcpy(ev.data, text, ev.len);
	ev.data[ev.len] = 0;
	sl_punt_event(e, &ev);
}

int sl_engine_next_event(struct sl_engine *e, struct sl_event *ev)
{
	struct sl_punt *q = &e->punt;

	if (!q->count)
		return 0;
	*ev = q->ev[q->head];
	q->head = (q->head + 1) % SL_PUNT_CAP;
	q->count--;
	return 1;
}

static void punt_dhcp(struct sl_engine *e, const struct sl_pkt *p)
{
	struct sl_event ev;

	if (p->payload_len > SL_EVENT_DATA_MAX) {
		sl_count(e, SL_C_drop_udp_malformed);
		return;
	}
	memset(&ev, 0, offsetof(struct sl_event, data));
	ev.type = SL_EV_DHCP;
	ev.family = 4;
	ev.proto = IPPROTO_UDP_;
	memcpy(ev.mac, p->eth_src, 6);
	memcpy(ev.src, p->src, 4);
	memcpy(ev.dst, p->dst, 4);
	ev.sport = p->sport;
	ev.dport = p->dport;
	ev.len = (uint32_t)p->payload_len;
	memcpy(ev.data, p->payload, p->payload_len);
	sl_punt_event(e, &ev);
}

/* Sources a guest may not claim: they would make replies go astray or
 * make slirpy talk to itself. 0.0.0.0 is allowed only for DHCP. */
static bool bad_src4(const struct sl_engine *e, const struct sl_pkt *p)
{
	const uint8_t *s = p->src;

	if (s[0] == 0)
		return !(p->proto == IPPROTO_UDP_ && p->dport == 67);
	if (s[0] == 127 || s[0] >= 224)
		return true;
	return !memcmp(s, e->cfg.gw4, 4) || !memcmp(s, e->cfg.dns4, 4);
}

static bool bad_src6(const struct sl_engine *e, const struct sl_pkt *p)
{
	static const uint8_t loop6[16] = { [15] = 1 };
	const uint8_t *s = p->src;

	if (s[0] == 0xff || !memcmp(s, loop6, 16))
		return true;
	/* :: is legal only for duplicate address detection (NDP). */
	if (!memcmp(s, loop6, 15) && s[15] == 0)
		return p->proto != IPPROTO_ICMPV6_;
	/* Shared mode: prefix::2/::3 are nobody special (the guest has the
	 * host's /64, where they may be anyone, even the guest). */
	return !e->cfg.shared_addr && !memcmp(s, e->cfg.prefix6, 8) &&
	       !memcmp(s + 8, "\0\0\0\0\0\0\0", 7) && (s[15] == 2 || s[15] == 3);
}

static void handle_ipv4(struct sl_engine *e, const struct sl_pkt *p)
{
	if (e->cfg.no_ipv4) {
		sl_count(e, SL_C_drop_not_for_us);
		return;
	}
	if (bad_src4(e, p)) {
		sl_count(e, SL_C_drop_src_invalid);
		return;
	}
	switch (p->proto) {
	case IPPROTO_TCP_:
		sl_tcp_input(e, p);
		break;
	case IPPROTO_UDP_:
		if (p->dport == 67)
			punt_dhcp(e, p);
		else
			sl_udp_input(e, p);
		break;
	case IPPROTO_ICMP_:
		sl_icmp4_input(e, p);
		break;
	}
}

static void handle_ipv6(struct sl_engine *e, const struct sl_pkt *p)
{
	if (!e->cfg.ipv6) {
		sl_count(e, SL_C_drop_not_for_us);
		return;
	}
	if (bad_src6(e, p)) {
		sl_count(e, SL_C_drop_src_invalid);
		return;
	}
	switch (p->proto) {
	case IPPROTO_TCP_:
		sl_tcp_input(e, p);
		break;
	case IPPROTO_UDP_:
		sl_udp_input(e, p);
		break;
	case IPPROTO_ICMPV6_:
		if (p->icmp_type >= 133 && p->icmp_type <= 137)
			sl_ndp_input(e, p);
		else
			sl_icmp6_input(e, p);
		break;
	}
}

static void handle_frame(struct sl_engine *e, const uint8_t *buf, size_t len,
			 bool vnet)
{
	struct sl_pkt p;
	int drop;

	e->ctr[SL_C_frames_in]++;
	e->ctr[SL_C_bytes_in] += len;
	if (fault_drop(e, e->test.drop_in)) {
		sl_count(e, SL_C_drop_fault_in);
		return;
	}
	drop = sl_parse(buf, len, vnet, &p);
	if (drop) {
		sl_count(e, (enum sl_counter_id)drop);
		return;
	}
	if (p.vh.gso_type != VIRTIO_NET_HDR_GSO_NONE) {
		/* A GSO super-frame is one big TCP segment to us, or a run
		 * of UDP datagrams (USO) that udp.c sends as such: the host
		 * socket does the segmenting. Anything else is malformed. */
		uint8_t g = p.vh.gso_type & ~VIRTIO_NET_HDR_GSO_ECN;

		if (p.proto == IPPROTO_UDP_ ? !sl_udp_gso_valid(&p) :
		    (p.proto != IPPROTO_TCP_ ||
		     (g != VIRTIO_NET_HDR_GSO_TCPV4 &&
		      g != VIRTIO_NET_HDR_GSO_TCPV6))) {
			sl_count(e, SL_C_drop_gso_malformed);
			return;
		}
		sl_count(e, SL_C_gso_frames_in);
	}
	if (!(p.eth_src[0] & 1) && (!e->guest_mac_known ||
				     memcmp(e->guest_mac, p.eth_src, 6))) {
		memcpy(e->guest_mac, p.eth_src, 6);
		e->guest_mac_known = true;
	}
	/* Guest datagrams wait in a batch (udp.c) only while UDP frames
	 * follow each other: send them before anything else happens. */
	if (p.proto != IPPROTO_UDP_)
		sl_udp_flush(e);
	switch (p.ethertype) {
	case ETHERTYPE_ARP:
		if (e->cfg.no_ipv4) {
			sl_count(e, SL_C_drop_not_for_us);
			break;
		}
		sl_arp_input(e, &p);
		break;
	case ETHERTYPE_IPV4:
		handle_ipv4(e, &p);
		break;
	case ETHERTYPE_IPV6:
		handle_ipv6(e, &p);
		break;
	}
}

/* Walk every flow for retransmission and expiry, each by the module of its
 * kind. Runs at most as often as the earliest deadline asks; flows set
 * e->next_scan sooner when they need. */
static void run_timers(struct sl_engine *e)
{
	uint64_t soonest = e->now + SL_SCAN_IDLE_NS, at;
	uint32_t i;

	if (e->now < e->next_scan)
		return;
	sl_count(e, SL_C_timers_fired);
	for (i = 0; i < e->flows.n_used; i++) {
		struct sl_flow *f = &e->flows.pool[i];

		switch (f->kind) {
		case SL_FLOW_TCP:
			at = sl_tcp_timer(e, f);
			if (at && at < soonest)
				soonest = at;
			break;
		case SL_FLOW_UDP:
			sl_udp_timer(e, f);
			break;
		case SL_FLOW_ICMP:
			sl_icmp_timer(e, f);
			break;
		}
	}
	sl_splice_timer(e);
	sl_lorelay_timer(e);
	at = sl_ndp_timer(e);
	if (at && at < soonest)
		soonest = at;
	e->next_scan = soonest;
}

static void arm_timer(struct sl_engine *e)
{
	struct itimerspec its = { 0 };
	uint64_t at = e->next_scan, ack_at = sl_tcp_ack_deadline(e);

	/* next_scan is 0 until the first poll (which scans); a delayed ACK
	 * queued before it must still get its wake-up. */
	if (ack_at && (!at || ack_at < at))
		at = ack_at;
	if (e->timer_armed == at)
		return;
	/* Armed sooner and still to come: let it fire (a poll with little to
	 * do) rather than pay a syscall each time a delayed ACK is dropped. */
	if (e->timer_armed && e->timer_armed < at && e->timer_armed > e->now)
		return;
	its.it_value.tv_sec = (time_t)(at / NSEC_PER_SEC);
	its.it_value.tv_nsec = (long)(at % NSEC_PER_SEC);
	if (!its.it_value.tv_sec && !its.it_value.tv_nsec)
		its.it_value.tv_nsec = 1;
	timerfd_settime(e->timerfd, TFD_TIMER_ABSTIME, &its, NULL);
	e->timer_armed = at;
}

/* Read frames from the TAP until it is empty or the budget is spent. */
static int drain_tap(struct sl_engine *e, int budget)
{
	int n = 0;

	while (n < budget) {
		ssize_t r = read(e->tapfd, e->rxbuf, SL_FRAME_MAX);

		if (r < 0) {
			if (errno == EAGAIN || errno == EINTR)
				break;
			sl_count(e, SL_C_tap_read_errors);
			if (errno == EBADFD || errno == EIO) {
				struct sl_event ev = { .type = SL_EV_TAP_DOWN };

				sl_punt_event(e, &ev);
				epoll_ctl(e->epfd, EPOLL_CTL_DEL, e->tapfd, NULL);
			}
			break;
		}
		if (r == 0) {
			struct sl_event ev = { .type = SL_EV_TAP_DOWN };

			sl_punt_event(e, &ev);
			epoll_ctl(e->epfd, EPOLL_CTL_DEL, e->tapfd, NULL);
			break;
		}
		handle_frame(e, e->rxbuf, (size_t)r, e->cfg.vnet_hdr_len != 0);
		n++;
	}
	sl_udp_flush(e);
	return n;
}

static struct sl_listener *listener_from_tag(struct sl_engine *e, uint64_t t)
{
	uint32_t idx = (uint32_t)t;

	if (idx >= SL_MAX_LISTENERS || !e->listeners[idx].used)
		return NULL;
	return &e->listeners[idx];
}

/**
 * sl_engine_poll() - do all the work that is ready, up to @budget frames.
 * @now_ns: CLOCK_MONOTONIC now (tests pass a fake clock)
 * @budget: upper bound on TAP frames handled, so Python stays responsive
 *
 * Return: the number of events handled (TAP frames and socket events).
 */
int sl_engine_poll(struct sl_engine *e, uint64_t now_ns, int budget)
{
	struct epoll_event evs[SL_EPOLL_BATCH];
	int n, i, done = 0;

	e->now = now_ns;
	n = epoll_wait(e->epfd, evs, SL_EPOLL_BATCH, 0);
	for (i = 0; i < n; i++) {
		uint64_t tag = evs[i].data.u64;
		struct sl_flow *f;
		struct sl_listener *l;

		switch (tag >> 56) {
		case 0: {
			uint64_t ticks;

			if (read(e->timerfd, &ticks, sizeof(ticks)) < 0)
				ticks = 0;
			e->timer_armed = 0;
			break;
		}
		case SL_TAG_TAP:
			done += drain_tap(e, budget);
			break;
		case SL_TAG_FLOW:
			f = sl_flow_from_tag(e, tag);
			if (!f)
				break;
			done++;
			if (f->kind == SL_FLOW_TCP)
				sl_tcp_sock_event(e, f, evs[i].events);
			else if (f->kind == SL_FLOW_UDP)
				sl_udp_sock_event(e, f, evs[i].events);
			else
				sl_icmp_sock_event(e, f, evs[i].events);
			break;
		case SL_TAG_LISTENER:
			l = listener_from_tag(e, tag);
			if (!l)
				break;
			done++;
			if (l->proto == SL_TCP)
				sl_tcp_listener_event(e, l);
			else if (l->mode == SL_LM_TO_HOST_LO)
				sl_lorelay_listener_event(e, l);
			else
				sl_udp_listener_event(e, l);
			break;
		case SL_TAG_SPLICE:
			done++;
			sl_splice_event(e, tag, evs[i].events);
			break;
		case SL_TAG_LORELAY:
			done++;
			sl_lorelay_event(e, tag);
			break;
		case SL_TAG_NS_HELPER:
			sl_splice_helper_event(e, evs[i].events);
			break;
		}
	}
	sl_tcp_flush_acks(e);
	run_timers(e);
	sl_tcp_flush_acks(e);
	arm_timer(e);
	sl_tcp_end_of_poll(e);	/* last: nobody waits for it */
	return done;
}

/**
 * sl_engine_poll_now() - sl_engine_poll() on the real CLOCK_MONOTONIC.
 * @budget: as for sl_engine_poll()
 *
 * The engine fd's reader calls this straight from the event loop, so that a
 * wake-up with nothing for Python runs no Python code at all.
 *
 * Return: the number of events waiting in the punt queue.
 */
int sl_engine_poll_now(struct sl_engine *e, int budget)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	sl_engine_poll(e, (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec,
		       budget);
	return (int)e->punt.count;
}

/**
 * sl_engine_input_frame() - feed one frame as if read from the TAP.
 * The frame carries a virtio_net_hdr when cfg.vnet_hdr_len is non-zero.
 */
int sl_engine_input_frame(struct sl_engine *e, uint64_t now_ns,
			  const uint8_t *frame, size_t len)
{
	if (len > SL_FRAME_MAX)
		return -EMSGSIZE;
	e->now = now_ns;
	handle_frame(e, frame, len, e->cfg.vnet_hdr_len != 0);
	sl_udp_flush(e);
	sl_tcp_flush_acks(e);
	arm_timer(e);	/* a delayed ACK must not wait for the next poll */
	sl_tcp_end_of_poll(e);
	return 0;
}

/* Run timers and pending ACKs at @now_ns without waiting on epoll. */
int sl_engine_flush(struct sl_engine *e, uint64_t now_ns)
{
	e->now = now_ns;
	sl_tcp_flush_acks(e);
	run_timers(e);
	sl_tcp_flush_acks(e);
	sl_tcp_end_of_poll(e);
	return 0;
}

int sl_engine_send_udp4(struct sl_engine *e, const uint8_t dst_mac[6],
			const uint8_t src[4], uint16_t sport,
			const uint8_t dst[4], uint16_t dport,
			const uint8_t *payload, size_t len)
{
	return sl_udp_emit(e, 4, dst_mac ? dst_mac : sl_guest_mac(e), src,
			   sport, dst, dport, payload, len);
}

int sl_engine_add_listener(struct sl_engine *e, int fd, int proto,
			   const uint8_t *guest_addr, int family,
			   uint16_t guest_port, uint32_t id)
{
	struct epoll_event ev = { .events = EPOLLIN };
	int i;

	for (i = 0; i < SL_MAX_LISTENERS; i++)
		if (!e->listeners[i].used)
			break;
	if (i == SL_MAX_LISTENERS)
		return -ENOSPC;
	ev.data.u64 = ((uint64_t)SL_TAG_LISTENER << 56) | (uint32_t)i;
	if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
		return -errno;
	e->listeners[i] = (struct sl_listener){
		.fd = fd, .proto = proto, .family = family, .id = id,
		.gport = guest_port, .used = true,
	};
	memcpy(e->listeners[i].gaddr, guest_addr, family == 4 ? 4 : 16);
	return 0;
}

/**
 * sl_engine_set_listener_splice() - how the forward @id relays its
 * connections: @mode is enum sl_listener_mode (1, SL_LM_SPLICE: by splice()
 * through sockets the namespace helper makes in the guest's netns instead
 * of through the TAP; 2, SL_LM_SPLIT: that for loopback clients only;
 * 3, SL_LM_TO_HOST_LO: the listener lives in the guest's netns and each
 * connection is spliced to the host's loopback at the guest port; for a
 * UDP forward, pasta's -U: each peer's datagrams are relayed to the host's
 * loopback by lorelay.c). SPLICE and SPLIT need sl_engine_set_ns_helper
 * first.
 *
 * Return: 0, -ENOTCONN (no helper), -EPROTONOSUPPORT (UDP, other than TAP
 * or TO_HOST_LO), -EINVAL (bad mode), -ENOENT (no such forward), -ENOMEM.
 */
int sl_engine_set_listener_splice(struct sl_engine *e, uint32_t id, int mode)
{
	int i;

	if (mode < SL_LM_TAP || mode > SL_LM_TO_HOST_LO)
		return -EINVAL;
	if ((mode == SL_LM_SPLICE || mode == SL_LM_SPLIT) && !e->splice.tab)
		return -ENOTCONN;
	for (i = 0; i < SL_MAX_LISTENERS; i++) {
		struct sl_listener *l = &e->listeners[i];

		if (l->used && l->id == id) {
			if (l->proto != SL_TCP &&
			    mode != SL_LM_TO_HOST_LO && mode != SL_LM_TAP)
				return -EPROTONOSUPPORT;
			if (l->proto == SL_TCP && mode == SL_LM_TO_HOST_LO &&
			    sl_splice_tab_init(e) < 0)
				return -ENOMEM;
			l->splice = mode != SL_LM_TAP;
			l->mode = (uint8_t)mode;
			return 0;
		}
	}
	return -ENOENT;
}

int sl_engine_remove_listener(struct sl_engine *e, uint32_t id)
{
	int i;

	for (i = 0; i < SL_MAX_LISTENERS; i++) {
		struct sl_listener *l = &e->listeners[i];

		if (l->used && l->id == id) {
			close(l->fd);
			l->used = false;
			if (l->proto == SL_UDP)
				sl_udp_listener_gone(e, (uint32_t)i);
			return 0;
		}
	}
	return -ENOENT;
}

static const char *kind_name(int kind)
{
	return kind == SL_FLOW_TCP ? "tcp" : kind == SL_FLOW_UDP ? "udp" :
								   "icmp";
}

/**
 * sl_engine_list_flows() - describe live flows as JSON lines in @buf.
 * Return: bytes written (truncated at a line boundary when @cap is small).
 */
int sl_engine_list_flows(const struct sl_engine *e, char *buf, size_t cap)
{
	size_t off = 0;
	uint32_t i;

	for (i = 0; i < e->flows.n_used; i++) {
		const struct sl_flow *f = &e->flows.pool[i];
		char g[48], r[48], line[200];
		int n;

		if (f->kind == SL_FLOW_FREE)
			continue;
		if (f->family == 4) {
			snprintf(g, sizeof(g), "%u.%u.%u.%u", f->gaddr[0],
				 f->gaddr[1], f->gaddr[2], f->gaddr[3]);
			snprintf(r, sizeof(r), "%u.%u.%u.%u", f->raddr[0],
				 f->raddr[1], f->raddr[2], f->raddr[3]);
		} else {
			int k, o = 0, p = 0;

			for (k = 0; k < 16; k += 2) {
				o += snprintf(g + o, sizeof(g) - (size_t)o,
					      k ? ":%x" : "%x",
					      sl_get16(f->gaddr + k));
				p += snprintf(r + p, sizeof(r) - (size_t)p,
					      k ? ":%x" : "%x",
					      sl_get16(f->raddr + k));
			}
		}
		n = snprintf(line, sizeof(line),
			     "{\"proto\":\"%s\",\"family\":%d,\"guest\":\"%s\","
			     "\"guest_port\":%u,\"remote\":\"%s\","
			     "\"remote_port\":%u,\"state\":%u}\n",
			     kind_name(f->kind), f->family, g, f->gport, r,
			     f->rport, f->kind == SL_FLOW_TCP ? f->tcp.state : 0);
		if (n <= 0 || off + (size_t)n > cap)
			break;
		memcpy(buf + off, line, (size_t)n);
		off += (size_t)n;
	}
	return (int)off;
}
