"""Test hosts and the peer programs of the IPv4 data-path tests.

This file owns two things:

* `make_testhost()`: a *test host*, i.e. a network namespace made here
  (`ip netns add`) behind a veth pair from the root namespace, on a /29 of
  198.51.100.0/24 (TEST-NET-2) picked at random among the free ones so that
  concurrent runs do not collide. slirpy runs in the root namespace and
  reaches it by an ordinary route; nothing is routed anywhere else.
* the peer programs, run as `python testhost.py SUBCOMMAND ...`: servers (on
  host loopback or inside a test host) and clients (inside the container,
  whose root may read this file). Every program is bounded in time and in
  what it sends, and reports what it saw as one JSON object per line, with
  sha256 digests of the bytes, so tests can assert outcomes.

Data is deterministic: `pattern(seed, size)` slices a seeded random pool at
an odd stride, so any misplaced, duplicated or corrupted segment changes the
digest, and the test computes the expected digest itself.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import ipaddress
import json
import os
import random
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

HERE = os.path.abspath(__file__)
BLOCK = 1 << 20
_POOL_SIZE = 8 << 20
PY = sys.executable
# Subnets this module may use: the /29s of TEST-NET-2.
TESTNET = ipaddress.IPv4Network("198.51.100.0/24")


# --------------------------------------------------------------------------
# deterministic data


def _pool(seed: int) -> bytes:
    return random.Random(seed).randbytes(_POOL_SIZE)


def pattern(seed: int, size: int) -> Iterator[bytes]:
    """`size` deterministic bytes for `seed`, in blocks of at most 1 MiB."""
    pool = _pool(seed)
    i = 0
    while size > 0:
        n = min(BLOCK, size)
        # An odd stride that is not a multiple of any segment size: a block
        # never repeats another at the same offset.
        off = (i * 1_000_003) % (_POOL_SIZE - BLOCK)
        yield pool[off : off + n]
        size -= n
        i += 1


def pattern_digest(seed: int, size: int) -> str:
    h = hashlib.sha256()
    for b in pattern(seed, size):
        h.update(b)
    return h.hexdigest()


def small_payload(i: int) -> bytes:
    """A distinct small payload for connection/datagram number `i`."""
    rnd = random.Random(10_000 + i)
    return f"#{i}:".encode() + rnd.randbytes(rnd.randrange(1, 48 * 1024))


# --------------------------------------------------------------------------
# the test host


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    r = subprocess.run(cmd, capture_output=True, timeout=30)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} exited {r.returncode}: {r.stderr.decode().strip()}")
    return r


def _used_v4() -> list[ipaddress.IPv4Network]:
    out = json.loads(_run("ip", "-j", "-4", "addr", "show").stdout or b"[]")
    nets = []
    for link in out:
        for a in link.get("addr_info", []):
            nets.append(ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}").network)
    return nets


@dataclass
class TestHost:
    """A namespace with a veth into the root namespace.

    `root_addr` (primary) and `root_addr2` (secondary) are on the root side,
    `addr` is the test host itself.
    """

    __test__ = False  # not a pytest test class

    ns: str
    veth: str
    addr: str
    root_addr: str
    root_addr2: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return _run(*self.exec_prefix(), *cmd, check=check)

    def add_ipv6(self, net: str) -> tuple[str, str, str]:
        """IPv6 on the veth too: the /64 @net ("fd5e:1:2:3", say) with ::1
        (primary) and ::3 (secondary) on the root side, ::2 inside, all
        without duplicate address detection. Returns (inside, root, root2);
        the addresses go with the veth."""
        root, inside, root2 = f"{net}::1", f"{net}::2", f"{net}::3"
        _run("ip", "addr", "add", f"{root}/64", "dev", self.veth, "nodad")
        _run("ip", "addr", "add", f"{root2}/64", "dev", self.veth, "nodad")
        self.run("ip", "addr", "add", f"{inside}/64", "dev", f"{self.veth}p", "nodad")
        return inside, root, root2

    def serve(self, *args: str) -> Server:
        s = Server.start([*self.exec_prefix(), PY, HERE, *args, "--bind", self.addr])
        self.procs.append(s.proc)
        return s


@contextlib.contextmanager
def make_testhost() -> Iterator[TestHost]:
    """Create a test host; remove it and its processes whatever happens."""
    tag = f"{os.getpid() % 100000}{random.randrange(1000):03d}"
    ns, veth, peer = f"slirpy-th{tag}", f"sth{tag}", f"sth{tag}p"
    used = _used_v4()
    subnets = [n for n in TESTNET.subnets(new_prefix=29) if not any(n.overlaps(u) for u in used)]
    if not subnets:
        raise AssertionError("no free /29 in 198.51.100.0/24 for a test host")
    net = random.choice(subnets)
    root, host, root2 = (str(net[1]), str(net[2]), str(net[3]))
    th = TestHost(ns, veth, host, root, root2)
    try:
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
        _run("ip", "link", "set", peer, "netns", ns)
        _run("ip", "addr", "add", f"{root}/29", "dev", veth)
        _run("ip", "addr", "add", f"{root2}/29", "dev", veth)  # secondary
        _run("ip", "link", "set", veth, "up")
        th.run("ip", "link", "set", "lo", "up")
        th.run("ip", "addr", "add", f"{host}/29", "dev", peer)
        th.run("ip", "link", "set", peer, "up")
        # Wait for the link (and DAD-free IPv4) to carry traffic.
        deadline = time.monotonic() + 5
        while _run("busybox", "ping", "-c1", "-W1", host, check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"test host {host} does not answer")
        yield th
    finally:
        for p in th.procs:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        _run("ip", "link", "del", veth, check=False)
        _run("ip", "netns", "del", ns, check=False)


# --------------------------------------------------------------------------
# driving a peer program from a test


@dataclass
class Server:
    """A server subprocess that prints one JSON object per line."""

    proc: subprocess.Popen[bytes]
    port: int
    _buf: bytes = b""

    @classmethod
    def start(cls, cmd: list[str], timeout: float = 10) -> Server:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        s = cls(proc, 0)
        try:
            ready = s.next(timeout)
        except BaseException:
            proc.kill()
            proc.wait(timeout=5)
            raise
        s.port = int(ready["port"])
        return s

    def next(self, timeout: float = 30) -> dict[str, object]:
        """The next JSON line, or AssertionError after `timeout` seconds."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            r, _, _ = select.select([fd], [], [], max(left, 0))
            if not r:
                raise AssertionError(f"server printed nothing within {timeout} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"server exited ({self.proc.poll()}) without a line")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(timeout=5)


def serve_loopback(*args: str, bind: str = "127.0.0.1") -> Server:
    """A server on the host's loopback (reached from the guest via N+2)."""
    return Server.start([PY, HERE, *args, "--bind", bind])


def guest_cmd(*args: str) -> list[str]:
    """The command that runs a client subcommand inside the container."""
    return [PY, HERE, *args]


def parse_report(out: bytes) -> dict[str, object]:
    """The last JSON line a client printed."""
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    if not lines:
        raise AssertionError(f"no report in client output: {out[-2000:]!r}")
    return json.loads(lines[-1])


# --------------------------------------------------------------------------
# the peer programs (run as subprocesses)


def _say(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _read_line(conn: socket.socket, limit: int = 256) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        b = conn.recv(1)
        if not b or len(data) > limit:
            raise ConnectionError(f"bad request line {data!r}")
        data += b
    return data


def _drain(conn: socket.socket) -> tuple[int, str]:
    h, n = hashlib.sha256(), 0
    while True:
        b = conn.recv(BLOCK)
        if not b:
            return n, h.hexdigest()
        h.update(b)
        n += len(b)


def _tcp_session(conn: socket.socket, peer: tuple[str, int]) -> None:
    """One connection: a request line, then the mode's exchange.

    sink            read to EOF, answer a JSON line with count + digest
    echo            read to EOF, send it all back, close
    source N SEED   send pattern(SEED, N), shut down writing, then read the
                    client's answer to EOF (half-close from the host side)
    """
    report: dict[str, object] = {"peer": list(peer)}
    try:
        req = _read_line(conn).split()
        report["mode"] = req[0].decode()
        if req[0] == b"sink":
            n, digest = _drain(conn)
            report.update(bytes=n, sha256=digest)
            conn.sendall(json.dumps(report).encode() + b"\n")
        elif req[0] == b"echo":
            chunks = []
            while True:
                b = conn.recv(BLOCK)
                if not b:
                    break
                chunks.append(b)
            data = b"".join(chunks)
            conn.sendall(data)
            report.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        elif req[0] == b"source":
            size, seed = int(req[1]), int(req[2])
            h = hashlib.sha256()
            t0 = time.monotonic()
            for block in pattern(seed, size):
                conn.sendall(block)
                h.update(block)
            conn.shutdown(socket.SHUT_WR)
            report.update(bytes=size, sha256=h.hexdigest(), seconds=time.monotonic() - t0)
            answer = b""
            while len(answer) < 4096:
                b = conn.recv(4096)
                if not b:
                    break
                answer += b
            report["answer"] = answer.decode(errors="replace")
        else:
            report["error"] = "unknown mode"
    except OSError as e:
        report["error"] = f"{type(e).__name__}: {e}"
    finally:
        conn.close()
    _say(report)


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def cmd_serve_tcp(a: argparse.Namespace) -> None:
    ls = socket.socket(_family(a.bind), socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((a.bind, a.port))
    ls.listen(1024)
    _say({"port": ls.getsockname()[1]})
    deadline = time.monotonic() + a.lifetime
    ls.settimeout(1)
    while time.monotonic() < deadline:
        try:
            conn, peer = ls.accept()
        except TimeoutError:
            continue
        conn.settimeout(a.lifetime)
        threading.Thread(target=_tcp_session, args=(conn, peer), daemon=True).start()


def cmd_serve_udp(a: argparse.Namespace) -> None:
    """Echo every datagram; print each peer once."""
    s = socket.socket(_family(a.bind), socket.SOCK_DGRAM)
    s.bind((a.bind, a.port))
    _say({"port": s.getsockname()[1]})
    seen: set[tuple[str, int]] = set()
    deadline = time.monotonic() + a.lifetime
    s.settimeout(1)
    while time.monotonic() < deadline:
        try:
            data, peer = s.recvfrom(65535)
        except TimeoutError:
            continue
        s.sendto(data, peer)
        if peer not in seen:
            seen.add(peer)
            _say({"peer": list(peer)})


def cmd_send(a: argparse.Namespace) -> None:
    """Guest -> host bulk: stream pattern(seed, size) to a sink."""
    s = socket.create_connection((a.host, a.port), timeout=a.timeout)
    s.sendall(b"sink\n")
    h = hashlib.sha256()
    t0 = time.monotonic()
    for block in pattern(a.seed, a.size):
        s.sendall(block)
        h.update(block)
    s.shutdown(socket.SHUT_WR)  # half-close: the answer still comes back
    answer = b""
    while True:
        b = s.recv(4096)
        if not b:
            break
        answer += b
    dt = time.monotonic() - t0
    _say({"bytes": a.size, "sha256": h.hexdigest(), "seconds": dt, "server": json.loads(answer)})


def cmd_recv(a: argparse.Namespace) -> None:
    """Host -> guest bulk: ask a source for pattern(seed, size), hash it,
    then answer over the half-closed connection."""
    s = socket.create_connection((a.host, a.port), timeout=a.timeout)
    if a.rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, a.rcvbuf)
    s.sendall(f"source {a.size} {a.seed}\n".encode())
    h, n = hashlib.sha256(), 0
    t0 = time.monotonic()
    while True:
        b = s.recv(a.chunk)
        if not b:
            break
        h.update(b)
        n += len(b)
        if a.delay:
            time.sleep(a.delay)  # a slow reader: the host must hold back
    dt = time.monotonic() - t0
    report = {"bytes": n, "sha256": h.hexdigest(), "seconds": dt}
    s.sendall(json.dumps(report).encode())  # after the host's FIN
    s.close()
    _say(report)


def cmd_many(a: argparse.Namespace) -> None:
    """`count` concurrent echo connections with distinct payloads."""
    results: dict[int, str] = {}
    barrier = threading.Barrier(a.count, timeout=a.timeout)

    def one(i: int) -> None:
        payload = small_payload(i)
        try:
            s = socket.create_connection((a.host, a.port), timeout=a.timeout)
            barrier.wait()  # all connections open at the same time
            s.sendall(b"echo\n" + payload)
            s.shutdown(socket.SHUT_WR)
            got = []
            while True:
                b = s.recv(65536)
                if not b:
                    break
                got.append(b)
            s.close()
            data = b"".join(got)
            results[i] = "ok" if data == payload else f"mismatch {len(data)}/{len(payload)}"
        except (OSError, threading.BrokenBarrierError) as e:
            results[i] = f"{type(e).__name__}: {e}"

    threads = [threading.Thread(target=one, args=(i,)) for i in range(a.count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(a.timeout + 5)
    _say({"results": {str(k): v for k, v in sorted(results.items())}})


def cmd_connect(a: argparse.Namespace) -> None:
    """Connect once and report the errno name (or "OK")."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(a.timeout)
    try:
        s.connect((a.host, a.port))
        _say({"result": "OK"})
    except TimeoutError:
        _say({"result": "TIMEOUT"})
    except OSError as e:
        _say({"result": errno.errorcode.get(e.errno or 0, str(e.errno)), "text": e.strerror})


def cmd_udp(a: argparse.Namespace) -> None:
    """Send each datagram, wait for its echo; report mismatches and errors."""
    s = socket.socket(_family(a.host), socket.SOCK_DGRAM)
    s.settimeout(a.timeout)
    s.connect((a.host, a.port))
    sizes = [int(x) for x in a.sizes.split(",")] if a.sizes else []
    report: dict[str, object] = {"sent": 0, "ok": 0, "bad": [], "errors": []}
    h = hashlib.sha256()
    for i, size in enumerate(sizes):
        rnd = random.Random(20_000 + i)
        payload = rnd.randbytes(size)
        h.update(payload)
        try:
            s.send(payload)
            report["sent"] += 1  # type: ignore[operator]
            got = s.recv(65535)
        except OSError as e:
            name = "TIMEOUT" if isinstance(e, TimeoutError) else errno.errorcode.get(e.errno or 0)
            report["errors"].append([i, size, name])  # type: ignore[union-attr]
            continue
        if got == payload:
            report["ok"] += 1  # type: ignore[operator]
        else:
            report["bad"].append([i, size, len(got)])  # type: ignore[union-attr]
    report["sha256"] = h.hexdigest()
    _say(report)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="testhost.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("serve-tcp", "serve-udp"):
        sp = sub.add_parser(name)
        sp.add_argument("--bind", default="127.0.0.1")
        sp.add_argument("--port", type=int, default=0)
        sp.add_argument("--lifetime", type=float, default=600)
    for name in ("send", "recv", "many", "connect", "udp"):
        sp = sub.add_parser(name)
        sp.add_argument("host")
        sp.add_argument("port", type=int)
        sp.add_argument("--timeout", type=float, default=60)
        sp.add_argument("--size", type=int, default=0)
        sp.add_argument("--seed", type=int, default=1)
        sp.add_argument("--count", type=int, default=200)
        sp.add_argument("--chunk", type=int, default=BLOCK)
        sp.add_argument("--delay", type=float, default=0)
        sp.add_argument("--rcvbuf", type=int, default=0)
        sp.add_argument("--sizes", default="")
    a = p.parse_args(argv)
    {
        "serve-tcp": cmd_serve_tcp,
        "serve-udp": cmd_serve_udp,
        "send": cmd_send,
        "recv": cmd_recv,
        "many": cmd_many,
        "connect": cmd_connect,
        "udp": cmd_udp,
    }[a.cmd](a)


if __name__ == "__main__":
    main()
