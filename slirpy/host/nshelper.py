"""The namespace helper of spliced forwards: a child that makes TCP sockets
inside the container's network namespace for the engine, kept only for a
slirpy that confines itself (--enable-sandbox/--enable-seccomp: setns() is
impossible afterwards). Otherwise the engine makes those sockets itself
with a short-lived clone() child per batch (csrc/nssock.c), given the
namespace fds that `netns.open_namespaces` opens: no second process.

This module owns starting the helper child: fork,
join the container's user and network namespaces (as netns.py does for
the TAP), report success or one readable error line, then run
`sl_ns_helper_serve` (csrc/splice.c) until slirpy goes away (EOF,
PR_SET_PDEATHSIG) or the container's process exits.
A socket keeps the namespace it was created in, so the engine can connect()
it to the guest and splice() to it without ever changing namespace itself.

It must not relay data (csrc/splice.c does), must not be started unless a
spliced forward needs it, and the child must hold no fd of the parent's but
its socket (a listener or the TAP kept open by it would outlive slirpy's
own close).
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import signal
import socket

from slirpy.host.netns import (
    CLONE_NEWNET,
    CLONE_NEWUSER,
    NamespaceError,
    NamespaceTarget,
    fork_into,
)

_READY = b"ok"


def _close_all_but(keep: set[int]) -> None:
    lo = 3
    for fd in sorted(k for k in keep if k >= 3):
        if fd > lo:
            os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, 1 << 20)


def _child(sock: socket.socket, netfd: int, userfd: int | None, watch_pid: int | None) -> int:
    from slirpy.engine import ns_helper_serve, setns

    # No collector from here on: a finalizer of some garbage socket of the
    # parent's would close an fd number this child may reuse.
    gc.disable()
    keep = {sock.fileno(), netfd} | ({userfd} if userfd is not None else set())
    _close_all_but(keep)
    # It outlives start-up: holding slirpy's stdout/stderr would keep a
    # runtime that waits for their EOF (Podman's CombinedOutput) waiting.
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    # The parent's handlers (uvloop's wake-up fd among them) mean nothing here.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        with contextlib.suppress(ValueError):
            signal.signal(sig, signal.SIG_DFL)
    try:
        if userfd is not None:
            setns(userfd, CLONE_NEWUSER)
        setns(netfd, CLONE_NEWNET)
    except OSError as e:
        sock.sendall(f"cannot join the container's namespaces: {e.strerror}".encode())
        return 1
    os.close(netfd)
    if userfd is not None:
        os.close(userfd)
    pidfd = -1
    if watch_pid is not None:
        # Without it, this child alone would keep the container's network
        # namespace (and so the TAP) alive after the container exits.
        with contextlib.suppress(OSError):
            pidfd = os.pidfd_open(watch_pid)
    sock.sendall(_READY)
    return 0 if ns_helper_serve(sock.fileno(), pidfd) == 0 else 1


def start_ns_helper(target: NamespaceTarget) -> tuple[socket.socket, int]:
    """Fork the helper into `target`; its socket (for the engine) and PID.

    Raises NamespaceError with one readable line when it cannot join.
    """
    m = re.fullmatch(r"/proc/(\d+)/ns/net", target.netns_path)
    watch_pid = int(m.group(1)) if m else None
    pid, parent = fork_into(
        target, lambda sock, netfd, userfd: _child(sock, netfd, userfd, watch_pid)
    )
    try:
        msg = parent.recv(4096)
    except OSError as e:
        msg = f"namespace helper: {e.strerror}".encode()
    if msg != _READY:
        parent.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise NamespaceError(msg.decode(errors="replace") or "namespace helper died")
    return parent, pid


def stop_ns_helper(pid: int) -> None:
    """Kill and reap the helper (it also dies on its own when slirpy does)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
