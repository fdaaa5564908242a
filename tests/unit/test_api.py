"""Tests for slirpy.control.api: the sans-IO core byte for byte, and ApiServer over a real
Unix socket with plain asyncio and with uvloop."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slirpy.control import api
from slirpy.control.api import (
    ApiServer,
    ApiSocketError,
    HostFwd,
    HostFwdError,
    HostFwdRequest,
    HostFwdTable,
    handle_request,
    parse_request,
)

GUEST = "10.0.2.100"


class FakeHandler:
    """An ApiHandler over HostFwdTable; host port 1 is "in use"."""

    def __init__(self) -> None:
        self.table = HostFwdTable()
        self.boom: Exception | None = None  # raised by every method when set

    def _maybe_boom(self) -> None:
        if self.boom is not None:
            raise self.boom

    def add_hostfwd(self, fwd: HostFwdRequest) -> int:
        self._maybe_boom()
        if fwd.host_port == 1:
            raise HostFwdError("address in use")
        if fwd.host_port == 2:
            raise OSError(98, "Address already in use")
        return self.table.add(fwd).id

    def list_hostfwd(self) -> list[HostFwd]:
        self._maybe_boom()
        return self.table.entries()

    def remove_hostfwd(self, fwd_id: int) -> None:
        self._maybe_boom()
        self.table.remove(fwd_id)

    def get_stats(self) -> dict[str, object]:
        self._maybe_boom()
        return {"flows": 3, "tcp": {"open": 1}}

    def list_flows(self) -> list[dict[str, object]]:
        self._maybe_boom()
        return [{"proto": "tcp", "guest": "10.0.2.100:1234"}]


def req(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def add(**args: Any) -> bytes:
    return req({"execute": "add_hostfwd", "arguments": args})


def call(data: bytes, handler: FakeHandler | None = None) -> bytes:
    return handle_request(data, handler or FakeHandler(), default_guest_addr=GUEST)


def err(desc: str) -> bytes:
    return b'{"error":{"desc":"bad request: ' + desc.encode() + b'"}}'


GOOD = {"proto": "tcp", "host_addr": "0.0.0.0", "host_port": 8080, "guest_port": 80}

# ------------------------------------------------------------------ reply shapes


def test_add_list_remove_exact_bytes() -> None:
    h = FakeHandler()
    assert call(add(**GOOD), h) == b'{"return":{"id":1}}'
    assert call(add(proto="udp", host_port=5353, guest_port=53), h) == b'{"return":{"id":2}}'
    entries = (
        b'[{"id":1,"proto":"tcp","host_addr":"0.0.0.0","host_port":8080,'
        b'"guest_addr":"10.0.2.100","guest_port":80},'
        b'{"id":2,"proto":"udp","host_addr":"0.0.0.0","host_port":5353,'
        b'"guest_addr":"10.0.2.100","guest_port":53}]'
    )
    assert (
        call(req({"execute": "list_hostfwd"}), h)
        == b'{"return":{"entries":' + entries + b'},"entries":' + entries + b"}"
    )
    assert call(req({"execute": "remove_hostfwd", "arguments": {"id": 1}}), h) == b'{"return":{}}'


def test_splice_extension_parsed_and_listed_only_when_true() -> None:
    h = FakeHandler()
    assert call(add(**GOOD, splice=True), h) == b'{"return":{"id":1}}'
    assert call(add(**{**GOOD, "host_port": 8081}, splice=False), h) == b'{"return":{"id":2}}'
    assert call(add(**{**GOOD, "host_port": 8082}, splice=None), h) == b'{"return":{"id":3}}'
    assert [e.splice for e in h.table.entries()] == [True, False, False]
    listed = json.loads(call(req({"execute": "list_hostfwd"}), h))["entries"]
    assert listed[0]["splice"] is True
    assert "splice" not in listed[1] and "splice" not in listed[2]  # slirp4netns's shape
    assert list(listed[0]) == [
        "id", "proto", "host_addr", "host_port", "guest_addr", "guest_port", "splice"
    ]


@pytest.mark.parametrize(
    ("extra", "proto"),
    [("yes", "tcp"), (1, "tcp"), (0, "tcp"), ("true", "tcp"), ([True], "tcp"),
     ({}, "tcp6"), (True, "udp"), (True, "udp6")],
)
def test_bad_splice(extra: Any, proto: str) -> None:
    args = {**GOOD, "proto": proto, "splice": extra}
    if proto.endswith("6"):
        args["host_addr"] = "::"
    assert call(add(**args)) == err("add_hostfwd: bad arguments.splice")


def test_splice_checked_after_slirp4netns_fields() -> None:
    assert call(add(**{**GOOD, "guest_port": 0}, splice="x")) == err(
        "add_hostfwd: bad arguments.guest_port"
    )


def test_list_empty_has_both_keys() -> None:
    reply = call(b'{"execute":"list_hostfwd"}')
    assert reply == b'{"return":{"entries":[]},"entries":[]}'


def test_ids_never_reused() -> None:
    h = FakeHandler()
    ids = [json.loads(call(add(**GOOD, guest_addr=""), h))["return"]["id"] for _ in range(3)]
    assert ids == [1, 2, 3]
    assert call(req({"execute": "remove_hostfwd", "arguments": {"id": 3}}), h) == b'{"return":{}}'
    assert call(req({"execute": "remove_hostfwd", "arguments": {"id": 2}}), h) == b'{"return":{}}'
    assert call(add(**GOOD), h) == b'{"return":{"id":4}}'
    # A failed add uses no id (slirp4netns allocates after slirp_add_hostfwd).
    assert call(add(**{**GOOD, "host_port": 1}), h) == err("add_hostfwd: slirp_add_hostfwd failed")
    assert call(add(**GOOD), h) == b'{"return":{"id":5}}'
    listed = json.loads(call(b'{"execute":"list_hostfwd"}', h))
    assert [e["id"] for e in listed["entries"]] == [1, 4, 5]
    assert listed["entries"] == listed["return"]["entries"]


def test_host_fwd_table() -> None:
    t = HostFwdTable()
    r = HostFwdRequest("tcp", "0.0.0.0", 80, GUEST, 80)
    a, b = t.add(r), t.add(r)
    assert (a.id, b.id, t.next_id, len(t)) == (1, 2, 3, 2)
    assert t.remove(1) == a and 1 not in t and 2 in t
    with pytest.raises(KeyError):
        t.remove(1)
    with pytest.raises(KeyError):
        t.get(7)
    assert t.add(r).id == 3
    assert [f.id for f in t.entries()] == [2, 3]
    assert a.request == r


def test_get_stats_and_list_flows() -> None:
    assert call(b'{"execute":"get_stats"}') == b'{"return":{"flows":3,"tcp":{"open":1}}}'
    assert (
        call(b'{"execute":"list_flows"}\n')
        == b'{"return":{"flows":[{"proto":"tcp","guest":"10.0.2.100:1234"}]}}'
    )


def test_defaults_and_normalisation() -> None:
    for host in (None, ""):
        args: dict[str, Any] = {"proto": "tcp", "host_port": 80, "guest_port": 80}
        if host is not None:
            args["host_addr"] = host
            args["guest_addr"] = ""
        r = parse_request(add(**args), default_guest_addr=GUEST)
        assert isinstance(r, api.AddHostFwd)
        assert r.fwd == HostFwdRequest("tcp", "0.0.0.0", 80, GUEST, 80)
    r = parse_request(add(proto="udp6", host_port=53, guest_port=53), default_guest_addr=GUEST)
    assert isinstance(r, api.AddHostFwd) and r.fwd.host_addr == "::"
    assert r.fwd.transport == "udp" and r.fwd.host_family == socket.AF_INET6
    r = parse_request(
        add(
            proto="tcp", host_addr="::0001", host_port=8080.0, guest_addr="FD00::64", guest_port=80
        ),
        default_guest_addr=GUEST,
    )
    assert isinstance(r, api.AddHostFwd)
    assert r.fwd == HostFwdRequest("tcp", "::1", 8080, "fd00::64", 80)
    assert r.fwd.guest_family == socket.AF_INET6
    assert parse_request(
        add(**{**GOOD, "host_addr": None}), default_guest_addr=GUEST
    ) == api.AddHostFwd(HostFwdRequest("tcp", "0.0.0.0", 8080, GUEST, 80))


@pytest.mark.parametrize("proto", sorted(api.PROTOS))
def test_all_protos_accepted(proto: str) -> None:
    host = "::" if proto.endswith("6") else "127.0.0.1"
    assert call(add(proto=proto, host_addr=host, host_port=9, guest_port=9)) == (
        b'{"return":{"id":1}}'
    )


def test_newline_and_whitespace_tolerated() -> None:
    for suffix in (b"\n", b"\r\n", b"  \n\n", b""):
        assert call(add(**GOOD) + suffix) == b'{"return":{"id":1}}'


# ------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\n",
        b"{",
        b"not json",
        b'{"execute":"list_hostfwd"',
        b"\xff\xfe{}",
        b"NaN",
        b'{"execute":"list_hostfwd","x":Infinity}',
        b"[" * 4000,
        b'{"execute":"x"}{}',
        b'{"execute":"list_hostfwd"}\x00',
    ],
)
def test_cannot_parse(data: bytes) -> None:
    assert call(data) == err("cannot parse JSON")


@pytest.mark.parametrize(
    "data",
    [
        b"{}",
        b"[]",
        b"42",
        b'"add_hostfwd"',
        b"null",
        b'{"execute":1}',
        b'{"execute":null}',
        b'{"Execute":"list_hostfwd"}',
        b'{"execute":["list_hostfwd"]}',
    ],
)
def test_no_execute(data: bytes) -> None:
    assert call(data) == err("no execute found")


@pytest.mark.parametrize("name", ["", "add", "ADD_HOSTFWD", "list_hostfwd ", "quit"])
def test_unknown_execute(name: str) -> None:
    assert call(req({"execute": name})) == err("unknown execute")


def test_too_large() -> None:
    body = add(**GOOD)
    exactly = body + b" " * (api.MAX_REQUEST_SIZE - len(body))
    assert len(exactly) == 4096
    assert call(exactly) == b'{"return":{"id":1}}'
    assert call(exactly + b"\n") == err("too large message")
    assert call(b"x" * 5000) == err("too large message")


@pytest.mark.parametrize(
    "args",
    [
        None,
        "tcp",
        [],
        {},
        {"host_port": 80, "guest_port": 80},
        {**GOOD, "proto": None},
        {**GOOD, "proto": "sctp"},
        {**GOOD, "proto": "TCP"},
        {**GOOD, "proto": 6},
        {**GOOD, "proto": ["tcp"]},
        {**GOOD, "proto": ""},
    ],
)
def test_bad_proto(args: Any) -> None:
    # slirp4netns 1.2 dereferences NULL on a missing proto; slirpy answers.
    body = (
        {"execute": "add_hostfwd"}
        if args is None
        else {"execute": "add_hostfwd", "arguments": args}
    )
    assert call(req(body)) == err("add_hostfwd: bad arguments.proto")


@pytest.mark.parametrize(
    ("proto", "host"),
    [
        ("tcp", "bad"),
        ("tcp", "1.2.3"),
        ("tcp", "1.2.3.4.5"),
        ("tcp", "010.0.0.1"),
        ("tcp", 5),
        ("tcp", ["::"]),
        ("tcp", "fe80::1%eth0"),
        ("tcp", " 192.0.2.4"),
        ("tcp", "localhost"),
        ("tcp4", "::1"),
        ("udp4", "::"),
        ("tcp6", "127.0.0.1"),
        ("udp6", "0.0.0.0"),
        ("tcp", "192.0.2.4/32"),
    ],
)
def test_bad_host_addr(proto: str, host: Any) -> None:
    assert call(add(**{**GOOD, "proto": proto, "host_addr": host})) == err(
        "add_hostfwd: bad arguments.host_addr"
    )


BAD_PORTS = [None, 0, -1, 65536, 1e9, "80", True, False, 80.5, [80], {"p": 80}, 2**70]


@pytest.mark.parametrize("port", BAD_PORTS)
def test_bad_host_port(port: Any) -> None:
    args = {**GOOD, "host_port": port}
    if port is None:
        del args["host_port"]
    assert call(add(**args)) == err("add_hostfwd: bad arguments.host_port")


@pytest.mark.parametrize("guest", ["bad", "10.0.2", 100, ["10.0.2.100"], "fe80::1%tap0"])
def test_bad_guest_addr(guest: Any) -> None:
    assert call(add(**GOOD, guest_addr=guest)) == err("add_hostfwd: bad arguments.guest_addr")


@pytest.mark.parametrize("port", BAD_PORTS)
def test_bad_guest_port(port: Any) -> None:
    args = {**GOOD, "guest_port": port}
    if port is None:
        del args["guest_port"]
    assert call(add(**args)) == err("add_hostfwd: bad arguments.guest_port")


def test_checks_run_in_slirp4netns_order() -> None:
    # Everything is wrong: the first field checked is the one reported.
    everything = {
        "proto": "x",
        "host_addr": "x",
        "host_port": 0,
        "guest_addr": "x",
        "guest_port": 0,
    }
    expected = ["proto", "host_addr", "host_port", "guest_addr", "guest_port"]
    fixes = {
        "proto": "tcp",
        "host_addr": "",
        "host_port": 1000,
        "guest_addr": "",
        "guest_port": 1000,
    }
    args = dict(everything)
    for field in expected:
        assert call(add(**args)) == err(f"add_hostfwd: bad arguments.{field}")
        args[field] = fixes[field]
    assert call(add(**args)) == b'{"return":{"id":1}}'


def test_add_failed() -> None:
    expected = err("add_hostfwd: slirp_add_hostfwd failed")
    assert call(add(**{**GOOD, "host_port": 1})) == expected  # HostFwdError
    assert call(add(**{**GOOD, "host_port": 2})) == expected  # OSError


@pytest.mark.parametrize(
    "arguments",
    [
        None,
        {},
        {"id": 0},
        {"id": -1},
        {"id": "1"},
        {"id": True},
        {"id": 1.5},
        {"id": 99},
        {"id": None},
        [1],
    ],
)
def test_remove_bad_id(arguments: Any) -> None:
    h = FakeHandler()
    call(add(**GOOD), h)
    body: dict[str, Any] = {"execute": "remove_hostfwd"}
    if arguments is not None:
        body["arguments"] = arguments
    assert call(req(body), h) == err("remove_hostfwd: bad arguments.id")
    assert len(h.table) == 1


def test_remove_twice_and_float_id() -> None:
    h = FakeHandler()
    call(add(**GOOD), h)
    remove = b'{"execute":"remove_hostfwd","arguments":{"id":1.0}}'
    assert call(remove, h) == b'{"return":{}}'
    assert call(remove, h) == err("remove_hostfwd: bad arguments.id")


@pytest.mark.parametrize(
    "data",
    [
        add(**GOOD),
        b'{"execute":"list_hostfwd"}',
        b'{"execute":"get_stats"}',
        b'{"execute":"list_flows"}',
        b'{"execute":"remove_hostfwd","arguments":{"id":1}}',
    ],
)
def test_handler_exception_becomes_error(data: bytes, caplog: pytest.LogCaptureFixture) -> None:
    h = FakeHandler()
    h.boom = RuntimeError("bug")
    name = json.loads(data)["execute"]
    assert call(data, h) == b'{"error":{"desc":"internal error: ' + name.encode() + b' failed"}}'


def test_bad_handler_results_become_errors() -> None:
    class Weird(FakeHandler):
        def add_hostfwd(self, fwd: HostFwdRequest) -> int:
            return True  # type: ignore[return-value]

        def get_stats(self) -> dict[str, object]:
            return {"x": float("nan"), "y": object()}

        def list_hostfwd(self) -> list[HostFwd]:
            return [{"id": 1}]  # type: ignore[list-item]

    for data in (add(**GOOD), b'{"execute":"get_stats"}', b'{"execute":"list_hostfwd"}'):
        assert b'"error"' in call(data, Weird())


def test_remove_oserror() -> None:
    class Failing(FakeHandler):
        def remove_hostfwd(self, fwd_id: int) -> None:
            raise OSError("nope")

    assert call(b'{"execute":"remove_hostfwd","arguments":{"id":1}}', Failing()) == err(
        "remove_hostfwd: slirp_remove_hostfwd failed"
    )


# -------------------------------------------------------------------- hypothesis


def _check_reply(reply: bytes) -> None:
    obj = json.loads(reply.decode("ascii"))
    assert isinstance(obj, dict)
    assert ("error" in obj and isinstance(obj["error"]["desc"], str)) or (
        "return" in obj or "entries" in obj
    )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=5000))
def test_never_raises_on_bytes(data: bytes) -> None:
    _check_reply(call(data))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = st.sampled_from(["proto", "host_addr", "host_port", "guest_addr", "guest_port", "id"])
VALUES = JSON | st.sampled_from(["tcp", "udp6", "::", "0.0.0.0", "10.0.2.100", 80, 65535, 1])


@settings(max_examples=200, deadline=None)
@given(
    execute=st.sampled_from(
        ["add_hostfwd", "list_hostfwd", "remove_hostfwd", "get_stats", "list_flows", "nope"]
    )
    | JSON,
    arguments=st.dictionaries(FIELDS, VALUES, max_size=6) | JSON,
    boom=st.sampled_from(
        [None, RuntimeError("x"), KeyError(1), OSError(1, "x"), HostFwdError("x"), ValueError("x")]
    ),
    newline=st.booleans(),
)
def test_never_raises_on_json(
    execute: Any, arguments: Any, boom: Exception | None, newline: bool
) -> None:
    h = FakeHandler()
    h.boom = boom
    data = req({"execute": execute, "arguments": arguments}) + (b"\n" if newline else b"")
    _check_reply(call(data, h))


# ---------------------------------------------------------------- ApiServer (I/O)

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency, but stay runnable
    uvloop = None

LOOPS = ["asyncio"] + (["uvloop"] if uvloop is not None else [])
Runner = Callable[[Callable[[], Awaitable[Any]]], Any]


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Runner:
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def _run(fn: Callable[[], Awaitable[Any]]) -> Any:
        async def bounded() -> Any:
            return await asyncio.wait_for(fn(), 8)

        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(bounded())

    return _run


@pytest.fixture
def sock_path() -> Iterator[str]:
    # pytest's tmp_path can exceed the 108-byte sun_path limit.
    d = tempfile.mkdtemp(prefix="slirpy-api-", dir="/tmp")
    path = os.path.join(d, "api.sock")
    assert len(path) < 108
    yield path
    shutil.rmtree(d, ignore_errors=True)


async def client(
    path: str, data: bytes, *, half_close: bool = True, chunks: int = 1, pause: float = 0.0
) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        step = max(1, -(-len(data) // chunks))
        for i in range(0, len(data), step):
            writer.write(data[i : i + step])
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        if half_close:
            writer.write_eof()
        # Reading to EOF works in both cases: the server half-closes after replying.
        return await asyncio.wait_for(reader.read(), 3)
    finally:
        writer.close()


def server(path: str, handler: FakeHandler | None = None, **kw: Any) -> ApiServer:
    return ApiServer(path, handler or FakeHandler(), default_guest_addr=GUEST, **kw)


PODMAN = add(**GOOD)


@pytest.mark.parametrize("newline", [True, False])
@pytest.mark.parametrize("half_close", [True, False])
def test_server_request_forms(run: Runner, sock_path: str, newline: bool, half_close: bool) -> None:
    async def main() -> None:
        async with server(sock_path):
            data = PODMAN + (b"\n" if newline else b"")
            assert await client(sock_path, data, half_close=half_close) == b'{"return":{"id":1}}'
            # Split into dribbled chunks, no half-close: answered once complete.
            assert (
                await client(sock_path, data, half_close=half_close, chunks=5, pause=0.01)
                == b'{"return":{"id":2}}'
            )
            listed = json.loads(
                await client(sock_path, b'{"execute":"list_hostfwd"}', half_close=half_close)
            )
            assert [e["id"] for e in listed["entries"]] == [1, 2]
            assert listed["return"]["entries"] == listed["entries"]

    run(main)


def test_server_blocking_client_single_read(run: Runner, sock_path: str) -> None:
    """Podman's exact sequence: one write of JSON+newline, half-close, one read."""

    def podman() -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            s.connect(sock_path)
            s.sendall(PODMAN + b"\n")
            s.shutdown(socket.SHUT_WR)
            return s.recv(2048)

    async def main() -> None:
        async with server(sock_path):
            assert await asyncio.to_thread(podman) == b'{"return":{"id":1}}'

    run(main)


def test_server_too_large(run: Runner, sock_path: str) -> None:
    async def main() -> None:
        async with server(sock_path) as srv:
            for half_close in (True, False):
                reply = await client(sock_path, b"{" + b" " * 4999, half_close=half_close)
                assert reply == err("too large message")
            assert await client(sock_path, b'{"execute":"list_hostfwd"}') == (
                b'{"return":{"entries":[]},"entries":[]}'
            )
            await asyncio.sleep(0.05)
            assert srv.active_connections == 0

    run(main)


def test_server_survives_bad_requests(run: Runner, sock_path: str) -> None:
    bad = [
        b"",
        b"{",
        b"\xff" * 10,
        b"[]",
        b'{"execute":"nope"}',
        add(proto="sctp"),
        add(host_port=80),
        b"x" * 5000,
        b'{"execute":"remove_hostfwd"}',
        b"[" * 4000,
    ]

    async def main() -> None:
        # Incomplete requests without half-close wait for the timeout: keep it short.
        async with server(sock_path, max_connections=64, timeout=0.5):
            replies = await asyncio.gather(
                *(client(sock_path, bad[i % len(bad)], half_close=i % 2 == 0) for i in range(50))
            )
            for reply in replies:
                assert json.loads(reply)["error"]["desc"].startswith("bad request: ")
            assert await client(sock_path, PODMAN, half_close=False) == b'{"return":{"id":1}}'

    run(main)


def test_server_timeout_answers_partial(run: Runner, sock_path: str) -> None:
    async def main() -> None:
        async with server(sock_path, timeout=0.2):
            # Neither complete nor half-closed: answered after the timeout.
            assert await client(sock_path, b'{"execute":', half_close=False) == err(
                "cannot parse JSON"
            )
            # A bare number might still grow, so it is not "complete" either.
            assert await client(sock_path, b"42", half_close=False) == err("no execute found")
            # Connect and say nothing.
            assert await client(sock_path, b"", half_close=False) == err("cannot parse JSON")

    run(main)


def test_server_connection_cap(run: Runner, sock_path: str) -> None:
    async def main() -> None:
        async with server(sock_path, max_connections=2, timeout=5) as srv:
            idle = [await asyncio.open_unix_connection(sock_path) for _ in range(2)]
            while srv.active_connections < 2:
                await asyncio.sleep(0.01)
            reply = await client(sock_path, PODMAN)
            assert json.loads(reply) == {"error": {"desc": api.ERR_BUSY}}
            for _, w in idle:
                w.close()
            while srv.active_connections:
                await asyncio.sleep(0.01)
            assert await client(sock_path, PODMAN) == b'{"return":{"id":1}}'

    run(main)


def test_server_connection_cap_overflow_is_closed(run: Runner, sock_path: str) -> None:
    async def main() -> None:
        async with server(sock_path, max_connections=1, timeout=5, linger=5) as srv:
            idle = await asyncio.open_unix_connection(sock_path)
            busy_r, busy_w = await asyncio.open_unix_connection(sock_path)
            # The "busy" client reads its answer but keeps the connection open.
            assert json.loads(await busy_r.read()) == {"error": {"desc": api.ERR_BUSY}}
            # Both caps full: the next connection is closed without an answer.
            r, w = await asyncio.open_unix_connection(sock_path)
            assert await asyncio.wait_for(r.read(), 2) == b""
            for writer in (idle[1], busy_w, w):
                writer.close()
            while srv.active_connections:
                await asyncio.sleep(0.01)

    run(main)


def test_server_stale_socket_replaced_and_unlinked(run: Runner, sock_path: str) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()  # the file stays: a daemon that died without cleaning up
    assert os.path.exists(sock_path)

    async def main() -> None:
        srv = server(sock_path)
        await srv.start()
        assert srv.is_serving
        assert await client(sock_path, PODMAN) == b'{"return":{"id":1}}'
        await srv.close()
        assert not os.path.exists(sock_path)
        await srv.close()  # idempotent

    run(main)


def test_server_live_socket_in_use(run: Runner, sock_path: str) -> None:
    async def main() -> None:
        async with server(sock_path):
            other = server(sock_path)
            with pytest.raises(ApiSocketError, match=f"^api socket {sock_path} is in use$"):
                await other.start()
            await other.close()
            # The first server is untouched.
            assert os.path.exists(sock_path)
            assert await client(sock_path, PODMAN) == b'{"return":{"id":1}}'

    run(main)


def test_server_refuses_non_socket_and_long_path(run: Runner, sock_path: str) -> None:
    async def main() -> None:
        with open(sock_path, "w") as f:
            f.write("precious")
        with pytest.raises(ApiSocketError, match="exists and is not a socket"):
            await server(sock_path).start()
        with open(sock_path) as f:
            assert f.read() == "precious"
        long_path = "/tmp/" + "x" * 103
        assert len(long_path) == 108
        with pytest.raises(ValueError, match="must be shorter than 108 bytes"):
            await server(long_path).start()

    run(main)


def test_server_close_does_not_unlink_foreign_socket(run: Runner, sock_path: str) -> None:
    async def main() -> None:
        srv = server(sock_path)
        await srv.start()
        os.unlink(sock_path)
        foreign = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        foreign.bind(sock_path)
        try:
            await srv.close()
            assert os.path.exists(sock_path)
        finally:
            foreign.close()

    run(main)


def test_server_close_drops_open_connections(run: Runner, sock_path: str) -> None:
    async def main() -> None:
        srv = server(sock_path)
        await srv.start()
        reader, writer = await asyncio.open_unix_connection(sock_path)
        while srv.active_connections < 1:
            await asyncio.sleep(0.01)
        await srv.close()
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()

    run(main)
