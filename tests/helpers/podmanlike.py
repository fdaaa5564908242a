"""Start a pasta front end the way rootless Podman does, without Podman.

This module owns one scenario for tests: inside a user namespace of our own
(uid 0 mapped to the caller, as rootless Podman runs pasta) and a private
mount namespace, an empty network namespace (held by a sleeping `unshare
--net`) is bind-mounted on a file in a tmpfs, and a command is run with
Podman 5.4's default pasta argv (`@NETNS@` in it is that file, `@PID@`
the PID of the process in it, which its parent reaps at once if killed) with
stdin /dev/null and stdout+stderr on one pipe, like Go's `CombinedOutput()`.
The driver is the daemon's subreaper, so the daemon's own exit code is seen:
after the parent exits and `check` (a command, also given `@NETNS@`) has
run, the path is removed (Podman's `rm`, on which pasta quits) and the
daemon is waited for.

It sends no traffic and needs no root (only unprivileged user namespaces).
It must not touch the host's network namespace: the only network namespace
configured is the one made here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

__all__ = ["PODMAN_DEFAULT_ARGS", "Started", "start_like_podman"]

# containers/common v0.62 (Podman 5.4) without -p; tests/unit/test_pasta_cli.py has it too.
PODMAN_DEFAULT_ARGS = ("--config-net", "--dns-forward", "169.254.1.1", "-t", "none", "-u", "none",
                       "-T", "none", "-U", "none", "--no-map-gw", "--quiet", "--netns", "@NETNS@",
                       "--map-guest-addr", "169.254.1.2")

_DRIVER = r'''
import ctypes, json, os, subprocess, sys, tempfile, time
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
work = tempfile.mkdtemp(prefix="podmanlike-")
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", work], check=True)
holder = subprocess.Popen(["unshare", "--net", "--fork", "sleep", "infinity"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
result = {}
sleeper = []
try:
    own = os.stat("/proc/self/ns/net").st_ino
    deadline = time.monotonic() + 10
    while True:
        try:
            if os.stat(f"/proc/{holder.pid}/ns/net").st_ino != own:
                break
        except FileNotFoundError:
            pass
        assert time.monotonic() < deadline, "the netns holder did not start"
        time.sleep(0.002)
    while True:  # the sleeping process (unshare reaps it: once killed, it is gone)
        with open(f"/proc/{holder.pid}/task/{holder.pid}/children") as f:
            sleeper = f.read().split()
        if sleeper:
            break
        assert time.monotonic() < deadline, "the netns holder did not fork"
        time.sleep(0.002)
    path = os.path.join(work, "netns-podmanlike")
    open(path, "w").close()
    subprocess.run(["mount", "--bind", f"/proc/{holder.pid}/ns/net", path], check=True)
    sub = lambda argv: [a.replace("@NETNS@", path).replace("@PID@", sleeper[0])
                        for a in argv]
    r = subprocess.run(sub(cfg["argv"]), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, env=cfg["env"], timeout=60)
    result["rc"] = r.returncode
    result["output"] = r.stdout.decode(errors="replace")
    if cfg["check"]:
        c = subprocess.run(sub(cfg["check"]), capture_output=True, timeout=30)
        result["check"] = c.stdout.decode(errors="replace")
    subprocess.run(["umount", "-l", path], check=False)  # Podman: MNT_DETACH
    os.unlink(path)
    # The daemon (reparented to us) exits on its own once the path is gone.
    result["daemon_rc"] = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        left = []
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                left += [int(p) for p in f.read().split() if int(p) != holder.pid]
        if not left:
            break
        for pid in left:
            got, status = os.waitpid(pid, os.WNOHANG)
            if got:
                result["daemon_rc"] = os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    else:
        result["daemon_rc"] = "still running"
        for pid in left:
            os.kill(pid, 9)
finally:
    for pid in sleeper:  # killed first: unshare --fork does not pass SIGKILL on
        try:
            os.kill(int(pid), 9)
        except ProcessLookupError:
            pass
    holder.kill()
    holder.wait()
    subprocess.run(["umount", "-l", work], check=False)
    os.rmdir(work)
print(json.dumps(result))
'''


@dataclass
class Started:
    """What happened: the parent's exit code and combined output, `check`'s
    stdout at the parent's exit, the daemon's exit code (None: none seen)."""

    rc: int
    output: str
    check: str
    daemon_rc: int | str | None


def start_like_podman(argv: list[str], *, env: dict[str, str],
                      check: list[str] | None = None) -> Started:
    """Run `argv` (with `@NETNS@`) as Podman runs pasta; see the module's docstring."""
    cfg = json.dumps({"argv": argv, "env": env, "check": check or []})
    r = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private",
         sys.executable, "-c", _DRIVER, cfg],
        capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.splitlines()[-1])
    return Started(rc=got["rc"], output=got["output"], check=got.get("check", ""),
                   daemon_rc=got["daemon_rc"])
