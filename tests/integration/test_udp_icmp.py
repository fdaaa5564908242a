"""Issue 3, IPv4 data path: UDP and ICMP between the guest and the host.

This file owns the UDP/ICMP integration tests: an echo of 300 datagrams of
mixed sizes up to the MTU limit through the gateway to host loopback, byte
for byte; a closed port reported to the guest socket as ECONNREFUSED (ICMP
port unreachable); UDP and ping to a test host behind a veth; and
--outbound-addr for UDP. Peers are the programs of testhost.py.
"""

from __future__ import annotations

import hashlib
import random
import re
import sys

import pytest

from tests.helpers.daemons import AnyNet
from tests.helpers.fake_dns import PORT_PROBE
from tests.helpers.testbed import Container, free_port
from tests.helpers.testhost import (
    TestHost,
    guest_cmd,
    parse_report,
)

GW = "10.0.2.2"
pytestmark = pytest.mark.timeout(300)


def guest(c: Container, *args: str, timeout: float = 120) -> dict[str, object]:
    r = c.run(*guest_cmd(*args), timeout=timeout, check=False)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return parse_report(r.stdout)


def mixed_sizes(mtu: int, n: int = 300) -> list[int]:
    """Mostly 1..1400 bytes, every tenth one larger, the extremes included."""
    limit = mtu - 28  # IPv4 + UDP headers: the largest unfragmented payload
    rnd = random.Random(mtu)
    sizes = [rnd.randint(1, 1400) if i % 10 else rnd.randint(1400, limit) for i in range(n)]
    sizes[:4] = [1, 1400, limit - 1, limit]
    return sizes


def expected_digest(sizes: list[int]) -> str:
    h = hashlib.sha256()
    for i, size in enumerate(sizes):
        h.update(random.Random(20_000 + i).randbytes(size))
    return h.hexdigest()


@pytest.mark.parametrize("mtu", [65520, 1500])
def test_udp_echo_mixed_sizes(container: Container, slirpy_factory, udp_server, mtu) -> None:
    slirpy_factory(["--configure", f"--mtu={mtu}", str(container.pid), "tap0"])
    sizes = mixed_sizes(mtu)
    rep = guest(
        container,
        "udp",
        GW,
        str(udp_server.port),
        "--sizes",
        ",".join(map(str, sizes)),
        "--timeout",
        "3",
    )
    assert rep == {
        "sent": 300,
        "ok": 300,
        "bad": [],
        "errors": [],
        "sha256": expected_digest(sizes),
    }
    # The guest appears on host loopback from 127.0.0.1, one flow, one port.
    assert udp_server.next(timeout=5)["peer"][0] == "127.0.0.1"  # type: ignore[index]


def test_udp_closed_port_gives_econnrefused(any_net: AnyNet) -> None:
    c, _ = any_net
    port = free_port()  # a TCP-free port; nothing binds UDP there either
    rep = guest(c, "udp", GW, str(port), "--sizes", "10,20", "--timeout", "3")
    # The first datagram draws the host's port unreachable, which slirpy
    # relays as ICMP: the guest's connected socket reports it on recv.
    assert rep["sent"] >= 1 and rep["ok"] == 0
    assert rep["errors"][0] == [0, 10, "ECONNREFUSED"]  # type: ignore[index]


def test_testhost_udp_and_ping(any_net: AnyNet, testhost: TestHost) -> None:
    c, _ = any_net
    srv = testhost.serve("serve-udp")
    sizes = mixed_sizes(1500, 50)
    rep = guest(c, "udp", testhost.addr, str(srv.port), "--sizes", ",".join(map(str, sizes)))
    assert rep["ok"] == 50 and rep["errors"] == [] and rep["bad"] == []
    assert rep["sha256"] == expected_digest(sizes)
    assert srv.next(timeout=5)["peer"][0] == testhost.root_addr  # type: ignore[index]
    r = c.run("busybox", "ping", "-c", "3", "-W", "2", testhost.addr, check=False)
    out = r.stdout.decode()
    assert "3 packets transmitted, 3 packets received" in out, out
    assert len(re.findall(rf"bytes from {re.escape(testhost.addr)}: seq=\d", out)) == 3


@pytest.mark.parametrize("which", ["primary", "secondary", "ifname"])
def test_outbound_addr_udp(container: Container, slirpy_factory, testhost: TestHost, which) -> None:
    src = testhost.root_addr if which != "secondary" else testhost.root_addr2
    # IFNAME form: the interface's primary address is what gets bound.
    opt = testhost.veth if which == "ifname" else src
    slirpy_factory(["--configure", f"--outbound-addr={opt}", str(container.pid), "tap0"])
    srv = testhost.serve("serve-udp")
    rep = guest(container, "udp", testhost.addr, str(srv.port), "--sizes", "100,1000")
    assert rep["ok"] == 2
    assert srv.next(timeout=5)["peer"][0] == src  # type: ignore[index]
    # Ping sockets are bound the same way and still get their replies.
    r = container.run("busybox", "ping", "-c", "2", "-W", "2", testhost.addr, check=False)
    assert "2 packets transmitted, 2 packets received" in r.stdout.decode(), r.stdout


def test_disable_host_loopback_gives_enetunreach(container: Container, slirpy_factory,
                                                 shared_dir) -> None:
    s = slirpy_factory(["-c", "--disable-host-loopback", f"--dns-upstream=127.0.0.1:{free_port()}",
                        str(container.pid), "tap0"])
    probe = shared_dir / "probe.py"
    probe.write_text(PORT_PROBE)
    r = container.run(sys.executable, str(probe), GW, str(free_port()), timeout=30)
    # UDP then TCP: ICMP "network administratively prohibited", which Linux
    # reports as ENETUNREACH to connected UDP sockets and to a connecting TCP one.
    assert r.stdout.decode().split() == ["ENETUNREACH", "ENETUNREACH"]
    assert s.proc.poll() is None
