"""Fixtures of the client tests: real rootless Podman and RootlessKit running slirpy.

The tests here run as a user made for the session (`slirpy-c<PID of pytest>`,
created with `useradd`, which gives it /etc/subuid and /etc/subgid ranges;
removed with its home, runtime directory and processes at the end, even on
failure; users left by killed runs are removed at the next start). Root
is used only to build that bed: chmod /dev/net/tun, make the user, write its
Podman configuration. Podman and RootlessKit themselves, and so slirpy, run as
the user. Traffic goes only to the host's loopback or test-host namespaces
(nothing leaves the machine). The helpers live in tests/helpers/clientbed.py.

This file must not install anything: .ci/run installs podman, runc, uidmap,
rootlesskit and busybox-static; without them the tests are skipped.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import Iterator

import pytest

from tests.helpers import fixtures
from tests.helpers.clientbed import (
    IMAGE,
    SLIRPY_SCRIPT,
    ClientUser,
    LineServer,
    Podman,
    busybox_rootfs_tar,
    make_client_user,
)

# Shared with tests/integration: defined once in tests/helpers/fixtures.py.
testhost = fixtures.testhost

CONTAINERS_CONF = """\
[containers]
netns = "slirp4netns"

[engine]
# This VM has cgroup v1 (hybrid): crun refuses it, runc with cgroupfs works.
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
network_cmd_path = "{script}"
"""

STORAGE_CONF = """\
[storage]
driver = "vfs"
graphroot = "{home}/storage"
runroot = "{runtime}/containers"
"""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = pathlib.Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.clients)


@pytest.fixture(scope="session")
def client_user() -> Iterator[ClientUser]:
    if os.geteuid() != 0:
        pytest.skip("client tests need root to create the test user")
    for tool in ("useradd", "userdel", "setpriv", "newuidmap", "newgidmap", "busybox"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if not SLIRPY_SCRIPT.exists():
        pytest.skip(f"{SLIRPY_SCRIPT} is missing: pip install -e . first")
    os.chmod("/dev/net/tun", 0o666)
    user = make_client_user()
    try:
        yield user
    finally:
        user.remove()


@pytest.fixture(scope="session")
def podman(client_user: ClientUser) -> Iterator[Podman]:
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    conf = client_user.home / ".config" / "containers"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "containers.conf").write_text(CONTAINERS_CONF.format(script=SLIRPY_SCRIPT))
    (conf / "storage.conf").write_text(
        STORAGE_CONF.format(home=client_user.home, runtime=client_user.runtime_dir)
    )
    tar = client_user.home / "busybox-rootfs.tar"
    busybox_rootfs_tar(tar)
    for path in (client_user.home / ".config", conf, *conf.iterdir(), tar):
        os.chown(path, client_user.uid, client_user.gid)
    p = Podman(client_user)
    p("import", str(tar), IMAGE)
    try:
        yield p
    finally:
        p("rm", "-a", "-f", "-t", "0", check=False)


@pytest.fixture
def loopback_server() -> Iterator[LineServer]:
    s = LineServer("127.0.0.1")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def loopback6_server() -> Iterator[LineServer]:
    s = LineServer("::1")
    try:
        yield s
    finally:
        s.close()
