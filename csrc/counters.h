/* SPDX-License-Identifier: MIT */
/*
 * counters.h - the names of the engine's counters (struct sl_engine.ctr),
 * in the order Python sees them (sl_counter_name()).
 *
 * Contract: names only. engine.c keeps the values; every file bumps them
 * through sl_count() (internal.h), and wire.c's sl_parse() returns the
 * drop counter a malformed frame goes to. Adding a counter here adds it
 * to Python's view, which takes the names from sl_counter_name().
 */
#ifndef SLIRPY_COUNTERS_H
#define SLIRPY_COUNTERS_H

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
	X(splice_idle_closed)                                                 \
	X(policy_denied) X(policy_closed) X(policy_events_suppressed)         \
	X(lorelay_opened) X(lorelay_closed) X(lorelay_datagrams_to_host)      \
	X(lorelay_datagrams_to_ns)

enum sl_counter_id {
#define SL_CTR_ENUM(n) SL_C_##n,
	SL_COUNTERS(SL_CTR_ENUM)
#undef SL_CTR_ENUM
	SL_C_COUNT
};

#endif /* SLIRPY_COUNTERS_H */
