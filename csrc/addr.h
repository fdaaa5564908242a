/* SPDX-License-Identifier: MIT */
/*
 * addr.h - the address map (addr.c) between the guest's view and host
 * sockets.
 *
 * Contract. addr.c owns no state: it reads the configuration only. It is
 * the one place that decides which host address a guest destination means
 * (and refuses those that would reach the host's loopback by another
 * name), how a host peer appears to the guest, and which source address
 * outbound sockets bind to. It makes no socket and sends nothing.
 *
 * It also owns the address-map table's one writer,
 * sl_engine_set_addr_map() (slirpy.h), which changes e->cfg.maps only.
 * Order for a guest destination: the map table; then, in slirp4netns
 * mode only, N+2/N+3 (prefix::2/::3); then the "never a host socket"
 * checks; then the address itself. Flows are keyed by the guest's view,
 * so replies always appear to come from the address the guest used.
 */
#ifndef SLIRPY_ADDR_H
#define SLIRPY_ADDR_H

#include <stdbool.h>
#include <stdint.h>

struct sl_engine;

int sl_remote_sockaddr(struct sl_engine *e, int family, const uint8_t *raddr,
		       uint16_t rport, int proto, void *sa, uint32_t *salen);
int sl_guest_view_of(struct sl_engine *e, const void *sa, int *family,
		     uint8_t *addr, uint16_t *port);
int sl_bind_outbound(struct sl_engine *e, int fd, int family);
bool sl_sockaddr_is_loopback(const void *sa);

#endif /* SLIRPY_ADDR_H */
