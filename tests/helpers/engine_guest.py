"""The guest's side of an engine with no real TAP, for packet-level tests.

Owns `Clock` (monotonic time a test can move forward), `Guest` (feeds the
engine Ethernet frames and collects what it sends), `FakeTap`/`TapGuest`
(the same through a SOCK_SEQPACKET pair standing in for the TAP) and
`Sockets` (every host socket a test opens, closed at teardown). The fixtures
that build these live in tests/unit/conftest.py; this module must not
create engines itself.

Everything here talks only to 127.0.0.1 / ::1.
"""

from __future__ import annotations

import select
import socket
import time
from typing import TYPE_CHECKING

from tests.helpers.frames import Out, Vnet, raw, split_out

if TYPE_CHECKING:
    from slirpy.engine import Engine

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
