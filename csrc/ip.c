// SPDX-License-Identifier: MIT
/*
 * ip.c - the Ethernet and IP headers of the frames slirpy sends to the
 * guest: the wire.c emitters, with what the engine knows filled in (the
 * virtual hosts' MACs, the guest's MAC, the next IPv4 id).
 *
 * The caller owns the buffer and the transport header; these functions
 * write the layers below it. ip_id is the only engine state written here.
 */
#include <string.h>

#include "internal.h"

static const uint8_t bcast_mac[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

/**
 * sl_guest_mac() - where frames to the guest go: its MAC once learned from
 * its frames, broadcast until then.
 */
const uint8_t *sl_guest_mac(const struct sl_engine *e)
{
	return e->guest_mac_known ? e->guest_mac : bcast_mac;
}

/**
 * sl_emit_ip() - an IPv4 header (with the engine's next IP id) or an IPv6
 * header for a transport payload of @l4len bytes.
 * Return: the header length.
 */
size_t sl_emit_ip(struct sl_engine *e, uint8_t *buf, int family,
		  const uint8_t *src, const uint8_t *dst, uint8_t proto,
		  size_t l4len)
{
	if (family == 4)
		return sl_emit_ipv4(buf, src, dst, proto, l4len, e->ip_id++);
	return sl_emit_ipv6(buf, src, dst, proto, l4len);
}

/**
 * sl_frame_headers() - the Ethernet and IP headers of a frame to the guest
 * from @src, one of the virtual hosts or a remote behind the gateway (its
 * MAC is sl_mac_for(@src)).
 * @dst_mac: the destination MAC, or NULL for sl_guest_mac()
 *
 * Return: the length of both headers: where the transport header starts.
 */
size_t sl_frame_headers(struct sl_engine *e, uint8_t *buf,
			const uint8_t *dst_mac, int family, const uint8_t *src,
			const uint8_t *dst, uint8_t proto, size_t l4len)
{
	size_t n = sl_emit_eth(buf, dst_mac ? dst_mac : sl_guest_mac(e),
			       sl_mac_for(e, family, src),
			       family == 4 ? ETHERTYPE_IPV4 : ETHERTYPE_IPV6);

	return n + sl_emit_ip(e, buf + n, family, src, dst, proto, l4len);
}
