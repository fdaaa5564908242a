// SPDX-License-Identifier: MIT
/*
 * wire.c - parse one guest frame into a validated struct sl_pkt, and emit
 * the headers of the frames slirpy sends (the contract is in wire.h).
 *
 * Every length the guest wrote (IP total length, IHL, extension header
 * lengths, TCP data offset, UDP length, option lengths) is checked against
 * the bytes actually received before it is used. What fails is reported as
 * the counter to bump; the caller drops the frame. This file decides nothing
 * about flows, addresses or replies.
 */
#include <string.h>

#include "counters.h"
#include "wire.h"

#define IPV6_MAX_EXT_HEADERS 8

static int parse_tcp(struct sl_pkt *p)
{
	const uint8_t *t = p->l4;
	size_t doff, i;

	if (p->l4_len < 20)
		return SL_C_drop_tcp_malformed;
	doff = (size_t)(t[12] >> 4) * 4;
	if (doff < 20 || doff > p->l4_len)
		return SL_C_drop_tcp_malformed;
	p->sport = sl_get16(t);
	p->dport = sl_get16(t + 2);
	p->seq = sl_get32(t + 4);
	p->ack = sl_get32(t + 8);
	p->tflags = t[13] & 0x3f;
	p->win = sl_get16(t + 14);
	p->opt_mss = 0;
	p->opt_wscale = -1;
	p->opt_sack_ok = false;
	for (i = 20; i < doff;) {
		uint8_t kind = t[i], olen;

		if (kind == 0)
			break;
		if (kind == 1) {
			i++;
			continue;
		}
		if (i + 1 >= doff)
			return SL_C_drop_tcp_malformed;
		olen = t[i + 1];
		if (olen < 2 || i + olen > doff)
			return SL_C_drop_tcp_malformed;
		if (kind == 2 && olen == 4)
			p->opt_mss = sl_get16(t + i + 2);
		else if (kind == 3 && olen == 3)
			p->opt_wscale = (int8_t)(t[i + 2] > 14 ? 14 : t[i + 2]);
		else if (kind == 4 && olen == 2)
			p->opt_sack_ok = true;
		i += olen;
	}
	p->payload = t + doff;
	p->payload_len = p->l4_len - doff;
	return 0;
}

static int parse_udp(struct sl_pkt *p)
{
	size_t ulen;

	if (p->l4_len < 8)
		return SL_C_drop_udp_malformed;
	ulen = sl_get16(p->l4 + 4);
	/* A USO super-frame from the guest's kernel carries the length of
	 * the whole run (udp_send_skb), so one rule fits both: the UDP
	 * length bounds the payload and must fit in what the IP length
	 * covers; bytes after it are ignored. */
	if (ulen < 8 || ulen > p->l4_len)
		return SL_C_drop_udp_malformed;
	p->sport = sl_get16(p->l4);
	p->dport = sl_get16(p->l4 + 2);
	p->payload = p->l4 + 8;
	p->payload_len = ulen - 8;
	p->l4_len = ulen;
	return 0;
}

static int parse_icmp(struct sl_pkt *p)
{
	if (p->l4_len < 8)
		return SL_C_drop_icmp_malformed;
	p->icmp_type = p->l4[0];
	p->icmp_code = p->l4[1];
	p->payload = p->l4 + 8;
	p->payload_len = p->l4_len - 8;
	return 0;
}

static int parse_l4(struct sl_pkt *p)
{
	switch (p->proto) {
	case IPPROTO_TCP_:
		return parse_tcp(p);
	case IPPROTO_UDP_:
		return parse_udp(p);
	case IPPROTO_ICMP_:
		return p->family == 4 ? parse_icmp(p) : SL_C_drop_ipv6_malformed;
	case IPPROTO_ICMPV6_:
		return p->family == 6 ? parse_icmp(p) : SL_C_drop_ipv4_malformed;
	default:
		return p->family == 4 ? SL_C_drop_ipv4_malformed :
					SL_C_drop_ipv6_malformed;
	}
}

static int parse_ipv4(struct sl_pkt *p, const uint8_t *ip, size_t avail)
{
	size_t ihl, tot;
	uint16_t frag;

	if (avail < 20 || (ip[0] >> 4) != 4)
		return SL_C_drop_ipv4_malformed;
	ihl = (size_t)(ip[0] & 0x0f) * 4;
	tot = sl_get16(ip + 2);
	/* A TSO super-frame may exceed 64 KiB only with tot == 0; we never
	 * enable that (no BIG TCP), so a zero length is simply malformed. */
	if (ihl < 20 || tot < ihl || tot > avail)
		return SL_C_drop_ipv4_malformed;
	frag = sl_get16(ip + 6);
	if (frag & 0x3fff)	/* MF set or non-zero offset */
		return SL_C_drop_ip_fragment;
	p->family = 4;
	p->l3 = ip;
	p->l3_len = tot;
	p->ttl = ip[8];
	p->proto = ip[9];
	memcpy(p->src, ip + 12, 4);
	memcpy(p->dst, ip + 16, 4);
	p->l4 = ip + ihl;
	p->l4_len = tot - ihl;
	return parse_l4(p);
}

static int parse_ipv6(struct sl_pkt *p, const uint8_t *ip, size_t avail)
{
	size_t plen, off = 40;
	uint8_t nh;
	int n;

	if (avail < 40 || (ip[0] >> 4) != 6)
		return SL_C_drop_ipv6_malformed;
	plen = sl_get16(ip + 4);
	if (plen == 0 || 40 + plen > avail)
		return SL_C_drop_ipv6_malformed;
	p->family = 6;
	p->l3 = ip;
	p->l3_len = 40 + plen;
	p->ttl = ip[7];
	memcpy(p->src, ip + 8, 16);
	memcpy(p->dst, ip + 24, 16);
	nh = ip[6];
	for (n = 0; n < IPV6_MAX_EXT_HEADERS; n++) {
		size_t elen;

		if (nh == 44)
			return SL_C_drop_ip_fragment;
		if (nh != 0 && nh != 43 && nh != 60)
			break;
		if (off + 8 > p->l3_len)
			return SL_C_drop_ipv6_malformed;
		elen = ((size_t)ip[off + 1] + 1) * 8;
		if (off + elen > p->l3_len)
			return SL_C_drop_ipv6_malformed;
		nh = ip[off];
		off += elen;
	}
	if (n == IPV6_MAX_EXT_HEADERS)
		return SL_C_drop_ipv6_malformed;
	p->proto = nh;
	p->l4 = ip + off;
	p->l4_len = p->l3_len - off;
	return parse_l4(p);
}

/**
 * sl_parse() - validate a frame as received from the TAP.
 * @frame: the bytes read, starting with the virtio_net_hdr when @vnet
 * @len: how many bytes were read
 * @vnet: whether a struct virtio_net_hdr precedes the Ethernet header
 * @p: filled on success; partially filled on failure
 *
 * Return: 0 when @p is valid, else the drop counter (enum sl_counter_id).
 */
int sl_parse(const uint8_t *frame, size_t len, bool vnet, struct sl_pkt *p)
{
	const uint8_t *eth = frame;
	size_t elen = len;

	memset(&p->vh, 0, sizeof(p->vh));
	p->family = 0;
	p->proto = 0;
	p->payload = NULL;
	p->payload_len = 0;
	if (vnet) {
		if (len < sizeof(struct virtio_net_hdr))
			return SL_C_drop_short_frame;
		memcpy(&p->vh, frame, sizeof(p->vh));
		eth += sizeof(struct virtio_net_hdr);
		elen -= sizeof(struct virtio_net_hdr);
	}
	if (elen < ETH_HLEN_)
		return SL_C_drop_short_frame;
	p->frame = eth;
	p->len = elen;
	p->eth_dst = eth;
	p->eth_src = eth + 6;
	p->ethertype = sl_get16(eth + 12);
	switch (p->ethertype) {
	case ETHERTYPE_ARP:
		p->l3 = eth + ETH_HLEN_;
		p->l3_len = elen - ETH_HLEN_;
		if (p->l3_len < 28 || sl_get16(p->l3) != 1 ||
		    sl_get16(p->l3 + 2) != ETHERTYPE_IPV4 || p->l3[4] != 6 ||
		    p->l3[5] != 4)
			return SL_C_drop_arp_malformed;
		return 0;
	case ETHERTYPE_IPV4:
		return parse_ipv4(p, eth + ETH_HLEN_, elen - ETH_HLEN_);
	case ETHERTYPE_IPV6:
		return parse_ipv6(p, eth + ETH_HLEN_, elen - ETH_HLEN_);
	default:
		return SL_C_drop_ethertype;
	}
}

/*
 * Emitters. Each writes one header at @buf (the caller's buffer, sized for
 * it) and returns its length; transport checksums are left zero.
 */

/**
 * sl_emit_eth() - an Ethernet II header.
 * Return: ETH_HLEN_.
 */
size_t sl_emit_eth(uint8_t *buf, const uint8_t dst[6], const uint8_t src[6],
		   uint16_t ethertype)
{
	memcpy(buf, dst, 6);
	memcpy(buf + 6, src, 6);
	sl_put16(buf + 12, ethertype);
	return ETH_HLEN_;
}

/**
 * sl_emit_arp_reply() - an ARP reply (Ethernet, IPv4) from @sha/@spa to
 * @tha/@tpa.
 * Return: 28.
 */
size_t sl_emit_arp_reply(uint8_t *buf, const uint8_t sha[6],
			 const uint8_t spa[4], const uint8_t tha[6],
			 const uint8_t tpa[4])
{
	sl_put16(buf, 1);		/* hardware: Ethernet */
	sl_put16(buf + 2, ETHERTYPE_IPV4);
	buf[4] = 6;
	buf[5] = 4;
	sl_put16(buf + 6, 2);		/* reply */
	memcpy(buf + 8, sha, 6);
	memcpy(buf + 14, spa, 4);
	memcpy(buf + 18, tha, 6);
	memcpy(buf + 24, tpa, 4);
	return 28;
}

/**
 * sl_emit_ipv4() - an IPv4 header without options: DF set, TTL 64,
 * checksummed, for a transport payload of @l4len bytes.
 * Return: SL_IPV4_HLEN.
 */
size_t sl_emit_ipv4(uint8_t *buf, const uint8_t src[4], const uint8_t dst[4],
		    uint8_t proto, size_t l4len, uint16_t id)
{
	buf[0] = 0x45;
	buf[1] = 0;
	sl_put16(buf + 2, (uint16_t)(SL_IPV4_HLEN + l4len));
	sl_put16(buf + 4, id);
	sl_put16(buf + 6, 0x4000);
	buf[8] = 64;
	buf[9] = proto;
	buf[10] = buf[11] = 0;
	memcpy(buf + 12, src, 4);
	memcpy(buf + 16, dst, 4);
	sl_put_csum(buf + 10, sl_csum_fold(sl_csum_add(0, buf, SL_IPV4_HLEN)));
	return SL_IPV4_HLEN;
}

/**
 * sl_emit_ipv6() - an IPv6 header (hop limit 255, no extension headers)
 * for a transport payload of @l4len bytes.
 * Return: SL_IPV6_HLEN.
 */
size_t sl_emit_ipv6(uint8_t *buf, const uint8_t src[16],
		    const uint8_t dst[16], uint8_t proto, size_t l4len)
{
	sl_put32(buf, 0x60000000u);
	sl_put16(buf + 4, (uint16_t)l4len);
	buf[6] = proto;
	buf[7] = 255;
	memcpy(buf + 8, src, 16);
	memcpy(buf + 24, dst, 16);
	return SL_IPV6_HLEN;
}

/**
 * sl_emit_tcp() - a TCP header with the MSS and window-scale options that
 * @h asks for (in that order, the window scale after a NOP).
 * Return: the header length (20, 24 or 28).
 */
size_t sl_emit_tcp(uint8_t *buf, const struct sl_tcp_hdr *h)
{
	size_t len = SL_TCP_HLEN;

	sl_put16(buf, h->sport);
	sl_put16(buf + 2, h->dport);
	sl_put32(buf + 4, h->seq);
	sl_put32(buf + 8, h->ack);
	buf[13] = h->flags;
	sl_put16(buf + 14, h->wnd);
	buf[16] = buf[17] = buf[18] = buf[19] = 0;
	if (h->mss) {
		buf[len] = 2;		/* MSS */
		buf[len + 1] = 4;
		sl_put16(buf + len + 2, h->mss);
		len += 4;
	}
	if (h->wscale >= 0) {
		buf[len] = 1;		/* NOP, then window scale */
		buf[len + 1] = 3;
		buf[len + 2] = 3;
		buf[len + 3] = (uint8_t)h->wscale;
		len += 4;
	}
	buf[12] = (uint8_t)((len / 4) << 4);
	return len;
}

/**
 * sl_emit_udp() - a UDP header; @l4len counts the header and the payload.
 * Return: SL_UDP_HLEN.
 */
size_t sl_emit_udp(uint8_t *buf, uint16_t sport, uint16_t dport,
		   size_t l4len)
{
	sl_put16(buf, sport);
	sl_put16(buf + 2, dport);
	sl_put16(buf + 4, (uint16_t)l4len);
	buf[6] = buf[7] = 0;
	return SL_UDP_HLEN;
}

/**
 * sl_emit_icmp() - an ICMP or ICMPv6 header: type, code, a zero checksum
 * and the four type-specific bytes @rest.
 * Return: SL_ICMP_HLEN.
 */
size_t sl_emit_icmp(uint8_t *buf, uint8_t type, uint8_t code,
		    const uint8_t rest[4])
{
	buf[0] = type;
	buf[1] = code;
	buf[2] = buf[3] = 0;
	memcpy(buf + 4, rest, 4);
	return SL_ICMP_HLEN;
}

/**
 * sl_emit_nd_lladdr() - a source (SL_ND_OPT_SRC_LLADDR) or target
 * (SL_ND_OPT_TGT_LLADDR) link-layer address option.
 * Return: 8.
 */
size_t sl_emit_nd_lladdr(uint8_t *buf, uint8_t type, const uint8_t mac[6])
{
	buf[0] = type;
	buf[1] = 1;		/* length in units of 8 bytes */
	memcpy(buf + 2, mac, 6);
	return 8;
}

/**
 * sl_emit_nd_mtu() - an MTU option.
 * Return: 8.
 */
size_t sl_emit_nd_mtu(uint8_t *buf, uint32_t mtu)
{
	buf[0] = 5;
	buf[1] = 1;
	buf[2] = buf[3] = 0;
	sl_put32(buf + 4, mtu);
	return 8;
}

/**
 * sl_emit_nd_prefix() - a prefix information option for the /64 @prefix
 * (its last 8 bytes zero), on-link and for autonomous configuration.
 * Return: 32.
 */
size_t sl_emit_nd_prefix(uint8_t *buf, const uint8_t prefix[16],
			 uint32_t valid_s, uint32_t preferred_s)
{
	buf[0] = 3;
	buf[1] = 4;
	buf[2] = 64;		/* prefix length */
	buf[3] = 0xc0;		/* on-link, autonomous */
	sl_put32(buf + 4, valid_s);
	sl_put32(buf + 8, preferred_s);
	memset(buf + 12, 0, 4);
	memcpy(buf + 16, prefix, 16);
	return 32;
}

/**
 * sl_emit_nd_rdnss() - a recursive DNS server option with one address.
 * Return: 24.
 */
size_t sl_emit_nd_rdnss(uint8_t *buf, uint32_t lifetime_s,
			const uint8_t addr[16])
{
	buf[0] = 25;
	buf[1] = 3;
	buf[2] = buf[3] = 0;
	sl_put32(buf + 4, lifetime_s);
	memcpy(buf + 8, addr, 16);
	return 24;
}

