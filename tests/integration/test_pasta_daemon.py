"""`slirpy pasta` itself, against a real namespace inside the fake host.

Each test runs slirpy's pasta front end the way a runtime does (as the
unprivileged test user, joining a container made by that user) inside the
fake host of tests/helpers/fakehost.py, so that copying "the host's"
addresses and routes copies the fake host's and the container's traffic
reaches only the test's own upstream namespace. Podman-level scenarios are
tests/clients/test_pasta_bed.py; this file checks what Podman cannot show:
readiness on exit, the PID file, SIGTERM, one-line setup errors, local mode
when offline, -T, `auto`, and following a host address change.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

from tests.helpers import fakehost
from tests.helpers.testbed import AS_USER, Container, make_container, user_env
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.integration

# What Podman 5.4 passes (tests/unit/test_pasta_cli.py has the exact line),
# with the DNS upstream pinned to the fake upstream's server.
PODMAN_ARGS = ("--config-net", "--dns-forward", "169.254.1.1", "--dns-host", fakehost.DNS4,
               "-t", "none", "-u", "none", "-T", "none", "-U", "none", "--no-map-gw",
               "--quiet")
GUEST_ADDR = "169.254.1.2"


@pytest.fixture
def tmp_path() -> Iterator[str]:
    """A directory the unprivileged test user can write its PID files to."""
    d = tempfile.mkdtemp(prefix="slirpy-pasta-")
    os.chmod(d, 0o777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def fh() -> Iterator[fakehost.FakeHost]:
    if os.geteuid() != 0:
        pytest.skip("the fake host needs root to build")
    os.chmod("/dev/net/tun", 0o666)
    with fakehost.fake_host() as bed:
        yield bed


def _pasta_argv(netns: str, *args: str) -> list[str]:
    return ["nsenter", f"--net={netns}", *AS_USER, sys.executable, "-m", "slirpy", "pasta",
            *args]


class Daemon:
    """A backgrounded slirpy-pasta, found through its PID file."""

    def __init__(self, pid_file: str) -> None:
        self.pid_file = pid_file

    @property
    def pid(self) -> int:
        with open(self.pid_file) as f:
            return int(f.read())

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError, FileNotFoundError, ValueError):
            os.kill(self.pid, signal.SIGTERM)
            wait_until(lambda: not self.alive(), 5, what="slirpy-pasta to exit")


@contextlib.contextmanager
def _pasta(netns: str, c: Container, tmp_path: object, *args: str) -> Iterator[Daemon]:
    pid_file = os.path.join(str(tmp_path), f"pasta-{c.pid}.pid")
    # Like Podman's CombinedOutput(): returns once the parent exited AND
    # every copy of the output pipe is closed (the daemon must let go of it).
    r = subprocess.run(_pasta_argv(netns, *args, "-P", pid_file, str(c.pid)),
                       capture_output=True, text=True, timeout=30, env=user_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""
    d = Daemon(pid_file)
    try:
        assert d.alive()
        yield d
    finally:
        d.stop()


def _ip_json(c: Container, *args: str) -> list[dict[str, object]]:
    return json.loads(c.run("ip", "-j", *args).stdout)


def _addrs(c: Container, dev: str) -> set[str]:
    out = set()
    for link in _ip_json(c, "addr", "show", "dev", dev):
        for a in link.get("addr_info", []):  # type: ignore[union-attr]
            if a.get("scope") != "link":
                out.add(f"{a['local']}/{a['prefixlen']}")
    return out


def test_ready_on_exit_like_pasta(fh: fakehost.FakeHost, tmp_path: object) -> None:
    with make_container(fh.netns) as c, _pasta(fh.netns, c, tmp_path, *PODMAN_ARGS,
                                          "--map-guest-addr", GUEST_ADDR) as d:
        # Checked at once: the parent exited only once all of it was done.
        link = _ip_json(c, "link", "show", "dev", "eth0")[0]
        assert link["mtu"] == 65520
        assert "UP" in link["flags"]
        assert "UP" in _ip_json(c, "link", "show", "dev", "lo")[0]["flags"]
        assert _addrs(c, "eth0") == {f"{fakehost.HOST4}/24", f"{fakehost.HOST6}/64"}
        routes = {(r["dst"], r.get("gateway")) for r in _ip_json(c, "route")}
        assert ("default", fakehost.GATEWAY4) in routes
        routes6 = {(r["dst"], r.get("gateway")) for r in _ip_json(c, "-6", "route")}
        assert ("default", fakehost.GATEWAY6) in routes6
        # The daemon left our session and holds no terminal.
        assert os.getsid(d.pid) == d.pid
        # Outbound TCP leaves as the fake host, v4 and v6.
        for host, seen in ((fakehost.TEST_HOST4, fakehost.HOST4),
                           (fakehost.TEST_HOST6, fakehost.HOST6)):
            out = c.sh(f"busybox nc {host} {fakehost.PEER_PORT} </dev/null").stdout.decode()
            assert out.split()[0] == seen
        # DNS through 169.254.1.1 reaches the upstream server.
        out = c.sh(f"busybox nslookup www.{fakehost.DOMAIN} 169.254.1.1").stdout.decode()
        assert f"Address: {fakehost.TEST_HOST4}" in out
        # 169.254.1.2 is the fake host itself (its own service sees its address).
        out = c.sh(f"busybox nc {GUEST_ADDR} {fakehost.PEER_PORT} </dev/null").stdout.decode()
        assert out.split()[0] == fakehost.HOST4


def test_foreground_sigterm_exits_zero(fh: fakehost.FakeHost, tmp_path: object) -> None:
    pid_file = os.path.join(str(tmp_path), "fg.pid")
    with make_container(fh.netns) as c:
        p = subprocess.Popen(_pasta_argv(fh.netns, *PODMAN_ARGS, "-f", "-P", pid_file,
                                         str(c.pid)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=user_env())
        try:
            wait_until(lambda: (os.path.exists(pid_file) and os.path.getsize(pid_file) > 0)
                       or p.poll() is not None, 20, what="the PID file")
            assert p.poll() is None, p.communicate()
            # nsenter and setpriv exec: the PID file names the process we started.
            with open(pid_file) as f:
                assert int(f.read()) == p.pid
            assert _addrs(c, "eth0") == {f"{fakehost.HOST4}/24", f"{fakehost.HOST6}/64"}
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=10) == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_port_in_use_is_one_line(fh: fakehost.FakeHost) -> None:
    busy = subprocess.Popen(fh.argv(sys.executable, "-c", (
        "import socket,sys,time\n"
        "s=socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6,"
        "socket.IPV6_V6ONLY,0); s.bind(('::',18080)); s.listen(); print('up',flush=True);"
        "time.sleep(60)")), stdout=subprocess.PIPE, text=True)
    try:
        assert busy.stdout is not None and busy.stdout.readline() == "up\n"
        with make_container(fh.netns) as c:
            r = subprocess.run(_pasta_argv(fh.netns, "--config-net", "-t", "18080-18080:80-80",
                                           "-u", "none", "-T", "none", "-U", "none",
                                           str(c.pid)),
                               capture_output=True, text=True, timeout=30, env=user_env())
        assert r.returncode == 1
        assert r.stderr.count("\n") == 1, r.stderr
        assert ("Failed to bind port 18080 (Address already in use) for option "
                "'-t 18080-18080:80-80'") in r.stderr
    finally:
        busy.kill()
        busy.wait()


def test_offline_host_gets_local_mode(tmp_path: object) -> None:
    name = f"slirpy-offline-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        netns = f"/run/netns/{name}"
        subprocess.run(["nsenter", f"--net={netns}", "ip", "link", "set", "lo", "up"],
                       check=True)
        with make_container(netns) as c, _pasta(netns, c, tmp_path, *PODMAN_ARGS):
            assert "169.254.2.1/16" in _addrs(c, "tap0")
            routes = {(r["dst"], r.get("gateway")) for r in _ip_json(c, "route")}
            assert ("default", "169.254.2.2") in routes
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_published_port_keeps_the_client_address(fh: fakehost.FakeHost,
                                                 tmp_path: object) -> None:
    server = ("import socket\n"
              "s=socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6,"
              "socket.IPV6_V6ONLY,0); s.bind(('::',80)); s.listen(); print('up',flush=True)\n"
              "while True:\n"
              "  c,a=s.accept(); c.sendall(a[0].encode()+b'\\n'); c.close()\n")
    with make_container(fh.netns) as c, _pasta(
        fh.netns, c, tmp_path, "--config-net", "-t", "18081:80", "-u", "none", "-T", "none",
        "-U", "none", "--no-map-gw", "--map-guest-addr", GUEST_ADDR,
    ):
        srv = c.popen(sys.executable, "-c", server, stdout=subprocess.PIPE, text=True)
        assert srv.stdout.readline() == "up\n"
        # A remote client keeps its own address (TAP path)...
        got = fh.client(fakehost.HOST4, 18081, upstream=True).decode().strip()
        assert got == f"::ffff:{fakehost.GATEWAY4}"
        got6 = fh.client(fakehost.HOST6, 18081, upstream=True).decode().strip()
        assert got6 == fakehost.GATEWAY6
        # ...a loopback client is spliced: the container sees its own address.
        got_lo = fh.client("127.0.0.1", 18081).decode().strip()
        assert got_lo == f"::ffff:{fakehost.HOST4}"


def _session_members(sid: int) -> list[int]:
    """The PIDs of session `sid` (the backgrounded daemon setsid()s)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            if int(fields[3]) == sid:  # pid (comm) state ppid pgrp session
                out.append(int(name))
    return out


def test_one_process_with_a_port_spec(fh: fakehost.FakeHost, tmp_path: object) -> None:
    # Podman's argv for `-p 5201:5201`: the loopback client of the split
    # listener is spliced through a namespace socket that the engine makes
    # itself (csrc/nssock.c), with no namespace helper process.
    args = list(PODMAN_ARGS)
    args[args.index("-t") + 1] = "5201-5201:5201-5201"
    server = ("import socket\n"
              "s=socket.create_server(('0.0.0.0',5201)); print('up',flush=True)\n"
              "while True:\n"
              "  c,a=s.accept(); c.sendall(a[0].encode()+b'\\n'); c.close()\n")
    with make_container(fh.netns) as c, _pasta(fh.netns, c, tmp_path, *args) as d:
        pid = d.pid
        assert _session_members(pid) == [pid]
        srv = c.popen(sys.executable, "-c", server, stdout=subprocess.PIPE, text=True)
        assert srv.stdout.readline() == "up\n"
        for _ in range(3):
            got = fh.client("127.0.0.1", 5201).decode().strip()
            assert got == fakehost.HOST4  # spliced: the container sees its own address
        assert _session_members(pid) == [pid]


def test_tcp_ns_reaches_host_loopback(fh: fakehost.FakeHost, tmp_path: object) -> None:
    # The fake host's own peer service listens on all its addresses, loopback too.
    with make_container(fh.netns) as c, _pasta(
        fh.netns, c, tmp_path, "--config-net", "-t", "none", "-u", "none",
        "-T", str(fakehost.PEER_PORT), "-U", "none",
    ):
        out = c.sh(f"busybox nc 127.0.0.1 {fakehost.PEER_PORT} </dev/null").stdout.decode()
        assert out.split()[0] in ("127.0.0.1", "::ffff:127.0.0.1")


def test_auto_publishes_what_the_container_binds(fh: fakehost.FakeHost,
                                                 tmp_path: object) -> None:
    server = ("import socket\n"
              "s=socket.socket(); s.bind(('0.0.0.0',18082)); s.listen(); print('up',flush=True)\n"
              "while True:\n"
              "  c,a=s.accept(); c.sendall(b'auto\\n'); c.close()\n")
    with make_container(fh.netns) as c, _pasta(
        fh.netns, c, tmp_path, "--config-net", "-t", "auto", "-u", "none", "-T", "none",
        "-U", "none",
    ):
        with pytest.raises(fakehost.BedError):
            fh.client("127.0.0.1", 18082, timeout=2)
        srv = c.popen(sys.executable, "-c", server, stdout=subprocess.PIPE, text=True)
        assert srv.stdout.readline() == "up\n"

        def served() -> bool:
            with contextlib.suppress(fakehost.BedError):
                return fh.client("127.0.0.1", 18082, timeout=2) == b"auto\n"
            return False

        wait_until(served, 5, interval=0.2, what="the auto-published port")
        srv.kill()
        srv.wait()
        wait_until(lambda: not served(), 5, interval=0.2, what="the port unpublished")


def test_follows_a_host_address_change(fh: fakehost.FakeHost, tmp_path: object) -> None:
    extra = "198.51.100.7/24"
    with make_container(fh.netns) as c, _pasta(fh.netns, c, tmp_path, *PODMAN_ARGS):
        assert extra not in _addrs(c, "eth0")
        subprocess.run(fh.argv("ip", "addr", "add", extra, "dev", "eth0"), check=True)
        try:
            wait_until(lambda: extra in _addrs(c, "eth0"), 5, interval=0.05,
                       what="the new host address in the container")
        finally:
            subprocess.run(fh.argv("ip", "addr", "del", extra, "dev", "eth0"), check=False)
        wait_until(lambda: extra not in _addrs(c, "eth0"), 5, interval=0.05,
                   what="the removed host address gone from the container")


def _api(path: str, execute: str, **arguments: object) -> dict[str, object]:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(json.dumps({"execute": execute, "arguments": arguments}).encode() + b"\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return json.loads(data)


def test_api_socket_in_pasta_mode(fh: fakehost.FakeHost, tmp_path: object) -> None:
    api = os.path.join(str(tmp_path), "api.sock")
    server = ("import socket\n"
              "s=socket.socket(); s.bind(('0.0.0.0',80)); s.listen(); print('up',flush=True)\n"
              "while True:\n"
              "  c,a=s.accept(); c.sendall(b'via-api\\n'); c.close()\n")
    with make_container(fh.netns) as c, _pasta(fh.netns, c, tmp_path, *PODMAN_ARGS,
                                          "--api-socket", api):
        out = c.sh(f"busybox nc {fakehost.TEST_HOST4} {fakehost.PEER_PORT} </dev/null")
        assert out.stdout.decode().split()[0] == fakehost.HOST4
        stats = _api(api, "get_stats")["return"]
        assert stats["engine"]["tcp_flows_opened"] >= 1  # type: ignore[index]
        srv = c.popen(sys.executable, "-c", server, stdout=subprocess.PIPE, text=True)
        assert srv.stdout.readline() == "up\n"
        # A forward added at run time leads to the guest's (= the host's) address.
        added = _api(api, "add_hostfwd", proto="tcp", host_addr="127.0.0.1", host_port=18083,
                     guest_port=80)
        assert "return" in added, added
        assert fh.client("127.0.0.1", 18083) == b"via-api\n"
        listed = _api(api, "list_hostfwd")["return"]["entries"]  # type: ignore[index]
        assert listed[0]["guest_addr"] == fakehost.HOST4


def test_dhcp_offers_the_hosts_address(fh: fakehost.FakeHost, tmp_path: object) -> None:
    # Without --config-net the guest configures itself (as a VM would).
    with make_container(fh.netns) as c, _pasta(fh.netns, c, tmp_path, "-t", "none", "-u", "none",
                                          "-T", "none", "-U", "none"):
        r = c.sh("ip link set eth0 up && busybox udhcpc -i eth0 -n -q -f -s /bin/true 2>&1",
                 timeout=30)
        out = r.stdout.decode()
        assert f"lease of {fakehost.HOST4} obtained" in out, out
        assert f"from {fakehost.GATEWAY4}" in out, out


def test_command_mode_like_slirpy_run(fh: fakehost.FakeHost) -> None:
    script = (f"ip -o addr show dev eth0; cat /etc/resolv.conf; "
              f"busybox nc {fakehost.TEST_HOST4} {fakehost.PEER_PORT} </dev/null; "
              f"busybox nslookup www.{fakehost.DOMAIN}; exit 7")
    r = subprocess.run(_pasta_argv(fh.netns, "--dns-forward", "169.254.1.1", "--dns-host",
                                   fakehost.DNS4, "-t", "none", "-u", "none", "-T", "none",
                                   "-U", "none", "--", "sh", "-c", script),
                       capture_output=True, text=True, timeout=60, env=user_env())
    # The command's exit code; the namespace configured as with --config-net.
    assert r.returncode == 7, r.stderr
    assert f"inet {fakehost.HOST4}/24" in r.stdout
    assert "nameserver 169.254.1.1\n" in r.stdout
    assert f"{fakehost.HOST4} " in r.stdout  # the peer service saw the fake host's address
    assert f"Address: {fakehost.TEST_HOST4}" in r.stdout


UDP_ECHO = ("import socket,sys\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "s.bind(('127.0.0.1',int(sys.argv[1])))\n"
            "print('up',flush=True)\n"
            "while True:\n"
            "  d,a=s.recvfrom(2048); s.sendto(b'echo:'+d,a)\n")
UDP_CLIENT = ("import socket,sys\n"
              "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(2)\n"
              "for _ in range(5):\n"
              "  s.sendto(b'ping',('127.0.0.1',int(sys.argv[1])))\n"
              "  try:\n"
              "    print(s.recv(2048).decode()); break\n"
              "  except TimeoutError: pass\n")


@contextlib.contextmanager
def _host_udp_echo(fh: fakehost.FakeHost, port: int) -> Iterator[None]:
    p = subprocess.Popen(fh.argv(sys.executable, "-c", UDP_ECHO, str(port)),
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline() == "up\n"
        yield
    finally:
        p.kill()
        p.wait()


def test_udp_ns_reaches_host_loopback(fh: fakehost.FakeHost, tmp_path: object) -> None:
    with _host_udp_echo(fh, 18053), make_container(fh.netns) as c, _pasta(
        fh.netns, c, tmp_path, "--config-net", "-t", "none", "-u", "none", "-T", "none",
        "-U", "18053",
    ):
        out = c.run(sys.executable, "-c", UDP_CLIENT, "18053").stdout.decode()
        assert out.strip() == "echo:ping"


def test_tcp_ns_auto_follows_host_listeners(fh: fakehost.FakeHost, tmp_path: object) -> None:
    # -T auto: the fake host's own peer service (on all its addresses) shows
    # up on the namespace's loopback within a second or so.
    with make_container(fh.netns) as c, _pasta(
        fh.netns, c, tmp_path, "--config-net", "-t", "none", "-u", "none", "-T", "auto",
        "-U", "none",
    ):
        def reached() -> bool:
            r = c.sh(f"busybox nc 127.0.0.1 {fakehost.PEER_PORT} </dev/null", check=False)
            return r.returncode == 0 and bool(r.stdout.split())

        wait_until(reached, 5, interval=0.2, what="the host's port on the namespace's loopback")
