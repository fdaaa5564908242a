// SPDX-License-Identifier: MIT
/*
 * udp.c - UDP flows: one connected host socket per (guest address and port,
 * destination), replies relayed back, idle expiry (sl_udp_timer, from
 * engine.c's timer walk), ICMP port unreachable when the host reports it;
 * and inbound datagrams on forwarded UDP ports, whose per-client flows
 * share the listener's socket. The contract is in udp.h.
 *
 * Batching: consecutive guest datagrams for the same flow within one TAP
 * drain are copied into a preallocated batch and leave in one sendmmsg
 * (sl_udp_flush, called by engine.c before any other frame, at the end of
 * every drain and after every injected frame). Host datagrams are read with
 * recvmmsg into preallocated slots. A UDP GSO (USO) super-frame from the
 * guest leaves as one sendmsg with a UDP_SEGMENT cmsg, so the host kernel
 * cuts it at gso_size; per-datagram sends are the fallback.
 *
 * Datagrams larger than the guest MTU are dropped and counted: slirpy never
 * fragments, as it never reassembles. Toward the guest each datagram is one
 * frame (no UDP GRO / USO toward the guest).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "internal.h"

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef VIRTIO_NET_HDR_GSO_UDP_L4
#define VIRTIO_NET_HDR_GSO_UDP_L4 5
#endif

#define UDP_RX_BATCH 64		/* datagrams per socket event (fairness) */
#define SL_UDP_BATCH 32		/* datagrams per sendmmsg / recvmmsg */
#define SL_UDP_TX_BYTES (256 * 1024)
/* Segments per UDP_SEGMENT send: every kernel with UDP_SEGMENT takes 64
 * (UDP_MAX_SEGMENTS, 128 on newer kernels). */
#define SL_USO_CHUNK 64
/* Largest UDP payload of one frame to the guest: IPv4's total length is
 * 16 bits (IPv6 could carry 20 bytes more; not worth a second limit). */
#define SL_UDP_RUN_MAX (65535 - 20 - 8)

/**
 * struct sl_udp_batch - preallocated message vectors for sendmmsg/recvmmsg.
 * @buf: tx: copies of queued payloads (SL_UDP_TX_BYTES); rx: SL_UDP_BATCH
 *       slots of @slot bytes each
 * @name: rx on a forwarded port: the senders' addresses
 * @run: rx: SL_UDP_RUN_MAX bytes where a run of datagrams is copied to
 *       leave as one USO frame
 * @used: tx: bytes of @buf taken
 * @n: tx: datagrams queued, all for flow @flow of generation @gen
 */
struct sl_udp_batch {
	struct mmsghdr msg[SL_UDP_BATCH];
	struct iovec iov[SL_UDP_BATCH];
	struct sockaddr_in6 name[SL_UDP_BATCH];	/* rx on a forwarded port */
	uint8_t *buf;
	uint8_t *run;		/* rx: one run of datagrams, made contiguous */
	size_t used;
	size_t slot;
	uint32_t n;
	uint32_t flow;
	uint32_t gen;
};

static struct sl_udp_batch *batch_new(size_t bytes, size_t slot)
{
	struct sl_udp_batch *b = calloc(1, sizeof(*b));
	int i;

	if (!b)
		return NULL;
	b->buf = malloc(bytes);
	if (!b->buf) {
		free(b);
		return NULL;
	}
	b->slot = slot;
	for (i = 0; i < SL_UDP_BATCH; i++) {
		b->iov[i].iov_base = b->buf + (size_t)i * slot;
		b->iov[i].iov_len = slot;
		b->msg[i].msg_hdr.msg_iov = &b->iov[i];
		b->msg[i].msg_hdr.msg_iovlen = 1;
	}
	return b;
}

/**
 * sl_udp_init() - allocate the batches once, at engine creation.
 *
 * A receive slot holds one datagram of up to the guest MTU: anything larger
 * could not be relayed anyway (truncated reads are dropped as too big). Only
 * the pages that datagrams touch become resident.
 *
 * Return: 0, or -1 when out of memory.
 */
int sl_udp_init(struct sl_engine *e)
{
	e->udp.tx = batch_new(SL_UDP_TX_BYTES, 0);
	e->udp.rx = batch_new((size_t)SL_UDP_BATCH * e->cfg.mtu, e->cfg.mtu);
	if (!e->udp.tx || !e->udp.rx)
		return -1;
	e->udp.uso_out = e->cfg.offload && e->cfg.vnet_hdr_len;
	e->udp.rx->run = malloc(SL_UDP_RUN_MAX);
	return e->udp.rx->run ? 0 : -1;
}

void sl_udp_fini(struct sl_engine *e)
{
	struct sl_udp_batch *b[2] = { e->udp.tx, e->udp.rx };
	int i;

	for (i = 0; i < 2; i++)
		if (b[i]) {
			free(b[i]->run);
			free(b[i]->buf);
			free(b[i]);
		}
	e->udp.tx = e->udp.rx = NULL;
}

/**
 * sl_udp_gso_valid() - may this UDP frame be taken as a USO super-frame?
 *
 * Only VIRTIO_NET_HDR_GSO_UDP_L4 (no ECN bit, no legacy UFO), a segment
 * size that cuts the payload into at least two datagrams, and a header
 * length hint that, when given, covers the headers and stays inside the
 * frame (the kernel sends the linear length there, which may include
 * payload). The checksum is never checked: the guest left it partial.
 */
bool sl_udp_gso_valid(const struct sl_pkt *p)
{
	size_t hdrs;

	if (p->proto != IPPROTO_UDP_ ||
	    p->vh.gso_type != VIRTIO_NET_HDR_GSO_UDP_L4 || !p->vh.gso_size ||
	    p->payload_len <= p->vh.gso_size)
		return false;
	hdrs = (size_t)(p->payload - p->frame);
	return !p->vh.hdr_len ||
	       (p->vh.hdr_len >= hdrs && p->vh.hdr_len <= p->len);
}

/**
 * sl_udp_emit() - send one UDP datagram to the guest.
 * Return: 0, or -1 when dropped (too big for the guest's MTU).
 */
int sl_udp_emit(struct sl_engine *e, int family, const uint8_t *dst_mac,
		const uint8_t *src, uint16_t sport, const uint8_t *dst,
		uint16_t dport, const uint8_t *payload, size_t len)
{
	size_t iphl = family == 4 ? SL_IPV4_HLEN : SL_IPV6_HLEN;
	uint8_t *b = e->txbuf, *u;
	struct iovec iov[2];
	uint32_t sum;
	uint16_t csum;
	size_t hl;

	if (len + SL_UDP_HLEN + iphl > e->cfg.mtu) {
		sl_count(e, SL_C_drop_udp_too_big);
		return -1;
	}
	hl = sl_frame_headers(e, b, dst_mac, family, src, dst, IPPROTO_UDP_,
			      SL_UDP_HLEN + len);
	u = b + hl;
	sl_emit_udp(u, sport, dport, SL_UDP_HLEN + len);
	sum = sl_csum_pseudo(family, src, dst, IPPROTO_UDP_,
			     (uint32_t)(SL_UDP_HLEN + len));
	sum = sl_csum_add(sum, u, SL_UDP_HLEN);
	csum = sl_csum_fold(sl_csum_add(sum, payload, len));
	if (!csum)
		csum = 0xffff;
	sl_put_csum(u + SL_UDP_CSUM_OFF, csum);
	iov[0].iov_base = b;
	iov[0].iov_len = hl + SL_UDP_HLEN;
	iov[1].iov_base = (void *)payload;
	iov[1].iov_len = len;
	return sl_output(e, NULL, iov, 2);
}

static void refuse(struct sl_engine *e, const struct sl_pkt *p, int err)
{
	if (err == -EINVAL) {
		sl_count(e, SL_C_drop_dst_invalid);
		return;
	}
	/* ENETUNREACH: host loopback disabled; ECONNREFUSED: closed port. */
	sl_icmp_send_error(e, p, err == -ENETUNREACH ? SL_UNREACH_NET :
						       SL_UNREACH_PORT);
}

static struct sl_flow *open_flow(struct sl_engine *e, const struct sl_pkt *p)
{
	struct sockaddr_in6 sa;
	uint32_t salen;
	struct sl_flow *f;
	int r, fam;

	r = sl_remote_sockaddr(e, p->family, p->dst, p->dport, IPPROTO_UDP_,
			       &sa, &salen);
	if (sl_policy_denies(e, p, r, &sa)) {
		sl_icmp_send_error(e, p, SL_UNREACH_ADMIN);
		return NULL;
	}
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

/* Where an inbound flow's replies go: the host client, by way of the
 * forwarded port's socket. Return: the address length. */
static socklen_t client_sockaddr(const struct sl_flow *f,
				 struct sockaddr_in6 *sa)
{
	memset(sa, 0, sizeof(*sa));
	if (f->udp.client_family == 4) {
		struct sockaddr_in *sin = (struct sockaddr_in *)sa;

		sin->sin_family = AF_INET;
		memcpy(&sin->sin_addr, f->udp.client, 4);
		sin->sin_port = htons(f->udp.client_port);
		return sizeof(*sin);
	}
	sa->sin6_family = AF_INET6;
	memcpy(&sa->sin6_addr, f->udp.client, 16);
	sa->sin6_port = htons(f->udp.client_port);
	return sizeof(*sa);
}

/**
 * udp_send() - one datagram, or with @gso a run of @gso-byte datagrams that
 * the host kernel segments (UDP_SEGMENT), to the flow's peer.
 * Return: 0 or -errno (-ENOTCONN: the forward is gone).
 */
static int udp_send(struct sl_engine *e, struct sl_flow *f,
		    const uint8_t *buf, size_t len, uint16_t gso)
{
	union {
		char b[CMSG_SPACE(sizeof(uint16_t))];
		struct cmsghdr align;
	} u;
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct sockaddr_in6 sa;
	int fd = f->fd;

	if (f->udp.inbound) {
		struct sl_listener *l = &e->listeners[f->udp.listener];

		if (!l->used)
			return -ENOTCONN;
		fd = l->fd;
		m.msg_name = &sa;
		m.msg_namelen = client_sockaddr(f, &sa);
	}
	if (gso && len > gso) {
		struct cmsghdr *c;

		memset(&u, 0, sizeof(u));
		m.msg_control = u.b;
		m.msg_controllen = sizeof(u.b);
		c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_UDP;
		c->cmsg_type = UDP_SEGMENT;
		c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
		memcpy(CMSG_DATA(c), &gso, sizeof(gso));
	}
	return sendmsg(fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL) < 0 ? -errno : 0;
}

/* The host said the port is closed: tell the guest as a router would,
 * quoting a header that looks like what it sent. */
static void port_unreach(struct sl_engine *e, struct sl_flow *f)
{
	sl_icmp_send_flow_error(e, f, 0, SL_UNREACH_PORT);
}

/* A send failed: a closed port is the guest's business, the rest a drop. */
static void send_failed(struct sl_engine *e, struct sl_flow *f, int err)
{
	if (err == -ECONNREFUSED && !f->udp.inbound)
		port_unreach(e, f);
	else if (err == -ENOTCONN)
		sl_count(e, SL_C_drop_no_flow);
	else
		sl_count(e, SL_C_drop_socket_error);
}

/**
 * sl_udp_flush() - send the queued guest datagrams with sendmmsg, in order.
 * The batch belongs to one flow; if that flow is gone (its slot freed or
 * reused), the datagrams are dropped rather than sent on another socket.
 */
void sl_udp_flush(struct sl_engine *e)
{
	struct sl_udp_batch *b = e->udp.tx;
	struct sl_flow *f = &e->flows.pool[b->flow];
	uint32_t i = 0, n = b->n;

	if (!n)
		return;
	b->n = 0;
	b->used = 0;
	if (f->kind != SL_FLOW_UDP || f->gen != b->gen || f->fd < 0) {
		e->ctr[SL_C_drop_no_flow] += n;
		return;
	}
	while (i < n) {
		int r = sendmmsg(f->fd, b->msg + i, n - i,
				 MSG_DONTWAIT | MSG_NOSIGNAL);

		if (r > 0) {
			sl_count(e, SL_C_udp_send_batches);
			e->ctr[SL_C_udp_datagrams_to_host] += (uint32_t)r;
			i += (uint32_t)r;
			continue;
		}
		if (r < 0 && (errno == EAGAIN || errno == ENOBUFS)) {
			/* the socket is full: the rest would fail alike */
			e->ctr[SL_C_drop_socket_error] += n - i;
			break;
		}
		/* datagram i failed alone (an ICMP error reported late,
		 * EINTR, ...): count it and go on with the next */
		send_failed(e, f, r < 0 ? -errno : -EIO);
		i++;
	}
}

/* Queue one datagram for the flow's next sendmmsg. */
static void queue_tx(struct sl_engine *e, struct sl_flow *f,
		     const uint8_t *payload, size_t len)
{
	struct sl_udp_batch *b = e->udp.tx;
	struct iovec *v;

	if (b->n == SL_UDP_BATCH || b->used + len > SL_UDP_TX_BYTES)
		sl_udp_flush(e);
	v = &b->iov[b->n];
	v->iov_base = b->buf + b->used;
	v->iov_len = len;
	if (len)
		memcpy(v->iov_base, payload, len);
	b->used += len;
	b->flow = f->self;
	b->gen = f->gen;
	b->n++;
}

/* Per-datagram fallback for a USO run the host would not segment. */
static void send_each(struct sl_engine *e, struct sl_flow *f,
		      const uint8_t *buf, size_t len, size_t gso)
{
	size_t off;

	for (off = 0; off < len; off += gso) {
		size_t n = len - off < gso ? len - off : gso;
		int r = udp_send(e, f, buf + off, n, 0);

		if (r < 0) {
			send_failed(e, f, r);
			if (r == -ECONNREFUSED || r == -ENOTCONN ||
			    r == -EAGAIN)
				return;
			continue;
		}
		sl_count(e, SL_C_udp_datagrams_to_host);
	}
}

/**
 * send_uso() - a USO super-frame (validated by sl_udp_gso_valid): its
 * payload cut every gso_size bytes, the last datagram possibly shorter.
 * Sent in runs of at most SL_USO_CHUNK segments with UDP_SEGMENT; a host
 * that refuses (no UDP_SEGMENT, or gso_size above the route's MTU) gets
 * one send per datagram.
 */
static void send_uso(struct sl_engine *e, struct sl_flow *f,
		     const struct sl_pkt *p)
{
	size_t gso = p->vh.gso_size, len = p->payload_len, off = 0;

	sl_count(e, SL_C_udp_gso_frames_in);
	while (off < len) {
		size_t n = len - off;
		int r;

		if (n > gso * SL_USO_CHUNK)
			n = gso * SL_USO_CHUNK;
		r = udp_send(e, f, p->payload + off, n, (uint16_t)gso);
		if (!r) {
			e->ctr[SL_C_udp_datagrams_to_host] += (n + gso - 1) / gso;
		} else if (r == -EINVAL || r == -EIO || r == -EMSGSIZE ||
			   r == -ENOPROTOOPT || r == -EOPNOTSUPP) {
			send_each(e, f, p->payload + off, n, gso);
		} else {
			send_failed(e, f, r);
			return;
		}
		off += n;
	}
}

void sl_udp_input(struct sl_engine *e, const struct sl_pkt *p)
{
	struct sl_flow *f;
	int r;

	f = sl_flow_lookup(e, SL_FLOW_UDP, p->family, p->src, p->sport, p->dst,
			   p->dport);
	/* Another flow's batch goes first; and before open_flow, whose LRU
	 * eviction could close the batch's socket. */
	if (e->udp.tx->n && (!f || f->self != e->udp.tx->flow))
		sl_udp_flush(e);
	if (!f) {
		f = open_flow(e, p);
		if (!f)
			return;
	}
	f->last_ns = e->now;
	if (p->vh.gso_type != VIRTIO_NET_HDR_GSO_NONE) {
		sl_udp_flush(e);
		send_uso(e, f, p);
		return;
	}
	if (!f->udp.inbound) {
		queue_tx(e, f, p->payload, p->payload_len);
		return;
	}
	r = udp_send(e, f, p->payload, p->payload_len, 0);
	if (r < 0)
		send_failed(e, f, r);
	else
		sl_count(e, SL_C_udp_datagrams_to_host);
}

/**
 * emit_run() - datagrams @i..@j-1 of the receive batch as one USO frame:
 * all @gso bytes long but the last, which may be shorter. The guest's
 * kernel cuts it back into the same datagrams (or hands a UDP_GRO socket
 * the run). Partial checksum, as for TCP GSO frames.
 * Return: 0 (sent, or dropped and counted), or -1 when the TAP refused
 * USO frames (EINVAL: a kernel that cannot take them).
 */
static int emit_run(struct sl_engine *e, struct sl_flow *f, int i, int j,
		    size_t gso)
{
	struct sl_udp_batch *b = e->udp.rx;
	struct virtio_net_hdr vh = { 0 };
	uint8_t *h = e->txbuf, *u;
	struct iovec iov[2];
	size_t hl, len = 0;
	uint16_t csum;
	int k;

	for (k = i; k < j; k++) {
		memcpy(b->run + len, b->buf + (size_t)k * b->slot,
		       b->msg[k].msg_len);
		len += b->msg[k].msg_len;
	}
	hl = sl_frame_headers(e, h, NULL, f->family, f->raddr, f->gaddr,
			      IPPROTO_UDP_, SL_UDP_HLEN + len);
	u = h + hl;
	sl_emit_udp(u, f->rport, f->gport, SL_UDP_HLEN + len);
	csum = (uint16_t)~sl_csum_fold(sl_csum_pseudo(f->family, f->raddr,
						      f->gaddr, IPPROTO_UDP_,
						      (uint32_t)(SL_UDP_HLEN +
								 len)));
	sl_put_csum(u + SL_UDP_CSUM_OFF, csum);
	vh.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
	vh.csum_start = (uint16_t)hl;
	vh.csum_offset = SL_UDP_CSUM_OFF;
	vh.gso_type = VIRTIO_NET_HDR_GSO_UDP_L4;
	vh.gso_size = (uint16_t)gso;
	vh.hdr_len = (uint16_t)(hl + SL_UDP_HLEN);
	iov[0].iov_base = h;
	iov[0].iov_len = hl + SL_UDP_HLEN;
	iov[1].iov_base = b->run;
	iov[1].iov_len = len;
	errno = 0;
	if (sl_output(e, &vh, iov, 2) < 0)
		return errno == EINVAL ? -1 : 0;
	sl_count(e, SL_C_gso_frames_out);
	e->ctr[SL_C_udp_datagrams_to_guest] += (uint32_t)(j - i);
	return 0;
}

/* Where the run of datagrams starting at @i ends: equal sizes that fit
 * the guest's MTU, the last possibly shorter, in one IP packet. */
static int run_end(struct sl_engine *e, const struct sl_flow *f, int i,
		   int n)
{
	struct sl_udp_batch *b = e->udp.rx;
	size_t gso = b->msg[i].msg_len, total = gso;
	int j = i + 1;

	if (!gso || gso + 8 + (f->family == 4 ? 20 : 40) > e->cfg.mtu)
		return j;
	while (j < n && b->msg[j].msg_len && b->msg[j].msg_len <= gso &&
	       total + b->msg[j].msg_len <= SL_UDP_RUN_MAX) {
		total += b->msg[j].msg_len;
		if (b->msg[j++].msg_len < gso)
			break;
	}
	return j;
}

void sl_udp_sock_event(struct sl_engine *e, struct sl_flow *f, uint32_t ev)
{
	struct sl_udp_batch *b = e->udp.rx;
	int done = 0, fails = 0;

	(void)ev;
	while (done < UDP_RX_BATCH && fails < UDP_RX_BATCH) {
		int i, n = recvmmsg(f->fd, b->msg, SL_UDP_BATCH, MSG_DONTWAIT,
				    NULL);

		if (n < 0) {
			if (errno == EAGAIN)
				break;
			if (errno == ECONNREFUSED)
				port_unreach(e, f);
			else if (errno != EINTR)
				sl_count(e, SL_C_drop_socket_error);
			fails++;
			continue;
		}
		sl_count(e, SL_C_udp_recv_batches);
		f->last_ns = e->now;
		for (i = 0; i < n;) {
			int j = e->udp.uso_out ? run_end(e, f, i, n) : i + 1;

			if (j - i > 1) {
				if (!emit_run(e, f, i, j, b->msg[i].msg_len)) {
					i = j;
					continue;
				}
				/* an old kernel: one frame per datagram */
				e->udp.uso_out = false;
			}
			for (; i < j; i++)
				if (sl_udp_emit(e, f->family, sl_guest_mac(e),
						f->raddr, f->rport, f->gaddr,
						f->gport,
						b->buf + (size_t)i * b->slot,
						b->msg[i].msg_len) == 0)
					sl_count(e,
						 SL_C_udp_datagrams_to_guest);
		}
		done += n;
		if (n < SL_UDP_BATCH)
			break;	/* drained; level-triggered epoll says if not */
	}
}

/**
 * sl_udp_listener_event() - datagrams on a forwarded UDP port: relay each
 * to the guest from the client's guest-visible address, creating a flow per
 * client so the guest's replies find their way back.
 */
static void relay_inbound(struct sl_engine *e, struct sl_listener *l,
			  const struct sockaddr_in6 *sa, const uint8_t *buf,
			  size_t n)
{
	uint8_t view[16] = { 0 };
	uint16_t cport;
	int fam = l->family;
	struct sl_flow *f;

	if (sl_guest_view_of(e, sa, &fam, view, &cport) < 0) {
		sl_count(e, SL_C_drop_dst_invalid);
		return;
	}
	f = sl_flow_lookup(e, SL_FLOW_UDP, fam, l->gaddr, l->gport, view,
			   cport);
	if (!f) {
		f = sl_flow_new(e, SL_FLOW_UDP, fam, l->gaddr, l->gport, view,
				cport);
		if (!f)
			return;
		f->udp.inbound = 1;
		f->udp.listener = (uint32_t)(l - e->listeners);
		sl_count(e, SL_C_udp_flows_opened);
		sl_flow_opened(e, f, true);
	}
	if (sa->sin6_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;

		f->udp.client_family = 4;
		memcpy(f->udp.client, &sin->sin_addr, 4);
		f->udp.client_port = ntohs(sin->sin_port);
	} else {
		f->udp.client_family = 6;
		memcpy(f->udp.client, &sa->sin6_addr, 16);
		f->udp.client_port = ntohs(sa->sin6_port);
	}
	f->last_ns = e->now;
	if (sl_udp_emit(e, fam, sl_guest_mac(e), view, cport, l->gaddr, l->gport,
			buf, n) == 0)
		sl_count(e, SL_C_udp_datagrams_to_guest);
}

void sl_udp_listener_event(struct sl_engine *e, struct sl_listener *l)
{
	struct sl_udp_batch *b = e->udp.rx;
	struct sockaddr_in6 *name = b->name;
	int i, n, done = 0;

	while (done < UDP_RX_BATCH) {
		for (i = 0; i < SL_UDP_BATCH; i++) {
			b->msg[i].msg_hdr.msg_name = &name[i];
			b->msg[i].msg_hdr.msg_namelen = sizeof(name[i]);
		}
		n = recvmmsg(l->fd, b->msg, SL_UDP_BATCH, MSG_DONTWAIT, NULL);
		if (n <= 0)
			break;
		sl_count(e, SL_C_udp_recv_batches);
		for (i = 0; i < n; i++)
			relay_inbound(e, l, &name[i],
				      b->buf + (size_t)i * b->slot,
				      b->msg[i].msg_len);
		done += n;
		if (n < SL_UDP_BATCH)
			break;
	}
	/* flow sockets are connected: no addresses to fill in */
	for (i = 0; i < SL_UDP_BATCH; i++) {
		b->msg[i].msg_hdr.msg_name = NULL;
		b->msg[i].msg_hdr.msg_namelen = 0;
	}
}

/**
 * sl_udp_listener_gone() - the forward in listener slot @slot was removed.
 *
 * Inbound UDP flows answer through the listener's socket, by slot: forget
 * them, or a forward added later in this slot would carry their replies
 * from its own port. (TCP flows own their accepted fd.)
 */
void sl_udp_listener_gone(struct sl_engine *e, uint32_t slot)
{
	uint32_t k;

	for (k = 0; k < e->flows.n_used; k++) {
		struct sl_flow *f = &e->flows.pool[k];

		if (f->kind == SL_FLOW_UDP && f->udp.inbound &&
		    f->udp.listener == slot) {
			sl_count(e, SL_C_udp_flows_closed);
			sl_flow_free(e, f);
		}
	}
}

/* sl_udp_timer() - idle expiry of one UDP flow at e->now. */
void sl_udp_timer(struct sl_engine *e, struct sl_flow *f)
{
	if (e->now - f->last_ns >= (uint64_t)e->cfg.udp_idle_s * NSEC_PER_SEC) {
		sl_count(e, SL_C_udp_flows_closed);
		f->why = SL_FC_TIMEOUT;
		sl_flow_free(e, f);
	}
}
