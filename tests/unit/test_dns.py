"""Unit tests for slirpy.services.dns: the sans-IO core and the asyncio proxy.

Every DNS server used here is a tiny one the test runs on 127.0.0.1; every
DnsProxy gets explicit upstreams or a resolv.conf written in a tmp dir, so no
packet leaves loopback. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRR

from slirpy.services.dns import DnsForwarderCore, DnsProxy, parse_resolv_conf

LOOP_KINDS = ["asyncio", "uvloop"]
BOUND = 5.0  # seconds, per async test


def run(kind: str, fn: Callable[[], Awaitable[Any]]) -> Any:
    factory = uvloop.new_event_loop if kind == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(asyncio.wait_for(fn(), BOUND))


def query(qid: int = 0x1234, name: str = "host.example") -> bytes:
    return bytes(DNS(id=qid, rd=1, qd=DNSQR(qname=name, qtype="A")))


def reply_for(q: bytes, ip: str = "192.0.2.1", tc: bool = False) -> bytes:
    p = DNS(q)
    r = DNS(
        id=p.id,
        qr=1,
        aa=1,
        rd=p.rd,
        ra=1,
        tc=int(tc),
        qd=p.qd,
        an=DNSRR(rrname=p.qd[0].qname, type="A", rdata=ip, ttl=60),
    )
    return bytes(r)


# --------------------------------------------------------------------------
# Test DNS server on loopback
# --------------------------------------------------------------------------


class FakeDns:
    """Answers A queries with a fixed address, over UDP and TCP on one port."""

    def __init__(
        self, ip: str = "192.0.2.1", tc: bool = False, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.ip = ip
        self.tc = tc
        self.host = host
        self.want_port = port
        self.udp_queries: list[bytes] = []
        self.tcp_queries: list[bytes] = []
        self.port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    def answer(self, q: bytes) -> bytes:
        return reply_for(q, self.ip, self.tc)

    async def start(self) -> FakeDns:
        loop = asyncio.get_running_loop()
        server = self

        class Proto(asyncio.DatagramProtocol):
            def connection_made(self, transport: Any) -> None:
                self.t = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                server.udp_queries.append(data)
                self.t.sendto(server.answer(data), addr)

        async def on_tcp(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while True:
                    n = int.from_bytes(await r.readexactly(2), "big")
                    data = await r.readexactly(n)
                    self.tcp_queries.append(data)
                    a = self.answer(data)
                    w.write(len(a).to_bytes(2, "big") + a)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                w.close()

        # UDP and TCP must share the port number (the proxy uses one address).
        for _ in range(20):
            t, _p = await loop.create_datagram_endpoint(
                Proto, local_addr=(self.host, self.want_port)
            )
            port = t.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(on_tcp, self.host, port)
            except OSError:
                t.close()
                if self.want_port:
                    raise
                continue
            self._udp, self.port = t, port
            return self
        raise RuntimeError("no common UDP/TCP port")

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()


@contextlib.contextmanager
def silent_upstream() -> Any:
    """A UDP socket that never answers, on a port where TCP is refused."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    try:
        yield ("127.0.0.1", s.getsockname()[1])
    finally:
        s.close()


async def udp_ask(port: int, q: bytes, timeout: float = 2.0) -> bytes:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[bytes] = loop.create_future()

    class Proto(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            if not fut.done():
                fut.set_result(data)

    t, _ = await loop.create_datagram_endpoint(Proto, remote_addr=("127.0.0.1", port))
    try:
        t.sendto(q)
        return await asyncio.wait_for(fut, timeout)
    finally:
        t.close()


def udp_send_raw(port: int, data: bytes) -> None:
    # A plain socket: asyncio's transport silently skips empty datagrams.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(data, ("127.0.0.1", port))


async def read_frame(r: asyncio.StreamReader) -> bytes:
    n = int.from_bytes(await asyncio.wait_for(r.readexactly(2), 2.0), "big")
    return await asyncio.wait_for(r.readexactly(n), 2.0)


def frame(m: bytes) -> bytes:
    return len(m).to_bytes(2, "big") + m


async def wait_until(cond: Callable[[], bool], timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------
# resolv.conf
# --------------------------------------------------------------------------


def test_parse_resolv_conf() -> None:
    text = """
# comment nameserver 192.0.2.9
; another
search slirpy.test
nameserver 127.0.0.53
nameserver   ::1   # trailing comment
nameserver fd00::1%eth0
nameserver fe80::1%eth0
nameserver 10.0.0.1%eth0
nameserver not-an-ip
nameserver
nameserver 127.0.0.53
  nameserver 127.0.0.2
options edns0 trust-ad
nameserver ::ffff:127.0.0.3
garbage \x00\xff line
"""
    assert parse_resolv_conf(text) == [
        ("127.0.0.53", 53),
        ("::1", 53),
        ("fd00::1", 53),
        ("fe80::1%eth0", 53),
        ("127.0.0.2", 53),
        ("127.0.0.3", 53),
    ]
    assert parse_resolv_conf("") == []
    assert parse_resolv_conf("domain x\n") == []


# --------------------------------------------------------------------------
# Core
# --------------------------------------------------------------------------


def test_core_id_mapping_and_restore() -> None:
    core = DnsForwarderCore(1)
    q1, q2 = query(0x1111, "a.example"), query(0x1111, "b.example")
    s1, s2 = core.submit(q1, "c1", 0.0), core.submit(q2, "c2", 0.0)
    assert s1 is not None and s2 is not None
    (w1, i1), (w2, i2) = s1, s2
    assert i1 == i2 == 0
    assert w1[2:] == q1[2:] and w2[2:] == q2[2:]
    assert w1[:2] != w2[:2]  # two clients, same ID: distinct upstream IDs
    assert core.pending == 2
    # Answers in reverse order go back to the right client with its own ID.
    assert core.answer(reply_for(w2, "192.0.2.2"), 0, 0.1) == ("c2", reply_for(q2, "192.0.2.2"))
    assert core.answer(reply_for(w1), 0, 0.1) == ("c1", reply_for(q1))
    assert core.pending == 0
    assert core.stats["answered"] == 2 and core.stats["forwarded"] == 2


def test_core_drops_unknown_duplicate_wrong_upstream_mismatch() -> None:
    core = DnsForwarderCore(2, rng=iter(range(100, 200)).__next__)
    sub = core.submit(query(7), "c", 0.0)
    assert sub is not None
    w, _ = sub
    assert w[:2] == (100).to_bytes(2, "big")
    r = reply_for(w)
    assert core.answer(r, 1, 0.0) is None  # not sent to upstream 1
    assert core.stats["reply_wrong_upstream"] == 1
    bad = reply_for(bytes(w[:2]) + query(7, "other.example")[2:])
    assert core.answer(bad, 0, 0.0) is None
    assert core.stats["reply_mismatch"] == 1
    assert core.answer(r, 0, 0.0) is not None
    assert core.answer(r, 0, 0.0) is None  # duplicate
    assert core.stats["reply_late"] == 1
    assert core.answer(b"\x99\x99" + r[2:], 0, 0.0) is None
    assert core.stats["reply_unknown_id"] == 1
    assert core.answer(b"\x00" * 5, 0, 0.0) is None
    assert core.answer(w, 0, 0.0) is None  # QR clear: not a reply
    assert core.stats["reply_malformed"] == 2
    # An ID just used is not handed out again at once.
    sub2 = core.submit(query(7), "c", 0.0)
    assert sub2 is not None and sub2[0][:2] == (101).to_bytes(2, "big")


def test_core_malformed_queries_counted() -> None:
    core = DnsForwarderCore(1)
    assert core.submit(b"\x00" * 11, "c", 0.0) is None
    assert core.submit(reply_for(query()), "c", 0.0) is None
    assert core.submit(query() + b"\x00" * 5000, "c", 0.0) is None
    assert core.stats["query_short"] == 1
    assert core.stats["query_is_response"] == 1
    assert core.stats["query_too_large"] == 1
    assert core.pending == 0
    assert DnsForwarderCore(0).submit(query(), "c", 0.0) is None


def test_core_timeout_failover_and_drop() -> None:
    core = DnsForwarderCore(2, timeout=2.0)
    sub = core.submit(query(), "c", 10.0)
    assert sub is not None and sub[1] == 0
    assert core.expire(11.9) == []
    [e] = core.expire(12.0)
    assert (e.client, e.query, e.upstream) == ("c", sub[0], 1)
    assert core.stats["timeouts"] == 1 and core.stats["failovers"] == 1
    # The first upstream's late answer is still welcome (it was tried).
    assert core.answer(reply_for(sub[0]), 0, 12.5) is not None
    # A query that no upstream answers is dropped after the last one.
    sub = core.submit(query(), "d", 20.0)
    assert sub is not None and sub[1] == 0  # upstream 0 answered last
    [e1] = core.expire(22.0)
    assert e1.upstream == 1
    [e2] = core.expire(24.0)
    assert e2.upstream is None and e2.client == "d"
    assert core.stats["dropped"] == 1 and core.pending == 0
    assert core.answer(reply_for(sub[0]), 1, 24.5) is None
    assert core.stats["reply_late"] == 1


def test_core_prefers_upstream_that_answered() -> None:
    core = DnsForwarderCore(3, timeout=1.0)
    sub = core.submit(query(), "c", 0.0)
    assert sub is not None
    [e] = core.expire(1.0)
    assert e.upstream == 1
    assert core.answer(reply_for(e.query), 1, 1.1) is not None
    sub = core.submit(query(), "c", 2.0)
    assert sub is not None and sub[1] == 1


def test_core_pending_cap_evicts_oldest() -> None:
    core = DnsForwarderCore(1, max_pending=4)
    subs = [core.submit(query(i), i, float(i)) for i in range(5)]
    assert all(s is not None for s in subs)
    assert core.pending == 4
    assert core.stats["pending_evicted"] == 1
    first = subs[0]
    assert first is not None
    assert core.answer(reply_for(first[0]), 0, 5.0) is None
    assert core.stats["reply_late"] == 1
    last = subs[4]
    assert last is not None
    assert core.answer(reply_for(last[0]), 0, 5.0) == (4, reply_for(query(4)))


def test_core_truncated_reply_passthrough() -> None:
    core = DnsForwarderCore(1)
    q = query(0xBEEF)
    sub = core.submit(q, "c", 0.0)
    assert sub is not None
    r = reply_for(sub[0], tc=True)
    res = core.answer(r, 0, 0.0)
    assert res is not None
    assert res[1] == q[:2] + r[2:]
    assert DNS(res[1]).tc == 1
    assert core.stats["replies_truncated"] == 1


def test_core_fail_and_set_upstreams() -> None:
    core = DnsForwarderCore(2, timeout=2.0)
    a, b = core.submit(query(1), "a", 0.0), core.submit(query(2), "b", 0.0)
    assert a is not None and b is not None
    e = core.fail(a[0], 0.5)
    assert e is not None and e.upstream == 1
    assert core.fail(b"\x00", 0.5) is None
    assert [x.upstream for x in core.fail_upstream(0, 0.6)] == [1]  # only b was on 0
    assert core.stats["upstream_failures"] == 2
    res = core.set_upstreams(1, 1.0)
    assert sorted(x.client for x in res) == ["a", "b"]
    assert all(x.upstream == 0 for x in res)
    assert [x.upstream for x in core.expire(3.0)] == [None, None]
    assert core.submit(query(3), "c", 4.0) is not None
    assert [x.upstream for x in core.set_upstreams(0, 4.0)] == [None]
    assert core.pending == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["submit", "answer", "expire", "fail"]),
            st.binary(max_size=80),
            st.integers(min_value=-1, max_value=3),
        ),
        max_size=40,
    )
)
def test_core_never_raises_on_arbitrary_bytes(ops: list[tuple[str, bytes, int]]) -> None:
    core = DnsForwarderCore(2, timeout=1.0, max_pending=8, recent_ids=4)
    now = 0.0
    sent: list[bytes] = []
    for op, data, n in ops:
        now += 0.3
        if op == "submit":
            sub = core.submit(data, n, now)
            if sub is not None:
                sent.append(sub[0])
                assert len(sub[0]) == len(data)
        elif op == "answer":
            # Arbitrary bytes, and arbitrary bytes wearing a real pending ID.
            core.answer(data, n, now)
            if sent and len(data) >= 2:
                core.answer(sent[-1][:2] + data[2:], n, now)
        elif op == "expire":
            core.expire(now)
        else:
            core.fail(data, now)
        assert core.pending <= 8
    assert all(v >= 0 for v in core.stats.values())


# --------------------------------------------------------------------------
# Proxy, end to end on loopback
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_proxy_udp_end_to_end(kind: str) -> None:
    async def main() -> None:
        srv = await FakeDns("192.0.2.10").start()
        proxy = DnsProxy(upstreams=[("127.0.0.1", srv.port)], resolv_conf=None)
        await proxy.start()
        try:
            q = query(0x4242, "host.example")
            r = DNS(await udp_ask(proxy.udp_port, q))
            assert r.id == 0x4242 and r.qr == 1
            assert r.an[0].rdata == "192.0.2.10"
            assert r.qd[0].qname == b"host.example."
            # The upstream saw a rewritten ID.
            assert len(srv.udp_queries) == 1 and srv.udp_queries[0][2:] == q[2:]
            assert proxy.stats["udp_answered"] == 1
        finally:
            await proxy.close()
            await srv.close()

    run(kind, main)


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_proxy_tcp_pipelined(kind: str) -> None:
    async def main() -> None:
        srv = await FakeDns("192.0.2.20").start()
        proxy = DnsProxy(upstreams=[("127.0.0.1", srv.port)], resolv_conf=None)
        await proxy.start()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", proxy.tcp_port)
            qa, qb = query(0xA, "a.example"), query(0xB, "b.example")
            w.write(frame(qa) + frame(qb))  # both in flight on one connection
            await w.drain()
            got = {DNS(m).id: DNS(m) for m in [await read_frame(r), await read_frame(r)]}
            assert set(got) == {0xA, 0xB}
            assert got[0xA].qd[0].qname == b"a.example."
            assert got[0xB].qd[0].qname == b"b.example."
            assert got[0xA].an[0].rdata == "192.0.2.20"
            assert len(srv.tcp_queries) == 2 and not srv.udp_queries
            # A half-close after a query still gets the answer.
            w.write(frame(query(0xC, "c.example")))
            w.write_eof()
            assert DNS(await read_frame(r)).id == 0xC
            assert await asyncio.wait_for(r.read(), 2.0) == b""
            w.close()
        finally:
            await proxy.close()
            await srv.close()

    run(kind, main)


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_proxy_udp_failover_silent_first_upstream(kind: str) -> None:
    async def main() -> None:
        srv = await FakeDns("192.0.2.30").start()
        with silent_upstream() as dead:
            proxy = DnsProxy(upstreams=[dead, ("127.0.0.1", srv.port)], timeout=0.2)
            await proxy.start()
            try:
                r = DNS(await udp_ask(proxy.udp_port, query(0x77)))
                assert r.id == 0x77 and r.an[0].rdata == "192.0.2.30"
                st_ = proxy.stats
                assert st_["udp_timeouts"] == 1 and st_["udp_failovers"] == 1
                # Next query goes straight to the server that answered.
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                await udp_ask(proxy.udp_port, query(0x78))
                assert loop.time() - t0 < 0.15
                assert len(srv.udp_queries) == 2
            finally:
                await proxy.close()
                await srv.close()

    run(kind, main)


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_proxy_tcp_failover_refused_first_upstream(kind: str) -> None:
    async def main() -> None:
        srv = await FakeDns("192.0.2.31").start()
        with silent_upstream() as dead:  # nothing listens on TCP there
            proxy = DnsProxy(upstreams=[dead, ("127.0.0.1", srv.port)], timeout=1.0)
            await proxy.start()
            try:
                r, w = await asyncio.open_connection("127.0.0.1", proxy.tcp_port)
                w.write(frame(query(0x55)))
                m = DNS(await read_frame(r))
                assert m.id == 0x55 and m.an[0].rdata == "192.0.2.31"
                assert proxy.stats["tcp_upstream_failures"] == 1
                w.close()
            finally:
                await proxy.close()
                await srv.close()

    run(kind, main)


def _have_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _have_ipv6_loopback(), reason="no ::1")
@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_proxy_ipv6_loopback_upstream(kind: str) -> None:
    async def main() -> None:
        srv = await FakeDns("192.0.2.60", host="::1").start()
        proxy = DnsProxy(upstreams=[("::1", srv.port)])
        await proxy.start()
        try:
            assert DNS(await udp_ask(proxy.udp_port, query(0x61))).an[0].rdata == "192.0.2.60"
            r, w = await asyncio.open_connection("127.0.0.1", proxy.tcp_port)
            w.write(frame(query(0x62)))
            assert DNS(await read_frame(r)).an[0].rdata == "192.0.2.60"
            w.close()
            assert len(srv.udp_queries) == 1 and len(srv.tcp_queries) == 1
        finally:
            await proxy.close()
            await srv.close()

    run(kind, main)


def test_proxy_timeout_counted_when_all_silent() -> None:
    async def main() -> None:
        with silent_upstream() as dead:
            proxy = DnsProxy(upstreams=[dead], timeout=0.1)
            await proxy.start()
            try:
                with pytest.raises(TimeoutError):
                    await udp_ask(proxy.udp_port, query(), timeout=0.4)
                await wait_until(lambda: proxy.stats["udp_dropped"] == 1)
                assert proxy.stats["udp_timeouts"] == 1
            finally:
                await proxy.close()

    run("asyncio", main)


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_proxy_truncated_reply_passthrough(kind: str) -> None:
    async def main() -> None:
        srv = await FakeDns("192.0.2.40", tc=True).start()
        proxy = DnsProxy(upstreams=[("127.0.0.1", srv.port)])
        await proxy.start()
        try:
            q = query(0x99)
            raw = await udp_ask(proxy.udp_port, q)
            assert raw == reply_for(q, "192.0.2.40", tc=True)
            assert DNS(raw).tc == 1
            assert proxy.stats["udp_replies_truncated"] == 1
        finally:
            await proxy.close()
            await srv.close()

    run(kind, main)


async def fake_pair(*ips: str) -> list[FakeDns]:
    """Fake servers on 127.0.0.21, .22, ... sharing one port (resolv.conf has
    no port syntax, so the proxy uses one port for all of them)."""
    first = await FakeDns(ips[0], host="127.0.0.21").start()
    out = [first]
    for k, ip in enumerate(ips[1:], start=22):
        out.append(await FakeDns(ip, host=f"127.0.0.{k}", port=first.port).start())
    return out


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_proxy_follows_resolv_conf_rewrite(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        s1, s2 = await fake_pair("192.0.2.1", "192.0.2.2")
        conf = tmp_path / "resolv.conf"
        conf.write_text("search example\nnameserver 127.0.0.21\n")
        proxy = DnsProxy(
            resolv_conf=str(conf),
            timeout=0.5,
            resolv_conf_check_interval=0.0,
            resolv_conf_port=s1.port,
        )
        try:
            await proxy.start()
            assert proxy.upstreams == [("127.0.0.21", s1.port)]
            assert DNS(await udp_ask(proxy.udp_port, query())).an[0].rdata == "192.0.2.1"
            # Atomic replace (new inode), as resolvconf/NetworkManager do.
            tmp = tmp_path / "resolv.conf.new"
            tmp.write_text("nameserver 127.0.0.22\n")
            os.replace(tmp, conf)
            assert DNS(await udp_ask(proxy.udp_port, query())).an[0].rdata == "192.0.2.2"
            assert len(s1.udp_queries) == 1 and len(s2.udp_queries) == 1
            # TCP follows too.
            r, w = await asyncio.open_connection("127.0.0.1", proxy.tcp_port)
            w.write(frame(query(5)))
            assert DNS(await read_frame(r)).an[0].rdata == "192.0.2.2"
            w.close()
            # In-place rewrite, same inode.
            with open(conf, "w") as f:
                f.write("nameserver 127.0.0.21   \n")
            assert DNS(await udp_ask(proxy.udp_port, query())).an[0].rdata == "192.0.2.1"
            assert proxy.stats["resolv_conf_reloads"] == 3
        finally:
            await proxy.close()
            await s1.close()
            await s2.close()

    run(kind, main)


def test_proxy_follows_resolv_conf_symlink_and_checks_rarely(tmp_path: Path) -> None:
    async def main() -> None:
        s1, s2 = await fake_pair("192.0.2.1", "192.0.2.2")
        a, b = tmp_path / "a.conf", tmp_path / "b.conf"
        a.write_text("nameserver 127.0.0.21\n")
        b.write_text("nameserver 127.0.0.22\n")
        link = tmp_path / "resolv.conf"
        os.symlink(a, link)
        interval = 1.0
        proxy = DnsProxy(
            resolv_conf=str(link), resolv_conf_check_interval=interval, resolv_conf_port=s1.port
        )
        try:
            await proxy.start()
            assert DNS(await udp_ask(proxy.udp_port, query())).an[0].rdata == "192.0.2.1"
            changed = time.monotonic()
            tmp = tmp_path / "link.new"
            os.symlink(b, tmp)
            os.replace(tmp, link)  # the symlink now points elsewhere
            # Checked at most once per interval: well inside it, the next
            # query still goes to the old server (a proxy that re-read the
            # file on every query would already use the new one) ...
            assert DNS(await udp_ask(proxy.udp_port, query())).an[0].rdata == "192.0.2.1"
            assert time.monotonic() - changed < interval / 2, "too slow to tell"
            # ... and once the interval has passed, a query uses the new one.
            deadline = time.monotonic() + 10 * interval
            while (rdata := DNS(await udp_ask(proxy.udp_port, query())).an[0].rdata) \
                    != "192.0.2.2" and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert rdata == "192.0.2.2"
        finally:
            await proxy.close()
            await s1.close()
            await s2.close()

    run("asyncio", main)


def test_proxy_resolv_conf_missing_or_empty(tmp_path: Path) -> None:
    async def main() -> None:
        # No query is sent in this test: only the chosen upstream is checked.
        proxy = DnsProxy(resolv_conf=str(tmp_path / "nope.conf"), resolv_conf_port=5300)
        await proxy.start()
        assert proxy.upstreams == [("127.0.0.1", 5300)]  # glibc's default
        await proxy.close()
        conf = tmp_path / "empty.conf"
        conf.write_text("search x\n")
        proxy = DnsProxy(resolv_conf=str(conf), resolv_conf_port=5300)
        await proxy.start()
        assert proxy.upstreams == [("127.0.0.1", 5300)]
        await proxy.close()
        os.chdir(tmp_path)  # a relative path is resolved at construction
        conf.write_text("nameserver ::1\n")
        proxy = DnsProxy(resolv_conf="empty.conf")
        os.chdir("/")
        await proxy.start()
        assert proxy.upstreams == [("::1", 53)]
        await proxy.close()

    cwd = os.getcwd()
    try:
        run("asyncio", main)
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_proxy_garbage_counted_then_good_query(kind: str) -> None:
    async def main() -> None:
        srv = await FakeDns("192.0.2.50").start()
        proxy = DnsProxy(upstreams=[("127.0.0.1", srv.port)])
        await proxy.start()
        try:
            for junk in (b"", b"\xff", b"\x00" * 11, reply_for(query()), query() + bytes(5000)):
                udp_send_raw(proxy.udp_port, junk)
            r, w = await asyncio.open_connection("127.0.0.1", proxy.tcp_port)
            w.write(frame(b"\x01\x02\x03") + frame(reply_for(query())))
            # The framing is intact: a good query on the same connection works.
            w.write(frame(query(0x21)))
            assert DNS(await read_frame(r)).id == 0x21
            w.write(b"\xff")  # half a length prefix, then EOF
            w.write_eof()
            assert await asyncio.wait_for(r.read(), 2.0) == b""
            w.close()
            await wait_until(lambda: proxy.stats["udp_queries"] >= 5)
            st_ = proxy.stats
            assert st_["udp_query_short"] == 3
            assert st_["udp_query_is_response"] == 1
            assert st_["udp_query_too_large"] == 1
            assert st_["tcp_query_short"] == 1
            assert st_["tcp_query_is_response"] == 1
            await wait_until(lambda: proxy.stats["tcp_truncated"] == 1)
            # Still serving, over both transports.
            assert DNS(await udp_ask(proxy.udp_port, query(0x22))).id == 0x22
            r, w = await asyncio.open_connection("127.0.0.1", proxy.tcp_port)
            w.write(frame(query(0x23)))
            assert DNS(await read_frame(r)).id == 0x23
            w.close()
            # A stranger's datagram to the upstream socket (a spoof attempt
            # with a valid-looking reply) is counted and never delivered.
            up_port = proxy._up_socks[socket.AF_INET].getsockname()[1]
            udp_send_raw(up_port, reply_for(query()))
            await wait_until(lambda: proxy.stats["udp_reply_unknown_source"] == 1)
        finally:
            await proxy.close()
            await srv.close()

    run(kind, main)


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_proxy_tcp_client_cap_and_idle_timeout(kind: str) -> None:
    async def main() -> None:
        srv = await FakeDns().start()
        proxy = DnsProxy(
            upstreams=[("127.0.0.1", srv.port)], max_tcp_clients=2, tcp_idle_timeout=0.3
        )
        await proxy.start()
        try:
            conns = [await asyncio.open_connection("127.0.0.1", proxy.tcp_port) for _ in range(2)]
            await wait_until(lambda: proxy.stats["tcp_accepted"] == 2)
            r3, w3 = await asyncio.open_connection("127.0.0.1", proxy.tcp_port)
            assert await asyncio.wait_for(r3.read(), 2.0) == b""  # refused at the cap
            assert proxy.stats["tcp_rejected"] == 1
            w3.close()
            # Idle clients are closed after the idle timeout.
            for r, w in conns:
                assert await asyncio.wait_for(r.read(), 2.0) == b""
                w.close()
            assert proxy.stats["tcp_idle_closed"] == 2
            # A slot is free again.
            r, w = await asyncio.open_connection("127.0.0.1", proxy.tcp_port)
            w.write(frame(query(0x31)))
            assert DNS(await read_frame(r)).id == 0x31
            w.close()
        finally:
            await proxy.close()
            await srv.close()

    run(kind, main)


def test_proxy_close_is_idempotent_and_ports_need_start() -> None:
    async def main() -> None:
        proxy = DnsProxy(upstreams=[])
        with pytest.raises(RuntimeError):
            _ = proxy.udp_port
        await proxy.close()
        await proxy.start()
        assert proxy.udp_port > 0 and proxy.tcp_port > 0
        assert proxy.upstreams == []
        await proxy.close()
        await proxy.close()
        with pytest.raises(ValueError):
            DnsProxy(resolv_conf=None)

    run("asyncio", main)


def test_truncate_for_udp_keeps_small_replies_and_cuts_big_ones() -> None:
    from slirpy.services.dns import truncate_for_udp

    q = struct.pack("!HHHHHH", 9, 0x0100, 1, 0, 0, 0) + b"\x03Big\x04test\x00\x00\x01\x00\x01"
    answer = struct.pack("!HHHHHH", 9, 0x8180, 1, 200, 0, 0) + q[12:] + b"\xc0\x0c" * 800
    assert truncate_for_udp(answer, len(answer)) == answer
    cut = truncate_for_udp(answer, 1000)
    assert cut == struct.pack("!HHHHHH", 9, 0x8380, 1, 0, 0, 0) + q[12:]
    # An unparseable question: header only, TC set, no sections at all.
    junk = b"\x00\x09\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00" + b"\xff" * 2000
    assert truncate_for_udp(junk, 100) == b"\x00\x09\x83\x80" + b"\x00" * 8
