// SPDX-License-Identifier: MIT
/*
 * checksum.c - the Internet checksum (RFC 1071), pseudo-headers and the
 * incremental update of RFC 1624. Pure functions over bytes; no state.
 */
#include <string.h>

#include "wire.h"

/**
 * sl_csum_add() - add @len bytes to a running 32-bit ones'-complement sum.
 * @sum: the running sum (not folded)
 * @buf: bytes, any alignment
 * @len: byte count; an odd tail is padded with zero as RFC 1071 says
 *
 * Sums 64 bits at a time with end-around carry; the caller folds once.
 */
uint32_t sl_csum_add(uint32_t sum, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	uint64_t acc = sum;

	while (len >= 8) {
		uint32_t a, b;

		memcpy(&a, p, 4);
		memcpy(&b, p + 4, 4);
		acc += (uint64_t)a + b;
		p += 8;
		len -= 8;
	}
	while (len >= 2) {
		uint16_t w;

		memcpy(&w, p, 2);
		acc += w;
		p += 2;
		len -= 2;
	}
	if (len) {
		uint8_t tail[2] = { p[0], 0 };
		uint16_t w;

		memcpy(&w, tail, 2);
		acc += w;
	}
	while (acc >> 32)
		acc = (acc & 0xffffffffu) + (acc >> 32);
	return (uint32_t)acc;
}

/**
 * sl_csum_fold() - fold a 32-bit sum to the 16-bit ones' complement result.
 * Returns the checksum in the byte order it was summed in (network order
 * when the data was), ready to store with memcpy.
 */
uint16_t sl_csum_fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

/**
 * sl_csum_pseudo() - the unfolded sum of the TCP/UDP/ICMPv6 pseudo-header.
 */
uint32_t sl_csum_pseudo(int family, const uint8_t *src, const uint8_t *dst,
			uint8_t proto, uint32_t l4len)
{
	uint8_t tail[8] = { 0 };
	uint32_t sum;

	if (family == 4) {
		sum = sl_csum_add(0, src, 4);
		sum = sl_csum_add(sum, dst, 4);
		tail[1] = proto;
		tail[2] = (uint8_t)(l4len >> 8);
		tail[3] = (uint8_t)l4len;
		return sl_csum_add(sum, tail, 4);
	}
	sum = sl_csum_add(0, src, 16);
	sum = sl_csum_add(sum, dst, 16);
	sl_put32(tail, l4len);
	tail[7] = proto;
	return sl_csum_add(sum, tail, 8);
}

/**
 * sl_csum_update16() - RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m').
 * All values in network byte order as stored in the packet.
 */
uint16_t sl_csum_update16(uint16_t csum, uint16_t old, uint16_t new_)
{
	uint32_t sum = (uint16_t)~csum;

	sum += (uint16_t)~old;
	sum += new_;
	return sl_csum_fold(sum);
}
