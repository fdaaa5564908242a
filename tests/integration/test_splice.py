"""Spliced forwarded ports end to end: host client -> slirpy -> splice() -> guest.

What this file owns: the tests of ``"splice": true`` forwards (issue 7 item 4).
slirpy-slirp4netns runs as the unprivileged user with ``--api-socket``; a spliced
forward makes slirpy fork its namespace helper, which creates sockets inside the
container's network namespace; the engine connects them to the guest's own
address and moves bytes with splice(). A real server runs in the container.
Checked: bytes and sha256 both ways, half-close, the source address the guest
sees (its own, where the TAP path shows 10.0.2.2), refusal, removal, the
sandbox, fd accounting, and the helper's death with slirpy.

Traffic goes only to the host's loopback and the container; every process is
removed even when a test fails (fixtures of conftest.py and test_portfwd.py).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable

import pytest

from tests.helpers.portfwd import (
    GATEWAY,
    GUEST,
    Forwarding,
    add_fwd,
    api_call,
    echo_roundtrip,
    recv_all,
    recv_line,
    remove_fwd,
    sha,
)
from tests.helpers.slirpy_run import PY, read_line, slirpy_run
from tests.helpers.testbed import AS_USER, free_port, user_env

# A guest server mode the shared GUEST_SERVER lacks: read to EOF, then answer
# with the sha256 of what came, then close (needs the half-close passed on).
SHA_SERVER = r"""
import hashlib, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
print("READY", flush=True)
while True:
    c, _ = s.accept()
    h = hashlib.sha256()
    while d := c.recv(1 << 16):
        h.update(d)
    c.sendall(h.hexdigest().encode() + b"\n")
    c.close()
"""


def counters(f: Forwarding) -> dict[str, int]:
    return api_call(f.api, {"execute": "get_stats"})["return"]["engine"]  # type: ignore[index]


def add_splice(f: Forwarding, port: int, guest_port: int, **kw: object) -> int:
    return add_fwd(f.api, proto="tcp", host_addr="127.0.0.1", host_port=port,
                   guest_port=guest_port, splice=True, **kw)


def nfds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_nfds(pid: int) -> int:
    """The fd count once stable: an API connection just answered may still be
    open for a moment (the stats request that came before)."""
    last = nfds(pid)
    for _ in range(50):
        time.sleep(0.1)
        now = nfds(pid)
        if now == last:
            return now
        last = now
    return last


def children(pid: int) -> list[int]:
    out: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as fh:
            out += [int(x) for x in fh.read().split()]
    return out


def wait_until(cond: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_splice_bulk_both_ways_byte_exact(fwd: Forwarding) -> None:
    port = free_port()
    add_splice(fwd, port, 80, guest_addr=GUEST)
    fwd.guest_server("echo", 80)
    payload = random.Random(7).randbytes(64 * 1024 * 1024 + 4321)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        got = echo_roundtrip(s, payload)
    assert len(got) == len(payload)
    assert sha(got) == sha(payload)
    ctr = counters(fwd)
    assert ctr["splice_opened"] == 1
    assert ctr["splice_bytes_to_guest"] == len(payload)
    assert ctr["splice_bytes_to_host"] == len(payload)
    assert ctr["tcp_flows_inbound"] == 0  # not through the TAP
    assert wait_until(lambda: counters(fwd)["splice_closed"] == 1)
    fwd.alive()


def test_splice_half_close_server_still_answers(fwd: Forwarding) -> None:
    port = free_port()
    add_splice(fwd, port, 81)
    srv = fwd.c.popen("python3", "-c", SHA_SERVER, "81", stdout=subprocess.PIPE)
    try:
        assert srv.stdout is not None and srv.stdout.readline() == b"READY\n"
        body = random.Random(3).randbytes(3 * 1024 * 1024 + 17)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(body)
            s.shutdown(socket.SHUT_WR)  # the server answers only after EOF
            answer = recv_all(s)
        assert answer == sha(body).encode() + b"\n"
    finally:
        srv.kill()
        srv.wait(timeout=10)
    fwd.alive()


def test_splice_source_address_is_the_guests_own(fwd: Forwarding) -> None:
    spliced, plain = free_port(), free_port()
    add_splice(fwd, spliced, 82)
    add_fwd(fwd.api, proto="tcp", host_addr="127.0.0.1", host_port=plain, guest_port=82)
    fwd.guest_server("peer", 82)
    with socket.create_connection(("127.0.0.1", spliced), timeout=10) as s:
        addr_spliced = recv_line(s).split()[0].decode()
    with socket.create_connection(("127.0.0.1", plain), timeout=10) as s:
        addr_plain = recv_line(s).split()[0].decode()
    assert addr_spliced == GUEST  # documented: the guest's own address
    assert addr_plain == GATEWAY  # the default path is unchanged: N+2


def test_splice_refused_in_guest_closes_client(fwd: Forwarding) -> None:
    port = free_port()
    add_splice(fwd, port, 83)  # nothing listens on 83 in the guest
    try:
        # The reset may even beat connect()'s return on a busy machine.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            data = s.recv(100)
    except ConnectionResetError:
        data = b""
    assert data == b""
    assert wait_until(lambda: counters(fwd)["splice_refused"] == 1)
    fwd.alive()


def test_splice_remove_stops_new_connections(fwd: Forwarding) -> None:
    port = free_port()
    fwd_id = add_splice(fwd, port, 84)
    fwd.guest_server("echo", 84)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert echo_roundtrip(s, b"hello") == b"hello"
    listed = api_call(fwd.api, {"execute": "list_hostfwd"})["entries"]
    assert listed == [{"id": fwd_id, "proto": "tcp", "host_addr": "127.0.0.1",
                       "host_port": port, "guest_addr": GUEST, "guest_port": 84,
                       "splice": True}]
    assert remove_fwd(fwd.api, fwd_id) == {"return": {}}
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    fwd.alive()


def test_splice_bad_requests_get_one_error_line(fwd: Forwarding) -> None:
    for args in ({"proto": "tcp", "host_port": free_port(), "guest_port": 80, "splice": "yes"},
                 {"proto": "udp", "host_port": free_port(), "guest_port": 80, "splice": True}):
        reply = api_call(fwd.api, {"execute": "add_hostfwd", "arguments": args})
        assert reply == {"error": {"desc": "bad request: add_hostfwd: bad arguments.splice"}}
    assert api_call(fwd.api, {"execute": "list_hostfwd"})["entries"] == []
    fwd.alive()


def test_splice_under_sandbox_and_seccomp(fwd_factory: Callable[..., Forwarding]) -> None:
    f = fwd_factory("--enable-sandbox", "--enable-seccomp", "--splice-helper")
    port = free_port()
    add_splice(f, port, 85)
    f.guest_server("echo", 85)
    payload = random.Random(5).randbytes(4 * 1024 * 1024)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        got = echo_roundtrip(s, payload)
    assert sha(got) == sha(payload)
    assert counters(f)["splice_opened"] == 1
    assert len(children(f.slirpy.proc.pid)) == 1  # the helper, forked before confinement
    f.alive()


def test_confined_without_splice_helper_forks_nothing_and_refuses_splice(
    fwd_factory: Callable[..., Forwarding],
) -> None:
    # Podman's command line: no helper process for a feature its clients never use.
    f = fwd_factory("--enable-sandbox", "--enable-seccomp")
    assert children(f.slirpy.proc.pid) == []
    args = {"proto": "tcp", "host_addr": "127.0.0.1", "host_port": free_port(),
            "guest_port": 87, "splice": True}
    reply = api_call(f.api, {"execute": "add_hostfwd", "arguments": args})
    desc = reply["error"]["desc"]  # type: ignore[index]
    assert desc.startswith("bad request: add_hostfwd: splice: ") and "--splice-helper" in desc
    assert api_call(f.api, {"execute": "list_hostfwd"})["entries"] == []
    assert children(f.slirpy.proc.pid) == []
    f.alive()


def test_splice_many_connections_leak_no_fd(fwd: Forwarding) -> None:
    port = free_port()
    add_splice(fwd, port, 86)
    fwd.guest_server("echo", 86)
    pid = fwd.slirpy.proc.pid
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert echo_roundtrip(s, b"warm-up") == b"warm-up"
    assert wait_until(lambda: counters(fwd)["splice_closed"] == 1)
    before = settled_nfds(pid)
    for i in range(200):
        msg = b"connection %d" % i
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            assert echo_roundtrip(s, msg) == msg
    assert wait_until(lambda: counters(fwd)["splice_closed"] == 201)
    assert settled_nfds(pid) == before
    ctr = counters(fwd)
    assert ctr["splice_opened"] == 201
    assert ctr["splice_resets"] == 0
    fwd.alive()


def test_splice_forks_no_helper_process(fwd: Forwarding) -> None:
    # Unconfined, the engine makes the namespace sockets itself (a
    # short-lived clone() child per batch, csrc/nssock.c): no second process.
    pid = fwd.slirpy.proc.pid
    port = free_port()
    add_splice(fwd, port, 87)
    assert children(pid) == []
    fwd.guest_server("echo", 87)
    for i in range(20):  # more than one refill of the socket pool
        msg = b"no helper %d" % i
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            assert echo_roundtrip(s, msg) == msg
    assert counters(fwd)["splice_opened"] == 20
    assert children(pid) == []
    fwd.alive()


def test_confined_splice_helper_dies_with_slirpy(
    fwd_factory: Callable[..., Forwarding],
) -> None:
    f = fwd_factory("--enable-seccomp", "--splice-helper")
    kids = children(f.slirpy.proc.pid)
    assert len(kids) == 1  # forked before confinement
    f.slirpy.proc.send_signal(signal.SIGKILL)
    f.slirpy.proc.wait(timeout=10)
    assert wait_until(lambda: not os.path.exists(f"/proc/{kids[0]}"))


# For `slirpy run -p .../splice` and the library: one connection, the peer's
# address as the guest sees it on a line, then echo to EOF.
PEER_SERVER = r"""
import socket
s = socket.create_server(("0.0.0.0", 8000))
print("READY", flush=True)
c, a = s.accept()
c.sendall(("%s\n" % a[0]).encode())
while d := c.recv(65536):
    c.sendall(d)
c.close()
"""


def _peer_and_echo(port: int, data: bytes) -> tuple[str, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = recv_all(s)
    line, _, rest = got.partition(b"\n")
    return line.decode(), rest


def test_slirpy_run_publish_splice() -> None:
    port = free_port()
    with slirpy_run(["-p", f"127.0.0.1:{port}:8000/splice"], [PY, "-c", PEER_SERVER]) as proc:
        assert read_line(proc) == "READY"
        data = random.Random(9).randbytes(2_000_000)
        peer, got = _peer_and_echo(port, data)
        assert peer == GUEST  # the guest's own address: spliced
        assert sha(got) == sha(data)
        assert proc.wait(timeout=20) == 0


LIB_SCRIPT = r"""
import json, socket, subprocess, sys
import slirpy

port, server = int(sys.argv[1]), sys.argv[2]
with slirpy.Network() as net:
    fid = net.publish(port, 8000, splice=True)
    p = subprocess.Popen(net.command(sys.executable, "-c", server), stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"READY\n"
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(b"library")
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    p.wait(timeout=20)
    st = net.stats()["engine"]
    print(json.dumps({"got": got.decode(), "opened": st["splice_opened"],
                      "inbound": st["tcp_flows_inbound"]}))
"""


def test_library_publish_splice() -> None:
    port = free_port()
    r = subprocess.run(
        [*AS_USER, PY, "-c", LIB_SCRIPT, str(port), PEER_SERVER],
        capture_output=True, text=True, env=user_env(), cwd="/tmp", timeout=120,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {"got": f"{GUEST}\nlibrary", "opened": 1, "inbound": 0}


def test_splice_ipv6_to_the_guests_loopback(fwd: Forwarding) -> None:
    """tcp6 from the host's ::1 to the guest's own ::1: the helper makes an IPv6
    socket in the namespace; a service bound to the guest's loopback, which the
    TAP path cannot reach, is reachable spliced (and sees ::1 as its peer)."""
    port = free_port(socket.AF_INET6)
    add_fwd(fwd.api, proto="tcp6", host_addr="::1", host_port=port, guest_addr="::1",
            guest_port=88, splice=True)
    fwd.guest_server("peer6", 88)
    data = random.Random(6).randbytes(1_000_000)
    with socket.create_connection(("::1", port), timeout=20) as s:
        peer = recv_line(s).split()[0].decode()
        got = echo_roundtrip(s, data)
    assert peer == "::1"
    assert sha(got) == sha(data)
    fwd.alive()
