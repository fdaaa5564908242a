"""The pastas under test in the Debian 13 root, and the fixtures that bring them up.

Shared by the client tests that run a pasta inside the fake host
(tests/clients/test_pasta_bed.py, test_pasta_bridge.py,
test_rootlesskit_pasta.py). This module owns:

* `Bed`: the fake host (fakehost.py) with a RootSession of the Debian 13
  root (trixie_root.py) inside it; the `bed` fixture builds one per test
  module.
* `Pasta`: one pasta under test: the file a runtime should run, the
  environment that points Podman at it, and how to find its processes;
  the `pasta` fixture is parametrized over PASTAS. "pasta" is Debian 13's
  real pasta; "slirpy" is the checkout's `slirpy-pasta` installed into the
  root's venv and reached through a directory holding only a `pasta`
  symlink to it (Podman's CONTAINERS_HELPER_BINARY_DIR, RootlessKit's
  --pasta-binary). The slirpy variant skips, with SLIRPY_MISSING as the
  reason (allow-listed in tests/skips.toml), until pyproject.toml has that
  console script.

Test modules take the fixtures by assignment (`bed = pastabed.bed`,
`pasta = pastabed.pasta`), so that each module gets its own bed. This module
must not send traffic or start anything at import time.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.helpers import fakehost, trixie_root

REPO = pathlib.Path(__file__).resolve().parents[2]
PASTAS = ("pasta", "slirpy")
SLIRPY_BIN_DIR = "/tmp/slirpy-pasta-bin"
SLIRPY_MISSING = "slirpy-pasta is not a console script of this checkout yet"


@dataclass
class Bed:
    fh: fakehost.FakeHost
    session: trixie_root.RootSession


@dataclass
class Pasta:
    """One pasta under test: how Podman is pointed at it, and which file Podman should run."""

    name: str
    bed: Bed
    executable: str
    # pgrep arguments that find this pasta's processes in the session.
    pgrep: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    def podman(self, *args: str, check: bool = True,
               timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return self.bed.session.run_user("podman", *args, env=self.env, check=check,
                                         timeout=timeout)

    def run(self, *cmd: str, opts: tuple[str, ...] = (), network: str = "pasta",
            check: bool = True) -> str:
        r = self.podman("run", "--rm", "--network", network, *opts, trixie_root.IMAGE, *cmd,
                        check=check)
        return r.stdout


def pasta_pids(pasta: Pasta) -> list[int]:
    """The PIDs of this pasta's processes in the session (all users)."""
    r = pasta.bed.session.run("pgrep", *pasta.pgrep, check=False)
    return [int(p) for p in r.stdout.split()]


def wait_no_pasta(pasta: Pasta, timeout: float) -> list[int]:
    """Wait (bounded) until no process of this pasta is left; those still there."""
    deadline = time.monotonic() + timeout
    pids = pasta_pids(pasta)
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = pasta_pids(pasta)
    return pids


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    if os.geteuid() != 0:
        pytest.skip("the Debian 13 root and the fake host need root to build")
    root = trixie_root.build_root()
    # Real distributions ship /dev/net/tun as 0666; pasta opens it in Podman's userns.
    os.chmod("/dev/net/tun", 0o666)
    with fakehost.fake_host() as fh, trixie_root.RootSession(
        root, netns=fh.netns, resolv_conf=fh.resolv_conf
    ) as session:
        yield Bed(fh, session)


@pytest.fixture(scope="module", params=PASTAS)
def pasta(request: pytest.FixtureRequest, bed: Bed) -> Iterator[Pasta]:
    if request.param == "pasta":
        # comm is "pasta" or, once it re-executed itself, "pasta.avx2".
        yield Pasta("pasta", bed, "/usr/bin/pasta", ("^pasta",))
        return
    if "slirpy-pasta" not in (REPO / "pyproject.toml").read_text():
        pytest.skip(SLIRPY_MISSING)
    venv_bin = trixie_root.install_slirpy(bed.session.root, REPO)
    # A directory holding only `pasta` -> slirpy-pasta: Podman looks there first.
    bed.session.run("sh", "-c", f"mkdir -p {SLIRPY_BIN_DIR} && "
                    f"ln -sf {venv_bin}/slirpy-pasta {SLIRPY_BIN_DIR}/pasta")
    # The script's argv ("python3 <exe> ..."), not any command line naming it:
    # RootlessKit's holds --pasta-binary=<exe>, a test's `sh -c` may too.
    pgrep = ("-f", f"^([^ ]*python[^ ]* )?{SLIRPY_BIN_DIR}/pasta( |$)")
    yield Pasta("slirpy", bed, f"{SLIRPY_BIN_DIR}/pasta", pgrep,
                {"CONTAINERS_HELPER_BINARY_DIR": SLIRPY_BIN_DIR})
