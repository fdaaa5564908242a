/* SPDX-License-Identifier: MIT */
/*
 * wire.h - the wire formats: validated views of the frames the guest sends
 * (parsers), the emitters that write the headers of the frames slirpy sends
 * back, and the Internet checksum.
 *
 * Contract: wire.c and checksum.c own no state and know no engine, flow or
 * policy (sl_parse() names its verdict with a counter id, counters.h).
 * sl_parse() is the single place where guest bytes are bounds-checked: it
 * fills a struct sl_pkt whose pointers and lengths are all inside the frame,
 * so that nothing downstream ever reads past the buffer; it does not decide
 * what to do with a packet (the protocol files do). The sl_emit_*()
 * functions write one header each at the start of a buffer the caller owns
 * and sized, and return its length: the protocol files say what goes in a
 * header, never at which byte offset. Transport checksums are left zero for
 * the caller (full or partial, see SL_*_CSUM_OFF), the IPv4 header checksum
 * is filled in.
 */
#ifndef SLIRPY_WIRE_H
#define SLIRPY_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
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

#define SL_IPV4_HLEN 20		/* what sl_emit_ipv4() writes: no options */
#define SL_IPV6_HLEN 40
#define SL_UDP_HLEN 8
#define SL_ICMP_HLEN 8
#define SL_TCP_HLEN 20		/* without options */
/* Where each transport header keeps its checksum. */
#define SL_TCP_CSUM_OFF 16
#define SL_UDP_CSUM_OFF 6
#define SL_ICMP_CSUM_OFF 2

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

/**
 * struct sl_tcp_hdr - the fields of a TCP header to emit.
 * @mss: MSS option value, 0 for none
 * @wscale: window-scale option (after a NOP), -1 for none
 */
struct sl_tcp_hdr {
	uint16_t sport, dport;
	uint32_t seq, ack;
	uint8_t flags;
	uint16_t wnd;
	uint16_t mss;
	int8_t wscale;
};

/* Emitters (wire.c): one header at @buf each, return its length. */
size_t sl_emit_eth(uint8_t *buf, const uint8_t dst[6], const uint8_t src[6],
		   uint16_t ethertype);
size_t sl_emit_arp_reply(uint8_t *buf, const uint8_t sha[6],
			 const uint8_t spa[4], const uint8_t tha[6],
			 const uint8_t tpa[4]);
size_t sl_emit_ipv4(uint8_t *buf, const uint8_t src[4], const uint8_t dst[4],
		    uint8_t proto, size_t l4len, uint16_t id);
size_t sl_emit_ipv6(uint8_t *buf, const uint8_t src[16],
		    const uint8_t dst[16], uint8_t proto, size_t l4len);
size_t sl_emit_tcp(uint8_t *buf, const struct sl_tcp_hdr *h);
size_t sl_emit_udp(uint8_t *buf, uint16_t sport, uint16_t dport,
		   size_t l4len);
size_t sl_emit_icmp(uint8_t *buf, uint8_t type, uint8_t code,
		    const uint8_t rest[4]);

/* Neighbour discovery options (RFC 4861 4.6, RFC 8106 5.1), after the
 * fixed part of an NDP message; each returns its length. */
#define SL_ND_OPT_SRC_LLADDR 1
#define SL_ND_OPT_TGT_LLADDR 2
size_t sl_emit_nd_lladdr(uint8_t *buf, uint8_t type, const uint8_t mac[6]);
size_t sl_emit_nd_mtu(uint8_t *buf, uint32_t mtu);
size_t sl_emit_nd_prefix(uint8_t *buf, const uint8_t prefix[16],
			 uint32_t valid_s, uint32_t preferred_s);
size_t sl_emit_nd_rdnss(uint8_t *buf, uint32_t lifetime_s,
			const uint8_t addr[16]);

/* Store a checksum computed by sl_csum_fold() (already in wire order). */
static inline void sl_put_csum(uint8_t *p, uint16_t csum)
{
	memcpy(p, &csum, 2);
}

/* checksum.c */
uint32_t sl_csum_add(uint32_t sum, const void *buf, size_t len);
uint16_t sl_csum_fold(uint32_t sum);
uint32_t sl_csum_pseudo(int family, const uint8_t *src, const uint8_t *dst,
			uint8_t proto, uint32_t l4len);
uint16_t sl_csum_update16(uint16_t csum, uint16_t old, uint16_t new_);

#endif /* SLIRPY_WIRE_H */
