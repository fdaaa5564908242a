// SPDX-License-Identifier: MIT
/*
 * flow.c - the flow table: a fixed pool of struct sl_flow, a seeded hash on
 * (kind, family, guest addr/port, remote addr/port), and the epoll tags that
 * name a flow safely after it may have been freed.
 *
 * Caps are enforced here (per kind); what a flow does lives in tcp.c, udp.c
 * and icmp.c. The pool is allocated once, so a flood of new flows from the
 * guest costs no memory beyond the configured maximum. The contract, and
 * the life of a flow from sl_flow_new() to sl_flow_free(), are in flow.h.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <netinet/in.h>

#include "internal.h"

static void flow_event(struct sl_engine *e, struct sl_flow *f, uint32_t type);

static uint32_t flow_hash(const struct sl_engine *e, int kind, int family,
			  const uint8_t *gaddr, uint16_t gport,
			  const uint8_t *raddr, uint16_t rport)
{
	/* FNV-1a over the key, seeded at start so that a guest cannot aim
	 * all its flows at one bucket. */
	uint64_t h = 1469598103934665603ULL ^ e->flows.hash_seed;
	size_t alen = family == 4 ? 4 : 16, i;

#define MIX(b) do { h ^= (uint8_t)(b); h *= 1099511628211ULL; } while (0)
	MIX(kind);
	MIX(family);
	for (i = 0; i < alen; i++)
		MIX(gaddr[i]);
	for (i = 0; i < alen; i++)
		MIX(raddr[i]);
	MIX(gport >> 8);
	MIX(gport);
	MIX(rport >> 8);
	MIX(rport);
#undef MIX
	h ^= h >> 29;
	return (uint32_t)h & (e->flows.nbuckets - 1);
}

/**
 * sl_flow_init() - reserve the pool and allocate the hash table for the caps
 * in e->cfg.
 *
 * The pool is an anonymous mapping that nothing touches up front: flows are
 * handed out from the free list, then from the never-used tail (n_used
 * is the high-water mark), so an idle engine's RSS holds no flow pages and
 * grows only with the flows a guest really opens.
 *
 * Return: 0 or -1 (ENOMEM).
 */
int sl_flow_init(struct sl_engine *e)
{
	uint32_t n = e->cfg.max_tcp_flows + e->cfg.max_udp_flows +
		     e->cfg.max_icmp_flows + SL_MAX_LISTENERS;
	uint32_t i;
	void *pool;

	if (getrandom(&e->flows.hash_seed, sizeof(e->flows.hash_seed),
		      GRND_NONBLOCK) != (ssize_t)sizeof(e->flows.hash_seed))
		e->flows.hash_seed = (uint64_t)getpid() * 0x9e3779b97f4a7c15ULL;
	e->flows.n_max = n;
	e->flows.n_used = 0;
	e->flows.free_head = SL_NIL;
	pool = mmap(NULL, (size_t)n * sizeof(*e->flows.pool), PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	e->flows.pool = pool == MAP_FAILED ? NULL : pool;
	for (e->flows.nbuckets = 64; e->flows.nbuckets < n * 2;
	     e->flows.nbuckets <<= 1)
		;
	e->flows.buckets = malloc(e->flows.nbuckets * sizeof(*e->flows.buckets));
	if (!e->flows.pool || !e->flows.buckets)
		return -1;
	for (i = 0; i < e->flows.nbuckets; i++)
		e->flows.buckets[i] = SL_NIL;
	return 0;
}

void sl_flow_fini(struct sl_engine *e)
{
	uint32_t i;

	if (e->flows.pool) {
		for (i = 0; i < e->flows.n_used; i++)
			if (e->flows.pool[i].kind != SL_FLOW_FREE &&
			    e->flows.pool[i].fd >= 0)
				close(e->flows.pool[i].fd);
		munmap(e->flows.pool, (size_t)e->flows.n_max * sizeof(*e->flows.pool));
	}
	free(e->flows.buckets);
}

static bool key_eq(const struct sl_flow *f, int kind, int family,
		   const uint8_t *gaddr, uint16_t gport, const uint8_t *raddr,
		   uint16_t rport)
{
	size_t alen = family == 4 ? 4 : 16;

	return f->kind == kind && f->family == family && f->gport == gport &&
	       f->rport == rport && !memcmp(f->gaddr, gaddr, alen) &&
	       !memcmp(f->raddr, raddr, alen);
}

struct sl_flow *sl_flow_lookup(struct sl_engine *e, int kind, int family,
			       const uint8_t *gaddr, uint16_t gport,
			       const uint8_t *raddr, uint16_t rport)
{
	uint32_t i = e->flows.buckets[flow_hash(e, kind, family, gaddr, gport, raddr,
					  rport)];

	while (i != SL_NIL) {
		struct sl_flow *f = &e->flows.pool[i];

		if (key_eq(f, kind, family, gaddr, gport, raddr, rport))
			return f;
		i = f->hnext;
	}
	return NULL;
}

static uint32_t kind_cap(const struct sl_engine *e, int kind)
{
	switch (kind) {
	case SL_FLOW_TCP:
		return e->cfg.max_tcp_flows;
	case SL_FLOW_UDP:
		return e->cfg.max_udp_flows;
	default:
		return e->cfg.max_icmp_flows;
	}
}

/**
 * evict_lru() - make room for a new UDP or ICMP flow at the cap by closing
 * the least recently used flow of @kind.
 *
 * Datagram flows carry no state the guest cannot recreate, so a guest that
 * sweeps thousands of ports only recycles its own table: the flows it uses
 * right after (DNS above all) open at once instead of waiting out the idle
 * timeout. TCP flows are never evicted (that would reset live connections);
 * at the TCP cap new SYNs are refused. O(pool) per eviction, which is paid
 * only at the cap and is small next to the socket() + connect() that follow.
 *
 * Return: true when a flow was freed.
 */
static bool evict_lru(struct sl_engine *e, int kind)
{
	struct sl_flow *lru = NULL;
	uint32_t i;

	for (i = 0; i < e->flows.n_used; i++) {
		struct sl_flow *f = &e->flows.pool[i];

		if (f->kind == kind && (!lru || f->last_ns < lru->last_ns))
			lru = f;
	}
	if (!lru)
		return false;
	sl_count(e, kind == SL_FLOW_UDP ? SL_C_udp_flows_closed :
					  SL_C_icmp_flows_closed);
	sl_count(e, SL_C_flows_evicted);
	lru->why = SL_FC_EVICTED;
	sl_flow_free(e, lru);
	return true;
}

/**
 * sl_flow_new() - take a flow from the pool and insert it in the hash.
 *
 * Return: the flow with fd = -1 and the key set, or NULL when the cap for
 * @kind is reached (counted as drop_flow_cap). At the UDP and ICMP caps the
 * least recently used flow of that kind is evicted instead (flows_evicted).
 */
struct sl_flow *sl_flow_new(struct sl_engine *e, int kind, int family,
			    const uint8_t *gaddr, uint16_t gport,
			    const uint8_t *raddr, uint16_t rport)
{
	struct sl_flow *f;
	uint32_t b, gen;

	/* Spliced connections (splice.c) take TCP slots too. */
	if (e->flows.n_by_kind[kind] +
		    (kind == SL_FLOW_TCP ? e->flows.n_splice_slots : 0) >=
		    kind_cap(e, kind) &&
	    (kind == SL_FLOW_TCP || !evict_lru(e, kind))) {
		sl_count(e, SL_C_drop_flow_cap);
		return NULL;
	}
	if (e->flows.free_head != SL_NIL) {
		f = &e->flows.pool[e->flows.free_head];
		e->flows.free_head = f->hnext;
	} else if (e->flows.n_used < e->flows.n_max) {
		f = &e->flows.pool[e->flows.n_used++];	/* first touch of this slot */
	} else {
		sl_count(e, SL_C_drop_flow_cap);
		return NULL;
	}
	gen = f->gen + 1;
	memset((uint8_t *)f, 0, sizeof(*f));
	f->self = (uint32_t)(f - e->flows.pool);
	f->gen = gen;
	f->kind = (uint8_t)kind;
	f->family = (uint8_t)family;
	f->fd = -1;
	f->gport = gport;
	f->rport = rport;
	memcpy(f->gaddr, gaddr, family == 4 ? 4 : 16);
	memcpy(f->raddr, raddr, family == 4 ? 4 : 16);
	f->created_ns = e->now;
	f->last_ns = e->now;
	b = flow_hash(e, kind, family, gaddr, gport, raddr, rport);
	f->hnext = e->flows.buckets[b];
	e->flows.buckets[b] = f->self;
	e->flows.n_by_kind[kind]++;
	return f;
}

/**
 * sl_flow_free() - close the flow's socket, unlink it and return it to the
 * pool. The generation bump makes stale epoll events for it harmless.
 */
void sl_flow_free(struct sl_engine *e, struct sl_flow *f)
{
	uint32_t b = flow_hash(e, f->kind, f->family, f->gaddr, f->gport,
			       f->raddr, f->rport);
	uint32_t *pp = &e->flows.buckets[b];

	while (*pp != SL_NIL && *pp != f->self)
		pp = &e->flows.pool[*pp].hnext;
	if (*pp == f->self)
		*pp = f->hnext;
	if (f->evflags & SL_FE_OPENED)
		flow_event(e, f, SL_EV_FLOW_CLOSE);
	if (f->fd >= 0 && !(f->evflags & SL_FE_CLOSE_LATER))
		close(f->fd);
	e->flows.n_by_kind[f->kind]--;
	f->kind = SL_FLOW_FREE;
	f->fd = -1;
	f->gen++;
	f->hnext = e->flows.free_head;
	e->flows.free_head = f->self;
}

uint64_t sl_flow_tag(const struct sl_flow *f)
{
	return ((uint64_t)SL_TAG_FLOW << 56) |
	       ((uint64_t)(f->gen & 0xffffff) << 32) | f->self;
}

struct sl_flow *sl_flow_from_tag(struct sl_engine *e, uint64_t tag)
{
	uint32_t idx = (uint32_t)tag;
	struct sl_flow *f;

	if (idx >= e->flows.n_used)
		return NULL;
	f = &e->flows.pool[idx];
	if (f->kind == SL_FLOW_FREE ||
	    (f->gen & 0xffffff) != ((tag >> 32) & 0xffffff))
		return NULL;
	return f;
}

/**
 * flow_event() - punt SL_EV_FLOW_OPEN or SL_EV_FLOW_CLOSE for @f.
 *
 * Flow events are for logging (slirpy run -v): they may use the punt queue
 * only up to SL_PUNT_RESERVE slots short of full, so that a burst of short
 * flows never crowds out DHCP or a TAP-down event; past that they are
 * dropped and counted (flow_events_dropped), never waited for.
 */
static void flow_event(struct sl_engine *e, struct sl_flow *f, uint32_t type)
{
	size_t alen = f->family == 4 ? 4 : 16;
	struct sl_flow_info info = { 0 };
	struct sl_event ev;

	if (e->punt.count >= SL_PUNT_CAP - SL_PUNT_RESERVE) {
		sl_count(e, SL_C_flow_events_dropped);
		return;
	}
	memset(&ev, 0, offsetof(struct sl_event, data));
	ev.type = type;
	ev.family = f->family;
	ev.proto = f->kind == SL_FLOW_TCP ? IPPROTO_TCP :
		   f->kind == SL_FLOW_UDP ? IPPROTO_UDP :
		   f->family == 4 ? IPPROTO_ICMP : IPPROTO_ICMPV6;
	memcpy(ev.src, f->gaddr, alen);
	memcpy(ev.dst, f->raddr, alen);
	ev.sport = f->gport;
	ev.dport = f->rport;
	if (f->evflags & SL_FE_INBOUND)
		info.flags |= SL_FI_INBOUND;
	if (type == SL_EV_FLOW_CLOSE) {
		info.duration_ns = e->now - f->created_ns;
		info.reason = f->why;
		if (f->kind == SL_FLOW_TCP && sl_tcp_bytes(f, &info))
			info.flags |= SL_FI_BYTES;
	}
	ev.len = sizeof(info);
	memcpy(ev.data, &info, sizeof(info));
	sl_punt_event(e, &ev);
}

/**
 * sl_flow_opened() - the flow's host side exists: mark it opened and punt
 * SL_EV_FLOW_OPEN when cfg.flow_events asks for it (else do nothing).
 * @inbound: created by a port forward rather than by the guest.
 *
 * For an outbound TCP flow this comes before connect() is issued, not
 * after it completed: a connection that then fails gets SL_EV_FLOW_CLOSE
 * with reason SL_FC_REFUSED or SL_FC_TIMEOUT. Flows that fail during
 * set-up, before this, get no event at all. When each kind calls it is in
 * flow.h ("The life of a flow").
 */
void sl_flow_opened(struct sl_engine *e, struct sl_flow *f, bool inbound)
{
	/* Kept with or without flow events: the egress policy closes only
	 * outbound flows (policy.c). */
	if (inbound)
		f->evflags |= SL_FE_INBOUND;
	if (!e->cfg.flow_events)
		return;
	f->evflags |= SL_FE_OPENED;
	flow_event(e, f, SL_EV_FLOW_OPEN);
}
