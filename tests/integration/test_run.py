"""`slirpy run -- CMD` and the `slirpy.Network` library, end to end (issue 9).

What this file owns: the tests of the developer command and of the library,
both run as the unprivileged test user (uid 65534) with no set-up of their own:
outbound traffic to a host-loopback server through N+2, `--no-host-loopback`,
exit codes (0, 7, 126, 127, 128+N), `-p` published TCP and UDP ports (IPv4 and
a bracketed IPv6 host address), signals forwarded to CMD, DNS through the
injected resolv.conf with `--dns-upstream` at a loopback fake server (the
host's resolv.conf untouched), `-v` and `--stats`, one-line errors for
disabled user namespaces and an unusable /dev/net/tun, and `Network` /
`AsyncNetwork` creating a namespace or attaching to a container's.

Traffic goes only to the host's loopback, never off the machine; DNS only to a
`FakeDns` on 127.0.0.1. Every slirpy started here is killed and reaped even
when a test fails; its namespaces die with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import random
import re
import shlex
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from slirpy.config import NetworkModel, parse_cidr
from slirpy.control.report import stats_table
from slirpy.host.spawn import guest_resolv_conf, userns_error
from tests.helpers.fake_dns import fake_dns
from tests.helpers.slirpy_run import PY, read_line, run_fg, slirpy_run
from tests.helpers.testbed import AS_USER, UID, Container, free_port, user_env
from tests.helpers.testhost import make_testhost

GUEST = "10.0.2.100"
GATEWAY = "10.0.2.2"
class HostServer:
    """TCP server on loopback: reads to EOF, answers sha256(received) + `payload`."""

    def __init__(self, payload: bytes, host: str = "127.0.0.1") -> None:
        self.payload = payload
        self.received_sha: list[str] = []
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, 0), family=fam)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(20)
                h = hashlib.sha256()
                with contextlib.suppress(OSError):
                    while chunk := conn.recv(1 << 16):
                        h.update(chunk)
                    self.received_sha.append(h.hexdigest())
                    conn.sendall(h.hexdigest().encode() + self.payload)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=5)


@pytest.fixture
def host_server() -> Iterator[HostServer]:
    srv = HostServer(random.Random(9).randbytes(300_000))
    try:
        yield srv
    finally:
        srv.close()


# The guest's client: sends `size` random bytes to HOST:PORT, half-closes, reads
# everything back; prints what it sent and got as JSON, or the errno name.
GUEST_CLIENT = r"""
import errno, hashlib, json, os, socket, sys, time
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
linger = float(sys.argv[4]) if len(sys.argv) > 4 else 0
data = os.urandom(size)
try:
    s = socket.create_connection((host, port), timeout=20)
except OSError as e:
    print(json.dumps({"error": errno.errorcode.get(e.errno, str(e))}))
    sys.exit(3)
s.sendall(data)
time.sleep(linger)
s.shutdown(socket.SHUT_WR)
got = b""
while chunk := s.recv(1 << 16):
    got += chunk
print(json.dumps({"sent": hashlib.sha256(data).hexdigest(),
                  "echo": got[:64].decode(),
                  "rest": hashlib.sha256(got[64:]).hexdigest()}))
"""


def test_outbound_to_host_loopback_through_gateway(host_server: HostServer) -> None:
    r = run_fg([], [PY, "-c", GUEST_CLIENT, GATEWAY, str(host_server.port), "500000"])
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["sent"] == res["echo"] == host_server.received_sha[0]
    assert res["rest"] == hashlib.sha256(host_server.payload).hexdigest()


def test_ipv6_is_usable_as_soon_as_cmd_starts() -> None:
    # No sleep in the guest: slirpy runs CMD only once SLAAC gave tap0 an address.
    srv = HostServer(b"six", host="::1")
    try:
        client = shlex.join([PY, "-c", GUEST_CLIENT, "fd00::2", str(srv.port), "1000"])
        script = f"head -2 /etc/resolv.conf; exec {client}"
        r = run_fg(["--ipv6"], ["sh", "-c", script])
    finally:
        srv.close()
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == ["nameserver 10.0.2.3", "nameserver fd00::3"]
    res = json.loads(lines[2])
    assert res["sent"] == res["echo"] == srv.received_sha[0]
    assert res["rest"] == hashlib.sha256(b"six").hexdigest()


def test_no_host_loopback_refuses_the_gateway(host_server: HostServer) -> None:
    r = run_fg(["--no-host-loopback"], [PY, "-c", GUEST_CLIENT, GATEWAY,
                                        str(host_server.port), "10"])
    assert r.returncode == 3, r.stderr
    assert json.loads(r.stdout) == {"error": "ENETUNREACH"}
    assert host_server.received_sha == []


def test_guest_sees_its_network() -> None:
    script = (
        "ip -4 -o addr show tap0; ip route; ip -o link show tap0; "
        "ip -o link show lo; echo uid=$(id -u); cat /etc/resolv.conf"
    )
    r = run_fg(["--mtu=9000", "--cidr=10.9.0.0/24"], ["sh", "-c", script])
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "inet 10.9.0.100/24" in out
    assert "default via 10.9.0.2 dev tap0" in out
    assert "tap0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 9000" in out
    assert "LOOPBACK,UP" in out
    assert "uid=0" in out  # the caller is root inside
    assert "nameserver 10.9.0.3" in out


def test_keep_id_runs_as_the_caller() -> None:
    # A caller uid that is neither the test user (65534 by default) nor the
    # kernel's overflow uid, which `id -u` shows for an unmapped uid: only
    # --keep-id's mapping can make CMD see this one.
    overflow = int(pathlib.Path("/proc/sys/kernel/overflowuid").read_text())
    uid = next(u for u in (54321, 54322) if u not in (overflow, UID))
    r = run_fg(["--keep-id"], ["id", "-u"], uid=uid)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(uid)
    r = run_fg([], ["id", "-u"], uid=uid)  # without it the caller is root inside
    assert r.stdout.strip() == "0", r.stderr


@pytest.mark.parametrize(
    ("cmd", "code", "message"),
    [
        (["true"], 0, ""),
        (["sh", "-c", "exit 7"], 7, ""),
        (["slirpy-no-such-command"], 127, "slirpy: slirpy-no-such-command: command not found"),
        (["sh", "-c", "kill -KILL $$"], 128 + 9, ""),
    ],
)
def test_exit_code_propagation(cmd: list[str], code: int, message: str) -> None:
    r = run_fg([], cmd)
    assert r.returncode == code, r.stderr
    if message:
        assert r.stderr.strip().splitlines() == [message]
    else:
        assert r.stderr == ""


def test_not_executable_is_126(shared_dir: object) -> None:
    path = f"{shared_dir}/script.sh"
    with open(path, "w") as f:
        f.write("#!/bin/sh\necho ran\n")
    os.chmod(path, 0o644)
    r = run_fg([], [path])
    assert r.returncode == 126
    assert r.stdout == ""
    assert r.stderr.strip().splitlines() == [f"slirpy: {path}: permission denied (not executable)"]


# A guest server for -p: TCP echo (to EOF, then half-close) on 8000 and a UDP
# echo on 8001 (each datagram back prefixed "udp:"); prints READY when both
# listen and exits 0 after `n` TCP connections and one datagram.
GUEST_SERVER = r"""
import socket, sys, threading
n = int(sys.argv[1])
t = socket.create_server(("0.0.0.0", 8000))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", 8001))
print("READY", flush=True)
def udp():
    d, a = u.recvfrom(65535)
    u.sendto(b"udp:" + d, a)
th = threading.Thread(target=udp)
th.start()
for _ in range(n):
    c, _ = t.accept()
    while d := c.recv(1 << 16):
        c.sendall(d)
    c.shutdown(socket.SHUT_WR)
    c.close()
th.join()
"""


def tcp_echo(addr: tuple[str, int], data: bytes) -> bytes:
    fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect(addr)
        got = bytearray()

        def reader() -> None:
            while chunk := s.recv(1 << 16):
                got.extend(chunk)

        th = threading.Thread(target=reader)
        th.start()
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        th.join(timeout=30)
        return bytes(got)


def test_publish_tcp_and_udp() -> None:
    tcp4, tcp6, udp = free_port(), free_port(socket.AF_INET6), free_port()
    args = [
        "-p", f"127.0.0.1:{tcp4}:8000",
        "--publish", f"[::1]:{tcp6}:8000/tcp",
        "-p", f"127.0.0.1:{udp}:8001/udp",
    ]
    with slirpy_run(args, [PY, "-c", GUEST_SERVER, "2"]) as proc:
        assert read_line(proc) == "READY"
        data = random.Random(1).randbytes(1_000_000)
        assert hashlib.sha256(tcp_echo(("127.0.0.1", tcp4), data)).digest() == (
            hashlib.sha256(data).digest()
        )
        assert tcp_echo(("::1", tcp6), b"over ipv6") == b"over ipv6"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(1)
            for _ in range(10):  # bounded: UDP may be lost, retry a few times
                u.sendto(b"ping", ("127.0.0.1", udp))
                try:
                    reply, _ = u.recvfrom(100)
                    break
                except TimeoutError:
                    continue
            else:
                raise AssertionError("no UDP echo through the published port")
        assert reply == b"udp:ping"
        assert proc.wait(timeout=20) == 0
    # The ports are released once slirpy is gone.
    with socket.create_server(("127.0.0.1", tcp4)):
        pass


def test_publish_port_in_use_is_one_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        r = run_fg(["-p", f"127.0.0.1:{port}:80"], ["sh", "-c", "echo ran"])
    assert r.returncode == 1
    assert r.stdout == ""  # CMD never ran
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"slirpy: cannot publish 127.0.0.1:{port}")
    assert "Address already in use" in lines[0]


# Traps TERM, HUP and INT; exits 40+signal number after printing its name.
GUEST_TRAP = r"""
import os, signal, sys, time
def on(sig, frame):
    # os.write: the signal may land while print("READY") is still returning.
    os.write(1, signal.Signals(sig).name.encode() + b"\n")
    os._exit(40 + sig)
for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
    signal.signal(s, on)
print("READY", flush=True)
time.sleep(60)
sys.exit(1)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signals_are_forwarded_to_cmd(sig: signal.Signals) -> None:
    with slirpy_run([], [PY, "-c", GUEST_TRAP]) as proc:
        assert read_line(proc) == "READY"
        proc.send_signal(sig)
        assert read_line(proc) == sig.name
        assert proc.wait(timeout=20) == 40 + sig


def test_untrapped_sigterm_gives_128_plus_15() -> None:
    with slirpy_run([], ["sh", "-c", "echo READY; exec sleep 60"]) as proc:
        assert read_line(proc) == "READY"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM


GUEST_RESOLVE = r"""
import socket
print(open("/etc/resolv.conf").read().split("\n")[0])
print(socket.getaddrinfo("alpha.slirpy.test", 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
"""


def test_dns_through_injected_resolv_conf() -> None:
    with open("/etc/resolv.conf", "rb") as f:
        before = f.read()
    records = {"alpha.slirpy.test": "192.0.2.10"}
    with fake_dns("127.0.0.1", records) as dns:  # type: ignore[arg-type]
        r = run_fg(["--dns-upstream", f"127.0.0.1:{dns.port}"], [PY, "-c", GUEST_RESOLVE])
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["nameserver", "10.0.2.3", "192.0.2.10"]
        assert ("udp", "alpha.slirpy.test", 1) in dns.log
    with open("/etc/resolv.conf", "rb") as f:
        assert f.read() == before


def test_verbose_logs_flows_and_stats_table(host_server: HostServer) -> None:
    r = run_fg(["-v", "--stats"], [PY, "-c", GUEST_CLIENT, GATEWAY, str(host_server.port),
                                   "100000", "0.6"])
    assert r.returncode == 0, r.stderr
    err = r.stderr
    assert f"slirpy: flow open  tcp {GUEST}:" in err
    assert f"-> {GATEWAY}:{host_server.port}" in err
    assert f"slirpy: flow close tcp {GUEST}:" in err
    assert "slirpy: statistics" in err
    tcp_row = next(ln for ln in err.splitlines() if ln.strip().startswith("tcp flows"))
    assert "1 opened" in tcp_row
    sent_row = next(ln for ln in err.splitlines() if "tcp to host / to guest" in ln)
    # The guest sent 100000 bytes and got 64 + 300000 back.
    assert "100000 bytes" in sent_row and "300064 bytes" in sent_row


# The guest opens a TCP connection to HOST:TPORT and closes it at once, sends
# one UDP datagram to HOST:UPORT, and prints its ports and how long the TCP
# connection lived; it then waits (bounded) so the close completes before exit.
GUEST_SHORT_FLOWS = r"""
import socket, sys, time
host, tport, uport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t0 = time.monotonic()
s = socket.create_connection((host, tport), timeout=5)
sport = s.getsockname()[1]
s.close()
lived = time.monotonic() - t0
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.sendto(b"one datagram", (host, uport))
print(sport, u.getsockname()[1], f"{lived * 1000:.2f}", flush=True)
time.sleep(0.5)
"""


def test_verbose_logs_open_and_close_of_a_short_tcp_flow_and_udp() -> None:
    tsrv = socket.create_server(("127.0.0.1", 0))
    usrv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    usrv.bind(("127.0.0.1", 0))
    usrv.settimeout(20)
    tsrv.settimeout(20)

    def accept_and_close() -> None:
        with contextlib.suppress(OSError):
            conn, _ = tsrv.accept()
            conn.close()

    t = threading.Thread(target=accept_and_close, daemon=True)
    t.start()
    try:
        tport, uport = tsrv.getsockname()[1], usrv.getsockname()[1]
        client = shlex.join([PY, "-c", GUEST_SHORT_FLOWS, GATEWAY, str(tport), str(uport)])
        r = run_fg(["-v"], ["sh", "-c", client])
        assert r.returncode == 0, r.stderr
        assert usrv.recv(100) == b"one datagram"
    finally:
        tsrv.close()
        usrv.close()
        t.join(timeout=5)
    sport, usport, lived_ms = r.stdout.split()
    assert float(lived_ms) < 200  # shorter than the old 0.2 s flow-table poll
    lines = r.stderr.splitlines()
    tcp = f"tcp {GUEST}:{sport} -> {GATEWAY}:{tport}"
    assert f"slirpy: flow open  {tcp}" in lines, r.stderr
    (close,) = [ln for ln in lines if ln.startswith(f"slirpy: flow close {tcp} ")]
    assert re.fullmatch(r".* fin after [0-9.]+ (us|ms|s), out 0 B, in 0 B", close), close
    assert f"slirpy: flow open  udp {GUEST}:{usport} -> {GATEWAY}:{uport}" in lines, r.stderr


def test_verbose_logs_icmp_echo_flow() -> None:
    with make_testhost() as th:
        r = run_fg(["-v"], ["busybox", "ping", "-c", "1", "-W", "5", th.addr])
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(rf"^slirpy: flow open  icmp {GUEST} -> {re.escape(th.addr)} id \d+$",
                     r.stderr, re.M), r.stderr


def test_userns_disabled_is_one_line() -> None:
    # user.max_user_namespaces is per user namespace: set it to 0 in a namespace
    # of our own, and run slirpy there (as that namespace's root).
    script = (
        "echo 0 > /proc/sys/user/max_user_namespaces && "
        f"exec {PY} -m slirpy run -- true"
    )
    r = subprocess.run(
        [*AS_USER, "unshare", "--user", "--map-root-user", "sh", "-c", script],
        capture_output=True, text=True, env=user_env(), cwd="/tmp", timeout=60,
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "slirpy: cannot create a user namespace: user namespaces are disabled "
        "(user.max_user_namespaces=0); enable them with 'sysctl -w user.max_user_namespaces=15000'"
    ]


def test_unusable_tun_is_one_line(shared_dir: object) -> None:
    node = f"{shared_dir}/tun"
    setup = f"mknod {node} c 10 200 && chmod 600 {node} && mount --bind {node} /dev/net/tun"
    user = " ".join(AS_USER)
    r = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"{setup} && exec {user} {PY} -m slirpy run -- true"],
        capture_output=True, text=True, env=user_env(), cwd="/tmp", timeout=60,
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "slirpy: cannot open /dev/net/tun: Permission denied "
        "(it must be readable and writable by this user: chmod 0666 /dev/net/tun)"
    ]


# The library, run by the test user: create a namespace (Network()), publish a
# port, serve in the guest, connect from the host, read stats; then the same
# with AsyncNetwork attached to an existing container by PID.
LIB_SCRIPT = r"""
import asyncio, hashlib, json, socket, subprocess, sys
import slirpy

SERVER = '''
import socket
s = socket.create_server(("0.0.0.0", 8000))
print("READY", flush=True)
c, _ = s.accept()
while d := c.recv(65536):
    c.sendall(d)
c.close()
'''

def exchange(port, data):
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return got

def serve_and_check(cmd, port):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"READY\n"
    data = bytes(range(256)) * 4000
    ok = exchange(port, data) == data
    p.wait(timeout=20)
    return ok

mode, port = sys.argv[1], int(sys.argv[2])
if mode == "sync":
    with slirpy.Network(mtu=9000) as net:
        fid = net.publish(port, 8000)
        ok = serve_and_check(net.command(sys.executable, "-c", SERVER), port)
        link = subprocess.run(net.command("ip", "-o", "link", "show", "tap0"),
                              capture_output=True, text=True).stdout
        st = net.stats()
        mtu = link.split(" mtu ")[1].split()[0]
        print(json.dumps({"id": fid, "ok": ok, "mtu": mtu, "pid": net.pid,
                          "inbound": st["engine"]["tcp_flows_inbound"],
                          "forwards": st["forwards"]}))
else:
    target = int(sys.argv[3])
    async def main():
        async with slirpy.AsyncNetwork(target) as net:
            fid = net.publish(port, 8000)
            cmd = ["nsenter", "-t", str(target), "-U", "-n", "--preserve-credentials",
                   sys.executable, "-c", SERVER]
            ok = await asyncio.to_thread(serve_and_check, cmd, port)
            st = net.stats()
            return {"id": fid, "ok": ok, "inbound": st["engine"]["tcp_flows_inbound"]}
    print(json.dumps(asyncio.run(main())))
"""


def _lib(args: list[str]) -> dict[str, object]:
    # A session of its own: on a timeout the whole group goes, including
    # the server the script started in the namespace (a plain timeout
    # kills only the script and leaves that one running).
    p = subprocess.Popen(
        [*AS_USER, PY, "-c", LIB_SCRIPT, *args], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=user_env(), cwd="/tmp", start_new_session=True,
    )
    try:
        out, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        out, err = "", "timed out after 120 s"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert p.returncode == 0, err
    return json.loads(out)


def test_library_network_creates_a_namespace() -> None:
    res = _lib(["sync", str(free_port())])
    assert res["ok"] is True
    assert res["id"] == 1 and res["forwards"] == 1 and res["inbound"] == 1
    assert res["mtu"] == "9000"
    # The namespace holder is gone with the Network.
    assert not os.path.exists(f"/proc/{res['pid']}")


def test_library_async_network_attaches_to_a_container(container: Container) -> None:
    res = _lib(["async", str(free_port()), str(container.pid)])
    assert res == {"id": 1, "ok": True, "inbound": 1}


# Pure helpers: the messages and texts the tests above cannot provoke safely.


def test_userns_error_names_the_sysctl(shared_dir: object, monkeypatch: pytest.MonkeyPatch) -> None:
    root = f"{shared_dir}/sys"
    os.makedirs(f"{root}/kernel")
    os.makedirs(f"{root}/user")
    with open(f"{root}/kernel/unprivileged_userns_clone", "w") as f:
        f.write("0\n")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    msg = userns_error(PermissionError(1, "x"), proc_sys=root)
    assert "kernel.unprivileged_userns_clone=0" in msg
    assert "sysctl -w kernel.unprivileged_userns_clone=1" in msg
    os.unlink(f"{root}/kernel/unprivileged_userns_clone")
    with open(f"{root}/kernel/apparmor_restrict_unprivileged_userns", "w") as f:
        f.write("1\n")
    assert "AppArmor" in userns_error(PermissionError(1, "x"), proc_sys=root)
    os.unlink(f"{root}/kernel/apparmor_restrict_unprivileged_userns")
    with open(f"{root}/user/max_user_namespaces", "w") as f:
        f.write("10\n")
    msg = userns_error(OSError(28, "x"), proc_sys=root)
    assert "limit" in msg and "user.max_user_namespaces=10" in msg


def test_guest_resolv_conf_keeps_search_domains(shared_dir: object) -> None:
    host = f"{shared_dir}/resolv.conf"
    with open(host, "w") as f:
        f.write("nameserver 192.0.2.53\nsearch corp.test lab.test\noptions edns0\n")
    net = NetworkModel(cidr=parse_cidr("10.5.0.0/24"), ipv6=True)
    assert guest_resolv_conf(net, host) == (
        "nameserver 10.5.0.3\nnameserver fd00::3\nsearch corp.test lab.test\n"
    )
    assert guest_resolv_conf(NetworkModel(), f"{shared_dir}/missing") == "nameserver 10.0.2.3\n"


def test_stats_table_lists_drops_by_reason() -> None:
    text = stats_table(
        {"frames_in": 5, "bytes_in": 300, "drop_ip_fragment": 2, "drop_flow_cap": 0},
        {"dns": {"udp_queries": 3, "tcp_queries": 1, "udp_answered": 3, "tcp_answered": 1}},
    )
    lines = text.splitlines()
    assert lines[0] == "slirpy: statistics"
    assert any("guest -> slirpy" in ln and "5 frames" in ln and "300 bytes" in ln for ln in lines)
    assert any("dns queries" in ln and "4 queries" in ln and "4 answered" in ln for ln in lines)
    assert lines[-2].split() == ["drops", "2"]
    assert lines[-1].split() == ["ip_fragment", "2"]
