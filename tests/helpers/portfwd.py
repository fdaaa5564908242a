"""Port forwarding as the integration tests drive it: the API socket the way
Podman and RootlessKit use it, a server run in the container, and
`Forwarding` (a container with slirpy running, through its API socket or the
library's `publish()`).

Owns the client side of the API (`api_call`, `add_fwd`, `remove_fwd`),
`api_dir()` (a socket directory the test user can use), socket reading
helpers and `GUEST_SERVER`. The fixtures that build a `Forwarding` live in
tests/integration/conftest.py. Traffic goes only to the host's loopback and
the container.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from tests.helpers.daemons import LibSlirpy, Slirpy
from tests.helpers.testbed import UID, Container

# The guest's address and the gateway that stands for the host's loopback.
GUEST = "10.0.2.100"
GATEWAY = "10.0.2.2"

# A server run inside the container with the container's own kernel stack.
# Modes: "echo" (TCP, echo until EOF then half-close), "peer" (TCP, first a line
# "ADDR PORT\n" naming the client as the guest sees it, then echo), "udp" (each
# datagram back to its sender prefixed with "ADDR PORT|"); a "6" suffix listens
# on IPv6 "::" instead of IPv4. It prints READY once it listens, so tests never
# sleep-and-hope.
GUEST_SERVER = r"""
import socket, sys, threading
mode, port = sys.argv[1], int(sys.argv[2])

def echo(c, peer):
    try:
        if peer is not None:
            c.sendall(("%s %d\n" % peer[:2]).encode())
        while True:
            d = c.recv(1 << 16)
            if not d:
                break
            c.sendall(d)
        c.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        c.close()

fam, any_addr = socket.AF_INET, "0.0.0.0"
if mode.endswith("6"):
    mode, fam, any_addr = mode[:-1], socket.AF_INET6, "::"
if mode == "udp":
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((any_addr, port))
    print("READY", flush=True)
    while True:
        d, a = s.recvfrom(65535)
        s.sendto(("%s %d|" % a[:2]).encode() + d, a)
else:
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((any_addr, port))
    s.listen(512)
    print("READY", flush=True)
    while True:
        c, a = s.accept()
        threading.Thread(
            target=echo, args=(c, a if mode == "peer" else None), daemon=True
        ).start()
"""



def api_call(path: str, request: object | bytes, timeout: float = 10) -> dict[str, object]:
    """One API request the way Podman sends it: one write, half-close, read to EOF."""
    raw = request if isinstance(request, bytes) else json.dumps(request).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(raw)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return json.loads(data)


def add_fwd(path: str, **arguments: object) -> int:
    reply = api_call(path, {"execute": "add_hostfwd", "arguments": arguments})
    assert "return" in reply, reply
    return int(reply["return"]["id"])  # type: ignore[index]


def remove_fwd(path: str, fwd_id: int) -> dict[str, object]:
    return api_call(path, {"execute": "remove_hostfwd", "arguments": {"id": fwd_id}})


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_line(s: socket.socket, limit: int = 200) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(1)
        if not chunk:
            raise AssertionError(f"EOF before a full line: {buf!r}")
        buf += chunk
        assert len(buf) < limit, buf
    return buf


def recv_all(s: socket.socket) -> bytes:
    parts = []
    while chunk := s.recv(1 << 20):
        parts.append(chunk)
    return b"".join(parts)


def wait_guest_listening(c: Container, port: int) -> None:
    """Until a TCP socket listens on `port` in the container (at most 5 s)."""
    # Local port, any remote, state 0A (LISTEN); busybox nc listens on IPv6 "::".
    pattern = f":{port:04X} 0+:0000 0A"
    c.sh(
        "for i in $(busybox seq 50); do"
        f" busybox cat /proc/net/tcp /proc/net/tcp6 | busybox grep -qE '{pattern}' && exit 0;"
        " busybox sleep 0.1; done; exit 1"
    )


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def echo_roundtrip(s: socket.socket, payload: bytes) -> bytes:
    """Send `payload` while reading the echo (both directions at once), half-close,
    read to EOF. The writer runs in a thread: the echo fills windows both ways."""
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except BaseException as e:  # reported by the caller
            errors.append(e)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        got = recv_all(s)
    finally:
        t.join(timeout=60)
    assert not errors, errors
    return got


@dataclass
class Forwarding:
    """A container with slirpy running: its API socket (slirpy-slirp4netns) or,
    when `lib` is set, the library's `slirpy.Network` in its own process."""

    c: Container
    slirpy: Slirpy | LibSlirpy
    api: str
    lib: LibSlirpy | None = None

    def add(self, **arguments: object) -> int:
        """add_hostfwd through the API socket, or Network.publish()."""
        if self.lib is None:
            return add_fwd(self.api, **arguments)
        kw = {k: arguments[k] for k in ("proto", "host_addr", "guest_addr") if k in arguments}
        return self.lib.publish(int(arguments["host_port"]),  # type: ignore[call-overload]
                                int(arguments["guest_port"]), **kw)  # type: ignore[call-overload]

    def remove(self, fwd_id: int) -> None:
        if self.lib is None:
            assert remove_fwd(self.api, fwd_id) == {"return": {}}
        else:
            self.lib.unpublish(fwd_id)

    def counters(self) -> dict[str, int]:
        """The engine's counters: get_stats, or Network.stats()."""
        if self.lib is None:
            stats = api_call(self.api, {"execute": "get_stats"})["return"]
        else:
            stats = self.lib.stats()
        return stats["engine"]  # type: ignore[index,return-value]

    def flows(self) -> list[dict[str, object]]:
        if self.lib is None:
            reply = api_call(self.api, {"execute": "list_flows"})
            return reply["return"]["flows"]  # type: ignore[index,return-value]
        return self.lib.flows()

    def guest_server(self, mode: str, port: int, timeout: float = 15) -> subprocess.Popen[bytes]:
        """Start GUEST_SERVER in the container and wait until it listens."""
        p = self.c.popen(
            sys.executable,
            "-c",
            GUEST_SERVER,
            mode,
            str(port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert p.stdout is not None
        r, _, _ = select.select([p.stdout], [], [], timeout)
        line = p.stdout.readline() if r else b""
        if line != b"READY\n":
            p.kill()
            raise AssertionError(f"guest server did not start: {line!r} {p.stderr.read()!r}")
        return p

    def alive(self) -> None:
        assert self.slirpy.proc.poll() is None, self.slirpy.output()


@contextlib.contextmanager
def api_dir() -> Iterator[str]:
    """A directory the unprivileged slirpy can create its socket in (short path)."""
    d = tempfile.mkdtemp(prefix="slirpy-fwd-", dir="/tmp")
    try:
        os.chown(d, UID, UID)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
