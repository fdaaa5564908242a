/* SPDX-License-Identifier: MIT */
/*
 * arp.h - ARP (arp.c): answers for the virtual gateway (N+2) and DNS host
 * (N+3).
 *
 * Contract. arp.c owns no state: it keeps no ARP cache (the guest's MAC is
 * learned by engine.c from every frame) and answers nothing else. It may
 * call the emitters and sl_output(); it must not write to the TAP itself.
 */
#ifndef SLIRPY_ARP_H
#define SLIRPY_ARP_H

#include "wire.h"

struct sl_engine;

void sl_arp_input(struct sl_engine *e, const struct sl_pkt *p);

#endif /* SLIRPY_ARP_H */
