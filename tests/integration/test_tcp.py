"""Issue 3, IPv4 data path: TCP between the guest's real kernel and the host.

This file owns the TCP integration tests: bulk transfers byte-exact both ways
at MTU 65520 and 1500, many concurrent connections, half-close from either
side, refused and unreachable destinations, slirpy's memory under a slow
guest reader, a test host behind a veth, and --outbound-addr for TCP.
The peers are the programs of testhost.py; every transfer is checked by
sha256 against what the test computes itself.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.helpers.daemons import AnyNet, Slirpy
from tests.helpers.testbed import Container, free_port
from tests.helpers.testhost import (
    Server,
    TestHost,
    guest_cmd,
    parse_report,
    pattern_digest,
)

GW = "10.0.2.2"
BULK = 256 << 20
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(params=[("cli", 65520), ("cli", 1500), ("library", 65520)],
                ids=["mtu65520", "mtu1500", "library-mtu65520"])
def mtu_net(request, container: Container, slirpy_factory,
            library_factory) -> Iterator[tuple[Container, int]]:
    """slirpy-slirp4netns at both MTUs, and slirpy.Network (the library) at 65520."""
    backend, mtu = request.param
    if backend == "cli":
        slirpy_factory(["--configure", f"--mtu={mtu}", str(container.pid), "tap0"])
    else:
        library_factory(container.pid, mtu=mtu)
    yield container, mtu


def guest(c: Container, *args: str, timeout: float = 120) -> dict[str, object]:
    r = c.run(*guest_cmd(*args), timeout=timeout, check=False)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return parse_report(r.stdout)


def mbps(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e6:.0f} MB/s"


def test_bulk_guest_to_host(mtu_net, tcp_server: Server) -> None:
    c, mtu = mtu_net
    expected = pattern_digest(7, BULK)
    rep = guest(c, "send", GW, str(tcp_server.port), "--size", str(BULK), "--seed", "7")
    server = rep["server"]
    assert rep["sha256"] == expected
    assert server["bytes"] == BULK and server["sha256"] == expected  # type: ignore[index]
    assert server["peer"][0] == "127.0.0.1"  # type: ignore[index]
    print(f"guest->host 256 MiB at MTU {mtu}: {mbps(BULK, rep['seconds'])}")  # type: ignore[arg-type]


def test_bulk_host_to_guest(mtu_net, tcp_server: Server) -> None:
    c, mtu = mtu_net
    expected = pattern_digest(8, BULK)
    rep = guest(c, "recv", GW, str(tcp_server.port), "--size", str(BULK), "--seed", "8")
    assert rep["bytes"] == BULK and rep["sha256"] == expected
    srv = tcp_server.next(timeout=30)
    assert srv["mode"] == "source" and srv["sha256"] == expected
    # The guest's answer crossed after the host's FIN: host-side half-close.
    assert json.loads(srv["answer"]) == rep  # type: ignore[arg-type]
    print(f"host->guest 256 MiB at MTU {mtu}: {mbps(BULK, rep['seconds'])}")  # type: ignore[arg-type]


def test_200_concurrent_connections(any_net: AnyNet, tcp_server: Server) -> None:
    c, _ = any_net
    rep = guest(c, "many", GW, str(tcp_server.port), "--count", "200", "--timeout", "60")
    results = rep["results"]
    assert len(results) == 200  # type: ignore[arg-type]
    bad = {k: v for k, v in results.items() if v != "ok"}  # type: ignore[union-attr]
    assert bad == {}
    peers = [tcp_server.next(timeout=10) for _ in range(200)]
    assert sorted(p["mode"] for p in peers) == ["echo"] * 200
    assert len({tuple(p["peer"]) for p in peers}) == 200  # type: ignore[arg-type]


def test_half_close_guest_shuts_write_and_still_receives(
    any_net: AnyNet, tcp_server: Server
) -> None:
    c, _ = any_net
    # `send` shuts its write side after 8 MiB; the server's answer (count and
    # digest of what it read to EOF) must still arrive on the half-open socket.
    size = 8 << 20
    rep = guest(c, "send", GW, str(tcp_server.port), "--size", str(size), "--seed", "3")
    assert rep["server"] == {
        "peer": rep["server"]["peer"],  # type: ignore[index]
        "mode": "sink",
        "bytes": size,
        "sha256": pattern_digest(3, size),
    }


def test_half_close_host_shuts_write_and_still_receives(
    any_net: AnyNet, tcp_server: Server
) -> None:
    c, _ = any_net
    size = 3 << 20
    rep = guest(c, "recv", GW, str(tcp_server.port), "--size", str(size), "--seed", "4")
    assert rep["bytes"] == size and rep["sha256"] == pattern_digest(4, size)
    srv = tcp_server.next(timeout=30)
    assert "error" not in srv
    assert json.loads(srv["answer"]) == rep  # type: ignore[arg-type]


def test_refused_port_gives_econnrefused(any_net: AnyNet) -> None:
    c, _ = any_net
    port = free_port()  # nothing listens there on the host's loopback
    rep = guest(c, "connect", GW, str(port), "--timeout", "10")
    assert rep == {"result": "ECONNREFUSED", "text": "Connection refused"}


def test_disable_host_loopback(container: Container, slirpy_factory, tcp_server: Server) -> None:
    slirpy_factory(["--configure", "--disable-host-loopback", str(container.pid), "tap0"])
    rep = guest(container, "connect", GW, str(tcp_server.port), "--timeout", "10")
    assert rep == {"result": "ENETUNREACH", "text": "Network is unreachable"}
    for target in (GW, "10.0.2.3"):
        r = container.run("busybox", "ping", "-c", "2", "-W", "2", target, check=False)
        assert "2 packets transmitted, 2 packets received" in r.stdout.decode(), r.stdout


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_slow_guest_reader_keeps_slirpy_rss_bounded(
    net: tuple[Container, Slirpy], tcp_server: Server
) -> None:
    c, s = net
    # ~50 MB/s: 256 KiB reads with a 5 ms pause; the host offers far more.
    p = c.popen(
        *guest_cmd(
            "recv", GW, str(tcp_server.port), "--size", str(BULK), "--seed", "9",
            "--chunk", str(256 << 10), "--delay", "0.005", "--timeout", "120",
        ),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    peak, samples = 0, 0
    deadline = time.monotonic() + 180
    while p.poll() is None and time.monotonic() < deadline:
        peak = max(peak, _rss_kib(s.proc.pid))
        samples += 1
        time.sleep(0.05)
    out, _ = p.communicate(timeout=30)
    rep = parse_report(out)
    assert rep["bytes"] == BULK and rep["sha256"] == pattern_digest(9, BULK)
    assert samples > 20  # the transfer was really slow and watched throughout
    assert peak < 64 * 1024, f"slirpy VmRSS peaked at {peak} KiB"
    print(f"slow reader: peak slirpy VmRSS {peak} KiB over {samples} samples")


def test_testhost_tcp(any_net: AnyNet, testhost: TestHost) -> None:
    c, _ = any_net
    srv = testhost.serve("serve-tcp")
    size = 16 << 20
    rep = guest(c, "send", testhost.addr, str(srv.port), "--size", str(size), "--seed", "5")
    assert rep["sha256"] == pattern_digest(5, size)
    assert rep["server"]["bytes"] == size  # type: ignore[index]
    assert rep["server"]["sha256"] == rep["sha256"]  # type: ignore[index]
    # slirpy runs in the root namespace: the test host sees the root side.
    assert rep["server"]["peer"][0] == testhost.root_addr  # type: ignore[index]
    rep = guest(c, "recv", testhost.addr, str(srv.port), "--size", str(size), "--seed", "6")
    assert rep["bytes"] == size and rep["sha256"] == pattern_digest(6, size)


def prefer_source(th: TestHost, addr: str) -> None:
    """Make @addr the kernel's default source toward the test host (the
    route's preferred source); the veth and its routes go with the host."""
    net = ipaddress.ip_interface(f"{th.root_addr}/29").network
    subprocess.run(["ip", "route", "replace", str(net), "dev", th.veth, "src", addr],
                   check=True, capture_output=True, timeout=30)


@pytest.mark.parametrize("which", ["primary", "secondary", "ifname"])
def test_outbound_addr_tcp(container: Container, slirpy_factory, testhost: TestHost, which) -> None:
    # Seeing the bound address proves the bind only where the kernel would
    # pick another one: the secondary address is never its default source,
    # and for the primary (and IFNAME, which binds the primary) the route to
    # the test host is made to prefer the secondary.
    src = testhost.root_addr if which != "secondary" else testhost.root_addr2
    if which != "secondary":
        prefer_source(testhost, testhost.root_addr2)
    # IFNAME form: the interface's primary address is what gets bound.
    opt = testhost.veth if which == "ifname" else src
    slirpy_factory(["--configure", f"--outbound-addr={opt}", str(container.pid), "tap0"])
    srv = testhost.serve("serve-tcp")
    size = 1 << 20
    rep = guest(container, "send", testhost.addr, str(srv.port), "--size", str(size))
    assert rep["server"]["peer"][0] == src  # type: ignore[index]
    assert rep["server"]["sha256"] == pattern_digest(1, size)  # type: ignore[index]


def test_unreachable_host_gives_ehostunreach(
    any_net: AnyNet, testhost: TestHost
) -> None:
    # An unused address on the test host's /29: the root namespace's ARP for
    # it goes unanswered, the host connect() fails with EHOSTUNREACH, and
    # slirpy reports ICMP host unreachable for the guest's SYN.
    c, _ = any_net
    nobody = str(ipaddress.ip_address(testhost.addr) + 2)
    t0 = time.monotonic()
    rep = guest(c, "connect", nobody, "80", "--timeout", "30")
    assert rep == {"result": "EHOSTUNREACH", "text": "No route to host"}
    assert time.monotonic() - t0 < 25  # reported, not left to the guest's timeout
