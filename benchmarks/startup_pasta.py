"""Time from exec to the parent's exit of slirpy-pasta (or pasta) started as Podman starts it.

This script owns one measurement (issue 17): Podman runs `pasta` with
`CombinedOutput()` and goes on once the parent has exited and the output
pipe reached EOF (pasta daemonizes once the namespace is configured and its
ports listen). Each start here gets a fresh network namespace, made as
Podman makes one: an empty netns (held by a sleeping `unshare --net`)
bind-mounted on a file, inside a user namespace of our own (uid 0 mapped to
the caller, as rootless Podman runs pasta). The argv is Podman 5.4's default
(`--config-net --dns-forward 169.254.1.1 -t none -u none -T none -U none
--no-map-gw --quiet --netns NS --map-guest-addr 169.254.1.2`), optionally
with `-t` port specs. After each start the netns path is removed (the
daemon quits, as after `podman rm`) and the daemon is reaped (we are its
subreaper) before the next start, so starts do not overlap.

It prints the median, min and max over N starts, and with `--importtime`
the modules imported before the parent exited (PYTHONPROFILEIMPORTTIME:
the front end, the daemon and the TAP helper child share the pipe), by
self time. It must not send traffic anywhere; it only starts and stops
stacks. Run it under `flock /tmp/podman-bed.lock` (it loads the CPU).

    python benchmarks/startup_pasta.py -n 20
    python benchmarks/startup_pasta.py -n 20 --pasta /usr/bin/pasta
    python benchmarks/startup_pasta.py -n 5 --importtime
    python benchmarks/startup_pasta.py -n 10 -- -t 18080-18080:80-80
    python benchmarks/startup_pasta.py -n 20 --variant old=/tmp/pasta:/tmp/old-tree \\
        --variant new=slirpy-pasta
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

PR_SET_CHILD_SUBREAPER = 36
INNER_FLAG = "--inner"
_IMPORT = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)\s*$")


def podman_argv(netns: str, extra: list[str]) -> list[str]:
    """Podman 5.4's argv for `podman run` without -p (plus `extra` before the defaults)."""
    argv = ["--config-net", *extra, "--dns-forward", "169.254.1.1"]
    seen = set(extra)
    for opt in ("-t", "-u", "-T", "-U"):
        if opt not in seen:
            argv += [opt, "none"]
    return [*argv, "--no-map-gw", "--quiet", "--netns", netns, "--map-guest-addr", "169.254.1.2"]


def _children() -> list[int]:
    """Our children (the daemons we inherited as subreaper, the holders)."""
    pids: list[int] = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            continue
    return pids


def _reap_all(keep: set[int], timeout: float = 10.0) -> None:
    """Wait until every child but `keep` has exited (SIGKILL after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in _children() if p not in keep]
        if not left:
            return
        for pid in left:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
            try:
                got, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if got == 0:
                time.sleep(0.005)


def one_start(pasta: str, workdir: str, index: int, extra: list[str],
              env: dict[str, str]) -> tuple[float, str]:
    """Start once in a fresh netns; (seconds from exec to parent exit + EOF, output)."""
    holder = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
    path = os.path.join(workdir, f"netns-{index}")
    try:
        open(path, "w").close()
        deadline = time.monotonic() + 5
        while True:  # the holder has unshared once its netns differs from ours
            try:
                if os.stat(f"/proc/{holder.pid}/ns/net").st_ino != os.stat(
                        "/proc/self/ns/net").st_ino:
                    break
            except FileNotFoundError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the netns holder did not start")
            time.sleep(0.001)
        subprocess.run(["mount", "--bind", f"/proc/{holder.pid}/ns/net", path], check=True)
        argv = [pasta, *podman_argv(path, extra)]
        t0 = time.perf_counter()
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, env=env, check=False)
        took = time.perf_counter() - t0
        out = r.stdout.decode(errors="replace")
        if r.returncode != 0:
            raise RuntimeError(f"{pasta} exited {r.returncode}: {out[-2000:]}")
        return took, out
    finally:
        # podman rm: the path goes; pasta (and slirpy-pasta) quit on that.
        subprocess.run(["umount", "-l", path], check=False,  # Podman: MNT_DETACH
                       stderr=subprocess.DEVNULL)
        if os.path.exists(path):
            os.unlink(path)
        holder.kill()
        holder.wait()
        _reap_all(keep=set())


def importtime_table(out: str, top: int) -> str:
    """Self time per top-level package and the slowest modules, from the import log."""
    by_pkg: dict[str, int] = defaultdict(int)
    rows: list[tuple[int, int, str]] = []
    for line in out.splitlines():
        m = _IMPORT.match(line)
        if not m:
            continue
        self_us, cum_us, name = int(m.group(1)), int(m.group(2)), m.group(4)
        by_pkg[name.split(".")[0] if not name.startswith("slirpy") else
               ".".join(name.split(".")[:2])] += self_us
        rows.append((self_us, cum_us, name))
    lines = [f"{len(rows)} modules imported before the parent exited, "
             f"{sum(r[0] for r in rows) / 1000:.1f} ms of self time in all", "",
             "self ms  package"]
    for pkg, us in sorted(by_pkg.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{us / 1000:7.1f}  {pkg}")
    lines += ["", "self ms   cum ms  module"]
    for self_us, cum_us, name in sorted(rows, reverse=True)[:top]:
        lines.append(f"{self_us / 1000:7.1f}  {cum_us / 1000:7.1f}  {name}")
    return "\n".join(lines)


def _variants(args: argparse.Namespace) -> list[tuple[str, str, str | None]]:
    """(label, executable, PYTHONPATH or None) per variant, from --pasta / --variant."""
    def find(exe: str) -> str:
        beside = os.path.join(os.path.dirname(sys.executable), exe)
        return beside if os.path.exists(beside) else shutil.which(exe) or exe

    if not args.variant:
        return [(args.pasta, find(args.pasta), None)]
    out = []
    for spec in args.variant:
        label, _, rest = spec.partition("=")
        exe, _, path = rest.partition(":")
        out.append((label, find(exe or args.pasta), path or None))
    return out


def inner(args: argparse.Namespace) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    base = dict(os.environ)
    # Measure an installed slirpy: with bytecode cached (the warm-up starts
    # write it), kept out of the source tree.
    base.pop("PYTHONDONTWRITEBYTECODE", None)
    base["PYTHONPYCACHEPREFIX"] = args.pycache
    if args.importtime:
        base["PYTHONPROFILEIMPORTTIME"] = "1"
    variants = _variants(args)
    times: dict[str, list[float]] = {label: [] for label, _, _ in variants}
    outs: dict[str, str] = {}
    index = 0
    with tempfile.TemporaryDirectory(prefix="startup-pasta-") as workdir:
        # A tmpfs of our mount namespace: the netns bind mounts stay ours.
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", workdir], check=True)
        try:
            # Variants alternate start by start: a machine that slows down
            # meanwhile slows them all alike.
            for i in range(args.warmup + args.n):
                for label, exe, path in variants:
                    env = dict(base)
                    if path:
                        env["PYTHONPATH"] = path
                    took, outs[label] = one_start(exe, workdir, index, args.extra, env)
                    index += 1
                    if i >= args.warmup:
                        times[label].append(took * 1000)
            for label, exe, _ in variants:
                ms = times[label]
                print(f"{label} ({exe}): exec -> parent exit, {len(ms)} starts: median "
                      f"{statistics.median(ms):.1f} ms, min {min(ms):.1f}, max {max(ms):.1f}")
                if args.verbose:
                    print(" ".join(f"{t:.1f}" for t in ms))
                if args.importtime:
                    print(importtime_table(outs[label], args.top))
        finally:
            subprocess.run(["umount", "-l", workdir], check=False)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=20, help="timed starts (default 20)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed starts first (default 2; they write the bytecode cache)")
    p.add_argument("--pasta", default="slirpy-pasta",
                   help="the executable (default: slirpy-pasta on PATH)")
    p.add_argument("--variant", action="append", default=[],
                   metavar="LABEL=EXE[:PYTHONPATH]",
                   help="compare variants, alternating start by start (repeatable)")
    p.add_argument("--importtime", action="store_true",
                   help="also print the import log of the last start, summed")
    p.add_argument("--top", type=int, default=25, help="rows of the import table")
    p.add_argument("--pycache", default="/tmp/startup-pasta-pycache",
                   help="PYTHONPYCACHEPREFIX of the started stacks")
    p.add_argument("-v", "--verbose", action="store_true", help="print every start's time")
    p.add_argument(INNER_FLAG, action="store_true", help=argparse.SUPPRESS)
    p.add_argument("extra", nargs="*", help="options before Podman's defaults (after --)")
    args = p.parse_args()
    if args.inner:
        return inner(args)
    # Podman's situation: a user namespace of our own (uid 0 in it) and a
    # mount namespace for the netns bind mounts; the host's network namespace.
    cmd = ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private",
           sys.executable, os.path.abspath(__file__), INNER_FLAG, *sys.argv[1:]]
    return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
