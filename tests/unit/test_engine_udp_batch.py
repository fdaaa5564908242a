"""Engine, UDP offloads and batching: USO super-frames from the guest become
datagrams with exact boundaries, malformed ones are dropped and counted,
guest datagrams leave in sendmmsg batches (order kept per flow), host
datagrams are read with recvmmsg (each delivered once, in order)."""

from __future__ import annotations

import hashlib
import os
import socket
from ipaddress import IPv4Address

import pytest

from slirpy.engine import PROTO_UDP
from tests.helpers.frames import (
    GUEST,
    GUEST_MAC,
    GW,
    IP,
    UDP,
    VNET_F_NEEDS_CSUM,
    Ether,
    Vnet,
    arp_request,
    check_partial_csum,
    ip6,
    raw,
    udp4,
)

GSO_UDP_L4 = 5
HDRS4 = 14 + 20 + 8
HDRS6 = 14 + 40 + 8


def uso_vnet(gso_size: int, hdrs: int = HDRS4, **kw) -> Vnet:
    """The header a guest kernel with USO writes: partial checksum at the UDP
    header, segment size, header length hint."""
    args = dict(flags=VNET_F_NEEDS_CSUM, gso_type=GSO_UDP_L4, hdr_len=hdrs,
                gso_size=gso_size, csum_start=hdrs - 8, csum_offset=6)
    args.update(kw)
    return Vnet(**args)


def pattern(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


def recv_all(srv: socket.socket, n: int) -> list[bytes]:
    got = []
    for _ in range(n):
        got.append(srv.recv(65535))
    return got


def assert_silent(srv: socket.socket) -> None:
    srv.settimeout(0.05)
    with pytest.raises(TimeoutError):
        srv.recv(65535)
    srv.settimeout(2.0)


# ------------------------------------------------------------------ USO in


@pytest.mark.parametrize("gso,total", [
    (1000, 10 * 1000 + 337),      # last segment short
    (1000, 4000),                 # exact multiple
    (1, 2),                       # smallest run
    (100, 150 * 100 + 1),         # more segments than one UDP_SEGMENT send takes
    (1472, 44 * 1472),            # what a 1500-MTU guest sends at most
])
def test_uso_superframe_becomes_exact_datagrams(make_guest, socks, gso, total):
    g = make_guest(vnet_hdr=True, offload=True)
    srv = socks.udp()
    port = srv.getsockname()[1]
    payload = pattern(total)
    g.send(udp4(port, payload, sport=5000), vnet=uso_vnet(gso))
    nseg = -(-total // gso)
    got = recv_all(srv, nseg)
    want = [payload[i:i + gso] for i in range(0, total, gso)]
    assert got == want
    assert_silent(srv)
    c = g.counters()
    assert c["udp_gso_frames_in"] == 1 and c["gso_frames_in"] == 1
    assert c["udp_datagrams_to_host"] == nseg
    assert c["drop_gso_malformed"] == 0 and c["drop_socket_error"] == 0


def test_uso_superframe_ipv6_and_reply_path_unchanged(make_guest, socks):
    g = make_guest(vnet_hdr=True, offload=True, ipv6=True)
    srv = socks.udp(socket.AF_INET6)
    port = srv.getsockname()[1]
    payload = pattern(5 * 1200 + 99, seed=3)
    g.send(ip6() / UDP(sport=4100, dport=port) / payload, vnet=uso_vnet(1200, HDRS6))
    got = [srv.recvfrom(2048) for _ in range(6)]
    assert [d for d, _ in got] == [payload[i:i + 1200] for i in range(0, len(payload), 1200)]
    peers = {a for _, a in got}
    assert len(peers) == 1
    # the flow's socket answers as usual, one plain frame per datagram
    srv.sendto(b"ack", peers.pop())
    outs = [o for o in g.wait() if UDP in o.pkt]
    assert [bytes(o.pkt[UDP].payload) for o in outs] == [b"ack"]
    assert outs[0].vnet.gso_type == 0


def test_uso_the_host_refuses_is_sent_one_datagram_at_a_time(make_guest, socks):
    """gso_size + headers above the loopback MTU (65536): the host kernel
    refuses UDP_SEGMENT (EINVAL) and the engine sends each datagram itself
    (the first one fragmented and reassembled by the host's IPv6)."""
    g = make_guest(vnet_hdr=True, offload=True, ipv6=True)
    srv = socks.udp(socket.AF_INET6)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    port = srv.getsockname()[1]
    payload = pattern(65500, seed=5)
    g.send(ip6() / UDP(sport=4200, dport=port) / payload, vnet=uso_vnet(65490, HDRS6))
    assert recv_all(srv, 2) == [payload[:65490], payload[65490:]]
    c = g.counters()
    assert c["udp_datagrams_to_host"] == 2 and c["drop_socket_error"] == 0


def test_uso_reply_on_forwarded_port_reaches_the_client(make_guest, socks):
    """Inbound flows answer through the forwarded port's socket: a USO
    reply there is segmented too, from the forwarded port."""
    g = make_guest(vnet_hdr=True, offload=True)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    g.engine.set_guest_mac(bytes.fromhex(GUEST_MAC.replace(":", "")))
    g.engine.add_listener(s.detach(), PROTO_UDP, IPv4Address(GUEST), 53, 1)
    client = socks.udp()
    cport = client.getsockname()[1]
    client.sendto(b"hello", ("127.0.0.1", port))
    outs = [o for o in g.wait(lambda o: any(UDP in x.pkt for x in o)) if UDP in o.pkt]
    assert bytes(outs[0].pkt[UDP].payload) == b"hello"
    payload = pattern(3 * 500 + 7, seed=9)
    g.send(udp4(cport, payload, sport=53, dst=outs[0].pkt[IP].src), vnet=uso_vnet(500))
    got = [client.recvfrom(2048) for _ in range(4)]
    assert [d for d, _ in got] == [payload[i:i + 500] for i in range(0, len(payload), 500)]
    assert {a for _, a in got} == {("127.0.0.1", port)}


def _uso_frame(port: int, payload: bytes, vnet: Vnet, proto=None) -> bytes:
    l4 = proto if proto is not None else UDP(sport=5001, dport=port)
    return vnet.pack() + raw(Ether(dst="52:55:0a:00:02:02", src=GUEST_MAC)
                             / IP(src=GUEST, dst=GW) / l4 / payload)


MALFORMED = [
    ("gso-size-zero", uso_vnet(0), 3000, "drop_gso_malformed"),
    ("gso-size-above-payload", uso_vnet(4000), 3000, "drop_gso_malformed"),
    ("gso-size-equals-payload", uso_vnet(3000), 3000, "drop_gso_malformed"),
    ("hdr-len-past-frame", uso_vnet(1000, hdr_len=HDRS4 + 3001), 3000, "drop_gso_malformed"),
    ("hdr-len-short-of-headers", uso_vnet(1000, hdr_len=HDRS4 - 1), 3000,
     "drop_gso_malformed"),
    ("ecn-bit-on-udp", uso_vnet(1000, gso_type=GSO_UDP_L4 | 0x80), 3000, "drop_gso_malformed"),
    ("legacy-ufo", uso_vnet(1000, gso_type=3), 3000, "drop_gso_malformed"),
]


@pytest.mark.parametrize("name,vnet,size,counter", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_uso_frame_is_dropped_and_counted(make_guest, socks, name, vnet, size,
                                                    counter):
    g = make_guest(vnet_hdr=True, offload=True)
    srv = socks.udp()
    port = srv.getsockname()[1]
    g.send_raw(_uso_frame(port, pattern(size), vnet))
    c = g.counters()
    assert c[counter] == 1
    assert c["udp_datagrams_to_host"] == 0 and c["udp_flows_opened"] == 0
    assert_silent(srv)
    # the engine is alive: a plain datagram still goes through
    g.send(udp4(port, b"still here", sport=5001))
    assert srv.recv(100) == b"still here"


def test_uso_on_tcp_and_truncated_uso_are_dropped(make_guest, socks):
    from tests.helpers.frames import TCP

    g = make_guest(vnet_hdr=True, offload=True)
    srv = socks.udp()
    port = srv.getsockname()[1]
    g.send_raw(_uso_frame(port, pattern(3000), uso_vnet(1000, hdrs=14 + 20 + 20),
                          proto=TCP(sport=5002, dport=port, flags="PA")))
    assert g.counters()["drop_gso_malformed"] == 1
    whole = _uso_frame(port, pattern(3000), uso_vnet(1000))
    for cut in (10 + 14 + 10, 10 + HDRS4 - 2, len(whole) - 1):
        g.send_raw(whole[:cut])
    c = g.counters()
    assert c["drop_ipv4_malformed"] + c["drop_udp_malformed"] + c["drop_short_frame"] == 3
    assert c["udp_datagrams_to_host"] == 0
    assert_silent(srv)
    g.send_raw(whole)
    assert recv_all(srv, 3) == [pattern(3000)[i:i + 1000] for i in (0, 1000, 2000)]


# ------------------------------------------------------------ batching out


def _drain(g) -> None:
    for _ in range(20):
        if not g.poll(0.05):
            break


def test_batched_sends_keep_order_and_content_across_interleaved_flows(tap_guest, socks):
    g, tap = tap_guest
    a, b = socks.udp(), socks.udp()
    pa, pb = a.getsockname()[1], b.getsockname()[1]
    plan = [("a", i) for i in range(40)] + [("b", i) for i in range(5)] + \
           [("a", i) for i in range(40, 80)] + [("b", i) for i in range(5, 6)]
    for who, i in plan:
        port = pa if who == "a" else pb
        tap.write(udp4(port, f"{who}{i:03d}".encode() * (1 + i % 5), sport=6000))
    _drain(g)
    got_a = [a.recv(100) for _ in range(80)]
    got_b = [b.recv(100) for _ in range(6)]
    assert got_a == [f"a{i:03d}".encode() * (1 + i % 5) for i in range(80)]
    assert got_b == [f"b{i:03d}".encode() * (1 + i % 5) for i in range(6)]
    assert_silent(a)
    assert_silent(b)
    c = g.counters()
    assert c["udp_datagrams_to_host"] == 86
    # 32 + 8 | 5 | 32 + 8 | 1: one sendmmsg per run of one flow, at most 32
    assert c["udp_send_batches"] == 6


def test_batch_is_sent_before_a_non_udp_frame_and_at_drain_end(tap_guest, socks):
    g, tap = tap_guest
    srv = socks.udp()
    port = srv.getsockname()[1]
    for i in range(3):
        tap.write(udp4(port, b"x%d" % i, sport=6001))
    tap.write(arp_request(GW))
    for i in range(3, 5):
        tap.write(udp4(port, b"x%d" % i, sport=6001))
    _drain(g)
    assert [srv.recv(10) for _ in range(5)] == [b"x%d" % i for i in range(5)]
    c = g.counters()
    assert c["udp_send_batches"] == 2 and c["arp_replies"] == 1
    assert any(o.pkt.haslayer("ARP") for o in tap.frames())


def test_batch_with_a_new_flow_between_keeps_every_datagram(tap_guest, socks):
    """Opening a flow (which may evict one at the cap) flushes first."""
    g, tap = tap_guest
    srvs = [socks.udp() for _ in range(4)]
    for rnd in range(3):
        for k, s in enumerate(srvs):
            tap.write(udp4(s.getsockname()[1], b"r%dk%d" % (rnd, k), sport=7000 + k))
    _drain(g)
    for k, s in enumerate(srvs):
        assert [s.recv(10) for _ in range(3)] == [b"r%dk%d" % (r, k) for r in range(3)]
    assert g.counters()["udp_datagrams_to_host"] == 12


# ------------------------------------------------------------- batching in


def test_recvmmsg_delivers_every_datagram_once_in_order(make_guest, socks):
    g = make_guest()
    srv = socks.udp()
    port = srv.getsockname()[1]
    g.send(udp4(port, b"open", sport=6100))
    _, peer = srv.recvfrom(100)
    n = 150
    sent = [i.to_bytes(4, "big") + os.urandom(60) for i in range(n)]
    for d in sent:
        srv.sendto(d, peer)

    def udps(outs):
        return [o for o in outs if UDP in o.pkt]

    outs = udps(g.wait(lambda o: len(udps(o)) >= n, timeout=5))
    got = [bytes(o.pkt[UDP].payload) for o in outs]
    assert len(got) == n
    assert hashlib.sha256(b"".join(got)).digest() == hashlib.sha256(b"".join(sent)).digest()
    assert got == sent
    c = g.counters()
    assert c["udp_datagrams_to_guest"] == n
    assert 1 <= c["udp_recv_batches"] < n // 4


def test_recvmmsg_drops_datagram_above_mtu_and_keeps_the_rest(make_guest, socks):
    g = make_guest(mtu=1500)
    srv = socks.udp()
    port = srv.getsockname()[1]
    g.send(udp4(port, b"open", sport=6101))
    _, peer = srv.recvfrom(100)
    sizes = [100, 1472, 1473, 9000, 5, 1472]
    for k, size in enumerate(sizes):
        srv.sendto(bytes([k]) * size, peer)

    def udps(outs):
        return [o for o in outs if UDP in o.pkt]

    outs = udps(g.wait(lambda o: len(udps(o)) >= 4))
    g.settle(0.05)
    assert [bytes(o.pkt[UDP].payload) for o in outs] == [
        bytes([k]) * s for k, s in enumerate(sizes) if s <= 1472]
    assert g.counters()["drop_udp_too_big"] == 2


def test_forwarded_port_burst_from_two_clients_is_relayed_in_order(make_guest, socks):
    g = make_guest()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    g.engine.set_guest_mac(bytes.fromhex(GUEST_MAC.replace(":", "")))
    g.engine.add_listener(s.detach(), PROTO_UDP, IPv4Address(GUEST), 53, 1)
    c1, c2 = socks.udp(), socks.udp()
    p1, p2 = c1.getsockname()[1], c2.getsockname()[1]
    sent = []
    for i in range(100):
        c, p = (c1, p1) if i % 3 else (c2, p2)
        d = b"%03d" % i * 10
        c.sendto(d, ("127.0.0.1", port))
        sent.append((p, d))

    def udps(outs):
        return [o for o in outs if UDP in o.pkt]

    outs = udps(g.wait(lambda o: len(udps(o)) >= 100, timeout=5))
    assert [(o.pkt[UDP].sport, bytes(o.pkt[UDP].payload)) for o in outs] == sent
    assert {o.pkt[UDP].dport for o in outs} == {53}
    c = g.counters()
    assert c["udp_flows_opened"] == 2 and c["udp_datagrams_to_guest"] == 100
    assert 1 <= c["udp_recv_batches"] < 50
    # replies still reach each client from the forwarded port
    g.send(udp4(p1, b"to one", sport=53, dst=outs[1].pkt[IP].src))
    assert c1.recvfrom(100) == (b"to one", ("127.0.0.1", port))


# ------------------------------------------------------------------ USO out


def _datagrams_to_guest(outs) -> list[bytes]:
    """What the guest's kernel would deliver: USO frames cut at gso_size."""
    got = []
    for o in outs:
        if UDP not in o.pkt:
            continue
        data = bytes(o.pkt[UDP].payload)
        assert o.pkt[UDP].len == 8 + len(data)
        if o.vnet is not None and o.vnet.gso_type == GSO_UDP_L4:
            check_partial_csum(o)
            n = o.vnet.gso_size
            assert o.vnet.hdr_len == len(o.data) - len(data)
            got += [data[i:i + n] for i in range(0, len(data), n)]
        else:
            got.append(data)
    return got


def _host_burst(g, socks, sizes: list[int], family=socket.AF_INET) -> tuple[list[bytes], list]:
    srv = socks.udp(family)
    port = srv.getsockname()[1]
    if family == socket.AF_INET:
        g.send(udp4(port, b"open", sport=6200))
    else:
        g.send(ip6() / UDP(sport=6200, dport=port) / b"open")
    _, peer = srv.recvfrom(100)
    sent = [bytes([k & 0xFF]) * s for k, s in enumerate(sizes)]
    for d in sent:
        srv.sendto(d, peer)
    outs = []
    for _ in range(100):
        outs += g.settle(0.02)
        if len(_datagrams_to_guest(outs)) >= len(sent):
            break
    return sent, outs


def test_host_datagram_runs_leave_as_uso_frames_with_exact_boundaries(make_guest, socks):
    g = make_guest(vnet_hdr=True, offload=True, mtu=1500)
    sizes = [100, 100, 100, 50, 100, 100, 7, 0, 0, 1472, 1472, 1000, 300, 300]
    sent, outs = _host_burst(g, socks, sizes)
    assert _datagrams_to_guest(outs) == sent
    uso = [o for o in outs if o.vnet.gso_type == GSO_UDP_L4]
    # runs: 100x3+50 | 100x2+7 | 0 | 0 | 1472x2+1000 | 300x2
    assert [(o.vnet.gso_size, len(o.pkt[UDP].payload)) for o in uso] == [
        (100, 350), (100, 207), (1472, 3944), (300, 600)]
    for o in uso:
        assert o.vnet.csum_start == 14 + 20 and o.vnet.csum_offset == 6
        assert o.pkt[IP].len == 20 + 8 + len(o.pkt[UDP].payload)
    c = g.counters()
    assert c["udp_datagrams_to_guest"] == len(sizes) and c["gso_frames_out"] == 4


def test_uso_runs_respect_mtu_and_ip_length_and_ipv6(make_guest, socks):
    g = make_guest(vnet_hdr=True, offload=True, mtu=9000, ipv6=True)
    # 8952 B is the most an IPv6 datagram may carry at MTU 9000: 8 of them
    # would pass 64 KiB, so a run stops at 7 and the other 2 make a second;
    # 8953 B is too big (dropped), and ends the run like the 10 B one.
    sizes = [8952] * 9 + [8953, 10]
    sent, outs = _host_burst(g, socks, sizes, socket.AF_INET6)
    assert _datagrams_to_guest(outs) == [d for d in sent if len(d) <= 8952]
    uso = [o for o in outs if o.vnet.gso_type == GSO_UDP_L4]
    assert [len(o.pkt[UDP].payload) // 8952 for o in uso] == [7, 2]
    assert g.counters()["drop_udp_too_big"] == 1


def test_without_offload_every_datagram_is_its_own_frame(make_guest, socks):
    g = make_guest(vnet_hdr=True, offload=False)
    sent, outs = _host_burst(g, socks, [64] * 40)
    assert _datagrams_to_guest(outs) == sent
    assert all(o.vnet.gso_type == 0 for o in outs)
    assert len([o for o in outs if UDP in o.pkt]) == 40
