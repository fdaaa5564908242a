"""IPv6 (`-6`) against a real guest kernel (issue 4).

This file owns the integration tests of slirpy's IPv6 side: SLAAC from the
router advertisements (prefix fd00::/64, default route via fe80::2, RDNSS
fd00::3, the lifetimes slirp4netns uses), neighbour discovery that
leaves the guest's duplicate address detection alone, echo to fd00::2 and
fd00::3, TCP to the host's ::1 through fd00::2 (64 MiB byte-exact both ways),
UDP echo over IPv6 and DNS through fd00::3.

Traffic goes only to the host's ::1 / 127.0.0.1: nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.helpers.daemons import Slirpy
from tests.helpers.fake_dns import PORT_PROBE, RECORDS, assert_forwarded, fake_dns
from tests.helpers.testbed import Container, free_port
from tests.helpers.testhost import (
    HERE,
    PY,
    Server,
    TestHost,
    guest_cmd,
    make_testhost,
    parse_report,
    pattern_digest,
)

GUEST_PY = "/opt/slirpy-venv/bin/python"
BULK = 64 << 20


def v6_addrs(c: Container) -> list[dict[str, object]]:
    links = json.loads(c.run("ip", "-j", "-6", "addr", "show", "dev", "tap0").stdout)
    return [a for a in links[0]["addr_info"] if a["family"] == "inet6"] if links else []


def wait_slaac(c: Container, timeout: float = 10.0, prefix: str = "fd00::") -> dict[str, object]:
    """The guest's `prefix`/64 address once duplicate address detection is over."""
    deadline = time.monotonic() + timeout
    seen: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        seen = v6_addrs(c)
        for a in seen:
            if str(a["local"]).startswith(prefix) and a.get("scope") == "global" and not (
                a.get("tentative") or a.get("dadfailed")
            ):
                return a
        time.sleep(0.1)
    raise AssertionError(f"no usable SLAAC address after {timeout}s: {seen}")


@pytest.fixture
def scripts() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="slirpy-h8v6-", dir="/tmp")
    try:
        os.chmod(d, 0o755)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def guest_script(scripts: str, name: str, text: str) -> str:
    path = os.path.join(scripts, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)
    return path


@pytest.fixture
def dns_srv() -> Iterator[object]:
    with fake_dns("127.0.0.1", RECORDS) as srv:
        yield srv


@pytest.fixture
def net6(
    container: Container, slirpy_factory, dns_srv
) -> Iterator[tuple[Container, Slirpy, dict[str, object]]]:
    """A guest configured with -6 -c whose SLAAC address is usable."""
    s = slirpy_factory(
        ["-6", "-c", "--mtu=65520", f"--dns-upstream=127.0.0.1:{dns_srv.port}",
         str(container.pid), "tap0"]
    )
    addr = wait_slaac(container)
    yield container, s, addr


def test_slaac_address_and_default_route(net6) -> None:
    c, s, addr = net6
    assert addr["prefixlen"] == 64
    assert addr["valid_life_time"] <= 86400 and addr["valid_life_time"] > 86000
    assert addr["preferred_life_time"] <= 14400 and addr["preferred_life_time"] > 14000
    # EUI-64 from the guest's MAC: the TAP's address, not one of ours.
    mac = json.loads(c.run("ip", "-j", "link", "show", "tap0").stdout)[0]["address"]
    b = bytes.fromhex(mac.replace(":", ""))
    eui = bytes([b[0] ^ 2, b[1], b[2], 0xFF, 0xFE, b[3], b[4], b[5]])
    assert socket.inet_pton(socket.AF_INET6, str(addr["local"]))[8:] == eui
    routes = json.loads(c.run("ip", "-j", "-6", "route", "show", "default").stdout)
    assert [(r["gateway"], r["dev"], r["protocol"]) for r in routes] == [
        ("fe80::2", "tap0", "ra")
    ]
    assert 0 < routes[0]["expires"] <= 1800
    onlink = json.loads(c.run("ip", "-j", "-6", "route", "show", "fd00::/64").stdout)
    assert [r["dev"] for r in onlink] == ["tap0"]
    assert s.proc.poll() is None


@pytest.mark.parametrize("target", ["fd00::2", "fd00::3"])
def test_ping6_virtual_hosts(net6, target: str) -> None:
    c, _, _ = net6
    r = c.run("busybox", "ping", "-6", "-c", "3", "-W", "2", target, check=False)
    out = r.stdout.decode()
    assert r.returncode == 0 and "3 packets transmitted, 3 packets received" in out, out
    neigh = c.run("ip", "-6", "neigh", "show", target).stdout.decode()
    assert "lladdr 52:56:00:00:00:0" + target[-1] in neigh, neigh


# --- TCP: 64 MiB each way through fd00::2 to the host's ::1 ----------------


@contextlib.contextmanager
def host_server(
    family: int, kind: int, handler: Callable[[socket.socket, threading.Event], None]
) -> Iterator[tuple[int, list[object]]]:
    """One-shot server on loopback in a thread; yields (port, results).

    `handler(sock, stop)` gets the accepted connection (TCP) or the bound
    socket (UDP); `stop` is set when the test is done with the server.
    """
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    srv = socket.socket(family, kind)
    srv.bind((host, 0))
    if kind == socket.SOCK_STREAM:
        srv.listen(1)
    srv.settimeout(90)
    results: list[object] = []
    stop = threading.Event()

    def run() -> None:
        try:
            if kind == socket.SOCK_STREAM:
                conn, _ = srv.accept()
                with conn:
                    conn.settimeout(90)
                    handler(conn, stop)
            else:
                handler(srv, stop)
        except Exception as e:  # reported by the test through `results`
            results.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1], results
    finally:
        stop.set()
        # Join before closing: a recv in flight on a closed fd fails with EBADF.
        t.join(timeout=10)
        srv.close()


def _bulk(seed: int, size: int = BULK) -> bytes:
    return random.Random(seed).randbytes(size)


GUEST_TCP = r"""
import hashlib, json, random, socket, sys
mode, port, seed, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.create_connection(("fd00::2", port), timeout=60)
h, n = hashlib.sha256(), 0
if mode == "send":
    s.sendall(random.Random(seed).randbytes(size))
    s.shutdown(socket.SHUT_WR)
while True:
    b = s.recv(1 << 20)
    if not b:
        break
    h.update(b)
    n += len(b)
print(json.dumps({"n": n, "sha256": h.hexdigest(), "local": s.getsockname()[0]}))
"""


def guest_to_host(c: Container, scripts: str, size: int) -> dict[str, object]:
    """The guest sends `size` bytes to [fd00::2]:port; the host's ::1 checks them."""
    expect = hashlib.sha256(_bulk(1, size)).hexdigest()

    def sink(conn: socket.socket, _stop: threading.Event) -> None:
        h, n = hashlib.sha256(), 0
        while True:
            b = conn.recv(1 << 20)
            if not b:
                break
            h.update(b)
            n += len(b)
        results.append((n, h.hexdigest()))
        conn.sendall(f"{n} {h.hexdigest()}".encode())

    with host_server(socket.AF_INET6, socket.SOCK_STREAM, sink) as (port, results):
        path = guest_script(scripts, "tcp.py", GUEST_TCP)
        r = c.run(GUEST_PY, path, "send", str(port), "1", str(size), timeout=120)
    out = json.loads(r.stdout)
    assert results == [(size, expect)]
    reply = f"{size} {expect}".encode()
    # The host's verdict came back through the half-closed connection.
    assert (out["n"], out["sha256"]) == (len(reply), hashlib.sha256(reply).hexdigest())
    return out


def host_to_guest(c: Container, scripts: str, size: int) -> None:
    """The host's ::1 sends `size` bytes to the guest, then half-closes."""
    data = _bulk(2, size)
    expect = hashlib.sha256(data).hexdigest()

    def source(conn: socket.socket, _stop: threading.Event) -> None:
        results.append(conn.getpeername()[0])
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)

    with host_server(socket.AF_INET6, socket.SOCK_STREAM, source) as (port, results):
        path = guest_script(scripts, "tcp.py", GUEST_TCP)
        r = c.run(GUEST_PY, path, "recv", str(port), "2", str(size), timeout=120)
    out = json.loads(r.stdout)
    assert (out["n"], out["sha256"]) == (size, expect)
    assert results == ["::1"]  # slirpy's socket toward the host's loopback


def test_tcp_64mib_guest_to_host(net6, scripts: str) -> None:
    c, s, addr = net6
    out = guest_to_host(c, scripts, BULK)
    assert out["local"] == addr["local"]  # the guest used its SLAAC address
    assert s.proc.poll() is None


def test_tcp_64mib_host_to_guest(net6, scripts: str) -> None:
    c, s, _ = net6
    host_to_guest(c, scripts, BULK)
    assert s.proc.poll() is None


def test_tcp_mtu1500_both_ways(container: Container, slirpy_factory, scripts: str) -> None:
    # At MTU 1500 the guest's MSS is 1440 and segments are cut by the guest's
    # offloads (TSO6) and by slirpy for the guest: another code path.
    s = slirpy_factory(["-6", "-c", "--mtu=1500", f"--dns-upstream=127.0.0.1:{free_port()}",
                        str(container.pid), "tap0"])
    wait_slaac(container)
    guest_to_host(container, scripts, 16 << 20)
    host_to_guest(container, scripts, 16 << 20)
    assert s.proc.poll() is None


# --- UDP echo over IPv6 ------------------------------------------------------

UDP_SIZES = [0, 1, 100, 1232, 1452, 1500, 9000, 32768, 65000]

GUEST_UDP = r"""
import hashlib, json, random, socket, sys
port, sizes = int(sys.argv[1]), [int(x) for x in sys.argv[2].split(",")]
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect(("fd00::2", port))
rng = random.Random(3)
h, ok = hashlib.sha256(), []
for size in sizes:
    msg = rng.randbytes(size)
    got = None
    for _ in range(3):  # bounded retries: UDP may drop under load
        s.send(msg)
        try:
            got = s.recv(70000)
            break
        except TimeoutError:
            continue
    ok.append(got == msg)
    h.update(got or b"")
print(json.dumps({"ok": ok, "sha256": h.hexdigest()}))
"""


def test_udp_echo_over_ipv6(net6, scripts: str) -> None:
    c, s, _ = net6
    rng = random.Random(3)
    expect = hashlib.sha256(b"".join(rng.randbytes(n) for n in UDP_SIZES)).hexdigest()

    def echo(sock: socket.socket, stop: threading.Event) -> None:
        sock.settimeout(0.2)
        for _ in range(1000):  # bounded: ~200 s at most, normally < 1 s
            if stop.is_set():
                return
            try:
                msg, peer = sock.recvfrom(70000)
            except TimeoutError:
                continue
            results.append((peer[0], len(msg)))
            sock.sendto(msg, peer)

    with host_server(socket.AF_INET6, socket.SOCK_DGRAM, echo) as (port, results):
        path = guest_script(scripts, "udp.py", GUEST_UDP)
        r = c.run(GUEST_PY, path, str(port), ",".join(map(str, UDP_SIZES)), timeout=60)
    out = json.loads(r.stdout)
    assert out == {"ok": [True] * len(UDP_SIZES), "sha256": expect}
    assert not [e for e in results if isinstance(e, Exception)], results
    assert {p for p, _ in results} == {"::1"}
    assert [n for _, n in results] == UDP_SIZES
    assert s.proc.poll() is None


# --- Router advertisement, read raw by the guest ----------------------------

GUEST_RS = r"""
import json, socket, struct, time
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
idx = socket.if_nametoindex("tap0")
s.sendto(struct.pack("!BBHI", 133, 0, 0, 0), ("ff02::2", 0, 0, idx))
s.settimeout(1)
deadline = time.monotonic() + 5
while time.monotonic() < deadline:
    try:
        data, anc, _, addr = s.recvmsg(4096, socket.CMSG_SPACE(4))
    except TimeoutError:
        continue
    if data[0] != 134:
        continue
    hop = [struct.unpack("i", d[:4])[0] for l, t, d in anc if t == socket.IPV6_HOPLIMIT]
    ra = {"src": addr[0].split("%")[0], "hop": hop, "code": data[1], "cur_hop": data[4],
          "flags": data[5], "lifetime": struct.unpack("!H", data[6:8])[0],
          "reach": struct.unpack("!II", data[8:16]), "opts": []}
    off = 16
    while off + 2 <= len(data):
        t, ln = data[off], data[off + 1] * 8
        if ln == 0 or off + ln > len(data):
            ra["opts"].append({"bad": off})
            break
        o = data[off:off + ln]
        if t == 1:
            ra["opts"].append({"type": "sll", "mac": o[2:8].hex(":")})
        elif t == 3:
            ra["opts"].append({"type": "prefix", "len": o[2], "flags": o[3],
                               "valid": struct.unpack("!I", o[4:8])[0],
                               "preferred": struct.unpack("!I", o[8:12])[0],
                               "prefix": socket.inet_ntop(socket.AF_INET6, o[16:32])})
        elif t == 5:
            ra["opts"].append({"type": "mtu", "mtu": struct.unpack("!I", o[4:8])[0]})
        elif t == 25:
            ra["opts"].append({"type": "rdnss", "lifetime": struct.unpack("!I", o[4:8])[0],
                               "servers": [socket.inet_ntop(socket.AF_INET6, o[k:k + 16])
                                           for k in range(8, ln, 16)]})
        else:
            ra["opts"].append({"type": t})
        off += ln
    print(json.dumps(ra))
    break
else:
    print(json.dumps({"error": "no RA within 5 s"}))
"""


def test_router_solicitation_gets_full_ra(net6, scripts: str) -> None:
    c, s, _ = net6
    r = c.run(GUEST_PY, guest_script(scripts, "rs.py", GUEST_RS), timeout=30)
    ra = json.loads(r.stdout)
    assert ra.get("error") is None, ra
    assert (ra["src"], ra["hop"], ra["code"]) == ("fe80::2", [255], 0)
    assert (ra["cur_hop"], ra["flags"], ra["lifetime"], ra["reach"]) == (64, 0, 1800, [0, 0])
    opts = {o["type"]: o for o in ra["opts"]}
    assert len(opts) == len(ra["opts"]) == 4, ra["opts"]
    assert opts["sll"]["mac"] == "52:56:00:00:00:02"
    assert opts["mtu"]["mtu"] == 65520
    assert opts["prefix"] == {
        "type": "prefix", "len": 64, "flags": 0xC0, "valid": 86400, "preferred": 14400,
        "prefix": "fd00::",
    }
    assert opts["rdnss"]["servers"] == ["fd00::3"]
    assert opts["rdnss"]["lifetime"] >= 1800  # RFC 8106: at least MaxRtrAdvInterval
    assert s.proc.poll() is None


def test_disable_dns_drops_rdnss(container: Container, slirpy_factory, scripts: str) -> None:
    slirpy_factory(["-6", "-c", "--disable-dns", str(container.pid), "tap0"])
    wait_slaac(container)
    r = container.run(GUEST_PY, guest_script(scripts, "rs.py", GUEST_RS), timeout=30)
    ra = json.loads(r.stdout)
    assert [o["type"] for o in ra["opts"]] == ["sll", "mtu", "prefix"]


# --- DNS through fd00::3 -----------------------------------------------------

GUEST_DNS6 = r"""
import json, socket, struct, sys
transport = sys.argv[1]
q = struct.pack("!HHHHHH", 0x6666, 0x0100, 1, 0, 0, 0)
q += b"\x05alpha\x06slirpy\x04test\x00" + struct.pack("!HH", 1, 1)
kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
s = socket.socket(socket.AF_INET6, kind)
s.settimeout(5)
s.connect(("fd00::3", 53))
if transport == "udp":
    s.send(q)
    r = s.recv(65535)
else:
    s.sendall(struct.pack("!H", len(q)) + q)
    r = b""
    while len(r) < 2 or len(r) < 2 + struct.unpack("!H", r[:2])[0]:
        c = s.recv(65535)
        if not c:
            break
        r += c
    r = r[2:]
print(json.dumps({"query": q.hex(), "reply": r.hex()}))
"""


def test_dns_over_ipv6(net6, dns_srv, scripts: str) -> None:
    c, s, _ = net6
    path = guest_script(scripts, "dns6.py", GUEST_DNS6)
    for transport in ("udp", "tcp"):
        res = json.loads(c.run(GUEST_PY, path, transport, timeout=30).stdout)
        reply = assert_forwarded(res, RECORDS)
        assert reply[:2] == b"\x66\x66" and reply[-4:] == bytes([192, 0, 2, 10])
    assert dns_srv.names("udp") == ["alpha.slirpy.test"]
    assert dns_srv.names("tcp") == ["alpha.slirpy.test"]
    r = c.run("busybox", "nslookup", "beta.slirpy.test", "fd00::3", check=False)
    assert r.returncode == 0 and "Address: 192.0.2.11" in r.stdout.decode(), r.stdout
    assert s.proc.poll() is None


def test_other_ports_on_fd00_3_refused(net6, dns_srv, scripts: str) -> None:
    c, s, _ = net6
    path = guest_script(scripts, "probe.py", PORT_PROBE)
    for port in ("54", "80"):
        r = c.run(GUEST_PY, path, "fd00::3", port, timeout=30)
        # UDP: ICMPv6 port unreachable; TCP: RST.
        assert r.stdout.decode().split() == ["ECONNREFUSED"] * 2
    assert dns_srv.log == []
    assert s.proc.poll() is None


def test_disable_host_loopback_v6(container: Container, slirpy_factory, scripts: str) -> None:
    s = slirpy_factory(["-6", "-c", "--disable-host-loopback",
                        f"--dns-upstream=127.0.0.1:{free_port()}", str(container.pid), "tap0"])
    wait_slaac(container)

    def never(conn: socket.socket, _stop: threading.Event) -> None:
        results.append("accepted")

    with host_server(socket.AF_INET6, socket.SOCK_STREAM, never) as (port, results), \
            socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
        # The UDP half has a listener too, on the same port: without the
        # option the probe's datagram would reach it.
        udp.bind(("::1", port))
        udp.setblocking(False)
        r = container.run(GUEST_PY, guest_script(scripts, "probe.py", PORT_PROBE), "fd00::2",
                          str(port), timeout=30)
        with contextlib.suppress(BlockingIOError):
            results.append(f"udp datagram {udp.recv(100)!r}")
    # ICMPv6 "no route" (code 0): TCP sees ENETUNREACH. ICMPv6 has no fatal
    # "network unreachable", so a connected UDP socket without IPV6_RECVERR
    # sees nothing and times out (the kernel's rule, not slirpy's choice).
    assert results == []  # neither the TCP nor the UDP listener on ::1 was reached
    assert r.stdout.decode().split() == ["TimeoutError", "ENETUNREACH"]
    p = container.run("busybox", "ping", "-6", "-c", "1", "-W", "2", "fd00::2")
    assert "1 packets received" in p.stdout.decode()
    assert s.proc.poll() is None


def test_slaac_without_configure(container: Container, slirpy_factory, scripts: str) -> None:
    # RootlessKit style: no -c; the guest brings the TAP up itself, sends a
    # router solicitation and configures itself from the answer.
    s = slirpy_factory(["-6", f"--dns-upstream=127.0.0.1:{free_port()}", str(container.pid),
                        "tap0"])
    container.run("ip", "link", "set", "tap0", "up")
    addr = wait_slaac(container)
    assert addr["prefixlen"] == 64
    routes = json.loads(container.run("ip", "-j", "-6", "route", "show", "default").stdout)
    assert [(r["gateway"], r["dev"]) for r in routes] == [("fe80::2", "tap0")]
    p = container.run("busybox", "ping", "-6", "-c", "2", "-W", "2", "fd00::2")
    assert "2 packets received" in p.stdout.decode()
    assert s.proc.poll() is None


def test_ipv6_prefix_option(container: Container, slirpy_factory, scripts: str) -> None:
    """--ipv6-prefix moves the whole v6 side: SLAAC prefix, gateway, DNS."""
    s = slirpy_factory(["-6", "-c", "--ipv6-prefix=fd42:1:2:3::/64",
                        f"--dns-upstream=127.0.0.1:{free_port()}", str(container.pid), "tap0"])
    addr = wait_slaac(container, prefix="fd42:1:2:3:")
    assert addr["prefixlen"] == 64
    assert not [a for a in v6_addrs(container) if str(a["local"]).startswith("fd00:")]
    onlink = json.loads(container.run("ip", "-j", "-6", "route", "show",
                                      "fd42:1:2:3::/64").stdout)
    assert [r["dev"] for r in onlink] == ["tap0"]
    for target in ("fd42:1:2:3::2", "fd42:1:2:3::3"):
        p = container.run("busybox", "ping", "-6", "-c", "2", "-W", "2", target, check=False)
        assert "2 packets received" in p.stdout.decode(), p.stdout
    # TCP through the new gateway reaches the host's ::1, byte-exact.
    data = _bulk(5, 4 << 20)

    def sink(conn: socket.socket, _stop: threading.Event) -> None:
        got = bytearray()
        while b := conn.recv(1 << 20):
            got += b
        results.append((conn.getpeername()[0], hashlib.sha256(got).hexdigest()))
        conn.sendall(b"done")

    script = GUEST_TCP.replace('("fd00::2", port)', '("fd42:1:2:3::2", port)')
    with host_server(socket.AF_INET6, socket.SOCK_STREAM, sink) as (port, results):
        path = guest_script(scripts, "tcp42.py", script)
        r = container.run(GUEST_PY, path, "send", str(port), "5", str(len(data)), timeout=60)
    out = json.loads(r.stdout)
    assert results == [("::1", hashlib.sha256(data).hexdigest())]
    assert out["n"] == 4 and out["local"] == addr["local"]
    assert s.proc.poll() is None



@pytest.fixture
def testhost6() -> Iterator[tuple[TestHost, str, str, str]]:
    """A test host (testhost.py) with IPv6 too: a random fd5e::/64 ULA on the
    veth, ::1 (primary) and ::3 (secondary) on the root side, ::2 inside.
    Yields (host, inside_addr, root_addr, root_addr2)."""
    with make_testhost() as th:
        r = random.Random()
        net = "fd5e:" + ":".join(f"{r.randrange(1 << 16):x}" for _ in range(3))
        inside, root, root2 = th.add_ipv6(net)
        yield th, inside, root, root2


@pytest.mark.parametrize("which", ["secondary", "ifname"])
def test_outbound_addr6_tcp_and_udp(container: Container, slirpy_factory, testhost6,
                                    which: str) -> None:
    th, inside, root, root2 = testhost6
    # The secondary address is never the kernel's default source, so seeing
    # it proves the bind; IFNAME takes the interface's first global address
    # (which of the two that is, is the kernel's order).
    opt = root2 if which == "secondary" else th.veth
    slirpy_factory(["-6", "-c", f"--outbound-addr6={opt}",
                    f"--dns-upstream=127.0.0.1:{free_port()}", str(container.pid), "tap0"])
    wait_slaac(container)
    tcp = th.serve("serve-tcp")  # the test host's IPv4 server: slirpy's v4 side
    tcp6 = Server.start([*th.exec_prefix(), PY, HERE, "serve-tcp", "--bind", inside])
    udp6 = Server.start([*th.exec_prefix(), PY, HERE, "serve-udp", "--bind", inside])
    th.procs += [tcp6.proc, udp6.proc]
    size = 1 << 20
    r = container.run(*guest_cmd("send", inside, str(tcp6.port), "--size", str(size)),
                      timeout=60)
    rep = parse_report(r.stdout)
    assert rep["server"]["sha256"] == pattern_digest(1, size)  # type: ignore[index]
    src = rep["server"]["peer"][0]  # type: ignore[index]
    assert src == root2 if which == "secondary" else src in (root, root2)
    r = container.run(*guest_cmd("udp", inside, str(udp6.port), "--sizes", "10,1000"),
                      timeout=60)
    assert parse_report(r.stdout)["ok"] == 2
    assert udp6.next(timeout=5)["peer"][0] == src  # type: ignore[index]
    # IPv4 is untouched by --outbound-addr6: the kernel's default source.
    r = container.run(*guest_cmd("send", th.addr, str(tcp.port), "--size", "1000"), timeout=60)
    assert parse_report(r.stdout)["server"]["peer"][0] == th.root_addr  # type: ignore[index]


def test_ping6_test_host_through_ping_sockets(container: Container, slirpy_factory,
                                              testhost6) -> None:
    """ICMPv6 echo to a real destination goes out through a ping socket and
    the replies come back matched to the guest's id and sequence."""
    _th, inside, _root, _root2 = testhost6
    s = slirpy_factory(["-6", "-c", f"--dns-upstream=127.0.0.1:{free_port()}",
                        str(container.pid), "tap0"])
    wait_slaac(container)
    r = container.run("busybox", "ping", "-6", "-c", "3", "-W", "2", inside, check=False)
    out = r.stdout.decode()
    assert "3 packets transmitted, 3 packets received" in out, out
    assert len([ln for ln in out.splitlines() if f"bytes from {inside}: seq=" in ln]) == 3
    assert s.proc.poll() is None


def test_closed_port_on_host_loopback_v6_refused(net6, scripts: str) -> None:
    """A closed port on the host's ::1 through fd00::2: the host's port
    unreachable (UDP) and refusal (TCP) reach the guest as ECONNREFUSED."""
    c, s, _ = net6
    path = guest_script(scripts, "probe.py", PORT_PROBE)
    r = c.run(GUEST_PY, path, "fd00::2", str(free_port(socket.AF_INET6)), timeout=30)
    assert r.stdout.decode().split() == ["ECONNREFUSED"] * 2
    assert s.proc.poll() is None
