/* SPDX-License-Identifier: MIT */
/*
 * wire.h - validated views of the frames the guest sends, and the emitters
 * that build the frames slirpy sends back.
 *
 * sl_parse() is the single place where guest bytes are bounds-checked: it
 * fills a struct sl_pkt whose pointers and lengths are all inside the frame,
 * so that nothing downstream ever reads past the buffer. It does not decide
 * what to do with a packet; the protocol files do.
 */
#ifndef SLIRPY_WIRE_H
#define SLIRPY_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <linux/virtio_net.h>

#define ETH_HLEN_ 14
#define ETHERTYPE_IPV4 0x0800
#define ETHERTYPE_ARP 0x0806
#define ETHERTYPE_IPV6 0x86dd
#define IPPROTO_ICMP_ 1
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define IPPROTO_ICMPV6_ 58

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_URG 0x20

/**
 * struct sl_pkt - a parsed, bounds-checked guest frame.
 * @l3/@l3_len: the IP header and everything the IP length covers.
 * @l4/@l4_len: the transport header and payload (bounded by the IP length,
 *              not by the frame, so Ethernet padding is excluded).
 * @src/@dst: IP addresses; IPv4 uses the first 4 bytes.
 */
struct sl_pkt {
	const uint8_t *frame;
	size_t len;
	struct virtio_net_hdr vh;
	const uint8_t *eth_src;
	const uint8_t *eth_dst;
	uint16_t ethertype;
	const uint8_t *l3;
	size_t l3_len;
	uint8_t family;		/* 4 or 6, 0 for ARP */
	uint8_t proto;
	uint8_t ttl;
	uint8_t src[16];
	uint8_t dst[16];
	const uint8_t *l4;
	size_t l4_len;
	const uint8_t *payload;
	size_t payload_len;
	/* TCP */
	uint16_t sport, dport;
	uint32_t seq, ack;
	uint8_t tflags;
	uint16_t win;
	uint16_t opt_mss;	/* 0: absent */
	int8_t opt_wscale;	/* -1: absent */
	bool opt_sack_ok;
	/* ICMP */
	uint8_t icmp_type, icmp_code;
};

/* Result of sl_parse(): 0 = valid, otherwise the counter to bump. */
int sl_parse(const uint8_t *frame, size_t len, bool vnet, struct sl_pkt *p);

static inline uint16_t sl_get16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}

static inline uint32_t sl_get32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
	       ((uint32_t)p[2] << 8) | p[3];
}

static inline void sl_put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static inline void sl_put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* checksum.c */
uint32_t sl_csum_add(uint32_t sum, const void *buf, size_t len);
uint16_t sl_csum_fold(uint32_t sum);
uint32_t sl_csum_pseudo(int family, const uint8_t *src, const uint8_t *dst,
			uint8_t proto, uint32_t l4len);
uint16_t sl_csum_update16(uint16_t csum, uint16_t old, uint16_t new_);

#endif /* SLIRPY_WIRE_H */
