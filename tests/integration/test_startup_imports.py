"""What slirpy-slirp4netns and slirpy-pasta import before they are ready (issues 7, 17).

Every module imported before the ready byte is paid at every container start,
in time and in resident memory. These tests run the real daemon against a real
container with Python's own import log (PYTHONPROFILEIMPORTTIME: one stderr
line per module, from the daemon and from its namespace helper child) and
assert which modules were never imported: no timing is asserted.
"""

from __future__ import annotations

import os
import re
import signal
import sys

import pytest

from tests.helpers.podmanlike import PODMAN_DEFAULT_ARGS, start_like_podman
from tests.helpers.portfwd import api_dir
from tests.helpers.testbed import Container

# Never needed to start: argparse (slirp4netns's command line is getopt's),
# secrets/hashlib/hmac (the DNS query IDs come from os.urandom), ctypes (the
# helper child packs its route with struct), slirpy.services.dhcp (made on the first
# DHCP datagram), and the `slirpy run`, namespace-creation and library modules.
# _ssl: a stack process never speaks TLS (slirpy.entry refuses ssl, which asyncio would
# import; the refused `import ssl` itself still logs a line, so _ssl, the real one, is checked).
NEVER = {"argparse", "secrets", "hmac", "hashlib", "_hashlib", "ctypes", "slirpy.services.dhcp",
         "_ssl",
         "slirpy.frontends.run", "slirpy.host.spawn", "slirpy.frontends.library"}
_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$")


def imported(stderr: str) -> set[str]:
    return {m.group(1) for line in stderr.splitlines() if (m := _LINE.match(line))}


@pytest.mark.parametrize(
    ("args", "present", "absent"),
    [
        # Podman's -c case: DNS on, no API socket.
        (["--configure", "--mtu=65520"], {"slirpy.services.dns"},
         {"slirpy.control.api", "slirpy.control.portfwd", "json"}),
        # An API socket and no DNS forwarder.
        (["--configure", "--disable-dns", "--api-socket=@API@"],
         {"slirpy.control.api", "slirpy.control.portfwd"}, {"slirpy.services.dns"}),
    ],
    ids=["dns-no-api", "api-no-dns"],
)
def test_modules_not_imported_before_ready(
    container: Container, slirpy_factory, args, present, absent
) -> None:
    with api_dir() as d:
        args = [a.replace("@API@", f"{d}/api.sock") for a in args]
        env = {"PYTHONPROFILEIMPORTTIME": "1"}
        s = slirpy_factory([*args, str(container.pid), "tap0"], env=env)
        # Ready: the TAP is configured (the helper child did its work).
        r = container.run("ip", "-4", "addr", "show", "tap0")
        assert "10.0.2.100/24" in r.stdout.decode()
        assert s.stop(signal.SIGTERM) == 0
    _out, err = s.output()
    mods = imported(err)
    # The log is there and covers the daemon: the engine and the event loop.
    expected = {"slirpy.daemon", "slirpy.engine", "slirpy.host.ifconfig", "uvloop", *present}
    assert expected <= mods, err[-2000:]
    assert mods & (NEVER | absent) == set()


# slirpy-pasta started with Podman's argv is ready (its parent exits) once the
# TAP is open and the namespace configured (issue 17): what serves traffic
# afterwards (the event loop, uvloop, the engine's Python face, the DNS
# forwarder, logging) is imported after the parent exited. The TAP helper
# child calls the cffi module directly, never slirpy.engine.
PASTA_BEFORE_READY = {"slirpy.frontends.pasta", "slirpy.daemon", "slirpy.host.netns",
                      "slirpy.host.netconf", "slirpy._engine"}
PASTA_AFTER_READY = {"asyncio", "uvloop", "slirpy.engine", "slirpy.services.dns", "logging",
                     "slirpy.control.sharednet", "slirpy.host.nswatch", "traceback"}
_PASTA = "import sys; from slirpy.frontends.pasta import pasta_main; " \
         "sys.argv[0] = 'slirpy-pasta'; pasta_main()"


def test_pasta_ready_before_the_event_loop_is_imported() -> None:
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    got = start_like_podman([sys.executable, "-c", _PASTA, *PODMAN_DEFAULT_ARGS], env=env,
                            check=["nsenter", "--net=@NETNS@", "ip", "-o", "link", "show", "up"])
    assert got.rc == 0, got.output[-3000:]
    # Everything logged before the parent exited: the daemon's own imports
    # go to /dev/null once it detached.
    mods = imported(got.output)
    assert mods >= PASTA_BEFORE_READY, got.output[-3000:]
    assert mods & (NEVER | PASTA_AFTER_READY) == set()
    # Ready meant configured: lo and the copied interface are up at the exit.
    assert ": lo:" in got.check and len(got.check.splitlines()) == 2, got.check
    # And the daemon went on to serve: it quit cleanly when the path went.
    assert got.daemon_rc == 0
