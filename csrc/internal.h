/* SPDX-License-Identifier: MIT */
/*
 * internal.h - the engine: the parts every module shares, and one member
 * per protocol module, whose state its own header defines (flow.h, tcp.h,
 * udp.h, icmp.h, ndp.h, splice.h, policy.h, lorelay.h; arp.h, addr.h and
 * wire.h have none).
 *
 * Nothing here is visible to Python. The engine is one struct with fixed-size
 * pools allocated at creation: nothing on the packet path allocates, so the
 * memory a hostile guest can make slirpy use is bounded by the configured caps.
 *
 * Contract. engine.c owns the shared parts: the epoll loop and timerfd, the
 * TAP and sl_output(), the clock, the counters, the punt queue, the
 * listeners, the guest's MAC, the scratch buffers and the test hooks; ip.c
 * the IP id. A module writes its own member, and no other module's (the
 * flow table's half-open and splice counts, kept by tcp.c and splice.c,
 * are the documented exception: flow.h). Of the shared parts it writes
 * only the counters (sl_count(), or e->ctr[] += n), the output and the
 * punt queue through the functions below, its flows' epoll registration
 * (sl_epoll_set), the scratch buffers it fills, and e->next_scan, which
 * it may move earlier when it arms a timer.
 */
#ifndef SLIRPY_INTERNAL_H
#define SLIRPY_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/uio.h>
#include <linux/virtio_net.h>

#include "slirpy.h"
#include "counters.h"
#include "wire.h"
#include "flow.h"
#include "tcp.h"
#include "udp.h"
#include "icmp.h"
#include "arp.h"
#include "ndp.h"
#include "addr.h"
#include "splice.h"
#include "policy.h"
#include "lorelay.h"

#define SL_NIL UINT32_MAX
#define SL_FRAME_MAX (65535 + 14 + 10 + 64)
#define SL_PUNT_CAP 128
#define SL_PUNT_RESERVE 16	/* slots flow events leave to DHCP and notices */
#define SL_TEST_OUT_CAP 4096
/* The fuzz harness builds with a smaller value: it uses two listeners, and
 * every listener adds a flow slot that each timer pass walks. */
#ifndef SL_MAX_LISTENERS
#define SL_MAX_LISTENERS 1024
#endif
#define NSEC_PER_MSEC 1000000ULL
#define NSEC_PER_SEC 1000000000ULL

/* epoll tags: the top byte of epoll_data.u64 says what woke us. */
enum sl_tag {
	SL_TAG_TAP = 1, SL_TAG_FLOW = 2, SL_TAG_LISTENER = 3,
	SL_TAG_SPLICE = 4,	/* a spliced connection's socket (splice.c) */
	SL_TAG_NS_HELPER = 5,	/* the namespace helper's socket (splice.c) */
	SL_TAG_LORELAY = 6,	/* a -U relay's host socket (lorelay.c) */
};

/* A port-forward listener handed over by Python. */
struct sl_listener {
	int fd;
	int proto;
	int family;		/* family of the guest address */
	uint32_t id;
	uint8_t gaddr[16];
	uint16_t gport;
	bool used;
	bool splice;		/* relay by splice() through a socket made in
				 * the guest's netns, not through the TAP */
	uint8_t mode;		/* enum sl_listener_mode; splice = mode != TAP */
	bool has_splice_addr;	/* spliced connections go to splice_addr,
				 * not gaddr (sl_engine_set_listener_splice_addr) */
	uint8_t splice_addr[16];
};

struct sl_punt {
	struct sl_event ev[SL_PUNT_CAP];
	uint32_t head, count;
};

/* Frames captured when no TAP is attached: the test harness reads them. */
struct sl_test_out {
	uint8_t *frame[SL_TEST_OUT_CAP];
	uint32_t len[SL_TEST_OUT_CAP];
	uint32_t head, count;
};

/**
 * struct sl_test_hooks - what only tests use (e->test), in engine.c.
 * @drop_in/@drop_out: frames dropped each way, per mille
 *	(sl_engine_set_fault; 0: none, and no cost but a branch)
 * @prng: the xorshift state that picks them, seeded: no clock
 * @out: frames captured when no TAP is attached (sl_engine_take_output),
 *	allocated on the first such frame
 */
struct sl_test_hooks {
	uint32_t drop_in, drop_out;
	uint32_t prng;
	struct sl_test_out *out;
};

struct sl_engine {
	/* shared */
	struct sl_config cfg;
	int epfd;
	int tapfd;
	int timerfd;
	uint64_t now;
	uint64_t next_scan;	/* next timer scan */
	uint64_t timer_armed;	/* what the timerfd is set to (0: not) */
	uint8_t gw_mac[6];	/* 52:55:N+2 */
	uint8_t dns_mac[6];	/* 52:55:N+3 */
	uint8_t gw6_mac[6];	/* 52:56:...::2 */
	uint8_t dns6_mac[6];
	uint8_t guest_mac[6];	/* learned from the guest's frames */
	bool guest_mac_known;
	uint16_t ip_id;		/* ip.c: the next IPv4 id */
	uint64_t ctr[SL_C_COUNT];
	struct sl_punt punt;
	struct sl_listener listeners[SL_MAX_LISTENERS];
	/* scratch: one frame being built, one being read */
	uint8_t *rxbuf;
	uint8_t *txbuf;
	struct sl_test_hooks test;

	/* one member per module, written by that module only */
	struct sl_flow_table flows;
	struct sl_tcp_state tcp;
	struct sl_udp_state udp;
	struct sl_icmp_state icmp;
	struct sl_ndp_state ndp;
	struct sl_splice_state splice;
	struct sl_policy_state policy;
	struct sl_lorelay_state lorelay;
};

/* engine.c */
void sl_count(struct sl_engine *e, enum sl_counter_id c);
int sl_output(struct sl_engine *e, const struct virtio_net_hdr *vh,
	      struct iovec *iov, int iovcnt);
void sl_punt_event(struct sl_engine *e, const struct sl_event *ev);
void sl_notice(struct sl_engine *e, const char *text);
int sl_epoll_set(struct sl_engine *e, struct sl_flow *f, uint32_t events);
const uint8_t *sl_mac_for(const struct sl_engine *e, int family,
			  const uint8_t *addr);

/* ip.c: the headers below the transport layer, toward the guest */
const uint8_t *sl_guest_mac(const struct sl_engine *e);
size_t sl_emit_ip(struct sl_engine *e, uint8_t *buf, int family,
		  const uint8_t *src, const uint8_t *dst, uint8_t proto,
		  size_t l4len);
size_t sl_frame_headers(struct sl_engine *e, uint8_t *buf,
			const uint8_t *dst_mac, int family, const uint8_t *src,
			const uint8_t *dst, uint8_t proto, size_t l4len);

#endif /* SLIRPY_INTERNAL_H */
