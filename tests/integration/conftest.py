"""Fixtures of the integration test bed: real user+net namespaces, a real TAP,
real slirpy.

Root is used only to build the bed (chmod /dev/net/tun, ping_group_range, test
hosts); the container namespace and slirpy itself run as an unprivileged user
(uid 65534 by default), the way users run them. slirpy is started two ways:
`slirpy-slirp4netns` (`slirpy_factory`, `net`: the drop-in's command line) and
the library, `slirpy.Network` (`library_factory`); `any_net` gives a test
both, so the library is exercised by the suite itself. Every fixture tears
down what it made, even when the test fails. Traffic goes only to loopback or
to test hosts in namespaces made by the tests. The code behind the fixtures
lives in tests/helpers (testbed.py, daemons.py, testhost.py); this file holds
fixtures only.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterator

import pytest

from tests.helpers import fixtures
from tests.helpers.daemons import AnyNet, LibSlirpy, Slirpy, reap, start_library, start_slirpy
from tests.helpers.portfwd import Forwarding, api_dir
from tests.helpers.testbed import Container, make_container

# Shared with tests/clients: defined once in tests/helpers/fixtures.py.
testhost = fixtures.testhost
tcp_server = fixtures.tcp_server
udp_server = fixtures.udp_server


@pytest.fixture(scope="session", autouse=True)
def testbed() -> None:
    if os.geteuid() != 0:
        pytest.skip("integration tests need root to build the test bed")
    for tool in ("setpriv", "unshare", "nsenter", "busybox", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    os.chmod("/dev/net/tun", 0o666)
    pathlib.Path("/proc/sys/net/ipv4/ping_group_range").write_text("0 2147483647\n")


@pytest.fixture
def container() -> Iterator[Container]:
    with make_container() as c:
        yield c


@pytest.fixture
def slirpy_factory() -> Iterator[object]:
    started: list[Slirpy] = []

    def factory(args: list[str], **kw: object) -> Slirpy:
        s = start_slirpy(args, **kw)  # type: ignore[arg-type]
        started.append(s)
        return s

    yield factory
    reap(started)


@pytest.fixture
def net(container: Container, slirpy_factory: object) -> Iterator[tuple[Container, Slirpy]]:
    """A configured container (-c) with slirpy running at MTU 65520."""
    s = slirpy_factory(["--configure", "--mtu=65520", str(container.pid), "tap0"])  # type: ignore[operator]
    yield container, s


@pytest.fixture
def library_factory() -> Iterator[object]:
    """Factory: library_factory(container_pid, **Network keyword arguments)."""
    started: list[LibSlirpy] = []

    def factory(target: int, **kw: object) -> LibSlirpy:
        lib = start_library(target, **kw)
        started.append(lib)
        return lib

    yield factory
    reap(started)


@pytest.fixture(params=["cli", "library"])
def any_net(
    request: pytest.FixtureRequest, container: Container, slirpy_factory: object,
    library_factory: object,
) -> Iterator[AnyNet]:
    """`net` twice: slirpy-slirp4netns (the drop-in CLI) and `slirpy.Network`
    (the library), both configuring tap0 at MTU 65520, as the test user."""
    if request.param == "cli":
        s = slirpy_factory(["--configure", "--mtu=65520", str(container.pid), "tap0"])  # type: ignore[operator]
    else:
        s = library_factory(container.pid, mtu=65520)  # type: ignore[operator]
    yield container, s


@pytest.fixture
def fwd_factory(
    container: Container, slirpy_factory: Callable[..., Slirpy],
    library_factory: Callable[..., LibSlirpy],
) -> Iterator[Callable[..., Forwarding]]:
    with api_dir() as d:

        def make(*extra: str, mtu: int = 65520, library: bool = False) -> Forwarding:
            if library:  # slirpy.Network(container.pid, mtu=mtu): no API socket
                lib = library_factory(container.pid, mtu=mtu)
                return Forwarding(container, lib, "", lib)
            path = f"{d}/api.sock"
            s = slirpy_factory(
                ["-c", f"--mtu={mtu}", f"--api-socket={path}", *extra, str(container.pid), "tap0"]
            )
            return Forwarding(container, s, path)

        yield make


@pytest.fixture
def fwd(fwd_factory: Callable[..., Forwarding]) -> Forwarding:
    return fwd_factory()


@pytest.fixture(params=["cli", "library"])
def any_fwd(request: pytest.FixtureRequest, fwd_factory: Callable[..., Forwarding]) -> Forwarding:
    """`fwd` twice: slirpy-slirp4netns's API socket, and slirpy.Network.publish()."""
    return fwd_factory(library=request.param == "library")


@pytest.fixture
def shared_dir() -> Iterator[pathlib.Path]:
    """A fresh directory under /tmp that the unprivileged user can read.

    pytest's tmp_path lives under a 0700 directory of root's: files there are
    invisible to slirpy and the container, which run as the test user.
    """
    d = pathlib.Path(tempfile.mkdtemp(prefix="slirpy-test-", dir="/tmp"))
    try:
        d.chmod(0o755)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
