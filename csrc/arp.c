// SPDX-License-Identifier: MIT
/*
 * arp.c - answer the guest's ARP requests for the virtual gateway (N+2) and
 * DNS host (N+3). slirpy has no other hosts on the link, so nothing else is
 * answered, and no ARP cache is kept: the guest's MAC is learned from the
 * frames it sends.
 *
 * Shared-address mode: every address is behind us (the guest owns the
 * host's address, on-link neighbours and the gateway are all reached
 * through host sockets), so every request is answered with cfg.our_mac,
 * except for the guest's own address (its probes included) and
 * announcements (sender = target), as pasta does.
 */
#include <string.h>

#include "internal.h"

void sl_arp_input(struct sl_engine *e, const struct sl_pkt *p)
{
	const uint8_t *a = p->l3;
	const uint8_t *tpa = a + 24, *mac;
	uint8_t frame[ETH_HLEN_ + 28];
	struct iovec iov = { frame, sizeof(frame) };

	if (sl_get16(a + 6) != 1) {	/* only requests need an answer */
		sl_count(e, SL_C_drop_not_for_us);
		return;
	}
	if (e->cfg.shared_addr) {
		static const uint8_t any[4];

		if (!memcmp(tpa, e->cfg.guest4, 4) || !memcmp(tpa, a + 14, 4) ||
		    !memcmp(tpa, any, 4)) {
			sl_count(e, SL_C_drop_not_for_us);
			return;
		}
	} else if (memcmp(tpa, e->cfg.gw4, 4) && memcmp(tpa, e->cfg.dns4, 4)) {
		sl_count(e, SL_C_drop_not_for_us);
		return;
	}
	mac = sl_mac_for(e, 4, tpa);
	sl_emit_eth(frame, a + 8, mac, ETHERTYPE_ARP);
	/* From the host asked for, to the requester. */
	sl_emit_arp_reply(frame + ETH_HLEN_, mac, tpa, a + 8, a + 14);
	sl_count(e, SL_C_arp_replies);
	sl_output(e, NULL, &iov, 1);
}
