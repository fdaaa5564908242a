"""Host -> guest forwarding at the engine level: a loopback listener handed
to the engine, and the guest's answer to the SYN the engine sends for a host
client.

Owns `listen_forward()`, `syns()` and `accept_inbound()`. It uses only
127.0.0.1 and must not create engines (the unit fixtures do).
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address

from slirpy.engine import PROTO_TCP, PROTO_UDP
from tests.helpers.engine_guest import Guest, Sockets
from tests.helpers.frames import GUEST, GUEST_MAC, GW, IP, TCP, Out, tcp_flags
from tests.helpers.tcp_conn import Conn


def listen_forward(g: Guest, socks: Sockets, kind: int, fwd_id: int = 1,
                   guest_port: int = 80) -> int:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        s.listen(16)
    port = s.getsockname()[1]
    proto = PROTO_TCP if kind == socket.SOCK_STREAM else PROTO_UDP
    g.engine.set_guest_mac(bytes.fromhex(GUEST_MAC.replace(":", "")))
    g.engine.add_listener(s.detach(), proto, IPv4Address(GUEST), guest_port, fwd_id)
    return port


def syns(g: Guest, outs: list[Out]) -> list[Out]:
    return [o for o in outs if TCP in o.pkt and tcp_flags(o.pkt) == "S"]


def accept_inbound(g: Guest, client: socket.socket) -> Conn:
    """Wait for the engine's SYN for @client; answer as the guest's kernel."""
    cport = client.getsockname()[1]
    outs = g.wait(lambda o: bool(syns(g, o)))
    (syn,) = syns(g, outs)
    assert (syn.pkt[IP].src, syn.pkt[IP].dst) == (GW, GUEST)
    assert (syn.pkt[TCP].sport, syn.pkt[TCP].dport) == (cport, 80)
    # The guest is the server here: Conn's "sport" is the guest's port 80.
    c = Conn(g, cport, sport=80, seq=5000)
    c.rcv_nxt = (syn.pkt[TCP].seq + 1) & 0xFFFFFFFF
    g.send(c.seg("SA", options=[("MSS", 1460), ("NOP", None), ("WScale", 7)], window=65535))
    c.snd_nxt += 1
    return c
