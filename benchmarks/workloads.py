"""Small load generators run on the host and inside the container.

This module owns the Python workloads that `benchmarks/compare` runs on
either side of a stack: TCP ping-pong (request/response latency), connection
rate (connect, 1-byte request, 1-byte reply, close) and UDP packet rate
(guest→host, plain or UDP_SEGMENT writes, and host→guest). It is
stdlib-only and self-contained: compare passes its source to `python -c` so
that the unprivileged container user needs no access to the repository. Each
role prints one JSON line (servers print "ready" first) and every loop is
bounded both in count and in time.

    python workloads.py ROLE ARGS...
"""

from __future__ import annotations

import json
import socket
import statistics
import sys
import time
from collections.abc import Callable


def _recv_exact(s: socket.socket, buf: bytearray) -> bool:
    view = memoryview(buf)
    got = 0
    while got < len(buf):
        n = s.recv_into(view[got:])
        if n == 0:
            return False
        got += n
    return True


def _ready() -> None:
    print("ready", flush=True)


def pp_server(port: str, size: str, timeout: str = "120") -> None:
    """Echo fixed-size messages on one connection until EOF."""
    n = int(size)
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", int(port)))
        srv.listen(1)
        srv.settimeout(float(timeout))
        _ready()
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(float(timeout))
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = bytearray(n)
            count = 0
            while _recv_exact(conn, buf):
                conn.sendall(buf)
                count += 1
    print(json.dumps({"echoed": count}), flush=True)


def pp_client(host: str, port: str, size: str, rounds: str, warmup: str = "200") -> None:
    """`rounds` timed round trips of `size` bytes over one connection."""
    n, rounds_i, warm = int(size), int(rounds), int(warmup)
    msg = bytes(range(256)) * (n // 256 + 1)
    msg = msg[:n]
    buf = bytearray(n)
    times = []
    clock = time.perf_counter_ns
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(warm + rounds_i):
            t0 = clock()
            s.sendall(msg)
            if not _recv_exact(s, buf):
                raise SystemExit(f"connection closed after {i} round trips")
            if i >= warm:
                times.append(clock() - t0)
            if buf != msg:
                raise SystemExit(f"round trip {i} came back corrupted")
    times.sort()
    print(json.dumps({
        "rounds": len(times),
        "median_us": statistics.median(times) / 1e3,
        "p99_us": times[int(len(times) * 0.99) - 1] / 1e3,
        "mean_us": statistics.fmean(times) / 1e3,
    }), flush=True)


def cr_server(port: str) -> None:
    """Sequential accept loop: read 1 byte, answer 1 byte, wait for EOF, close."""
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", int(port)))
        srv.listen(1024)
        _ready()
        while True:  # killed by compare when the client is done
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(5)
                try:
                    if conn.recv(1) == b"q":
                        conn.sendall(b"r")
                        conn.recv(1)  # EOF: the client closes first
                except OSError:
                    pass


def cr_client(host: str, port: str, seconds: str, max_conns: str = "200000") -> None:
    """Connections per second, each with a 1-byte request and reply."""
    addr = (host, int(port))
    limit = int(max_conns)
    ok = errors = 0
    t0 = time.monotonic()
    deadline = t0 + float(seconds)
    while time.monotonic() < deadline and ok + errors < limit:
        try:
            with socket.create_connection(addr, timeout=5) as s:
                s.sendall(b"q")
                if s.recv(1) == b"r":
                    ok += 1
                else:
                    errors += 1
        except OSError:
            errors += 1
    elapsed = time.monotonic() - t0
    print(json.dumps({"ok": ok, "errors": errors, "elapsed": elapsed,
                      "rate": ok / elapsed}), flush=True)


class _MmsgVec:
    """A reusable array of `count` mmsghdr, each with one `size`-byte buffer.

    sendmmsg/recvmmsg through ctypes: 64 datagrams per system call, so that
    a Python sender or sink is not the bottleneck of a packet-rate test.
    """

    def __init__(self, count: int, size: int, fill: bytes = b"") -> None:
        import ctypes

        class Iovec(ctypes.Structure):
            _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))

        class Msghdr(ctypes.Structure):
            _fields_ = (("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                        ("iov", ctypes.POINTER(Iovec)), ("iovlen", ctypes.c_size_t),
                        ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                        ("flags", ctypes.c_int))

        class Mmsghdr(ctypes.Structure):
            _fields_ = (("hdr", Msghdr), ("len", ctypes.c_uint))

        self.libc = ctypes.CDLL(None, use_errno=True)
        self.count = count
        self.bufs = [ctypes.create_string_buffer(fill or size, size) for _ in range(count)]
        self.iovs = (Iovec * count)()
        self.msgs = (Mmsghdr * count)()
        for i in range(count):
            self.iovs[i].base = ctypes.addressof(self.bufs[i])
            self.iovs[i].len = size
            self.msgs[i].hdr.iov = ctypes.pointer(self.iovs[i])
            self.msgs[i].hdr.iovlen = 1

    def send(self, fd: int) -> int:
        return self.libc.sendmmsg(fd, self.msgs, self.count, 0)

    def recv(self, fd: int) -> tuple[int, int]:
        n = self.libc.recvmmsg(fd, self.msgs, self.count, 0x40, None)  # MSG_DONTWAIT
        if n <= 0:
            return 0, 0
        return n, sum(self.msgs[i].len for i in range(n))


def udp_sink(port: str, timeout: str) -> None:
    """Count datagrams until 1 s of silence after the first, or `timeout`."""
    import select

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:  # as root: a large buffer so that the sink is not the bottleneck
            s.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)  # SO_RCVBUFFORCE
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        s.bind(("127.0.0.1", int(port)))
        vec = _MmsgVec(64, 2048)
        _ready()
        packets = nbytes = 0
        deadline = time.monotonic() + float(timeout)
        wait = float(timeout)
        first = last = 0.0
        while time.monotonic() < deadline:
            if not select.select([s], [], [], wait)[0]:
                break
            while True:
                n, b = vec.recv(s.fileno())
                if n == 0:
                    break
                packets += n
                nbytes += b
            last = time.monotonic()
            if not first:
                first = last
                wait = 1.0
    print(json.dumps({"packets": packets, "bytes": nbytes, "span": last - first}), flush=True)


def _blast(send: Callable[[], int], seconds: float) -> None:
    """Call `send` (datagrams sent, or -1 with errno set) for `seconds`,
    then print what went out. ENOBUFS, ECONNREFUSED and EAGAIN are counted,
    not fatal: a sender faster than the stack is the point."""
    import ctypes

    sent = errors = calls = 0
    t0 = time.monotonic()
    deadline = t0 + seconds
    while time.monotonic() < deadline and calls < 50_000_000:
        n = send()
        calls += 1
        if n > 0:
            sent += n
        else:
            errors += 1
            if ctypes.get_errno() not in (105, 111, 11):
                raise OSError(ctypes.get_errno(), "send")
    elapsed = time.monotonic() - t0
    print(json.dumps({"sent": sent, "errors": errors, "elapsed": elapsed}), flush=True)


def udp_source(host: str, port: str, seconds: str, size: str, gso: str = "0") -> None:
    """Send `size`-byte datagrams as fast as sendmmsg allows for `seconds`;
    with `gso` > 0, as one UDP_SEGMENT write of `gso` datagrams per call."""
    import ctypes

    nseg = int(gso)
    vec = _MmsgVec(64, int(size), b"u" * int(size))
    one = b"u" * int(size) * nseg
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, int(port)))
        if nseg:
            s.setsockopt(17, 103, int(size))  # SOL_UDP, UDP_SEGMENT
        fd = s.fileno()

        def send_segmented() -> int:
            try:
                return s.send(one) // int(size)
            except OSError as e:
                ctypes.set_errno(e.errno or 0)
                return -1

        _blast(send_segmented if nseg else lambda: vec.send(fd), float(seconds))


def udp_push(port: str, seconds: str, size: str) -> None:
    """Host side of host→guest UDP: wait for the guest's "go", then send
    `size`-byte datagrams back to it with sendmmsg for `seconds`."""
    import select

    vec = _MmsgVec(64, int(size), b"h" * int(size))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", int(port)))
        _ready()
        if not select.select([s], [], [], 30)[0]:
            raise SystemExit("no go from the guest")
        _, peer = s.recvfrom(64)
        s.connect(peer)
        fd = s.fileno()
        _blast(lambda: vec.send(fd), float(seconds))


def udp_pull(host: str, port: str, timeout: str) -> None:
    """Guest side of host→guest UDP: say "go", count datagrams until 1 s of
    silence after the first, or `timeout`."""
    import select

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:  # root of its own netns may force a large buffer
            s.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)  # SO_RCVBUFFORCE
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        s.connect((host, int(port)))
        vec = _MmsgVec(64, 2048)
        s.send(b"go")
        packets = 0
        deadline = time.monotonic() + float(timeout)
        wait = float(timeout)
        while time.monotonic() < deadline:
            if not select.select([s], [], [], wait)[0]:
                break
            while True:
                n, _ = vec.recv(s.fileno())
                if n == 0:
                    break
                packets += n
            wait = 1.0
    print(json.dumps({"packets": packets}), flush=True)


ROLES = {f.__name__: f for f in (pp_server, pp_client, cr_server, cr_client, udp_sink,
                                 udp_source, udp_push, udp_pull)}

if __name__ == "__main__":
    ROLES[sys.argv[1]](*sys.argv[2:])
