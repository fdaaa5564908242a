"""Rootless Podman 5.4 with `--network pasta` in the Debian 13 root, inside the fake host.

This file proves the bed of issue 16 item 8 (tests/helpers/trixie_root.py,
tests/helpers/fakehost.py): as the root's unprivileged user, in the fake host's
network namespace, `podman run --network pasta` with each pasta in PASTAS
must show the outcomes below. "pasta" is Debian 13's real pasta, which shows
that the checks describe what pasta does; "slirpy" is slirpy's `slirpy-pasta`
installed in the root's venv and handed to Podman through
CONTAINERS_HELPER_BINARY_DIR, skipped until the checkout has that console
script.

Traffic stays in the test's namespaces: the container reaches the upstream
namespace's test hosts through the fake host, never the machine's network.
This file must not install anything on the machine (trixie_root installs
debootstrap if missing) or edit the root beyond its session's tmpfs.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator

import pytest

from tests.helpers import fakehost, pastabed, trixie_root

pytestmark = pytest.mark.clients

# Deterministic bytes the container sends with busybox: `seq 1 40000`.
SEQ_BYTES = "".join(f"{i}\n" for i in range(1, 40001)).encode()
HTTP_GET = b"GET /index.html HTTP/1.0\r\n\r\n"
# httpd on 80 (in the foreground, -v logs each client's address) and on 81.
WEB = ("mkdir -p /www && echo bed13-published > /www/index.html && httpd -p 81 -h /www && "
       "exec httpd -f -v -p 80 -h /www")
BODY = b"\r\n\r\nbed13-published\n"


# The fixtures of tests/helpers/pastabed.py: one bed per module, each pasta in PASTAS.
bed = pastabed.bed
pasta = pastabed.pasta
Bed = pastabed.Bed
Pasta = pastabed.Pasta


def test_podman_runs_the_pasta_under_test(pasta: Pasta) -> None:
    got = pasta.podman("info", "--format", "{{.Host.Pasta.Executable}}").stdout.strip()
    assert got == pasta.executable


def test_container_owns_the_fake_hosts_addresses(pasta: Pasta) -> None:
    out = pasta.run("sh", "-c", "ip -o addr show dev eth0; echo ---; ip route; ip -6 route; "
                    "echo ---; cat /etc/resolv.conf")
    addrs, routes, resolv = out.split("---\n")
    assert f"inet {fakehost.HOST4}/24 " in addrs
    assert f"inet6 {fakehost.HOST6}/64 " in addrs
    assert f"default via {fakehost.GATEWAY4} dev eth0" in routes
    assert f"default via {fakehost.GATEWAY6} dev eth0" in routes
    # Podman puts pasta's DNS forwarder first, then the fake host's resolver.
    assert resolv.splitlines()[:2] == ["nameserver 169.254.1.1", f"nameserver {fakehost.DNS4}"]


@pytest.mark.parametrize("test_host,seen_as", [
    (fakehost.TEST_HOST4, fakehost.HOST4), (fakehost.TEST_HOST6, fakehost.HOST6),
    (fakehost.PRIVATE_HOST4, fakehost.HOST4), (fakehost.METADATA4, fakehost.HOST4),
])
def test_outbound_tcp_leaves_as_the_fake_host(pasta: Pasta, test_host: str, seen_as: str) -> None:
    out = pasta.run("sh", "-c", f"nc {test_host} {fakehost.PEER_PORT} </dev/null")
    addr, _port = out.split()
    assert addr == seen_as


def test_outbound_tcp_echo_bytes(pasta: Pasta) -> None:
    before = len(pasta.bed.fh.events())
    out = pasta.run("sh", "-c", f"seq 1 40000 | nc {fakehost.TEST_HOST4} {fakehost.ECHO_PORT} "
                    "| md5sum")
    closed = [e for e in pasta.bed.fh.events()[before:]
              if e.get("service") == "echo" and e.get("closed")]
    assert out.split()[0] == hashlib.md5(SEQ_BYTES).hexdigest(), (
        f"echo reply differs; the echo server saw {closed}")
    assert [e["bytes"] for e in closed] == [len(SEQ_BYTES)]


def test_dns_through_the_forwarder(pasta: Pasta) -> None:
    before = len(pasta.bed.fh.events())
    out = pasta.run("nslookup", f"www.{fakehost.DOMAIN}", "169.254.1.1")
    assert f"Address: {fakehost.TEST_HOST4}" in out
    assert f"Address: {fakehost.TEST_HOST6}" in out
    # The query reached the upstream server, from the fake host's address.
    asked = [e for e in pasta.bed.fh.events()[before:] if e.get("service") == "dns"]
    assert asked
    assert {e["peer"] for e in asked} == {fakehost.HOST4}
    missing = pasta.run("nslookup", f"nothing.{fakehost.DOMAIN}", check=False)
    assert "NXDOMAIN" in missing


def test_icmp_echo_to_a_test_host(pasta: Pasta) -> None:
    out = pasta.run("ping", "-c", "2", "-W", "3", fakehost.TEST_HOST4, opts=("--cap-add=NET_RAW",))
    assert "2 packets received" in out


def test_udp_to_a_test_host(pasta: Pasta) -> None:
    out = pasta.run("nslookup", f"private.{fakehost.DOMAIN}", fakehost.DNS4)
    assert f"Address: {fakehost.PRIVATE_HOST4}" in out


def test_host_containers_internal_reaches_the_fake_host(pasta: Pasta) -> None:
    out = pasta.run("sh", "-c", "grep -w host.containers.internal /etc/hosts; echo ---; "
                    f"nc host.containers.internal {fakehost.PEER_PORT} </dev/null")
    hosts, peer = out.split("---\n")
    assert hosts.split()[0] == "169.254.1.2"
    # The fake host's own service sees the connection come from its own address.
    assert peer.split()[0] == fakehost.HOST4


def test_the_fake_hosts_address_is_the_containers_own(pasta: Pasta) -> None:
    # The fake host listens on HOST4:PEER_PORT, yet from the container that
    # address is the container itself, where nothing listens.
    r = pasta.podman("run", "--rm", "--network", "pasta", trixie_root.IMAGE, "sh", "-c",
                     f"nc {fakehost.HOST4} {fakehost.PEER_PORT} </dev/null", check=False)
    assert r.returncode != 0
    assert "Connection refused" in r.stderr


def test_network_options_reach_pasta(pasta: Pasta) -> None:
    out = pasta.run("sh", "-c", "ip -o -4 addr show dev eth0; ip route; echo ---; "
                    f"nc {fakehost.TEST_HOST4} {fakehost.PEER_PORT} </dev/null",
                    network="pasta:-a,10.13.2.15,-n,24,-g,10.13.2.1")
    config, peer = out.split("---\n")
    assert "inet 10.13.2.15/24 " in config
    assert "default via 10.13.2.1 dev eth0" in config
    assert peer.split()[0] == fakehost.HOST4


def test_ipv6_only(pasta: Pasta) -> None:
    out = pasta.run("sh", "-c", "ip -o addr show dev eth0; echo ---; "
                    f"nc {fakehost.TEST_HOST6} {fakehost.PEER_PORT} </dev/null",
                    network="pasta:-6")
    config, peer = out.split("---\n")
    assert " inet " not in config
    assert f"inet6 {fakehost.HOST6}/64 " in config
    assert peer.split()[0] == fakehost.HOST6


def _served(bed: Bed, host: str, port: int, upstream: bool = False) -> bytes:
    """What the web container answers through host:port (bounded retries while it starts)."""
    body = b""
    for _ in range(50):
        with contextlib.suppress(fakehost.BedError):
            body = bed.fh.client(host, port, HTTP_GET, upstream=upstream, timeout=5)
        if body:
            break
        time.sleep(0.1)
    return body


def _refused(bed: Bed, host: str, port: int, upstream: bool = False) -> bool:
    try:
        bed.fh.client(host, port, HTTP_GET, upstream=upstream, timeout=5)
    except fakehost.BedError as e:
        return "Connection refused" in str(e)
    return False


@contextlib.contextmanager
def _web(pasta: Pasta, *publish: str) -> Iterator[str]:
    """A detached busybox httpd container publishing `publish` (-p specs); removed after."""
    name = f"bed13-web-{pasta.name}"
    pasta.podman("rm", "-f", "-t", "0", name, check=False)
    ports = [a for spec in publish for a in ("-p", spec)]
    pasta.podman("run", "-d", "--name", name, "--network", "pasta", *ports,
                 trixie_root.IMAGE, "sh", "-c", WEB)
    try:
        yield name
    finally:
        pasta.podman("rm", "-f", "-t", "0", name, check=False)


def test_published_port(pasta: Pasta) -> None:
    bed = pasta.bed
    with _web(pasta, "8080:80") as name:
        # pasta's listener is bound when `podman run -d` returns; httpd may
        # still be starting in the container.
        assert _served(bed, "127.0.0.1", 8080).endswith(BODY)
        assert _served(bed, "::1", 8080).endswith(BODY)
        # Remote clients (upstream) to the fake host's addresses; the
        # container sees the client's own address.
        assert _served(bed, fakehost.HOST4, 8080, upstream=True).endswith(BODY)
        assert _served(bed, fakehost.HOST6, 8080, upstream=True).endswith(BODY)
        log = pasta.podman("logs", name).stderr
        assert f"[::ffff:{fakehost.GATEWAY4}]:" in log
        assert f"[{fakehost.GATEWAY6}]:" in log
        # Loopback clients, as this pasta delivers them: from the host's
        # address of that family (which the container owns too).
        assert f"[::ffff:{fakehost.HOST4}]:" in log
        assert f"[{fakehost.HOST6}]:" in log
        # The port is taken: a second container fails with pasta's message.
        busy = pasta.podman("run", "--rm", "--network", "pasta", "-p", "8080:80",
                            trixie_root.IMAGE, "true", check=False)
        assert busy.returncode != 0
        assert "Failed to bind port 8080 (Address already in use)" in busy.stderr
        assert pastabed.pasta_pids(pasta)
        pasta.podman("stop", "-t", "0", name)
        deadline = time.monotonic() + 1.0
        while pastabed.pasta_pids(pasta) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pastabed.pasta_pids(pasta) == []


@pytest.mark.parametrize("bind,other", [("127.0.0.1", "::1"), ("::1", "127.0.0.1")])
def test_publish_on_one_loopback(pasta: Pasta, bind: str, other: str) -> None:
    spec = f"[{bind}]:8081:80" if ":" in bind else f"{bind}:8081:80"
    with _web(pasta, spec):
        assert _served(pasta.bed, bind, 8081).endswith(BODY)
        assert _refused(pasta.bed, other, 8081)
        remote = fakehost.HOST6 if ":" in bind else fakehost.HOST4
        assert _refused(pasta.bed, remote, 8081, upstream=True)


def test_publish_a_range(pasta: Pasta) -> None:
    with _web(pasta, "8090-8091:80-81"):
        assert _served(pasta.bed, "127.0.0.1", 8090).endswith(BODY)
        assert _served(pasta.bed, "127.0.0.1", 8091).endswith(BODY)
        assert _served(pasta.bed, fakehost.HOST6, 8091, upstream=True).endswith(BODY)


def test_restart_on_the_same_port(pasta: Pasta) -> None:
    with _web(pasta, "8086:80") as name:
        assert _served(pasta.bed, "127.0.0.1", 8086).endswith(BODY)
        for _ in range(3):
            r = pasta.podman("restart", "-t", "0", name, check=False)
            if r.returncode != 0 and pasta.name == "pasta":
                # Measured here: restarting a running container fails about
                # every time, the old pasta still holding the port.
                assert "Failed to bind port 8086 (Address already in use)" in r.stderr
                pytest.xfail("the real pasta loses Podman's restart race (podman#23737)")
            assert r.returncode == 0, r.stderr
            assert _served(pasta.bed, "127.0.0.1", 8086).endswith(BODY)
