"""Packet-level tests of forwarded ports in the engine (issue 5, items 2-4).

This file owns the engine's side of host -> guest forwarding, below the API:
a listening or bound loopback socket handed over with add_listener, host
clients, and the guest played by the test. It checks what the integration
tests cannot see exactly: the SYN the engine sends the guest (from N+2 for a
loopback client, with the client's port), the inbound half-open timeout
(the guest never answers: the client is reset, not left hanging), per-client
UDP flows with their idle timeout, and remove_listener leaving established
connections alone. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import contextlib
import socket

import pytest

from slirpy.engine import Limits
from tests.helpers.frames import GUEST, GW, IP, TCP, UDP, tcp4, udp4
from tests.helpers.inbound import accept_inbound, listen_forward, syns


def test_tcp_forward_loopback_client_is_gateway_and_data_flows(make_guest, socks):
    g = make_guest()
    port = listen_forward(g, socks, socket.SOCK_STREAM)
    client = socks.add(socket.create_connection(("127.0.0.1", port), timeout=2))
    c = accept_inbound(g, client)
    client.sendall(b"to guest")
    c.pump(8)
    assert bytes(c.received) == b"to guest"
    c.send(b"to host")
    assert client.recv(100) == b"to host"
    cnt = g.counters()
    assert cnt["tcp_flows_inbound"] == 1
    (flow,) = g.engine.flows()
    assert (flow["guest"], flow["guest_port"], flow["remote"]) == (GUEST, 80, GW)
    assert flow["remote_port"] == client.getsockname()[1]


def test_tcp_forward_guest_silent_client_reset_after_half_open_timeout(make_guest, socks):
    g = make_guest()
    port = listen_forward(g, socks, socket.SOCK_STREAM)
    client = socks.add(socket.create_connection(("127.0.0.1", port), timeout=2))
    first = syns(g, g.wait(lambda o: bool(syns(g, o))))
    assert len(first) == 1
    # No answer: the SYN is retransmitted on the RTO...
    assert len(syns(g, g.advance(1.5))) == 1
    assert g.counters()["tcp_retransmits"] >= 1
    # ...and after the half-open timeout the flow is dropped and the host
    # client learns it (reset or EOF), instead of waiting forever.
    g.advance(80)
    assert g.engine.flows() == []
    client.settimeout(2)
    with contextlib.suppress(ConnectionResetError):
        assert client.recv(10) == b""


def test_tcp_forward_guest_refuses_client_gets_reset(make_guest, socks):
    g = make_guest()
    port = listen_forward(g, socks, socket.SOCK_STREAM)
    client = socks.add(socket.create_connection(("127.0.0.1", port), timeout=2))
    (syn,) = syns(g, g.wait(lambda o: bool(syns(g, o))))
    cport = client.getsockname()[1]
    g.send(tcp4(cport, sport=80, flags="RA", seq=0, ack=syn.pkt[TCP].seq + 1))
    g.settle(0.1)
    client.settimeout(2)
    with pytest.raises(ConnectionResetError):
        client.recv(10)
    assert g.engine.flows() == []


def test_remove_listener_keeps_established_connection(make_guest, socks):
    g = make_guest()
    port = listen_forward(g, socks, socket.SOCK_STREAM)
    client = socks.add(socket.create_connection(("127.0.0.1", port), timeout=2))
    c = accept_inbound(g, client)
    g.engine.remove_listener(1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    client.sendall(b"after remove")
    c.pump(12)
    assert bytes(c.received) == b"after remove"
    c.send(b"back")
    assert client.recv(10) == b"back"


def test_udp_forward_per_client_flows_and_idle_timeout(make_guest, socks):
    g = make_guest(limits=Limits(udp_idle_s=30))
    port = listen_forward(g, socks, socket.SOCK_DGRAM, guest_port=53)
    c1, c2 = socks.udp(), socks.udp()
    p1, p2 = c1.getsockname()[1], c2.getsockname()[1]
    c1.sendto(b"from one", ("127.0.0.1", port))
    c2.sendto(b"from two", ("127.0.0.1", port))

    def udps(outs):
        return [o for o in outs if UDP in o.pkt]

    outs = udps(g.wait(lambda o: len(udps(o)) >= 2))
    seen = {(o.pkt[IP].src, o.pkt[UDP].sport, o.pkt[UDP].dport, bytes(o.pkt[UDP].payload))
            for o in outs}
    assert seen == {(GW, p1, 53, b"from one"), (GW, p2, 53, b"from two")}
    assert len(g.engine.flows()) == 2
    # Each guest reply reaches its own client, from the forwarded port.
    g.send(udp4(p2, b"reply two", sport=53))
    g.send(udp4(p1, b"reply one", sport=53))
    g.settle(0.05)
    assert c1.recvfrom(100) == (b"reply one", ("127.0.0.1", port))
    assert c2.recvfrom(100) == (b"reply two", ("127.0.0.1", port))
    # Idle: both flows expire, the listener stays; a client starts a new one.
    g.advance(20)
    assert len(g.engine.flows()) == 2
    g.engine.flush(g.clock.advance(11))
    assert g.engine.flows() == []
    assert g.counters()["udp_flows_closed"] == 2
    c1.sendto(b"again", ("127.0.0.1", port))
    outs = udps(g.wait(lambda o: bool(udps(o))))
    assert bytes(outs[0].pkt[UDP].payload) == b"again"
    assert g.counters()["udp_flows_opened"] == 3
