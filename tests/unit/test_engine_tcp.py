"""Packet-level tests of the engine's TCP translation (issue 3, item 1).

This file owns what the integration tests cannot pin down with a real guest
kernel: the exact segments slirpy sends (SYN-ACK only after the host connect
succeeded, RST for a refused port, retransmission on the RTO, duplicate and
out-of-order guest data) and the timers (idle timeout from Limits, the
half-open timeout, keepalive probes keeping a flow alive), driven by the fake
clock of conftest.py. The guest's side is played by `Conn`; the host side is
a loopback socket. The deterministic fault injector (set_fault) drops frames
both ways while a transfer must still arrive byte-exact.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import random
import select
import socket
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Iterator

from slirpy.engine import Limits
from tests.helpers.engine_guest import TapGuest
from tests.helpers.frames import ICMP, TCP, tcp_flags, tcp_payload
from tests.helpers.tcp_conn import Conn, established, mss_of
from tests.helpers.wait import wait_until


def _flags(outs) -> list[str]:
    return [tcp_flags(o.pkt) for o in outs]



def _connected(s: socket.socket) -> bool:
    """A non-blocking connect() has completed: the listener's accept queue
    holds this connection (the queue is full once one of them is there)."""
    _, w, _ = select.select([], [s], [], 0)
    return bool(w) and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0

def test_synack_only_after_host_connect_and_mss_from_mtu(make_guest, socks):
    g = make_guest(mtu=1500)
    lst = socks.tcp_listener()
    c = Conn(g, lst.getsockname()[1], mss=65000)
    sa = c.handshake()
    assert tcp_flags(sa.pkt) == "SA"
    assert mss_of(sa) == 1460                    # MTU 1500 - 40, not the guest's 65000
    assert "WScale" in dict(sa.pkt[TCP].options)  # window scaling offered back
    assert g.counters()["tcp_flows_opened"] == 1
    socks.accept(lst)  # the host side really is connected


def test_no_synack_while_host_connect_is_pending_then_half_open_timeout(make_guest, socks):
    g = make_guest()
    # A listener whose accept queue is full drops further SYNs: the engine's
    # connect() stays in progress, and the guest must not get a SYN-ACK.
    lst = socks.add(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    port = lst.getsockname()[1]
    fillers = []
    for _ in range(2):
        s = socks.add(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    wait_until(lambda: any(_connected(f) for f in fillers), 2, what="the accept queue is full")
    c = Conn(g, port)
    c.syn()
    outs = g.settle(0.3)
    assert not [o for o in c.mine(outs) if "S" in tcp_flags(o.pkt)], outs
    assert [f["state"] for f in g.engine.flows()] == [1]          # CONNECTING
    g.advance(70)
    assert len(g.engine.flows()) == 1                             # 70 s < 75 s
    outs = g.advance(10)                                          # past 75 s
    assert g.engine.flows() == []
    # The guest learns it: ICMP host unreachable quoting its SYN.
    icmp = [o for o in outs if ICMP in o.pkt]
    assert icmp and icmp[0].pkt[ICMP].type == 3 and icmp[0].pkt[ICMP].code == 1, outs
    assert icmp[0].pkt[ICMP].payload.sport == c.sport  # quoted as TCPerror


def test_refused_port_gets_rst(guest, socks):
    port = socks.closed_port()
    c = Conn(guest, port)
    c.syn()
    outs = c.mine(guest.wait(lambda o: bool(c.mine(o))))
    assert _flags(outs) == ["RA"]
    assert outs[0].pkt[TCP].ack == c.snd_nxt
    assert guest.counters()["tcp_connect_refused"] == 1
    assert guest.engine.flows() == []


def test_data_both_ways_and_host_rst_reaches_guest(guest, socks):
    c, h = established(guest, socks)
    c.send(b"hello host")
    assert h.recv(100) == b"hello host"
    h.sendall(b"hello guest")
    c.pump(11)
    assert bytes(c.received) == b"hello guest"
    # SO_LINGER 0: the host resets; the guest must see a RST.
    h.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    h.close()
    outs = c.mine(guest.wait(lambda o: any("R" in tcp_flags(x.pkt) for x in c.mine(o))))
    assert any("R" in f for f in _flags(outs)), outs


def test_guest_rst_resets_host_socket(guest, socks):
    c, h = established(guest, socks)
    c.g.send(c.seg("R"))
    guest.settle(0.1)
    h.settimeout(2)
    try:
        data = h.recv(10)
        assert data == b""  # at least EOF; ECONNRESET is the usual outcome
    except ConnectionResetError:
        pass
    assert guest.engine.flows() == []


def test_duplicate_and_out_of_order_guest_data(guest, socks):
    c, h = established(guest, socks)
    base = c.snd_nxt
    # A segment ahead of the expected sequence: not delivered out of order,
    # and the engine answers with an ACK for what it has (a duplicate ACK).
    c.g.send(c.seg("PA", b"BBBB", seq=base + 4))
    outs = c.mine(guest.settle(0.1))
    assert outs and all(o.pkt[TCP].ack == base for o in outs), outs
    h.settimeout(0.2)
    try:
        early = h.recv(100)
    except TimeoutError:
        early = b""
    assert early == b""
    # The gap, then the same bytes again (a retransmission): the host gets
    # each byte exactly once, in order.
    c.send(b"AAAA")
    c.g.send(c.seg("PA", b"AAAA", seq=base))        # duplicate
    c.send(b"BBBB")
    c.g.send(c.seg("PA", b"AABB", seq=base + 2))    # overlapping
    c.send(b"CC")
    got = b""
    h.settimeout(2)
    while len(got) < 10:
        got += h.recv(100)
    assert got == b"AAAABBBBCC"
    outs = c.mine(guest.settle(0.1))
    assert max(o.pkt[TCP].ack for o in outs) == c.snd_nxt


def test_unacked_data_is_retransmitted_on_rto(guest, socks):
    c, h = established(guest, socks)
    h.sendall(b"x" * 1000)
    first = [o for o in c.mine(guest.wait(lambda o: bool(c.mine(o)))) if tcp_payload(o.pkt)]
    assert first and first[0].pkt[TCP].seq == c.rcv_nxt
    # No ACK: before the initial RTO (1 s) nothing; after it the same bytes.
    assert [o for o in c.mine(guest.advance(0.1)) if tcp_payload(o.pkt)] == []
    again = [o for o in c.mine(guest.advance(1.5)) if tcp_payload(o.pkt)]
    assert again, "no retransmission after the RTO"
    assert again[0].pkt[TCP].seq == first[0].pkt[TCP].seq
    assert tcp_payload(again[0].pkt) == tcp_payload(first[0].pkt)
    assert guest.counters()["tcp_retransmits"] >= 1
    # Acked at last: the host's data was delivered once.
    c.take(again, ack=True)
    assert bytes(c.received) == b"x" * 1000


def test_idle_timeout_from_limits_resets_both_sides(make_guest, socks):
    g = make_guest(limits=Limits(tcp_idle_s=30))
    c, h = established(g, socks)
    c.send(b"ping")
    assert h.recv(10) == b"ping"
    g.advance(20)
    assert len(g.engine.flows()) == 1
    outs = c.mine(g.advance(15))                      # 35 s idle > 30 s
    assert any("R" in f for f in _flags(outs)), outs
    assert g.engine.flows() == []
    h.settimeout(2)
    with contextlib.suppress(ConnectionResetError):
        assert h.recv(10) == b""


def test_keepalive_probes_keep_an_idle_flow_open(make_guest, socks):
    g = make_guest(limits=Limits(tcp_idle_s=30))
    c, h = established(g, socks)
    for _ in range(4):                                # 80 s in all, never 30 idle
        g.advance(20)
        # A Linux keepalive probe: one byte before snd_nxt, no data.
        c.g.send(c.seg("A", seq=(c.snd_nxt - 1) & 0xFFFFFFFF))
        outs = c.mine(g.settle(0.05))
        assert outs and outs[-1].pkt[TCP].ack == c.snd_nxt, outs  # answered
    assert len(g.engine.flows()) == 1
    c.send(b"still here")
    assert h.recv(100) == b"still here"


def test_host_socket_has_keepalive(guest, socks):
    """Dead host peers are found by the kernel's keepalive on our socket."""
    _c, h = established(guest, socks)
    engine_port = h.getpeername()[1]
    out = subprocess.run(
        ["ss", "-tnoH", "state", "established", f"( sport = :{engine_port} )"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "timer:(keepalive" in out, out


def test_transfer_byte_exact_under_injected_loss_both_ways(guest, socks):
    c, h = established(guest, socks)
    guest.engine.set_fault(50, 50, seed=7)            # 5% each way
    size = 256 << 10
    data = random.Random(3).randbytes(size)
    # host -> guest: the guest acks in order only; lost frames come back by
    # the engine's fast retransmit or its RTO (the clock jumps when stuck).
    h.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 30
    while len(c.received) < size and time.monotonic() < deadline:
        if sent < size:
            with contextlib.suppress(BlockingIOError):
                sent += h.send(data[sent:sent + 65536])
        before = len(c.received)
        c.pump(before + 1, timeout=0.05)
        if len(c.received) == before:
            c.take(guest.advance(0.5), ack=True)
            c.send_ack()                              # the ACK itself may be lost
    assert hashlib.sha256(c.received).hexdigest() == hashlib.sha256(data).hexdigest()
    # guest -> host: the guest resends what was not acknowledged.
    h.setblocking(True)
    h.settimeout(0.05)
    back = random.Random(4).randbytes(64 << 10)
    got = bytearray()
    una = c.snd_nxt
    deadline = time.monotonic() + 30
    while len(got) < len(back) and time.monotonic() < deadline:
        off = 0
        c.snd_nxt = una + len(got)
        pos = len(got)
        while off < 8 and pos < len(back):              # a window of 8 segments
            c.send(back[pos:pos + 1400])
            pos += 1400
            off += 1
        try:
            while True:
                chunk = h.recv(65536)
                if not chunk:
                    break
                got += chunk
        except TimeoutError:
            pass
    assert bytes(got) == back
    cnt = guest.counters()
    assert cnt["drop_fault_in"] > 0 and cnt["drop_fault_out"] > 0


def test_half_open_cap_from_limits(make_guest, socks):
    """max_half_open bounds pending connects; a refused SYN is dropped (the
    guest retries) and gets through once a slot is free. The listener's
    accept queue is full at first so that the connects stay pending (on
    loopback they otherwise complete within connect() itself)."""
    g = make_guest(limits=Limits(max_half_open=2))
    lst = socks.add(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    port = lst.getsockname()[1]
    fillers = []
    for _ in range(2):
        s = socks.add(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    wait_until(lambda: any(_connected(f) for f in fillers), 2, what="the accept queue is full")
    conns = [Conn(g, port, sport=41000 + i) for i in range(3)]
    for c in conns:  # no poll in between: all three connects are pending
        c.syn()
    cnt = g.counters()
    assert cnt["drop_half_open_cap"] == 1 and cnt["tcp_flows_opened"] == 2
    # Room in the accept queue: the kernel resends the pending SYNs (after
    # 1 s) and the two connects complete.
    stop = threading.Event()

    def accept_all() -> None:
        lst.settimeout(0.05)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                socks.add(lst.accept()[0])

    t = threading.Thread(target=accept_all)
    t.start()
    try:
        outs = g.wait(lambda o: len([x for x in o if "S" in tcp_flags(x.pkt)]) >= 2, 8)
        assert sorted(o.pkt[TCP].dport for o in outs if tcp_flags(o.pkt) == "SA") == [41000,
                                                                                       41001]
        for o in outs:  # the guest completes them (no SYN-ACK retransmissions)
            if tcp_flags(o.pkt) == "SA":
                c = conns[o.pkt[TCP].dport - 41000]
                c.rcv_nxt = (o.pkt[TCP].seq + 1) & 0xFFFFFFFF
                c.send_ack()
        g.out()
        # The two connects completed: the third SYN, resent, is taken now.
        conns[2].snd_nxt = conns[2].iss
        sa = conns[2].handshake()
        assert sa.pkt[TCP].dport == 41002
        assert g.counters()["drop_half_open_cap"] == 1
    finally:
        stop.set()
        t.join()


def test_window_scaling_lets_more_than_64k_fly(guest, socks):
    """With the guest's window scale, the engine keeps more than 64 KiB
    unacknowledged toward it (what keeps throughput up when the RTT grows),
    and it announces a window beyond 64 KiB itself."""
    c, h = established(guest, socks, window=1 << 20, wscale=7)
    ws = dict(c.synack.pkt[TCP].options)["WScale"]
    assert ws > 0
    h.sendall(random.Random(5).randbytes(512 << 10))
    inflight = 0
    deadline = time.monotonic() + 3
    while inflight < (256 << 10) and time.monotonic() < deadline:
        guest.poll(0.02)
        inflight += sum(len(tcp_payload(o.pkt)) for o in c.mine(guest.out()))
    assert inflight >= 256 << 10, inflight  # no ACK sent yet: all of it in flight
    # The engine's own receive window (the host socket's free space), scaled.
    c.send(b"x")
    acks = [o for o in c.mine(guest.settle(0.1)) if o.pkt[TCP].ack == c.snd_nxt]
    assert acks and acks[-1].pkt[TCP].window << ws > 65535


def _stream_sockets() -> Iterator[tuple[int, socket.socket]]:
    """Every TCP/IP socket of this process (the engine runs in it, so its host
    sockets are among them), as (fd, a duplicate to inspect)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        with s:
            if s.type == socket.SOCK_STREAM and s.family in (socket.AF_INET,
                                                             socket.AF_INET6):
                yield fd, s


def _engine_end_of(h: socket.socket) -> int:
    """The fd of the engine's host socket connected to @h."""
    for fd, s in _stream_sockets():
        with contextlib.suppress(OSError):
            if s.getsockname() == h.getpeername():
                return fd
    raise AssertionError("the engine's socket was not found")


def _unread_bytes_of_peer(h: socket.socket) -> int:
    """SIOCINQ of the engine's end of @h."""
    buf = fcntl.ioctl(_engine_end_of(h), termios.FIONREAD, b"\0" * 4)
    return struct.unpack("i", buf)[0]


def _spare_sockets() -> list[int]:
    """Fds of TCP sockets neither bound nor connected: the engine's spares."""
    return [fd for fd, s in _stream_sockets() if s.getsockname()[1] == 0]


def test_a_spare_socket_waits_for_the_next_connection(guest, socks):
    """After a guest's first connection the engine keeps a socket made ahead
    for the next SYN; that SYN takes it, a new spare follows, and closing
    the engine closes it."""
    assert _spare_sockets() == []
    established(guest, socks)
    (spare,) = _spare_sockets()
    _c2, h2 = established(guest, socks, sport=40001)
    assert _engine_end_of(h2) == spare
    (second,) = _spare_sockets()
    assert second != spare
    guest.engine.close()
    assert _spare_sockets() == []


def test_acks_riding_on_requests_free_the_host_socket(guest, socks):
    """Ping-pong: each request carries the ACK of the last answer. The
    engine frees the acknowledged bytes after passing the request on, so
    nothing piles up in the host socket and every answer arrives once."""
    c, h = established(guest, socks)
    for i in range(50):  # bounded
        c.send(b"req%02d" % i)
        assert h.recv(100) == b"req%02d" % i
        h.sendall(b"answer%02d" % i)
        c.pump(len(c.received) + 8, ack=False)  # acked by the next request
    c.send_ack()
    guest.settle(0.05)
    assert bytes(c.received) == b"".join(b"answer%02d" % i for i in range(50))
    (flow,) = guest.engine.flows()
    assert flow["state"] == 3  # ESTABLISHED, not reset by a bad consume
    # Everything acked was consumed: the engine's socket (in this process)
    # holds nothing, and the next answer is peeked at offset 0.
    assert _unread_bytes_of_peer(h) == 0
    h.sendall(b"last")
    c.pump(len(c.received) + 4)
    assert bytes(c.received).endswith(b"last")


def _complete(tg: TapGuest, c: Conn, outs, lst: socket.socket, socks,
              request: bytes, answer: bytes) -> None:
    """Finish @c's handshake from its SYN-ACK in @outs with a first request
    (which acknowledges it), and check one exchange with the host."""
    synacks = [o for o in c.mine(outs) if tcp_flags(o.pkt) == "SA"]
    assert synacks, f"no SYN-ACK: {outs}"
    c.isn = synacks[0].pkt[TCP].seq
    c.rcv_nxt = (c.isn + 1) & 0xFFFFFFFF
    c.send(request)
    tg.poll(1)
    h = socks.accept(lst)
    h.settimeout(2)
    assert h.recv(10) == request
    h.sendall(answer)
    c.pump(len(answer))
    assert bytes(c.received) == answer


def test_fin_and_next_syn_in_one_drain(tap_guest, socks):
    """Connection churn: a guest closes a connection and opens the next, and
    the FIN and the SYN are read in one drain. The SYN gets its SYN-ACK, the
    old host socket is shut down for writing (its host peer reads EOF), and
    both connections go on: the new one carries data, the old one closes."""
    tg = TapGuest(*tap_guest)
    a, ha = established(tg, socks)
    lst = socks.tcp_listener()
    b = Conn(tg, lst.getsockname()[1], sport=40001)
    a.send(b"last", flags="FPA")
    b.syn()
    tg.poll(1)  # one poll: both frames were queued before it
    outs = tg.out()
    ha.settimeout(2)
    assert ha.recv(10) == b"last" and ha.recv(10) == b""
    ha.sendall(b"bye")
    ha.close()
    _complete(tg, b, outs, lst, socks, b"hello", b"world")
    a.pump(3)
    assert bytes(a.received) == b"bye"
    deadline = time.monotonic() + 3
    while a.rcv_nxt != (a.isn + 1 + 3 + 1) & 0xFFFFFFFF and time.monotonic() < deadline:
        tg.poll(0.02)
        a.take(tg.out(), ack=True)  # the host's FIN, acknowledged
    tg.poll(0.05)
    assert [f["guest_port"] for f in tg.engine.flows()] == [40001]


def test_fin_then_rst_then_syn_in_one_drain(tap_guest, socks):
    """FIN, RST and a new SYN in one drain: the reset flow's deferred
    shutdown is skipped (its socket is gone, and the new connection may have
    its fd number), the host peer sees the connection end, and the new
    connection works both ways."""
    tg = TapGuest(*tap_guest)
    a, ha = established(tg, socks)
    lst = socks.tcp_listener()
    b = Conn(tg, lst.getsockname()[1], sport=40001)
    a.fin()
    tg.send(a.seg("R"))
    b.syn()
    tg.poll(1)
    outs = tg.out()
    ha.settimeout(2)
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        assert ha.recv(10) == b""
    _complete(tg, b, outs, lst, socks, b"ping", b"pong")
    (flow,) = tg.engine.flows()
    assert flow["guest_port"] == 40001 and flow["state"] == 3


def test_fin_ack_that_acks_host_data_closes_cleanly(guest, socks):
    """The guest acks the host's data and FIN in the segment that carries
    its own FIN: the acked bytes must leave the host socket before it is
    closed, or the kernel would reset the host peer instead of a FIN."""
    c, h = established(guest, socks)
    h.sendall(b"bye")
    h.shutdown(socket.SHUT_WR)
    segs = []
    deadline = time.monotonic() + 3
    while c.rcv_nxt != (c.isn + 1 + 3 + 1) & 0xFFFFFFFF and time.monotonic() < deadline:
        guest.poll(0.02)
        segs += c.take(guest.out())  # data and FIN, not acked yet
    assert bytes(c.received) == b"bye"
    # The host had shut down when its data was read: the FIN rides along.
    assert [(tcp_flags(o.pkt), tcp_payload(o.pkt)) for o in segs] == [("FPA", b"bye")]
    c.fin()  # FIN|ACK acking "bye" and the host's FIN at once
    guest.settle(0.1)
    assert guest.engine.flows() == []
    h.settimeout(2)
    assert h.recv(10) == b""  # EOF, not ECONNRESET
