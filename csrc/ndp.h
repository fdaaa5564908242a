/* SPDX-License-Identifier: MIT */
/*
 * ndp.h - IPv6 neighbour discovery and router advertisements (ndp.c), from
 * which the guest configures itself by SLAAC.
 *
 * Contract. ndp.c owns struct sl_ndp_state (e->ndp): when the next
 * unsolicited router advertisement is due. It answers solicitations for
 * the virtual hosts only and learns nothing from the guest's adverts. In
 * shared-address mode it answers for every unicast address but the
 * guest's own (cfg.guest6, and those it learns the guest claims: DAD,
 * its link-local sources), never answers DAD, and sends no unsolicited
 * RA with cfg.no_ra (a solicitation is still answered). It
 * sends through sl_icmp_emit() and must not write to the TAP itself.
 */
#ifndef SLIRPY_NDP_H
#define SLIRPY_NDP_H

#include <stdint.h>

#include "wire.h"

struct sl_engine;

#define SL_NDP_GUEST_ADDRS 8

/**
 * struct sl_ndp_state - NDP's part of the engine (e->ndp).
 * @guest: shared mode: addresses the guest showed it owns (DAD targets,
 *	its link-local sources, its adverts' targets), never answered for;
 *	a ring of SL_NDP_GUEST_ADDRS, @guest_next the slot written next
 */
struct sl_ndp_state {
	uint64_t next_ra;	/* next unsolicited RA (0: none sent yet) */
	uint8_t guest[SL_NDP_GUEST_ADDRS][16];
	uint32_t guest_next;
};

void sl_ndp_input(struct sl_engine *e, const struct sl_pkt *p);
uint64_t sl_ndp_timer(struct sl_engine *e);

#endif /* SLIRPY_NDP_H */
