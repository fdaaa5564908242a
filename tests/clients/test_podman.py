"""Rootless Podman with containers.conf `network_cmd_path` = slirpy-slirp4netns.

Every test runs a real container (`podman run -d`, busybox image imported
with `podman import`) as the unprivileged test user, checks an outcome from
inside or outside it, and proves from the process list that the network was
slirpy's console script and that no real slirp4netns ran. Removing the
container must make slirpy exit (checked by `Podman.container`).
"""

from __future__ import annotations

import hashlib
import socket
import time
import urllib.request

import pytest

from tests.helpers.clientbed import (
    IMAGE,
    LineServer,
    Podman,
    PodmanContainer,
    api_call,
    line_digest,
    option_value,
    served_blob,
    slirpy_procs,
)
from tests.helpers.testhost import TestHost, pattern_digest

pytestmark = pytest.mark.clients


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nc_line(c: PodmanContainer, addr: str, port: int, line: str, check: bool = True) -> str:
    r = c.sh(f"echo {line} | nc -w 5 {addr} {port}", check=check)
    return r.stdout


def fetch(url: str, timeout: float = 20) -> bytes:
    """GET with retries while the container's server starts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_outbound_to_host_loopback_allowed(podman: Podman, loopback_server: LineServer) -> None:
    with podman.container("--network", "slirp4netns:allow_host_loopback=true") as c:
        argv = c.slirpy_argv()
        assert "--disable-host-loopback" not in argv
        assert "-c" in argv  # Podman lets slirp4netns configure tap0
        out = nc_line(c, "10.0.2.2", loopback_server.port, "hello-from-podman")
    assert out == f"pong {line_digest(b'hello-from-podman')}\n"
    # The host saw the connection arrive on its own loopback.
    assert loopback_server.seen == [("127.0.0.1", b"hello-from-podman")]


def test_host_loopback_refused_by_default(podman: Podman, loopback_server: LineServer) -> None:
    # NET_RAW: Podman drops it by default, and busybox ping needs a raw socket.
    with podman.container("--cap-add", "NET_RAW") as c:
        argv = c.slirpy_argv()
        assert "--disable-host-loopback" in argv
        r = c.sh(f"echo nope | nc -w 5 10.0.2.2 {loopback_server.port}", check=False)
        # The gateway itself still answers pings; only host loopback is closed.
        ping = c.sh("ping -c 1 -W 5 10.0.2.2")
    assert r.returncode != 0 and "pong" not in r.stdout
    assert loopback_server.seen == []
    assert "1 packets received" in ping.stdout


def test_guest_network_as_podman_configures_it(podman: Podman) -> None:
    with podman.container() as c:
        argv = c.slirpy_argv()
        addr = c.sh("ip -4 -o addr show dev tap0; ip route; cat /sys/class/net/tap0/mtu").stdout
    assert "inet 10.0.2.100/24" in addr
    assert "default via 10.0.2.2 dev tap0" in addr
    mtu = option_value(argv, "--mtu")
    assert mtu is not None and addr.rstrip().endswith(mtu)
    # Podman's way of calling: exit and ready fds, netns path, TAP name last.
    assert option_value(argv, "--netns-type") == "path"
    assert option_value(argv, "-e") and option_value(argv, "-r")
    assert argv[-1] == "tap0" and argv[-2] == c.netns


@pytest.mark.parametrize("handler", ["slirp4netns", "rootlessport"])
def test_publish_port(podman: Podman, handler: str) -> None:
    hport = free_port()
    net = ["--network", f"slirp4netns:port_handler={handler}"] if handler == "slirp4netns" else []
    with podman.container(
        *net, "-p", f"127.0.0.1:{hport}:8080", cmd="httpd -f -p 8080 -h /www"
    ) as c:
        argv = c.slirpy_argv()
        body = fetch(f"http://127.0.0.1:{hport}/blob")
        api = option_value(argv, "--api-socket")
        if handler == "slirp4netns":
            # Podman added the forward through slirpy's API socket...
            assert api is not None
            listed = api_call(api, {"execute": "list_hostfwd"})
            entries = listed["entries"]
            assert [(e["proto"], e["host_addr"], e["host_port"], e["guest_port"])
                    for e in entries] == [("tcp", "127.0.0.1", hport, 8080)]  # type: ignore[union-attr]
            # ... and only slirpy answers get_stats (slirp4netns: unknown execute).
            stats = api_call(api, {"execute": "get_stats"})
            assert stats["return"]["forwards"] == 1  # type: ignore[index]
            assert stats["return"]["engine"]["tcp_flows_inbound"] >= 1  # type: ignore[index]
        else:
            # rootlessport carries the published port itself (its child dials
            # the container inside the namespace): no forward in slirpy ...
            assert api is None
            # ... yet the container's network is slirpy's: tap0 configured by
            # it, and the gateway's ARP answered by slirpy's engine (a connect
            # attempt to port 9 makes the guest ask; nothing leaves loopback).
            out = c.sh("ip -4 -o addr show tap0; nc -w 2 10.0.2.2 9 </dev/null; "
                       "ip neigh show 10.0.2.2", check=False).stdout
            assert "10.0.2.100/24" in out and "52:55:0a:00:02:02" in out, out
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(served_blob()).hexdigest()


def test_enable_ipv6_reaches_host_ipv6_loopback(
    podman: Podman, loopback6_server: LineServer
) -> None:
    net = "slirp4netns:enable_ipv6=true,allow_host_loopback=true"
    with podman.container("--network", net) as c:
        assert "--enable-ipv6" in c.slirpy_argv()
        # SLAAC from slirpy's router advertisement, then DAD: bounded wait.
        addrs = c.sh(
            "for i in $(seq 50); do ip -6 addr show dev tap0 scope global | "
            "grep -v tentative | grep -q 'inet6 fd00::' && break; sleep 0.2; done; "
            "ip -6 addr show dev tap0 scope global; ip -6 route"
        ).stdout
        out = ""
        for _ in range(3):  # the route may trail the address by a moment
            out = nc_line(c, "fd00::2", loopback6_server.port, "hello-v6", check=False)
            if out:
                break
            time.sleep(1)
    assert "inet6 fd00::" in addrs and "default via fe80::2 dev tap0" in addrs
    assert out == f"pong {line_digest(b'hello-v6')}\n"
    assert loopback6_server.seen[-1] == ("::1", b"hello-v6")


def test_cidr(podman: Podman, loopback_server: LineServer) -> None:
    net = "slirp4netns:cidr=10.0.135.128/25,allow_host_loopback=true"
    with podman.container("--network", net) as c:
        assert option_value(c.slirpy_argv(), "--cidr") == "10.0.135.128/25"
        info = c.sh("ip -4 -o addr show dev tap0; ip route").stdout
        out = nc_line(c, "10.0.135.130", loopback_server.port, "hello-cidr")
    assert "inet 10.0.135.228/25" in info
    assert "default via 10.0.135.130 dev tap0" in info
    assert out == f"pong {line_digest(b'hello-cidr')}\n"


def test_outbound_addr(podman: Podman, testhost: TestHost) -> None:
    th = testhost
    # The secondary address is never the kernel's own choice of source: seeing
    # it on the server proves slirpy bound its socket to it.
    src = th.root_addr2  # type: ignore[attr-defined]
    srv = th.serve("serve-tcp")  # type: ignore[attr-defined]
    with podman.container("--network", f"slirp4netns:outbound_addr={src}") as c:
        assert option_value(c.slirpy_argv(), "--outbound-addr") == src
        out = c.sh(
            f"echo 'source 100000 7' | nc -w 10 {th.addr} {srv.port} | sha256sum"  # type: ignore[attr-defined]
        ).stdout
    report = srv.next()
    assert report["peer"][0] == src  # type: ignore[index]
    assert out.split()[0] == pattern_digest(7, 100000)


def test_container_exit_stops_slirpy(podman: Podman) -> None:
    """A container whose command ends: Podman closes the exit fd, slirpy exits 0."""
    with podman.container(cmd="sleep 2") as c:
        assert c.slirpy_argv()
        assert podman("wait", c.name, timeout=30).stdout.strip() == "0"
        deadline = time.monotonic() + 10
        while slirpy_procs(podman.user.uid, c.netns):
            assert time.monotonic() < deadline, "slirpy outlived the container's command"
            time.sleep(0.1)


def test_mtu_option(podman: Podman, loopback_server: LineServer) -> None:
    net = "slirp4netns:mtu=1500,allow_host_loopback=true"
    with podman.container("--network", net) as c:
        assert option_value(c.slirpy_argv(), "--mtu") == "1500"
        mtu = c.sh("cat /sys/class/net/tap0/mtu").stdout
        # 3000 bytes in one line: more than one segment at this MTU.
        out = nc_line(c, "10.0.2.2", loopback_server.port, "m" * 3000)
    assert mtu == "1500\n"
    assert out == f"pong {line_digest(b'm' * 3000)}\n"


def test_slirpy_error_reaches_the_podman_user(podman: Podman) -> None:
    """A value slirpy refuses: `podman run` fails and shows slirpy's one-line reason."""
    r = podman(
        "run", "--rm", "--network", "slirp4netns:cidr=10.0.2.0/26", IMAGE, "true", check=False
    )
    assert r.returncode != 0
    assert "CIDR prefix length must be between 1 and 25, got /26" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert slirpy_procs(podman.user.uid, "tap0") == []
