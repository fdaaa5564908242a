// SPDX-License-Identifier: MIT
/*
 * policy.c - the egress policy: a compiled first-match-wins rule table,
 * consulted when the guest opens an outbound flow, and nowhere else.
 *
 * Compilation (sl_engine_set_policy, from Python): each family gets the
 * rules that can match it, in policy order; a rule of prefix 16 or more is
 * filed under a hash of its first 16 bits, shorter ones and host rules in
 * a "wide" list. A lookup merges the wide list with the one bucket of the
 * destination, both in policy order, so the first rule that matches is the
 * first one of the policy that matches: the same answer as a linear scan,
 * at the cost of the rules that share the destination's /16 (by hash) and
 * the wide ones. Memory is linear in the rules (no rule is copied into
 * several buckets).
 *
 * The contract (what this file owns, may call and must not do) is in
 * policy.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "internal.h"

static const uint8_t zero16[16];

static uint64_t load64(const uint8_t *a)
{
	uint64_t v = 0;
	int i;

	for (i = 0; i < 8; i++)
		v = (v << 8) | a[i];
	return v;
}

/* The destination as two words; IPv4 in the top 32 bits of the first. */
static void addr_words(int family, const uint8_t *a, uint64_t w[2])
{
	if (family == 4) {
		w[0] = (uint64_t)sl_get32(a) << 32;
		w[1] = 0;
	} else {
		w[0] = load64(a);
		w[1] = load64(a + 8);
	}
}

static uint64_t prefix_mask(unsigned len)
{
	if (!len)
		return 0;
	return len >= 64 ? ~0ULL : ~0ULL << (64 - len);
}

static uint32_t bucket_of(uint64_t w0)
{
	uint32_t key = (uint32_t)(w0 >> 48);

	return (key * 2654435761u) >> (32 - SL_POLICY_BUCKET_BITS);
}

static int check_rule(const struct sl_policy_rule *r, uint32_t nids)
{
	if (r->action != SL_POLICY_ALLOW && r->action != SL_POLICY_DENY)
		return -EINVAL;
	if (r->proto_mask & ~(SL_PP_TCP | SL_PP_UDP | SL_PP_ICMP))
		return -EINVAL;
	if (r->port_lo > r->port_hi || r->rule_id >= nids)
		return -EINVAL;
	if (r->match == SL_PM_HOST)
		return 0;
	if (r->match != SL_PM_CIDR)
		return -EINVAL;
	if (r->family == 4)
		return r->prefix_len <= 32 ? 0 : -EINVAL;
	if (r->family == 6)
		return r->prefix_len <= 128 ? 0 : -EINVAL;
	return -EINVAL;
}

/* Whether rule @r can match destinations of family @fi (0: v4, 1: v6). */
static bool in_family(const struct sl_policy_rule *r, int fi)
{
	return r->match == SL_PM_HOST || r->family == (fi ? 6 : 4);
}

static bool is_wide(const struct sl_policy_rule *r)
{
	return r->match == SL_PM_HOST || r->prefix_len < 16;
}

static void compile_entry(struct sl_policy_entry *en,
			  const struct sl_policy_rule *r)
{
	unsigned len = r->prefix_len;

	memset(en, 0, sizeof(*en));
	en->rule_id = r->rule_id;
	en->port_lo = r->port_lo;
	en->port_hi = r->port_hi;
	en->protos = r->proto_mask ? r->proto_mask :
				     SL_PP_TCP | SL_PP_UDP | SL_PP_ICMP;
	en->action = r->action;
	en->host = r->match == SL_PM_HOST;
	if (en->host)
		return;
	addr_words(r->family, r->addr, en->net);
	if (r->family == 4) {
		en->mask[0] = prefix_mask(len);
	} else {
		en->mask[0] = prefix_mask(len);
		en->mask[1] = len > 64 ? prefix_mask(len - 64) : 0;
	}
	en->net[0] &= en->mask[0];
	en->net[1] &= en->mask[1];
}

/* The block's layout: every array of one compiled policy, in one malloc. */
struct layout {
	size_t ent[2], wide[2], bstart[2], blist[2], hits, total;
};

static size_t take(size_t *off, size_t bytes)
{
	size_t at = *off;

	*off += (bytes + 7) & ~(size_t)7;
	return at;
}

static void plan(struct layout *l, const uint32_t nent[2],
		 const uint32_t nwide[2], uint32_t nids)
{
	size_t off = (sizeof(struct sl_policy_table) + 7) & ~(size_t)7;
	int fi;

	for (fi = 0; fi < 2; fi++) {
		uint32_t nb = nent[fi] - nwide[fi];

		l->ent[fi] = take(&off, nent[fi] * sizeof(struct sl_policy_entry));
		l->wide[fi] = take(&off, nwide[fi] * sizeof(uint32_t));
		l->bstart[fi] = take(&off, (SL_POLICY_NBUCKETS + 1) *
					   sizeof(uint32_t));
		l->blist[fi] = take(&off, nb * sizeof(uint32_t));
	}
	l->hits = take(&off, ((size_t)nids + 1) * sizeof(uint64_t));
	l->total = off;
}

static void fill_family(struct sl_policy_fam *fm, int fi,
			const struct sl_policy_rule *rules, uint32_t n)
{
	uint32_t *fill = fm->bstart;	/* counts, then running offsets */
	uint32_t i, k = 0, nw = 0, b, sum = 0;

	memset(fm->bstart, 0, (SL_POLICY_NBUCKETS + 1) * sizeof(uint32_t));
	for (i = 0; i < n; i++) {
		if (!in_family(&rules[i], fi))
			continue;
		compile_entry(&fm->ent[k], &rules[i]);
		if (is_wide(&rules[i]))
			fm->wide[nw++] = k;
		else
			fm->bstart[bucket_of(fm->ent[k].net[0]) + 1]++;
		k++;
	}
	for (b = 1; b <= SL_POLICY_NBUCKETS; b++) {
		sum += fm->bstart[b];
		fm->bstart[b] = sum;
	}
	/* Second pass: place each bucketed rule; bstart[b] moves up to the
	 * bucket's end as it fills, then is shifted back by one bucket. */
	for (k = 0; k < fm->nent; k++) {
		if (fm->ent[k].host || (fm->ent[k].mask[0] >> 48) != 0xffff)
			continue;
		b = bucket_of(fm->ent[k].net[0]);
		fm->blist[fill[b]++] = k;
	}
	for (b = SL_POLICY_NBUCKETS; b > 0; b--)
		fm->bstart[b] = fm->bstart[b - 1];
	fm->bstart[0] = 0;
}

/**
 * sl_policy_compile() - check and compile @n rules into one new table.
 * Return: 0 and *@out set, or -EINVAL (a malformed rule), -E2BIG (more
 * than SL_POLICY_MAX_RULES rules or rule ids), -ENOMEM.
 */
int sl_policy_compile(struct sl_policy_table **out,
		      const struct sl_policy_rule *rules, uint32_t n,
		      uint32_t nids, uint8_t default_action)
{
	uint32_t nent[2] = { 0, 0 }, nwide[2] = { 0, 0 }, i;
	struct sl_policy_table *t;
	struct layout l;
	uint8_t *mem;
	int fi, r;

	if (n > SL_POLICY_MAX_RULES || nids > SL_POLICY_MAX_RULES)
		return -E2BIG;
	if (default_action != SL_POLICY_ALLOW &&
	    default_action != SL_POLICY_DENY)
		return -EINVAL;
	if (n && !rules)
		return -EINVAL;
	for (i = 0; i < n; i++) {
		r = check_rule(&rules[i], nids);
		if (r < 0)
			return r;
		for (fi = 0; fi < 2; fi++) {
			if (!in_family(&rules[i], fi))
				continue;
			nent[fi]++;
			nwide[fi] += is_wide(&rules[i]);
		}
	}
	plan(&l, nent, nwide, nids);
	mem = calloc(1, l.total);
	if (!mem)
		return -ENOMEM;
	t = (struct sl_policy_table *)mem;
	for (fi = 0; fi < 2; fi++) {
		struct sl_policy_fam *fm = &t->fam[fi];

		fm->ent = (struct sl_policy_entry *)(mem + l.ent[fi]);
		fm->nent = nent[fi];
		fm->wide = (uint32_t *)(mem + l.wide[fi]);
		fm->nwide = nwide[fi];
		fm->bstart = (uint32_t *)(mem + l.bstart[fi]);
		fm->blist = (uint32_t *)(mem + l.blist[fi]);
		fill_family(fm, fi, rules, n);
	}
	t->hits = (uint64_t *)(mem + l.hits);
	t->nids = nids;
	t->default_action = default_action;
	*out = t;
	return 0;
}

void sl_policy_table_free(struct sl_policy_table *t)
{
	free(t);
}

static bool entry_matches(const struct sl_policy_entry *en,
			  const struct sl_policy_query *q, const uint64_t w[2])
{
	if (en->host) {
		if (!q->host)
			return false;
	} else if ((w[0] & en->mask[0]) != en->net[0] ||
		   (w[1] & en->mask[1]) != en->net[1]) {
		return false;
	}
	if (!(en->protos & q->proto))
		return false;
	/* ICMP has no port: only a rule for every port covers it. */
	if (!q->has_port)
		return en->port_lo == 0 && en->port_hi == 65535;
	return q->port >= en->port_lo && q->port <= en->port_hi;
}

/**
 * sl_policy_match() - the action of the first rule of @t matching @q.
 * @rule_id: set to the rule's id, or UINT32_MAX for the default action
 * Return: SL_POLICY_ALLOW or SL_POLICY_DENY.
 */
int sl_policy_match(const struct sl_policy_table *t,
		    const struct sl_policy_query *q, uint32_t *rule_id)
{
	const struct sl_policy_fam *fm = &t->fam[q->family == 6];
	uint64_t w[2];
	uint32_t i = 0, j, jend, b;

	addr_words(q->family, q->addr, w);
	b = bucket_of(w[0]);
	j = fm->bstart[b];
	jend = fm->bstart[b + 1];
	/* Merge the two ascending index lists: policy order. */
	while (i < fm->nwide || j < jend) {
		uint32_t k;

		if (j == jend || (i < fm->nwide && fm->wide[i] < fm->blist[j]))
			k = fm->wide[i++];
		else
			k = fm->blist[j++];
		if (entry_matches(&fm->ent[k], q, w)) {
			*rule_id = fm->ent[k].rule_id;
			return fm->ent[k].action;
		}
	}
	*rule_id = UINT32_MAX;
	return t->default_action;
}

/**
 * sl_policy_reaches_host() - whether the host socket address @sa that the
 * address map gave for the guest's destination @dst is the host itself:
 * a loopback address, or any address the map translated to (the gateway
 * and 255.255.255.255 with host loopback, and in shared-address mode the
 * map's host entries; the DNS forwarder is exempt before this is asked).
 */
bool sl_policy_reaches_host(int family, const uint8_t *dst, const void *sa)
{
	const struct sockaddr *s = sa;

	if (s->sa_family == AF_INET) {
		const uint8_t *a = (const uint8_t *)
			&((const struct sockaddr_in *)sa)->sin_addr;

		return a[0] == 127 || family != 4 || memcmp(a, dst, 4);
	}
	{
		const uint8_t *a = ((const struct sockaddr_in6 *)sa)->
				   sin6_addr.s6_addr;
		static const uint8_t mapped[12] = { [10] = 0xff, [11] = 0xff };

		if ((!memcmp(a, zero16, 15) && a[15] == 1) ||
		    (!memcmp(a, mapped, 12) && a[12] == 127))
			return true;
		return family != 6 || memcmp(a, dst, 16);
	}
}

/*
 * DNS through slirpy's forwarder is not an outbound flow. In the slirp4netns
 * model that is N+3:53 / prefix::3:53, which the address map sends to
 * Python's forwarder (it succeeds only for TCP or UDP to port 53 there);
 * with an address-map table (pasta's --dns-forward) it is a destination
 * whose entry is dns_only, on the ports that entry maps (53 and 853). The
 * first entry for an address decides, as in addr.c's apply_map().
 */
static bool is_dns_forwarder(const struct sl_engine *e, int family,
			     const uint8_t *dst, uint16_t dport, int proto)
{
	size_t alen = family == 4 ? 4 : 16;
	unsigned i;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return false;
	for (i = 0; i < SL_MAX_ADDR_MAPS; i++) {
		const struct sl_addr_map *m = &e->cfg.maps[i];

		if (m->family == family && !memcmp(m->match, dst, alen))
			return m->dns_only && (dport == 53 || dport == 853);
	}
	if (e->cfg.shared_addr || dport != 53)
		return false;
	if (family == 4)
		return !memcmp(dst, e->cfg.dns4, 4);
	return !memcmp(dst, e->cfg.prefix6, 8) && !memcmp(dst + 8, zero16, 7) &&
	       dst[15] == 3;
}

static uint8_t proto_bit(int proto)
{
	return proto == IPPROTO_TCP ? SL_PP_TCP :
	       proto == IPPROTO_UDP ? SL_PP_UDP : SL_PP_ICMP;
}

/*
 * One SL_EV_POLICY_DENY, unless this destination had one in the last
 * second (a direct-mapped table of recent ones) or the punt queue is down
 * to the slots kept for DHCP and notices.
 */
static void deny_event(struct sl_engine *e, int family, int proto,
		       const uint8_t *src, uint16_t sport, const uint8_t *dst,
		       uint16_t dport, uint32_t rule_id)
{
	size_t alen = family == 4 ? 4 : 16;
	struct sl_policy_recent *rc;
	struct sl_event ev;
	uint32_t h = 2166136261u;
	size_t i;

	for (i = 0; i < alen; i++)
		h = (h ^ dst[i]) * 16777619u;
	rc = &e->policy.recent[h % SL_POLICY_RECENT];
	if (rc->family == family && !memcmp(rc->addr, dst, alen) &&
	    e->now - rc->at_ns < NSEC_PER_SEC) {
		sl_count(e, SL_C_policy_events_suppressed);
		return;
	}
	if (e->punt.count >= SL_PUNT_CAP - SL_PUNT_RESERVE) {
		sl_count(e, SL_C_policy_events_suppressed);
		return;
	}
	rc->family = (uint8_t)family;
	memcpy(rc->addr, dst, alen);
	rc->at_ns = e->now;
	memset(&ev, 0, offsetof(struct sl_event, data));
	ev.type = SL_EV_POLICY_DENY;
	ev.family = (uint8_t)family;
	ev.proto = (uint8_t)proto;
	memcpy(ev.src, src, alen);
	memcpy(ev.dst, dst, alen);
	ev.sport = sport;
	ev.dport = dport;
	ev.len = 4;
	ev.data[0] = (uint8_t)rule_id;
	ev.data[1] = (uint8_t)(rule_id >> 8);
	ev.data[2] = (uint8_t)(rule_id >> 16);
	ev.data[3] = (uint8_t)(rule_id >> 24);
	sl_punt_event(e, &ev);
}

/*
 * Whether the policy is not asked at all: no flow would be made (@r < 0,
 * from the address map: the caller refuses it its own way), or DNS to our
 * forwarder, which is not an outbound flow.
 */
static bool exempt(const struct sl_engine *e, int family, int proto,
		   const uint8_t *dst, uint16_t dport, int r)
{
	return r < 0 || is_dns_forwarder(e, family, dst, dport, proto);
}

/*
 * The policy's verdict on a flow to @dst:@dport of @proto, where the address
 * map gave @sa. Return: true to deny. @rule_id: what decided.
 */
static bool verdict(struct sl_engine *e, int family, int proto,
		    const uint8_t *dst, uint16_t dport, const void *sa,
		    uint32_t *rule_id)
{
	const struct sl_policy_table *t = e->policy.table;
	struct sl_policy_query q;

	q.family = (uint8_t)family;
	q.proto = proto_bit(proto);
	q.has_port = proto == IPPROTO_TCP || proto == IPPROTO_UDP;
	q.port = q.has_port ? dport : 0;
	q.addr = dst;
	q.host = sl_policy_reaches_host(family, dst, sa);
	return sl_policy_match(t, &q, rule_id) == SL_POLICY_DENY;
}

/**
 * sl_policy_denies() - whether the policy refuses the new outbound flow
 * that the guest's packet @p would open; called right after
 * sl_remote_sockaddr() gave @r and @sa for its destination. Counts the
 * rule's hit, and on a denial policy_denied and a (rate-limited) event.
 * The caller answers the guest and makes no flow when it returns true.
 */
bool sl_policy_denies(struct sl_engine *e, const struct sl_pkt *p, int r,
		      const void *sa)
{
	struct sl_policy_table *t = e->policy.table;
	bool icmp = p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP;
	uint16_t sport = icmp ? sl_get16(p->l4 + 4) : p->sport;
	uint16_t dport = icmp ? 0 : p->dport;
	uint32_t rule_id;
	bool deny;

	if (!t)
		return false;	/* no policy: the state at start */
	if (exempt(e, p->family, p->proto, p->dst, dport, r))
		return false;	/* not looked up: no hit */
	deny = verdict(e, p->family, p->proto, p->dst, dport, sa, &rule_id);
	t->hits[rule_id == UINT32_MAX ? t->nids : rule_id]++;
	if (!deny)
		return false;
	sl_count(e, SL_C_policy_denied);
	deny_event(e, p->family, p->proto, p->src, sport, p->dst, dport,
		   rule_id);
	return true;
}

/* Close the outbound flows a new policy denies (not counted as hits). */
static void close_denied(struct sl_engine *e)
{
	uint32_t k;

	for (k = 0; k < e->flows.n_used; k++) {
		struct sl_flow *f = &e->flows.pool[k];
		struct sockaddr_in6 sa;
		uint32_t salen, rule_id;
		int proto, r;

		if (f->kind == SL_FLOW_FREE || (f->evflags & SL_FE_INBOUND) ||
		    (f->kind == SL_FLOW_UDP && f->udp.inbound))
			continue;
		proto = f->kind == SL_FLOW_TCP ? IPPROTO_TCP :
			f->kind == SL_FLOW_UDP ? IPPROTO_UDP :
			f->family == 4 ? IPPROTO_ICMP : IPPROTO_ICMPV6;
		r = sl_remote_sockaddr(e, f->family, f->raddr, f->rport, proto,
				       &sa, &salen);
		if (exempt(e, f->family, proto, f->raddr, f->rport, r) ||
		    !verdict(e, f->family, proto, f->raddr, f->rport, &sa,
			     &rule_id))
			continue;
		sl_count(e, SL_C_policy_closed);
		deny_event(e, f->family, proto, f->gaddr, f->gport, f->raddr,
			   f->rport, rule_id);
		if (f->kind == SL_FLOW_TCP) {
			sl_tcp_abort(e, f, SL_FC_POLICY);
			continue;
		}
		sl_count(e, f->kind == SL_FLOW_UDP ? SL_C_udp_flows_closed :
						     SL_C_icmp_flows_closed);
		f->why = SL_FC_POLICY;
		sl_flow_free(e, f);
	}
}

/**
 * sl_engine_set_policy() - replace the egress policy (slirpy.h).
 *
 * The new table is compiled completely before anything changes, so a
 * malformed rule leaves the old policy in place. Then the outbound flows
 * it denies are closed: TCP with a RST to the guest and the host socket
 * reset, UDP and ICMP freed.
 */
int sl_engine_set_policy(struct sl_engine *e, uint64_t now_ns,
			 const struct sl_policy_rule *rules, uint32_t n,
			 uint32_t nids, uint8_t default_action)
{
	struct sl_policy_table *t = NULL;
	int r;

	r = sl_policy_compile(&t, rules, n, nids, default_action);
	if (r < 0)
		return r;
	e->now = now_ns;
	sl_policy_table_free(e->policy.table);
	memset(e->policy.recent, 0, sizeof(e->policy.recent));
	e->policy.nids = nids;
	e->policy.table = t;
	if (!n && default_action == SL_POLICY_ALLOW) {
		/* No policy, as at start: nothing is looked up. */
		sl_policy_table_free(t);
		e->policy.table = NULL;
		return 0;
	}
	close_denied(e);
	return 0;
}

/**
 * sl_engine_policy_hits() - the hit counters of the policy (slirpy.h):
 * out[i] for rule id i, out[nids] for the default action; all zero when
 * there is no policy. Return: the number written.
 */
int sl_engine_policy_hits(const struct sl_engine *e, uint64_t *out,
			  uint32_t n)
{
	const struct sl_policy_table *t = e->policy.table;
	uint32_t want = e->policy.nids + 1, i;

	if (!out && n)
		return -EINVAL;
	if (n > want)
		n = want;
	for (i = 0; i < n; i++)
		out[i] = t ? t->hits[i] : 0;
	return (int)n;
}

/* sl_policy_fini() - free the policy at engine free. */
void sl_policy_fini(struct sl_engine *e)
{
	sl_policy_table_free(e->policy.table);
	e->policy.table = NULL;
}
