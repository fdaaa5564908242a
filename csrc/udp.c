// SPDX-License-Identifier: MIT
/*
 * udp.c - UDP flows: one connected host socket per (guest address and port,
 * destination), replies relayed back, idle expiry (run_timers in engine.c),
 * ICMP port unreachable when the host reports it; and inbound datagrams on
 * forwarded UDP ports, whose per-client flows share the listener's socket.
 *
 * Datagrams larger than the guest MTU are dropped and counted: slirpy never
 * fragments, as it never reassembles.
 */
#include <errno.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "internal.h"

#define UDP_RX_BATCH 64

/**
 * sl_udp_emit() - send one UDP datagram to the guest.
 * Return: 0, or -1 when dropped (too big for the guest's MTU).
 */
int sl_udp_emit(struct sl_engine *e, int family, const uint8_t *dst_mac,
		const uint8_t *src, uint16_t sport, const uint8_t *dst,
		uint16_t dport, const uint8_t *payload, size_t len)
{
	size_t iphl = family == 4 ? 20 : 40;
	uint8_t *b = e->txbuf, *u;
	struct iovec iov[2];
	uint32_t sum;
	uint16_t csum;
	size_t l3;

	if (len + 8 + iphl > e->cfg.mtu) {
		sl_count(e, SL_C_drop_udp_too_big);
		return -1;
	}
	sl_eth_header(e, b, dst_mac, sl_mac_for(e, family, src),
		      family == 4 ? ETHERTYPE_IPV4 : ETHERTYPE_IPV6);
	l3 = sl_ip_header(e, b + ETH_HLEN_, family, src, dst, IPPROTO_UDP_,
			  8 + len);
	u = b + ETH_HLEN_ + l3;
	sl_put16(u, sport);
	sl_put16(u + 2, dport);
	sl_put16(u + 4, (uint16_t)(8 + len));
	u[6] = u[7] = 0;
	sum = sl_csum_pseudo(family, src, dst, IPPROTO_UDP_,
			     (uint32_t)(8 + len));
	sum = sl_csum_add(sum, u, 8);
	csum = sl_csum_fold(sl_csum_add(sum, payload, len));
	if (!csum)
		csum = 0xffff;
	memcpy(u + 6, &csum, 2);
	iov[0].iov_base = b;
	iov[0].iov_len = ETH_HLEN_ + l3 + 8;
	iov[1].iov_base = (void *)payload;
	iov[1].iov_len = len;
	return sl_output(e, NULL, iov, 2);
}

static const uint8_t *guest_mac(const struct sl_engine *e)
{
	return e->guest_mac_known ? e->guest_mac :
				    (const uint8_t *)"\xff\xff\xff\xff\xff\xff";
}

static void refuse(struct sl_engine *e, const struct sl_pkt *p, int err)
{
	if (err == -EINVAL) {
		sl_count(e, SL_C_drop_dst_invalid);
		return;
	}
	/* ENETUNREACH: host loopback disabled; ECONNREFUSED: closed port. */
	if (err == -ENETUNREACH)
		sl_icmp_net_unreach(e, p);
	else if (p->family == 4)
		sl_icmp4_unreach(e, p, 3);
	else
		sl_icmp6_unreach(e, p, 4);
}

static struct sl_flow *open_flow(struct sl_engine *e, const struct sl_pkt *p)
{
	struct sockaddr_in6 sa;
	uint32_t salen;
	struct sl_flow *f;
	int r, fam;

	r = sl_remote_sockaddr(e, p->family, p->dst, p->dport, IPPROTO_UDP_,
			       &sa, &salen);
	if (r < 0) {
		refuse(e, p, r);
		return NULL;
	}
	f = sl_flow_new(e, SL_FLOW_UDP, p->family, p->src, p->sport, p->dst,
			p->dport);
	if (!f)
		return NULL;
	fam = ((struct sockaddr *)&sa)->sa_family;
	f->fd = socket(fam, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (f->fd < 0)
		goto fail;
	if (!(fam == AF_INET &&
	      ((struct sockaddr_in *)&sa)->sin_addr.s_addr == htonl(0x7f000001)) &&
	    !(fam == AF_INET6 && sa.sin6_addr.s6_addr[15] == 1 &&
	      !sa.sin6_addr.s6_addr[0]) &&
	    sl_bind_outbound(e, f->fd, fam) < 0)
		goto fail;
	if (connect(f->fd, (struct sockaddr *)&sa, salen) < 0 ||
	    sl_epoll_set(e, f, EPOLLIN) < 0)
		goto fail;
	sl_count(e, SL_C_udp_flows_opened);
	sl_flow_opened(e, f, false);
	return f;
fail:
	sl_count(e, SL_C_drop_socket_error);
	sl_flow_free(e, f);
	return NULL;
}

static void send_inbound_reply(struct sl_engine *e, struct sl_flow *f,
			       const struct sl_pkt *p)
{
	struct sl_listener *l = &e->listeners[f->udp.listener];
	struct sockaddr_in6 sa = { 0 };
	socklen_t salen;

	if (!l->used) {
		sl_count(e, SL_C_drop_no_flow);
		return;
	}
	if (f->udp.client_family == 4) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&sa;

		sin->sin_family = AF_INET;
		memcpy(&sin->sin_addr, f->udp.client, 4);
		sin->sin_port = htons(f->udp.client_port);
		salen = sizeof(*sin);
	} else {
		sa.sin6_family = AF_INET6;
		memcpy(&sa.sin6_addr, f->udp.client, 16);
		sa.sin6_port = htons(f->udp.client_port);
		salen = sizeof(sa);
	}
	if (sendto(l->fd, p->payload, p->payload_len, MSG_DONTWAIT,
		   (struct sockaddr *)&sa, salen) < 0)
		sl_count(e, SL_C_drop_socket_error);
	else
		sl_count(e, SL_C_udp_datagrams_to_host);
}

void sl_udp_input(struct sl_engine *e, const struct sl_pkt *p)
{
	struct sl_flow *f;

	f = sl_flow_lookup(e, SL_FLOW_UDP, p->family, p->src, p->sport, p->dst,
			   p->dport);
	if (!f) {
		f = open_flow(e, p);
		if (!f)
			return;
	}
	f->last_ns = e->now;
	if (f->udp.inbound) {
		send_inbound_reply(e, f, p);
		return;
	}
	if (send(f->fd, p->payload, p->payload_len,
		 MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
		if (errno == ECONNREFUSED)
			refuse(e, p, -ECONNREFUSED);
		else
			sl_count(e, SL_C_drop_socket_error);
		return;
	}
	sl_count(e, SL_C_udp_datagrams_to_host);
}

/* The host said the port is closed: tell the guest as a router would,
 * quoting a header that looks like what it sent. */
static void port_unreach(struct sl_engine *e, struct sl_flow *f)
{
	uint8_t q[48];
	struct sl_pkt p = { 0 };
	size_t l3 = sl_ip_header(e, q, f->family, f->gaddr, f->raddr,
				 IPPROTO_UDP_, 8);

	sl_put16(q + l3, f->gport);
	sl_put16(q + l3 + 2, f->rport);
	sl_put16(q + l3 + 4, 8);
	q[l3 + 6] = q[l3 + 7] = 0;
	p.family = f->family;
	p.l3 = q;
	p.l3_len = l3 + 8;
	memcpy(p.src, f->gaddr, 16);
	refuse(e, &p, -ECONNREFUSED);
}

void sl_udp_sock_event(struct sl_engine *e, struct sl_flow *f, uint32_t ev)
{
	int i;

	(void)ev;
	for (i = 0; i < UDP_RX_BATCH; i++) {
		ssize_t n = recv(f->fd, e->rxbuf, 65535, MSG_DONTWAIT);

		if (n < 0) {
			if (errno == ECONNREFUSED)
				port_unreach(e, f);
			else if (errno != EAGAIN && errno != EINTR)
				sl_count(e, SL_C_drop_socket_error);
			if (errno == EAGAIN)
				break;
			continue;
		}
		f->last_ns = e->now;
		if (sl_udp_emit(e, f->family, guest_mac(e), f->raddr, f->rport,
				f->gaddr, f->gport, e->rxbuf, (size_t)n) == 0)
			sl_count(e, SL_C_udp_datagrams_to_guest);
	}
}

/**
 * sl_udp_listener_event() - datagrams on a forwarded UDP port: relay each
 * to the guest from the client's guest-visible address, creating a flow per
 * client so the guest's replies find their way back.
 */
void sl_udp_listener_event(struct sl_engine *e, struct sl_listener *l)
{
	int i;

	for (i = 0; i < UDP_RX_BATCH; i++) {
		struct sockaddr_in6 sa;
		socklen_t salen = sizeof(sa);
		uint8_t view[16] = { 0 };
		uint16_t cport;
		int fam = l->family;
		struct sl_flow *f;
		ssize_t n = recvfrom(l->fd, e->rxbuf, 65535, MSG_DONTWAIT,
				     (struct sockaddr *)&sa, &salen);

		if (n < 0)
			break;
		if (sl_guest_view_of(e, &sa, &fam, view, &cport) < 0) {
			sl_count(e, SL_C_drop_dst_invalid);
			continue;
		}
		f = sl_flow_lookup(e, SL_FLOW_UDP, fam, l->gaddr, l->gport,
				   view, cport);
		if (!f) {
			f = sl_flow_new(e, SL_FLOW_UDP, fam, l->gaddr, l->gport,
					view, cport);
			if (!f)
				continue;
			f->udp.inbound = 1;
			f->udp.listener = (uint32_t)(l - e->listeners);
			sl_count(e, SL_C_udp_flows_opened);
			sl_flow_opened(e, f, true);
		}
		if (sa.sin6_family == AF_INET) {
			struct sockaddr_in *sin = (struct sockaddr_in *)&sa;

			f->udp.client_family = 4;
			memcpy(f->udp.client, &sin->sin_addr, 4);
			f->udp.client_port = ntohs(sin->sin_port);
		} else {
			f->udp.client_family = 6;
			memcpy(f->udp.client, &sa.sin6_addr, 16);
			f->udp.client_port = ntohs(sa.sin6_port);
		}
		f->last_ns = e->now;
		if (sl_udp_emit(e, fam, guest_mac(e), view, cport, l->gaddr,
				l->gport, e->rxbuf, (size_t)n) == 0)
			sl_count(e, SL_C_udp_datagrams_to_guest);
	}
}
