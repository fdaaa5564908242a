"""The integration test bed's building blocks: the unprivileged test user and
its user+net namespace (the "container").

Owns `UID`/`AS_USER` (who slirpy and the container run as), `user_env()`,
`Container`/`make_container()` and `free_port()`. Root is used only to start
the container as the test user; the fixtures that use these live in
tests/integration/conftest.py. Nothing here sends traffic.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import socket
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.helpers.wait import wait_until

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


def _in_new_netns(pid: int, known: set[str]) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/net") not in known
    except OSError:
        return False


def _wait_for_netns(pid: int, known: set[str], timeout: float = 5.0) -> None:
    wait_until(lambda: _in_new_netns(pid, known), timeout,
               what="the container namespace appears")


@contextlib.contextmanager
def make_container(netns: str | None = None) -> Iterator[Container]:
    """The test user's user+net namespace; made from inside the network
    namespace at path `netns` (a fake host) when given."""
    known = {os.readlink("/proc/self/ns/net")}
    enter: list[str] = []
    if netns is not None:
        known.add(f"net:[{os.stat(netns).st_ino}]")
        enter = ["nsenter", f"--net={netns}"]
    proc = subprocess.Popen(
        [*enter, *AS_USER, "unshare", "--user", "--map-root-user", "--net", "sleep", "3600"],
        stdin=subprocess.DEVNULL,
    )
    c = Container(proc)
    try:
        _wait_for_netns(proc.pid, known)
        yield c
    finally:
        for p in [*c.extra, proc]:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)


def free_port(family: int = socket.AF_INET) -> int:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return s.getsockname()[1]


def pipe_bytes(fd: int) -> int:
    """Bytes waiting in the pipe @fd belongs to (FIONREAD works on either
    end): 0 once the reader (slirpy's exit fd, say) has read everything."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
