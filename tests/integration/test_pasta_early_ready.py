"""slirpy-pasta's early readiness (issue 17): failures after the parent exited are not lost.

With Podman's argv the parent exits once the TAP is open and the namespace
configured; the event loop, the engine and the DNS forwarder start after
that. These tests start slirpy-pasta as rootless Podman does
(tests/helpers/podmanlike.py: our own user namespace, a bind-mounted empty
netns, the daemon's exit code seen as its subreaper) and check that a
failure in that later phase still ends in one line on the daemon's stderr
(its -l log file), one syslog line, and a non-zero exit of the daemon,
while a start that has something to bind (-t) stays ready only after it
is bound, so the same failure reaches the runtime.
"""

from __future__ import annotations

import os
import sys
import tempfile

import pytest

from tests.helpers.podmanlike import PODMAN_DEFAULT_ARGS, start_like_podman

pytestmark = pytest.mark.integration

# slirpy-pasta whose post-readiness start fails (preload() is the first step
# of it), with syslog(3) recorded to a file instead of /dev/log.
_FAILING = r"""
import sys, syslog
from slirpy import daemon
from slirpy.config import ConfigError
record = sys.argv.pop(1)
def fake_syslog(priority, message):
    with open(record, "a") as f:
        f.write(f"{priority} {message}\n")
syslog.syslog = fake_syslog
def fail(self):
    raise ConfigError("injected failure in preload()")
daemon.Daemon.preload = fail
from slirpy.frontends.pasta import pasta_main
sys.argv[0] = "slirpy-pasta"
pasta_main()
"""


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def test_failure_after_readiness_is_logged_and_exits_nonzero() -> None:
    with tempfile.TemporaryDirectory() as d:
        log, record = os.path.join(d, "pasta.log"), os.path.join(d, "syslog")
        got = start_like_podman(
            [sys.executable, "-c", _FAILING, record, "-l", log, *PODMAN_DEFAULT_ARGS],
            env=dict(os.environ),
            check=["nsenter", "--net=@NETNS@", "ip", "-o", "-4", "addr", "show", "scope",
                   "global"])
        # The runtime saw a successful start of a configured namespace...
        assert got.rc == 0 and got.output == "", got.output
        assert "inet " in got.check
        # ...and the failure that followed is on record, with a non-zero exit.
        message = "injected failure in preload()"
        assert _read(log) == f"slirpy-pasta: {message}\n"
        assert _read(record) == f"3 {message}\n"  # LOG_ERR
        assert got.daemon_rc == 1


def test_failure_before_readiness_reaches_the_runtime() -> None:
    """With a port to publish the parent waits for the whole start: the same
    failure is the parent's one line and exit code, as before issue 17."""
    with tempfile.TemporaryDirectory() as d:
        record = os.path.join(d, "syslog")
        args = [a if a != "none" or i != PODMAN_DEFAULT_ARGS.index("-t") + 1 else
                "127.0.0.1/18999-18999:80-80" for i, a in enumerate(PODMAN_DEFAULT_ARGS)]
        got = start_like_podman([sys.executable, "-c", _FAILING, record, *args],
                                env=dict(os.environ))
        assert got.rc == 1, got
        assert got.output == "slirpy-pasta: injected failure in preload()\n"
        assert _read(record) == "", got


# slirpy-pasta joining a PID (`pasta PID`, also ready before the loop) whose
# process exits before the daemon watches it: the daemon must still stop.
_PID_GONE = r"""
import os, signal, sys
from slirpy import daemon
pid = int(sys.argv[-1])
preload = daemon.Daemon.preload
def kill_then_preload(self):
    os.kill(pid, signal.SIGKILL)
    preload(self)
daemon.Daemon.preload = kill_then_preload
from slirpy.frontends.pasta import pasta_main
sys.argv[0] = "slirpy-pasta"
pasta_main()
"""


def test_joined_process_gone_before_the_watch_stops_the_daemon() -> None:
    got = start_like_podman(
        [sys.executable, "-c", _PID_GONE, "--config-net", "-t", "none", "-u", "none",
         "-T", "none", "-U", "none", "--quiet", "@PID@"], env=dict(os.environ))
    assert got.rc == 0 and got.output == "", got.output
    assert got.daemon_rc == 0
