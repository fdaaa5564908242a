"""RootlessKit `--net=slirp4netns --slirp4netns-binary=slirpy-slirp4netns`.

RootlessKit creates tap0 itself and configures it (no `-c`), so slirpy must
attach to an existing TAP. Its slirp4netns port driver publishes ports through
the API socket with an explicit guest address. Each test runs RootlessKit as
the unprivileged test user with a child script that does the guest's part and
then waits (bounded) for the test to say "done", so that slirpy can be looked
at while it runs; at the end RootlessKit must exit 0 and slirpy with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.helpers.clientbed import (
    SLIRPY_SCRIPT,
    ClientUser,
    LineServer,
    api_call,
    line_digest,
    option_value,
    real_slirp4netns_procs,
    served_blob,
    slirpy_procs,
)

pytestmark = pytest.mark.clients


@dataclass
class Kit:
    proc: subprocess.Popen[str]
    slirpy_pid: int
    argv: list[str]
    state_dir: pathlib.Path
    done: pathlib.Path


@pytest.fixture
def workdir(client_user: ClientUser) -> Iterator[pathlib.Path]:
    if shutil.which("rootlesskit") is None:
        pytest.skip("rootlesskit is not installed")
    d = client_user.home / f"rk-{os.getpid()}-{time.monotonic_ns()}"
    d.mkdir()
    os.chown(d, client_user.uid, client_user.gid)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def rootlesskit(
    user: ClientUser, workdir: pathlib.Path, options: list[str], script: str
) -> Iterator[Kit]:
    """Run RootlessKit with `script` as its child; the child exits once `done` exists.

    A background server the script starts must set BG=$! so that it is killed
    at the end (it would otherwise hold RootlessKit's stdout open).
    """
    done = workdir / "done"
    state = workdir / "state"
    child = (
        f"BG=\n{script}\nrc=3\n"
        f"for i in $(seq 300); do [ -e {done} ] && rc=0 && break; sleep 0.1; done\n"
        '[ -n "$BG" ] && kill $BG\nexit $rc\n'
    )
    proc = user.popen(
        "rootlesskit",
        "--net=slirp4netns",
        f"--slirp4netns-binary={SLIRPY_SCRIPT}",
        f"--state-dir={state}",
        *options,
        "--",
        "sh",
        "-c",
        child,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        # "tap0": not the `--help` runs RootlessKit does first to detect features.
        while not (found := slirpy_procs(user.uid, "tap0")):
            if proc.poll() is not None or time.monotonic() > deadline:
                out, err = proc.communicate(timeout=10)
                raise AssertionError(f"no slirpy under RootlessKit (rc={proc.returncode}): "
                                     f"{out}\n{err}")
            time.sleep(0.05)
        assert len(found) == 1, found
        assert real_slirp4netns_procs(user.uid) == []
        kit = Kit(proc, found[0][0], found[0][1], state, done)
        yield kit
        done.touch()
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, f"rootlesskit exited {proc.returncode}:\n{out}\n{err}"
        deadline = time.monotonic() + 10
        while slirpy_procs(user.uid):
            assert time.monotonic() < deadline, "slirpy outlived RootlessKit"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            # The child's background servers hold RootlessKit's stdout open:
            # kill the whole session RootlessKit was started in.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            try:
                proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                user.kill_all()
                proc.communicate(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str, timeout: float = 20) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_port_driver_slirp4netns(client_user: ClientUser, workdir: pathlib.Path) -> None:
    www = workdir / "www"
    www.mkdir()
    (www / "blob").write_bytes(served_blob())
    os.chown(www, client_user.uid, client_user.gid)
    report = workdir / "report"
    hport = free_port()
    script = (
        f"ip -4 -o addr show dev tap0 > {report}; ip route >> {report}\n"
        f"busybox httpd -f -p 8080 -h {www} & BG=$!"
    )
    opts = ["--disable-host-loopback", "--port-driver=slirp4netns",
            "-p", f"127.0.0.1:{hport}:8080/tcp"]
    with rootlesskit(client_user, workdir, opts, script) as kit:
        # RootlessKit made and configured tap0 itself: slirpy attached without -c.
        assert "-c" not in kit.argv and "--configure" not in kit.argv
        assert kit.argv[-1] == "tap0" and kit.argv[-2].isdigit()
        body = fetch(f"http://127.0.0.1:{hport}/blob")
        api = option_value(kit.argv, "--api-socket")
        assert api is not None
        entries = api_call(api, {"execute": "list_hostfwd"})["entries"]
        assert [(e["proto"], e["host_addr"], e["host_port"], e["guest_addr"], e["guest_port"])
                for e in entries] == [  # type: ignore[union-attr]
            ("tcp", "127.0.0.1", hport, "10.0.2.100", 8080)
        ]
        stats = api_call(api, {"execute": "get_stats"})  # slirpy only
        assert stats["return"]["forwards"] == 1  # type: ignore[index]
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(served_blob()).hexdigest()
    info = report.read_text()
    assert "inet 10.0.2.100/24" in info and "default via 10.0.2.2 dev tap0" in info


def test_sandbox_and_seccomp(
    client_user: ClientUser, workdir: pathlib.Path, loopback_server: LineServer
) -> None:
    out = workdir / "out"
    script = f"echo hello-kit | busybox nc -w 5 10.0.2.2 {loopback_server.port} > {out}"
    opts = ["--slirp4netns-sandbox=true", "--slirp4netns-seccomp=true"]
    with rootlesskit(client_user, workdir, opts, script) as kit:
        assert "--enable-sandbox" in kit.argv and "--enable-seccomp" in kit.argv
        deadline = time.monotonic() + 20
        while not out.exists() or not out.read_text():
            assert time.monotonic() < deadline, "the child's request got no answer"
            time.sleep(0.1)
        # RootlessKit starts its child once slirpy is ready: confined by now.
        status = dict(
            line.split(":", 1)
            for line in pathlib.Path(f"/proc/{kit.slirpy_pid}/status").read_text().splitlines()
        )
    # Confined: seccomp filter mode, no new privileges, no mount namespace of the host.
    assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1"
    assert out.read_text() == f"pong {line_digest(b'hello-kit')}\n"
    assert loopback_server.seen == [("127.0.0.1", b"hello-kit")]


def test_cidr_ipv6_mtu(
    client_user: ClientUser,
    workdir: pathlib.Path,
    loopback_server: LineServer,
    loopback6_server: LineServer,
) -> None:
    """RootlessKit computes the guest's addresses from --cidr itself: they must match."""
    report, out4, out6 = workdir / "report", workdir / "out4", workdir / "out6"
    script = (
        # SLAAC from slirpy's RA (RootlessKit configures IPv4 only): bounded wait.
        "for i in $(seq 50); do ip -6 addr show dev tap0 scope global | grep -v tentative | "
        "grep -q 'inet6 fd00::' && break; sleep 0.2; done\n"
        f"ip addr show dev tap0 > {report}; ip route >> {report}; ip -6 route >> {report}\n"
        f"echo hello-kit4 | busybox nc -w 5 10.0.135.130 {loopback_server.port} > {out4}\n"
        f"echo hello-kit6 | busybox nc -w 5 fd00::2 {loopback6_server.port} > {out6}"
    )
    opts = ["--ipv6", "--cidr=10.0.135.128/25", "--mtu=1500"]
    with rootlesskit(client_user, workdir, opts, script) as kit:
        assert option_value(kit.argv, "--cidr") == "10.0.135.128/25"
        assert option_value(kit.argv, "--mtu") == "1500" and "--enable-ipv6" in kit.argv
        deadline = time.monotonic() + 30
        while not out6.exists():
            assert time.monotonic() < deadline, "the child did not finish"
            time.sleep(0.1)
    info = report.read_text()
    assert "mtu 1500" in info and "inet 10.0.135.228/25" in info and "inet6 fd00::" in info
    assert "default via 10.0.135.130 dev tap0" in info and "default via fe80::2 dev tap0" in info
    assert out4.read_text() == f"pong {line_digest(b'hello-kit4')}\n"
    assert out6.read_text() == f"pong {line_digest(b'hello-kit6')}\n"
    assert loopback_server.seen == [("127.0.0.1", b"hello-kit4")]
    assert loopback6_server.seen == [("::1", b"hello-kit6")]


UDP_ECHO = (
    "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
    "s.bind((\"0.0.0.0\", 8081)); s.settimeout(60)\n"
    "for _ in range(20): d, a = s.recvfrom(2048); s.sendto(d, a)"
)


def test_rootlessctl_add_and_remove_ports(
    client_user: ClientUser, workdir: pathlib.Path
) -> None:
    """Ports added and removed at run time: RootlessKit's add_hostfwd / remove_hostfwd."""
    www = workdir / "www"
    www.mkdir()
    (www / "blob").write_bytes(served_blob())
    os.chown(www, client_user.uid, client_user.gid)
    tport, uport = free_port(), free_port()
    script = (
        # RootlessKit's child sees the host's files: Python is the UDP echo server.
        f"python3 -c '{UDP_ECHO}' & U=$!\n"
        f"busybox httpd -f -p 8080 -h {www} & BG=\"$! $U\""
    )
    with rootlesskit(client_user, workdir, ["--port-driver=slirp4netns"], script) as kit:
        sock = kit.state_dir / "api.sock"
        deadline = time.monotonic() + 20
        while not sock.exists():  # RootlessKit's own API comes up after the network
            assert time.monotonic() < deadline, "RootlessKit's api.sock did not appear"
            time.sleep(0.1)
        ctl = ["rootlessctl", f"--socket={sock}"]
        client_user.run(*ctl, "add-ports", f"127.0.0.1:{tport}:8080/tcp")
        client_user.run(*ctl, "add-ports", f"127.0.0.1:{uport}:8081/udp")
        body = fetch(f"http://127.0.0.1:{tport}/blob")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(2)
            echo = b""
            for _ in range(10):  # UDP: the server may still be starting
                u.sendto(b"udp-through-rootlesskit\n", ("127.0.0.1", uport))
                with contextlib.suppress(TimeoutError):
                    echo = u.recv(100)
                    break
        api = option_value(kit.argv, "--api-socket")
        assert api is not None
        entries = api_call(api, {"execute": "list_hostfwd"})["entries"]
        assert sorted((e["proto"], e["host_port"], e["guest_addr"], e["guest_port"])
                      for e in entries) == sorted([  # type: ignore[union-attr]
            ("tcp", tport, "10.0.2.100", 8080), ("udp", uport, "10.0.2.100", 8081)
        ])
        listed = client_user.run(*ctl, "list-ports", "--json").stdout
        port_ids = [str(json.loads(ln)["id"]) for ln in listed.splitlines() if ln.strip()]
        assert len(port_ids) == 2, listed
        client_user.run(*ctl, "remove-ports", *port_ids)
        left = api_call(api, {"execute": "list_hostfwd"})["entries"]
        with pytest.raises(ConnectionRefusedError), socket.create_connection(
            ("127.0.0.1", tport), timeout=5
        ):
            pass
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(served_blob()).hexdigest()
    assert echo == b"udp-through-rootlesskit\n"
    assert left == []
