/* SPDX-License-Identifier: MIT */
/*
 * slirpy.h - the one public interface of the slirpy C engine.
 *
 * The engine owns the data path: it reads Ethernet frames from the TAP,
 * translates them to host sockets and back, all behind a single epoll fd.
 * Python (the control plane) only calls the functions below; every entry
 * point that can do protocol work takes the current CLOCK_MONOTONIC time in
 * nanoseconds so that tests can drive the engine with a fake clock.
 *
 * csrc/slirpy.cdef mirrors this file for cffi: keep both in step.
 */
#ifndef SLIRPY_H
#define SLIRPY_H

#include <stddef.h>
#include <stdint.h>

struct sl_engine;

/**
 * struct sl_addr_map - one entry of the address-map table (addr.c): a guest
 * packet to @match goes to @target instead (shared-address mode's
 * --dns-forward, --map-guest-addr, --map-host-loopback; replies appear to
 * come from @match). Addresses in network byte order, IPv4 in the first 4
 * bytes; @target has @match's family (an IPv4-mapped IPv6 target reaches an
 * IPv4 host).
 */
struct sl_addr_map {
	uint8_t family;		/* 0 = unused, 4, 6 */
	uint8_t dns_only;	/* 1: only TCP/UDP ports 53 and 853 are mapped,
				 * other ports and ICMP are refused */
	uint16_t target_port;	/* 0 = the same port */
	uint8_t match[16];
	uint8_t target[16];
};

#define SL_MAX_ADDR_MAPS 8

/**
 * struct sl_config - everything the engine needs to know about the network.
 *
 * IPv4 addresses are in network byte order, stored as 4 bytes so that cffi
 * users never have to think about endianness.
 */
struct sl_config {
	uint8_t net4[4];	/* network address N */
	uint8_t prefix4;	/* prefix length, 1..25 */
	uint8_t gw4[4];		/* N+2: gateway, maps to host loopback */
	uint8_t dns4[4];	/* N+3: DNS forwarder */
	uint8_t guest4[4];	/* N+100: default forward target */
	uint8_t ipv6;		/* 1: answer NDP, send RAs, translate IPv6 */
	uint8_t prefix6[16];	/* /64 prefix, gateway is prefix::2 */
	uint16_t mtu;		/* guest MTU, 68..65521 */
	uint8_t host_loopback;	/* 1: N+2 and 255.255.255.255 reach 127.0.0.1 */
	uint8_t dns_enabled;	/* 1: N+3:53 redirects to the DNS ports below */
	uint16_t dns_udp_port;	/* loopback port of Python's DNS forwarder */
	uint16_t dns_tcp_port;
	uint16_t vnet_hdr_len;	/* 0 (plain frames) or 10 (virtio_net_hdr) */
	uint8_t offload;	/* 1: guest sends/receives GSO + partial csum */
	uint8_t outbound4[4];	/* source address for outbound IPv4, 0 = any;
				 * Python resolves an interface name to it */
	uint8_t outbound6[16];	/* source address for outbound IPv6, :: = any */
	uint32_t max_tcp_flows;
	uint32_t max_udp_flows;
	uint32_t max_icmp_flows;
	uint32_t max_half_open;	/* TCP flows still connecting */
	uint32_t udp_idle_s;	/* UDP flow idle timeout */
	uint32_t tcp_idle_s;	/* established TCP flow idle timeout */
	uint8_t flow_events;	/* 1: punt SL_EV_FLOW_OPEN/CLOSE (slirpy run -v) */
	/* Shared-address mode (pasta's model); all zero = slirp4netns's. */
	uint8_t shared_addr;	/* 1: the guest owns the host's addresses */
	uint8_t our_mac[6];	/* every address behind the TAP; 0 = derived */
	uint8_t guest6[16];	/* the guest's IPv6 address (shared mode) */
	uint8_t peer_sub4[4];	/* how a loopback or guest-address inbound */
	uint8_t peer_sub6[16];	/* peer appears to the guest (shared mode) */
	uint8_t no_ra;		/* 1: send no router advertisements */
	uint8_t no_ipv4;	/* 1: drop the guest's IPv4 and ARP */
	struct sl_addr_map maps[SL_MAX_ADDR_MAPS];	/* see sl_engine_set_addr_map */
};

/* Punt-queue event types: what the engine hands back to Python. */
enum sl_event_type {
	SL_EV_NONE = 0,
	SL_EV_DHCP = 1,		/* UDP to port 67: data = payload, mac = src */
	SL_EV_FLOW_OPEN = 2,	/* a flow was created (for -v logging) */
	SL_EV_FLOW_CLOSE = 3,
	SL_EV_NOTICE = 4,	/* one-off condition, data = text */
	SL_EV_TAP_DOWN = 5,	/* the TAP returned EOF or a fatal error */
	SL_EV_POLICY_DENY = 6,	/* the egress policy refused a flow (or closed
				 * one): dst/dport as the guest sent it, data =
				 * the rule_id, 4 bytes little-endian
				 * (0xffffffff: the default action); at most
				 * one per destination a second */
};

/* Why a flow closed (struct sl_flow_info.reason in SL_EV_FLOW_CLOSE). */
enum sl_flow_close_reason {
	SL_FC_UNSPEC = 0,	/* e.g. its port forward was removed */
	SL_FC_FIN = 1,		/* TCP: both sides closed with FIN */
	SL_FC_RST = 2,		/* TCP: the guest reset it */
	SL_FC_HOST_RST = 3,	/* TCP: reset or error on the host socket */
	SL_FC_TIMEOUT = 4,	/* idle, half-open or retransmission timeout */
	SL_FC_EVICTED = 5,	/* UDP/ICMP: least recently used at the cap */
	SL_FC_REFUSED = 6,	/* TCP: the host connect() failed */
	SL_FC_POLICY = 7,	/* a new egress policy denies it */
};

/* struct sl_flow_info.flags */
enum sl_flow_info_flags {
	SL_FI_INBOUND = 1,	/* opened by a port forward (host -> guest) */
	SL_FI_BYTES = 2,	/* bytes_* are valid (TCP, from the host socket) */
};

/**
 * struct sl_flow_info - the data of SL_EV_FLOW_OPEN and SL_EV_FLOW_CLOSE.
 *
 * The event's src/sport are the guest's side, dst/dport the remote side as
 * the guest sees it (the echo id is sport for ICMP). Duration and bytes are
 * set at close only.
 */
struct sl_flow_info {
	uint64_t duration_ns;
	uint64_t bytes_to_host;		/* guest -> remote */
	uint64_t bytes_to_guest;	/* remote -> guest */
	uint32_t flags;			/* SL_FI_* */
	uint32_t reason;		/* enum sl_flow_close_reason */
};

#define SL_EVENT_DATA_MAX 1536

/**
 * struct sl_event - one slow-path event from the punt queue.
 * @family: 4 or 6; addresses are in the first 4 bytes for IPv4.
 */
struct sl_event {
	uint32_t type;
	uint32_t len;
	uint8_t mac[6];
	uint8_t proto;
	uint8_t family;
	uint8_t src[16];
	uint8_t dst[16];
	uint16_t sport;
	uint16_t dport;
	uint8_t data[SL_EVENT_DATA_MAX];
};

/* Protocols for listeners (port forwarding). */
enum sl_proto { SL_TCP = 6, SL_UDP = 17 };

/* How a TCP listener's connections are relayed (sl_engine_set_listener_splice). */
enum sl_listener_mode {
	SL_LM_TAP = 0,		/* through the TAP, as a flow */
	SL_LM_SPLICE = 1,	/* splice() to a namespace-helper socket */
	SL_LM_SPLIT = 2,	/* loopback peers SPLICE, the others TAP */
	SL_LM_TO_HOST_LO = 3,	/* the listener is in the namespace: splice()
				 * to the host's loopback at the guest port */
};

struct sl_engine *sl_engine_new(const struct sl_config *cfg);
void sl_engine_free(struct sl_engine *e);
int sl_engine_fd(const struct sl_engine *e);
int sl_engine_set_tap(struct sl_engine *e, int fd);
int sl_engine_set_guest_mac(struct sl_engine *e, const uint8_t mac[6]);
int sl_engine_set_shared_addrs(struct sl_engine *e, const uint8_t guest4[4],
			       const uint8_t guest6[16], const uint8_t peer_sub4[4],
			       const uint8_t peer_sub6[16]);
int sl_engine_poll(struct sl_engine *e, uint64_t now_ns, int budget);
int sl_engine_poll_now(struct sl_engine *e, int budget);
int sl_engine_input_frame(struct sl_engine *e, uint64_t now_ns,
			  const uint8_t *frame, size_t len);
int sl_engine_flush(struct sl_engine *e, uint64_t now_ns);
int sl_engine_take_output(struct sl_engine *e, uint8_t *buf, size_t cap);
int sl_engine_next_event(struct sl_engine *e, struct sl_event *ev);
int sl_engine_send_udp4(struct sl_engine *e, const uint8_t dst_mac[6],
			const uint8_t src[4], uint16_t sport,
			const uint8_t dst[4], uint16_t dport,
			const uint8_t *payload, size_t len);
int sl_engine_add_listener(struct sl_engine *e, int fd, int proto,
			   const uint8_t *guest_addr, int family,
			   uint16_t guest_port, uint32_t id);
int sl_engine_remove_listener(struct sl_engine *e, uint32_t id);
int sl_engine_set_ns_helper(struct sl_engine *e, int fd);
int sl_engine_set_listener_splice(struct sl_engine *e, uint32_t id, int mode);
int sl_engine_set_addr_map(struct sl_engine *e, unsigned idx,
			   const struct sl_addr_map *m);
int sl_engine_ncounters(void);
const char *sl_counter_name(int i);
int sl_engine_counters(const struct sl_engine *e, uint64_t *out, int n);
int sl_engine_list_flows(const struct sl_engine *e, char *buf, size_t cap);
int sl_engine_set_fault(struct sl_engine *e, uint32_t drop_in_permille,
			uint32_t drop_out_permille, uint32_t seed);

/* Egress policy (csrc/policy.c): checked when the guest opens a flow. */
enum sl_policy_action { SL_POLICY_ALLOW = 1, SL_POLICY_DENY = 2 };
enum sl_policy_proto { SL_PP_TCP = 1, SL_PP_UDP = 2, SL_PP_ICMP = 4 };	/* proto_mask bits; 0 = any */
enum sl_policy_match { SL_PM_CIDR = 0, SL_PM_HOST = 1 };
#define SL_POLICY_MAX_RULES 65536

/**
 * struct sl_policy_rule - one rule of an egress policy.
 *
 * SL_PM_HOST matches any destination that reaches the host: one the
 * address map sends to a loopback address or translates to another
 * address (the gateway and 255.255.255.255 with host loopback, and the
 * shared-address mode's map entries); DNS to slirpy's forwarder is never
 * filtered.
 */
struct sl_policy_rule {
	uint32_t rule_id;	/* the user's rule index (hit counters are per rule_id) */
	uint8_t match;		/* SL_PM_CIDR: family/prefix_len/addr; SL_PM_HOST: any destination that reaches the host */
	uint8_t family;		/* 4 or 6 (CIDR) */
	uint8_t prefix_len;	/* 0..32 / 0..128 */
	uint8_t action;		/* enum sl_policy_action */
	uint8_t proto_mask;	/* enum sl_policy_proto bits, 0 = any protocol */
	uint8_t pad[3];
	uint16_t port_lo, port_hi;	/* inclusive; 0..65535 = any (ICMP has no port: a rule with a port range narrower than 0-65535 never matches ICMP) */
	uint8_t addr[16];	/* network address, first 4 bytes for IPv4 */
};
/* Replace the policy atomically. n rules in order (first match wins), then default_action. nids: number of distinct rule_ids (hit counters are reset). Existing flows the new policy denies are closed (TCP: RST to the guest and the host socket closed; UDP/ICMP: freed). now_ns as every entry point. Return 0 or -errno (-EINVAL for a malformed rule, and then nothing changes; -E2BIG above SL_POLICY_MAX_RULES = 65536). n = 0 with default ALLOW = no policy (the state at start). */
int sl_engine_set_policy(struct sl_engine *e, uint64_t now_ns, const struct sl_policy_rule *rules, uint32_t n, uint32_t nids, uint8_t default_action);
/* Hit counts per rule_id (out[i] for rule_id i, up to n) and, at out[nids], the number of flows that hit the default action; return number written or -errno. */
int sl_engine_policy_hits(const struct sl_engine *e, uint64_t *out, uint32_t n);

/* System helpers that Python 3.11 lacks. */
int sl_setns(int fd, int nstype);
void sl_release_free_memory(void);
int sl_inotify_watch(const char *path, uint32_t mask);
int sl_tun_open(const char *name, int vnet_hdr, int offload, char *err,
		size_t errlen);
int sl_sandbox_apply(const char *const *extra, int nextra, char *err,
		     size_t errlen);
int sl_seccomp_apply(char *err, size_t errlen);
int sl_ns_helper_serve(int sock, int pidfd);

/* Where a spliced TCP forward's helper socket connects (splice.c). */
int sl_engine_set_listener_splice_addr(struct sl_engine *e, uint32_t id,
				       const uint8_t *addr, int family);

/* Namespace sockets without a helper process (splice.c, nssock.c): a
 * short-lived clone() child joins @userfd (-1: none) and @netfd. Not
 * possible once confined (--enable-sandbox/--enable-seccomp). */
int sl_engine_set_ns_fds(struct sl_engine *e, int netfd, int userfd);
int sl_ns_loopback_socket(int netfd, int userfd, int tcp, int family,
			  uint16_t port);
int sl_ns_make_sockets(int netfd, int userfd, int family, int *fds, int n);

#endif /* SLIRPY_H */
