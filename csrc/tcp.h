/* SPDX-License-Identifier: MIT */
/*
 * tcp.h - TCP translation (tcp.c): the per-flow TCP state, TCP's engine
 * state, and what the rest of the engine may ask of it.
 *
 * Contract. tcp.c owns struct sl_tcp (the tcp member of every TCP flow) and
 * struct sl_tcp_state (e->tcp): no other file writes either; engine.c only
 * reads f->tcp.state to list flows. It owns the host sockets of TCP flows
 * (made, shut down and closed here) and is the only file that frees a TCP
 * flow (close_flow(), which also gives back the flow's half-open slot;
 * policy.c asks for it with sl_tcp_abort()).
 * It may call the flow table (flow.h), the address map (addr.h), the ICMP
 * error builder (icmp.h), the emitters (wire.h, ip.c) and sl_output(); it
 * must not write to the TAP itself, must not allocate per packet or per
 * connection (the peek buffer and the ACK list are made once, in
 * sl_tcp_init()), and keeps no copy of the data it relays: the host
 * socket's queues are the only buffers.
 */
#ifndef SLIRPY_TCP_H
#define SLIRPY_TCP_H

#include <stdbool.h>
#include <stdint.h>

#include "slirpy.h"
#include "wire.h"

struct sl_engine;
struct sl_flow;
struct sl_listener;

#define SL_TCP_DEFER_MAX 64	/* teardowns one poll may defer */

/* struct sl_tcp.state: where the handshake is (see flow.h for the whole
 * life of a flow). FIN progress, once established, is in the flags. */
enum sl_tcp_phase {
	SL_TCP_CONNECTING = 1,	/* guest SYN seen, host connect() pending */
	SL_TCP_SYN_TO_GUEST,	/* inbound: host accepted, our SYN to guest */
	SL_TCP_ESTABLISHED,	/* data both ways; FIN progress in flags */
};

/* struct sl_tcp.flags */
#define SL_TF_GUEST_FIN 0x01	/* guest sent FIN; host socket shut for write */
#define SL_TF_HOST_EOF 0x02	/* host socket read returned 0; fin_seq valid */
#define SL_TF_FIN_SENT 0x04	/* snd_nxt is past our FIN (cleared on rewind) */
#define SL_TF_FIN_ACKED 0x08	/* the guest acknowledged our FIN */
#define SL_TF_ACK_DUE 0x10	/* an ACK must go out at the end of the batch */
#define SL_TF_WS_OK 0x20	/* both sides use window scaling */
#define SL_TF_PEEK_OFF 0x40	/* SO_PEEK_OFF works on this socket */
#define SL_TF_WND_FULL 0x80	/* stopped sending: guest window full */
#define SL_TF_NEED_WUPD 0x100	/* host send buffer was full: update when free */
#define SL_TF_RTT_OK 0x200	/* srtt/rttvar hold at least one sample */
#define SL_TF_TIMING 0x400	/* rtt_seq/rtt_at time one segment (Karn) */
#define SL_TF_HOST_DRY 0x800	/* last peek (SO_PEEK_OFF) hit EAGAIN and no
				 * EPOLLIN since: nothing new to send */
#define SL_TF_SPACE_OK 0x1000	/* sndbuf/space/space_seq hold a measure */
#define SL_TF_ACK_LAZY 0x2000	/* the ACK due may wait (delayed ACK) */
#define SL_TF_HOST_RDHUP 0x4000	/* an event said the host peer shut down its
				 * side: a FIN may sit behind the data */

/**
 * struct sl_tcp - the translation state of one TCP flow.
 *
 * Sequence space toward the guest: isn is our SYN, data follows, and when
 * the host socket reached EOF the FIN sits at fin_seq. snd_nxt may move back
 * (retransmission rewinds it to snd_una); snd_max never does.
 */
struct sl_tcp {
	uint32_t isn;		/* our initial sequence number toward guest */
	uint32_t snd_una;	/* oldest byte the guest has not acked */
	uint32_t snd_nxt;	/* next byte we send to the guest */
	uint32_t snd_max;	/* highest sequence number sent so far */
	uint32_t fin_seq;	/* sequence number of our FIN (SL_TF_HOST_EOF) */
	uint32_t rcv_nxt;	/* next byte we expect from the guest */
	uint32_t gwnd;		/* guest's receive window in bytes */
	uint32_t wnd_sent;	/* the window we last advertised (bytes) */
	uint32_t ack_sent;	/* the ack we last sent */
	uint32_t recover;	/* no new fast retransmit before this is acked */
	uint32_t rtt_seq;	/* the ack that ends the timed segment */
	uint32_t srtt_us;	/* smoothed round trip time to the guest */
	uint32_t rttvar_us;
	uint32_t sndbuf;	/* SO_SNDBUF at the last measure (SL_TF_SPACE_OK) */
	uint32_t space;		/* free send space then, in bytes */
	uint32_t space_seq;	/* rcv_nxt then: space - (rcv_nxt - space_seq)
				 * is a lower bound of the free space now */
	uint16_t gmss;		/* largest segment the guest takes */
	uint8_t gws;		/* guest's window scale shift */
	uint8_t dupacks;
	uint16_t flags;
	uint8_t retries;
	uint8_t state;		/* enum sl_tcp_phase */
	uint32_t rto_ms;	/* current timeout, backed off on expiry */
	uint64_t rto_at;	/* 0: no retransmission (or persist) timer */
	uint64_t rtt_at;	/* when the timed segment left */
};

/**
 * struct sl_tcp_state - TCP's part of the engine (e->tcp).
 * @spare: the next outbound connection's socket, per family (0: IPv4,
 *	1: IPv6), made and tuned after a poll's output left; -1: none
 * @spare_peek_off: SO_PEEK_OFF took on the spare
 * @spare_wanted: the family was used: keep a spare ready
 * @shut_due: host socket teardown left for the end of the poll (see
 *	sl_tcp_end_of_poll()): tags of flows to shut down for writing ...
 * @close_due: ... and fds of finished flows to close
 * @ack_list: flows with SL_TF_ACK_DUE set (as long as the flow pool)
 * @delack_at: lazy ACKs in ack_list leave by then (0: none)
 * @isn_state: the initial sequence number generator
 * @peekbuf: host data being sent to the guest (SL_FRAME_MAX bytes)
 */
struct sl_tcp_state {
	int spare[2];
	bool spare_peek_off[2];
	bool spare_wanted[2];
	uint64_t shut_due[SL_TCP_DEFER_MAX];
	uint32_t n_shut_due;
	int close_due[SL_TCP_DEFER_MAX];
	uint32_t n_close_due;
	uint32_t *ack_list;
	uint32_t nack;
	uint64_t delack_at;
	uint64_t isn_state;
	uint8_t *peekbuf;
};

int sl_tcp_init(struct sl_engine *e);
void sl_tcp_fini(struct sl_engine *e);
void sl_tcp_input(struct sl_engine *e, const struct sl_pkt *p);
void sl_tcp_sock_event(struct sl_engine *e, struct sl_flow *f, uint32_t ev);
void sl_tcp_listener_event(struct sl_engine *e, struct sl_listener *l);
uint64_t sl_tcp_timer(struct sl_engine *e, struct sl_flow *f);
void sl_tcp_flush_acks(struct sl_engine *e);
uint64_t sl_tcp_ack_deadline(const struct sl_engine *e);
void sl_tcp_end_of_poll(struct sl_engine *e);
bool sl_tcp_bytes(const struct sl_flow *f, struct sl_flow_info *info);
void sl_tcp_abort(struct sl_engine *e, struct sl_flow *f, uint8_t why);

#endif /* SLIRPY_TCP_H */
