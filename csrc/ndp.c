// SPDX-License-Identifier: MIT
/*
 * ndp.c - IPv6 neighbour discovery for the virtual hosts (prefix::2,
 * prefix::3, fe80::2) and router advertisements: the guest configures itself
 * by SLAAC from them (RFC 4861, RFC 4862, RDNSS from RFC 8106).
 *
 * Only solicitations are answered; nothing is learned from the guest's
 * adverts, since the guest's MAC is taken from its frames. The contract is
 * in ndp.h.
 *
 * Shared-address mode (pasta's model): every unicast target is behind us
 * except the guest's own addresses, which it shows us by DAD, as the
 * source of its link-local traffic and in its adverts (learned into
 * e->ndp.guest); DAD itself is never answered. RDNSS then carries the
 * DNS-only map entry's address (--dns-forward), if any.
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

/* Shared mode: the first IPv6 DNS-only map entry's address, or NULL. */
static const uint8_t *shared_dns6(const struct sl_engine *e)
{
	unsigned i;

	for (i = 0; i < SL_MAX_ADDR_MAPS; i++)
		if (e->cfg.maps[i].family == 6 && e->cfg.maps[i].dns_only)
			return e->cfg.maps[i].match;
	return NULL;
}

/* Shared mode: remember that the guest owns @a (unicast, not ::). */
static void learn_guest(struct sl_engine *e, const uint8_t *a)
{
	static const uint8_t unspec[16];
	uint32_t i;

	if (a[0] == 0xff || !memcmp(a, unspec, 16))
		return;
	for (i = 0; i < SL_NDP_GUEST_ADDRS; i++)
		if (!memcmp(e->ndp.guest[i], a, 16))
			return;
	memcpy(e->ndp.guest[e->ndp.guest_next], a, 16);
	e->ndp.guest_next = (e->ndp.guest_next + 1) % SL_NDP_GUEST_ADDRS;
}

/* Shared mode: a target we answer for (any unicast but the guest's). */
static bool shared_target(const struct sl_engine *e, const uint8_t *t)
{
	static const uint8_t unspec[16];
	uint32_t i;

	if (t[0] == 0xff || !memcmp(t, unspec, 16) ||
	    !memcmp(t, e->cfg.guest6, 16))
		return false;
	for (i = 0; i < SL_NDP_GUEST_ADDRS; i++)
		if (!memcmp(e->ndp.guest[i], t, 16))
			return false;
	return true;
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
	if (e->cfg.shared_addr) {
		const uint8_t *dns = shared_dns6(e);

		if (dns)
			o += sl_emit_nd_rdnss(o, RA_ROUTER_LIFETIME, dns);
	} else if (e->cfg.dns_enabled) {
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
	if (e->cfg.shared_addr) {
		if (dad)
			learn_guest(e, target);
		if (dad || !memcmp(target, p->src, 16) ||
		    !shared_target(e, target)) {
			sl_count(e, SL_C_drop_not_for_us);
			return;
		}
	} else if (!is_our_target(e, target)) {
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

	if (e->cfg.shared_addr && p->ttl == 255) {
		if (p->src[0] == 0xfe && (p->src[1] & 0xc0) == 0x80)
			learn_guest(e, p->src);
		if (p->icmp_type == ND_NA && p->l4_len >= 24)
			learn_guest(e, p->l4 + 8);
	}
	switch (p->icmp_type) {
	case ND_NS:
		neighbour_advert(e, p);
		break;
	case ND_RS:
		if (p->ttl != 255) {
			sl_count(e, SL_C_drop_icmp_malformed);
			return;
		}
		/* pasta's --no-ra (implied by --config-net): not even when
		 * asked, or the guest would add a SLAAC address of its own
		 * next to the host's copied one. */
		if (e->cfg.no_ra) {
			sl_count(e, SL_C_drop_not_for_us);
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
	if (!e->cfg.ipv6 || e->cfg.no_ra)
		return 0;
	if (e->guest_mac_known && e->now >= e->ndp.next_ra) {
		ra_send(e, NULL);
		e->ndp.next_ra = e->now + RA_INTERVAL_S * NSEC_PER_SEC;
	}
	return e->ndp.next_ra;
}
