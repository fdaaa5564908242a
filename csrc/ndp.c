// SPDX-License-Identifier: MIT
/*
 * ndp.c - IPv6 neighbour discovery for the virtual hosts (prefix::2,
 * prefix::3, fe80::2) and router advertisements: the guest configures itself
 * by SLAAC from them (RFC 4861, RFC 4862, RDNSS from RFC 8106).
 *
 * Only solicitations are answered; nothing is learned from the guest's
 * adverts, since the guest's MAC is taken from its frames. The contract is
 * in ndp.h.
 */
#include <string.h>

#include "internal.h"

#define ND_RS 133
#define ND_RA 134
#define ND_NS 135
#define ND_NA 136
#define RA_ROUTER_LIFETIME 1800
#define RA_VALID_LIFETIME 86400
#define RA_PREFERRED_LIFETIME 14400
#define RA_INTERVAL_S 600	/* unsolicited advertisements */

static void addr6(const struct sl_engine *e, uint8_t out[16], uint8_t last)
{
	memcpy(out, e->cfg.prefix6, 8);
	memset(out + 8, 0, 8);
	out[15] = last;
}

static void router_ll(uint8_t out[16])
{
	memset(out, 0, 16);
	out[0] = 0xfe;
	out[1] = 0x80;
	out[15] = 2;
}

/**
 * ra_send() - send a router advertisement from fe80::2.
 * @dst6: the soliciting address, or NULL for all-nodes (ff02::1)
 */
static void ra_send(struct sl_engine *e, const uint8_t *dst6)
{
	static const uint8_t all_nodes[16] = { 0xff, 0x02, [15] = 1 };
	uint8_t src[16], a[16], rest[4], body[8 + 8 + 8 + 32 + 24];
	uint8_t *o = body + 8;

	router_ll(src);
	rest[0] = 64;		/* current hop limit */
	rest[1] = 0;		/* no M/O: SLAAC, DNS from RDNSS */
	sl_put16(rest + 2, RA_ROUTER_LIFETIME);
	memset(body, 0, 8);	/* reachable time, retrans timer: unspecified */
	o += sl_emit_nd_lladdr(o, SL_ND_OPT_SRC_LLADDR, e->gw6_mac);
	o += sl_emit_nd_mtu(o, e->cfg.mtu);
	addr6(e, a, 0);
	o += sl_emit_nd_prefix(o, a, RA_VALID_LIFETIME, RA_PREFERRED_LIFETIME);
	if (e->cfg.dns_enabled) {
		addr6(e, a, 3);
		o += sl_emit_nd_rdnss(o, RA_ROUTER_LIFETIME, a);
	}
	sl_count(e, SL_C_router_adverts);
	sl_icmp_emit(e, 6, src, dst6 ? dst6 : all_nodes, ND_RA, 0, rest, body,
		     (size_t)(o - body));
}

static bool is_our_target(const struct sl_engine *e, const uint8_t *t)
{
	uint8_t a[16];

	addr6(e, a, 2);
	if (!memcmp(t, a, 16))
		return true;
	addr6(e, a, 3);
	if (!memcmp(t, a, 16))
		return true;
	router_ll(a);
	return !memcmp(t, a, 16);
}

static void neighbour_advert(struct sl_engine *e, const struct sl_pkt *p)
{
	static const uint8_t all_nodes[16] = { 0xff, 0x02, [15] = 1 };
	static const uint8_t unspec[16];
	const uint8_t *target = p->l4 + 8;
	uint8_t rest[4] = { 0xe0, 0, 0, 0 };	/* router, solicited, override */
	uint8_t body[16 + 8];
	bool dad = !memcmp(p->src, unspec, 16);

	if (p->l4_len < 24 || p->ttl != 255) {
		sl_count(e, SL_C_drop_icmp_malformed);
		return;
	}
	if (!is_our_target(e, target)) {
		sl_count(e, SL_C_drop_not_for_us);
		return;
	}
	if (dad)
		rest[0] = 0xa0;	/* not solicited: answer goes to all nodes */
	memcpy(body, target, 16);
	sl_emit_nd_lladdr(body + 16, SL_ND_OPT_TGT_LLADDR,
			  sl_mac_for(e, 6, target));
	sl_count(e, SL_C_ndp_adverts);
	sl_icmp_emit(e, 6, target, dad ? all_nodes : p->src, ND_NA, 0, rest,
		     body, sizeof(body));
}

void sl_ndp_input(struct sl_engine *e, const struct sl_pkt *p)
{
	static const uint8_t unspec[16];

	switch (p->icmp_type) {
	case ND_NS:
		neighbour_advert(e, p);
		break;
	case ND_RS:
		if (p->ttl != 255) {
			sl_count(e, SL_C_drop_icmp_malformed);
			return;
		}
		ra_send(e, memcmp(p->src, unspec, 16) ? p->src : NULL);
		break;
	default:
		sl_count(e, SL_C_drop_not_for_us);
	}
}

/**
 * sl_ndp_timer() - the unsolicited router advertisement, when due (with
 * IPv6, once the guest has shown up).
 * Return: when the next one is due, or 0 without IPv6.
 */
uint64_t sl_ndp_timer(struct sl_engine *e)
{
	if (!e->cfg.ipv6)
		return 0;
	if (e->guest_mac_known && e->now >= e->ndp.next_ra) {
		ra_send(e, NULL);
		e->ndp.next_ra = e->now + RA_INTERVAL_S * NSEC_PER_SEC;
	}
	return e->ndp.next_ra;
}
