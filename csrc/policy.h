/* SPDX-License-Identifier: MIT */
/*
 * policy.h - the egress policy (policy.c): which new outbound flows the
 * guest may open, as a compiled table of first-match-wins rules.
 *
 * Contract. policy.c owns struct sl_policy_state (e->policy): the compiled
 * table, the per-rule hit counters and the rate limit of SL_EV_POLICY_DENY
 * events. It is consulted once per new outbound flow, by tcp.c, udp.c and
 * icmp.c right after sl_remote_sockaddr() (sl_policy_denies()); the caller
 * answers a denial (RST, ICMP administratively prohibited) and makes no
 * socket. Established flows never reach it. On a new policy it closes the
 * outbound flows the policy denies: TCP ones through sl_tcp_abort() (tcp.c
 * frees TCP flows), UDP and ICMP ones itself, as flow.c's eviction does.
 * It allocates only in sl_engine_set_policy() (one block per policy) and
 * frees in sl_policy_fini(); it sends nothing itself but the punt event.
 *
 * The matcher is split from the engine (sl_policy_compile/sl_policy_match
 * on a struct sl_policy_table alone) so that the fuzz target and the
 * microbenchmark drive it without an engine.
 */
#ifndef SLIRPY_POLICY_H
#define SLIRPY_POLICY_H

#include <stdbool.h>
#include <stdint.h>

#include "slirpy.h"
#include "wire.h"

struct sl_engine;

/* Buckets per family: rules of prefix >= 16 go to the bucket of their
 * first 16 bits; shorter ones (and host rules) to the "wide" list that
 * every lookup scans alongside one bucket. */
#define SL_POLICY_BUCKET_BITS 10
#define SL_POLICY_NBUCKETS (1u << SL_POLICY_BUCKET_BITS)
/* Deny events: at most one per destination per second, remembered in a
 * small direct-mapped table (a collision may let one more through). */
#define SL_POLICY_RECENT 64

/**
 * struct sl_policy_entry - one compiled rule.
 * @net/@mask: the address as two big-endian 64-bit words (IPv4 in the top
 *	32 bits of the first), already masked
 * @protos: SL_PP_* bits, never 0 (0 = any compiles to all three)
 * @host: SL_PM_HOST: matches a destination that reaches the host, of
 *	either family, whatever its address
 */
struct sl_policy_entry {
	uint64_t net[2];
	uint64_t mask[2];
	uint32_t rule_id;
	uint16_t port_lo, port_hi;
	uint8_t protos;
	uint8_t action;
	uint8_t host;
	uint8_t pad;
};

/**
 * struct sl_policy_fam - the compiled table of one family.
 * @ent: the rules that can match this family, in policy order
 * @wide: indexes into @ent of rules every lookup scans (ascending)
 * @bstart/@blist: per bucket, blist[bstart[b] .. bstart[b + 1]) are the
 *	indexes into @ent of the rules of that bucket (ascending)
 */
struct sl_policy_fam {
	struct sl_policy_entry *ent;
	uint32_t nent;
	uint32_t *wide;
	uint32_t nwide;
	uint32_t *bstart;
	uint32_t *blist;
};

/**
 * struct sl_policy_table - a compiled policy: one block from one malloc.
 * @fam: [0] IPv4, [1] IPv6
 * @hits: nids + 1 counters, the last for the default action
 */
struct sl_policy_table {
	struct sl_policy_fam fam[2];
	uint64_t *hits;
	uint32_t nids;
	uint8_t default_action;
};

/* One remembered denied destination (the deny events' rate limit). */
struct sl_policy_recent {
	uint8_t addr[16];
	uint8_t family;
	uint64_t at_ns;
};

/**
 * struct sl_policy_state - the policy's part of the engine (e->policy).
 * @table: NULL: no policy (everything allowed, nothing looked up)
 * @recent: the destinations of the last deny events (their rate limit)
 */
struct sl_policy_state {
	struct sl_policy_table *table;
	uint32_t nids;		/* of the last sl_engine_set_policy() */
	struct sl_policy_recent recent[SL_POLICY_RECENT];
};

/* What a lookup is asked: a destination as the guest sent it. */
struct sl_policy_query {
	uint8_t family;		/* 4 or 6 */
	uint8_t proto;		/* one SL_PP_* bit */
	bool has_port;		/* false for ICMP */
	bool host;		/* the destination reaches the host */
	uint16_t port;
	const uint8_t *addr;
};

int sl_policy_compile(struct sl_policy_table **out,
		      const struct sl_policy_rule *rules, uint32_t n,
		      uint32_t nids, uint8_t default_action);
void sl_policy_table_free(struct sl_policy_table *t);
int sl_policy_match(const struct sl_policy_table *t,
		    const struct sl_policy_query *q, uint32_t *rule_id);
bool sl_policy_reaches_host(int family, const uint8_t *dst, const void *sa);

bool sl_policy_denies(struct sl_engine *e, const struct sl_pkt *p, int r,
		      const void *sa);
void sl_policy_fini(struct sl_engine *e);

#endif /* SLIRPY_POLICY_H */
