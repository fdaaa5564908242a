"""Attach to a real container namespace: configuration, pings, ready/exit fds, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time

import pytest

from tests.helpers.daemons import start_slirpy
from tests.helpers.testbed import (
    AS_USER,
    Container,
    make_container,
    pipe_bytes,
    slirp4netns_cmd,
    user_env,
)
from tests.helpers.wait import wait_until


def addresses(c: Container) -> dict[str, object]:
    links = json.loads(c.run("ip", "-j", "addr", "show", "tap0").stdout)
    return links[0]


def run_slirpy_error(args: list[str], prefix: list[str] | None = None) -> tuple[int, str, str]:
    r = subprocess.run(
        [*(prefix or []), *AS_USER, *slirp4netns_cmd(), *args],
        capture_output=True,
        timeout=30,
        env=user_env(),
    )
    return r.returncode, r.stdout.decode(), r.stderr.decode()


@pytest.mark.parametrize("mtu", [65520, 1500])
def test_configure_sets_address_route_mtu(container: Container, slirpy_factory, mtu) -> None:
    s = slirpy_factory(["--configure", f"--mtu={mtu}", str(container.pid), "tap0"])
    assert s.ready_byte == b"1"
    link = addresses(container)
    assert link["mtu"] == mtu
    assert "UP" in link["flags"]
    v4 = [a for a in link["addr_info"] if a["family"] == "inet"]
    assert [(a["local"], a["prefixlen"]) for a in v4] == [("10.0.2.100", 24)]
    routes = json.loads(container.run("ip", "-j", "route", "show", "default").stdout)
    assert routes[0]["gateway"] == "10.0.2.2" and routes[0]["dev"] == "tap0"
    lo = json.loads(container.run("ip", "-j", "link", "show", "lo").stdout)[0]
    assert "UP" in lo["flags"]


@pytest.mark.parametrize("target", ["10.0.2.2", "10.0.2.3"])
def test_ping_virtual_hosts(net, target) -> None:
    c, _ = net
    r = c.run("busybox", "ping", "-c", "3", "-W", "2", target)
    assert "3 packets transmitted, 3 packets received" in r.stdout.decode()


def test_ready_fd_gets_one_and_is_closed(container: Container) -> None:
    rfd, wfd = os.pipe()
    proc = subprocess.Popen(
        [*AS_USER, *slirp4netns_cmd(), "-c", "-r", str(wfd), str(container.pid), "tap0"],
        pass_fds=(wfd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=user_env(),
    )
    os.close(wfd)
    try:
        data = b""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            chunk = os.read(rfd, 16)  # blocks until data or EOF
            if not chunk:
                break
            data += chunk
        assert data == b"1"  # then EOF: slirpy closed its end
        assert proc.poll() is None
    finally:
        os.close(rfd)
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_exit_fd_hangup_exits_zero_and_removes_api_socket(container: Container) -> None:
    efd_r, efd_w = os.pipe()
    sock = tempfile.mktemp(prefix="slirpy-api-", dir="/tmp")
    s = start_slirpy(
        ["-c", "-e", str(efd_r), f"--api-socket={sock}", str(container.pid), "tap0"],
        pass_fds=(efd_r,),
    )
    os.close(efd_r)
    assert os.path.exists(sock)
    os.write(efd_w, b"ignored data")  # data is ignored
    # slirpy has read it (the pipe is empty again) and still runs.
    wait_until(lambda: pipe_bytes(efd_w) == 0, 5, what="slirpy read the exit fd's data")
    assert s.proc.poll() is None
    os.close(efd_w)  # hang-up
    assert s.proc.wait(timeout=10) == 0
    assert not os.path.exists(sock)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_orderly_exit(container: Container, sig) -> None:
    s = start_slirpy(["-c", str(container.pid), "tap0"])
    assert s.stop(sig) == 0
    _out, err = s.output()
    assert "Traceback" not in err


def test_attach_to_existing_tap_without_configure(container: Container, slirpy_factory) -> None:
    # RootlessKit pre-creates tap0 and configures it itself.
    container.run("ip", "tuntap", "add", "name", "tap0", "mode", "tap")
    container.run("ip", "addr", "add", "10.0.2.100/24", "dev", "tap0")
    container.run("ip", "link", "set", "tap0", "up")
    slirpy_factory([str(container.pid), "tap0"])
    r = container.run("busybox", "ping", "-c", "2", "-W", "2", "10.0.2.2")
    assert "2 packets received" in r.stdout.decode()


def test_without_configure_tap_left_down(container: Container, slirpy_factory) -> None:
    slirpy_factory([str(container.pid), "tap0"])
    link = addresses(container)
    assert "UP" not in link["flags"]
    assert not [a for a in link["addr_info"] if a["family"] == "inet"]


def test_netns_type_path(slirpy_factory) -> None:
    with make_container() as c:
        slirpy_factory(["-c", "--netns-type=path", f"/proc/{c.pid}/ns/net", "tap0"])
        r = c.run("busybox", "ping", "-c", "1", "-W", "2", "10.0.2.3")
        assert "1 packets received" in r.stdout.decode()


def test_missing_pid_one_line() -> None:
    rc, _out, err = run_slirpy_error(["999999999", "tap0"])
    assert rc == 1
    assert err.strip().splitlines() == [
        "slirpy-slirp4netns: no process with PID 999999999: is the container still running?"
    ]


@pytest.mark.parametrize("mtu", ["67", "65522", "abc"])
def test_bad_mtu_one_line(mtu) -> None:
    rc, _out, err = run_slirpy_error([f"--mtu={mtu}", "1", "tap0"])
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "MTU" in lines[0] and "Traceback" not in err


def test_bad_option_one_line() -> None:
    rc, _out, err = run_slirpy_error(["--no-such-option", "1", "tap0"])
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--no-such-option" in lines[0]


def test_namespace_not_joinable() -> None:
    # A network namespace owned by root's user namespace: uid 65534 may not join it.
    name = f"slirpy-test-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        rc, _out, err = run_slirpy_error(
            ["--netns-type=path", f"/run/netns/{name}", "tap0"]
        )
        assert rc == 1
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert "cannot join the container's" in lines[0] or "cannot open" in lines[0]
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _with_tun_replaced(setup: str, container: Container) -> tuple[int, str, str]:
    """Run slirpy in a private mount namespace where /dev/net/tun is replaced."""
    script = (
        f"{setup} && exec setpriv --reuid={os.environ.get('SLIRPY_TEST_UID', '65534')} "
        f"--regid={os.environ.get('SLIRPY_TEST_UID', '65534')} --clear-groups "
        + " ".join(slirp4netns_cmd())
        + f" -c {container.pid} tap0"
    )
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        timeout=30,
        env=user_env(),
    )
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def test_dev_net_tun_missing(container: Container) -> None:
    rc, _out, err = _with_tun_replaced("mount -t tmpfs none /dev/net", container)
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "/dev/net/tun does not exist" in lines[0] and "modprobe tun" in lines[0]


def test_dev_net_tun_not_permitted(container: Container, tmp_path) -> None:
    node = tmp_path / "tun"
    setup = f"mknod {node} c 10 200 && chmod 600 {node} && mount --bind {node} /dev/net/tun"
    rc, _out, err = _with_tun_replaced(setup, container)
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "cannot open /dev/net/tun" in lines[0] and "chmod 0666 /dev/net/tun" in lines[0]
