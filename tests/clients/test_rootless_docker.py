"""Rootless Docker over RootlessKit 2.0.2's `--net=pasta`, with each pasta (issue 17).

Debian 13's docker.io, started as users do (dockerd-rootless.sh with
DOCKERD_ROOTLESS_ROOTLESSKIT_NET=pasta, the implicit port driver and
`--pasta-binary=`, tests/helpers/dockerbed.py), as the Debian 13 root's
test user inside the fake host (tests/helpers/pastabed.py), once per pasta
in PASTAS; every test asserts the same outcome for both. Checked: dockerd
comes up over the pasta under test and runs a container; a container on
Docker's default bridge reaches a test host upstream (exact bytes, leaving
as the fake host's address); a port published with `-p P:P` answers on the
fake host's loopback and, from upstream, on its address (pasta mirrors the
port docker-proxy binds in RootlessKit's namespace); stopping dockerd
(SIGTERM to RootlessKit) leaves no stack process.

One dockerd per pasta for the whole module (starting one takes seconds);
the stop test runs last for each pasta. Containers are removed by the test
that made them, even on failure; the fixture kills by PID whatever a run
left. Traffic stays in the test's namespaces. This file must not change the
root or slirpy.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator

import pytest

from tests.helpers import dockerbed, fakehost, pastabed, trixie_root, wait

pytestmark = pytest.mark.clients

# The fixtures of tests/helpers/pastabed.py: one bed per module, each pasta in PASTAS.
bed = pastabed.bed
pasta = pastabed.pasta
Pasta = pastabed.Pasta
Dockerd = dockerbed.Dockerd

IMAGE = dockerbed.IMAGE
PUBLISHED = 8480
# 256 KiB that are not one repeated byte: a lost or reordered segment shows in the hash.
PAYLOAD = "".join(f"{i:07d}\n" for i in range(32768))


@pytest.fixture(scope="module")
def dockerd(pasta: Pasta) -> Iterator[Dockerd]:
    d = Dockerd(pasta)
    try:
        d.start()
        d.load_image()
        yield d
    finally:
        d.clean_up()


@contextlib.contextmanager
def _container(d: Dockerd, name: str, *run_args: str) -> Iterator[str]:
    """A detached container, removed (SIGKILL) after the block, even on failure."""
    d.docker("rm", "-f", name, check=False)
    d.docker("run", "-d", "--name", name, *run_args)
    try:
        yield name
    finally:
        d.docker("rm", "-f", name, check=False)


def test_dockerd_runs_over_the_pasta_under_test(dockerd: Dockerd) -> None:
    info = dockerd.docker("info", "--format", "{{json .SecurityOptions}}").stdout
    assert "name=rootless" in info
    # The stack RootlessKit started is the pasta under test, in the 2.0 contract.
    stacks = dockerbed.stack_pids(dockerd.pasta)
    assert len(stacks) == 1, stacks
    argv = next(iter(stacks.values())).split()
    for opt in ("--ns-ifname=tap0", "--no-dhcp", "--address=10.0.2.100",
                "--gateway=10.0.2.2", "--tcp-ports=auto", "--no-map-gw"):
        assert opt in argv, argv
    r = dockerd.docker("run", "--rm", IMAGE, "true", check=False)
    assert r.returncode == 0, r.stderr + dockerd.log()[-3000:]
    # The exit status of the container's command comes back through docker run.
    assert dockerd.docker("run", "--rm", IMAGE, "sh", "-c", "exit 3",
                          check=False).returncode == 3


def test_container_reaches_a_test_host(dockerd: Dockerd) -> None:
    """Docker's bridge -> RootlessKit's tap0 -> the stack -> the fake host -> upstream."""
    fh = dockerd.pasta.bed.fh
    before = len(fh.events())
    script = (f"cat > /tmp/d && nc {fakehost.TEST_HOST4} {fakehost.ECHO_PORT} < /tmp/d "
              "> /tmp/r; wc -c < /tmp/r; sha256sum < /tmp/r; "
              f"nc {fakehost.TEST_HOST4} {fakehost.PEER_PORT} < /dev/null")
    r = dockerd.docker("run", "--rm", "-i", IMAGE, "timeout", "60", "sh", "-c", script,
                       input=PAYLOAD, timeout=90)
    size, digest, peer = r.stdout.splitlines()[:3]
    assert int(size) == len(PAYLOAD)
    assert digest.split()[0] == hashlib.sha256(PAYLOAD.encode()).hexdigest()
    # Outbound connections leave as the fake host's own address (pasta's way).
    assert peer.split()[0] == fakehost.HOST4
    closed = [e for e in fh.events()[before:] if e.get("service") == "echo" and e.get("closed")]
    assert [(e["peer"], e["bytes"]) for e in closed] == [(fakehost.HOST4, len(PAYLOAD))]


def _echoed(fh: fakehost.FakeHost, host: str, upstream: bool) -> bytes:
    """What the container's echo server returns through host:PUBLISHED (bounded retries:
    the stack mirrors the port within about a second, and nc may still be starting)."""
    data = PAYLOAD.encode()
    got = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(fakehost.BedError):
            got = fh.client(host, PUBLISHED, data, upstream=upstream, timeout=10)
        if got == data:
            break
        time.sleep(0.2)
    return got


def test_published_port(dockerd: Dockerd) -> None:
    fh = dockerd.pasta.bed.fh
    # A persistent echo server (nc -ll -e cat: one cat per connection).
    with _container(dockerd, f"bed13-echo-{dockerd.pasta.name}", "-p",
                    f"{PUBLISHED}:{PUBLISHED}", IMAGE, "nc", "-ll", "-p", str(PUBLISHED),
                    "-e", "cat"):
        data = PAYLOAD.encode()
        # A client on the fake host, to its loopback.
        assert _echoed(fh, "127.0.0.1", upstream=False) == data
        # A remote client (upstream) to the fake host's address.
        assert _echoed(fh, fakehost.HOST4, upstream=True) == data


def _echo_once(fh: fakehost.FakeHost, host: str, port: int, upstream: bool) -> bytes | None:
    """One connection's reply, or None when the connection failed (refused, reset)."""
    try:
        return fh.client(host, port, PAYLOAD.encode(), upstream=upstream, timeout=10)
    except fakehost.BedError:
        return None


def test_publish_on_loopback_only_is_not_forwarded(dockerd: Dockerd) -> None:
    """`-p 127.0.0.1:P:C` gives no service with the real pasta: slirpy must match.

    docker-proxy binds 127.0.0.1:P inside RootlessKit's namespace; the stack
    (`--tcp-ports=auto`) mirrors P onto the fake host's wildcard address, but
    a client's connection there, from the fake host's loopback or from
    upstream, is reset without data. The same container publishes C on all
    addresses too, to show that the server was up.
    """
    fh = dockerd.pasta.bed.fh
    loopback_only = PUBLISHED + 1
    with _container(dockerd, f"bed13-echo-lo-{dockerd.pasta.name}", "-p",
                    f"{PUBLISHED}:{PUBLISHED}", "-p", f"127.0.0.1:{loopback_only}:{PUBLISHED}",
                    IMAGE, "nc", "-ll", "-p", str(PUBLISHED), "-e", "cat"):
        assert _echoed(fh, "127.0.0.1", upstream=False) == PAYLOAD.encode()
        # The stack mirrors both ports from the same scan of the namespace's sockets.
        wait.wait_until(lambda: dockerd.session.run(
            "ss", "-Hltn", f"sport = :{loopback_only}").stdout.strip(), 10,
            interval=0.1, what=f"a listener on the fake host's port {loopback_only}")
        assert _echo_once(fh, "127.0.0.1", loopback_only, upstream=False) in (None, b"")
        assert _echo_once(fh, fakehost.HOST4, loopback_only, upstream=True) in (None, b"")


def test_stop_leaves_no_stack(dockerd: Dockerd) -> None:
    """Runs last for each pasta: it stops the module's dockerd."""
    pasta = dockerd.pasta
    assert dockerbed.stack_pids(pasta)
    rootlesskit = dockerd.pid
    dockerd.stop()
    # RootlessKit has exited (stop() waited for it), and so has the stack.
    assert dockerd.session.run("kill", "-0", str(rootlesskit), check=False).returncode != 0
    assert pastabed.wait_no_pasta(pasta, 10) == []
    assert dockerbed.stack_pids(pasta) == {}
    # Nothing of this Docker run is left to the user either (dockerd, containerd, shims).
    left = dockerd.session.run("pgrep", "-u", str(trixie_root.USER_UID), "-a", "-f",
                               dockerd.base, check=False).stdout
    assert left == ""
    # The published port is no longer bound on the fake host.
    listening = dockerd.session.run("ss", "-Hltn", f"sport = :{PUBLISHED}").stdout
    assert listening.strip() == ""
