"""Confinement after set-up: `--enable-sandbox` and `--enable-seccomp`.

This module owns applying them (through the engine's C helpers) and choosing
what the sandbox keeps visible. It must not decide when: the daemon calls
`confine()` once everything that needs the file system or fork() is done,
just before readiness.
"""

from __future__ import annotations

import os

from slirpy.config import ConfigError


def sandbox_extra_dirs(resolv_conf: str) -> list[str]:
    """Directories the sandbox must keep visible besides /etc and /run.

    resolv.conf is often a symlink (systemd-resolved, WSL, NetworkManager);
    slirp4netns loses DNS when its target is elsewhere. Keep the directory of
    every link in the chain and of the final file.
    """
    dirs: list[str] = []
    path = os.path.abspath(resolv_conf)
    for _ in range(16):
        d = os.path.dirname(path)
        if d not in dirs and d != "/":
            dirs.append(d)
        if not os.path.islink(path):
            break
        path = os.path.normpath(os.path.join(d, os.readlink(path)))
    real = os.path.dirname(os.path.realpath(resolv_conf))
    if real not in dirs and real != "/":
        dirs.append(real)
    return [d for d in dirs if os.path.isdir(d)]


def confine(sandbox: bool, seccomp: bool, resolv_conf: str) -> None:
    """Apply --enable-sandbox then --enable-seccomp (after set-up, before ready)."""
    if not (sandbox or seccomp):
        return
    from slirpy.engine import sandbox_apply, seccomp_apply

    if sandbox:
        # unshare(CLONE_NEWUSER) fails in a multi-threaded process; a thread
        # here is a bug in slirpy, reported rather than worked around.
        if len(os.listdir("/proc/self/task")) > 1:
            raise ConfigError("--enable-sandbox: slirpy has started a thread; cannot sandbox")
        try:
            sandbox_apply(sandbox_extra_dirs(resolv_conf))
        except OSError as e:
            raise ConfigError(e.strerror or str(e)) from None
    if seccomp:
        try:
            seccomp_apply()
        except OSError as e:
            raise ConfigError(e.strerror or str(e)) from None
