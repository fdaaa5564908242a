"""slirpy processes of the integration tests: the slirp4netns drop-in's command
line (`Slirpy`, `start_slirpy`) and the library (`LibSlirpy`,
`start_library`, which runs libnet.py), both as the unprivileged test user.

Owns starting them, waiting for readiness, talking to the library process and
`reap()` for the fixtures' teardown. The fixtures themselves live in
tests/integration/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from tests.helpers.testbed import AS_USER, Container, slirp4netns_cmd, user_env


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


def reap(started: list[Slirpy] | list[LibSlirpy]) -> None:
    """Teardown of the factories: kill what still runs, collect every exit."""
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
        with contextlib.suppress(Exception):
            s.proc.communicate(timeout=5)


# What `any_net` yields: the container and whichever slirpy serves it.
AnyNet = tuple[Container, Slirpy | LibSlirpy]
