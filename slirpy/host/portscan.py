"""Listening TCP/UDP ports of a namespace, for pasta's `auto` port mirroring.

This module owns one inet_diag dump per family over a NETLINK_SOCK_DIAG
socket: the socket's namespace is the one scanned (the daemon gets one made
inside the guest's namespace, so it scans without entering it; /proc/net/tcp
would show the daemon's own namespace). TCP: sockets in LISTEN; UDP: bound,
unconnected sockets (state TCP_CLOSE, "07" in /proc/net/udp, what pasta
reads there).

It must not decide what to forward, nor poll: the caller scans when it wants.
"""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address, IPv6Address
from typing import Literal

from slirpy.host import rtnl

SOCK_DIAG_BY_FAMILY = 20
TCP_ESTABLISHED = 1
TCP_CLOSE = 7
TCP_LISTEN = 10
# struct inet_diag_req_v2: family, protocol, ext, pad, states, then the
# 48-byte inet_diag_sockid (ports, addresses, interface, cookie; zero = any).
INET_DIAG_REQ_V2 = struct.Struct("=BBBxI48x")
# struct inet_diag_msg up to the sockid's addresses: family, state, timer,
# retrans, sport, dport (network order), src[16], dst[16].
INET_DIAG_MSG = struct.Struct("=BBBB2s2s16s16s")


def diag_request(family: int, proto: int, states: int) -> bytes:
    """The body of one SOCK_DIAG_BY_FAMILY dump for `family`/`proto` in `states`."""
    return INET_DIAG_REQ_V2.pack(family, proto, 0, states)


def parse_diag(payload: bytes) -> tuple[int, int, str]:
    """(state, local port, local address) of one inet_diag_msg."""
    family, state, _timer, _retrans, sport, _dport, src, _dst = INET_DIAG_MSG.unpack_from(payload)
    port = struct.unpack("!H", sport)[0]
    addr = IPv4Address(src[:4]) if family == socket.AF_INET else IPv6Address(src)
    return state, port, str(addr)


def listening_ports(diag: socket.socket, proto: Literal["tcp", "udp"]) -> set[tuple[int, str]]:
    """(port, bound address) of every listening `proto` socket, both families.

    Raises OSError if the kernel cannot answer (e.g. no udp_diag module).
    """
    ipproto, state = (socket.IPPROTO_TCP, TCP_LISTEN) if proto == "tcp" else (
        socket.IPPROTO_UDP, TCP_CLOSE)
    out: set[tuple[int, str]] = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        body = diag_request(family, ipproto, 1 << state)
        for mtype, payload in rtnl.dump(diag, SOCK_DIAG_BY_FAMILY, body):
            if mtype != SOCK_DIAG_BY_FAMILY or len(payload) < INET_DIAG_MSG.size:
                continue
            got_state, port, addr = parse_diag(payload)
            if got_state == state and port:
                out.add((port, addr))
    return out
