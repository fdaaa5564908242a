"""Flow events from the engine (issue 9, `slirpy run -v`).

This file owns SL_EV_FLOW_OPEN / SL_EV_FLOW_CLOSE as Python sees them
through `Engine.events()`: the 5-tuple of the open event (guest-initiated and
port-forwarded, IPv4 and IPv6), the reason and byte counts of the close
event (RST, FIN, timeout, eviction), nothing at all when the config flag is
off, and the bounded punt queue: flow events beyond its reserve are dropped
and counted, and never crowd out a DHCP punt. Only loopback servers are
used; the fake clock of conftest.py drives the timeouts. Also the engine
fd's reader (`Engine.reader`): Python is called back only when events wait.
"""

from __future__ import annotations

import asyncio
import socket
from ipaddress import IPv4Address, IPv6Address

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from slirpy.engine import EV_DHCP, EV_FLOW_CLOSE, EV_FLOW_OPEN, Event, Limits
from tests.helpers.frames import GUEST, GUEST6, GW, GW6, tcp_flags, udp4
from tests.helpers.inbound import accept_inbound, listen_forward
from tests.helpers.tcp_conn import Conn, established

PUNT_CAP = 128
PUNT_RESERVE = 16


def _dhcp_discover() -> Ether:
    return (Ether(src="52:54:00:12:34:56", dst="ff:ff:ff:ff:ff:ff")
            / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
            / BOOTP(chaddr=bytes.fromhex("525400123456"))
            / DHCP(options=[("message-type", "discover"), "end"]))


def _events(g) -> list[Event]:
    return list(g.engine.events())


def _flow_events(g) -> list[Event]:
    return [e for e in _events(g) if e.type in (EV_FLOW_OPEN, EV_FLOW_CLOSE)]


def test_guest_syn_gives_open_event_then_rst_gives_close_with_bytes(make_guest, socks):
    g = make_guest(flow_events=True)
    c, h = established(g, socks)
    (ev,) = _flow_events(g)
    assert ev.type == EV_FLOW_OPEN
    assert (ev.family, ev.proto) == (4, 6)
    assert (ev.src, ev.sport) == (IPv4Address(GUEST), 40000)
    assert (ev.dst, ev.dport) == (IPv4Address(GW), c.dport)
    assert ev.flow is not None and not ev.flow.inbound
    c.send(b"hello")
    assert h.recv(100) == b"hello"
    h.sendall(b"world!")
    c.pump(6)
    assert bytes(c.received) == b"world!"
    g.advance(1.5)
    c.g.send(c.seg("R"))
    g.settle(0.05)
    (ev,) = _flow_events(g)
    assert ev.type == EV_FLOW_CLOSE
    assert (ev.src, ev.sport, ev.dst, ev.dport) == (IPv4Address(GUEST), 40000,
                                                     IPv4Address(GW), c.dport)
    assert ev.flow.reason == "rst"
    assert ev.flow.bytes_to_host == 5 and ev.flow.bytes_to_guest == 6
    assert ev.flow.duration_ns >= 1_500_000_000


def test_fin_both_ways_gives_close_reason_fin(make_guest, socks):
    g = make_guest(flow_events=True)
    c, h = established(g, socks)
    assert [e.type for e in _flow_events(g)] == [EV_FLOW_OPEN]
    c.fin()
    h.settimeout(2)
    assert h.recv(10) == b""       # the guest's FIN reached the host
    h.close()
    # The engine's FIN: acknowledge it, which ends the flow.
    g.wait(lambda o: any("F" in tcp_flags(x.pkt) for x in c.mine(o)))
    c.rcv_nxt = (c.rcv_nxt + 1) & 0xFFFFFFFF
    c.send_ack()
    g.settle(0.05)
    assert g.engine.flows() == []
    (ev,) = _flow_events(g)
    assert ev.type == EV_FLOW_CLOSE and ev.flow.reason == "fin"
    assert ev.flow.bytes_to_host == 0 and ev.flow.bytes_to_guest == 0


def test_refused_connect_gives_open_and_close_refused(make_guest, socks):
    g = make_guest(flow_events=True)
    c = Conn(g, socks.closed_port())
    c.syn()
    g.wait(lambda o: any("R" in tcp_flags(x.pkt) for x in c.mine(o)))
    evs = _flow_events(g)
    assert [e.type for e in evs] == [EV_FLOW_OPEN, EV_FLOW_CLOSE]
    assert evs[1].flow.reason == "refused"


def test_events_off_by_default(make_guest, socks):
    g = make_guest()
    c, _h = established(g, socks)
    srv = socks.udp()
    g.send(udp4(srv.getsockname()[1], b"x", sport=5000))
    assert srv.recv(10) == b"x"
    c.g.send(c.seg("R"))
    g.settle(0.05)
    g.advance(120)  # the UDP flow times out
    assert g.engine.flows() == []
    assert _events(g) == []
    cnt = g.counters()
    assert cnt["punted"] == 0 and cnt["flow_events_dropped"] == 0


def test_udp_open_and_timeout_close_ipv4(make_guest, socks):
    g = make_guest(flow_events=True, limits=Limits(udp_idle_s=30))
    srv = socks.udp()
    port = srv.getsockname()[1]
    g.send(udp4(port, b"ping", sport=5353))
    assert srv.recv(10) == b"ping"
    (ev,) = _flow_events(g)
    assert (ev.type, ev.family, ev.proto) == (EV_FLOW_OPEN, 4, 17)
    assert (ev.src, ev.sport, ev.dst, ev.dport) == (IPv4Address(GUEST), 5353,
                                                     IPv4Address(GW), port)
    g.advance(31)
    (ev,) = _flow_events(g)
    assert ev.type == EV_FLOW_CLOSE and ev.flow.reason == "timeout"
    assert ev.flow.bytes_to_host is None  # no per-packet counting for UDP
    assert ev.flow.duration_ns >= 30_000_000_000


def test_udp6_open_event_has_ipv6_tuple(make_guest, socks):
    from tests.helpers.frames import ip6

    g = make_guest(ipv6=True, flow_events=True)
    srv = socks.udp(socket.AF_INET6)
    port = srv.getsockname()[1]
    g.send(ip6(GW6) / UDP(sport=6000, dport=port) / b"v6")
    assert srv.recv(10) == b"v6"
    (ev,) = _flow_events(g)
    assert (ev.type, ev.family, ev.proto) == (EV_FLOW_OPEN, 6, 17)
    assert (ev.src, ev.sport) == (IPv6Address(GUEST6), 6000)
    assert (ev.dst, ev.dport) == (IPv6Address(GW6), port)


def test_udp_eviction_gives_close_reason_evicted(make_guest, socks):
    g = make_guest(flow_events=True, limits=Limits(max_udp_flows=2))
    srv = socks.udp()
    port = srv.getsockname()[1]
    for i, sport in enumerate((7001, 7002, 7003)):
        g.advance(1)  # distinct last-use times: 7001 is the LRU
        g.send(udp4(port, bytes([i]), sport=sport))
    closes = [e for e in _flow_events(g) if e.type == EV_FLOW_CLOSE]
    assert [(e.sport, e.flow.reason) for e in closes] == [(7001, "evicted")]


def test_port_forward_open_event_is_inbound(make_guest, socks):
    g = make_guest(flow_events=True)
    port = listen_forward(g, socks, socket.SOCK_STREAM)
    client = socks.add(socket.create_connection(("127.0.0.1", port), timeout=2))
    c = accept_inbound(g, client)
    (ev,) = _flow_events(g)
    assert ev.type == EV_FLOW_OPEN and ev.flow.inbound
    assert (ev.src, ev.sport) == (IPv4Address(GUEST), 80)
    assert (ev.dst, ev.dport) == (IPv4Address(GW), client.getsockname()[1])
    c.g.send(c.seg("R"))
    g.settle(0.05)
    (ev,) = _flow_events(g)
    assert ev.type == EV_FLOW_CLOSE and ev.flow.inbound and ev.flow.reason == "rst"


def test_full_queue_counts_dropped_flow_events_and_keeps_room_for_dhcp(make_guest, socks):
    g = make_guest(flow_events=True)
    srv = socks.udp()
    port = srv.getsockname()[1]
    room = PUNT_CAP - PUNT_RESERVE
    for i in range(room + 8):  # bounded: one datagram per new flow, nothing drained
        g.send(udp4(port, b"", sport=20000 + i))
    cnt = g.counters()
    assert cnt["udp_flows_opened"] == room + 8
    assert cnt["flow_events_dropped"] == 8
    g.send(_dhcp_discover())
    evs = _events(g)
    assert sum(e.type == EV_FLOW_OPEN for e in evs) == room
    assert evs[-1].type == EV_DHCP  # the reserve kept a slot for it
    assert g.counters()["drop_punt_full"] == 0


def _ev(type_, proto=6, src=GUEST, sport=40000, dst=GW, dport=8000, **flow):
    from slirpy.engine import FlowInfo

    ip = IPv6Address if ":" in src else IPv4Address
    return Event(type=type_, family=6 if ":" in src else 4, proto=proto, mac=bytes(6),
                 src=ip(src), dst=ip(dst), sport=sport, dport=dport, data=b"",
                 flow=FlowInfo(**{"inbound": False, **flow}))


def test_run_verbose_line_format():
    from slirpy.control.report import flow_line

    assert flow_line(_ev(EV_FLOW_OPEN)) == f"flow open  tcp {GUEST}:40000 -> {GW}:8000"
    assert flow_line(_ev(EV_FLOW_OPEN, sport=80, dport=51000, inbound=True)) == (
        f"flow open  tcp {GUEST}:80 <- {GW}:51000")
    assert flow_line(_ev(EV_FLOW_CLOSE, reason="fin", duration_ns=3_250_000,
                         bytes_to_host=77, bytes_to_guest=1130)) == (
        f"flow close tcp {GUEST}:40000 -> {GW}:8000 fin after 3.2 ms, out 77 B, in 1130 B")
    assert flow_line(_ev(EV_FLOW_CLOSE, proto=17, src=GUEST6, dst=GW6, dport=53,
                         reason="timeout", duration_ns=60_000_000_000)) == (
        f"flow close udp [{GUEST6}]:40000 -> [{GW6}]:53 timeout after 60.0 s")
    assert flow_line(_ev(EV_FLOW_OPEN, proto=1, sport=7, dport=0, dst="192.0.2.1")) == (
        f"flow open  icmp {GUEST} -> 192.0.2.1 id 7")


# The engine fd's reader (Engine.reader): C polls, Python runs only for events.

def test_reader_calls_python_only_when_events_wait(make_guest):
    g = make_guest()
    drained: list[list[Event]] = []
    ready = g.engine.reader(lambda: drained.append(_events(g)))
    ready()
    assert drained == []  # a wake-up with nothing to punt: no Python callback
    g.send(_dhcp_discover())
    ready()
    assert [[e.type for e in evs] for evs in drained] == [[EV_DHCP]]
    ready()
    assert len(drained) == 1


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_reader_under_a_real_loop_delivers_flow_events(make_guest, socks, loop_kind):
    """add_reader(engine.fileno(), engine.reader(...)): the host's answer
    wakes the loop, C polls it, and the waiting open event reaches Python."""
    import uvloop

    g = make_guest(flow_events=True)
    srv = socks.udp()
    g.send(udp4(srv.getsockname()[1], b"ping", sport=20001))
    data, peer = srv.recvfrom(100)
    assert data == b"ping"

    async def main() -> list[Event]:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[list[Event]] = loop.create_future()
        fd = g.engine.fileno()
        loop.add_reader(fd, g.engine.reader(lambda: got.set_result(_events(g))))
        try:
            srv.sendto(b"pong", peer)
            return await asyncio.wait_for(got, 5)
        finally:
            loop.remove_reader(fd)

    runner = asyncio.run if loop_kind == "asyncio" else uvloop.run
    (ev,) = runner(main())
    assert (ev.type, ev.proto, ev.sport, ev.dport) == (EV_FLOW_OPEN, 17, 20001,
                                                     srv.getsockname()[1])
    assert b"pong" in b"".join(g.engine.take_output())


def test_reader_callback_error_goes_to_the_loop_exception_handler(make_guest):
    g = make_guest()
    seen: list[dict] = []

    def boom() -> None:
        raise ValueError("handler bug")

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: seen.append(ctx))
        ready = g.engine.reader(boom)
        g.send(_dhcp_discover())
        ready()  # must not raise out of the C callback

    asyncio.run(main())
    (ctx,) = seen
    assert isinstance(ctx["exception"], ValueError)
    assert "events callback" in ctx["message"]


def test_reader_callback_error_outside_a_loop_is_one_line(make_guest, capfd):
    g = make_guest()

    def boom() -> None:
        raise ValueError("handler bug")

    ready = g.engine.reader(boom)
    g.send(_dhcp_discover())
    ready()
    err = capfd.readouterr().err
    assert err == "slirpy: error in the engine's events callback: ValueError('handler bug')\n"
