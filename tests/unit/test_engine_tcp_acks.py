"""Packet-level tests of the engine's ACKs and windows toward the guest (issue 7).

This file owns the frame-count side of the TCP fast path: a guest request's
ACK waits (delayed ACK) so that the host's answer carries it, it leaves on
its own once the delay is over, bulk guest data is acknowledged every second
segment with the last ACK always sent, and the window we advertise reuses a
measure of the host socket's send space (its right edge holds between
measures) yet opens again when a full socket drains. The fake clock is moved
by hand (engine.poll/flush with explicit times) so that no assertion depends
on how fast the machine is; the host side is a loopback socket.
"""

from __future__ import annotations

import select
import socket
import time

from tests.helpers.frames import TCP, tcp_payload
from tests.helpers.tcp_conn import Conn, established

MS = 1_000_000


def _established(g, socks, **kw) -> tuple[Conn, socket.socket]:
    c, h = established(g, socks, **kw)
    g.advance(0.01)  # the handshake's own ACKs, if any, are out of the way
    g.out()
    return c, h


def _poll_at(g, now: int, pred, timeout: float = 2.0) -> list:
    """Poll with the fake time frozen at @now until @pred(frames) holds."""
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        select.select([g.engine.fileno()], [], [], 0.01)
        g.engine.poll(now)
        got += g.out()
        if pred(got):
            break
    return got


def _send_at(c: Conn, data: bytes, now: int) -> None:
    """Like Conn.send, at fake time @now (building a frame takes real time)."""
    c.g.engine.input_frame(bytes(c.seg("PA", data)), now)
    c.snd_nxt = (c.snd_nxt + len(data)) & 0xFFFFFFFF


def _edge(out, ws: int) -> int:
    t = out.pkt[TCP]
    return t.ack + (t.window << ws)


def test_host_answer_carries_the_ack_no_pure_ack(guest, socks):
    c, h = _established(guest, socks)
    t0 = guest.clock.now
    _send_at(c, b"request", t0)
    assert c.mine(guest.out()) == []          # the ACK waits for the answer
    h.settimeout(2)
    assert h.recv(100) == b"request"
    h.sendall(b"answer")
    outs = c.mine(_poll_at(guest, t0 + MS // 10, lambda o: bool(c.mine(o))))
    assert [tcp_payload(o.pkt) for o in outs] == [b"answer"], outs
    assert outs[0].pkt[TCP].ack == c.snd_nxt  # the data frame acks the request
    c.take(outs)
    # Nothing left to say for that request, even once the delay is over.
    assert c.mine(guest.advance(0.01)) == []


def test_delayed_ack_leaves_on_its_own_when_the_host_is_silent(guest, socks):
    c, h = _established(guest, socks)
    t0 = guest.clock.now
    _send_at(c, b"no answer to this", t0)
    h.settimeout(2)
    assert h.recv(100) == b"no answer to this"
    assert c.mine(_poll_at(guest, t0 + MS // 2, lambda o: False, timeout=0.05)) == []
    guest.engine.flush(t0 + 2 * MS)           # past the 1 ms delay
    outs = c.mine(guest.out())
    assert len(outs) == 1 and tcp_payload(outs[0].pkt) == b""
    assert outs[0].pkt[TCP].ack == c.snd_nxt


def test_bulk_guest_data_acked_every_second_segment_and_the_last(make_guest, socks):
    g = make_guest(mtu=1500)
    c, h = _established(g, socks)
    h.settimeout(2)
    acks = []
    for i in range(9):                        # one segment per batch
        c.send_raw(bytes([i]) * 1460)
        acks += c.mine(g.out())
    got = b""
    while len(got) < 9 * 1460:
        got += h.recv(1 << 16)
    assert got == b"".join(bytes([i]) * 1460 for i in range(9))
    assert all(tcp_payload(o.pkt) == b"" for o in acks)
    # Every second segment: four ACKs for nine segments, each for 2 more.
    assert [o.pkt[TCP].ack - c.iss - 1 for o in acks] == [2920, 5840, 8760, 11680]
    # The ninth waits for the delay, then is acknowledged too.
    last = c.mine(g.advance(0.01))
    assert [o.pkt[TCP].ack for o in last] == [c.snd_nxt]


def test_out_of_order_data_still_gets_an_immediate_duplicate_ack(guest, socks):
    c, _h = _established(guest, socks)
    base = c.snd_nxt
    c.g.send(c.seg("PA", b"later", seq=base + 10))
    outs = c.mine(guest.out())                # no waiting: the guest needs it now
    assert len(outs) == 1 and outs[0].pkt[TCP].ack == base


def test_window_right_edge_holds_between_measures(guest, socks):
    """The send space is measured once and reused: as small writes go to the
    host, the window shrinks by what they used, so ack + window (the right
    edge) stays put; measuring each time would move it with every write."""
    c, h = _established(guest, socks)
    ws = 7
    h.settimeout(2)
    edges = []
    for i in range(20):
        c.send(b"%03d" % i * 30)
        got = b""
        while len(got) < 90:
            got += h.recv(100)
        outs = c.mine(guest.advance(0.01))
        assert len(outs) == 1 and outs[0].pkt[TCP].ack == c.snd_nxt
        edges.append(_edge(outs[0], ws))
    assert max(edges) - min(edges) < 1 << ws, edges


def test_window_opens_again_when_a_full_host_socket_drains(guest, socks):
    """The host reader stops: the guest's data fills the socket and the
    window closes; once the host has read everything, a window update
    (measured afresh, not the cached figure) gives the guest room again."""
    lst = socks.tcp_listener(rcvbuf=4096)
    c = Conn(guest, lst.getsockname()[1], window=1 << 20)
    c.handshake()
    h = socks.accept(lst)
    ws = 7
    chunk = b"z" * 1460
    sent = 0
    last = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sent < (64 << 20):
        for _ in range(32):
            c.send_raw(chunk)
        outs = c.mine(guest.settle(0.005))
        if outs:
            last = outs[-1]
            full = last.pkt[TCP].ack != c.snd_nxt   # the socket took less
            c.snd_nxt = last.pkt[TCP].ack          # resume from what was taken
            sent = (c.snd_nxt - c.iss - 1) & 0xFFFFFFFF
            if full:
                break
    assert last is not None and full, "the host socket never filled"
    closed_edge = _edge(last, ws)
    # The host reads everything: EPOLLOUT, then an update with a wide window.
    h.setblocking(False)
    got = 0
    updates = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (not updates or got < sent):
        try:
            while True:
                n = len(h.recv(1 << 20))
                if not n:
                    break
                got += n
        except BlockingIOError:
            pass
        updates = [o for o in c.mine(guest.settle(0.02))
                   if o.pkt[TCP].window << ws >= 64 << 10]
    assert got == sent
    assert updates, "no window update after the host socket drained"
    assert _edge(updates[-1], ws) > closed_edge
