/* SPDX-License-Identifier: MIT */
/*
 * lorelay.h - UDP from the guest's loopback to the host's (lorelay.c),
 * pasta's -U: a UDP forward in SL_LM_TO_HOST_LO mode.
 *
 * Contract. lorelay.c owns struct sl_lorelay_state (e->lorelay: a fixed
 * table of relays, allocated on the first datagram) and every host socket
 * in it. A relay is one peer of one such listener (a socket bound in the
 * guest's netns, made by the namespace helper) paired with a host socket
 * connected to the host's 127.0.0.1/::1 at the forward's guest port.
 * Relays are not flows: no flow-table slot, no flow events, no TAP. At
 * most SL_LORELAY_MAX live at once (the least recently used is evicted);
 * each expires after cfg.udp_idle_s idle, or when its listener is gone.
 * It may call sl_count() and epoll; it must not touch the TAP, flows or
 * other modules' state, and allocates nothing per datagram.
 */
#ifndef SLIRPY_LORELAY_H
#define SLIRPY_LORELAY_H

#include <stdint.h>

struct sl_engine;
struct sl_listener;
struct sl_lorelay;

#define SL_LORELAY_MAX 128

/* struct sl_lorelay_state - the relay table (e->lorelay), NULL until used. */
struct sl_lorelay_state {
	struct sl_lorelay *tab;
};

void sl_lorelay_listener_event(struct sl_engine *e, struct sl_listener *l);
void sl_lorelay_event(struct sl_engine *e, uint64_t tag);
void sl_lorelay_timer(struct sl_engine *e);
void sl_lorelay_fini(struct sl_engine *e);

#endif /* SLIRPY_LORELAY_H */
