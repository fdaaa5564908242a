"""Engine, egress policy (csrc/policy.c): the verdict at flow creation, the
guest's answers (RST, ICMP administratively prohibited), live replacement
closing denied flows, hit counters, the deny event, a property test of the
compiled matcher against a straightforward reference matcher, and a short
run of its libFuzzer target (tests/fuzz/fuzz_policy.c, a reference in C).

Traffic: allowed flows go to the gateway only (host loopback, 127.0.0.1 /
::1). Denied flows may name any address: a denied flow makes no socket.
The property test names addresses outside the machine too, so its engine
binds outbound sockets to 192.0.2.1 / 2001:db8::1, which no interface has:
every allowed non-loopback flow then fails at bind(), before any packet.
"""

from __future__ import annotations

import errno
import glob
import ipaddress
import itertools
import os
import pathlib
import re
import select
import shutil
import socket
import struct
import subprocess
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slirpy.config import NetworkModel
from slirpy.engine import (
    EV_POLICY_DENY,
    PM_CIDR,
    PM_HOST,
    POLICY_ALLOW,
    POLICY_DEFAULT_RULE,
    POLICY_DENY,
    PP_ICMP,
    PP_TCP,
    PP_UDP,
    Engine,
    EngineError,
    PolicyRule,
)
from tests.helpers.engine_guest import Guest
from tests.helpers.frames import (
    DNS,
    DNS6,
    GUEST,
    GUEST6,
    GW,
    GW6,
    ICMP,
    IP,
    TCP,
    UDP,
    ICMPv6EchoRequest,
    IPv6,
    ip4,
    ip6,
    tcp4,
    tcp6,
    tcp_flags,
    udp4,
)
from tests.helpers.tcp_conn import Conn, established

TEST_NET = "198.18.0.5"  # never reached: only denied flows name it
TEST_NET6 = "2001:db8::5"


def cidr(rule_id: int, action: int, net: str, *, protos: int = 0,
         ports: tuple[int, int] = (0, 65535)) -> PolicyRule:
    n = ipaddress.ip_network(net, strict=False)
    return PolicyRule(rule_id=rule_id, action=action, match=PM_CIDR, family=n.version,
                      prefix_len=n.prefixlen, addr=n.network_address.packed,
                      proto_mask=protos, port_lo=ports[0], port_hi=ports[1])


def host(rule_id: int, action: int, *, protos: int = 0,
         ports: tuple[int, int] = (0, 65535)) -> PolicyRule:
    return PolicyRule(rule_id=rule_id, action=action, match=PM_HOST, proto_mask=protos,
                      port_lo=ports[0], port_hi=ports[1])


def deny_all(g: Guest) -> None:
    g.engine.set_policy([], default_allow=False, nids=0)


def udp6(dport: int, payload: bytes = b"", *, sport: int = 40000, dst: str = GW6):
    return ip6(dst) / UDP(sport=sport, dport=dport) / payload


def echo4(dst: str, ident: int = 7):
    return ip4(dst) / ICMP(type=8, id=ident, seq=1) / b"ping"


def echo6(dst: str, ident: int = 7):
    return ip6(dst) / ICMPv6EchoRequest(id=ident, seq=1, data=b"ping")


def assert_rst_for_syn(outs, seq: int = 1000) -> None:
    (out,) = [o for o in outs if TCP in o.pkt]
    assert tcp_flags(out.pkt) == "RA"
    assert out.pkt[TCP].ack == seq + 1


def assert_admin_prohibited(outs, family: int) -> None:
    if family == 4:
        (out,) = [o for o in outs if ICMP in o.pkt]
        assert (out.pkt[ICMP].type, out.pkt[ICMP].code) == (3, 13)
        assert out.pkt[IP].src == GW and out.pkt[IP].dst == GUEST
    else:
        (out,) = [o for o in outs if IPv6 in o.pkt and o.pkt[IPv6].nh == 58]
        icmp6 = bytes(out.pkt[IPv6].payload)
        assert (icmp6[0], icmp6[1]) == (1, 1)
        assert out.pkt[IPv6].src == GW6 and out.pkt[IPv6].dst == GUEST6


def no_connection(listener: socket.socket) -> bool:
    r, _, _ = select.select([listener], [], [], 0)
    return not r


# ------------------------------------------------------------------ TCP


def test_no_policy_at_start_lets_everything_through(guest, socks):
    c, _ = established(guest, socks)
    assert c.synack is not None
    assert guest.engine.policy_hits(0) == [0]
    assert guest.counters()["policy_denied"] == 0


@pytest.mark.parametrize("family", [4, 6])
def test_tcp_allowed_by_rule_connects(make_guest, socks, family):
    g = make_guest(ipv6=True)
    gw = GW if family == 4 else GW6
    g.engine.set_policy([cidr(0, POLICY_ALLOW, gw, protos=PP_TCP)], default_allow=False,
                        nids=1)
    lst = socks.tcp_listener(socket.AF_INET if family == 4 else socket.AF_INET6)
    c = Conn(g, lst.getsockname()[1], family=family)
    c.handshake()
    socks.accept(lst)
    assert g.counters()["tcp_flows_opened"] == 1
    assert g.engine.policy_hits(1) == [1, 0]


@pytest.mark.parametrize("family", [4, 6])
def test_tcp_denied_syn_gets_rst_and_no_socket(make_guest, socks, family):
    g = make_guest(ipv6=True)
    deny_all(g)
    lst = socks.tcp_listener(socket.AF_INET if family == 4 else socket.AF_INET6)
    port = lst.getsockname()[1]
    g.send(tcp4(port) if family == 4 else tcp6(port))
    assert_rst_for_syn(g.out())
    c = g.counters()
    assert c["tcp_flows_opened"] == 0 and c["policy_denied"] == 1
    assert g.engine.flows() == []
    assert no_connection(lst)
    # Again: a retransmitted SYN is refused the same way (no flow was kept).
    g.send(tcp4(port) if family == 4 else tcp6(port))
    assert_rst_for_syn(g.out())
    assert g.engine.policy_hits(0) == [2]


@pytest.mark.parametrize("family", [4, 6])
def test_tcp_denied_to_a_remote_address(make_guest, family):
    g = make_guest(ipv6=True)
    dst = TEST_NET if family == 4 else TEST_NET6
    g.engine.set_policy([cidr(0, POLICY_DENY, dst)], default_allow=True, nids=1)
    g.send(tcp4(443, dst=dst) if family == 4 else tcp6(443, dst=dst))
    assert_rst_for_syn(g.out())
    assert g.counters()["tcp_flows_opened"] == 0
    assert g.engine.policy_hits(1) == [1, 0]


# ------------------------------------------------------------------ UDP


@pytest.mark.parametrize("family", [4, 6])
def test_udp_denied_gets_admin_prohibited(make_guest, socks, family):
    g = make_guest(ipv6=True)
    deny_all(g)
    srv = socks.udp(socket.AF_INET if family == 4 else socket.AF_INET6)
    port = srv.getsockname()[1]
    g.send(udp4(port, b"x") if family == 4 else udp6(port, b"x"))
    assert_admin_prohibited(g.out(), family)
    c = g.counters()
    assert c["udp_flows_opened"] == 0 and c["policy_denied"] == 1
    r, _, _ = select.select([srv], [], [], 0)
    assert not r


@pytest.mark.parametrize("family", [4, 6])
def test_udp_allowed_reaches_the_host(make_guest, socks, family):
    g = make_guest(ipv6=True)
    gw = GW if family == 4 else GW6
    g.engine.set_policy([cidr(0, POLICY_ALLOW, gw, protos=PP_UDP)], default_allow=False,
                        nids=1)
    srv = socks.udp(socket.AF_INET if family == 4 else socket.AF_INET6)
    port = srv.getsockname()[1]
    g.send(udp4(port, b"hello") if family == 4 else udp6(port, b"hello"))
    assert srv.recv(100) == b"hello"
    assert g.counters()["udp_flows_opened"] == 1


# ------------------------------------------------------------------ ICMP


@pytest.mark.parametrize("family", [4, 6])
def test_echo_denied_gets_admin_prohibited(make_guest, family):
    g = make_guest(ipv6=True)
    deny_all(g)
    g.send(echo4(TEST_NET) if family == 4 else echo6(TEST_NET6))
    assert_admin_prohibited(g.out(), family)
    c = g.counters()
    assert c["icmp_flows_opened"] == 0 and c["policy_denied"] == 1


def test_echo_to_the_gateway_is_local_and_never_filtered(guest):
    deny_all(guest)
    guest.send(echo4(GW))
    (out,) = guest.out()
    assert out.pkt[ICMP].type == 0
    assert guest.counters()["policy_denied"] == 0


def test_icmp_is_not_matched_by_a_port_range(make_guest):
    """A rule for some ports never matches ICMP; one for every port does."""
    g = make_guest()
    g.engine.set_policy([cidr(0, POLICY_ALLOW, "0.0.0.0/0", ports=(1, 65535)),
                         cidr(1, POLICY_DENY, "0.0.0.0/0", ports=(0, 65535))],
                        default_allow=True, nids=2)
    g.send(echo4(TEST_NET))
    assert_admin_prohibited(g.out(), 4)
    assert g.engine.policy_hits(2) == [0, 1, 0]


# ------------------------------------------------------------------ matching


def test_port_range_bounds(guest, socks):
    lst = socks.tcp_listener()
    port = lst.getsockname()[1]
    guest.engine.set_policy([cidr(0, POLICY_DENY, GW, protos=PP_TCP, ports=(port + 1, 65535)),
                             cidr(1, POLICY_DENY, GW, protos=PP_TCP, ports=(1, port - 1))],
                            default_allow=True, nids=2)
    guest.send(tcp4(port + 1, sport=40001))
    assert_rst_for_syn(guest.out())
    guest.send(tcp4(port - 1, sport=40002))
    assert_rst_for_syn(guest.out())
    c = Conn(guest, port, sport=40003)
    c.handshake()
    socks.accept(lst)
    assert guest.engine.policy_hits(2) == [1, 1, 1]


def test_proto_mask(guest, socks):
    guest.engine.set_policy([cidr(0, POLICY_DENY, "0.0.0.0/0", protos=PP_UDP | PP_ICMP)],
                            default_allow=True, nids=1)
    established(guest, socks)
    srv = socks.udp()
    guest.send(udp4(srv.getsockname()[1], b"x"))
    assert_admin_prohibited(guest.out(), 4)
    assert guest.engine.policy_hits(1) == [1, 1]


def test_host_rule_matches_the_gateway_only(make_guest):
    g = make_guest(ipv6=True)
    g.engine.set_policy([host(0, POLICY_DENY), cidr(1, POLICY_DENY, "0.0.0.0/0"),
                         cidr(1, POLICY_DENY, "::/0")], default_allow=True, nids=2)
    for pkt in (tcp4(80), tcp6(80), tcp4(80, dst=TEST_NET), tcp6(80, dst=TEST_NET6)):
        g.send(pkt)
        assert_rst_for_syn(g.out())
    assert g.engine.policy_hits(2) == [2, 2, 0]


def test_host_rule_covers_the_v4_broadcast_mapping(guest, socks):
    guest.engine.set_policy([host(0, POLICY_DENY, protos=PP_UDP)], default_allow=True, nids=1)
    guest.send(udp4(9, b"x", dst="255.255.255.255"))
    assert guest.counters()["policy_denied"] == 1
    assert guest.engine.policy_hits(1) == [1, 0]


@pytest.mark.parametrize("family", [4, 6])
def test_dns_to_the_forwarder_is_never_filtered(make_guest, socks, family):
    fwd = socks.udp()
    g = make_guest(ipv6=True, dns_udp_port=fwd.getsockname()[1])
    deny_all(g)
    if family == 4:
        g.send(udp4(53, b"\x12\x34query", dst=DNS))
    else:
        g.send(udp6(53, b"\x12\x34query", dst=DNS6))
    assert fwd.recv(100) == b"\x12\x34query"
    c = g.counters()
    assert c["policy_denied"] == 0 and c["udp_flows_opened"] == 1
    assert g.engine.policy_hits(0) == [0]
    # Another port of the DNS address is an ordinary destination.
    g.send(udp4(54, b"x", dst=DNS) if family == 4 else udp6(54, b"x", dst=DNS6))
    assert g.counters()["policy_denied"] == 0  # refused by the address map first


def test_dns_over_tcp_to_the_forwarder_is_never_filtered(make_guest, socks):
    lst = socks.tcp_listener()
    g = make_guest(dns_tcp_port=lst.getsockname()[1])
    deny_all(g)
    g.send(tcp4(53, dst=DNS))
    socks.accept(lst)
    assert g.counters()["policy_denied"] == 0


# ------------------------------------------------------------------ live change


def test_set_policy_closes_a_denied_tcp_flow(guest, socks):
    c, host_sock = established(guest, socks)
    guest.out()
    guest.engine.set_policy([cidr(0, POLICY_DENY, GW, protos=PP_TCP)], default_allow=True,
                            nids=1)
    (rst,) = [o for o in guest.out() if TCP in o.pkt]
    assert "R" in tcp_flags(rst.pkt)
    assert rst.pkt[TCP].dport == c.sport
    with pytest.raises(ConnectionResetError):
        host_sock.recv(10)
    ctr = guest.counters()
    assert ctr["policy_closed"] == 1 and ctr["tcp_flows_closed"] == 1
    assert guest.engine.flows() == []
    # Not a new flow: no hit.
    assert guest.engine.policy_hits(1) == [0, 0]


def test_set_policy_closes_a_denied_udp_flow_and_keeps_allowed(guest, socks):
    a, b = socks.udp(), socks.udp()
    guest.send(udp4(a.getsockname()[1], b"a", sport=1111))
    guest.send(udp4(b.getsockname()[1], b"b", sport=2222))
    assert a.recv(10) == b"a" and b.recv(10) == b"b"
    guest.engine.set_policy(
        [cidr(0, POLICY_DENY, GW, protos=PP_UDP, ports=(a.getsockname()[1],) * 2)],
        default_allow=True, nids=1)
    flows = guest.engine.flows()
    assert len(flows) == 1
    ctr = guest.counters()
    assert ctr["policy_closed"] == 1 and ctr["udp_flows_closed"] == 1
    guest.send(udp4(a.getsockname()[1], b"a", sport=1111))
    assert_admin_prohibited(guest.out(), 4)
    guest.send(udp4(b.getsockname()[1], b"b2", sport=2222))
    assert b.recv(10) == b"b2"


def test_set_policy_flow_close_event_says_policy(make_guest, socks):
    g = make_guest(flow_events=True)
    srv = socks.udp()
    g.send(udp4(srv.getsockname()[1], b"a"))
    srv.recv(10)
    list(g.engine.events())
    deny_all(g)
    evs = list(g.engine.events())
    closes = [e for e in evs if e.flow is not None and e.flow.reason]
    assert [e.flow.reason for e in closes] == ["policy"]
    assert [e.type for e in evs if e.type == EV_POLICY_DENY] == [EV_POLICY_DENY]


def test_inbound_forwarded_flows_are_not_closed(guest, socks):
    """A port forward's connection is not an outbound flow."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(4)
    port = lst.getsockname()[1]
    guest.engine.add_listener(lst.detach(), 6, ipaddress.ip_address(GUEST), 8080, 1)
    client = socks.add(socket.create_connection(("127.0.0.1", port), timeout=2))
    outs = guest.wait(lambda o: any(TCP in x.pkt and "S" in tcp_flags(x.pkt) for x in o))
    (syn,) = [o for o in outs if TCP in o.pkt]
    guest.send(tcp4(syn.pkt[TCP].sport, sport=8080, flags="SA", seq=5000,
                    ack=syn.pkt[TCP].seq + 1, dst=syn.pkt[IP].src))
    deny_all(guest)
    assert guest.counters()["policy_closed"] == 0
    assert len(guest.engine.flows()) == 1
    client.close()


def test_malformed_policy_changes_nothing(guest):
    guest.engine.set_policy([cidr(0, POLICY_DENY, TEST_NET)], default_allow=True, nids=1)
    bad = [cidr(0, POLICY_ALLOW, "0.0.0.0/0"),
           PolicyRule(rule_id=0, action=POLICY_DENY, family=4, prefix_len=33, addr=bytes(4))]
    with pytest.raises(EngineError) as ei:
        guest.engine.set_policy(bad, default_allow=True, nids=1)
    assert ei.value.errno == errno.EINVAL
    for rule in (PolicyRule(rule_id=0, action=3, addr=bytes(4)),
                 PolicyRule(rule_id=1, action=POLICY_DENY, addr=bytes(4)),  # id >= nids
                 PolicyRule(rule_id=0, action=POLICY_DENY, addr=bytes(4), port_lo=9,
                            port_hi=8),
                 PolicyRule(rule_id=0, action=POLICY_DENY, family=5, addr=bytes(16)),
                 PolicyRule(rule_id=0, action=POLICY_DENY, addr=bytes(4), proto_mask=8)):
        with pytest.raises(EngineError):
            guest.engine.set_policy([rule], default_allow=True, nids=1)
    with pytest.raises(EngineError) as ei:
        guest.engine.set_policy([], default_allow=True, nids=65537)
    assert ei.value.errno == errno.E2BIG
    guest.send(tcp4(80, dst=TEST_NET))
    assert_rst_for_syn(guest.out())  # the first policy still holds


def test_empty_allow_policy_is_no_policy(guest, socks):
    deny_all(guest)
    guest.engine.set_policy([], default_allow=True, nids=0)
    established(guest, socks)
    assert guest.engine.policy_hits(0) == [0]


# ------------------------------------------------------------------ events


def test_deny_event_fields_and_rate_limit(make_guest):
    g = make_guest(ipv6=True)
    g.engine.set_policy([cidr(0, POLICY_ALLOW, "10.9.0.0/16"), cidr(1, POLICY_DENY, TEST_NET)],
                        default_allow=False, nids=2)
    g.send(tcp4(443, sport=41000, dst=TEST_NET))
    g.send(tcp4(443, sport=41001, dst=TEST_NET))  # same destination: no second event
    g.send(tcp6(25, sport=41002, dst=TEST_NET6))
    evs = [e for e in g.engine.events() if e.type == EV_POLICY_DENY]
    assert len(evs) == 2
    e4, e6 = evs
    assert (e4.family, e4.proto, str(e4.src), e4.sport, str(e4.dst), e4.dport) == \
        (4, 6, GUEST, 41000, TEST_NET, 443)
    assert struct.unpack("<I", e4.data)[0] == 1
    assert (e6.family, str(e6.dst), e6.dport) == (6, TEST_NET6, 25)
    assert struct.unpack("<I", e6.data)[0] == POLICY_DEFAULT_RULE
    assert g.counters()["policy_events_suppressed"] == 1
    g.clock.advance(1.5)
    g.send(tcp4(443, sport=41003, dst=TEST_NET))
    assert [e.type for e in g.engine.events()] == [EV_POLICY_DENY]
    assert g.counters()["policy_denied"] == 4


def test_deny_event_for_udp_and_icmp(make_guest):
    g = make_guest()
    deny_all(g)
    g.send(udp4(5000, b"x", sport=1234, dst=TEST_NET))
    g.send(echo4("198.18.0.6", ident=77))
    e_udp, e_icmp = [e for e in g.engine.events() if e.type == EV_POLICY_DENY]
    assert (e_udp.proto, e_udp.sport, e_udp.dport) == (17, 1234, 5000)
    assert (e_icmp.proto, e_icmp.sport, e_icmp.dport) == (1, 77, 0)


# ------------------------------------------------------------------ property


@dataclass(frozen=True)
class Query:
    family: int
    proto: int  # PP_* bit
    dst: str
    port: int

    @property
    def host(self) -> bool:
        return self.dst in (GW, GW6)


def reference(rules: list[PolicyRule], default_allow: bool, q: Query) -> tuple[bool, int]:
    """(denied, rule_id or -1): the first rule that matches, in order."""
    addr = ipaddress.ip_address(q.dst)
    for r in rules:
        if r.match == PM_HOST:
            if not q.host:
                continue
        else:
            if r.family != q.family:
                continue
            if addr not in ipaddress.ip_network((r.addr, r.prefix_len), strict=False):
                continue
        if r.proto_mask and not r.proto_mask & q.proto:
            continue
        if q.proto == PP_ICMP:
            if (r.port_lo, r.port_hi) != (0, 65535):
                continue
        elif not r.port_lo <= q.port <= r.port_hi:
            continue
        return r.action == POLICY_DENY, r.rule_id
    return not default_allow, -1


# A small universe, so that rules and destinations overlap often: nets in
# 198.18/15, 203.0.113/24, 2001:db8::/32, and the gateway (the host).
V4_BASES = ["198.18.0.0", "198.18.7.0", "198.19.0.0", "203.0.113.0"]
V6_BASES = ["2001:db8::", "2001:db8:0:7::", "2001:db8:1::"]
PORTS = [0, 1, 22, 53, 80, 443, 1000, 2000, 65535]


@st.composite
def st_rule(draw, rule_id: int) -> PolicyRule:
    action = draw(st.sampled_from([POLICY_ALLOW, POLICY_DENY]))
    protos = draw(st.integers(0, 7))
    lo = draw(st.sampled_from(PORTS))
    hi = draw(st.sampled_from([p for p in PORTS if p >= lo]))
    if draw(st.integers(0, 9)) == 0:
        return host(rule_id, action, protos=protos, ports=(lo, hi))
    if draw(st.booleans()):
        base = ipaddress.ip_address(draw(st.sampled_from(V4_BASES)))
        plen = draw(st.sampled_from([0, 1, 8, 15, 16, 17, 24, 30, 32]))
        off = draw(st.integers(0, 1023))
    else:
        base = ipaddress.ip_address(draw(st.sampled_from(V6_BASES)))
        plen = draw(st.sampled_from([0, 3, 15, 16, 32, 48, 64, 100, 128]))
        off = draw(st.integers(0, 1023))
    return cidr(rule_id, action, f"{base + off}/{plen}", protos=protos, ports=(lo, hi))


@st.composite
def st_query(draw) -> Query:
    family = draw(st.sampled_from([4, 6]))
    proto = draw(st.sampled_from([PP_TCP, PP_UDP, PP_ICMP]))
    if proto != PP_ICMP and draw(st.integers(0, 5)) == 0:
        dst = GW if family == 4 else GW6  # echo to the gateway is local, not a flow
    else:
        bases = V4_BASES if family == 4 else V6_BASES
        dst = str(ipaddress.ip_address(draw(st.sampled_from(bases))) + draw(st.integers(0, 1023)))
    port = draw(st.sampled_from(PORTS[1:])) if proto != PP_ICMP else 0
    return Query(family, proto, dst, port)


@st.composite
def st_policy(draw):
    n = draw(st.integers(0, 12))
    rules = [draw(st_rule(rule_id=i % 5)) for i in range(n)]
    return rules, draw(st.booleans()), draw(st.lists(st_query(), min_size=1, max_size=6))


@pytest.fixture(scope="module")
def sealed_engine():
    """An engine whose non-loopback sockets cannot leave: bind() to an
    address no interface has fails first. Checked here, before any use."""
    for fam, path in ((4, "/proc/sys/net/ipv4/ip_nonlocal_bind"),
                      (6, "/proc/sys/net/ipv6/ip_nonlocal_bind")):
        with open(path) as f:
            assert f.read().strip() == "0", f"IPv{fam} non-local bind is on: unsafe"
    e = Engine(NetworkModel(ipv6=True), vnet_hdr=False, offload=False,
               outbound4="192.0.2.1", outbound6="2001:db8::1")
    yield e
    e.close()


_sports = itertools.count(1024)


def _packet(q: Query, sport: int):
    if q.proto == PP_TCP:
        return tcp4(q.port, sport=sport, dst=q.dst) if q.family == 4 else \
            tcp6(q.port, sport=sport, dst=q.dst)
    if q.proto == PP_UDP:
        return udp4(q.port, b"p", sport=sport, dst=q.dst) if q.family == 4 else \
            udp6(q.port, b"p", sport=sport, dst=q.dst)
    return echo4(q.dst, ident=sport) if q.family == 4 else echo6(q.dst, ident=sport)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(st_policy())
def test_engine_matches_reference(sealed_engine, case):
    from tests.helpers.engine_guest import Clock

    rules, default_allow, queries = case
    e = sealed_engine
    g = Guest(e, Clock(), False)
    e.set_policy(rules, default_allow=default_allow, nids=5)
    list(e.events())
    g.out()
    want_hits = [0] * 6
    for q in queries:
        before = e.counters()["policy_denied"]
        g.send(_packet(q, next(_sports) % 60000 + 1024))
        denied, rid = reference(rules, default_allow, q)
        if rules or not default_allow:  # else no policy: nothing looked up
            want_hits[rid] += 1
        assert e.counters()["policy_denied"] - before == int(denied), (q, rules)
        outs = g.out()
        if denied and q.proto == PP_TCP:
            assert_rst_for_syn(outs)
        elif denied:
            assert_admin_prohibited(outs, q.family)
    assert e.policy_hits(5) == want_hits
    list(e.events())


# ------------------------------------------------------------------ fuzz target

FUZZ_RUN = pathlib.Path(__file__).resolve().parents[1] / "fuzz" / "run.sh"


def _have_libfuzzer() -> bool:
    if not shutil.which("clang"):
        return False
    return bool(glob.glob("/usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a")
                or glob.glob("/usr/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a"))


@pytest.mark.skipif(not _have_libfuzzer(), reason="clang with libFuzzer is not installed")
def test_fuzz_policy_matcher_short_run(tmp_path: pathlib.Path) -> None:
    """15 s of the matcher's fuzz target: no mismatch, crash or leak."""
    env = dict(os.environ, FUZZ_WORK=str(tmp_path), FUZZ_TARGET="policy")
    proc = subprocess.run([str(FUZZ_RUN), "15"], env=env, capture_output=True, text=True,
                          timeout=240, check=False)
    log = proc.stdout + proc.stderr
    tail = "\n".join(log.splitlines()[-40:])
    assert proc.returncode == 0, f"fuzzer finding (rc {proc.returncode}):\n{tail}"
    assert not list((tmp_path / "findings").iterdir()), tail
    m = re.search(r"stat::number_of_executed_units:\s+(\d+)", log)
    assert m and int(m.group(1)) > 10000, tail


# ------------------------------------------------------------------ address map


def test_dns_only_map_entry_is_never_filtered(guest, socks):
    """pasta's --dns-forward: a dns_only entry of the address-map table is
    slirpy's DNS, not an outbound flow, on the ports it maps."""
    fwd = socks.udp()
    guest.engine.set_addr_map(0, 4, "192.0.2.53", "127.0.0.1", dns_only=True,
                              target_port=fwd.getsockname()[1])
    deny_all(guest)
    guest.send(udp4(53, b"\x12\x34q", dst="192.0.2.53"))
    assert fwd.recv(100) == b"\x12\x34q"
    assert guest.counters()["policy_denied"] == 0
    guest.send(udp4(54, b"x", dst="192.0.2.53"))  # refused by the map itself
    assert guest.counters()["policy_denied"] == 0


@pytest.mark.parametrize("target", ["127.0.0.1", "192.0.2.9"], ids=["loopback", "host-address"])
def test_map_entries_reach_the_host(guest, target):
    """--map-host-loopback / --map-guest-addr destinations are filtered as host."""
    guest.engine.set_addr_map(0, 4, "192.0.2.77", target)
    guest.engine.set_policy([host(0, POLICY_DENY)], default_allow=True, nids=1)
    guest.send(tcp4(80, dst="192.0.2.77"))
    assert_rst_for_syn(guest.out())
    assert guest.engine.policy_hits(1) == [1, 0]
    assert guest.counters()["tcp_flows_opened"] == 0


def test_echo_allowed_by_a_host_rule_opens_a_ping_flow_and_a_new_policy_closes_it(guest):
    """255.255.255.255 is the host's loopback with host loopback on: a
    host rule for ICMP lets the echo through to a ping socket there."""
    guest.engine.set_policy([host(0, POLICY_ALLOW, protos=PP_ICMP)], default_allow=False,
                            nids=1)
    guest.send(echo4("255.255.255.255", ident=99))
    outs = guest.wait(lambda o: any(ICMP in x.pkt and x.pkt[ICMP].type == 0 for x in o))
    (reply,) = [o for o in outs if ICMP in o.pkt]
    assert reply.pkt[ICMP].type == 0 and reply.pkt[ICMP].id == 99
    c = guest.counters()
    assert c["icmp_flows_opened"] == 1 and c["policy_denied"] == 0
    assert guest.engine.policy_hits(1) == [1, 0]
    # A new policy that denies it closes the ping flow.
    deny_all(guest)
    c = guest.counters()
    assert c["icmp_flows_closed"] == 1 and c["policy_closed"] == 1
    assert guest.engine.flows() == []
