/* SPDX-License-Identifier: MIT */
/*
 * splice.h - spliced forwarded ports (splice.c): host socket <-> pipes <->
 * a socket made in the guest's network namespace, bypassing the TAP.
 *
 * Contract. splice.c owns struct sl_splice_state (e->splice: the
 * connection table, allocated when the namespace helper is set) and every
 * fd of a spliced connection. Spliced connections are not flows: they
 * have no slot in the flow table and no flow events, but each takes
 * SL_SPLICE_FDS slots of the TCP cap (e->flows.n_splice_slots) and, while
 * it waits for its socket or connects, one half-open slot
 * (e->flows.n_half_open); splice.c takes and gives back both. It may call
 * sl_count() and epoll; it must not touch the TAP, TCP flows or their
 * state, and must not allocate per connection or per chunk.
 *
 * Listeners: tcp.c accepts every TCP forward's connections once, asks
 * sl_splice_wants() (the listener's enum sl_listener_mode, and for
 * SL_LM_SPLIT whether the peer is loopback) and hands the fd either to
 * sl_splice_take(), which owns it from then on, or to its own TAP path.
 * A spliced connection goes to the listener's splice_addr when set
 * (sl_engine_set_listener_splice_addr, here), else to its guest address.
 */
#ifndef SLIRPY_SPLICE_H
#define SLIRPY_SPLICE_H

#include <stdbool.h>
#include <stdint.h>

struct sl_engine;
struct sl_listener;
struct sl_splice_tab;

/* A spliced connection holds 6 fds (2 sockets, 2 pipes): it takes as many
 * slots of the TCP flow cap, which clamp_to_fd_limit sized in fds. */
#define SL_SPLICE_FDS 6

/* struct sl_splice_state - splicing's part of the engine (e->splice). */
struct sl_splice_state {
	struct sl_splice_tab *tab;	/* NULL until a namespace helper is set */
};

int sl_splice_tab_init(struct sl_engine *e);
bool sl_splice_wants(const struct sl_listener *l, const void *sa);
void sl_splice_take(struct sl_engine *e, struct sl_listener *l, int fd);
void sl_splice_event(struct sl_engine *e, uint64_t tag, uint32_t ev);
void sl_splice_helper_event(struct sl_engine *e, uint32_t ev);
void sl_splice_timer(struct sl_engine *e);
void sl_splice_fini(struct sl_engine *e);

#endif /* SLIRPY_SPLICE_H */
