/* SPDX-License-Identifier: MIT */
/*
 * internal.h - the engine's private structures, shared by the csrc/ files.
 *
 * Nothing here is visible to Python. The engine is one struct with fixed-size
 * pools allocated at creation: nothing on the packet path allocates, so the
 * memory a hostile guest can make slirpy use is bounded by the configured caps.
 */
#ifndef SLIRPY_INTERNAL_H
#define SLIRPY_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/uio.h>
#include <linux/virtio_net.h>

#include "slirpy.h"
#include "wire.h"

#define SL_NIL UINT32_MAX
#define SL_FRAME_MAX (65535 + 14 + 10 + 64)
#define SL_PUNT_CAP 128
#define SL_PUNT_RESERVE 16	/* slots flow events leave to DHCP and notices */
#define SL_TEST_OUT_CAP 4096
/* The fuzz harness builds with a smaller value: it uses two listeners, and
 * every listener adds a flow slot that each timer pass walks. */
#ifndef SL_MAX_LISTENERS
#define SL_MAX_LISTENERS 1024
#endif
#define SL_TCP_DEFER_MAX 64	/* teardowns one poll may defer */
#define NSEC_PER_MSEC 1000000ULL
#define NSEC_PER_SEC 1000000000ULL

/* X-macro: every counter the engine keeps, in the order Python sees them. */
#define SL_COUNTERS(X)                                                        \
	X(frames_in) X(bytes_in) X(frames_out) X(bytes_out)                   \
	X(tap_read_errors) X(tap_write_errors)                                \
	X(drop_short_frame) X(drop_ethertype) X(drop_not_for_us)              \
	X(drop_arp_malformed) X(drop_ipv4_malformed) X(drop_ipv6_malformed)   \
	X(drop_ip_fragment) X(drop_ip_ttl) X(drop_src_invalid)                \
	X(drop_dst_invalid) X(drop_tcp_malformed) X(drop_udp_malformed)       \
	X(drop_icmp_malformed) X(drop_icmp_type) X(drop_gso_malformed)        \
	X(drop_flow_cap) X(drop_half_open_cap) X(drop_socket_error)           \
	X(drop_punt_full) X(drop_fault_in) X(drop_fault_out) X(drop_no_flow)  \
	X(drop_tcp_out_of_window) X(drop_udp_too_big)                         \
	X(arp_replies) X(ndp_adverts) X(router_adverts)                       \
	X(icmp_echo_local) X(icmp_echo_out) X(icmp_echo_in)                   \
	X(icmp_unreach_sent) X(tcp_rst_sent)                                  \
	X(tcp_flows_opened) X(tcp_flows_closed) X(tcp_flows_inbound)          \
	X(tcp_connect_refused) X(tcp_retransmits) X(tcp_bytes_to_host)        \
	X(tcp_bytes_to_guest) X(udp_flows_opened) X(udp_flows_closed)         \
	X(udp_datagrams_to_host) X(udp_datagrams_to_guest)                    \
	X(icmp_flows_opened) X(icmp_flows_closed) X(punted) X(gso_frames_in)  \
	X(gso_frames_out) X(timers_fired) X(flows_evicted)                    \
	X(flow_events_dropped) X(udp_gso_frames_in) X(udp_send_batches)        \
	X(udp_recv_batches)                                                   \
	X(splice_opened) X(splice_closed) X(splice_refused) X(splice_resets)  \
	X(splice_bytes_to_guest) X(splice_bytes_to_host)                     \
	X(drop_splice_no_helper) X(drop_splice_helper_reply)                 \
	X(splice_idle_closed)

enum sl_counter_id {
#define SL_CTR_ENUM(n) SL_C_##n,
	SL_COUNTERS(SL_CTR_ENUM)
#undef SL_CTR_ENUM
	SL_C_COUNT
};

enum sl_flow_kind { SL_FLOW_FREE = 0, SL_FLOW_TCP, SL_FLOW_UDP, SL_FLOW_ICMP };

/* epoll tags: the top byte of epoll_data.u64 says what woke us. */
enum sl_tag {
	SL_TAG_TAP = 1, SL_TAG_FLOW = 2, SL_TAG_LISTENER = 3,
	SL_TAG_SPLICE = 4,	/* a spliced connection's socket (splice.c) */
	SL_TAG_NS_HELPER = 5,	/* the namespace helper's socket (splice.c) */
};

enum sl_tcp_state {
	SL_TCP_CONNECTING = 1,	/* guest SYN seen, host connect() pending */
	SL_TCP_SYN_TO_GUEST,	/* inbound: host accepted, our SYN to guest */
	SL_TCP_ESTABLISHED,	/* data both ways; FIN progress in flags */
};

/* TCP flow flags */
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
	uint8_t state;
	uint32_t rto_ms;	/* current timeout, backed off on expiry */
	uint64_t rto_at;	/* 0: no retransmission (or persist) timer */
	uint64_t rtt_at;	/* when the timed segment left */
};

struct sl_udp {
	uint8_t inbound;	/* created by a port forward */
	uint32_t listener;	/* listener index for inbound flows */
	uint8_t client_family;	/* inbound: the host client's real address */
	uint8_t client[16];
	uint16_t client_port;
};

/**
 * struct sl_flow - one translated conversation.
 *
 * @gaddr/@gport: the guest's side. @raddr/@rport: the remote side as the guest
 * sees it (e.g. N+2 for host loopback). Both 16 bytes; IPv4 uses the first 4.
 */
struct sl_flow {
	uint8_t kind;
	uint8_t family;
	uint16_t gport;
	uint16_t rport;
	uint8_t evflags;	/* SL_FE_* (flow events, cfg.flow_events; late close) */
	uint8_t why;		/* enum sl_flow_close_reason, set before freeing */
	uint32_t gen;
	uint8_t gaddr[16];
	uint8_t raddr[16];
	int fd;
	uint32_t events;	/* epoll events currently registered */
	uint32_t hnext;		/* next flow in the same hash bucket */
	uint32_t self;
	uint64_t created_ns;
	uint64_t last_ns;
	union {
		struct sl_tcp tcp;
		struct sl_udp udp;
	};
};

/* struct sl_flow.evflags */
#define SL_FE_OPENED 0x01	/* FLOW_OPEN was punted: FLOW_CLOSE follows */
#define SL_FE_INBOUND 0x02	/* created by a port forward */
#define SL_FE_CLOSE_LATER 0x04	/* tcp.c closes the fd at the end of the poll */

/* A port-forward listener handed over by Python. */
struct sl_listener {
	int fd;
	int proto;
	int family;		/* family of the guest address */
	uint32_t id;
	uint8_t gaddr[16];
	uint16_t gport;
	bool used;
	bool splice;		/* relay by splice() through a socket made in
				 * the guest's netns, not through the TAP */
};

struct sl_punt {
	struct sl_event ev[SL_PUNT_CAP];
	uint32_t head, count;
};

/* Frames captured when no TAP is attached: the test harness reads them. */
struct sl_test_out {
	uint8_t *frame[SL_TEST_OUT_CAP];
	uint32_t len[SL_TEST_OUT_CAP];
	uint32_t head, count;
};

struct sl_engine {
	struct sl_config cfg;
	int epfd;
	int tapfd;
	uint64_t now;
	uint8_t gw_mac[6];	/* 52:55:N+2 */
	uint8_t dns_mac[6];	/* 52:55:N+3 */
	uint8_t gw6_mac[6];	/* 52:56:...::2 */
	uint8_t dns6_mac[6];
	uint8_t guest_mac[6];	/* learned from the guest's frames */
	bool guest_mac_known;
	uint32_t mask4;		/* host byte order */
	uint32_t net4h, gw4h, dns4h;
	uint64_t ctr[SL_C_COUNT];

	/* flow pool and hash table */
	struct sl_flow *flows;
	uint32_t nflows_max;
	uint32_t nflows_used;	/* high-water mark: flows[nflows_used..] never touched */
	uint32_t free_head;	/* free list through hnext */
	uint32_t *buckets;
	uint64_t hash_seed;
	uint32_t nbuckets;	/* power of two */
	uint32_t n_by_kind[4];
	uint32_t n_half_open;
	/* tcp.c: the next outbound connection's socket, per family (0: IPv4,
	 * 1: IPv6), made and tuned after a poll's output left; -1: none */
	int tcp_spare[2];
	bool tcp_spare_peek_off[2];	/* SO_PEEK_OFF took on it */
	bool tcp_spare_wanted[2];	/* the family was used: keep one ready */
	/* tcp.c: host socket teardown left for the end of the poll (see
	 * sl_tcp_end_of_poll()): tags of flows to shut down for writing, fds
	 * of finished flows to close */
	uint64_t tcp_shut_due[SL_TCP_DEFER_MAX];
	uint32_t n_tcp_shut_due;
	int tcp_close_due[SL_TCP_DEFER_MAX];
	uint32_t n_tcp_close_due;
	uint32_t *ack_list;	/* flows with SL_TF_ACK_DUE set */
	uint32_t nack;
	uint64_t delack_at;	/* lazy ACKs in ack_list leave by then (0: none) */

	struct sl_listener listeners[SL_MAX_LISTENERS];
	struct sl_splice_tab *splice;	/* NULL until a namespace helper is set */
	uint32_t n_splice_slots;	/* TCP flow slots spliced connections use */

	uint64_t next_scan;	/* next timer scan */
	int timerfd;
	uint64_t timer_armed;

	struct sl_punt punt;
	struct sl_test_out *test_out;

	uint32_t fault_in, fault_out, fault_state;
	uint16_t ip_id;
	uint64_t isn_state;
	bool ping_warned;
	bool ping6_warned;
	uint64_t next_ra;

	/* udp.c: guest datagrams queued for one sendmmsg, and the slots
	 * one recvmmsg fills (preallocated, see sl_udp_init) */
	struct sl_udp_batch *udp_tx;
	struct sl_udp_batch *udp_rx;
	bool udp_uso_out;	/* runs of host datagrams leave as USO frames */

	/* scratch: one frame being built, one being read */
	uint8_t *rxbuf;
	uint8_t *txbuf;
	uint8_t *peekbuf;	/* host data being sent to the guest */
};

/* A spliced connection holds 6 fds (2 sockets, 2 pipes): it takes as many
 * slots of the TCP flow cap, which clamp_to_fd_limit sized in fds. */
#define SL_SPLICE_FDS 6

/* splice.c */
struct sl_splice_tab;
void sl_splice_accept(struct sl_engine *e, struct sl_listener *l);
void sl_splice_event(struct sl_engine *e, uint64_t tag, uint32_t ev);
void sl_splice_helper_event(struct sl_engine *e, uint32_t ev);
void sl_splice_timer(struct sl_engine *e);
void sl_splice_fini(struct sl_engine *e);

/* engine.c */
void sl_count(struct sl_engine *e, enum sl_counter_id c);
int sl_output(struct sl_engine *e, const struct virtio_net_hdr *vh,
	      struct iovec *iov, int iovcnt);
void sl_punt_event(struct sl_engine *e, const struct sl_event *ev);
void sl_notice(struct sl_engine *e, const char *text);
bool sl_fault_drop(struct sl_engine *e, uint32_t permille);
int sl_epoll_set(struct sl_engine *e, struct sl_flow *f, uint32_t events);
const uint8_t *sl_mac_for(const struct sl_engine *e, int family,
			  const uint8_t *addr);

/* flow.c */
int sl_flow_init(struct sl_engine *e);
void sl_flow_fini(struct sl_engine *e);
struct sl_flow *sl_flow_lookup(struct sl_engine *e, int kind, int family,
			       const uint8_t *gaddr, uint16_t gport,
			       const uint8_t *raddr, uint16_t rport);
struct sl_flow *sl_flow_new(struct sl_engine *e, int kind, int family,
			    const uint8_t *gaddr, uint16_t gport,
			    const uint8_t *raddr, uint16_t rport);
void sl_flow_free(struct sl_engine *e, struct sl_flow *f);
struct sl_flow *sl_flow_from_tag(struct sl_engine *e, uint64_t tag);
uint64_t sl_flow_tag(const struct sl_flow *f);
void sl_flow_opened(struct sl_engine *e, struct sl_flow *f, bool inbound);

/* addr.c: guest view <-> host sockaddr */
int sl_remote_sockaddr(struct sl_engine *e, int family, const uint8_t *raddr,
		       uint16_t rport, int proto, void *sa, uint32_t *salen);
int sl_guest_view_of(struct sl_engine *e, const void *sa, int *family,
		     uint8_t *addr, uint16_t *port);
int sl_bind_outbound(struct sl_engine *e, int fd, int family);

/* arp.c, icmp.c, ndp.c */
void sl_arp_input(struct sl_engine *e, const struct sl_pkt *p);
void sl_icmp4_input(struct sl_engine *e, const struct sl_pkt *p);
void sl_icmp_sock_event(struct sl_engine *e, struct sl_flow *f, uint32_t ev);
enum sl_unreach { SL_UNREACH_NET, SL_UNREACH_HOST, SL_UNREACH_PORT };
void sl_icmp_send_error(struct sl_engine *e, const struct sl_pkt *p,
			enum sl_unreach why);
void sl_icmp_send_flow_error(struct sl_engine *e, const struct sl_flow *f,
			     uint32_t seq, enum sl_unreach why);
void sl_icmp_emit(struct sl_engine *e, int family, const uint8_t *src,
		  const uint8_t *dst, uint8_t type, uint8_t code,
		  const uint8_t rest[4], const uint8_t *data, size_t dlen);
void sl_ndp_input(struct sl_engine *e, const struct sl_pkt *p);
void sl_icmp6_input(struct sl_engine *e, const struct sl_pkt *p);
void sl_ra_send(struct sl_engine *e, const uint8_t *dst_mac,
		const uint8_t *dst6);

/* udp.c */
struct sl_udp_batch;
int sl_udp_init(struct sl_engine *e);
void sl_udp_fini(struct sl_engine *e);
bool sl_udp_gso_valid(const struct sl_pkt *p);
void sl_udp_flush(struct sl_engine *e);
void sl_udp_input(struct sl_engine *e, const struct sl_pkt *p);
void sl_udp_sock_event(struct sl_engine *e, struct sl_flow *f, uint32_t ev);
void sl_udp_listener_event(struct sl_engine *e, struct sl_listener *l);
int sl_udp_emit(struct sl_engine *e, int family, const uint8_t *dst_mac,
		const uint8_t *src, uint16_t sport, const uint8_t *dst,
		uint16_t dport, const uint8_t *payload, size_t len);

/* tcp.c */
int sl_tcp_init(struct sl_engine *e);
void sl_tcp_input(struct sl_engine *e, const struct sl_pkt *p);
void sl_tcp_sock_event(struct sl_engine *e, struct sl_flow *f, uint32_t ev);
void sl_tcp_listener_event(struct sl_engine *e, struct sl_listener *l);
void sl_tcp_flush_acks(struct sl_engine *e);
uint64_t sl_tcp_ack_deadline(const struct sl_engine *e);
uint64_t sl_tcp_timer(struct sl_engine *e, struct sl_flow *f);
bool sl_tcp_bytes(const struct sl_flow *f, struct sl_flow_info *info);
void sl_tcp_rst_for(struct sl_engine *e, const struct sl_pkt *p);
void sl_tcp_end_of_poll(struct sl_engine *e);
void sl_tcp_fini(struct sl_engine *e);

/* ip.c: the headers below the transport layer, toward the guest */
const uint8_t *sl_guest_mac(const struct sl_engine *e);
size_t sl_emit_ip(struct sl_engine *e, uint8_t *buf, int family,
		  const uint8_t *src, const uint8_t *dst, uint8_t proto,
		  size_t l4len);
size_t sl_frame_headers(struct sl_engine *e, uint8_t *buf,
			const uint8_t *dst_mac, int family, const uint8_t *src,
			const uint8_t *dst, uint8_t proto, size_t l4len);

#endif /* SLIRPY_INTERNAL_H */
