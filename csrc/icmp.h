/* SPDX-License-Identifier: MIT */
/*
 * icmp.h - ICMP and ICMPv6 (icmp.c): echo, and every ICMP message slirpy
 * sends, the errors that quote a guest's packet included.
 *
 * Contract. icmp.c owns struct sl_icmp_state (e->icmp) and the ping
 * sockets of ICMP flows, and frees ICMP flows itself (set-up failure, idle
 * expiry in sl_icmp_timer()); only flow.c's eviction at the cap and
 * policy.c (flows a new egress policy denies) free one otherwise.
 * sl_icmp_send_error() is the one place an ICMP error is built:
 * tcp.c and udp.c call it (or sl_icmp_send_flow_error() when the packet is
 * no longer at hand) and build no ICMP themselves. It may call the flow
 * table, the address map, the emitters, sl_output() and sl_notice(); it
 * forwards no ICMP type from the guest but echo, and must not write to
 * the TAP itself.
 */
#ifndef SLIRPY_ICMP_H
#define SLIRPY_ICMP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wire.h"

struct sl_engine;
struct sl_flow;

/* Which part of a destination is unreachable (sl_icmp_send_error). */
enum sl_unreach { SL_UNREACH_NET, SL_UNREACH_HOST, SL_UNREACH_PORT,
		  SL_UNREACH_ADMIN };	/* the egress policy denies it */

/* struct sl_icmp_state - ICMP's part of the engine (e->icmp). */
struct sl_icmp_state {
	bool ping_warned;	/* Python was told ping sockets are denied */
	bool ping6_warned;
};

void sl_icmp4_input(struct sl_engine *e, const struct sl_pkt *p);
void sl_icmp6_input(struct sl_engine *e, const struct sl_pkt *p);
void sl_icmp_sock_event(struct sl_engine *e, struct sl_flow *f, uint32_t ev);
void sl_icmp_timer(struct sl_engine *e, struct sl_flow *f);
void sl_icmp_emit(struct sl_engine *e, int family, const uint8_t *src,
		  const uint8_t *dst, uint8_t type, uint8_t code,
		  const uint8_t rest[4], const uint8_t *data, size_t dlen);
void sl_icmp_send_error(struct sl_engine *e, const struct sl_pkt *p,
			enum sl_unreach why);
void sl_icmp_send_flow_error(struct sl_engine *e, const struct sl_flow *f,
			     uint32_t seq, enum sl_unreach why);

#endif /* SLIRPY_ICMP_H */
