"""Engine, UDP: loopback servers through the gateway, unreachables, expiry,
DNS redirect, DHCP punt."""

from __future__ import annotations

import socket

from slirpy.engine import EV_DHCP, Limits
from tests.helpers.frames import (
    DNS,
    DNS6_MAC,
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
    check_l4_csum,
    ip6,
    raw,
    udp4,
)


def udp_outs(outs):
    return [o for o in outs if UDP in o.pkt and ICMP not in o.pkt]


def test_udp_to_gateway_reaches_loopback_server_and_back(guest, socks):
    srv = socks.udp()
    port = srv.getsockname()[1]
    guest.send(udp4(port, b"ping over udp", sport=5353))
    data, peer = srv.recvfrom(2048)
    assert data == b"ping over udp"
    assert peer[0] == "127.0.0.1"
    c = guest.counters()
    assert c["udp_flows_opened"] == 1 and c["udp_datagrams_to_host"] == 1

    reply = bytes(range(256)) * 4 + b"!"
    srv.sendto(reply, peer)
    (out,) = udp_outs(guest.wait())
    p = out.pkt
    assert p[Ether].src == GW_MAC and p[Ether].dst == GUEST_MAC
    assert p[IP].src == GW and p[IP].dst == GUEST
    assert p[UDP].sport == port and p[UDP].dport == 5353
    assert p[UDP].len == 8 + len(reply)
    assert bytes(p[UDP].payload) == reply
    check_l4_csum(p)
    assert guest.counters()["udp_datagrams_to_guest"] == 1

    # the same 5-tuple reuses the flow (and its socket: same peer port)
    guest.send(udp4(port, b"again", sport=5353))
    data, peer2 = srv.recvfrom(2048)
    assert data == b"again" and peer2 == peer
    assert guest.counters()["udp_flows_opened"] == 1


def test_udp_empty_datagram_and_odd_lengths(guest, socks):
    srv = socks.udp()
    port = srv.getsockname()[1]
    for size in (0, 1, 7, 1472):
        guest.send(udp4(port, b"\xa5" * size, sport=6000 + size))
        data, peer = srv.recvfrom(4096)
        assert data == b"\xa5" * size
        srv.sendto(b"\x5a" * size, peer)
        (out,) = udp_outs(guest.wait())
        assert bytes(out.pkt[UDP].payload) == b"\x5a" * size
        check_l4_csum(out.pkt)


def test_udp_reply_larger_than_mtu_is_dropped_and_counted(guest, socks):
    srv = socks.udp()
    port = srv.getsockname()[1]
    guest.send(udp4(port, b"q"))
    _, peer = srv.recvfrom(100)
    srv.sendto(b"x" * 1473, peer)       # 1473 + 28 > 1500
    srv.sendto(b"y" * 1472, peer)
    outs = udp_outs(guest.wait())
    assert [len(o.pkt[UDP].payload) for o in outs] == [1472]
    assert guest.counters()["drop_udp_too_big"] == 1


def test_udp_closed_port_gives_icmp_port_unreachable(guest, socks):
    port = socks.closed_port(socket.SOCK_DGRAM)
    guest.send(udp4(port, b"anyone?", sport=7777))
    outs = guest.wait(lambda o: any(ICMP in x.pkt for x in o))
    icmps = [o for o in outs if ICMP in o.pkt]
    assert len(icmps) == 1
    p = icmps[0].pkt
    assert p[Ether].src == GW_MAC and p[Ether].dst == GUEST_MAC
    assert p[IP].src == GW and p[IP].dst == GUEST
    assert (p[ICMP].type, p[ICMP].code) == (3, 3)
    check_l4_csum(p)
    quoted = IP(raw(p[ICMP].payload))
    assert quoted[IP].src == GUEST and quoted[IP].dst == GW
    assert quoted[UDP].sport == 7777 and quoted[UDP].dport == port
    assert guest.counters()["icmp_unreach_sent"] == 1


def test_udp_without_host_loopback_gives_net_unreachable(make_guest, socks):
    g = make_guest(host_loopback=False)
    srv = socks.udp()
    port = srv.getsockname()[1]
    sent = udp4(port, b"let me in", sport=1234)
    g.send(sent)
    (out,) = g.out()
    p = out.pkt
    assert p[IP].src == GW and p[IP].dst == GUEST
    # Code 9 (net administratively prohibited): a fatal ENETUNREACH in Linux.
    assert (p[ICMP].type, p[ICMP].code) == (3, 9)
    check_l4_csum(p)
    assert raw(p[ICMP].payload) == raw(sent[IP])     # the whole datagram, quoted
    srv.settimeout(0.1)
    try:
        srv.recvfrom(100)
        raise AssertionError("datagram reached host loopback")
    except TimeoutError:
        pass
    c = g.counters()
    assert c["udp_flows_opened"] == 0 and c["udp_datagrams_to_host"] == 0


def test_udp_flow_expires_after_idle_timeout(make_guest, socks):
    g = make_guest(limits=Limits(udp_idle_s=30))
    srv = socks.udp()
    port = srv.getsockname()[1]
    g.send(udp4(port, b"hello"))
    _, peer = srv.recvfrom(100)
    assert len(g.engine.flows()) == 1
    g.advance(29)
    assert g.counters()["udp_flows_closed"] == 0 and len(g.engine.flows()) == 1
    g.advance(2)
    assert g.counters()["udp_flows_closed"] == 1 and g.engine.flows() == []
    # the socket is gone: a late reply goes nowhere, and a new datagram
    # opens a new flow from a new socket
    srv.sendto(b"late", peer)
    assert udp_outs(g.settle(0.05)) == []
    g.send(udp4(port, b"again"))
    data, peer2 = srv.recvfrom(100)
    assert data == b"again" and peer2 != peer
    assert g.counters()["udp_flows_opened"] == 2


def test_udp_traffic_keeps_flow_alive(make_guest, socks):
    g = make_guest(limits=Limits(udp_idle_s=10))
    srv = socks.udp()
    port = srv.getsockname()[1]
    for _ in range(4):
        g.send(udp4(port, b"k"))
        srv.recvfrom(10)
        g.advance(6)
    assert g.counters()["udp_flows_closed"] == 0


def test_udp_to_dns_address_is_redirected_to_forwarder(make_guest, socks):
    fwd = socks.udp()
    g = make_guest(dns_udp_port=fwd.getsockname()[1])
    g.send(udp4(53, b"\x12\x34query", dst=DNS, sport=33333))
    data, peer = fwd.recvfrom(512)
    assert data == b"\x12\x34query"
    fwd.sendto(b"\x12\x34answer", peer)
    (out,) = udp_outs(g.wait())
    p = out.pkt
    assert p[Ether].src == DNS_MAC
    assert p[IP].src == DNS and p[UDP].sport == 53 and p[UDP].dport == 33333
    assert bytes(p[UDP].payload) == b"\x12\x34answer"
    check_l4_csum(p)


def test_udp_to_dns_address_other_port_is_port_unreachable(make_guest, socks):
    fwd = socks.udp()
    g = make_guest(dns_udp_port=fwd.getsockname()[1])
    g.send(udp4(54, b"x", dst=DNS))
    (out,) = g.out()
    assert (out.pkt[ICMP].type, out.pkt[ICMP].code) == (3, 3)


def test_udp_to_dns_when_dns_disabled_is_port_unreachable(make_guest, socks):
    fwd = socks.udp()
    g = make_guest(dns_enabled=False, dns_udp_port=fwd.getsockname()[1])
    g.send(udp4(53, b"x", dst=DNS))
    (out,) = g.out()
    assert (out.pkt[ICMP].type, out.pkt[ICMP].code) == (3, 3)


def test_dhcp_is_punted_to_python(guest):
    g = guest
    g.send(Ether(dst="ff:ff:ff:ff:ff:ff", src=GUEST_MAC) /
           IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) /
           b"\x01\x01\x06\x00dhcp")
    assert g.out() == []
    (ev,) = list(g.engine.events())
    assert ev.type == EV_DHCP and ev.mac == bytes.fromhex(GUEST_MAC.replace(":", ""))
    assert str(ev.src) == "0.0.0.0" and str(ev.dst) == "255.255.255.255"
    assert (ev.sport, ev.dport) == (68, 67)
    assert ev.data == b"\x01\x01\x06\x00dhcp"


def test_udp6_to_gateway_reaches_loopback6_server(guest6, socks):
    srv = socks.udp(socket.AF_INET6)
    port = srv.getsockname()[1]
    guest6.send(ip6() / UDP(sport=4000, dport=port) / b"v6 datagram")
    data, peer = srv.recvfrom(100)
    assert data == b"v6 datagram" and peer[0] == "::1"
    srv.sendto(b"v6 reply", peer)
    (out,) = udp_outs(guest6.wait())
    p = out.pkt
    assert p[Ether].src == GW6_MAC and p[Ether].dst == GUEST_MAC
    assert p[IPv6].src == GW6 and p[IPv6].dst == GUEST6
    assert (p[UDP].sport, p[UDP].dport) == (port, 4000)
    assert bytes(p[UDP].payload) == b"v6 reply"
    check_l4_csum(p)


def test_udp6_to_dns6_is_redirected_to_forwarder(make_guest, socks):
    fwd = socks.udp()
    g = make_guest(ipv6=True, dns_udp_port=fwd.getsockname()[1])
    g.send(ip6("fd00::3") / UDP(sport=4001, dport=53) / b"q6")
    data, peer = fwd.recvfrom(100)
    assert data == b"q6"
    fwd.sendto(b"a6", peer)
    (out,) = udp_outs(g.wait())
    p = out.pkt
    assert p[Ether].src == DNS6_MAC and p[IPv6].src == "fd00::3"
    assert p[UDP].sport == 53 and bytes(p[UDP].payload) == b"a6"
    check_l4_csum(p)
