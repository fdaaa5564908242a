"""Engine, hostile input: every malformed or forbidden frame is dropped with
the one counter that names why, nothing is sent back, no flow or host socket
is opened, and the engine still answers a good frame afterwards.

Owns the packet-level malformed-input cases and the regressions for what the
fuzzer (tests/fuzz) found. Frames are built with scapy and then mangled as
bytes, because scapy repairs lengths and checksums a hostile guest would not.
Nothing here talks to anything but the engine under test.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)

from tests.helpers.frames import (
    ARP,
    DNS_MAC,
    GUEST,
    GUEST6,
    GUEST_MAC,
    GW,
    GW6,
    GW6_MAC,
    GW_MAC,
    ICMP,
    IP,
    TCP,
    UDP,
    Ether,
    IPv6,
    Vnet,
    arp_request,
    raw,
)
from tests.helpers.tcp_conn import Conn

ETH4 = raw(Ether(dst=GW_MAC, src=GUEST_MAC, type=0x0800))
ETH6 = raw(Ether(dst=GW6_MAC, src=GUEST_MAC, type=0x86DD))
PORT = 9  # discard: nothing listens, and a SYN that got through would show


def ip4b(payload: bytes = b"", *, proto: int = 17, ihl: int = 5, tot: int | None = None,
         frag: int = 0x4000, src: str = GUEST, dst: str = GW, ver: int = 4,
         options: bytes = b"") -> bytes:
    """An IPv4 header with whatever lengths the caller says, then @payload."""
    hdr = struct.pack("!BBHHHBBH4s4s", (ver << 4) | ihl, 0,
                      (20 + len(options) + len(payload)) if tot is None else tot, 1, frag,
                      64, proto, 0, _a4(src), _a4(dst))
    return ETH4 + hdr + options + payload


def _a4(a: str) -> bytes:
    return bytes(int(x) for x in a.split("."))


def udpb(sport: int = 40000, dport: int = PORT, payload: bytes = b"x",
         ulen: int | None = None) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload) if ulen is None else ulen,
                       0) + payload


def tcpb(flags: int = 0x02, doff: int = 5, options: bytes = b"", dport: int = PORT) -> bytes:
    return struct.pack("!HHIIBBHHH", 40000, dport, 1000, 0, doff << 4, flags, 65535, 0,
                       0) + options


def ip6b(payload: bytes, *, nh: int = 17, plen: int | None = None, src: str = GUEST6,
         dst: str = GW6) -> bytes:
    return raw(Ether(dst=GW6_MAC, src=GUEST_MAC) / IPv6(
        src=src, dst=dst, nh=nh, plen=len(payload) if plen is None else plen)) + payload


# (name, frame, counter): the frame must be dropped and counted exactly there.
CASES4: list[tuple[str, bytes, str]] = [
    ("empty", b"", "drop_short_frame"),
    ("13-byte-ethernet", ETH4[:13], "drop_short_frame"),
    ("lldp-ethertype", raw(Ether(dst=GW_MAC, src=GUEST_MAC, type=0x88CC)) + b"\0" * 40,
     "drop_ethertype"),
    ("vlan-ethertype", raw(Ether(dst=GW_MAC, src=GUEST_MAC, type=0x8100)) + b"\0" * 40,
     "drop_ethertype"),
    ("ipv4-19-bytes", ETH4 + ip4b()[14:33], "drop_ipv4_malformed"),
    ("ipv4-version-5", ip4b(udpb(), ver=5), "drop_ipv4_malformed"),
    ("ipv4-version-6-in-ipv4-ethertype", ip4b(udpb(), ver=6), "drop_ipv4_malformed"),
    ("ipv4-ihl-4", ip4b(udpb(), ihl=4), "drop_ipv4_malformed"),
    ("ipv4-ihl-15-short", ip4b(udpb(), ihl=15), "drop_ipv4_malformed"),
    ("ipv4-total-length-too-big", ip4b(udpb(), tot=1500), "drop_ipv4_malformed"),
    ("ipv4-total-length-below-ihl", ip4b(udpb(), tot=12), "drop_ipv4_malformed"),
    ("ipv4-total-length-zero", ip4b(udpb(), tot=0), "drop_ipv4_malformed"),
    ("ipv4-more-fragments", ip4b(udpb(), frag=0x2000), "drop_ip_fragment"),
    ("ipv4-fragment-offset", ip4b(udpb(), frag=0x0010), "drop_ip_fragment"),
    ("ipv4-last-fragment-df", ip4b(udpb(), frag=0x4001), "drop_ip_fragment"),
    ("ipv4-proto-gre", ip4b(b"\0" * 8, proto=47), "drop_ipv4_malformed"),
    ("ipv4-proto-icmpv6", ip4b(b"\x80\0\0\0\0\0\0\0", proto=58), "drop_ipv4_malformed"),
    ("tcp-19-bytes", ip4b(tcpb()[:19], proto=6), "drop_tcp_malformed"),
    ("tcp-doff-4", ip4b(tcpb(doff=4), proto=6), "drop_tcp_malformed"),
    ("tcp-doff-15-short", ip4b(tcpb(doff=15), proto=6), "drop_tcp_malformed"),
    ("tcp-option-len-0", ip4b(tcpb(doff=6, options=b"\x02\x00\x00\x00"), proto=6),
     "drop_tcp_malformed"),
    ("tcp-option-len-1", ip4b(tcpb(doff=6, options=b"\x08\x01\x00\x00"), proto=6),
     "drop_tcp_malformed"),
    ("tcp-option-overruns", ip4b(tcpb(doff=6, options=b"\x01\x01\x08\x0a"), proto=6),
     "drop_tcp_malformed"),
    ("tcp-option-kind-last-byte", ip4b(tcpb(doff=6, options=b"\x01\x01\x01\x03"), proto=6),
     "drop_tcp_malformed"),
    ("tcp-options-beyond-ip-length",
     ip4b(tcpb(doff=8, options=b"\x02\x04\x05\xb4"), proto=6), "drop_tcp_malformed"),
    ("udp-7-bytes", ip4b(udpb()[:7]), "drop_udp_malformed"),
    ("udp-length-7", ip4b(udpb(ulen=7)), "drop_udp_malformed"),
    ("udp-length-0", ip4b(udpb(ulen=0)), "drop_udp_malformed"),
    ("udp-length-beyond-ip", ip4b(udpb(ulen=200)), "drop_udp_malformed"),
    ("udp-length-beyond-ip-to-dhcp", ip4b(udpb(68, 67, ulen=300), src="0.0.0.0",
                                          dst="255.255.255.255"), "drop_udp_malformed"),
    ("icmp-7-bytes", ip4b(b"\x08\0\0\0\0\0\0", proto=1), "drop_icmp_malformed"),
    ("arp-27-bytes", raw(arp_request(GW))[:41], "drop_arp_malformed"),
    ("arp-opcode-9", raw(Ether(dst=GW_MAC, src=GUEST_MAC) / ARP(op=9, psrc=GUEST, pdst=GW)),
     "drop_not_for_us"),
    # Sources a guest may not use.
    ("src-0.0.0.0-udp", ip4b(udpb(), src="0.0.0.0"), "drop_src_invalid"),
    ("src-0.0.0.0-tcp", ip4b(tcpb(), proto=6, src="0.0.0.0"), "drop_src_invalid"),
    ("src-loopback", ip4b(tcpb(), proto=6, src="127.0.0.1"), "drop_src_invalid"),
    ("src-multicast", ip4b(udpb(), src="224.0.0.1"), "drop_src_invalid"),
    ("src-broadcast", ip4b(udpb(), src="255.255.255.255"), "drop_src_invalid"),
    ("src-gateway", ip4b(tcpb(), proto=6, src=GW), "drop_src_invalid"),
    ("src-dns", ip4b(udpb(), src="10.0.2.3"), "drop_src_invalid"),
    ("src-gateway-icmp", ip4b(raw(ICMP(id=1, seq=1)), proto=1, src=GW), "drop_src_invalid"),
    # Destinations that never become a host socket.
    ("tcp-to-127.0.0.1", ip4b(tcpb(), proto=6, dst="127.0.0.1"), "drop_dst_invalid"),
    ("tcp-to-0.0.0.0", ip4b(tcpb(), proto=6, dst="0.0.0.0"), "drop_dst_invalid"),
    ("udp-to-multicast", ip4b(udpb(), dst="224.0.0.251"), "drop_dst_invalid"),
    ("udp-to-loopback", ip4b(udpb(), dst="127.0.0.53"), "drop_dst_invalid"),
]

CASES6: list[tuple[str, bytes, str]] = [
    ("ipv6-39-bytes", ip6b(udpb())[:14 + 39], "drop_ipv6_malformed"),
    ("ipv6-payload-length-0", ip6b(udpb(), plen=0), "drop_ipv6_malformed"),
    ("ipv6-payload-length-too-big", ip6b(udpb(), plen=400), "drop_ipv6_malformed"),
    ("ipv6-version-4", ETH6 + bytes([0x40]) + ip6b(udpb())[15:], "drop_ipv6_malformed"),
    ("ipv6-fragment", raw(Ether(dst=GW6_MAC, src=GUEST_MAC) / IPv6(src=GUEST6, dst=GW6)
                          / IPv6ExtHdrFragment(m=1) / UDP(dport=PORT) / b"x"),
     "drop_ip_fragment"),
    ("ipv6-fragment-after-hop-by-hop",
     raw(Ether(dst=GW6_MAC, src=GUEST_MAC) / IPv6(src=GUEST6, dst=GW6) / IPv6ExtHdrHopByHop()
         / IPv6ExtHdrFragment(offset=3) / UDP(dport=PORT) / b"x"), "drop_ip_fragment"),
    ("ipv6-hop-by-hop-overruns", ip6b(bytes([17, 9]) + b"\0" * 6 + udpb(), nh=0),
     "drop_ipv6_malformed"),
    ("ipv6-ext-header-truncated", ip6b(b"\x11\x00\x00", nh=60), "drop_ipv6_malformed"),
    ("ipv6-eight-ext-headers", ip6b(b"".join(bytes([60, 0]) + b"\0" * 6 for _ in range(7))
                                    + bytes([17, 0]) + b"\0" * 6 + udpb(), nh=60),
     "drop_ipv6_malformed"),
    ("ipv6-icmpv4-inside", ip6b(raw(ICMP(id=1)), nh=1), "drop_ipv6_malformed"),
    ("ipv6-proto-gre", ip6b(b"\0" * 8, nh=47), "drop_ipv6_malformed"),
    ("ipv6-tcp-doff-3", ip6b(tcpb(doff=3), nh=6), "drop_tcp_malformed"),
    ("ipv6-udp-length-beyond", ip6b(udpb(ulen=99)), "drop_udp_malformed"),
    ("ipv6-icmpv6-7-bytes", ip6b(b"\x80" + b"\0" * 6, nh=58), "drop_icmp_malformed"),
    ("ipv6-src-loopback", ip6b(udpb(), src="::1"), "drop_src_invalid"),
    ("ipv6-src-multicast", ip6b(udpb(), src="ff02::1"), "drop_src_invalid"),
    ("ipv6-src-gateway", ip6b(udpb(), src=GW6), "drop_src_invalid"),
    ("ipv6-src-dns", ip6b(udpb(), src="fd00::3"), "drop_src_invalid"),
    ("ipv6-src-unspecified-udp", ip6b(udpb(), src="::"), "drop_src_invalid"),
    ("ipv6-tcp-to-loopback", ip6b(tcpb(), nh=6, dst="::1"), "drop_dst_invalid"),
    ("ipv6-udp-to-v4-mapped", ip6b(udpb(), dst="::ffff:127.0.0.1"), "drop_dst_invalid"),
    ("ipv6-udp-to-link-local", ip6b(udpb(), dst="fe80::1"), "drop_dst_invalid"),
    ("ipv6-udp-to-multicast", ip6b(udpb(), dst="ff02::1"), "drop_dst_invalid"),
]


def drops(counters: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counters.items() if k.startswith("drop_") and v}


def still_answers(g) -> None:
    """A good ping to the gateway is answered after the bad frame."""
    g.send(Ether(dst=GW_MAC, src=GUEST_MAC) / IP(src=GUEST, dst=GW) / ICMP(id=9, seq=9))
    outs = g.out()
    assert [o.pkt[ICMP].type for o in outs if ICMP in o.pkt] == [0]


def check_dropped(g, frame: bytes, counter: str, send: Callable[[bytes], None]) -> None:
    send(frame)
    assert g.settle(0.02) == []
    c = g.counters()
    assert drops(c) == {counter: 1}, drops(c)
    opened = {k: v for k, v in c.items() if k.endswith("flows_opened") and v}
    assert opened == {}
    assert c["punted"] == 0
    still_answers(g)


@pytest.mark.parametrize("vnet", [False, True], ids=["plain", "vnet"])
@pytest.mark.parametrize("name,frame,counter", CASES4, ids=[c[0] for c in CASES4])
def test_malformed_ipv4_frame_is_dropped_and_counted(make_guest, vnet, name, frame, counter):
    g = make_guest(vnet_hdr=vnet, offload=vnet)
    check_dropped(g, frame, counter, lambda f: g.send(f))


@pytest.mark.parametrize("name,frame,counter", CASES6, ids=[c[0] for c in CASES6])
def test_malformed_ipv6_frame_is_dropped_and_counted(make_guest, name, frame, counter):
    g = make_guest(ipv6=True)
    check_dropped(g, frame, counter, lambda f: g.send(f))


def test_ipv6_when_disabled_is_not_for_us(make_guest):
    g = make_guest(ipv6=False)
    check_dropped(g, ip6b(udpb()), "drop_not_for_us", lambda f: g.send(f))


@pytest.mark.parametrize("n", [0, 1, 9])
def test_frame_shorter_than_virtio_header(make_guest, n):
    g = make_guest(vnet_hdr=True)
    check_dropped(g, b"\0" * n, "drop_short_frame", g.send_raw)


@pytest.mark.parametrize("vnet,payload", [
    (Vnet(gso_type=3, gso_size=1000), raw(Ether(dst=GW_MAC, src=GUEST_MAC)
                                         / IP(src=GUEST, dst=GW) / UDP(dport=PORT) / b"u")),
    (Vnet(gso_type=1, gso_size=1000), raw(Ether(dst=GW_MAC, src=GUEST_MAC)
                                         / IP(src=GUEST, dst=GW) / ICMP(id=1))),
    (Vnet(gso_type=5, gso_size=1000), raw(Ether(dst=GW_MAC, src=GUEST_MAC)
                                         / IP(src=GUEST, dst=GW) / TCP(dport=PORT))),
], ids=["gso-udp", "gso-tcp4-on-icmp", "gso-unknown-type"])
def test_bogus_gso_frames_are_dropped(make_guest, vnet, payload):
    g = make_guest(vnet_hdr=True, offload=True)
    check_dropped(g, vnet.pack() + payload, "drop_gso_malformed", g.send_raw)


def test_ethernet_padding_beyond_ip_length_is_accepted(guest):
    """Short frames are padded to 60 bytes on the wire; the IPv4 total length
    says what is real, and the rest is ignored (not malformed)."""
    frame = raw(Ether(dst=GW_MAC, src=GUEST_MAC) / IP(src=GUEST, dst=GW) / ICMP(id=3, seq=4))
    guest.send(frame + b"\xee" * 40)
    (out,) = guest.out()
    assert out.pkt[ICMP].type == 0 and out.pkt[ICMP].id == 3
    assert drops(guest.counters()) == {}


def test_dhcp_from_0_0_0_0_is_punted_not_dropped(guest):
    guest.send(Ether(dst="ff:ff:ff:ff:ff:ff", src=GUEST_MAC)
               / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
               / (b"\x01" + b"\0" * 299))
    c = guest.counters()
    assert c["punted"] == 1 and drops(c) == {}


def test_dhcp_garbage_larger_than_an_event_is_dropped(guest):
    guest.send(Ether(dst="ff:ff:ff:ff:ff:ff", src=GUEST_MAC)
               / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
               / (b"\xa5" * 1600))
    c = guest.counters()
    assert c["punted"] == 0 and drops(c) == {"drop_udp_malformed": 1}


def test_every_tcp_flag_combination_to_a_closed_port(guest, socks):
    """64 flag combinations at a closed loopback port with odd sequence
    numbers: SYNs are refused with RST, the rest get RST or nothing; no flow
    survives, and nothing is counted as malformed."""
    port = socks.closed_port()
    for flags in range(64):
        seq = (flags * 0x9E3779B9) & 0xFFFFFFFF
        guest.send(Ether(dst=GW_MAC, src=GUEST_MAC) / IP(src=GUEST, dst=GW)
                   / TCP(sport=41000 + flags, dport=port, flags=flags, seq=seq, ack=seq ^ 0x55))
    guest.settle(0.3)
    guest.advance(5)
    c = guest.counters()
    assert {k for k in drops(c)} <= {"drop_no_flow", "drop_tcp_out_of_window"}
    assert c["tcp_flows_opened"] == c["tcp_flows_closed"]
    assert guest.engine.flows() == []


def test_every_icmp_type_and_code_is_handled(guest):
    """All 256 types x a few codes: only echo requests (code 0) are answered,
    everything else is counted under drop_icmp_type."""
    n = 0
    for t in range(256):
        for code in (0, 1, 255):
            guest.send(Ether(dst=GW_MAC, src=GUEST_MAC) / IP(src=GUEST, dst=GW)
                       / ICMP(type=t, code=code, id=1, seq=n) / b"12345678")
            n += 1
    outs = guest.out()
    c = guest.counters()
    assert len(outs) == c["icmp_echo_local"] == 1
    assert c["drop_icmp_type"] == n - 1
    assert drops(c) == {"drop_icmp_type": n - 1}


def test_every_icmpv6_type_is_handled(make_guest):
    g = make_guest(ipv6=True)
    for t in range(256):
        g.send(Ether(dst=GW6_MAC, src=GUEST_MAC) / IPv6(src=GUEST6, dst=GW6, hlim=255)
               / ICMPv6EchoRequest(type=t, id=1, seq=t) / b"12345678")
    c = g.counters()
    assert c["icmp_echo_local"] == 1
    assert set(drops(c)) <= {"drop_icmp_type", "drop_icmp_malformed", "drop_not_for_us"}
    still_answers(g)


def test_ip_options_are_tolerated(guest):
    """A router-alert option: the header is longer, the ping still works."""
    guest.send(Ether(dst=GW_MAC, src=GUEST_MAC)
               / IP(src=GUEST, dst=GW, options=b"\x94\x04\x00\x00") / ICMP(id=5, seq=1))
    (out,) = guest.out()
    assert out.pkt[ICMP].type == 0 and out.pkt[ICMP].id == 5


def test_hop_by_hop_and_dest_options_chain_is_walked(make_guest):
    g = make_guest(ipv6=True)
    g.send(Ether(dst=GW6_MAC, src=GUEST_MAC) / IPv6(src=GUEST6, dst=GW6) / IPv6ExtHdrHopByHop()
           / IPv6ExtHdrDestOpt() / ICMPv6EchoRequest(id=4, seq=2, data=b"chain"))
    outs = g.out()
    assert any(o.pkt.haslayer("ICMPv6EchoReply") for o in outs)
    assert drops(g.counters()) == {}


def test_dns_mac_frames_are_not_misrouted(guest):
    """A UDP datagram to N+3 on a port other than 53 is refused (ICMP port
    unreachable), not forwarded anywhere."""
    guest.send(Ether(dst=DNS_MAC, src=GUEST_MAC) / IP(src=GUEST, dst="10.0.2.3")
               / UDP(sport=40000, dport=54) / b"q")
    outs = guest.out()
    assert [(o.pkt[ICMP].type, o.pkt[ICMP].code) for o in outs if ICMP in o.pkt] == [(3, 3)]
    assert guest.counters()["udp_flows_opened"] == 0


# ------------------------------------------------------------------ caps


def test_udp_sweep_at_the_cap_evicts_the_least_recently_used_flow(make_guest, socks):
    """Found by the hostile-guest port sweep: at the UDP cap new flows were
    refused until the idle timeout (60 s), so after a sweep the guest could not
    even resolve names. Now the least recently used UDP flow makes room."""
    from slirpy.engine import Limits

    g = make_guest(limits=Limits(max_udp_flows=8))
    first = socks.udp()
    for i in range(8):
        g.send(Ether(dst=GW_MAC, src=GUEST_MAC) / IP(src=GUEST, dst=GW)
               / UDP(sport=30000 + i, dport=first.getsockname()[1]) / b"sweep")
        g.clock.advance(0.001)
    server = socks.udp()
    g.send(Ether(dst=GW_MAC, src=GUEST_MAC) / IP(src=GUEST, dst=GW)
           / UDP(sport=40000, dport=server.getsockname()[1]) / b"after the sweep")
    data, _ = server.recvfrom(100)
    assert data == b"after the sweep"
    c = g.counters()
    assert c["flows_evicted"] == 1 and c["drop_flow_cap"] == 0
    assert c["udp_flows_opened"] == 9 and c["udp_flows_closed"] == 1
    ports = sorted(f["guest_port"] for f in g.engine.flows())
    assert ports == [*range(30001, 30008), 40000]  # 30000 was the oldest


def test_tcp_cap_refuses_and_never_evicts(make_guest, socks):
    from slirpy.engine import Limits

    g = make_guest(limits=Limits(max_tcp_flows=2))
    ls = socks.tcp_listener()
    port = ls.getsockname()[1]
    for i in range(3):
        g.send(Ether(dst=GW_MAC, src=GUEST_MAC) / IP(src=GUEST, dst=GW)
               / TCP(sport=30000 + i, dport=port, flags="S", seq=1))
    c = g.counters()
    assert c["tcp_flows_opened"] == 2 and c["drop_flow_cap"] == 1
    assert c["flows_evicted"] == 0


_FD_LIMIT_SCRIPT = r"""
import json, os, resource, socket, sys
sys.path.insert(0, sys.argv[1])  # the repository root: tests.helpers, slirpy
from tests.helpers.frames import GUEST, GUEST_MAC, GW, GW_MAC, IP, UDP, Ether, raw
from slirpy.config import NetworkModel
from slirpy.engine import Engine, Limits
soft, n, limits = int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, max(soft, hard)))
sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sink.bind(("127.0.0.1", 0))
port = sink.getsockname()[1]
e = Engine(NetworkModel(), vnet_hdr=False, limits=Limits(**limits))
template = raw(Ether(dst=GW_MAC, src=GUEST_MAC) / IP(src=GUEST, dst=GW)
               / UDP(sport=20000, dport=port) / b"x")
peak = 0
for i in range(n):
    # The source port, and the UDP checksum 0 (none) so it stays valid.
    sport = (20000 + i).to_bytes(2, "big")
    frame = template[:34] + sport + template[36:40] + b"\0\0" + template[42:]
    e.input_frame(frame, 10**9 + i * 10**6)
    if i % 100 == 0 or i == n - 1:
        peak = max(peak, len(os.listdir("/proc/self/fd")))
c = e.counters()
print(json.dumps({"peak_fds": peak, "flows": len(e.flows()), **c}))
"""


def _sweep(soft: int, n: int, **limits: int) -> dict[str, int]:
    """Sweep @n UDP ports from the guest in a child process whose
    RLIMIT_NOFILE is @soft; return the engine's counters and fd figures."""
    import json
    import pathlib
    import subprocess
    import sys

    repo = pathlib.Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-c", _FD_LIMIT_SCRIPT, str(repo), str(soft), str(n),
                        json.dumps(limits)], capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.splitlines()[-1])


def test_flow_caps_stay_under_the_fd_limit():
    """With RLIMIT_NOFILE at 512 the default caps (3840 sockets) cannot all
    be honoured: the engine scales them down to leave 256 fds to the control
    plane, so 600 UDP flows evict instead of failing with EMFILE."""
    c = _sweep(512, 600)
    assert c["drop_socket_error"] == 0
    assert c["udp_datagrams_to_host"] == 600
    assert c["flows_evicted"] > 0
    assert c["flows"] == c["udp_flows_opened"] - c["udp_flows_closed"] <= 256
    assert c["peak_fds"] < 512 - 128


def _high_nofile() -> int:
    """16384 if the sweep's child may set RLIMIT_NOFILE that high (within
    the hard limit, or as root, which CI is), else 0."""
    import os
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] >= 16384:
        return 16384
    with open("/proc/sys/fs/nr_open") as f:
        return 16384 if os.geteuid() == 0 and int(f.read()) >= 16384 else 0


def test_default_caps_stay_under_4096_fds_with_a_high_fd_limit():
    """Issue 8: with RLIMIT_NOFILE at 16384 the old defaults (4096 UDP flows)
    let a port sweep hold 4100+ sockets. The defaults (1856 TCP, 1856 UDP,
    128 ICMP: 3840 sockets) keep the engine under 4096 fds whatever the
    limit: the sweep evicts from the 1857th flow on."""
    soft = _high_nofile()
    if not soft:
        pytest.skip("cannot raise RLIMIT_NOFILE to 16384")
    c = _sweep(soft, 2400)
    assert c["drop_socket_error"] == 0 and c["drop_flow_cap"] == 0
    assert c["udp_datagrams_to_host"] == 2400
    assert c["flows"] == 1856
    assert c["flows_evicted"] == 2400 - 1856
    assert c["peak_fds"] < 4096 - 256


def test_explicit_limit_raises_the_cap_where_the_fd_limit_allows():
    """--limit max_udp_flows=3000 under a 16384-fd limit: 2400 flows, no
    eviction; the default 3840-socket budget is only a default."""
    soft = _high_nofile()
    if not soft:
        pytest.skip("cannot raise RLIMIT_NOFILE to 16384")
    c = _sweep(soft, 2400, max_udp_flows=3000)
    assert c["drop_socket_error"] == 0 and c["drop_flow_cap"] == 0
    assert c["flows"] == 2400 and c["flows_evicted"] == 0
    assert c["peak_fds"] > 2400


# ------------------------------------------------- TCP state-machine abuse


def _conn(g, socks, **kw):
    lst = socks.tcp_listener()
    c = Conn(g, lst.getsockname()[1], **kw)
    c.handshake()
    return c, socks.accept(lst)


def _still_works(c, h) -> None:
    c.send(b"still here")
    assert h.recv(100) == b"still here"
    h.sendall(b"and back")
    c.pump(len(c.received) + 8)
    assert bytes(c.received).endswith(b"and back")


@pytest.mark.parametrize("abuse", [
    "ack-from-the-future", "data-far-ahead", "data-far-behind", "syn-on-established",
    "zero-window-then-open", "huge-window-scale-ack", "fin-far-ahead", "urgent-pointer",
])
def test_tcp_abuse_on_an_established_flow_is_contained(guest, socks, abuse):
    """Nonsense from the guest on a live connection: nothing reaches the host
    out of order, nothing is counted as sent that was not, and the connection
    still carries data both ways afterwards."""
    c, h = _conn(guest, socks)
    far = (c.snd_nxt + 0x40000000) & 0xFFFFFFFF
    if abuse == "ack-from-the-future":
        c.g.send(c.seg("A", ack=(c.rcv_nxt + 100000) & 0xFFFFFFFF))
    elif abuse == "data-far-ahead":
        c.g.send(c.seg("PA", b"X" * 100, seq=far))
    elif abuse == "data-far-behind":
        c.g.send(c.seg("PA", b"Y" * 100, seq=(c.snd_nxt - 0x40000000) & 0xFFFFFFFF))
    elif abuse == "syn-on-established":
        c.g.send(c.seg("S", seq=far))
    elif abuse == "zero-window-then-open":
        c.send_ack(window=0)
        h.sendall(b"Z" * 5000)
        guest.settle(0.1)
        for _ in range(5):
            guest.advance(2)  # window probes, bounded
        c.send_ack()
        c.pump(5000)
        assert bytes(c.received) == b"Z" * 5000
    elif abuse == "huge-window-scale-ack":
        c.g.send(c.seg("A", window=65535 << 7))
    elif abuse == "fin-far-ahead":
        c.g.send(c.seg("FA", seq=far))
    elif abuse == "urgent-pointer":
        c.send(b"U", flags="PAU")
        assert h.recv(10) == b"U"
    guest.settle(0.05)
    assert guest.engine.flows() != []
    _still_works(c, h)
    c_ = guest.counters()
    assert c_["tcp_bytes_to_host"] == len(b"still here") + (1 if abuse == "urgent-pointer" else 0)
