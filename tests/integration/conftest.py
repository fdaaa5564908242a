"""The integration test bed: real user+net namespaces, a real TAP, real slirpy.

Root is used only to build the bed (chmod /dev/net/tun, ping_group_range, test
hosts); the container namespace and slirpy itself run as an unprivileged user
(uid 65534 by default), the way users run them. slirpy is started two ways:
`slirpy-slirp4netns` (`slirpy_factory`, `net`: the drop-in's command line) and
the library, `slirpy.Network` run by libnet.py (`library_factory`,
`LibSlirpy`); `any_net` gives a test both, so the library is exercised by the
suite itself. Every fixture tears down what it made, even when the test
fails. Traffic goes only to loopback or to test hosts in namespaces made here
(see ../shared/TESTBED.md).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

UID = int(os.environ.get("SLIRPY_TEST_UID", "65534"))
REPO = pathlib.Path(__file__).resolve().parents[2]
AS_USER = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups"]


def _slirpy_pythonpath() -> str:
    import slirpy

    return str(pathlib.Path(slirpy.__file__).resolve().parents[1])


def user_env() -> dict[str, str]:
    env = {
        "PATH": f"{pathlib.Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
        "PYTHONPATH": _slirpy_pythonpath(),
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
    }
    return env


def slirp4netns_cmd() -> list[str]:
    return [sys.executable, "-m", "slirpy", "slirp4netns"]


@pytest.fixture(scope="session", autouse=True)
def testbed() -> None:
    if os.geteuid() != 0:
        pytest.skip("integration tests need root to build the test bed")
    for tool in ("setpriv", "unshare", "nsenter", "busybox", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    os.chmod("/dev/net/tun", 0o666)
    pathlib.Path("/proc/sys/net/ipv4/ping_group_range").write_text("0 2147483647\n")


@dataclass
class Container:
    """An unprivileged user+net namespace held open by a sleeping process."""

    proc: subprocess.Popen[bytes]
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def nsenter(self) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-U", "-n"]

    def run(
        self, *cmd: str, timeout: float = 30, check: bool = True, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        r = subprocess.run(
            [*self.nsenter(), *cmd], capture_output=True, timeout=timeout, input=input
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"{cmd} exited {r.returncode}: {r.stdout.decode()} {r.stderr.decode()}"
            )
        return r

    def sh(self, script: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
        return self.run("busybox", "sh", "-c", script, **kw)  # type: ignore[arg-type]

    def popen(self, *cmd: str, **kw: object) -> subprocess.Popen[bytes]:
        p = subprocess.Popen([*self.nsenter(), *cmd], **kw)  # type: ignore[call-overload]
        self.extra.append(p)
        return p


def _wait_for_netns(pid: int, timeout: float = 5.0) -> None:
    own = os.readlink("/proc/self/ns/net")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/ns/net") != own:
                return
        time.sleep(0.01)
    raise AssertionError("the container namespace did not appear")


@contextlib.contextmanager
def make_container() -> Iterator[Container]:
    proc = subprocess.Popen(
        [*AS_USER, "unshare", "--user", "--map-root-user", "--net", "sleep", "3600"],
        stdin=subprocess.DEVNULL,
    )
    c = Container(proc)
    try:
        _wait_for_netns(proc.pid)
        yield c
    finally:
        for p in [*c.extra, proc]:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)


@pytest.fixture
def container() -> Iterator[Container]:
    with make_container() as c:
        yield c


@dataclass
class Slirpy:
    """A running slirpy-slirp4netns, started as the unprivileged user."""

    proc: subprocess.Popen[bytes]
    ready_byte: bytes
    startup_s: float

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def output(self) -> tuple[str, str]:
        out, err = self.proc.communicate(timeout=10)
        return out.decode(), err.decode()


def start_slirpy(
    args: list[str],
    *,
    ready_timeout: float = 10,
    pass_fds: tuple[int, ...] = (),
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
) -> Slirpy:
    """Start slirpy-slirp4netns with `-r FD` added, and wait for the ready byte."""
    rfd, wfd = os.pipe()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [*AS_USER, *slirp4netns_cmd(), "-r", str(wfd), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        pass_fds=(wfd, *pass_fds),
        env={**user_env(), **(env or {})},
    )
    os.close(wfd)
    try:
        byte = b""
        if wait_ready:
            import select

            r, _, _ = select.select([rfd], [], [], ready_timeout)
            if r:
                byte = os.read(rfd, 1)
            if byte != b"1":
                proc.kill()
                out, err = proc.communicate(timeout=10)
                raise AssertionError(
                    f"slirpy did not become ready (rc={proc.returncode}): "
                    f"{out.decode()} {err.decode()}"
                )
        return Slirpy(proc, byte, time.monotonic() - t0)
    finally:
        os.close(rfd)


def _reap(started: list[Slirpy] | list[LibSlirpy]) -> None:
    """Teardown of the factories: kill what still runs, collect every exit."""
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
        with contextlib.suppress(Exception):
            s.proc.communicate(timeout=5)


@pytest.fixture
def slirpy_factory() -> Iterator[object]:
    started: list[Slirpy] = []

    def factory(args: list[str], **kw: object) -> Slirpy:
        s = start_slirpy(args, **kw)  # type: ignore[arg-type]
        started.append(s)
        return s

    yield factory
    _reap(started)


@pytest.fixture
def net(container: Container, slirpy_factory: object) -> Iterator[tuple[Container, Slirpy]]:
    """A configured container (-c) with slirpy running at MTU 65520."""
    s = slirpy_factory(["--configure", "--mtu=65520", str(container.pid), "tap0"])  # type: ignore[operator]
    yield container, s


@dataclass
class LibSlirpy:
    """A `slirpy.Network` attached to a container, in a process of the
    unprivileged user (libnet.py): the library API, not the CLI.

    Same `proc` / `stop()` / `output()` as `Slirpy`, plus the library's
    `publish()`, `unpublish()`, `stats()` and `flows()`, each one JSON line
    to the process and one back.
    """

    proc: subprocess.Popen[bytes]
    startup_s: float

    def _line(self, timeout: float) -> dict[str, object]:
        import json
        import select

        assert self.proc.stdout is not None
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if r else b""
        if not line:
            raise AssertionError(f"the library process did not answer within {timeout}s")
        return json.loads(line)

    def call(self, op: str, timeout: float = 10, **args: object) -> object:
        """One library call; its return value, AssertionError with its error."""
        import json

        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, "args": args}).encode() + b"\n")
        self.proc.stdin.flush()
        reply = self._line(timeout)
        if "error" in reply:
            raise AssertionError(f"slirpy.Network.{op}: {reply['error']}")
        return reply["return"]

    def publish(self, host_port: int, guest_port: int, **kw: object) -> int:
        return int(self.call("publish", host_port=host_port, guest_port=guest_port, **kw))  # type: ignore[arg-type]

    def unpublish(self, fwd_id: int) -> None:
        self.call("unpublish", fwd_id=fwd_id)

    def stats(self) -> dict[str, object]:
        return self.call("stats")  # type: ignore[return-value]

    def flows(self) -> list[dict[str, object]]:
        return self.call("flows")  # type: ignore[return-value]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Close stdin: the process closes the network (Network.close()) and exits."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(sig)
            return self.proc.wait(timeout=timeout)

    def output(self) -> tuple[str, str]:
        out, err = self.proc.communicate(timeout=10)
        return out.decode(), err.decode()


def start_library(target: int, *, ready_timeout: float = 10, **kw: object) -> LibSlirpy:
    """Run libnet.py as the unprivileged user: `slirpy.Network(target, **kw)`."""
    import json

    t0 = time.monotonic()
    proc = subprocess.Popen(
        [*AS_USER, sys.executable, str(pathlib.Path(__file__).with_name("libnet.py")),
         json.dumps({"target": target, **kw})],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=user_env(),
        cwd="/tmp",
    )
    lib = LibSlirpy(proc, 0.0)
    try:
        ready = lib._line(ready_timeout)
    except AssertionError:
        ready = {}
    if ready != {"ready": True}:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"slirpy.Network did not start: {ready} {out.decode()} {err.decode()}")
    lib.startup_s = time.monotonic() - t0
    return lib


@pytest.fixture
def library_factory() -> Iterator[object]:
    """Factory: library_factory(container_pid, **Network keyword arguments)."""
    started: list[LibSlirpy] = []

    def factory(target: int, **kw: object) -> LibSlirpy:
        lib = start_library(target, **kw)
        started.append(lib)
        return lib

    yield factory
    _reap(started)


# What `any_net` yields: the container and whichever slirpy serves it.
AnyNet = tuple[Container, Slirpy | LibSlirpy]


@pytest.fixture(params=["cli", "library"])
def any_net(
    request: pytest.FixtureRequest, container: Container, slirpy_factory: object,
    library_factory: object,
) -> Iterator[AnyNet]:
    """`net` twice: slirpy-slirp4netns (the drop-in CLI) and `slirpy.Network`
    (the library), both configuring tap0 at MTU 65520, as the test user."""
    if request.param == "cli":
        s = slirpy_factory(["--configure", "--mtu=65520", str(container.pid), "tap0"])  # type: ignore[operator]
    else:
        s = library_factory(container.pid, mtu=65520)  # type: ignore[operator]
    yield container, s


def free_port(family: int = socket.AF_INET) -> int:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def shared_dir() -> Iterator[pathlib.Path]:
    """A fresh directory under /tmp that the unprivileged user can read.

    pytest's tmp_path lives under a 0700 directory of root's: files there are
    invisible to slirpy and the container, which run as the test user.
    """
    d = pathlib.Path(tempfile.mkdtemp(prefix="slirpy-test-", dir="/tmp"))
    try:
        d.chmod(0o755)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
