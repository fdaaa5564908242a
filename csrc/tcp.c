// SPDX-License-Identifier: MIT
/*
 * tcp.c - translate between the guest's kernel TCP and a host TCP socket,
 * with no per-connection data buffer in slirpy (passt's design).
 *
 * Guest -> host: a segment at rcv_nxt is written straight to the socket and
 * acknowledged for what the socket took; the advertised window follows the
 * socket's free send space. Out-of-order segments are not kept: the guest
 * retransmits them after our duplicate ACK.
 *
 * Host -> guest: data is read with MSG_PEEK (SO_PEEK_OFF keeps the offset
 * of what is in flight) and discarded from the socket only when the guest
 * acknowledges it, so a retransmission re-reads the kernel's copy. With
 * offloads on, a read of up to 64 KiB leaves as one GSO frame with a
 * partial checksum; the guest's kernel needs no segmenting.
 *
 * Sequence space toward the guest: isn is our SYN, then data, then FIN.
 * Connection teardown keeps no TIME-WAIT: when both FINs are acknowledged
 * (or on RST), the flow and its socket are gone.
 *
 * The contract (what this file owns, may call and must not do) is in tcp.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <linux/tcp.h>	/* struct tcp_info with tcpi_bytes_acked */
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"

#define SEQ_LT(a, b) ((int32_t)((a) - (b)) < 0)
#define SEQ_LE(a, b) ((int32_t)((a) - (b)) <= 0)
#define SEQ_GT(a, b) ((int32_t)((a) - (b)) > 0)

#define OUR_WS 7			/* window scale we announce */
#define RTO_INIT_MS 1000		/* RFC 6298 2.1: before any RTT sample */
#define RTO_MIN_MS 200
#define RTO_MAX_MS 30000
#define RTO_MAX_RETRIES 12
#define HALF_OPEN_TIMEOUT_S 75
#define CLOSING_IDLE_S 60
#define SYN_WINDOW 65535
#define PEEK_MAX 65535u			/* one peek, one GSO frame at most */
/* Longest wait of a delayed ACK: long enough for a host on this machine to
 * answer a request (the answer then carries the ACK), far below the
 * guest's 200 ms minimum RTO, short for a Nagle sender waiting on it. */
#define DELACK_NS (1 * NSEC_PER_MSEC)

/* tcp_info.tcpi_state values (include/net/tcp_states.h, not in uapi) */
enum { SL_TCPS_TIME_WAIT = 6, SL_TCPS_CLOSE_WAIT = 8, SL_TCPS_LAST_ACK = 9,
       SL_TCPS_CLOSING = 11 };

static uint16_t mss_cap(const struct sl_engine *e, int family)
{
	return (uint16_t)(e->cfg.mtu - (family == 4 ? 40 : 60));
}

/* Guest-to-host window: what the host socket can still take. The buffer
 * counts skb overhead too, hence only three quarters of SO_SNDBUF.
 * @low: set when the space is under 1/16 of the buffer: the socket is then
 * not writable for epoll (queued > 2/3 of it), and EPOLLOUT fires only once
 * it has drained to a window of at least 1/12 of it, so asking for EPOLLOUT
 * to send a window update cannot spin.
 *
 * Measuring costs two syscalls (SO_SNDBUF follows the kernel's autotuning,
 * SIOCOUTQ what is queued), and every frame to the guest carries a window.
 * A measure is reused while it still promises a lot: the queue only shrinks
 * (the host peer acks) and autotuning only grows the buffer, so the space
 * measured minus what we wrote since is a lower bound of the space now, and
 * advertising it keeps the window's right edge where it was (no shrinking).
 * It is measured again once an eighth of the buffer was written since, or
 * when that bound gets small (so "low" is always from a fresh measure); a
 * short send() and an EPOLLOUT window update forget the measure. */
static uint32_t free_send_space(struct sl_flow *f, bool *low)
{
	int sndbuf = 0, outq = 0;
	socklen_t sl = sizeof(sndbuf);
	long space;

	*low = false;
	if (f->tcp.flags & SL_TF_SPACE_OK) {
		uint32_t used = f->tcp.rcv_nxt - f->tcp.space_seq;
		uint32_t est = f->tcp.space > used ? f->tcp.space - used : 0;

		if (used < f->tcp.sndbuf / 8 && est >= f->tcp.sndbuf / 8)
			return est;
	}
	f->tcp.flags &= (uint16_t)~SL_TF_SPACE_OK;
	if (f->fd < 0 || getsockopt(f->fd, SOL_SOCKET, SO_SNDBUF, &sndbuf,
				    &sl) < 0 ||
	    ioctl(f->fd, SIOCOUTQ, &outq) < 0 || sndbuf <= 0)
		return 0;
	space = (long)sndbuf * 3 / 4 - outq;
	*low = space < (long)sndbuf / 16;
	if (space < 0)
		space = 0;
	f->tcp.sndbuf = (uint32_t)sndbuf;
	f->tcp.space = (uint32_t)space;
	f->tcp.space_seq = f->tcp.rcv_nxt;
	f->tcp.flags |= SL_TF_SPACE_OK;
	return (uint32_t)space;
}

static uint16_t window_field(struct sl_flow *f, uint32_t *bytes, bool *low)
{
	uint32_t w = 0;

	*low = false;
	if (!(f->tcp.flags & SL_TF_GUEST_FIN))
		w = free_send_space(f, low);

	if (!(f->tcp.flags & SL_TF_WS_OK)) {
		w = w > 65535 ? 65535 : w;
		*bytes = w;
		return (uint16_t)w;
	}
	if (w > (65535u << OUR_WS))
		w = 65535u << OUR_WS;
	*bytes = w & ~((1u << OUR_WS) - 1);
	return (uint16_t)(w >> OUR_WS);
}

static void update_events(struct sl_engine *e, struct sl_flow *f);

/* RFC 6298: RTO = SRTT + 4 * RTTVAR, bounded; 1 s before the first sample.
 * The round trip is to the guest's kernel: short, but it includes the
 * guest's delayed ACKs, which is why a fixed 200 ms would misfire. */
static uint32_t rto_base(const struct sl_flow *f)
{
	uint64_t us;

	if (!(f->tcp.flags & SL_TF_RTT_OK))
		return RTO_INIT_MS;
	us = (uint64_t)f->tcp.srtt_us + 4 * (uint64_t)f->tcp.rttvar_us;
	if (us < RTO_MIN_MS * 1000ULL)
		return RTO_MIN_MS;
	if (us > RTO_MAX_MS * 1000ULL)
		return RTO_MAX_MS;
	return (uint32_t)(us / 1000);
}

static void rtt_sample(struct sl_engine *e, struct sl_flow *f)
{
	uint64_t r = (e->now - f->tcp.rtt_at) / 1000;
	uint32_t us = r > RTO_MAX_MS * 1000ULL ? RTO_MAX_MS * 1000 : (uint32_t)r;

	f->tcp.flags &= (uint16_t)~SL_TF_TIMING;
	if (!(f->tcp.flags & SL_TF_RTT_OK)) {
		f->tcp.srtt_us = us;
		f->tcp.rttvar_us = us / 2;
		f->tcp.flags |= SL_TF_RTT_OK;
		return;
	}
	f->tcp.rttvar_us = (3 * f->tcp.rttvar_us +
			    (f->tcp.srtt_us > us ? f->tcp.srtt_us - us :
						   us - f->tcp.srtt_us)) / 4;
	f->tcp.srtt_us = (7 * f->tcp.srtt_us + us) / 8;
}

/* Time the segment ending at @end unless one is being timed already. */
static void rtt_start(struct sl_engine *e, struct sl_flow *f, uint32_t end)
{
	if (f->tcp.flags & SL_TF_TIMING)
		return;
	f->tcp.flags |= SL_TF_TIMING;
	f->tcp.rtt_seq = end;
	f->tcp.rtt_at = e->now;
}

static void arm_rto(struct sl_engine *e, struct sl_flow *f)
{
	if (!f->tcp.rto_ms)
		f->tcp.rto_ms = rto_base(f);
	f->tcp.rto_at = e->now + (uint64_t)f->tcp.rto_ms * NSEC_PER_MSEC;
	if (f->tcp.rto_at < e->next_scan)
		e->next_scan = f->tcp.rto_at;
}

/* Queue an ACK for the end of the batch; one per flow however many
 * segments arrived, which is what coalesces ACKs. It leaves then, even if
 * a lazy one (below) was queued before. */
static void mark_ack(struct sl_engine *e, struct sl_flow *f)
{
	f->tcp.flags &= (uint16_t)~SL_TF_ACK_LAZY;
	if ((f->tcp.flags & SL_TF_ACK_DUE) || e->tcp.nack >= e->flows.n_max)
		return;
	f->tcp.flags |= SL_TF_ACK_DUE;
	e->tcp.ack_list[e->tcp.nack++] = f->self;
}

/* Queue an ACK that may wait (delayed ACK): data toward the guest sent in
 * the meantime carries it, and the end of a batch sends it only if enough
 * is unacknowledged or the delay is over (see sl_tcp_flush_acks()). */
static void mark_delack(struct sl_engine *e, struct sl_flow *f)
{
	if ((f->tcp.flags & SL_TF_ACK_DUE) || e->tcp.nack >= e->flows.n_max)
		return;
	f->tcp.flags |= SL_TF_ACK_DUE | SL_TF_ACK_LAZY;
	e->tcp.ack_list[e->tcp.nack++] = f->self;
}

/**
 * emit() - send one TCP segment (or one GSO super-segment) to the guest.
 * @syn_opts: add MSS and window-scale options (SYN and SYN-ACK)
 * @data/@len: payload, not copied
 */
static void emit(struct sl_engine *e, struct sl_flow *f, uint8_t flags,
		 uint32_t seq, const uint8_t *data, size_t len, bool syn_opts)
{
	struct virtio_net_hdr vh = { 0 };
	bool gso = len > f->tcp.gmss;
	/* RFC 7323 2.2: a SYN-ACK carries window scale only if the SYN did. */
	bool ws = syn_opts && (!(flags & TCP_ACK) ||
			       (f->tcp.flags & SL_TF_WS_OK));
	struct sl_tcp_hdr th = {
		.sport = f->rport, .dport = f->gport, .seq = seq,
		.ack = (flags & TCP_ACK) ? f->tcp.rcv_nxt : 0, .flags = flags,
		.mss = syn_opts ? mss_cap(e, f->family) : 0,
		.wscale = ws ? OUR_WS : -1,
	};
	uint8_t *b = e->txbuf, *t;
	size_t hl, thl = syn_opts ? (ws ? 28 : 24) : SL_TCP_HLEN;
	struct iovec iov[2];
	uint32_t sum, wbytes;
	uint16_t csum;
	bool low = false;

	if (flags & TCP_SYN)
		th.wnd = SYN_WINDOW, wbytes = SYN_WINDOW;
	else
		th.wnd = window_field(f, &wbytes, &low);
	/* The host reader is behind and the window we give is small: ask
	 * for EPOLLOUT so that a window update follows as soon as the socket
	 * drains, or the guest would wait for its persist timer (200 ms and
	 * more), or forever with an MSS larger than the window. */
	if (low && !(flags & TCP_RST) && f->tcp.state == SL_TCP_ESTABLISHED &&
	    !(f->tcp.flags & SL_TF_NEED_WUPD)) {
		f->tcp.flags |= SL_TF_NEED_WUPD;
		update_events(e, f);
	}
	hl = sl_frame_headers(e, b, NULL, f->family, f->raddr, f->gaddr,
			      IPPROTO_TCP_, thl + len);
	t = b + hl;
	sl_emit_tcp(t, &th);
	sum = sl_csum_pseudo(f->family, f->raddr, f->gaddr, IPPROTO_TCP_,
			     (uint32_t)(thl + len));
	if (e->cfg.offload && e->cfg.vnet_hdr_len) {
		/* Partial checksum: the field holds the folded pseudo-header
		 * sum and the guest's stack finishes (or trusts) it. */
		csum = (uint16_t)~sl_csum_fold(sum);
		vh.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
		vh.csum_start = (uint16_t)hl;
		vh.csum_offset = SL_TCP_CSUM_OFF;
		if (gso) {
			vh.gso_type = f->family == 4 ? VIRTIO_NET_HDR_GSO_TCPV4 :
						       VIRTIO_NET_HDR_GSO_TCPV6;
			vh.gso_size = f->tcp.gmss;
			vh.hdr_len = (uint16_t)(hl + thl);
			sl_count(e, SL_C_gso_frames_out);
		}
	} else {
		sum = sl_csum_add(sum, t, thl);
		csum = sl_csum_fold(sl_csum_add(sum, data, len));
	}
	sl_put_csum(t + SL_TCP_CSUM_OFF, csum);
	f->tcp.ack_sent = f->tcp.rcv_nxt;
	f->tcp.wnd_sent = wbytes;
	iov[0].iov_base = b;
	iov[0].iov_len = hl + thl;
	iov[1].iov_base = (void *)data;
	iov[1].iov_len = len;
	sl_output(e, &vh, iov, len ? 2 : 1);
}

/* Send @len bytes at @seq as MSS-sized frames, or as one GSO frame.
 * @fin: the host's FIN follows these bytes; it rides on the last segment
 * (GSO segmentation in the guest keeps FIN and PSH for the last one). */
static void emit_data(struct sl_engine *e, struct sl_flow *f, uint32_t seq,
		      const uint8_t *data, size_t len, bool fin)
{
	uint8_t last = (uint8_t)(TCP_ACK | TCP_PSH | (fin ? TCP_FIN : 0));

	if (e->cfg.offload && e->cfg.vnet_hdr_len) {
		emit(e, f, last, seq, data, len, false);
		return;
	}
	while (len) {
		size_t n = len > f->tcp.gmss ? f->tcp.gmss : len;

		emit(e, f, n == len ? last : TCP_ACK, seq, data, n, false);
		seq += (uint32_t)n;
		data += n;
		len -= n;
	}
}

static void send_ack(struct sl_engine *e, struct sl_flow *f)
{
	if (f->tcp.state != SL_TCP_ESTABLISHED)
		return;
	emit(e, f, TCP_ACK, f->tcp.snd_nxt, NULL, 0, false);
}

/**
 * sl_tcp_flush_acks() - the delayed-ACK policy: send the ACKs queued by
 * mark_ack(), and the lazy ones (mark_delack()) that cannot wait any longer.
 *
 * A lazy ACK is dropped once a frame toward the guest has carried it, and
 * waits while less than two guest segments are unacknowledged, the guest
 * has used at most half of the window we gave (it may be waiting for
 * more), and the delay (DELACK_NS from the oldest) is not over. Waiting
 * ones stay in ack_list; every entry's ACK_DUE is cleared as it is seen so
 * that a slot listed twice (freed and reused) is handled once.
 */
void sl_tcp_flush_acks(struct sl_engine *e)
{
	bool late = e->tcp.delack_at && e->now >= e->tcp.delack_at;
	uint32_t i, keep = 0;

	for (i = 0; i < e->tcp.nack; i++) {
		struct sl_flow *f = &e->flows.pool[e->tcp.ack_list[i]];
		uint32_t unacked;

		if (f->kind != SL_FLOW_TCP || !(f->tcp.flags & SL_TF_ACK_DUE))
			continue;
		f->tcp.flags &= (uint16_t)~SL_TF_ACK_DUE;
		if (f->tcp.flags & SL_TF_ACK_LAZY) {
			unacked = f->tcp.rcv_nxt - f->tcp.ack_sent;
			if (!unacked) {		/* piggybacked on data */
				f->tcp.flags &= (uint16_t)~SL_TF_ACK_LAZY;
				continue;
			}
			if (!late && unacked < 2u * f->tcp.gmss &&
			    unacked <= f->tcp.wnd_sent / 2) {
				e->tcp.ack_list[keep++] = f->self;
				continue;
			}
			f->tcp.flags &= (uint16_t)~SL_TF_ACK_LAZY;
		}
		send_ack(e, f);
	}
	for (i = 0; i < keep; i++)
		e->flows.pool[e->tcp.ack_list[i]].tcp.flags |= SL_TF_ACK_DUE;
	e->tcp.nack = keep;
	if (!keep)
		e->tcp.delack_at = 0;
	else if (!e->tcp.delack_at || late)
		e->tcp.delack_at = e->now + DELACK_NS;
}

/* When the delayed ACKs waiting must leave at the latest; 0: none wait. */
uint64_t sl_tcp_ack_deadline(const struct sl_engine *e)
{
	return e->tcp.delack_at;
}

/*
 * Established sockets are edge-triggered. Data we peeked stays queued in the
 * socket until the guest acknowledges it, so a level-triggered EPOLLIN would
 * fire on every poll while anything is in flight (a busy loop). With EPOLLET
 * a wake-up means new data (or an error) arrived; data_to_guest() always
 * reads up to EAGAIN or to the guest's window, and a guest ACK that opens
 * the window calls it again, so no edge is ever needed twice.
 */
static void update_events(struct sl_engine *e, struct sl_flow *f)
{
	uint32_t ev = 0;

	if (f->tcp.state == SL_TCP_CONNECTING) {
		ev = EPOLLOUT;
	} else if (f->tcp.state == SL_TCP_ESTABLISHED) {
		ev = EPOLLIN | EPOLLRDHUP | EPOLLET;
		if (f->tcp.flags & SL_TF_NEED_WUPD)
			ev |= EPOLLOUT;
	}
	if (sl_epoll_set(e, f, ev) < 0)
		sl_count(e, SL_C_drop_socket_error);
}

/*
 * Teardown waits for the end of the poll. A guest that closes a connection
 * and opens the next one (connection churn) queues its FIN and the new SYN
 * back to back: shutdown() and close() of the old host socket cost more
 * than the new connect(), and nobody is waiting for them, so the SYN-ACK
 * should not wait behind them. Later in the same poll they change nothing
 * for the host peer; a stale epoll event of a socket closed late carries
 * the freed flow's old tag and is ignored.
 */

/* The guest's FIN: shut the host socket for writing at the end of the poll. */
static void shutdown_later(struct sl_engine *e, struct sl_flow *f)
{
	if (e->tcp.n_shut_due == SL_TCP_DEFER_MAX) {
		shutdown(f->fd, SHUT_WR);
		return;
	}
	e->tcp.shut_due[e->tcp.n_shut_due++] = sl_flow_tag(f);
}

/* A finished flow's socket: close it at the end of the poll. */
static void close_later(struct sl_engine *e, struct sl_flow *f)
{
	if (f->fd < 0 || e->tcp.n_close_due == SL_TCP_DEFER_MAX)
		return;		/* sl_flow_free() closes it now */
	e->tcp.close_due[e->tcp.n_close_due++] = f->fd;
	f->evflags |= SL_FE_CLOSE_LATER;	/* sl_flow_free() leaves it */
}

static void close_flow(struct sl_engine *e, struct sl_flow *f, bool rst_host)
{
	/* An ACK still owed (e.g. for the guest's last FIN) leaves now. */
	if (!rst_host && (f->tcp.flags & SL_TF_ACK_DUE))
		send_ack(e, f);
	if (rst_host && f->fd >= 0) {
		struct linger lg = { .l_onoff = 1, .l_linger = 0 };

		setsockopt(f->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	if (!rst_host)
		close_later(e, f);
	if (f->tcp.state != SL_TCP_ESTABLISHED && e->flows.n_half_open)
		e->flows.n_half_open--;
	sl_count(e, SL_C_tcp_flows_closed);
	sl_flow_free(e, f);
}

static void reset_guest(struct sl_engine *e, struct sl_flow *f)
{
	sl_count(e, SL_C_tcp_rst_sent);
	emit(e, f, TCP_RST | TCP_ACK, f->tcp.snd_nxt, NULL, 0, false);
}

/**
 * sl_tcp_abort() - end flow @f now, from outside the data path (a new
 * egress policy denies it, policy.c): RST to the guest, the host socket
 * reset (SO_LINGER 0), the flow freed with reason @why.
 */
void sl_tcp_abort(struct sl_engine *e, struct sl_flow *f, uint8_t why)
{
	/* Still connecting, the RST's ACK of the guest's SYN is what makes
	 * it acceptable; its sequence number does not matter then. */
	reset_guest(e, f);
	f->why = why;
	close_flow(e, f, true);
}

/* The SYN (if still unacked) and a sent FIN occupy sequence numbers but
 * not socket bytes; this is the count of data bytes in flight. */
static uint32_t data_in_flight(const struct sl_flow *f)
{
	uint32_t n = f->tcp.snd_nxt - f->tcp.snd_una;

	if (f->tcp.snd_una == f->tcp.isn && n)
		n--;
	if ((f->tcp.flags & SL_TF_FIN_SENT) && n)
		n--;
	return n;
}

/**
 * peek() - read host data after what is in flight, leaving it queued.
 * Return: bytes (0 at EOF), or -1 with errno set (EAGAIN: nothing new).
 */
static ssize_t peek(struct sl_flow *f, uint8_t *buf, size_t want,
		    uint32_t in_flight)
{
	ssize_t n;

	if (f->tcp.flags & SL_TF_PEEK_OFF)
		return recv(f->fd, buf, want, MSG_PEEK | MSG_DONTWAIT);
	/* No SO_PEEK_OFF: peek from the start and skip what is in flight.
	 * This caps the data in flight at PEEK_MAX, and EOF shows only once
	 * everything is acknowledged: fine for a fallback. */
	if (in_flight + want > PEEK_MAX)
		want = in_flight < PEEK_MAX ? PEEK_MAX - in_flight : 0;
	if (!want) {
		errno = EAGAIN;
		return -1;
	}
	n = recv(f->fd, buf, in_flight + want, MSG_PEEK | MSG_DONTWAIT);
	if (n <= 0)
		return n;
	if ((size_t)n <= in_flight) {
		errno = EAGAIN;
		return -1;
	}
	memmove(buf, buf + in_flight, (size_t)n - in_flight);
	return n - (ssize_t)in_flight;
}

static void advance_snd(struct sl_flow *f, uint32_t n)
{
	f->tcp.snd_nxt += n;
	if (SEQ_GT(f->tcp.snd_nxt, f->tcp.snd_max))
		f->tcp.snd_max = f->tcp.snd_nxt;
}

static void send_fin(struct sl_engine *e, struct sl_flow *f)
{
	emit(e, f, TCP_FIN | TCP_ACK, f->tcp.snd_nxt, NULL, 0, false);
	advance_snd(f, 1);
	f->tcp.flags |= SL_TF_FIN_SENT;
	if (!f->tcp.rto_at)
		arm_rto(e, f);
}

/* Does the socket hold data the guest has not seen yet? Asked only when
 * its window is closed, to decide whether to probe it. */
static bool data_pending(const struct sl_flow *f)
{
	int inq = 0;

	if (f->tcp.flags & SL_TF_HOST_EOF)
		return f->tcp.snd_nxt != f->tcp.fin_seq + 1;
	return ioctl(f->fd, SIOCINQ, &inq) == 0 &&
	       (uint32_t)inq > data_in_flight(f);
}

/**
 * data_to_guest() - move host data to the guest while its window allows.
 * Return: false when the flow was closed.
 */
static bool data_to_guest(struct sl_engine *e, struct sl_flow *f)
{
	uint8_t *buf = e->tcp.peekbuf;
	size_t chunk = PEEK_MAX;

	if (f->tcp.state != SL_TCP_ESTABLISHED ||
	    f->tcp.snd_una == f->tcp.isn)	/* SYN not yet acked */
		return true;
	if (e->cfg.offload && e->cfg.vnet_hdr_len) {
		/* One GSO frame per read, of whole segments. An MSS above
		 * 32 KiB (MTU 65520) fits once: the rounding gives 0, and a
		 * 0-byte peek would look like the host's EOF. */
		chunk = (PEEK_MAX - 120) / f->tcp.gmss * f->tcp.gmss;
		if (!chunk)
			chunk = f->tcp.gmss;
	}
	f->tcp.flags &= (uint16_t)~SL_TF_WND_FULL;
	while (!(f->tcp.flags & SL_TF_FIN_SENT)) {
		uint32_t inflight = f->tcp.snd_nxt - f->tcp.snd_una;
		uint32_t wnd = f->tcp.gwnd > inflight ? f->tcp.gwnd - inflight :
							0;
		bool fresh = f->tcp.snd_nxt == f->tcp.snd_max, last;
		size_t want;
		ssize_t n;

		/* After EOF the stream ends at fin_seq: a rewind re-sends up
		 * to there, then the FIN again. */
		if ((f->tcp.flags & SL_TF_HOST_EOF) &&
		    f->tcp.snd_nxt == f->tcp.fin_seq)
			break;
		if (!wnd) {
			f->tcp.flags |= SL_TF_WND_FULL;
			/* Persist timer: probe a closed window while we have
			 * something to say, in case its update gets lost. */
			if (!f->tcp.rto_at && data_pending(f))
				arm_rto(e, f);
			break;
		}
		want = wnd < chunk ? wnd : chunk;
		n = peek(f, buf, want, data_in_flight(f));
		if (n < 0) {
			/* With SO_PEEK_OFF, EAGAIN means every byte in the
			 * socket has been sent: until the next EPOLLIN edge
			 * a guest ACK has nothing to pull (the fallback's
			 * EAGAIN can also mean "PEEK_MAX reached"). */
			if (errno == EAGAIN && (f->tcp.flags & SL_TF_PEEK_OFF))
				f->tcp.flags |= SL_TF_HOST_DRY;
			if (errno == EAGAIN || errno == EINTR)
				break;
			f->why = SL_FC_HOST_RST;
			reset_guest(e, f);
			close_flow(e, f, false);
			return false;
		}
		if (n == 0) {
			if (!(f->tcp.flags & SL_TF_HOST_EOF)) {
				f->tcp.flags |= SL_TF_HOST_EOF;
				f->tcp.fin_seq = f->tcp.snd_nxt;
			}
			break;
		}
		/* The host shut down before this peek (RDHUP came with the
		 * wake-up) and the peek came back short: these are the last
		 * bytes, so the FIN can go with them instead of after the
		 * guest's next ACK. Not in the fallback: its peeks are
		 * capped and short for that reason too. */
		last = (size_t)n < want &&
		       (f->tcp.flags & SL_TF_HOST_RDHUP) &&
		       (f->tcp.flags & SL_TF_PEEK_OFF) &&
		       !(f->tcp.flags & SL_TF_HOST_EOF);
		emit_data(e, f, f->tcp.snd_nxt, buf, (size_t)n, last);
		if (fresh) {
			rtt_start(e, f, f->tcp.snd_nxt + (uint32_t)n);
			e->ctr[SL_C_tcp_bytes_to_guest] += (uint64_t)n;
		}
		advance_snd(f, (uint32_t)n);
		if (last) {
			f->tcp.flags |= SL_TF_HOST_EOF | SL_TF_FIN_SENT;
			f->tcp.fin_seq = f->tcp.snd_nxt;
			advance_snd(f, 1);
		}
		if (!f->tcp.rto_at)
			arm_rto(e, f);
		if ((size_t)n < want) {
			/* A short peek emptied the receive queue: new data
			 * comes with a new EPOLLIN edge, so the next guest
			 * ACK need not peek (that would be an EAGAIN per
			 * request/response). Not when the peer has shut down:
			 * its FIN may already be queued behind this data, and
			 * no edge would come to make us read the EOF. */
			if ((f->tcp.flags & SL_TF_PEEK_OFF) &&
			    !(f->tcp.flags & SL_TF_HOST_RDHUP))
				f->tcp.flags |= SL_TF_HOST_DRY;
			break;
		}
	}
	if ((f->tcp.flags & SL_TF_HOST_EOF) &&
	    !(f->tcp.flags & SL_TF_FIN_SENT) &&
	    f->tcp.snd_nxt == f->tcp.fin_seq)
		send_fin(e, f);
	update_events(e, f);	/* no syscall unless the mask changes */
	return true;
}

/**
 * rewind_send() - go back to the oldest unacknowledged byte and send again
 * (go-back-N): the kernel still has the data, nothing was copied.
 * Return: false when the flow was closed.
 */
static bool rewind_send(struct sl_engine *e, struct sl_flow *f)
{
	int zero = 0;

	sl_count(e, SL_C_tcp_retransmits);
	f->tcp.flags &= (uint16_t)~SL_TF_TIMING;	/* Karn */
	if (f->tcp.snd_una == f->tcp.isn) {	/* our SYN or SYN-ACK */
		f->tcp.snd_nxt = f->tcp.isn + 1;
		emit(e, f, (uint8_t)(TCP_SYN | (f->tcp.state ==
				      SL_TCP_SYN_TO_GUEST ? 0 : TCP_ACK)),
		     f->tcp.isn, NULL, 0, true);
		return true;
	}
	f->tcp.recover = f->tcp.snd_max;
	f->tcp.snd_nxt = f->tcp.snd_una;
	f->tcp.flags &= (uint16_t)~SL_TF_HOST_DRY;	/* re-sent bytes to peek */
	if (!(f->tcp.flags & SL_TF_FIN_ACKED))
		f->tcp.flags &= (uint16_t)~SL_TF_FIN_SENT;
	if (f->tcp.flags & SL_TF_PEEK_OFF)
		setsockopt(f->fd, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof(zero));
	if (!data_to_guest(e, f))
		return false;
	if (f->tcp.snd_nxt == f->tcp.snd_una && f->tcp.gwnd == 0 &&
	    !(f->tcp.flags & SL_TF_FIN_ACKED))
		/* Zero window: a probe makes the guest tell us when it opens,
		 * in case its window update was lost. */
		emit(e, f, TCP_ACK, f->tcp.snd_una - 1, NULL, 0, false);
	return true;
}

/* Drop acknowledged bytes from the host socket. On every ACK: leaving them
 * queued to drop several ACKs' worth in one recv() was tried twice and
 * stalled transfers both times: the queued bytes can close the socket's
 * receive window, and a guest with nothing left to acknowledge sends no
 * ACK that would drop them (docs/benchmarks.md, engine finding 3). */
static bool consume(struct sl_engine *e, struct sl_flow *f, uint32_t bytes)
{
	while (bytes) {
		ssize_t n = recv(f->fd, NULL, bytes, MSG_TRUNC | MSG_DONTWAIT);

		if (n <= 0) {
			f->why = SL_FC_HOST_RST;
			reset_guest(e, f);
			close_flow(e, f, true);
			return false;
		}
		bytes -= (uint32_t)n;
	}
	return true;
}

/**
 * handle_ack() - process the guest's ACK field and window.
 * @later: bytes acknowledged but left in the socket for the caller to
 *	consume once the segment's payload is on its way to the host: the
 *	request a guest sends usually carries the ACK of the last answer,
 *	and the host should not wait for a syscall that only frees memory.
 *	Only with SO_PEEK_OFF, whose offset is relative to what is queued;
 *	without it a peek assumes the queue starts at snd_una.
 * Return: false when the flow was closed.
 */
static bool handle_ack(struct sl_engine *e, struct sl_flow *f,
		       const struct sl_pkt *p, uint32_t *later)
{
	uint32_t ack = p->ack, old_wnd = f->tcp.gwnd;

	f->tcp.gwnd = (uint32_t)p->win << f->tcp.gws;
	if (SEQ_GT(ack, f->tcp.snd_max)) {
		mark_ack(e, f);	/* acks what we never sent */
		return true;
	}
	if (SEQ_GT(ack, f->tcp.snd_una)) {
		/* Data bytes acknowledged: the SYN and the FIN take a
		 * sequence number each but no byte in the socket. */
		uint32_t from = f->tcp.snd_una, to = ack, acked;

		if (from == f->tcp.isn)
			from++;
		if ((f->tcp.flags & SL_TF_HOST_EOF) &&
		    ack == f->tcp.fin_seq + 1) {
			to = f->tcp.fin_seq;
			f->tcp.flags |= SL_TF_FIN_ACKED | SL_TF_FIN_SENT;
		}
		acked = SEQ_GT(to, from) ? to - from : 0;
		f->tcp.snd_una = ack;
		/* After a rewind the guest may ack past what we re-sent. */
		if (SEQ_GT(ack, f->tcp.snd_nxt))
			f->tcp.snd_nxt = ack;
		if ((f->tcp.flags & SL_TF_TIMING) &&
		    !SEQ_LT(ack, f->tcp.rtt_seq))
			rtt_sample(e, f);
		if (f->tcp.flags & SL_TF_PEEK_OFF)
			*later = acked;
		else if (acked && !consume(e, f, acked))
			return false;
		f->tcp.dupacks = 0;
		f->tcp.retries = 0;
		f->tcp.rto_ms = rto_base(f);
		f->tcp.rto_at = 0;
		if (f->tcp.snd_max != f->tcp.snd_una)
			arm_rto(e, f);
	} else if (ack == f->tcp.snd_una && !p->payload_len &&
		   f->tcp.gwnd == old_wnd && f->tcp.snd_max != f->tcp.snd_una &&
		   !(p->tflags & (TCP_SYN | TCP_FIN))) {
		/* Fast retransmit, once per window (NewReno's recover). */
		if (++f->tcp.dupacks == 3 &&
		    SEQ_GT(f->tcp.snd_una, f->tcp.recover) &&
		    !rewind_send(e, f))
			return false;
	} else if (f->tcp.snd_max == f->tcp.snd_una) {
		f->tcp.retries = 0;	/* it answers our window probes */
	}
	/* Most guest segments carry an ACK: skip the peek (a syscall) when
	 * the socket had nothing new last time and no EPOLLIN came since. */
	if (f->tcp.flags & SL_TF_HOST_DRY)
		return true;
	return data_to_guest(e, f);
}

/**
 * data_from_guest() - write an in-order payload to the host socket.
 * Return: false when the flow was closed.
 */
static bool data_from_guest(struct sl_engine *e, struct sl_flow *f,
			    const struct sl_pkt *p)
{
	const uint8_t *data = p->payload;
	size_t len = p->payload_len;
	uint32_t seq = p->seq;
	bool fin = p->tflags & TCP_FIN;
	ssize_t n = 0;

	if (!len && !fin) {
		/* A pure ACK needs no answer, or the guest would count ours as
		 * duplicate ACKs. One off our sequence (a window or keepalive
		 * probe, or a sign that we lost data) gets the ACK it wants. */
		if (seq != f->tcp.rcv_nxt)
			mark_ack(e, f);
		return true;
	}
	if (SEQ_LT(seq, f->tcp.rcv_nxt)) {	/* trim what we already have */
		uint32_t old = f->tcp.rcv_nxt - seq;

		if (old >= len + (fin ? 1 : 0)) {
			mark_ack(e, f);	/* a retransmission: re-ack */
			return true;
		}
		if (old > len)
			old = (uint32_t)len;
		data += old;
		len -= old;
		seq += old;
	}
	if (seq != f->tcp.rcv_nxt) {
		/* A hole before it: not kept; the duplicate ACK asks again. */
		sl_count(e, SL_C_drop_tcp_out_of_window);
		mark_ack(e, f);
		return true;
	}
	if (f->tcp.flags & SL_TF_GUEST_FIN) {
		mark_ack(e, f);
		return true;
	}
	if (len) {
		n = send(f->fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n < 0) {
			if (errno != EAGAIN && errno != EINTR) {
				f->why = SL_FC_HOST_RST;
				reset_guest(e, f);
				close_flow(e, f, true);
				return false;
			}
			n = 0;
		}
		f->tcp.rcv_nxt += (uint32_t)n;
		e->ctr[SL_C_tcp_bytes_to_host] += (uint64_t)n;
		if ((size_t)n < len)
			f->tcp.flags &= (uint16_t)~SL_TF_SPACE_OK;
		if ((size_t)n < len && !(f->tcp.flags & SL_TF_NEED_WUPD)) {
			f->tcp.flags |= SL_TF_NEED_WUPD;
			update_events(e, f);
		}
	}
	if (fin && (size_t)n == len) {
		f->tcp.rcv_nxt++;
		f->tcp.flags |= SL_TF_GUEST_FIN;
		shutdown_later(e, f);
	}
	/* All of it taken: the ACK may wait for the host's answer to carry it
	 * (sl_tcp_flush_acks() bounds the wait). Anything short of that is
	 * a window the guest waits on: it leaves at the end of the batch. */
	if ((size_t)n == len && !(f->tcp.flags & SL_TF_NEED_WUPD))
		mark_delack(e, f);
	else
		mark_ack(e, f);
	return true;
}

static void send_rst_reply(struct sl_engine *e, const struct sl_pkt *p)
{
	struct sl_flow tmp;

	/* RFC 793 reset generation for a segment with no connection. */
	memset(&tmp, 0, sizeof(tmp));
	tmp.family = p->family;
	memcpy(tmp.gaddr, p->src, 16);
	memcpy(tmp.raddr, p->dst, 16);
	tmp.gport = p->sport;
	tmp.rport = p->dport;
	tmp.fd = -1;
	tmp.tcp.gmss = 536;
	tmp.tcp.state = SL_TCP_ESTABLISHED;
	sl_count(e, SL_C_tcp_rst_sent);
	if (p->tflags & TCP_ACK) {
		emit(e, &tmp, TCP_RST, p->ack, NULL, 0, false);
	} else {
		tmp.tcp.rcv_nxt = p->seq + (uint32_t)p->payload_len +
				  ((p->tflags & TCP_SYN) ? 1 : 0) +
				  ((p->tflags & TCP_FIN) ? 1 : 0);
		emit(e, &tmp, TCP_RST | TCP_ACK, 0, NULL, 0, false);
	}
}

static void rst_for(struct sl_engine *e, const struct sl_pkt *p)
{
	if (!(p->tflags & TCP_RST))
		send_rst_reply(e, p);
}

/* Options of a host socket for a guest's connection, set before
 * connect(). Return: whether SO_PEEK_OFF took. */
static bool tune_socket(int fd)
{
	int one = 1, zero = 0;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	return !setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof(zero));
}

static int new_host_socket(int fam, bool *peek_off)
{
	int fd = socket(fam, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd >= 0)
		*peek_off = tune_socket(fd);
	return fd;
}

/**
 * host_socket() - a tuned socket for a guest's SYN: the spare that
 * sl_tcp_end_of_poll() made after the last one, or a new one.
 * @peek_off: set to whether SO_PEEK_OFF works on it
 *
 * Return: the fd, or -1 with errno set.
 */
static int host_socket(struct sl_engine *e, int fam, bool *peek_off)
{
	int i = fam == AF_INET6, fd = e->tcp.spare[i];

	e->tcp.spare_wanted[i] = true;
	if (fd < 0)
		return new_host_socket(fam, peek_off);
	e->tcp.spare[i] = -1;
	*peek_off = e->tcp.spare_peek_off[i];
	return fd;
}

/* The shutdowns and closes deferred by shutdown_later() and close_later(). */
static void run_deferred(struct sl_engine *e)
{
	uint32_t k;

	for (k = 0; k < e->tcp.n_shut_due; k++) {
		struct sl_flow *f = sl_flow_from_tag(e, e->tcp.shut_due[k]);

		/* A flow closed since then had its FIN sent by close(). */
		if (f && f->fd >= 0)
			shutdown(f->fd, SHUT_WR);
	}
	e->tcp.n_shut_due = 0;
	for (k = 0; k < e->tcp.n_close_due; k++)
		close(e->tcp.close_due[k]);
	e->tcp.n_close_due = 0;
}

/**
 * sl_tcp_end_of_poll() - the work no frame of this poll waits for: the
 * deferred shutdowns and closes, then the spare sockets.
 *
 * The spares (one per family that has had an outbound connection, inside
 * the fd reserve of clamp_to_fd_limit()) take socket() and three
 * setsockopt() off the path between a guest's SYN and our SYN-ACK.
 */
void sl_tcp_end_of_poll(struct sl_engine *e)
{
	int i;

	run_deferred(e);
	for (i = 0; i < 2; i++)
		if (e->tcp.spare_wanted[i] && e->tcp.spare[i] < 0)
			e->tcp.spare[i] = new_host_socket(i ? AF_INET6 : AF_INET,
							  &e->tcp.spare_peek_off[i]);
}

/**
 * sl_tcp_init() - TCP's engine state, after sl_flow_init(): no spare
 * sockets yet, the list of flows owing an ACK (as long as the pool) and
 * the peek buffer.
 * Return: 0, or -1 when out of memory.
 */
int sl_tcp_init(struct sl_engine *e)
{
	e->tcp.spare[0] = e->tcp.spare[1] = -1;
	e->tcp.ack_list = calloc(e->flows.n_max, sizeof(*e->tcp.ack_list));
	e->tcp.peekbuf = malloc(SL_FRAME_MAX);
	return e->tcp.ack_list && e->tcp.peekbuf ? 0 : -1;
}

/* Before sl_flow_fini(), while deferred tags still name live flows: the
 * deferred work, then the spares. Nothing to do if sl_tcp_init() never
 * allocated (an engine that failed to start). */
void sl_tcp_fini(struct sl_engine *e)
{
	int i;

	free(e->tcp.peekbuf);
	e->tcp.peekbuf = NULL;
	if (!e->tcp.ack_list)
		return;
	run_deferred(e);
	for (i = 0; i < 2; i++)
		if (e->tcp.spare[i] >= 0)
			close(e->tcp.spare[i]);
	free(e->tcp.ack_list);
	e->tcp.ack_list = NULL;
}

/**
 * sl_tcp_bytes() - the data bytes a TCP flow carried each way, from its host
 * socket.
 *
 * The kernel keeps 64-bit counts per socket, so asking once at close costs
 * one getsockopt() per flow and nothing per packet. Its counts are of
 * sequence space: bytes_acked includes our SYN (active or passive, the peer
 * acknowledged one) and the FIN we forwarded for the guest once acked;
 * bytes_received includes the peer's FIN. Those are taken off here. When a
 * reset races a FIN the count can be one byte high.
 *
 * Return: true when @info->bytes_* were filled.
 */
bool sl_tcp_bytes(const struct sl_flow *f, struct sl_flow_info *info)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	uint64_t acked, rcvd;
	bool peer_fin;

	if (f->fd < 0)
		return false;
	memset(&ti, 0, sizeof(ti));
	if (getsockopt(f->fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0 ||
	    len < offsetof(struct tcp_info, tcpi_notsent_bytes) +
			  sizeof(ti.tcpi_notsent_bytes))
		return false;
	acked = ti.tcpi_bytes_acked;
	rcvd = ti.tcpi_bytes_received;
	if (acked)
		acked--;	/* the SYN */
	if (acked && (f->tcp.flags & SL_TF_GUEST_FIN) && !ti.tcpi_unacked &&
	    !ti.tcpi_notsent_bytes)
		acked--;	/* our FIN, sent and acknowledged */
	peer_fin = (f->tcp.flags & SL_TF_HOST_EOF) ||
		   ti.tcpi_state == SL_TCPS_CLOSE_WAIT ||
		   ti.tcpi_state == SL_TCPS_LAST_ACK ||
		   ti.tcpi_state == SL_TCPS_CLOSING ||
		   ti.tcpi_state == SL_TCPS_TIME_WAIT;
	if (rcvd && peer_fin)
		rcvd--;
	info->bytes_to_host = acked;
	info->bytes_to_guest = rcvd;
	return true;
}

static void connected(struct sl_engine *e, struct sl_flow *f)
{
	bool low;

	f->tcp.state = SL_TCP_ESTABLISHED;
	if (e->flows.n_half_open)
		e->flows.n_half_open--;
	f->tcp.snd_una = f->tcp.isn;
	f->tcp.snd_nxt = f->tcp.snd_max = f->tcp.isn + 1;
	emit(e, f, TCP_SYN | TCP_ACK, f->tcp.isn, NULL, 0, true);
	/* Measure the send space now, while the guest handles the SYN-ACK,
	 * rather than when the host's first answer is on its way. */
	(void)free_send_space(f, &low);
	rtt_start(e, f, f->tcp.isn + 1);
	arm_rto(e, f);
	/* Nothing was peeked yet: data already queued shows when EPOLLIN is
	 * asked for below (epoll checks at once), later data with an edge, so
	 * the guest's ACK of the SYN-ACK need not peek for it. */
	if (f->tcp.flags & SL_TF_PEEK_OFF)
		f->tcp.flags |= SL_TF_HOST_DRY;
	update_events(e, f);
}

static void connect_failed(struct sl_engine *e, struct sl_flow *f, int err)
{
	if (err == ECONNREFUSED || err == ECONNRESET || err == EPERM ||
	    err == EACCES) {
		sl_count(e, SL_C_tcp_connect_refused);
		f->tcp.state = SL_TCP_ESTABLISHED;	/* so emit() works */
		emit(e, f, TCP_RST | TCP_ACK, 0, NULL, 0, false);
		sl_count(e, SL_C_tcp_rst_sent);
		f->tcp.state = SL_TCP_CONNECTING;
	} else {
		/* Quote the guest's SYN so its stack matches the error. */
		sl_icmp_send_flow_error(e, f, f->tcp.rcv_nxt - 1,
					err == ENETUNREACH ? SL_UNREACH_NET :
							     SL_UNREACH_HOST);
	}
	f->why = err == ETIMEDOUT ? SL_FC_TIMEOUT : SL_FC_REFUSED;
	close_flow(e, f, false);
}

static uint32_t new_isn(struct sl_engine *e)
{
	/* Not a security boundary (the guest sees only its own flows), but
	 * avoid predictable reuse across flows on the same 4-tuple. */
	e->tcp.isn_state = e->tcp.isn_state * 6364136223846793005ULL +
			  1442695040888963407ULL + e->now;
	return (uint32_t)(e->tcp.isn_state >> 32);
}

static void syn_from_guest(struct sl_engine *e, const struct sl_pkt *p)
{
	struct sockaddr_in6 sa;
	uint32_t salen;
	struct sl_flow *f;
	int r, fam;
	bool lo, peek_off = false;

	if (p->tflags & (TCP_ACK | TCP_RST | TCP_FIN)) {
		rst_for(e, p);
		return;
	}
	if (e->flows.n_half_open >= e->cfg.max_half_open) {
		sl_count(e, SL_C_drop_half_open_cap);
		return;
	}
	r = sl_remote_sockaddr(e, p->family, p->dst, p->dport, IPPROTO_TCP_,
			       &sa, &salen);
	if (sl_policy_denies(e, p, r, &sa)) {
		send_rst_reply(e, p);	/* the guest sees ECONNREFUSED */
		return;
	}
	if (r == -ENETUNREACH) {
		sl_icmp_send_error(e, p, SL_UNREACH_NET);
		return;
	}
	if (r < 0) {
		if (r == -ECONNREFUSED)
			send_rst_reply(e, p);
		else
			sl_count(e, SL_C_drop_dst_invalid);
		return;
	}
	f = sl_flow_new(e, SL_FLOW_TCP, p->family, p->src, p->sport, p->dst,
			p->dport);
	if (!f)
		return;
	e->flows.n_half_open++;
	f->tcp.state = SL_TCP_CONNECTING;
	f->tcp.rcv_nxt = p->seq + 1;
	f->tcp.isn = new_isn(e);
	f->tcp.recover = f->tcp.isn;
	f->tcp.gmss = p->opt_mss ? p->opt_mss : (p->family == 4 ? 536 : 1220);
	if (f->tcp.gmss > mss_cap(e, p->family))
		f->tcp.gmss = mss_cap(e, p->family);
	if (f->tcp.gmss < 64)
		f->tcp.gmss = 64;
	if (p->opt_wscale >= 0) {
		f->tcp.flags |= SL_TF_WS_OK;
		f->tcp.gws = (uint8_t)p->opt_wscale;
	}
	f->tcp.gwnd = p->win;	/* never scaled in a SYN */
	fam = ((struct sockaddr *)&sa)->sa_family;
	lo = (fam == AF_INET && ((struct sockaddr_in *)&sa)->sin_addr.s_addr ==
				htonl(0x7f000001)) ||
	     (fam == AF_INET6 && !sa.sin6_addr.s6_addr[0] &&
	      sa.sin6_addr.s6_addr[15] == 1);
	f->fd = host_socket(e, fam, &peek_off);
	if (peek_off)
		f->tcp.flags |= SL_TF_PEEK_OFF;
	if (f->fd < 0 ||
	    (!lo && sl_bind_outbound(e, f->fd, fam) < 0)) {
		sl_count(e, SL_C_drop_socket_error);
		connect_failed(e, f, errno == EMFILE ? EHOSTUNREACH : errno);
		return;
	}
	sl_count(e, SL_C_tcp_flows_opened);
	sl_flow_opened(e, f, false);
	if (connect(f->fd, (struct sockaddr *)&sa, salen) == 0) {
		connected(e, f);
		return;
	}
	if (errno != EINPROGRESS) {
		connect_failed(e, f, errno);
		return;
	}
	/* With a peer on this machine (loopback, or another namespace
	 * through a veth: the Podman bed's test host, a service on the host's
	 * own address) the handshake has usually completed by the time
	 * connect() returns: the SYN and the SYN-ACK run in softirq on the way
	 * out, and the SYN-ACK is processed when the socket lock is released.
	 * Asking again costs one syscall (EALREADY for a remote peer, whose
	 * SYN-ACK is a round trip away) and saves a wake-up, an epoll_ctl and
	 * SO_ERROR: 0 when established, EALREADY while in progress, else the
	 * error. Which destinations are local is the routing table's business,
	 * so every one is asked. */
	if (connect(f->fd, (struct sockaddr *)&sa, salen) == 0 || errno == EISCONN) {
		connected(e, f);
		return;
	}
	if (errno != EALREADY && errno != EINPROGRESS && errno != EINTR) {
		connect_failed(e, f, errno);
		return;
	}
	update_events(e, f);
}

/* The guest answered the SYN of an inbound (forwarded) connection. */
static void synack_from_guest(struct sl_engine *e, struct sl_flow *f,
			      const struct sl_pkt *p)
{
	if (p->tflags & TCP_RST) {
		f->why = SL_FC_RST;
		close_flow(e, f, true);
		return;
	}
	if ((p->tflags & (TCP_SYN | TCP_ACK)) != (TCP_SYN | TCP_ACK) ||
	    p->ack != f->tcp.isn + 1)
		return;
	f->tcp.state = SL_TCP_ESTABLISHED;
	if (e->flows.n_half_open)
		e->flows.n_half_open--;
	f->tcp.rcv_nxt = p->seq + 1;
	f->tcp.snd_una = f->tcp.snd_nxt = f->tcp.snd_max = f->tcp.isn + 1;
	f->tcp.gmss = p->opt_mss ? p->opt_mss : (f->family == 4 ? 536 : 1220);
	if (f->tcp.gmss > mss_cap(e, f->family))
		f->tcp.gmss = mss_cap(e, f->family);
	if (f->tcp.gmss < 64)
		f->tcp.gmss = 64;
	if (p->opt_wscale >= 0) {
		f->tcp.flags |= SL_TF_WS_OK;
		f->tcp.gws = (uint8_t)p->opt_wscale;
	}
	f->tcp.gwnd = p->win;
	if (f->tcp.flags & SL_TF_TIMING)
		rtt_sample(e, f);
	f->tcp.rto_at = 0;
	f->tcp.rto_ms = rto_base(f);
	f->tcp.retries = 0;
	mark_ack(e, f);
	if (f->tcp.flags & SL_TF_PEEK_OFF)	/* as in connected() */
		f->tcp.flags |= SL_TF_HOST_DRY;
	update_events(e, f);
}

/**
 * sl_tcp_input() - a TCP segment from the guest.
 */
void sl_tcp_input(struct sl_engine *e, const struct sl_pkt *p)
{
	struct sl_flow *f;
	uint32_t acked = 0;

	f = sl_flow_lookup(e, SL_FLOW_TCP, p->family, p->src, p->sport, p->dst,
			   p->dport);
	if (!f) {
		if (p->tflags & TCP_SYN)
			syn_from_guest(e, p);
		else
			rst_for(e, p);
		return;
	}
	f->last_ns = e->now;
	switch (f->tcp.state) {
	case SL_TCP_CONNECTING:
		return;		/* a retransmitted SYN: still connecting */
	case SL_TCP_SYN_TO_GUEST:
		synack_from_guest(e, f, p);
		return;
	}
	if (p->tflags & TCP_RST) {
		f->why = SL_FC_RST;
		close_flow(e, f, true);
		return;
	}
	if (p->tflags & TCP_SYN) {
		if (f->tcp.snd_una == f->tcp.isn && p->seq + 1 == f->tcp.rcv_nxt)
			emit(e, f, TCP_SYN | TCP_ACK, f->tcp.isn, NULL, 0, true);
		else
			mark_ack(e, f);	/* challenge ACK */
		return;
	}
	if (!(p->tflags & TCP_ACK))
		return;
	if (!handle_ack(e, f, p, &acked))
		return;
	if (!data_from_guest(e, f, p))
		return;
	/* Before any close: unread bytes would turn the host's FIN into RST. */
	if (acked && !consume(e, f, acked))
		return;
	if ((f->tcp.flags & SL_TF_GUEST_FIN) &&
	    (f->tcp.flags & SL_TF_FIN_ACKED)) {
		f->why = SL_FC_FIN;
		close_flow(e, f, false);	/* sends the ACK of a last FIN */
	}
}

/**
 * sl_tcp_sock_event() - the host socket is readable, writable or failed.
 */
void sl_tcp_sock_event(struct sl_engine *e, struct sl_flow *f, uint32_t ev)
{
	if (f->tcp.state == SL_TCP_CONNECTING) {
		int err = 0;
		socklen_t sl = sizeof(err);

		if (getsockopt(f->fd, SOL_SOCKET, SO_ERROR, &err, &sl) < 0)
			err = errno;
		if (err)
			connect_failed(e, f, err);
		else if (ev & EPOLLOUT)
			connected(e, f);
		return;
	}
	if (f->tcp.state != SL_TCP_ESTABLISHED)
		return;
	f->last_ns = e->now;
	if (ev & EPOLLERR) {
		/* Reset by the host peer, or a socket error: pass it on. */
		f->why = SL_FC_HOST_RST;
		reset_guest(e, f);
		close_flow(e, f, false);
		return;
	}
	if (ev & EPOLLOUT && (f->tcp.flags & SL_TF_NEED_WUPD)) {
		f->tcp.flags &= (uint16_t)~(SL_TF_NEED_WUPD | SL_TF_SPACE_OK);
		update_events(e, f);
		mark_ack(e, f);	/* window update, measured afresh */
	}
	if (ev & (EPOLLRDHUP | EPOLLHUP))
		f->tcp.flags |= SL_TF_HOST_RDHUP;
	if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)) {
		f->tcp.flags &= (uint16_t)~SL_TF_HOST_DRY;
		data_to_guest(e, f);
	}
}

/* Open a flow toward the guest, with our SYN, for the host connection
 * @fd accepted from @sa on @l. */
static void inbound_to_guest(struct sl_engine *e, struct sl_listener *l,
			     int fd, const struct sockaddr_in6 *sa)
{
	uint8_t view[16] = { 0 };
	uint16_t cport;
	int fam = l->family, one = 1, zero = 0;
	struct sl_flow *f;

	/* Closing at once (rather than leaving it in the backlog) keeps the
	 * level-triggered listener from spinning; the client sees EOF.
	 * sl_flow_new counts its own failures. */
	if (e->flows.n_half_open >= e->cfg.max_half_open) {
		sl_count(e, SL_C_drop_half_open_cap);
		close(fd);
		return;
	}
	if (sl_guest_view_of(e, sa, &fam, view, &cport) < 0) {
		sl_count(e, SL_C_drop_dst_invalid);
		close(fd);
		return;
	}
	f = sl_flow_new(e, SL_FLOW_TCP, fam, l->gaddr, l->gport, view, cport);
	if (!f) {
		close(fd);
		return;
	}
	f->fd = fd;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (!setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof(zero)))
		f->tcp.flags |= SL_TF_PEEK_OFF;
	e->flows.n_half_open++;
	f->tcp.state = SL_TCP_SYN_TO_GUEST;
	f->tcp.isn = new_isn(e);
	f->tcp.recover = f->tcp.isn;
	f->tcp.snd_una = f->tcp.isn;
	f->tcp.snd_nxt = f->tcp.snd_max = f->tcp.isn + 1;
	f->tcp.gmss = mss_cap(e, fam);
	sl_count(e, SL_C_tcp_flows_opened);
	sl_count(e, SL_C_tcp_flows_inbound);
	sl_flow_opened(e, f, true);
	emit(e, f, TCP_SYN, f->tcp.isn, NULL, 0, true);
	rtt_start(e, f, f->tcp.isn + 1);
	arm_rto(e, f);
	update_events(e, f);
}

/**
 * sl_tcp_listener_event() - accept forwarded connections, each once, and
 * hand it to splice.c when the listener's mode says so (sl_splice_wants),
 * else open it toward the guest with our SYN.
 */
void sl_tcp_listener_event(struct sl_engine *e, struct sl_listener *l)
{
	int i;

	for (i = 0; i < 64; i++) {
		struct sockaddr_in6 sa;
		socklen_t salen = sizeof(sa);
		int fd;

		fd = accept4(l->fd, (struct sockaddr *)&sa, &salen,
			     SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			break;
		if (sl_splice_wants(l, &sa))
			sl_splice_take(e, l, fd);
		else
			inbound_to_guest(e, l, fd, &sa);
	}
}

/* Retransmission and expiry for one flow at e->now. */
static void tcp_timer(struct sl_engine *e, struct sl_flow *f)
{
	uint64_t idle = e->now - f->last_ns;

	if (f->tcp.state != SL_TCP_ESTABLISHED) {
		if (idle >= HALF_OPEN_TIMEOUT_S * NSEC_PER_SEC) {
			f->why = SL_FC_TIMEOUT;
			if (f->tcp.state == SL_TCP_CONNECTING)
				connect_failed(e, f, ETIMEDOUT);
			else
				close_flow(e, f, true);
			return;
		}
	} else if ((f->tcp.flags & SL_TF_GUEST_FIN) &&
		   (f->tcp.flags & SL_TF_HOST_EOF) &&
		   idle >= CLOSING_IDLE_S * NSEC_PER_SEC) {
		/* Both sides closed and the last ACK never came. A half-closed
		 * connection is legitimate for as long as it is used. */
		f->why = SL_FC_TIMEOUT;
		reset_guest(e, f);
		close_flow(e, f, true);
		return;
	} else if (idle >= (uint64_t)e->cfg.tcp_idle_s * NSEC_PER_SEC) {
		f->why = SL_FC_TIMEOUT;
		reset_guest(e, f);
		close_flow(e, f, true);
		return;
	}
	if (!f->tcp.rto_at || e->now < f->tcp.rto_at)
		return;
	if (++f->tcp.retries > RTO_MAX_RETRIES) {
		f->why = SL_FC_TIMEOUT;
		reset_guest(e, f);
		close_flow(e, f, true);
		return;
	}
	f->tcp.rto_ms = f->tcp.rto_ms * 2 > RTO_MAX_MS ? RTO_MAX_MS :
							 f->tcp.rto_ms * 2;
	f->tcp.rto_at = 0;
	if (!rewind_send(e, f))
		return;
	if (!f->tcp.rto_at && f->tcp.snd_max != f->tcp.snd_una)
		arm_rto(e, f);
}

/**
 * sl_tcp_timer() - retransmission and expiry for one flow at e->now.
 * Return: when the flow's timer is due next; 0 when it has none or the
 * flow was closed.
 */
uint64_t sl_tcp_timer(struct sl_engine *e, struct sl_flow *f)
{
	tcp_timer(e, f);
	return f->kind == SL_FLOW_TCP ? f->tcp.rto_at : 0;
}
