// SPDX-License-Identifier: MIT
/*
 * icmp.c - ICMP and ICMPv6 echo, and the unreachable messages slirpy sends.
 *
 * Echo to the virtual hosts is answered here. Echo to anything else goes
 * through an unprivileged ping socket (SOCK_DGRAM, IPPROTO_ICMP[V6]) per
 * (guest, echo id, destination); the kernel rewrites the id, so replies get
 * the guest's id back. If ping sockets are not permitted
 * (net.ipv4.ping_group_range), Python is told once and echoes are dropped.
 * No other ICMP type from the guest is forwarded. The contract is in icmp.h.
 */
#include <errno.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "internal.h"

#define ICMP_ECHO_REPLY 0
#define ICMP_UNREACH 3
#define ICMP_ECHO 8
#define ICMP6_UNREACH 1
#define ICMP6_ECHO 128
#define ICMP6_ECHO_REPLY 129
#define SL_UNREACH_QUOTE 548
#define ICMP_IDLE_S 60

static uint16_t icmp_csum(int family, const uint8_t *src, const uint8_t *dst,
			  const uint8_t *hdr, size_t hlen, const uint8_t *data,
			  size_t dlen)
{
	uint32_t sum = family == 6 ? sl_csum_pseudo(6, src, dst,
						    IPPROTO_ICMPV6_,
						    (uint32_t)(hlen + dlen)) : 0;

	/* hlen is even (8), so the two sums can simply be chained. */
	sum = sl_csum_add(sum, hdr, hlen);
	return sl_csum_fold(sl_csum_add(sum, data, dlen));
}

/* Send an ICMP(v6) message of @type/@code with an 8-byte header whose last
 * four bytes are @rest, followed by @data. */
void sl_icmp_emit(struct sl_engine *e, int family, const uint8_t *src,
		      const uint8_t *dst, uint8_t type, uint8_t code,
		  const uint8_t rest[4], const uint8_t *data, size_t dlen)
{
	uint8_t *b = e->txbuf, *icmp;
	struct iovec iov[2];
	size_t hl;

	hl = sl_frame_headers(e, b, NULL, family, src, dst,
			      family == 4 ? IPPROTO_ICMP_ : IPPROTO_ICMPV6_,
			      SL_ICMP_HLEN + dlen);
	icmp = b + hl;
	sl_emit_icmp(icmp, type, code, rest);
	sl_put_csum(icmp + SL_ICMP_CSUM_OFF,
		    icmp_csum(family, src, dst, icmp, SL_ICMP_HLEN, data, dlen));
	iov[0].iov_base = b;
	iov[0].iov_len = hl + SL_ICMP_HLEN;
	iov[1].iov_base = (void *)data;
	iov[1].iov_len = dlen;
	sl_output(e, NULL, iov, 2);
}

/* Echo answered here, not by a ping socket: the virtual hosts of
 * slirp4netns's model. Shared mode has none (maps lead to real hosts). */
static bool is_local4(const struct sl_engine *e, const uint8_t *a)
{
	if (e->cfg.shared_addr)
		return false;
	return !memcmp(a, e->cfg.gw4, 4) || !memcmp(a, e->cfg.dns4, 4);
}

static bool is_local6(const struct sl_engine *e, const uint8_t *a)
{
	static const uint8_t ll[8] = { 0xfe, 0x80 };

	if (e->cfg.shared_addr)
		return false;
	if (!memcmp(a + 8, "\0\0\0\0\0\0\0", 7) &&
	    (!memcmp(a, e->cfg.prefix6, 8) || !memcmp(a, ll, 8)))
		return a[15] == 2 || (a[15] == 3 && a[0] != 0xfe);
	return false;
}

static void ping_warn(struct sl_engine *e, int family)
{
	bool *warned = family == 4 ? &e->icmp.ping_warned : &e->icmp.ping6_warned;

	if (*warned)
		return;
	*warned = true;
	sl_notice(e, family == 4 ?
		  "ICMP echo to the outside is disabled: ping sockets are not "
		  "permitted (set net.ipv4.ping_group_range to include your gid)" :
		  "ICMPv6 echo to the outside is disabled: ping sockets are "
		  "not permitted (net.ipv4.ping_group_range)");
}

/* Echo to a real destination through a ping socket. */
static void echo_out(struct sl_engine *e, const struct sl_pkt *p)
{
	uint16_t id = sl_get16(p->l4 + 4);
	struct sockaddr_in6 sa;
	uint32_t salen;
	struct sl_flow *f;
	int r;

	f = sl_flow_lookup(e, SL_FLOW_ICMP, p->family, p->src, id, p->dst, 0);
	if (!f) {
		int fam = p->family == 4 ? AF_INET : AF_INET6;
		int proto = p->family == 4 ? IPPROTO_ICMP : IPPROTO_ICMPV6;

		r = sl_remote_sockaddr(e, p->family, p->dst, 0, p->proto, &sa,
				       &salen);
		if (sl_policy_denies(e, p, r, &sa)) {
			sl_icmp_send_error(e, p, SL_UNREACH_ADMIN);
			return;
		}
		if (r < 0) {
			sl_count(e, SL_C_drop_dst_invalid);
			return;
		}
		f = sl_flow_new(e, SL_FLOW_ICMP, p->family, p->src, id, p->dst,
				0);
		if (!f)
			return;
		f->fd = socket(fam, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
			       proto);
		if (f->fd < 0) {
			if (errno == EACCES || errno == EPERM)
				ping_warn(e, p->family);
			sl_count(e, SL_C_drop_socket_error);
			sl_flow_free(e, f);
			return;
		}
		if ((!sl_sockaddr_is_loopback(&sa) &&
		     sl_bind_outbound(e, f->fd, fam) < 0) ||
		    connect(f->fd, (struct sockaddr *)&sa, salen) < 0 ||
		    sl_epoll_set(e, f, EPOLLIN) < 0) {
			sl_count(e, SL_C_drop_socket_error);
			sl_flow_free(e, f);
			return;
		}
		sl_count(e, SL_C_icmp_flows_opened);
		sl_flow_opened(e, f, false);
	}
	f->last_ns = e->now;
	if (send(f->fd, p->l4, p->l4_len, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
		sl_count(e, SL_C_drop_socket_error);
		return;
	}
	sl_count(e, SL_C_icmp_echo_out);
}

static void echo_input(struct sl_engine *e, const struct sl_pkt *p,
		       bool local)
{
	if (!local) {
		echo_out(e, p);
		return;
	}
	sl_count(e, SL_C_icmp_echo_local);
	sl_icmp_emit(e, p->family, p->dst, p->src,
		  p->family == 4 ? ICMP_ECHO_REPLY : ICMP6_ECHO_REPLY, 0,
		  p->l4 + 4, p->payload, p->payload_len);
}

void sl_icmp4_input(struct sl_engine *e, const struct sl_pkt *p)
{
	if (p->icmp_type != ICMP_ECHO || p->icmp_code != 0) {
		sl_count(e, SL_C_drop_icmp_type);
		return;
	}
	echo_input(e, p, is_local4(e, p->dst));
}

void sl_icmp6_input(struct sl_engine *e, const struct sl_pkt *p)
{
	if (p->icmp_type != ICMP6_ECHO || p->icmp_code != 0) {
		sl_count(e, SL_C_drop_icmp_type);
		return;
	}
	echo_input(e, p, is_local6(e, p->dst));
}

/* sl_icmp_timer() - idle expiry of one echo flow at e->now. */
void sl_icmp_timer(struct sl_engine *e, struct sl_flow *f)
{
	if (e->now - f->last_ns >= ICMP_IDLE_S * NSEC_PER_SEC) {
		sl_count(e, SL_C_icmp_flows_closed);
		f->why = SL_FC_TIMEOUT;
		sl_flow_free(e, f);
	}
}

/**
 * sl_icmp_sock_event() - an echo reply (or error) arrived on a ping socket.
 */
void sl_icmp_sock_event(struct sl_engine *e, struct sl_flow *f, uint32_t ev)
{
	uint8_t *buf = e->rxbuf;
	int i;

	(void)ev;
	for (i = 0; i < 16; i++) {
		ssize_t n = recv(f->fd, buf, 65535, MSG_DONTWAIT);
		uint8_t rest[4];

		if (n < 0) {
			if (errno == EAGAIN)
				break;
			continue;	/* an ICMP error for our echo: skip */
		}
		if (n < 8)
			continue;
		sl_put16(rest, f->gport);
		memcpy(rest + 2, buf + 6, 2);
		f->last_ns = e->now;
		sl_count(e, SL_C_icmp_echo_in);
		sl_icmp_emit(e, f->family, f->raddr, f->gaddr, buf[0], buf[1],
			  rest, buf + 8, (size_t)n - 8);
	}
}

/*
 * Destination unreachable, by reason and family. IPv4's "network" is code 9
 * (network administratively prohibited): Linux maps it to a *fatal*
 * ENETUNREACH, so connected UDP sockets see the error too; code 0 is only
 * reported to TCP. ICMPv6 has no fatal "no route", so code 0 it is: TCP
 * sees ENETUNREACH, UDP only with IPV6_RECVERR.
 */
static const uint8_t unreach_code[][2] = {	/* [why][family == 6] */
	[SL_UNREACH_NET] = { 9, 0 },
	[SL_UNREACH_HOST] = { 1, 3 },	/* host; ICMPv6: address */
	[SL_UNREACH_PORT] = { 3, 4 },
	[SL_UNREACH_ADMIN] = { 13, 1 },	/* communication administratively
					 * prohibited */
};

/**
 * sl_icmp_send_error() - tell the guest that the packet @p it sent cannot
 * be delivered: destination unreachable from the gateway, as a router on
 * the path would say it, quoting @p (up to SL_UNREACH_QUOTE bytes).
 * @why: which part of the destination is unreachable
 */
void sl_icmp_send_error(struct sl_engine *e, const struct sl_pkt *p,
			enum sl_unreach why)
{
	static const uint8_t zero[4];
	size_t quote = p->l3_len < SL_UNREACH_QUOTE ? p->l3_len :
						      SL_UNREACH_QUOTE;
	uint8_t src[16];

	if (p->family == 4) {
		memcpy(src, e->cfg.gw4, 4);
	} else {
		memcpy(src, e->cfg.prefix6, 8);
		memset(src + 8, 0, 8);
		src[15] = 2;
	}
	sl_count(e, SL_C_icmp_unreach_sent);
	sl_icmp_emit(e, p->family, src, p->src,
		     p->family == 4 ? ICMP_UNREACH : ICMP6_UNREACH,
		     unreach_code[why][p->family == 6], zero, p->l3, quote);
}

/**
 * sl_icmp_send_flow_error() - sl_icmp_send_error() for a packet of flow @f
 * that is no longer at hand: rebuild what the guest sent (its IP header
 * and the first 8 bytes of the transport header, all an ICMP error must
 * quote) so that its stack matches the error to the socket.
 * @seq: TCP: the sequence number of the quoted segment (the guest's SYN)
 */
void sl_icmp_send_flow_error(struct sl_engine *e, const struct sl_flow *f,
			     uint32_t seq, enum sl_unreach why)
{
	uint8_t q[SL_IPV6_HLEN + SL_TCP_HLEN];
	struct sl_pkt p = { 0 };
	struct sl_tcp_hdr th = {
		.sport = f->gport, .dport = f->rport, .seq = seq,
		.flags = TCP_SYN, .wscale = -1,
	};
	uint8_t proto = f->kind == SL_FLOW_TCP ? IPPROTO_TCP_ : IPPROTO_UDP_;
	size_t l4len = proto == IPPROTO_TCP_ ? SL_TCP_HLEN : SL_UDP_HLEN;
	size_t l3 = sl_emit_ip(e, q, f->family, f->gaddr, f->raddr, proto,
			       l4len);

	if (proto == IPPROTO_TCP_)
		sl_emit_tcp(q + l3, &th);
	else
		sl_emit_udp(q + l3, f->gport, f->rport, SL_UDP_HLEN);
	p.family = f->family;
	p.l3 = q;
	p.l3_len = l3 + 8;
	memcpy(p.src, f->gaddr, 16);
	sl_icmp_send_error(e, &p, why);
}
