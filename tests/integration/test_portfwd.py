"""Inbound port forwarding through the real daemon: host client -> slirpy -> guest.

What this file owns: the end-to-end tests of forwarded ports (issue 5). Each test
starts slirpy-slirp4netns as the unprivileged user with ``--api-socket``, adds
forwards the way Podman and RootlessKit do (JSON + "\\n" in one write, half-close,
read the reply), and most run a second time on `slirpy.Network` (the library,
conftest's `LibSlirpy`) with its `publish()` and `stats()` instead; each runs a
real server inside the container (Python, through nsenter) and checks what host
clients get: bytes and their sha256, the address the guest saw, resets, refusals.

Traffic goes only to the host's loopback, or to a test host this file creates
in its own network namespace (a veth pair, 198.51.100.200/30); every process and
namespace is removed even when a test fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from conftest import UID, Container, LibSlirpy, Slirpy, free_port

# The guest's address and the gateway that stands for the host's loopback.
GUEST = "10.0.2.100"
GATEWAY = "10.0.2.2"

# The test host: root side and namespace side of a veth pair. A /30 of TEST-NET-2
# (documentation range, never routed): more specific than any /24 another test may
# put on the root namespace, so the two cannot steal each other's traffic.
HOST_ROOT_ADDR = "198.51.100.201"
HOST_NS_ADDR = "198.51.100.202"

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


# ----------------------------------------------------------------------------- helpers


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


@pytest.fixture
def fwd_factory(
    container: Container, slirpy_factory: Callable[..., Slirpy],
    library_factory: Callable[..., LibSlirpy],
) -> Iterator[Callable[..., Forwarding]]:
    with api_dir() as d:

        def make(*extra: str, mtu: int = 65520, library: bool = False) -> Forwarding:
            if library:  # slirpy.Network(container.pid, mtu=mtu): no API socket
                lib = library_factory(container.pid, mtu=mtu)
                return Forwarding(container, lib, "", lib)
            path = f"{d}/api.sock"
            s = slirpy_factory(
                ["-c", f"--mtu={mtu}", f"--api-socket={path}", *extra, str(container.pid), "tap0"]
            )
            return Forwarding(container, s, path)

        yield make


@pytest.fixture
def fwd(fwd_factory: Callable[..., Forwarding]) -> Forwarding:
    return fwd_factory()


@pytest.fixture(params=["cli", "library"])
def any_fwd(request: pytest.FixtureRequest, fwd_factory: Callable[..., Forwarding]) -> Forwarding:
    """`fwd` twice: slirpy-slirp4netns's API socket, and slirpy.Network.publish()."""
    return fwd_factory(library=request.param == "library")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    r = subprocess.run(["ip", *args], capture_output=True, timeout=30)
    if check and r.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {r.stderr.decode()}")
    return r


@pytest.fixture
def test_host() -> Iterator[str]:
    """A test host: network namespace with HOST_NS_ADDR behind a veth whose root
    end holds HOST_ROOT_ADDR. Removed even when the test fails."""
    tag = f"{os.getpid() % 100000}"
    ns, root_if, ns_if = f"slirpy-th-{tag}", f"sth{tag}r", f"sth{tag}n"
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", root_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
        _ip("addr", "add", f"{HOST_ROOT_ADDR}/30", "dev", root_if)
        _ip("link", "set", root_if, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{HOST_NS_ADDR}/30", "dev", ns_if)
        _ip("-n", ns, "link", "set", ns_if, "up")
        # Wait (bounded) until the link carries traffic: 3 pings at most.
        r = subprocess.run(
            ["ip", "netns", "exec", ns, "busybox", "ping", "-c", "1", "-w", "3", HOST_ROOT_ADDR],
            capture_output=True,
            timeout=10,
        )
        assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
        yield ns
    finally:
        _ip("link", "del", root_if, check=False)
        _ip("netns", "del", ns, check=False)


# ------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("mtu", "library"), [(65520, False), (1500, False), (65520, True)],
                         ids=["65520", "1500", "library-65520"])
def test_tcp_forward_bulk_both_ways_byte_exact(fwd_factory, mtu: int, library: bool) -> None:
    f = fwd_factory(mtu=mtu, library=library)
    port = free_port()
    f.add(proto="tcp", host_addr="127.0.0.1", host_port=port, guest_addr=GUEST, guest_port=80)
    f.guest_server("echo", 80)
    payload = random.Random(mtu).randbytes(8 * 1024 * 1024 + 12345)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        got = echo_roundtrip(s, payload)
    assert len(got) == len(payload)
    assert sha(got) == sha(payload)
    counters = f.counters()
    assert counters["tcp_flows_inbound"] == 1
    assert counters["tcp_bytes_to_guest"] >= len(payload)
    assert counters["tcp_bytes_to_host"] >= len(payload)
    f.alive()


def test_tcp_guest_closes_first_host_sees_eof(any_fwd: Forwarding) -> None:
    """The guest writes and closes (busybox nc): the host reads it all, then EOF."""
    fwd = any_fwd
    port = free_port()
    fwd.add(proto="tcp", host_port=port, guest_port=8000)
    body = b"".join(b"line %05d from the guest\n" % i for i in range(2000))
    srv = fwd.c.popen(
        "busybox", "nc", "-l", "-p", "8000", stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    assert srv.stdin is not None
    srv.stdin.write(body)
    srv.stdin.close()
    wait_guest_listening(fwd.c, 8000)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        got = recv_all(s)
    assert sha(got) == sha(body)
    assert srv.wait(timeout=10) == 0


def test_remove_closes_listener_but_keeps_established(any_fwd: Forwarding) -> None:
    fwd = any_fwd
    port = free_port()
    fwd_id = fwd.add(proto="tcp", host_addr="127.0.0.1", host_port=port,
                     guest_port=80)
    fwd.guest_server("echo", 80)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"before remove\n")
        assert recv_exact(s, 14) == b"before remove\n"
        fwd.remove(fwd_id)
        # The listener is gone: a new connection is refused by the host kernel.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        if fwd.lib is None:  # the API socket's listing (the library has none)
            listing = api_call(fwd.api, {"execute": "list_hostfwd"})
            assert listing["entries"] == [] and listing["return"] == {"entries": []}
        # The established connection does not care.
        payload = random.Random(7).randbytes(1 << 20)
        got = echo_roundtrip(s, payload)
        assert sha(got) == sha(payload)
    fwd.alive()


def test_udp_forward_two_clients_get_their_own_replies(any_fwd: Forwarding) -> None:
    fwd = any_fwd
    port = free_port(socket.AF_INET)
    fwd.add(proto="udp", host_addr="127.0.0.1", host_port=port, guest_port=5353)
    fwd.guest_server("udp", 5353)
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for c in clients:
            c.bind(("127.0.0.1", 0))
            c.settimeout(5)
        sent: dict[int, list[bytes]] = {i: [] for i in range(2)}
        for n in range(5):  # interleaved: the flows must not mix
            for i, c in enumerate(clients):
                msg = b"client %d datagram %d " % (i, n) + bytes([i]) * (100 + 500 * n)
                sent[i].append(msg)
                c.sendto(msg, ("127.0.0.1", port))
        for i, c in enumerate(clients):
            cport = c.getsockname()[1]
            got = []
            for _ in range(5):
                data, src = c.recvfrom(65535)
                assert src == ("127.0.0.1", port)  # replies come from the forwarded port
                got.append(data)
            # The guest saw each loopback client as the gateway, with its own port.
            prefix = f"{GATEWAY} {cport}|".encode()
            assert all(d.startswith(prefix) for d in got), got
            assert sorted(d[len(prefix):] for d in got) == sorted(sent[i])
            c.settimeout(0.3)
            with pytest.raises(TimeoutError):  # nothing of the other client's
                c.recvfrom(65535)
    finally:
        for c in clients:
            c.close()
    counters = fwd.counters()
    assert counters["udp_datagrams_to_guest"] == 10
    assert counters["udp_datagrams_to_host"] == 10


def test_source_address_loopback_client_is_gateway(any_fwd: Forwarding) -> None:
    fwd = any_fwd
    port = free_port()
    fwd.add(proto="tcp", host_addr="127.0.0.1", host_port=port, guest_port=80)
    fwd.guest_server("peer", 80)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        cport = s.getsockname()[1]
        assert recv_line(s) == f"{GATEWAY} {cport}\n".encode()


def test_source_address_preserved_for_test_host_client(any_fwd: Forwarding, test_host: str) -> None:
    fwd = any_fwd
    port = free_port()
    fwd.add(proto="tcp", host_addr="0.0.0.0", host_port=port, guest_port=80)
    fwd.guest_server("peer", 80)
    client = (
        "import socket,sys\n"
        f"s=socket.create_connection(({HOST_ROOT_ADDR!r},{port}),timeout=10)\n"
        "l=b''\n"
        "while not l.endswith(b'\\n'):\n"
        "    c=s.recv(1)\n"
        "    assert c, l\n"
        "    l+=c\n"
        "s.sendall(b'ping-from-test-host');s.shutdown(socket.SHUT_WR)\n"
        "e=b''\n"
        "while c:=s.recv(4096): e+=c\n"
        "sys.stdout.write(l.decode()+str(s.getsockname()[1])+'\\n'+e.decode())\n"
    )
    r = subprocess.run(
        ["ip", "netns", "exec", test_host, sys.executable, "-c", client],
        capture_output=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr.decode()
    peer_line, cport, echoed = r.stdout.decode().split("\n", 2)
    assert peer_line == f"{HOST_NS_ADDR} {cport}"
    assert echoed == "ping-from-test-host"


@pytest.mark.parametrize("host_addr", ["::1", "::"])
def test_ipv6_listener_to_ipv4_guest(fwd: Forwarding, host_addr: str) -> None:
    port = free_port(socket.AF_INET6)
    add_fwd(fwd.api, proto="tcp", host_addr=host_addr, host_port=port, guest_port=80)
    listing = api_call(fwd.api, {"execute": "list_hostfwd"})
    assert listing["entries"][0]["host_addr"] == host_addr  # type: ignore[index]
    fwd.guest_server("peer", 80)
    payload = random.Random(6).randbytes(3 << 20)
    with socket.create_connection(("::1", port), timeout=10) as s:
        # A loopback client of either family is the guest's IPv4 gateway.
        assert recv_line(s) == f"{GATEWAY} {s.getsockname()[1]}\n".encode()
        got = echo_roundtrip(s, payload)
    assert sha(got) == sha(payload)
    if host_addr == "::":
        # "::" with proto "tcp" is dual-stack: an IPv4 client works too.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            assert recv_line(s) == f"{GATEWAY} {s.getsockname()[1]}\n".encode()
            assert echo_roundtrip(s, b"v4 on a dual-stack forward") == b"v4 on a dual-stack forward"


def test_udp_ipv6_listener_to_ipv4_guest(any_fwd: Forwarding) -> None:
    fwd = any_fwd
    port = free_port(socket.AF_INET6)
    fwd.add(proto="udp6", host_addr="::1", host_port=port, guest_port=5353)
    fwd.guest_server("udp", 5353)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as c:
        c.settimeout(5)
        c.bind(("::1", 0))
        c.sendto(b"over ipv6", ("::1", port))
        data, src = c.recvfrom(65535)
        assert src[:2] == ("::1", port)
        assert data == f"{GATEWAY} {c.getsockname()[1]}|over ipv6".encode()


def test_guest_refuses_host_client_reset_quickly(any_fwd: Forwarding) -> None:
    fwd = any_fwd
    port = free_port()
    fwd.add(proto="tcp", host_addr="127.0.0.1", host_port=port, guest_port=81)
    t0 = time.monotonic()
    # The host kernel accepts; the guest answers our SYN with RST, and the client
    # must learn it as a reset, not wait for a timeout. The reset may even beat
    # connect()'s own check of the socket's error.
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s,
        pytest.raises(ConnectionResetError),
    ):
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        s.recv(100)
    assert time.monotonic() - t0 < 3
    counters = fwd.counters()
    assert counters["tcp_flows_inbound"] == 1
    assert counters["tcp_flows_closed"] == 1
    flows = fwd.flows()
    assert flows == []
    fwd.alive()


def test_100_parallel_connections_distinct_payloads(any_fwd: Forwarding) -> None:
    fwd = any_fwd
    port = free_port()
    fwd.add(proto="tcp", host_addr="127.0.0.1", host_port=port, guest_port=80)
    fwd.guest_server("echo", 80)
    barrier = threading.Barrier(100, timeout=30)

    def one(i: int) -> tuple[int, str, str]:
        payload = (b"connection %03d:" % i) + random.Random(i).randbytes(20000 + 997 * i)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            barrier.wait()  # all 100 open at once before any data moves
            got = echo_roundtrip(s, payload)
        return i, sha(payload), sha(got)

    with ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(one, range(100)))
    assert [i for i, _, _ in results] == list(range(100))
    bad = [i for i, want, got in results if want != got]
    assert bad == []
    counters = fwd.counters()
    assert counters["tcp_flows_inbound"] == 100
    assert counters["drop_half_open_cap"] == 0 and counters["drop_flow_cap"] == 0
    fwd.alive()


def _guest_v6_addr(c: Container, timeout: float = 10.0) -> str:
    """The guest's SLAAC address in fd00::/64 once DAD is over."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        links = json.loads(c.run("ip", "-j", "-6", "addr", "show", "dev", "tap0").stdout)
        for a in links[0]["addr_info"] if links else []:
            if (str(a["local"]).startswith("fd00:") and a.get("scope") == "global"
                    and not a.get("tentative")):
                return str(a["local"])
        time.sleep(0.1)
    raise AssertionError("no SLAAC address in the guest")


def test_forward_to_guest_ipv6_address(fwd_factory) -> None:
    """tcp6/udp6 forwards to the guest's IPv6 address: a loopback client
    appears as fd00::2, bytes arrive exact both ways."""
    f = fwd_factory("-6", f"--dns-upstream=127.0.0.1:{free_port()}")
    gaddr = _guest_v6_addr(f.c)
    tport, uport = free_port(socket.AF_INET6), free_port(socket.AF_INET6)
    add_fwd(f.api, proto="tcp6", host_addr="::1", host_port=tport, guest_addr=gaddr,
            guest_port=8080)
    add_fwd(f.api, proto="udp6", host_addr="::1", host_port=uport, guest_addr=gaddr,
            guest_port=5353)
    entries = api_call(f.api, {"execute": "list_hostfwd"})["entries"]
    assert [e["guest_addr"] for e in entries] == [gaddr, gaddr]  # type: ignore[index]
    f.guest_server("peer6", 8080)
    f.guest_server("udp6", 5353)
    payload = random.Random(66).randbytes(4 << 20)
    with socket.create_connection(("::1", tport), timeout=10) as s:
        assert recv_line(s) == f"fd00::2 {s.getsockname()[1]}\n".encode()
        assert sha(echo_roundtrip(s, payload)) == sha(payload)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as c:
        c.settimeout(5)
        c.bind(("::1", 0))
        c.sendto(b"to the guest's v6", ("::1", uport))
        data, src = c.recvfrom(65535)
        cport = c.getsockname()[1]
    assert src[:2] == ("::1", uport)
    assert data == f"fd00::2 {cport}|to the guest's v6".encode()
    f.alive()
