"""The spliced relay (csrc/splice.c) without namespaces: everything on loopback.

This file owns the engine's side of spliced forwards below the API: a
namespace helper forked in the test's own netns (so "the guest" is a
127.0.0.1 server), a spliced listener, bytes both ways with half-close,
refusal as a reset, a helper that answers garbage, and a helper that dies.
The integration tests (tests/integration/test_splice.py) cover the real
container; here the engine is driven by hand with poll().
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address

import pytest

from slirpy.config import NetworkModel
from slirpy.engine import PROTO_TCP, Engine, EngineError, Limits, ns_helper_serve


@pytest.fixture
def engine() -> Iterator[Engine]:
    e = Engine(NetworkModel())
    yield e
    e.close()


def _fork_helper() -> tuple[socket.socket, int]:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        rc = 1
        try:
            parent.close()
            rc = 0 if ns_helper_serve(child.fileno()) == 0 else 1
        finally:
            os._exit(rc)
    child.close()
    return parent, pid


@pytest.fixture
def helper(engine: Engine) -> Iterator[int]:
    sock, pid = _fork_helper()
    engine.set_ns_helper(sock.detach())
    yield pid
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _server(handler: Callable[[socket.socket], None]) -> tuple[int, socket.socket]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def run() -> None:
        with contextlib.suppress(OSError):
            c, _ = srv.accept()
            with c:
                handler(c)

    threading.Thread(target=run, daemon=True).start()
    return srv.getsockname()[1], srv


def _listener(engine: Engine, guest_port: int, *, splice: bool = True, fwd_id: int = 1) -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    port = s.getsockname()[1]
    engine.add_listener(s.detach(), PROTO_TCP, IPv4Address("127.0.0.1"), guest_port, fwd_id,
                        splice=splice)
    return port


def _drive(engine: Engine, done: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, engine.counters()
        engine.poll(time.monotonic_ns(), 512)
        time.sleep(0.0005)


def _asked(child: socket.socket) -> bool:
    """The engine's request (family 4) arrived on the test's end of the helper socket."""
    try:
        return child.recv(16, socket.MSG_DONTWAIT) == b"\x04"
    except BlockingIOError:
        return False


def _sha_server(c: socket.socket) -> None:
    """Read to EOF, answer with the sha256 and the bytes again (after the FIN)."""
    data = bytearray()
    while d := c.recv(1 << 16):
        data += d
    c.sendall(hashlib.sha256(data).hexdigest().encode() + b"\n" + data)


def test_splice_needs_a_helper(engine: Engine) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    with pytest.raises(EngineError):
        engine.add_listener(s.fileno(), PROTO_TCP, IPv4Address("127.0.0.1"), 80, 1, splice=True)
    s.detach()  # the engine closed it when it gave the listener back


def test_bytes_both_ways_with_half_close(engine: Engine, helper: int) -> None:
    gport, srv = _server(_sha_server)
    port = _listener(engine, gport)
    body = random.Random(1).randbytes(5 * 1024 * 1024 + 3)
    got = bytearray()
    cl = socket.create_connection(("127.0.0.1", port), timeout=20)

    def client() -> None:
        cl.sendall(body)
        cl.shutdown(socket.SHUT_WR)
        while d := cl.recv(1 << 16):
            got.extend(d)

    t = threading.Thread(target=client, daemon=True)
    t.start()
    _drive(engine, lambda: not t.is_alive() and engine.counters()["splice_closed"] == 1)
    cl.close()
    srv.close()
    assert bytes(got) == hashlib.sha256(body).hexdigest().encode() + b"\n" + body
    ctr = engine.counters()
    assert ctr["splice_opened"] == 1
    assert ctr["splice_bytes_to_guest"] == len(body)
    assert ctr["splice_bytes_to_host"] == len(body) + 65
    assert ctr["splice_resets"] == 0 and ctr["tcp_flows_inbound"] == 0


def test_refused_is_a_reset_for_the_client(engine: Engine, helper: int) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]  # bound, never listening: refused
    port = _listener(engine, dead)
    cl = socket.create_connection(("127.0.0.1", port), timeout=5)
    _drive(engine, lambda: engine.counters()["splice_refused"] == 1)
    with pytest.raises(ConnectionResetError):
        cl.recv(10)
    cl.close()
    s.close()
    assert engine.counters()["splice_closed"] == 1


def test_garbage_from_the_helper_is_dropped(engine: Engine) -> None:
    """A reply without an fd, or with a UDP socket, is counted and the client reset."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    engine.set_ns_helper(parent.detach())
    port = _listener(engine, 9)
    for n, reply in enumerate(("nofd", "udp"), 1):
        cl = socket.create_connection(("127.0.0.1", port), timeout=5)
        _drive(engine, lambda: _asked(child))
        if reply == "nofd":
            child.send(b"\x00")
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                socket.send_fds(child, [b"\x00"], [u.fileno()])
        with contextlib.suppress(ConnectionResetError):
            cl.settimeout(5)
            _drive(engine, lambda n=n: engine.counters()["drop_splice_helper_reply"] == n)
            assert cl.recv(10) == b""
        cl.close()
    assert engine.counters()["drop_splice_helper_reply"] == 2
    assert engine.counters()["splice_opened"] == 0
    # The helper goes away: new connections are refused, the engine says so.
    child.close()
    _drive(engine, lambda: any(ev.data.startswith(b"the namespace helper exited")
                               for ev in engine.events()))
    cl = socket.create_connection(("127.0.0.1", port), timeout=5)
    _drive(engine, lambda: engine.counters()["drop_splice_no_helper"] == 1)
    cl.close()


def test_remove_listener_while_waiting_for_the_helper(engine: Engine) -> None:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    engine.set_ns_helper(parent.detach())
    port = _listener(engine, 9)
    cl = socket.create_connection(("127.0.0.1", port), timeout=5)
    _drive(engine, lambda: _asked(child))
    engine.remove_listener(1)
    with socket.socket() as s:
        socket.send_fds(child, [b"\x00"], [s.fileno()])
    cl.settimeout(5)
    _drive(engine, lambda: True)
    deadline = time.monotonic() + 5
    while True:
        engine.poll(time.monotonic_ns(), 64)
        try:
            assert cl.recv(10) == b""
            break
        except ConnectionResetError:
            break
        except TimeoutError:
            assert time.monotonic() < deadline
    cl.close()
    child.close()
    assert engine.counters()["splice_opened"] == 0


def test_idle_connection_is_reset_after_tcp_idle_s() -> None:
    engine = Engine(NetworkModel(), limits=Limits(tcp_idle_s=5))
    sock, pid = _fork_helper()
    try:
        engine.set_ns_helper(sock.detach())
        gport, srv = _server(lambda c: c.recv(10))  # reads once, then waits
        port = _listener(engine, gport)
        cl = socket.create_connection(("127.0.0.1", port), timeout=5)
        _drive(engine, lambda: engine.counters()["splice_opened"] == 1)
        engine.poll(time.monotonic_ns() + 4 * 10**9, 64)  # idle, not yet long enough
        assert engine.counters()["splice_idle_closed"] == 0
        engine.poll(time.monotonic_ns() + 7 * 10**9, 64)
        ctr = engine.counters()
        assert ctr["splice_idle_closed"] == 1 and ctr["splice_closed"] == 1
        with pytest.raises(ConnectionResetError):
            cl.recv(10)
        cl.close()
        srv.close()
    finally:
        engine.close()
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_a_spliced_connection_takes_six_tcp_slots() -> None:
    """max_tcp_flows=12: two spliced connections (6 fds each), the third is
    closed at accept and counted as drop_flow_cap."""
    engine = Engine(NetworkModel(), limits=Limits(max_tcp_flows=12))
    sock, pid = _fork_helper()
    held: list[socket.socket] = []
    try:
        engine.set_ns_helper(sock.detach())
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)  # connections complete in the backlog; nobody accepts
        port = _listener(engine, srv.getsockname()[1])
        for n in (1, 2):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            _drive(engine, lambda n=n: engine.counters()["splice_opened"] == n)
        held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        _drive(engine, lambda: engine.counters()["drop_flow_cap"] == 1)
        assert engine.counters()["splice_opened"] == 2
        srv.close()
    finally:
        for s in held:
            s.close()
        engine.close()
        os.kill(pid, 9)
        os.waitpid(pid, 0)
