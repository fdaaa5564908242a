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

import hashlib
import os
import pathlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.helpers import fakehost, trixie_root

pytestmark = pytest.mark.clients

REPO = pathlib.Path(__file__).resolve().parents[2]
PASTAS = ("pasta", "slirpy")
SLIRPY_BIN_DIR = "/tmp/slirpy-pasta-bin"
# Deterministic bytes the container sends with busybox: `seq 1 40000`.
SEQ_BYTES = "".join(f"{i}\n" for i in range(1, 40001)).encode()
HTTP_GET = b"GET /index.html HTTP/1.0\r\n\r\n"
WEB = "mkdir -p /www && echo bed13-published > /www/index.html && exec httpd -f -v -p 80 -h /www"


@dataclass
class Bed:
    fh: fakehost.FakeHost
    session: trixie_root.RootSession


@dataclass
class Pasta:
    """One pasta under test: how Podman is pointed at it, and which file Podman should run."""

    name: str
    bed: Bed
    executable: str
    # pgrep arguments that find this pasta's processes in the session.
    pgrep: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    def podman(self, *args: str, check: bool = True,
               timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return self.bed.session.run_user("podman", *args, env=self.env, check=check,
                                         timeout=timeout)

    def run(self, *cmd: str, opts: tuple[str, ...] = (), check: bool = True) -> str:
        r = self.podman("run", "--rm", "--network", "pasta", *opts, trixie_root.IMAGE, *cmd,
                        check=check)
        return r.stdout


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    if os.geteuid() != 0:
        pytest.skip("the Debian 13 root and the fake host need root to build")
    root = trixie_root.build_root()
    # Real distributions ship /dev/net/tun as 0666; pasta opens it in Podman's userns.
    os.chmod("/dev/net/tun", 0o666)
    with fakehost.fake_host() as fh, trixie_root.RootSession(
        root, netns=fh.netns, resolv_conf=fh.resolv_conf
    ) as session:
        yield Bed(fh, session)


@pytest.fixture(scope="module", params=PASTAS)
def pasta(request: pytest.FixtureRequest, bed: Bed) -> Iterator[Pasta]:
    if request.param == "pasta":
        # comm is "pasta" or, once it re-executed itself, "pasta.avx2".
        yield Pasta("pasta", bed, "/usr/bin/pasta", ("^pasta",))
        return
    if "slirpy-pasta" not in (REPO / "pyproject.toml").read_text():
        pytest.skip("slirpy-pasta is not a console script of this checkout yet")
    venv_bin = trixie_root.install_slirpy(bed.session.root, REPO)
    # A directory holding only `pasta` -> slirpy-pasta: Podman looks there first.
    bed.session.run("sh", "-c", f"mkdir -p {SLIRPY_BIN_DIR} && "
                    f"ln -sf {venv_bin}/slirpy-pasta {SLIRPY_BIN_DIR}/pasta")
    yield Pasta("slirpy", bed, f"{SLIRPY_BIN_DIR}/pasta", ("-f", f"{SLIRPY_BIN_DIR}/pasta "),
                {"CONTAINERS_HELPER_BINARY_DIR": SLIRPY_BIN_DIR})


def _pasta_pids(pasta: Pasta) -> list[int]:
    r = pasta.bed.session.run("pgrep", *pasta.pgrep, check=False)
    return [int(p) for p in r.stdout.split()]


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


def test_published_port(pasta: Pasta) -> None:
    name = f"bed13-web-{pasta.name}"
    bed = pasta.bed
    pasta.podman("rm", "-f", "-t", "0", name, check=False)
    pasta.podman("run", "-d", "--name", name, "--network", "pasta", "-p", "8080:80",
                 trixie_root.IMAGE, "sh", "-c", WEB)
    try:
        # pasta's listener is bound when `podman run -d` returns; httpd may
        # still be starting in the container: a bounded retry.
        body = b""
        for _ in range(50):
            body = bed.fh.client("127.0.0.1", 8080, HTTP_GET, timeout=5)
            if body:
                break
            time.sleep(0.1)
        assert body.endswith(b"\r\n\r\nbed13-published\n")
        assert bed.fh.client("::1", 8080, HTTP_GET, timeout=5).endswith(b"bed13-published\n")
        # A remote client (the upstream) to the fake host's address; the
        # container sees the client's own address.
        remote = bed.fh.client(fakehost.HOST4, 8080, HTTP_GET, upstream=True, timeout=5)
        assert remote.endswith(b"bed13-published\n")
        log = pasta.podman("logs", name).stderr
        assert f"[::ffff:{fakehost.GATEWAY4}]:" in log
        # The port is taken: a second container fails with pasta's message.
        busy = pasta.podman("run", "--rm", "--network", "pasta", "-p", "8080:80",
                            trixie_root.IMAGE, "true", check=False)
        assert busy.returncode != 0
        assert "Failed to bind port 8080 (Address already in use)" in busy.stderr
        assert _pasta_pids(pasta)
        pasta.podman("stop", "-t", "0", name)
        deadline = time.monotonic() + 1.0
        while _pasta_pids(pasta) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _pasta_pids(pasta) == []
    finally:
        pasta.podman("rm", "-f", "-t", "0", name, check=False)
