"""Fixtures for the engine's packet-level tests: a fake clock, an engine with
no TAP, a `Guest` that feeds it frames and collects what it sends, a TCP
`Conn` that plays the guest's side of a connection, and loopback servers.

Everything here talks only to 127.0.0.1 / ::1, and every socket and engine a
fixture opens is closed when the test ends, pass or fail.
"""

from __future__ import annotations

import pathlib
import select
import socket
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import pytest
from frames import (
    GUEST,
    GUEST6,
    GW,
    GW6,
    TCP,
    Out,
    Vnet,
    check_csum,
    raw,
    raw_tcp4,
    split_out,
    tcp4,
    tcp6,
    tcp_options,
    tcp_payload,
)

from slirpy.config import NetworkModel
from slirpy.engine import Engine, Limits

SEC = 1_000_000_000


class Clock:
    """CLOCK_MONOTONIC plus an offset that a test moves forward with
    advance(): time passes as it really does (the engine arms its timerfd in
    absolute monotonic time, so a clock stuck in the past would keep it
    firing), and a test can jump over a timeout without waiting for it."""

    def __init__(self) -> None:
        self.offset = 0

    @property
    def now(self) -> int:
        return time.monotonic_ns() + self.offset

    def advance(self, seconds: float) -> int:
        self.offset += int(seconds * SEC)
        return self.now


class Guest:
    """The guest's side of the TAP, played by a test."""

    def __init__(self, engine: Engine, clock: Clock, vnet_hdr: bool) -> None:
        self.engine = engine
        self.clock = clock
        self.vnet_hdr = vnet_hdr
        self.pending: list[Out] = []

    def send(self, pkt, vnet: Vnet | None = None) -> None:
        """Feed one Ethernet frame (scapy packet or bytes); the virtio header
        (@vnet, or an empty one) is prepended when the engine expects it."""
        frame = bytes(pkt) if isinstance(pkt, bytes | bytearray) else raw(pkt)
        if self.vnet_hdr:
            frame = (vnet or Vnet()).pack() + frame
        self.engine.input_frame(frame, self.clock.now)

    def send_raw(self, frame: bytes) -> None:
        """Feed bytes exactly as given (the virtio header, if any, included)."""
        self.engine.input_frame(frame, self.clock.now)

    def out(self) -> list[Out]:
        got = self.pending + [split_out(f, self.vnet_hdr) for f in self.engine.take_output()]
        self.pending = []
        return got

    def poll(self, timeout: float = 0.0) -> int:
        r, _, _ = select.select([self.engine.fileno()], [], [], timeout)
        return self.engine.poll(self.clock.now) if r else 0

    def wait(self, pred=None, timeout: float = 2.0) -> list[Out]:
        """Poll host sockets until frames come out (and @pred holds for the
        accumulated list), or @timeout real seconds pass."""
        got = self.out()
        deadline = time.monotonic() + timeout
        while True:
            if got and (pred is None or pred(got)):
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                return got
            self.poll(min(left, 0.05))
            got += self.out()

    def settle(self, seconds: float = 0.05) -> list[Out]:
        """Poll for a short while and return everything that came out."""
        got = self.out()
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.poll(min(left, 0.01))
            got += self.out()
        return got

    def advance(self, seconds: float) -> list[Out]:
        """Move the fake clock and run the engine's timers."""
        self.engine.flush(self.clock.advance(seconds))
        return self.out()

    def counters(self) -> dict[str, int]:
        return self.engine.counters()


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


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_guest(clock):
    """Factory: make_guest(vnet_hdr=False, offload=False, **NetworkModel
    fields, limits=..., flow_events=...). Engines are closed at teardown."""
    engines: list[Engine] = []

    def make(*, vnet_hdr: bool = False, offload: bool = False, limits: Limits | None = None,
             dns_udp_port: int = 0, dns_tcp_port: int = 0, flow_events: bool = False,
             **net) -> Guest:
        e = Engine(NetworkModel(**net), vnet_hdr=vnet_hdr, offload=offload, limits=limits,
                   dns_udp_port=dns_udp_port, dns_tcp_port=dns_tcp_port,
                   flow_events=flow_events)
        engines.append(e)
        return Guest(e, clock, vnet_hdr)

    yield make
    for e in engines:
        e.close()


@pytest.fixture
def guest(make_guest) -> Guest:
    return make_guest()


@pytest.fixture
def guest6(make_guest) -> Guest:
    return make_guest(ipv6=True)


class Sockets:
    """Tracks every socket a test opens so teardown closes them all."""

    def __init__(self) -> None:
        self.all: list[socket.socket] = []

    def add(self, s: socket.socket) -> socket.socket:
        self.all.append(s)
        return s

    def tcp_listener(self, family: int = socket.AF_INET, rcvbuf: int | None = None):
        s = self.add(socket.socket(family, socket.SOCK_STREAM))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
        s.listen(16)
        s.settimeout(2.0)
        return s

    def accept(self, listener: socket.socket) -> socket.socket:
        c, _ = listener.accept()
        self.add(c)
        c.settimeout(2.0)
        return c

    def udp(self, family: int = socket.AF_INET) -> socket.socket:
        s = self.add(socket.socket(family, socket.SOCK_DGRAM))
        s.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
        s.settimeout(2.0)
        return s

    def closed_port(self, kind: int = socket.SOCK_STREAM) -> int:
        """A loopback port with nothing listening (bound then closed)."""
        s = socket.socket(socket.AF_INET, kind)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        return port

    def close(self) -> None:
        for s in self.all:
            s.close()


@pytest.fixture
def socks():
    s = Sockets()
    yield s
    s.close()


class FakeTap:
    """A SOCK_SEQPACKET pair standing in for the TAP: frames written to our
    end are read by the engine's drain loop one at a time, so that several
    frames are handled in one drain, as with a real TAP."""

    def __init__(self, g) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sock = ours
        self.g = g
        g.engine.set_tap(theirs.detach())

    def write(self, pkt) -> None:
        self.sock.send(Vnet().pack() + raw(pkt))

    def frames(self) -> list:
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(split_out(self.sock.recv(70000), True))
        except BlockingIOError:
            pass
        return out

    def close(self) -> None:
        self.sock.close()


class TapGuest(Guest):
    """A Guest whose frames travel through a FakeTap: Conn and established()
    work unchanged, and frames sent before a poll are handled in one drain."""

    def __init__(self, g: Guest, tap: FakeTap) -> None:
        self.__dict__.update(g.__dict__)
        self.tap = tap

    def send(self, pkt, vnet: Vnet | None = None) -> None:
        self.tap.write(pkt)

    def out(self) -> list[Out]:
        return self.tap.frames()


@pytest.fixture
def tap_guest(make_guest):
    g = make_guest(vnet_hdr=True, offload=True)
    t = FakeTap(g)
    yield g, t
    t.close()


__all__ = ["GUEST", "GUEST6", "GW", "GW6", "SEC", "Clock", "Conn", "FakeTap", "Guest",
           "TapGuest", "established", "mss_of", "tap_guest"]
