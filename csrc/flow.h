/* SPDX-License-Identifier: MIT */
/*
 * flow.h - the flow table (flow.c): one struct sl_flow per translated
 * conversation, in a fixed pool with a seeded hash, and the life of a flow.
 *
 * Contract. flow.c owns struct sl_flow_table (e->flows) and the common part
 * of every struct sl_flow (key, fd slot, generation, timestamps, event
 * flags); the per-protocol part (f->tcp, f->udp) belongs to tcp.c and udp.c,
 * and flow.c only zeroes it when it hands out a slot. It enforces the
 * per-kind caps (evicting the least recently used UDP or ICMP flow at the
 * cap, never a TCP one), punts the flow events, and gives out epoll tags
 * that stay safe after a flow is freed. It must not decide what a flow does,
 * and allocates nothing after sl_flow_init(). The half-open and splice
 * counts live here because the caps are checked here; tcp.c and splice.c
 * keep them.
 *
 * The life of a flow
 * ------------------
 * Kinds: TCP and UDP flows (from the guest, or from a port forward:
 * "inbound"), and ICMP echo flows. Spliced forwarded connections are not
 * flows (splice.h).
 *
 * 1. Created by the module of its kind, and only there, with
 *    sl_flow_new() (key set, fd -1): tcp.c for a guest SYN or a connection
 *    accepted on a forwarded port; udp.c for the first datagram of a new
 *    key from the guest, or from a new host client on a forwarded port;
 *    icmp.c for the first echo request to a remote host. At the cap,
 *    sl_flow_new() refuses a TCP flow (drop_flow_cap) and evicts the least
 *    recently used UDP or ICMP flow (reason EVICTED).
 * 2. Set up: the module makes the host socket. A set-up that fails frees
 *    the flow at once and no flow event is sent for it.
 * 3. Opened: sl_flow_opened() marks a port forward's flow inbound
 *    (always: the egress policy skips those), and with cfg.flow_events
 *    marks the flow opened and punts SL_EV_FLOW_OPEN. When each kind
 *    calls it:
 *    - outbound TCP: once the host socket is made (and bound to the
 *      outbound address), *before* connect() is issued. The connection is
 *      not established yet: a connect() that fails (at once, later by
 *      SO_ERROR, or after 75 s half-open) ends the flow with reason
 *      REFUSED or TIMEOUT. TCP state CONNECTING, then ESTABLISHED when the
 *      host connection completes and our SYN-ACK goes to the guest.
 *    - inbound TCP: when the host connection is accepted, before our SYN
 *      to the guest. State SYN_TO_GUEST, then ESTABLISHED on the guest's
 *      SYN-ACK.
 *    - outbound UDP and ICMP: once the socket is connected and in epoll.
 *    - inbound UDP: when the first datagram of a new client arrives.
 * 4. Closed: the closer records the reason in f->why (enum
 *    sl_flow_close_reason) and calls sl_flow_free(), which punts
 *    SL_EV_FLOW_CLOSE if and only if SL_EV_FLOW_OPEN was punted, closes the
 *    socket (unless tcp.c deferred it: SL_FE_CLOSE_LATER), and returns the
 *    slot to the pool with a new generation, so stale epoll events and
 *    deferred tags for it are ignored. Who closes:
 *    - TCP, tcp.c only: both FINs acknowledged (FIN); the guest's RST
 *      (RST); an error or reset on the host socket (HOST_RST); connect()
 *      failed (REFUSED); half-open for 75 s, both sides closed and idle for
 *      60 s, idle for cfg.tcp_idle_s, or retransmissions given up
 *      (TIMEOUT). No TIME-WAIT is kept.
 *    - UDP, udp.c: idle for cfg.udp_idle_s (TIMEOUT); its forward removed
 *      (UNSPEC); and flow.c at the cap (EVICTED).
 *    - ICMP, icmp.c: idle for 60 s (TIMEOUT); and flow.c at the cap
 *      (EVICTED).
 *    - Any outbound flow that a new egress policy denies (POLICY), in
 *      sl_engine_set_policy() (policy.c): TCP by sl_tcp_abort() in tcp.c
 *      (RST to the guest, host socket reset), UDP and ICMP freed by
 *      policy.c itself, as flow.c's eviction does. The policy is looked
 *      up only at creation (step 1, before any socket: a denied flow is
 *      never created), and here.
 *    sl_engine_free() closes what is left with no events.
 */
#ifndef SLIRPY_FLOW_H
#define SLIRPY_FLOW_H

#include <stdbool.h>
#include <stdint.h>

#include "tcp.h"
#include "udp.h"

struct sl_engine;

enum sl_flow_kind { SL_FLOW_FREE = 0, SL_FLOW_TCP, SL_FLOW_UDP, SL_FLOW_ICMP };

/**
 * struct sl_flow - one translated conversation.
 *
 * @gaddr/@gport: the guest's side. @raddr/@rport: the remote side as the guest
 * sees it (e.g. N+2 for host loopback). Both 16 bytes; IPv4 uses the first 4.
 */
struct sl_flow {
	uint8_t kind;
	uint8_t family;
	uint16_t gport;
	uint16_t rport;
	uint8_t evflags;	/* SL_FE_* (flow events, cfg.flow_events; late close) */
	uint8_t why;		/* enum sl_flow_close_reason, set before freeing */
	uint32_t gen;
	uint8_t gaddr[16];
	uint8_t raddr[16];
	int fd;
	uint32_t events;	/* epoll events currently registered */
	uint32_t hnext;		/* next flow in the same hash bucket */
	uint32_t self;
	uint64_t created_ns;
	uint64_t last_ns;
	union {
		struct sl_tcp tcp;
		struct sl_udp udp;
	};
};

/* struct sl_flow.evflags */
#define SL_FE_OPENED 0x01	/* FLOW_OPEN was punted: FLOW_CLOSE follows */
#define SL_FE_INBOUND 0x02	/* created by a port forward */
#define SL_FE_CLOSE_LATER 0x04	/* tcp.c closes the fd at the end of the poll */

/**
 * struct sl_flow_table - the flow pool and its hash (e->flows).
 * @pool: n_max flows, an anonymous mapping touched only as used
 * @n_used: high-water mark: pool[n_used..] never touched
 * @free_head: free list through hnext
 * @nbuckets: a power of two
 * @n_half_open: TCP flows and spliced connections still connecting,
 *	against cfg.max_half_open (kept by tcp.c and splice.c)
 * @n_splice_slots: TCP cap slots spliced connections hold (splice.c)
 */
struct sl_flow_table {
	struct sl_flow *pool;
	uint32_t n_max;
	uint32_t n_used;
	uint32_t free_head;
	uint32_t *buckets;
	uint64_t hash_seed;
	uint32_t nbuckets;
	uint32_t n_by_kind[4];
	uint32_t n_half_open;
	uint32_t n_splice_slots;
};

int sl_flow_init(struct sl_engine *e);
void sl_flow_fini(struct sl_engine *e);
struct sl_flow *sl_flow_lookup(struct sl_engine *e, int kind, int family,
			       const uint8_t *gaddr, uint16_t gport,
			       const uint8_t *raddr, uint16_t rport);
struct sl_flow *sl_flow_new(struct sl_engine *e, int kind, int family,
			    const uint8_t *gaddr, uint16_t gport,
			    const uint8_t *raddr, uint16_t rport);
void sl_flow_opened(struct sl_engine *e, struct sl_flow *f, bool inbound);
void sl_flow_free(struct sl_engine *e, struct sl_flow *f);
struct sl_flow *sl_flow_from_tag(struct sl_engine *e, uint64_t tag);
uint64_t sl_flow_tag(const struct sl_flow *f);

#endif /* SLIRPY_FLOW_H */
