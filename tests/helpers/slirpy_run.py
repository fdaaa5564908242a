"""`slirpy run -- CMD` as the integration tests start it: as the unprivileged
test user, in the background or in the foreground, and one line at a time
from CMD's stdout.

Owns `PY` (the interpreter the guest programs run with), `run_cmd()`,
`slirpy_run()`, `run_fg()` and `read_line()`. Every process started here is
killed and reaped by its context manager.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator

from tests.helpers.testbed import AS_USER, user_env

PY = sys.executable  # the guest runs the venv's Python too (readable by uid 65534)


def as_uid(uid: int) -> list[str]:
    """setpriv to @uid (group @uid, no supplementary groups)."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def run_cmd(args: list[str], cmd: list[str], uid: int | None = None) -> list[str]:
    """`slirpy run` as the test user, or as @uid."""
    user = AS_USER if uid is None else as_uid(uid)
    return [*user, PY, "-m", "slirpy", "run", *args, "--", *cmd]


@contextlib.contextmanager
def slirpy_run(args: list[str], cmd: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """`slirpy run` in the background as the test user; killed and reaped at the end."""
    proc = subprocess.Popen(
        run_cmd(args, cmd),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=user_env(),
        cwd="/tmp",
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(Exception):
            proc.communicate(timeout=10)


def run_fg(
    args: list[str], cmd: list[str], timeout: float = 60, uid: int | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        run_cmd(args, cmd, uid),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=user_env(),
        cwd="/tmp",
        timeout=timeout,
    )


def read_line(proc: subprocess.Popen[bytes], timeout: float = 20) -> str:
    """One line of CMD's stdout (the guest prints READY once it listens)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        r, _, _ = select.select([fd], [], [], max(left, 0))
        if not r:
            raise AssertionError(f"no line from the guest within {timeout}s (got {buf!r})")
        ch = os.read(fd, 1)
        if not ch:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"the guest's stdout closed (got {buf!r}): {err}")
        buf += ch
    return buf.decode().strip()
