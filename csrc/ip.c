// SPDX-License-Identifier: MIT
/*
 * ip.c - Ethernet and IP headers of the frames slirpy sends to the guest.
 *
 * Only emitters live here: the caller owns the buffer and the transport
 * header; these functions write the layers below it.
 */
#include <string.h>

#include "internal.h"

/**
 * sl_eth_header() - write a 14-byte Ethernet header.
 * Return: bytes written (14).
 */
size_t sl_eth_header(struct sl_engine *e, uint8_t *buf, const uint8_t *dst,
		     const uint8_t *src, uint16_t ethertype)
{
	(void)e;
	memcpy(buf, dst, 6);
	memcpy(buf + 6, src, 6);
	sl_put16(buf + 12, ethertype);
	return ETH_HLEN_;
}

/**
 * sl_ip_header() - write an IPv4 (20 bytes, DF, checksummed) or IPv6 (40
 * bytes) header for a transport payload of @l4len bytes.
 * Return: the header length.
 */
size_t sl_ip_header(struct sl_engine *e, uint8_t *buf, int family,
		    const uint8_t *src, const uint8_t *dst, uint8_t proto,
		    size_t l4len)
{
	if (family == 4) {
		uint16_t csum;

		buf[0] = 0x45;
		buf[1] = 0;
		sl_put16(buf + 2, (uint16_t)(20 + l4len));
		sl_put16(buf + 4, e->ip_id++);
		sl_put16(buf + 6, 0x4000);
		buf[8] = 64;
		buf[9] = proto;
		buf[10] = buf[11] = 0;
		memcpy(buf + 12, src, 4);
		memcpy(buf + 16, dst, 4);
		csum = sl_csum_fold(sl_csum_add(0, buf, 20));
		memcpy(buf + 10, &csum, 2);
		return 20;
	}
	sl_put32(buf, 0x60000000u);
	sl_put16(buf + 4, (uint16_t)l4len);
	buf[6] = proto;
	buf[7] = 255;
	memcpy(buf + 8, src, 16);
	memcpy(buf + 24, dst, 16);
	return 40;
}
