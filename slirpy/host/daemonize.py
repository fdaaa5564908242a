"""pasta's way of going to the background: everything ready first, then detach.

This module owns the fork that `DaemonOptions.daemonize` asks for. The
process forks before anything is set up; the parent waits until the child
says it is ready (one byte on a pipe), writes the child's PID to the PID
file and exits 0 — or, when the child failed, exits with the child's code
(the child has already printed its one-line error on the shared stderr).
The child `setsid()`s at once and, when ready, points 0/1/2 at /dev/null (or
its log file) before saying so: a runtime that reads our combined output
(Podman's `CombinedOutput()`) only returns once every copy of its pipe is
closed.

It must not set anything up itself (slirpy.daemon does) and the parent must
never return into the caller.
"""

from __future__ import annotations

import contextlib
import os
import signal

__all__ = ["detach_stdio", "fork_until_ready", "signal_ready", "write_pid_file"]


def write_pid_file(path: str, pid: int) -> None:
    """Write `pid` and a newline to `path`; OSError if it cannot be."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, f"{pid}\n".encode())
    finally:
        os.close(fd)


def _wait_child(pid: int) -> int:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return 1
        except InterruptedError:
            continue
        code = os.waitstatus_to_exitcode(status)
        return code if code > 0 else 1


def fork_until_ready(prog: str, pid_file: str | None) -> int:
    """Fork; return (in the child only) the fd to hand to `signal_ready()`.

    The parent stays here until the child is ready or gone, then `_exit`s.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.setsid()
        return w
    os.close(w)
    got = b""
    while True:
        try:
            got = os.read(r, 1)
            break
        except InterruptedError:
            continue
    if got != b"1":
        os._exit(_wait_child(pid))
    if pid_file:
        try:
            write_pid_file(pid_file, pid)
        except OSError as e:
            os.write(2, f"{prog}: cannot write PID file {pid_file}: {e.strerror}\n".encode())
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            os._exit(1)
    os._exit(0)


def detach_stdio(log_file: str | None) -> None:
    """/dev/null on 0 and 1, and on 2 unless messages go to `log_file`."""
    null = os.open(os.devnull, os.O_RDWR)
    err = null
    if log_file:
        try:
            err = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        except OSError:
            err = null
    for fd in (0, 1):
        os.dup2(null, fd)
    os.dup2(err, 2)
    if err != null:
        os.close(err)
    os.close(null)


def signal_ready(fd: int) -> None:
    """Tell the waiting parent that everything is up (it then exits 0)."""
    try:
        os.write(fd, b"1")
    finally:
        os.close(fd)
