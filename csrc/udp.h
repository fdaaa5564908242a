/* SPDX-License-Identifier: MIT */
/*
 * udp.h - UDP translation (udp.c): the per-flow UDP state, UDP's engine
 * state, and what the rest of the engine may ask of it.
 *
 * Contract. udp.c owns struct sl_udp (the udp member of every UDP flow)
 * and struct sl_udp_state (e->udp): no other file writes either. It owns
 * the host sockets of UDP flows, and frees UDP flows itself (set-up
 * failure, idle expiry in sl_udp_timer(), the flows of a removed forward
 * in sl_udp_listener_gone()); only flow.c's eviction at the cap and
 * policy.c's closing of flows a new egress policy denies free one
 * otherwise. It may call the flow table, the address map, the ICMP error
 * builder, the emitters and sl_output(). It must not write to the TAP
 * itself, must not allocate after sl_udp_init(), and never fragments: a
 * datagram larger than the guest's MTU is dropped and counted.
 */
#ifndef SLIRPY_UDP_H
#define SLIRPY_UDP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wire.h"

struct sl_engine;
struct sl_flow;
struct sl_listener;
struct sl_udp_batch;

/* struct sl_udp - the UDP state of one flow. */
struct sl_udp {
	uint8_t inbound;	/* created by a port forward */
	uint32_t listener;	/* listener index for inbound flows */
	uint8_t client_family;	/* inbound: the host client's real address */
	uint8_t client[16];
	uint16_t client_port;
};

/**
 * struct sl_udp_state - UDP's part of the engine (e->udp).
 * @tx: guest datagrams queued for one sendmmsg
 * @rx: the slots one recvmmsg fills (both preallocated, see sl_udp_init)
 * @uso_out: runs of host datagrams leave as USO frames
 */
struct sl_udp_state {
	struct sl_udp_batch *tx;
	struct sl_udp_batch *rx;
	bool uso_out;
};

int sl_udp_init(struct sl_engine *e);
void sl_udp_fini(struct sl_engine *e);
bool sl_udp_gso_valid(const struct sl_pkt *p);
void sl_udp_flush(struct sl_engine *e);
void sl_udp_input(struct sl_engine *e, const struct sl_pkt *p);
void sl_udp_sock_event(struct sl_engine *e, struct sl_flow *f, uint32_t ev);
void sl_udp_listener_event(struct sl_engine *e, struct sl_listener *l);
void sl_udp_listener_gone(struct sl_engine *e, uint32_t slot);
void sl_udp_timer(struct sl_engine *e, struct sl_flow *f);
int sl_udp_emit(struct sl_engine *e, int family, const uint8_t *dst_mac,
		const uint8_t *src, uint16_t sport, const uint8_t *dst,
		uint16_t dport, const uint8_t *payload, size_t len);

#endif /* SLIRPY_UDP_H */
