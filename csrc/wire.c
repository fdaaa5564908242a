// SPDX-License-Identifier: MIT
/*
 * wire.c - parse one guest frame into a validated struct sl_pkt.
 *
 * Every length the guest wrote (IP total length, IHL, extension header
 * lengths, TCP data offset, UDP length, option lengths) is checked against
 * the bytes actually received before it is used. What fails is reported as
 * the counter to bump; the caller drops the frame. This file decides nothing
 * about flows, addresses or replies.
 */
#include <string.h>

#include "internal.h"

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
