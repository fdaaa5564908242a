/* SPDX-License-Identifier: MIT */
/*
 * ndp.h - IPv6 neighbour discovery and router advertisements (ndp.c), from
 * which the guest configures itself by SLAAC.
 *
 * Contract. ndp.c owns struct sl_ndp_state (e->ndp): when the next
 * unsolicited router advertisement is due. It answers solicitations for
 * the virtual hosts only and learns nothing from the guest's adverts. It
 * sends through sl_icmp_emit() and must not write to the TAP itself.
 */
#ifndef SLIRPY_NDP_H
#define SLIRPY_NDP_H

#include <stdint.h>

#include "wire.h"

struct sl_engine;

/* struct sl_ndp_state - NDP's part of the engine (e->ndp). */
struct sl_ndp_state {
	uint64_t next_ra;	/* next unsolicited RA (0: none sent yet) */
};

void sl_ndp_input(struct sl_engine *e, const struct sl_pkt *p);
uint64_t sl_ndp_timer(struct sl_engine *e);

#endif /* SLIRPY_NDP_H */
