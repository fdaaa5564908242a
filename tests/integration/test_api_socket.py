"""The API socket of the real daemon, as Podman and RootlessKit use it.

What this file owns: every reply and error text of the slirp4netns API contract
(the replies and texts slirp4netns itself gives) checked byte for byte against a
running slirpy-slirp4netns (unprivileged, ``--api-socket``): add/list/remove,
ids, each ``bad request: ...`` text, ports in use, the daemon surviving a batch
of bad requests, and the ``get_stats`` / ``list_flows`` observability calls.
The client is a real AF_UNIX client doing what Podman does: the JSON and "\\n"
in one write, shutdown(SHUT_WR), read the reply to EOF.

Data only goes to the host's loopback (forwarded ports on 127.0.0.1 / ::1).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import stat
import time

import pytest

from tests.helpers.daemons import start_slirpy
from tests.helpers.portfwd import (
    GATEWAY,
    GUEST,
    Forwarding,
    api_call,
    api_dir,
    echo_roundtrip,
    recv_line,
    sha,
)
from tests.helpers.testbed import UID, Container, free_port

PREFIX = "bad request: "

# (request bytes, the exact error text slirp4netns gives for it)
BAD_REQUESTS: list[tuple[bytes, str]] = [
    (b"{not json\n", "bad request: cannot parse JSON"),
    (b"", "bad request: cannot parse JSON"),
    (b'{"execute":"list_hostfwd"\n', "bad request: cannot parse JSON"),
    (b"[1, 2, 3]\n", "bad request: no execute found"),
    (b'{"arguments":{}}\n', "bad request: no execute found"),
    (b'{"execute":42}\n', "bad request: no execute found"),
    (b'{"execute":"frobnicate"}\n', "bad request: unknown execute"),
    # slirp4netns 1.2 dies on these two (NULL proto); slirpy must answer.
    (b'{"execute":"add_hostfwd"}\n', "bad request: add_hostfwd: bad arguments.proto"),
    (
        b'{"execute":"add_hostfwd","arguments":{"host_port":8080,"guest_port":80}}\n',
        "bad request: add_hostfwd: bad arguments.proto",
    ),
    (
        b'{"execute":"add_hostfwd","arguments":{"proto":"sctp","host_port":1,"guest_port":1}}\n',
        "bad request: add_hostfwd: bad arguments.proto",
    ),
    (
        b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"localhost",'
        b'"host_port":8080,"guest_port":80}}\n',
        "bad request: add_hostfwd: bad arguments.host_addr",
    ),
    (
        b'{"execute":"add_hostfwd","arguments":{"proto":"tcp4","host_addr":"::1",'
        b'"host_port":8080,"guest_port":80}}\n',
        "bad request: add_hostfwd: bad arguments.host_addr",
    ),
    (
        b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","guest_port":80}}\n',
        "bad request: add_hostfwd: bad arguments.host_port",
    ),
    (
        b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":0,"guest_port":80}}\n',
        "bad request: add_hostfwd: bad arguments.host_port",
    ),
    (
        b'{"execute":"add_hostfwd","arguments":{"proto":"udp","host_port":65536,'
        b'"guest_port":80}}\n',
        "bad request: add_hostfwd: bad arguments.host_port",
    ),
    (
        b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":"8080",'
        b'"guest_port":80}}\n',
        "bad request: add_hostfwd: bad arguments.host_port",
    ),
    (
        b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":true,'
        b'"guest_port":80}}\n',
        "bad request: add_hostfwd: bad arguments.host_port",
    ),
    (
        b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":8080,'
        b'"guest_addr":"10.0.2.300","guest_port":80}}\n',
        "bad request: add_hostfwd: bad arguments.guest_addr",
    ),
    (
        b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":8080}}\n',
        "bad request: add_hostfwd: bad arguments.guest_port",
    ),
    (
        b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":8080,'
        b'"guest_port":80.5}}\n',
        "bad request: add_hostfwd: bad arguments.guest_port",
    ),
    (b'{"execute":"remove_hostfwd"}\n', "bad request: remove_hostfwd: bad arguments.id"),
    (
        b'{"execute":"remove_hostfwd","arguments":{"id":"1"}}\n',
        "bad request: remove_hostfwd: bad arguments.id",
    ),
    (
        b'{"execute":"remove_hostfwd","arguments":{"id":12345}}\n',
        "bad request: remove_hostfwd: bad arguments.id",
    ),
    (
        b'{"execute":"list_hostfwd","padding":"' + b"x" * 5000 + b'"}\n',
        "bad request: too large message",
    ),
]


def raw_call(path: str, raw: bytes, *, half_close: bool = True, timeout: float = 10) -> bytes:
    """Send `raw` in one write, optionally half-close, read the reply to EOF."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(raw)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def error_of(reply: bytes) -> str:
    obj = json.loads(reply)
    assert set(obj) == {"error"} and set(obj["error"]) == {"desc"}, obj
    return str(obj["error"]["desc"])


def add(path: str, **arguments: object) -> dict[str, object]:
    return api_call(path, {"execute": "add_hostfwd", "arguments": arguments})


def listing(path: str) -> list[dict[str, object]]:
    reply = api_call(path, {"execute": "list_hostfwd"})
    # Both shapes, always identical: slirp4netns's top-level "entries" and its
    # manual's "return.entries".
    assert set(reply) == {"return", "entries"}, reply
    assert reply["return"] == {"entries": reply["entries"]}
    return reply["entries"]  # type: ignore[return-value]


def entry(fwd_id: int, proto: str, host_addr: str, host_port: int, guest_port: int,
          guest_addr: str = GUEST) -> dict[str, object]:
    return {"id": fwd_id, "proto": proto, "host_addr": host_addr, "host_port": host_port,
            "guest_addr": guest_addr, "guest_port": guest_port}


# ------------------------------------------------------------------------------- tests


def test_add_list_remove_replies_and_ids(fwd: Forwarding) -> None:
    p1, p2, p3, p4 = (free_port() for _ in range(4))
    assert listing(fwd.api) == []
    # The exact bytes Podman reads back.
    raw = json.dumps({"execute": "add_hostfwd", "arguments": {
        "proto": "tcp", "host_addr": "127.0.0.1", "host_port": p1,
        "guest_addr": GUEST, "guest_port": 80}}).encode() + b"\n"
    assert raw_call(fwd.api, raw) == b'{"return":{"id":1}}'
    assert add(fwd.api, proto="udp", host_addr="127.0.0.1", host_port=p2,
               guest_port=53) == {"return": {"id": 2}}
    assert listing(fwd.api) == [
        entry(1, "tcp", "127.0.0.1", p1, 80),
        entry(2, "udp", "127.0.0.1", p2, 53),
    ]
    raw = b'{"execute":"remove_hostfwd","arguments":{"id":1}}\n'
    assert raw_call(fwd.api, raw) == b'{"return":{}}'
    assert error_of(raw_call(fwd.api, raw)) == "bad request: remove_hostfwd: bad arguments.id"
    # Ids are never reused: the next one is 3, not 1.
    # Empty host_addr / missing guest_addr take the defaults (0.0.0.0, N+100).
    assert add(fwd.api, proto="tcp", host_addr="", host_port=p3,
               guest_port=8080) == {"return": {"id": 3}}
    assert add(fwd.api, proto="tcp6", host_addr="::1", host_port=p4, guest_addr=GUEST,
               guest_port=22) == {"return": {"id": 4}}
    assert listing(fwd.api) == [
        entry(2, "udp", "127.0.0.1", p2, 53),
        entry(3, "tcp", "0.0.0.0", p3, 8080),
        entry(4, "tcp6", "::1", p4, 22),
    ]
    # The listeners really exist: bound by the daemon (uid 65534) on those ports.
    for port, fam, host in ((p3, socket.AF_INET, "127.0.0.1"), (p4, socket.AF_INET6, "::1")):
        with socket.socket(fam, socket.SOCK_STREAM) as s, pytest.raises(OSError) as exc:
            s.bind((host, port))
        assert exc.value.errno == 98  # EADDRINUSE
    for fwd_id in (2, 3, 4):
        assert api_call(fwd.api, {"execute": "remove_hostfwd", "arguments": {"id": fwd_id}}) == {
            "return": {}
        }
    assert listing(fwd.api) == []
    # And the ports are free again: nothing is left bound.
    for port, fam, host in ((p3, socket.AF_INET, "127.0.0.1"), (p4, socket.AF_INET6, "::1")):
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            s.bind((host, port))
    assert add(fwd.api, proto="udp", host_port=p2, guest_port=53) == {"return": {"id": 5}}


def test_port_in_use_fails_cleanly(fwd: Forwarding) -> None:
    failed = "bad request: add_hostfwd: slirp_add_hostfwd failed"
    port = free_port()
    assert add(fwd.api, proto="tcp", host_port=free_port(), guest_port=80) == {"return": {"id": 1}}
    before = listing(fwd.api)
    # Someone else owns the TCP port. It sets SO_REUSEADDR like any server (so
    # that its TIME-WAIT leftovers do not block the add below); a listener
    # conflicts whatever the flag.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as owner:
        owner.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        owner.bind(("127.0.0.1", port))
        owner.listen(1)
        assert add(fwd.api, proto="tcp", host_addr="127.0.0.1", host_port=port,
                   guest_port=80) == {"error": {"desc": failed}}
        assert listing(fwd.api) == before  # nothing half-added
        # The owner still gets its own connections: slirpy did not take the port.
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            conn, _ = owner.accept()
            conn.close()
    # A failed add takes no id; the port, once free, can be forwarded.
    assert add(fwd.api, proto="tcp", host_addr="127.0.0.1", host_port=port,
               guest_port=80) == {"return": {"id": 2}}
    # The same forward twice: the second fails, the first stays.
    assert add(fwd.api, proto="tcp", host_addr="127.0.0.1", host_port=port,
               guest_port=81) == {"error": {"desc": failed}}
    # UDP too (no SO_REUSEADDR sharing of a forwarded port).
    uport = free_port()
    assert add(fwd.api, proto="udp", host_addr="127.0.0.1", host_port=uport,
               guest_port=53) == {"return": {"id": 3}}
    assert add(fwd.api, proto="udp", host_addr="127.0.0.1", host_port=uport,
               guest_port=54) == {"error": {"desc": failed}}
    assert [e["id"] for e in listing(fwd.api)] == [1, 2, 3]
    assert add(fwd.api, proto="udp", host_port=free_port(), guest_port=53) == {
        "return": {"id": 4}
    }
    fwd.alive()


@pytest.mark.parametrize(("raw", "desc"), BAD_REQUESTS, ids=[d for _, d in BAD_REQUESTS])
def test_bad_request_error_text(fwd: Forwarding, raw: bytes, desc: str) -> None:
    reply = raw_call(fwd.api, raw)
    assert error_of(reply) == desc
    assert reply == json.dumps({"error": {"desc": desc}}, separators=(",", ":")).encode()
    assert listing(fwd.api) == []
    fwd.alive()


def test_requests_without_half_close_or_newline(fwd: Forwarding) -> None:
    """Clients that neither half-close nor end with a newline still get answers."""
    port = free_port()
    req = json.dumps({"execute": "add_hostfwd", "arguments": {
        "proto": "tcp", "host_port": port, "guest_port": 80}}).encode()
    assert raw_call(fwd.api, req, half_close=False) == b'{"return":{"id":1}}'
    assert raw_call(fwd.api, b'{"execute":"list_hostfwd"}', half_close=True).startswith(
        b'{"return":{"entries":[{"id":1,'
    )
    t0 = time.monotonic()
    assert error_of(raw_call(fwd.api, b'{"execute":"nope"}', half_close=False)) == (
        "bad request: unknown execute"
    )
    assert time.monotonic() - t0 < 2  # answered on the complete object, not a timeout


def test_daemon_survives_50_bad_requests_then_forwards(fwd: Forwarding) -> None:
    rng = random.Random(50)
    for _ in range(50):
        raw, desc = rng.choice(BAD_REQUESTS)
        assert error_of(raw_call(fwd.api, raw)) == desc
    fwd.alive()
    assert listing(fwd.api) == []
    port = free_port()
    assert add(fwd.api, proto="tcp", host_addr="127.0.0.1", host_port=port,
               guest_port=80) == {"return": {"id": 1}}
    fwd.guest_server("echo", 80)
    payload = random.Random(1).randbytes(1 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert sha(echo_roundtrip(s, payload)) == sha(payload)


def test_get_stats_and_list_flows(fwd: Forwarding) -> None:
    port = free_port()
    add(fwd.api, proto="tcp", host_addr="127.0.0.1", host_port=port, guest_port=80)
    fwd.guest_server("peer", 80)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        cport = s.getsockname()[1]
        assert recv_line(s) == f"{GATEWAY} {cport}\n".encode()
        s.sendall(b"12345")
        assert s.recv(5) == b"12345"
        flows = api_call(fwd.api, {"execute": "list_flows"})["return"]["flows"]  # type: ignore[index]
        mine = [f for f in flows if f["proto"] == "tcp" and f["remote_port"] == cport]
        assert mine == [{
            "proto": "tcp", "family": 4, "guest": GUEST, "guest_port": 80,
            "remote": GATEWAY, "remote_port": cport, "state": 3,  # established
        }]
        stats = api_call(fwd.api, {"execute": "get_stats"})
        assert set(stats) == {"return"}
        st = stats["return"]
        assert st["forwards"] == 1  # type: ignore[index]
        engine = st["engine"]  # type: ignore[index]
        assert all(isinstance(v, int) and v >= 0 for v in engine.values())
        assert engine["tcp_flows_inbound"] == 1
        assert engine["tcp_flows_opened"] >= 1
        assert engine["tcp_bytes_to_guest"] == 5
        assert engine["tcp_bytes_to_host"] == len(f"{GATEWAY} {cport}\n") + 5
        assert engine["frames_in"] > 0 and engine["frames_out"] > 0
        for section in ("dhcp", "dns"):
            assert isinstance(st[section], dict)  # type: ignore[index]
    # Closed on both sides: the flow goes away (bounded wait, FIN exchange).
    deadline = time.monotonic() + 5
    while True:
        flows = api_call(fwd.api, {"execute": "list_flows"})["return"]["flows"]  # type: ignore[index]
        if not [f for f in flows if f["proto"] == "tcp"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [f for f in flows if f["proto"] == "tcp"] == []
    engine = api_call(fwd.api, {"execute": "get_stats"})["return"]["engine"]  # type: ignore[index]
    assert engine["tcp_flows_closed"] == 1


def test_api_socket_file_lifecycle(container: Container, slirpy_factory) -> None:
    """A stale socket file left by a dead daemon is replaced; an orderly exit
    removes the file; a path of 108 bytes or more is refused before start."""
    with api_dir() as d:
        path = f"{d}/api.sock"
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(path)
        stale.close()  # the file stays, nothing listens: a crashed daemon's leftover
        os.chown(path, UID, UID)  # as a dead daemon of this user would leave it
        with pytest.raises(ConnectionRefusedError):
            raw_call(path, b'{"execute":"list_hostfwd"}')
        s = slirpy_factory(["-c", f"--api-socket={path}", str(container.pid), "tap0"])
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert listing(path) == []
        assert add(path, proto="tcp", host_addr="127.0.0.1", host_port=free_port(),
                   guest_port=80) == {"return": {"id": 1}}
        assert s.stop(signal.SIGTERM) == 0
        assert not os.path.exists(path)
        # 108 bytes: one more than sun_path can hold with its NUL.
        long_path = f"{d}/" + "a" * (108 - len(d) - 1)
        assert len(long_path) == 108
        bad = start_slirpy(["-c", f"--api-socket={long_path}", str(container.pid), "tap0"],
                           wait_ready=False)
        rc = bad.proc.wait(timeout=20)
        _, err = bad.output()
        assert rc != 0 and "--api-socket path is too long (108 bytes" in err, (rc, err)
        assert not os.path.exists(long_path)


def test_stalled_api_clients_never_stall_data_or_other_requests(fwd: Forwarding) -> None:
    """Clients that connect and never finish a request (silent, half a JSON
    object, a huge unterminated string) must not block forwarding or other
    API clients: the API lives on the event loop next to the data path."""
    port = free_port()
    assert add(fwd.api, proto="tcp", host_addr="127.0.0.1", host_port=port,
               guest_port=80) == {"return": {"id": 1}}
    fwd.guest_server("echo", 80)
    stalled: list[socket.socket] = []
    try:
        for i in range(30):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(fwd.api)
            if i % 3 == 1:
                s.sendall(b'{"execute":"list_hos')
            elif i % 3 == 2:
                s.sendall(b'{"execute":"' + b"x" * 3000)
            stalled.append(s)
        t0 = time.monotonic()
        payload = random.Random(9).randbytes(8 << 20)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            assert sha(echo_roundtrip(c, payload)) == sha(payload)
        assert listing(fwd.api)[0]["id"] == 1
        assert time.monotonic() - t0 < 10
    finally:
        for s in stalled:
            s.close()
    fwd.alive()
