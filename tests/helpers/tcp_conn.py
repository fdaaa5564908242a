"""The guest's end of one TCP connection through the engine.

Owns `Conn` (sequence numbers, window, segment builders, reading what the
engine sent back), `established()` (a guest connection to a new loopback
listener, handshake done) and `mss_of()`. It drives a `Guest` from
engine_guest.py and must not build engines or open sockets of its own
beyond what `Sockets` tracks.
"""

from __future__ import annotations

import socket
import time

from tests.helpers.engine_guest import Guest, Sockets
from tests.helpers.frames import (
    TCP,
    Out,
    check_csum,
    raw_tcp4,
    tcp4,
    tcp6,
    tcp_options,
    tcp_payload,
)


class Conn:
    """The guest's end of one TCP connection: sequence numbers, window,
    helpers to send segments and to read what the engine sent back."""

    def __init__(self, guest: Guest, dport: int, *, sport: int = 40000, family: int = 4,
                 mss: int = 1460, wscale: int | None = 7, window: int = 65535,
                 seq: int = 1000) -> None:
        self.g = guest
        self.dport = dport
        self.sport = sport
        self.family = family
        self.mss = mss
        self.wscale = wscale
        self.window = window
        self.iss = seq
        self.snd_nxt = seq
        self.rcv_nxt = 0
        self.isn = 0
        self.synack: Out | None = None
        self.received = bytearray()

    # -- building
    def seg(self, flags: str = "A", payload: bytes = b"", *, seq: int | None = None,
            ack: int | None = None, window: int | None = None, options=None):
        win = self.window if window is None else window
        if self.wscale is not None and "S" not in flags:
            win >>= self.wscale
        build = tcp4 if self.family == 4 else tcp6
        return build(self.dport, sport=self.sport, flags=flags,
                     seq=self.snd_nxt if seq is None else seq,
                     ack=(self.rcv_nxt if ack is None else ack) if "A" in flags else 0,
                     window=min(win, 65535), options=options, payload=payload)

    def syn(self) -> None:
        opts = [("MSS", self.mss)]
        if self.wscale is not None:
            opts += [("NOP", None), ("WScale", self.wscale)]
        self.g.send(self.seg("S", options=opts, window=min(self.window, 65535)))
        self.snd_nxt += 1

    def handshake(self, timeout: float = 2.0) -> Out:
        """SYN, wait for the SYN-ACK, ACK it. Returns the SYN-ACK."""
        self.syn()
        outs = self.g.wait(lambda o: any(TCP in x.pkt for x in o), timeout)
        synacks = [o for o in outs if TCP in o.pkt and o.pkt[TCP].flags & 0x12 == 0x12]
        assert synacks, f"no SYN-ACK: {outs}"
        sa = synacks[0]
        check_csum(sa)
        self.synack = sa
        self.isn = sa.pkt[TCP].seq
        self.rcv_nxt = (self.isn + 1) & 0xFFFFFFFF
        assert sa.pkt[TCP].ack == self.snd_nxt
        self.send_ack()
        return sa

    def send(self, data: bytes, flags: str = "PA", **kw) -> None:
        self.g.send(self.seg(flags, data, **kw))
        self.snd_nxt = (self.snd_nxt + len(data) + (1 if "F" in flags else 0)) & 0xFFFFFFFF

    def send_raw(self, data: bytes, flags: int = 0x18) -> None:
        """Fast path for bulk data (no scapy)."""
        if self.family != 4:
            self.send(data)
            return
        win = self.window >> (self.wscale or 0)
        frame = raw_tcp4(self.dport, self.snd_nxt, self.rcv_nxt, data, flags=flags,
                         window=min(win, 65535), sport=self.sport)
        self.g.send(frame)
        self.snd_nxt = (self.snd_nxt + len(data)) & 0xFFFFFFFF

    def send_ack(self, window: int | None = None, ack: int | None = None) -> None:
        self.g.send(self.seg("A", window=window, ack=ack))

    def fin(self) -> None:
        self.send(b"", flags="FA")

    # -- reading
    def mine(self, outs: list[Out]) -> list[Out]:
        return [o for o in outs if TCP in o.pkt and o.pkt[TCP].dport == self.sport
                and o.pkt[TCP].sport == self.dport]

    def take(self, outs: list[Out], *, ack: bool = False) -> list[Out]:
        """Check and absorb in-order data (and FIN) segments from @outs; with
        @ack, acknowledge what was taken."""
        segs = self.mine(outs)
        for o in segs:
            check_csum(o)
            t = o.pkt[TCP]
            data = tcp_payload(o.pkt)
            if data and t.seq == self.rcv_nxt:
                self.received += data
                self.rcv_nxt = (self.rcv_nxt + len(data)) & 0xFFFFFFFF
            if t.flags & 0x01 and (t.seq + len(data)) & 0xFFFFFFFF == self.rcv_nxt:
                self.rcv_nxt = (self.rcv_nxt + 1) & 0xFFFFFFFF
        if ack and segs:
            self.send_ack()
        return segs

    def pump(self, nbytes: int, timeout: float = 3.0, ack: bool = True) -> list[Out]:
        """Receive until @nbytes arrived in total, acking as we go."""
        segs: list[Out] = []
        deadline = time.monotonic() + timeout
        while len(self.received) < nbytes and time.monotonic() < deadline:
            self.g.poll(0.02)
            segs += self.take(self.g.out(), ack=ack)
        return segs


def established(g: Guest, socks: Sockets, **kw) -> tuple[Conn, socket.socket]:
    """A guest connection to a new loopback listener, handshake done;
    returns the guest's end and the accepted host socket."""
    lst = socks.tcp_listener()
    c = Conn(g, lst.getsockname()[1], **kw)
    c.handshake()
    return c, socks.accept(lst)


def mss_of(out: Out) -> int:
    return tcp_options(out.pkt).get("MSS")
