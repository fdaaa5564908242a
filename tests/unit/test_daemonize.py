"""slirpy.host.daemonize: the parent exits only once the child is ready."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os, sys, time
    from slirpy.host.daemonize import detach_stdio, fork_until_ready, signal_ready
    pid_file, mode = sys.argv[1], sys.argv[2]
    fd = fork_until_ready("test", pid_file)
    # Only the child gets here.
    print("child stdout before ready", flush=True)
    if mode == "fail":
        sys.stderr.write("test: setup failed\\n")
        sys.exit(3)
    detach_stdio(None)
    with open(pid_file + ".sid", "w") as f:
        f.write(f"{os.getsid(0)} {os.getpid()}")
    signal_ready(fd)
    time.sleep(0.5)
""")


def _run(tmp_path: pathlib.Path, mode: str) -> subprocess.CompletedProcess[str]:
    pid_file = tmp_path / "pid"
    # Like Podman's CombinedOutput(): this returns only once every copy of
    # the output pipe is closed, so a daemon keeping stdout would hang it.
    return subprocess.run([sys.executable, "-c", SCRIPT, str(pid_file), mode],
                          capture_output=True, text=True, timeout=20,
                          cwd=pathlib.Path(__file__).resolve().parents[2])


def test_ready_child_parent_exits_zero_and_writes_pid(tmp_path: pathlib.Path) -> None:
    r = _run(tmp_path, "ok")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "child stdout before ready\n"
    pid = int((tmp_path / "pid").read_text())
    sid, child = map(int, (tmp_path / "pid.sid").read_text().split())
    # The PID file names the daemon, which leads its own session.
    assert pid == child == sid
    # The pipe reached EOF although the daemon may still run: it has let go of it.


def test_failing_child_gives_its_exit_code_and_message(tmp_path: pathlib.Path) -> None:
    r = _run(tmp_path, "fail")
    assert r.returncode == 3
    assert r.stderr == "test: setup failed\n"
    assert not (tmp_path / "pid").exists()


def test_write_pid_file(tmp_path: pathlib.Path) -> None:
    from slirpy.host.daemonize import write_pid_file

    write_pid_file(str(tmp_path / "p"), 4242)
    assert (tmp_path / "p").read_text() == "4242\n"
