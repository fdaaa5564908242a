"""Packet-level tests of when the engine answers a guest's SYN (csrc/tcp.c, syn_from_guest).

This file owns one property of the connection set-up path: when the host
handshake has already completed by the time the engine's non-blocking
connect() returns (a peer on the same machine: loopback, or another network
namespace through a veth), the SYN-ACK leaves in the same input call, with
no poll, epoll_ctl() or SO_ERROR in between; otherwise it leaves only after
the host connect succeeded (test_engine_tcp.py). Host sockets are on
loopback addresses only; the fake clock is never moved.
"""

from __future__ import annotations

import socket

from scapy.layers.inet import IP, TCP

from tests.helpers.engine_guest import Guest, Sockets
from tests.helpers.frames import tcp4

MAPPED = "192.0.2.77"  # a documentation address the guest dials, mapped to a host address


def _synacks(g: Guest) -> list:
    return [o.pkt for o in g.out() if TCP in o.pkt and o.pkt[TCP].flags & 0x12 == 0x12]


def _listener(socks: Sockets, addr: str) -> socket.socket:
    s = socks.add(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    s.bind((addr, 0))
    s.listen(8)
    return s


def test_synack_in_the_same_call_for_a_local_peer_that_is_not_127_0_0_1(
        guest: Guest, socks: Sockets) -> None:
    # 127.0.0.2 stands for a peer in another namespace on this machine (the
    # Podman bed's test host): its handshake completes inside connect() too,
    # so asking once more must find the flow established without a poll.
    lst = _listener(socks, "127.0.0.2")
    guest.engine.set_addr_map(0, 4, MAPPED, "127.0.0.2")
    port = lst.getsockname()[1]
    guest.send(tcp4(port, dst=MAPPED, options=[("MSS", 1460)]))
    (sa,) = _synacks(guest)                 # no poll in between
    assert sa[IP].src == MAPPED and sa[TCP].sport == port and sa[TCP].ack == 1001
    assert [f["state"] for f in guest.engine.flows()] != [1]   # not CONNECTING
    conn, _ = lst.accept()
    socks.add(conn)


def test_synack_in_the_same_call_on_127_0_0_1_as_before(guest: Guest, socks: Sockets) -> None:
    lst = socks.tcp_listener()
    port = lst.getsockname()[1]
    guest.send(tcp4(port, options=[("MSS", 1460)]))
    (sa,) = _synacks(guest)
    assert sa[TCP].sport == port and sa[TCP].ack == 1001
    socks.accept(lst)


def test_refused_local_peer_gets_rst_in_the_same_call(guest: Guest, socks: Sockets) -> None:
    port = socks.closed_port()      # closed on 127.0.0.1, so on 127.0.0.2 too
    guest.engine.set_addr_map(0, 4, MAPPED, "127.0.0.2")
    guest.send(tcp4(port, dst=MAPPED))
    outs = [o.pkt for o in guest.out() if TCP in o.pkt]
    assert [str(p[TCP].flags) for p in outs] == ["RA"] and outs[0][TCP].ack == 1001
    assert guest.counters()["tcp_connect_refused"] == 1
    assert guest.engine.flows() == []
