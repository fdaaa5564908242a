"""Engine, link and network layer: ARP, ICMP echo, fault injection."""

from __future__ import annotations

import pytest
from scapy.layers.inet6 import ICMPv6DestUnreach

from tests.helpers.frames import (
    ARP,
    BCAST,
    DNS,
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
    UDP,
    Ether,
    IPv6,
    arp_request,
    check_l4_csum,
    ip4,
    raw,
    tcp6,
)


@pytest.mark.parametrize("target,mac", [(GW, GW_MAC), (DNS, DNS_MAC)])
def test_arp_for_gateway_and_dns_is_answered(guest, target, mac):
    guest.send(arp_request(target))
    (out,) = guest.out()
    p = out.pkt
    assert p[Ether].dst == GUEST_MAC and p[Ether].src == mac and p[Ether].type == 0x0806
    a = p[ARP]
    assert (a.hwtype, a.ptype, a.hwlen, a.plen, a.op) == (1, 0x0800, 6, 4, 2)
    assert a.hwsrc == mac and a.psrc == target
    assert a.hwdst == GUEST_MAC and a.pdst == GUEST
    assert guest.counters()["arp_replies"] == 1


@pytest.mark.parametrize("target", ["10.0.2.100", "10.0.2.1", "10.0.2.4", "192.0.2.1"])
def test_arp_for_other_hosts_is_not_answered(guest, target):
    guest.send(arp_request(target))
    assert guest.out() == []
    c = guest.counters()
    assert c["arp_replies"] == 0 and c["drop_not_for_us"] == 1


def test_arp_reply_from_guest_is_ignored(guest):
    guest.send(Ether(dst=GW_MAC, src=GUEST_MAC) /
               ARP(op=2, hwsrc=GUEST_MAC, psrc=GUEST, hwdst=GW_MAC, pdst=GW))
    assert guest.out() == []
    assert guest.counters()["drop_not_for_us"] == 1


@pytest.mark.parametrize("mangle", [
    lambda b: b[:14 + 27],                       # one byte short
    lambda b: b[:14 + 4] + b"\x08" + b[19:],     # hlen 8
    lambda b: b[:14 + 5] + b"\x10" + b[20:],     # plen 16
    lambda b: b[:14] + b"\x00\x06" + b[16:],     # htype 6 (IEEE 802)
    lambda b: b[:16] + b"\x86\xdd" + b[18:],     # ptype IPv6
    lambda b: b[:14],                            # no ARP body at all
])
def test_malformed_arp_is_dropped_and_counted(guest, mangle):
    frame = mangle(raw(arp_request(GW)))
    guest.send(frame)
    assert guest.out() == []
    c = guest.counters()
    assert c["drop_arp_malformed"] == 1 and c["arp_replies"] == 0


@pytest.mark.parametrize("dst", [GW, DNS])
def test_ping_to_gateway_and_dns_is_answered_locally(guest, dst):
    payload = bytes(range(256)) * 3 + b"odd"
    guest.send(ip4(dst) / ICMP(type=8, id=0x1234, seq=77) / payload)
    (out,) = guest.out()
    p = out.pkt
    assert p[Ether].dst == GUEST_MAC
    assert p[Ether].src == (GW_MAC if dst == GW else DNS_MAC)
    assert p[IP].src == dst and p[IP].dst == GUEST and p[IP].proto == 1
    icmp = p[ICMP]
    assert (icmp.type, icmp.code, icmp.id, icmp.seq) == (0, 0, 0x1234, 77)
    assert bytes(icmp.payload) == payload
    check_l4_csum(p)
    assert guest.counters()["icmp_echo_local"] == 1


def test_ping_is_answered_even_without_host_loopback(make_guest):
    g = make_guest(host_loopback=False)
    g.send(ip4(GW) / ICMP(type=8, id=1, seq=1) / b"x")
    (out,) = g.out()
    assert out.pkt[ICMP].type == 0


@pytest.mark.parametrize("icmp", [
    ICMP(type=13),                       # timestamp
    ICMP(type=0, id=1, seq=1),           # echo reply
    ICMP(type=3, code=3),                # unreachable
    ICMP(type=5, code=1),                # redirect
    ICMP(type=8, code=1, id=1, seq=1),   # echo with a non-zero code
])
def test_other_icmp_types_are_dropped_and_counted(guest, icmp):
    guest.send(ip4(GW) / icmp / b"12345678")
    assert guest.out() == []
    c = guest.counters()
    assert c["drop_icmp_type"] == 1 and c["icmp_echo_local"] == 0


def test_short_icmp_is_malformed(guest):
    guest.send(ip4(GW, proto=1) / b"\x08\x00\x00")
    assert guest.out() == []
    assert guest.counters()["drop_icmp_malformed"] == 1


def test_guest_mac_is_learned_from_its_frames(guest):
    other = "02:11:22:33:44:55"
    guest.send(Ether(dst=BCAST, src=other) / ARP(op=1, hwsrc=other, psrc=GUEST, pdst=GW))
    (out,) = guest.out()
    assert out.pkt[Ether].dst == other
    guest.send(Ether(dst=GW_MAC, src=other) / IP(src=GUEST, dst=GW) / ICMP(id=1, seq=2))
    (out,) = guest.out()
    assert out.pkt[Ether].dst == other


def test_fault_injection_drops_are_counted_both_ways(guest):
    guest.engine.set_fault(500, 0, seed=42)
    for i in range(200):
        guest.send(ip4(GW) / ICMP(type=8, id=1, seq=i))
    replies = guest.out()
    c = guest.counters()
    assert c["frames_in"] == 200
    assert 40 < c["drop_fault_in"] < 160
    assert len(replies) == c["icmp_echo_local"] == 200 - c["drop_fault_in"]

    guest.engine.set_fault(0, 1000, seed=7)
    guest.send(ip4(GW) / ICMP(type=8, id=1, seq=1))
    assert guest.out() == []
    assert guest.counters()["drop_fault_out"] == 1

    guest.engine.set_fault(0, 0, seed=1)
    guest.send(ip4(GW) / ICMP(type=8, id=1, seq=2))
    assert len(guest.out()) == 1


def test_fault_injection_is_deterministic(make_guest):
    kept = []
    for _ in range(2):
        g = make_guest()
        g.engine.set_fault(300, 0, seed=1234)
        for i in range(50):
            g.send(ip4(GW) / ICMP(type=8, id=9, seq=i))
        kept.append([o.pkt[ICMP].seq for o in g.out()])
    assert kept[0] == kept[1] and 0 < len(kept[0]) < 50


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_ipv6_host_loopback_disabled_gives_no_route(make_guest, proto):
    """The IPv6 mirror of test_udp_without_host_loopback_gives_net_unreachable:
    with host loopback disabled, a TCP SYN or a UDP datagram to prefix::2
    (N+2's IPv6 counterpart) gets ICMPv6 destination unreachable code 0 (no
    route to destination) from prefix::2, quoting the offending packet whole;
    no flow is opened."""
    g = make_guest(ipv6=True, host_loopback=False)
    if proto == "tcp":
        sent = tcp6(7777, sport=40001)
    else:
        sent = Ether(dst=GW6_MAC, src=GUEST_MAC) / IPv6(src=GUEST6, dst=GW6) / UDP(
            sport=40002, dport=7777) / b"let me in"
    g.send(sent)
    (out,) = g.out()
    p = out.pkt
    assert p[Ether].dst == GUEST_MAC and p[Ether].src == GW6_MAC
    assert p[IPv6].src == GW6 and p[IPv6].dst == GUEST6 and p[IPv6].nh == 58
    assert (p[ICMPv6DestUnreach].type, p[ICMPv6DestUnreach].code) == (1, 0)
    check_l4_csum(p)
    assert raw(p[ICMPv6DestUnreach].payload) == raw(sent[IPv6])
    c = g.counters()
    assert c["icmp_unreach_sent"] == 1
    assert c["tcp_flows_opened"] == 0 and c["udp_flows_opened"] == 0
