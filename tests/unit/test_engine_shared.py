"""The engine's shared-address mode (pasta's model, issue 16) at packet level.

This file owns the checks of what shared mode changes below Python: ARP and
NDP answered for every address but the guest's own (with one MAC), the
address-map table (a map's `match` reaches its `target` on loopback and
replies come from `match`; DNS-only entries; changed at run time), inbound
peers shown as the substitute address, listener modes "split" (also
spliced to the loopback: --host-lo-to-ns-lo) and "to_host_lo" (TCP, and
UDP's relay) with a namespace helper forked in the test's own netns, the
helper's loopback-socket request, and no RA at all with no_ra. slirp4netns
mode is covered by the rest of tests/unit, which must pass unchanged.

Everything here talks only to 127.0.0.1 / ::1.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, ip_address

import pytest

from slirpy.config import NetworkModel
from slirpy.engine import (
    PROTO_TCP,
    PROTO_UDP,
    AddrMap,
    Engine,
    EngineError,
    Limits,
    ns_helper_serve,
    ns_loopback_socket,
)
from tests.helpers.engine_guest import Clock, Guest, Sockets
from tests.helpers.frames import (
    ARP,
    BCAST,
    GUEST_MAC,
    ICMP,
    IP,
    TCP,
    UDP,
    Ether,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    check_l4_csum,
)

OUR_MAC = "9a:55:9a:55:9a:55"
HOST4 = "192.0.2.10"          # the guest's = the host's address
GW4 = "192.0.2.1"
HOST6 = "2001:db8::10"
DNS_FWD = "169.254.1.1"       # --dns-forward
MAP_GUEST = "169.254.1.2"     # --map-guest-addr
MAP_LO6 = "fd00:1::1"         # --map-host-loopback (IPv6)
GUEST_LL = "fe80::5054:ff:fe12:3456"


@pytest.fixture
def make_shared(clock: Clock) -> Iterator[Callable[..., Guest]]:
    engines: list[Engine] = []

    def make(**kw: object) -> Guest:
        args: dict[str, object] = {
            "shared": True, "our_mac": bytes.fromhex(OUR_MAC.replace(":", "")),
            "guest4": HOST4, "guest6": HOST6, "gateway4": GW4, "ipv6": True,
            "peer_sub4": MAP_GUEST, "peer_sub6": "fe80::1", "no_ra": True,
        }
        args.update(kw)
        e = Engine(NetworkModel(), vnet_hdr=False, offload=False, **args)  # type: ignore[arg-type]
        engines.append(e)
        return Guest(e, clock, False)

    yield make
    for e in engines:
        e.close()


@pytest.fixture
def g(make_shared: Callable[..., Guest]) -> Guest:
    return make_shared()


def _arp(target: str, sender: str = HOST4) -> Ether:
    return Ether(dst=BCAST, src=GUEST_MAC) / ARP(op=1, hwsrc=GUEST_MAC, psrc=sender,
                                                 pdst=target)


def _ns(target: str, src: str = GUEST_LL) -> Ether:
    return (Ether(src=GUEST_MAC, dst="33:33:ff:00:00:01")
            / IPv6(src=src, dst="ff02::1:ff00:1", hlim=255)
            / ICMPv6ND_NS(tgt=target) / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC))


def _ip4(dst: str) -> Ether:
    return Ether(dst=OUR_MAC, src=GUEST_MAC) / IP(src=HOST4, dst=dst)


def _syn(dst: str, dport: int, sport: int = 40000) -> Ether:
    return _ip4(dst) / TCP(sport=sport, dport=dport, flags="S", seq=1000, window=65535)


def _tcp_out(g: Guest, timeout: float = 2.0) -> list:
    return [o.pkt for o in g.wait(lambda o: any(TCP in x.pkt for x in o), timeout)
            if TCP in o.pkt]


# ------------------------------------------------------------------ ARP


@pytest.mark.parametrize("target", [GW4, "192.0.2.77", "198.51.100.7", MAP_GUEST])
def test_arp_for_any_other_address_is_answered_with_our_mac(g: Guest, target: str) -> None:
    g.send(_arp(target))
    (out,) = g.out()
    a = out.pkt[ARP]
    assert out.pkt[Ether].src == OUR_MAC and out.pkt[Ether].dst == GUEST_MAC
    assert (a.op, a.hwsrc, a.psrc, a.hwdst, a.pdst) == (2, OUR_MAC, target, GUEST_MAC, HOST4)


@pytest.mark.parametrize("frame", [
    _arp(HOST4),                      # its own address
    _arp(HOST4, sender="0.0.0.0"),    # a probe of its own address
    _arp(GW4, sender=GW4),            # an announcement
])
def test_arp_never_answers_for_the_guests_own_address(g: Guest, frame: Ether) -> None:
    g.send(frame)
    assert g.out() == []
    assert g.counters()["arp_replies"] == 0


def test_arp_probe_for_another_address_is_answered(g: Guest) -> None:
    g.send(_arp("192.0.2.99", sender="0.0.0.0"))
    (out,) = g.out()
    assert out.pkt[ARP].psrc == "192.0.2.99" and out.pkt[ARP].hwsrc == OUR_MAC


def test_without_ipv4_arp_and_ipv4_are_dropped(make_shared: Callable[..., Guest]) -> None:
    g = make_shared(ipv4=False)
    g.send(_arp(GW4))
    g.send(_ip4(GW4) / ICMP())
    assert g.out() == []
    assert g.counters()["drop_not_for_us"] == 2


# ------------------------------------------------------------------ NDP


@pytest.mark.parametrize("target", ["2001:db8::77", "2001:db8:1::1", "fe80::1"])
def test_ns_for_any_other_address_is_answered_with_our_mac(g: Guest, target: str) -> None:
    g.send(_ns(target))
    (out,) = g.out()
    p = out.pkt
    assert p[Ether].src == OUR_MAC and p[IPv6].src == target and p[IPv6].dst == GUEST_LL
    assert p[ICMPv6ND_NA].tgt == target and p[ICMPv6NDOptDstLLAddr].lladdr == OUR_MAC
    check_l4_csum(p)


def test_ns_for_the_guests_addresses_and_dad_is_not_answered(g: Guest) -> None:
    g.send(_ns(HOST6))                         # cfg.guest6
    g.send(_ns(GUEST_LL))                      # the sender's own link-local
    g.send(_ns("2001:db8::55", src="::"))      # DAD: never answered ...
    g.send(_ns("2001:db8::55"))                # ... and the address is the guest's now
    g.send(_ns("fe80::abcd", src="::"))
    g.send(_ns("fe80::abcd"))
    assert g.out() == []
    assert g.counters()["ndp_adverts"] == 0


def test_no_unsolicited_ra_with_no_ra(g: Guest) -> None:
    g.engine.set_guest_mac(bytes.fromhex(GUEST_MAC.replace(":", "")))
    assert g.advance(700) == []


def _rs() -> Ether:
    return (Ether(src=GUEST_MAC, dst="33:33:00:00:00:02")
            / IPv6(src=GUEST_LL, dst="ff02::2", hlim=255) / ICMPv6ND_RS())


@pytest.mark.parametrize("no_ra", [True, False])
def test_a_router_solicitation_is_answered_only_without_no_ra(
        make_shared: Callable[..., Guest], no_ra: bool) -> None:
    """pasta's --config-net implies --no-ra: an answered RS would make the
    guest add a SLAAC address next to the host's copied one (ndp.c)."""
    g = make_shared(no_ra=no_ra)
    g.engine.set_guest_mac(bytes.fromhex(GUEST_MAC.replace(":", "")))
    g.advance(0.01)
    g.out()  # without no_ra: the first unsolicited RA
    g.send(_rs())
    ras = [o for o in g.settle(0.02) if ICMPv6ND_RA in o.pkt]
    if no_ra:
        assert ras == [] and g.counters()["router_adverts"] == 0
    else:
        assert len(ras) == 1 and ras[0].pkt[IPv6].dst == GUEST_LL


# ------------------------------------------------------------- address maps


def test_no_local_echo_answers_in_shared_mode(g: Guest) -> None:
    g.send(_ip4(GW4) / ICMP(type=8, id=1, seq=1))
    g.settle(0.02)
    assert g.counters()["icmp_echo_local"] == 0


def test_tcp_to_a_map_reaches_its_target_and_replies_come_from_match(
        g: Guest, socks: Sockets) -> None:
    lst = socks.tcp_listener()
    g.engine.set_addr_map(0, 4, MAP_GUEST, "127.0.0.1")
    port = lst.getsockname()[1]
    g.send(_syn(MAP_GUEST, port))
    (synack,) = [p for p in _tcp_out(g) if p[TCP].flags & 0x12 == 0x12]
    assert synack[IP].src == MAP_GUEST and synack[TCP].sport == port
    assert synack[Ether].src == OUR_MAC
    c = socks.accept(lst)
    assert c.getpeername()[0] == "127.0.0.1"   # loopback: not bound to any outbound address


def test_target_port_and_run_time_change(g: Guest, socks: Sockets) -> None:
    a, b = socks.tcp_listener(), socks.tcp_listener()
    g.engine.set_addr_map(3, 4, MAP_GUEST, "127.0.0.1", target_port=a.getsockname()[1])
    g.send(_syn(MAP_GUEST, 8080, sport=40001))
    assert any(p[TCP].flags & 0x12 == 0x12 and p[IP].src == MAP_GUEST and p[TCP].sport == 8080
               for p in _tcp_out(g))
    socks.accept(a)
    g.engine.set_addr_map(3, 4, MAP_GUEST, "127.0.0.1", target_port=b.getsockname()[1])
    g.send(_syn(MAP_GUEST, 8080, sport=40002))
    assert any(p[TCP].flags & 0x12 == 0x12 and p[TCP].dport == 40002 for p in _tcp_out(g))
    socks.accept(b)
    # Cleared: the address is itself again, and 169.254/16 leads nowhere on loopback.
    g.engine.set_addr_map(3, 4, None, None)
    assert g.engine.flows()[0]["remote"] == MAP_GUEST  # existing flows keep their sockets


def test_udp_to_a_dns_map_reaches_its_target_and_replies_come_from_match(
        make_shared: Callable[..., Guest], socks: Sockets) -> None:
    srv = socks.udp()
    g = make_shared(maps=[AddrMap(4, DNS_FWD, "127.0.0.1", dns_only=True,
                                  target_port=srv.getsockname()[1])])
    g.send(_ip4(DNS_FWD) / UDP(sport=5353, dport=53) / b"query")
    data, peer = srv.recvfrom(100)
    assert data == b"query"
    srv.sendto(b"answer", peer)
    outs = g.wait(lambda o: any(UDP in x.pkt for x in o))
    (p,) = [o.pkt for o in outs if UDP in o.pkt]
    assert (p[IP].src, p[UDP].sport, p[IP].dst, p[UDP].dport) == (DNS_FWD, 53, HOST4, 5353)
    assert bytes(p[UDP].payload) == b"answer"
    check_l4_csum(p)


def test_dns_only_map_refuses_other_ports(make_shared: Callable[..., Guest]) -> None:
    g = make_shared(maps=[AddrMap(4, DNS_FWD, "127.0.0.1", dns_only=True, target_port=9)])
    g.send(_syn(DNS_FWD, 80))
    (rst,) = [o.pkt for o in g.out()]
    assert rst[TCP].flags & 0x04 and rst[IP].src == DNS_FWD
    g.send(_ip4(DNS_FWD) / UDP(sport=5353, dport=80) / b"x")
    (unreach,) = [o.pkt for o in g.out()]
    assert unreach[ICMP].type == 3 and unreach[ICMP].code == 3
    g.send(_ip4(DNS_FWD) / ICMP(type=8, id=2, seq=1))
    assert g.out() == []
    c = g.counters()
    assert c["tcp_flows_opened"] == 0 and c["udp_flows_opened"] == 0
    assert c["icmp_flows_opened"] == 0


def test_ipv6_map_to_host_loopback(g: Guest, socks: Sockets) -> None:
    lst = socks.tcp_listener(socket.AF_INET6)
    port = lst.getsockname()[1]
    g.engine.set_addr_map(1, 6, MAP_LO6, "::1")
    g.send(Ether(dst=OUR_MAC, src=GUEST_MAC) / IPv6(src=HOST6, dst=MAP_LO6)
           / TCP(sport=40000, dport=port, flags="S", seq=1))
    (synack,) = [p for p in _tcp_out(g) if p[TCP].flags & 0x12 == 0x12]
    assert synack[IPv6].src == MAP_LO6
    socks.accept(lst)


def test_unmapped_loopback_and_multicast_are_never_host_sockets(g: Guest) -> None:
    for dst in ("127.0.0.1", "224.0.0.1", "0.1.2.3"):
        g.send(_syn(dst, 80))
    assert g.out() == []
    assert g.counters()["drop_dst_invalid"] == 3


def test_bad_set_addr_map_is_refused(g: Guest) -> None:
    with pytest.raises(EngineError):
        g.engine.set_addr_map(8, 4, MAP_GUEST, "127.0.0.1")


NEW4 = "192.0.2.20"   # the host's address after a change
NEW6 = "2001:db8::20"


def test_set_shared_addrs_moves_the_own_address_of_arp_and_ndp(g: Guest) -> None:
    g.engine.set_shared_addrs(NEW4, NEW6, MAP_GUEST, "fe80::1")
    # The new own addresses are not answered any more ...
    g.send(_arp(NEW4, sender=NEW4))
    g.send(_ns(NEW6))
    assert g.out() == []
    # ... and the old ones are just other addresses now.
    g.send(_arp(HOST4, sender=NEW4))
    (out,) = g.out()
    assert out.pkt[ARP].psrc == HOST4 and out.pkt[ARP].hwsrc == OUR_MAC
    g.send(_ns(HOST6))
    (out,) = g.out()
    assert out.pkt[ICMPv6ND_NA].tgt == HOST6


def test_set_shared_addrs_is_refused_outside_shared_mode() -> None:
    e = Engine(NetworkModel(), vnet_hdr=False, offload=False)
    try:
        with pytest.raises(EngineError, match="set shared addresses"):
            e.set_shared_addrs(NEW4, NEW6, None, None)
    finally:
        e.close()


# ------------------------------------------------------------- inbound


def test_loopback_client_appears_as_peer_sub(g: Guest) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4)
    port = s.getsockname()[1]
    g.engine.add_listener(s.detach(), PROTO_TCP, IPv4Address(HOST4), 8080, 1)
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        (syn,) = _tcp_out(g)
    assert syn[IP].src == MAP_GUEST and syn[IP].dst == HOST4 and syn[TCP].dport == 8080


def test_peer_sub_follows_set_shared_addrs(g: Guest) -> None:
    g.engine.set_shared_addrs(NEW4, NEW6, "169.254.1.9", "fe80::1")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4)
    port = s.getsockname()[1]
    g.engine.add_listener(s.detach(), PROTO_TCP, IPv4Address(NEW4), 8080, 1)
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        (syn,) = _tcp_out(g)
    assert syn[IP].src == "169.254.1.9" and syn[IP].dst == NEW4


# ------------------------------------------------------- listener modes


def _fork_helper() -> tuple[socket.socket, int]:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        rc = 1
        try:
            parent.close()
            rc = 0 if ns_helper_serve(child.fileno()) == 0 else 1
        finally:
            os._exit(rc)
    child.close()
    return parent, pid


@pytest.fixture
def helper() -> Iterator[socket.socket]:
    sock, pid = _fork_helper()
    yield sock
    sock.close()
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _echo_server() -> tuple[int, socket.socket]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def run() -> None:
        with contextlib.suppress(OSError):
            c, _ = srv.accept()
            with c:
                c.sendall(b"peer " + c.getpeername()[0].encode() + b" " + c.recv(100))

    threading.Thread(target=run, daemon=True).start()
    return srv.getsockname()[1], srv


def _drive(engine: Engine, done: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, engine.counters()
        engine.poll(time.monotonic_ns(), 64)
        time.sleep(0.001)


def _talk(engine: Engine, port: int) -> bytes:
    got = bytearray()
    cl = socket.create_connection(("127.0.0.1", port), timeout=5)

    def client() -> None:
        cl.sendall(b"hello")
        while d := cl.recv(100):
            got.extend(d)

    t = threading.Thread(target=client, daemon=True)
    t.start()
    _drive(engine, lambda: not t.is_alive())
    cl.close()
    return bytes(got)


def test_split_listener_splices_a_loopback_client(helper: socket.socket) -> None:
    """The decision at unit level: a loopback peer takes the splice path (the
    "guest" is a 127.0.0.1 server here, so its peer is 127.0.0.1). The TAP
    side of "split" is the loopback-free path of test_loopback_client_...
    above and needs a non-loopback client: tests/integration."""
    e = Engine(NetworkModel())
    try:
        e.set_ns_helper(os.dup(helper.fileno()))
        gport, srv = _echo_server()
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        port = s.getsockname()[1]
        e.add_listener(s.detach(), PROTO_TCP, IPv4Address("127.0.0.1"), gport, 1, mode="split")
        assert _talk(e, port) == b"peer 127.0.0.1 hello"
        srv.close()
        c = e.counters()
        assert c["splice_opened"] == 1 and c["tcp_flows_inbound"] == 0
    finally:
        e.close()


@pytest.mark.parametrize("family", [4, 6])
def test_split_to_loopback_splices_to_the_namespace_loopback(
        helper: socket.socket, family: int) -> None:
    """pasta's --host-lo-to-ns-lo: the helper's socket connects to 127.0.0.1
    / ::1 (the client's family) at the guest port, not to the guest's
    address (a documentation address nobody serves here), so a guest server
    bound to loopback only is reached and sees loopback as the peer."""
    lo = "127.0.0.1" if family == 4 else "::1"
    guest = ip_address("192.0.2.99" if family == 4 else "2001:db8::99")
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    e = Engine(NetworkModel())
    srv = socket.socket(af)
    try:
        e.set_ns_helper(os.dup(helper.fileno()))
        srv.bind((lo, 0))
        srv.listen(4)
        seen: list[tuple[str, int]] = []

        def serve() -> None:
            with contextlib.suppress(OSError):
                c, peer = srv.accept()
                with c:
                    seen.append(c.getsockname()[:2])
                    c.sendall(b"peer " + peer[0].encode() + b" " + c.recv(100))

        threading.Thread(target=serve, daemon=True).start()
        gport = srv.getsockname()[1]
        s = socket.socket(af)
        s.bind((lo, 0))
        s.listen(4)
        port = s.getsockname()[1]
        e.add_listener(s.detach(), PROTO_TCP, guest, gport, 1, mode="split",
                       splice_to_loopback=True)
        got = bytearray()
        cl = socket.create_connection((lo, port), timeout=5)

        def client() -> None:
            cl.sendall(b"hello")
            while d := cl.recv(100):
                got.extend(d)

        t = threading.Thread(target=client, daemon=True)
        t.start()
        _drive(e, lambda: not t.is_alive())
        cl.close()
        assert bytes(got) == f"peer {lo} hello".encode()
        assert seen == [(lo, gport)]
        assert e.counters()["splice_opened"] == 1
    finally:
        srv.close()
        e.close()


def test_splice_to_loopback_needs_a_spliced_mode() -> None:
    e = Engine(NetworkModel())
    try:
        with pytest.raises(ValueError):
            e.add_listener(-1, PROTO_TCP, IPv4Address("127.0.0.1"), 80, 1, mode="tap",
                           splice_to_loopback=True)
    finally:
        e.close()


def test_split_needs_a_helper_and_modes_are_checked() -> None:
    e = Engine(NetworkModel())
    try:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        with pytest.raises(EngineError):
            e.add_listener(s.fileno(), PROTO_TCP, IPv4Address("127.0.0.1"), 80, 1, mode="split")
        s.detach()  # the engine closed it
        with pytest.raises(ValueError):
            e.add_listener(-1, PROTO_TCP, IPv4Address("127.0.0.1"), 80, 2, mode="nope")
    finally:
        e.close()


def test_to_host_lo_relays_a_namespace_listener_to_host_loopback(
        helper: socket.socket) -> None:
    """pasta's -T: the listener comes from the helper (here in the test's own
    netns, so "namespace loopback" and "host loopback" are the same), each
    connection is spliced to 127.0.0.1 at the forward's guest port."""
    e = Engine(NetworkModel())
    try:
        gport, srv = _echo_server()
        fd = ns_loopback_socket(helper, PROTO_TCP, 4, 0)
        with socket.socket(fileno=os.dup(fd)) as probe:
            assert probe.getsockname()[0] == "127.0.0.1"
            port = probe.getsockname()[1]
        e.add_listener(fd, PROTO_TCP, IPv4Address("127.0.0.1"), gport, 7, mode="to_host_lo")
        assert _talk(e, port) == b"peer 127.0.0.1 hello"
        srv.close()
        assert e.counters()["splice_opened"] == 1
    finally:
        e.close()


def test_helper_loopback_socket_udp_and_errors(helper: socket.socket) -> None:
    fd = ns_loopback_socket(helper, PROTO_UDP, 6, 0)
    with socket.socket(fileno=fd) as u:
        assert u.type == socket.SOCK_DGRAM and u.getsockname()[0] == "::1"
        taken = u.getsockname()[1]
        # The port is in use now (no SO_REUSEPORT): the helper says so.
        with pytest.raises(OSError) as ei:
            os.close(ns_loopback_socket(helper, PROTO_UDP, 6, taken))
        assert ei.value.errno == 98  # EADDRINUSE


def test_udp_to_host_lo_relays_both_ways_and_expires(helper: socket.socket,
                                                     socks: Sockets) -> None:
    """pasta's -U: a UDP socket bound on the namespace's loopback (here the
    test's own), each peer relayed to the host's loopback port and back."""
    e = Engine(NetworkModel(), limits=Limits(udp_idle_s=5))
    try:
        srv = socks.udp()
        fd = ns_loopback_socket(helper, PROTO_UDP, 4, 0)
        with socket.socket(fileno=os.dup(fd)) as probe:
            port = probe.getsockname()[1]
        e.add_listener(fd, PROTO_UDP, IPv4Address("127.0.0.1"), srv.getsockname()[1], 5,
                       mode="to_host_lo")
        cl = socks.udp()
        for i in range(2):
            cl.sendto(b"ping %d" % i, ("127.0.0.1", port))
            _drive(e, lambda i=i: e.counters()["lorelay_datagrams_to_host"] == i + 1)
            data, peer = srv.recvfrom(100)
            assert data == b"ping %d" % i and peer[0] == "127.0.0.1"
            srv.sendto(b"pong %d" % i, peer)
            _drive(e, lambda i=i: e.counters()["lorelay_datagrams_to_ns"] == i + 1)
            assert cl.recvfrom(100) == (b"pong %d" % i, ("127.0.0.1", port))
        assert e.counters()["lorelay_opened"] == 1   # one peer, one relay
        e.flush(time.monotonic_ns() + 6 * 1_000_000_000)
        assert e.counters()["lorelay_closed"] == 1
    finally:
        e.close()


def test_echo_to_a_map_is_answered_from_match(g: Guest) -> None:
    """A ping to the gateway mapped to the host's loopback (pasta's default
    gateway mapping) goes out on a ping socket to 127.0.0.1 (not bound to
    any outbound address) and the reply comes from the gateway."""
    g.engine.set_addr_map(2, 4, GW4, "127.0.0.1")
    g.send(_ip4(GW4) / ICMP(type=8, id=0x4242, seq=7) / b"shared-ping")
    outs = g.wait(lambda o: any(ICMP in x.pkt for x in o))
    (p,) = [o.pkt for o in outs if ICMP in o.pkt]
    assert (p[IP].src, p[IP].dst, p[ICMP].type) == (GW4, HOST4, 0)
    assert (p[ICMP].id, p[ICMP].seq, bytes(p[ICMP].payload)) == (0x4242, 7, b"shared-ping")
    c = g.counters()
    assert c["icmp_echo_local"] == 0 and c["icmp_flows_opened"] == 1
