"""Inbound port forwarding through the real daemon: host client -> slirpy -> guest.

What this file owns: the end-to-end tests of forwarded ports (issue 5). Each test
starts slirpy-slirp4netns as the unprivileged user with ``--api-socket``, adds
forwards the way Podman and RootlessKit do (JSON + "\\n" in one write, half-close,
read the reply), and most run a second time on `slirpy.Network` (the library,
tests/helpers/daemons.py's `LibSlirpy`) with its `publish()` and `stats()` instead; each runs a
real server inside the container (Python, through nsenter) and checks what host
clients get: bytes and their sha256, the address the guest saw, resets, refusals.

Traffic goes only to the host's loopback, or to a test host in its own network
namespace (testhost.py: a veth pair on a free /29 of TEST-NET-2); every process
and namespace is removed even when a test fails.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers.portfwd import (
    GATEWAY,
    GUEST,
    Forwarding,
    add_fwd,
    api_call,
    echo_roundtrip,
    recv_all,
    recv_exact,
    recv_line,
    sha,
    wait_guest_listening,
)
from tests.helpers.testbed import Container, free_port
from tests.helpers.testhost import TestHost

# ------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("mtu", "library"), [(65520, False), (1500, False), (65520, True)],
                         ids=["65520", "1500", "library-65520"])
def test_tcp_forward_bulk_both_ways_byte_exact(fwd_factory, mtu: int, library: bool) -> None:
    f = fwd_factory(mtu=mtu, library=library)
    port = free_port()
    f.add(proto="tcp", host_addr="127.0.0.1", host_port=port, guest_addr=GUEST, guest_port=80)
    f.guest_server("echo", 80)
    payload = random.Random(mtu).randbytes(8 * 1024 * 1024 + 12345)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        got = echo_roundtrip(s, payload)
    assert len(got) == len(payload)
    assert sha(got) == sha(payload)
    counters = f.counters()
    assert counters["tcp_flows_inbound"] == 1
    assert counters["tcp_bytes_to_guest"] >= len(payload)
    assert counters["tcp_bytes_to_host"] >= len(payload)
    f.alive()


def test_tcp_guest_closes_first_host_sees_eof(any_fwd: Forwarding) -> None:
    """The guest writes and closes (busybox nc): the host reads it all, then EOF."""
    fwd = any_fwd
    port = free_port()
    fwd.add(proto="tcp", host_port=port, guest_port=8000)
    body = b"".join(b"line %05d from the guest\n" % i for i in range(2000))
    srv = fwd.c.popen(
        "busybox", "nc", "-l", "-p", "8000", stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    assert srv.stdin is not None
    srv.stdin.write(body)
    srv.stdin.close()
    wait_guest_listening(fwd.c, 8000)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        got = recv_all(s)
    assert sha(got) == sha(body)
    assert srv.wait(timeout=10) == 0


def test_remove_closes_listener_but_keeps_established(any_fwd: Forwarding) -> None:
    fwd = any_fwd
    port = free_port()
    fwd_id = fwd.add(proto="tcp", host_addr="127.0.0.1", host_port=port,
                     guest_port=80)
    fwd.guest_server("echo", 80)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"before remove\n")
        assert recv_exact(s, 14) == b"before remove\n"
        fwd.remove(fwd_id)
        # The listener is gone: a new connection is refused by the host kernel.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        if fwd.lib is None:  # the API socket's listing (the library has none)
            listing = api_call(fwd.api, {"execute": "list_hostfwd"})
            assert listing["entries"] == [] and listing["return"] == {"entries": []}
        # The established connection does not care.
        payload = random.Random(7).randbytes(1 << 20)
        got = echo_roundtrip(s, payload)
        assert sha(got) == sha(payload)
    fwd.alive()


def test_udp_forward_two_clients_get_their_own_replies(any_fwd: Forwarding) -> None:
    fwd = any_fwd
    port = free_port(socket.AF_INET)
    fwd.add(proto="udp", host_addr="127.0.0.1", host_port=port, guest_port=5353)
    fwd.guest_server("udp", 5353)
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for c in clients:
            c.bind(("127.0.0.1", 0))
            c.settimeout(5)
        sent: dict[int, list[bytes]] = {i: [] for i in range(2)}
        for n in range(5):  # interleaved: the flows must not mix
            for i, c in enumerate(clients):
                msg = b"client %d datagram %d " % (i, n) + bytes([i]) * (100 + 500 * n)
                sent[i].append(msg)
                c.sendto(msg, ("127.0.0.1", port))
        for i, c in enumerate(clients):
            cport = c.getsockname()[1]
            got = []
            for _ in range(5):
                data, src = c.recvfrom(65535)
                assert src == ("127.0.0.1", port)  # replies come from the forwarded port
                got.append(data)
            # The guest saw each loopback client as the gateway, with its own port.
            prefix = f"{GATEWAY} {cport}|".encode()
            assert all(d.startswith(prefix) for d in got), got
            assert sorted(d[len(prefix):] for d in got) == sorted(sent[i])
            c.settimeout(0.3)
            with pytest.raises(TimeoutError):  # nothing of the other client's
                c.recvfrom(65535)
    finally:
        for c in clients:
            c.close()
    counters = fwd.counters()
    assert counters["udp_datagrams_to_guest"] == 10
    assert counters["udp_datagrams_to_host"] == 10


def test_source_address_loopback_client_is_gateway(any_fwd: Forwarding) -> None:
    fwd = any_fwd
    port = free_port()
    fwd.add(proto="tcp", host_addr="127.0.0.1", host_port=port, guest_port=80)
    fwd.guest_server("peer", 80)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        cport = s.getsockname()[1]
        assert recv_line(s) == f"{GATEWAY} {cport}\n".encode()


def test_source_address_preserved_for_test_host_client(any_fwd: Forwarding,
                                                       testhost: TestHost) -> None:
    fwd = any_fwd
    port = free_port()
    fwd.add(proto="tcp", host_addr="0.0.0.0", host_port=port, guest_port=80)
    fwd.guest_server("peer", 80)
    client = (
        "import socket,sys\n"
        f"s=socket.create_connection(({testhost.root_addr!r},{port}),timeout=10)\n"
        "l=b''\n"
        "while not l.endswith(b'\\n'):\n"
        "    c=s.recv(1)\n"
        "    assert c, l\n"
        "    l+=c\n"
        "s.sendall(b'ping-from-test-host');s.shutdown(socket.SHUT_WR)\n"
        "e=b''\n"
        "while c:=s.recv(4096): e+=c\n"
        "sys.stdout.write(l.decode()+str(s.getsockname()[1])+'\\n'+e.decode())\n"
    )
    r = subprocess.run(
        [*testhost.exec_prefix(), sys.executable, "-c", client],
        capture_output=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr.decode()
    peer_line, cport, echoed = r.stdout.decode().split("\n", 2)
    assert peer_line == f"{testhost.addr} {cport}"
    assert echoed == "ping-from-test-host"


@pytest.mark.parametrize("host_addr", ["::1", "::"])
def test_ipv6_listener_to_ipv4_guest(fwd: Forwarding, host_addr: str) -> None:
    port = free_port(socket.AF_INET6)
    add_fwd(fwd.api, proto="tcp", host_addr=host_addr, host_port=port, guest_port=80)
    listing = api_call(fwd.api, {"execute": "list_hostfwd"})
    assert listing["entries"][0]["host_addr"] == host_addr  # type: ignore[index]
    fwd.guest_server("peer", 80)
    payload = random.Random(6).randbytes(3 << 20)
    with socket.create_connection(("::1", port), timeout=10) as s:
        # A loopback client of either family is the guest's IPv4 gateway.
        assert recv_line(s) == f"{GATEWAY} {s.getsockname()[1]}\n".encode()
        got = echo_roundtrip(s, payload)
    assert sha(got) == sha(payload)
    if host_addr == "::":
        # "::" with proto "tcp" is dual-stack: an IPv4 client works too.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            assert recv_line(s) == f"{GATEWAY} {s.getsockname()[1]}\n".encode()
            assert echo_roundtrip(s, b"v4 on a dual-stack forward") == b"v4 on a dual-stack forward"


def test_udp_ipv6_listener_to_ipv4_guest(any_fwd: Forwarding) -> None:
    fwd = any_fwd
    port = free_port(socket.AF_INET6)
    fwd.add(proto="udp6", host_addr="::1", host_port=port, guest_port=5353)
    fwd.guest_server("udp", 5353)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as c:
        c.settimeout(5)
        c.bind(("::1", 0))
        c.sendto(b"over ipv6", ("::1", port))
        data, src = c.recvfrom(65535)
        assert src[:2] == ("::1", port)
        assert data == f"{GATEWAY} {c.getsockname()[1]}|over ipv6".encode()


def test_guest_refuses_host_client_reset_quickly(any_fwd: Forwarding) -> None:
    fwd = any_fwd
    port = free_port()
    fwd.add(proto="tcp", host_addr="127.0.0.1", host_port=port, guest_port=81)
    t0 = time.monotonic()
    # The host kernel accepts; the guest answers our SYN with RST, and the client
    # must learn it as a reset, not wait for a timeout. The reset may even beat
    # connect()'s own check of the socket's error.
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s,
        pytest.raises(ConnectionResetError),
    ):
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        s.recv(100)
    assert time.monotonic() - t0 < 3
    counters = fwd.counters()
    assert counters["tcp_flows_inbound"] == 1
    assert counters["tcp_flows_closed"] == 1
    flows = fwd.flows()
    assert flows == []
    fwd.alive()


def test_100_parallel_connections_distinct_payloads(any_fwd: Forwarding) -> None:
    fwd = any_fwd
    port = free_port()
    fwd.add(proto="tcp", host_addr="127.0.0.1", host_port=port, guest_port=80)
    fwd.guest_server("echo", 80)
    barrier = threading.Barrier(100, timeout=30)

    def one(i: int) -> tuple[int, str, str]:
        payload = (b"connection %03d:" % i) + random.Random(i).randbytes(20000 + 997 * i)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            barrier.wait()  # all 100 open at once before any data moves
            got = echo_roundtrip(s, payload)
        return i, sha(payload), sha(got)

    with ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(one, range(100)))
    assert [i for i, _, _ in results] == list(range(100))
    bad = [i for i, want, got in results if want != got]
    assert bad == []
    counters = fwd.counters()
    assert counters["tcp_flows_inbound"] == 100
    assert counters["drop_half_open_cap"] == 0 and counters["drop_flow_cap"] == 0
    fwd.alive()


def _guest_v6_addr(c: Container, timeout: float = 10.0) -> str:
    """The guest's SLAAC address in fd00::/64 once DAD is over."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        links = json.loads(c.run("ip", "-j", "-6", "addr", "show", "dev", "tap0").stdout)
        for a in links[0]["addr_info"] if links else []:
            if (str(a["local"]).startswith("fd00:") and a.get("scope") == "global"
                    and not a.get("tentative")):
                return str(a["local"])
        time.sleep(0.1)
    raise AssertionError("no SLAAC address in the guest")


def test_forward_to_guest_ipv6_address(fwd_factory) -> None:
    """tcp6/udp6 forwards to the guest's IPv6 address: a loopback client
    appears as fd00::2, bytes arrive exact both ways."""
    f = fwd_factory("-6", f"--dns-upstream=127.0.0.1:{free_port()}")
    gaddr = _guest_v6_addr(f.c)
    tport, uport = free_port(socket.AF_INET6), free_port(socket.AF_INET6)
    add_fwd(f.api, proto="tcp6", host_addr="::1", host_port=tport, guest_addr=gaddr,
            guest_port=8080)
    add_fwd(f.api, proto="udp6", host_addr="::1", host_port=uport, guest_addr=gaddr,
            guest_port=5353)
    entries = api_call(f.api, {"execute": "list_hostfwd"})["entries"]
    assert [e["guest_addr"] for e in entries] == [gaddr, gaddr]  # type: ignore[index]
    f.guest_server("peer6", 8080)
    f.guest_server("udp6", 5353)
    payload = random.Random(66).randbytes(4 << 20)
    with socket.create_connection(("::1", tport), timeout=10) as s:
        assert recv_line(s) == f"fd00::2 {s.getsockname()[1]}\n".encode()
        assert sha(echo_roundtrip(s, payload)) == sha(payload)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as c:
        c.settimeout(5)
        c.bind(("::1", 0))
        c.sendto(b"to the guest's v6", ("::1", uport))
        data, src = c.recvfrom(65535)
        cport = c.getsockname()[1]
    assert src[:2] == ("::1", uport)
    assert data == f"fd00::2 {cport}|to the guest's v6".encode()
    f.alive()
