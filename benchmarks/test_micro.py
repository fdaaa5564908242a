"""pytest-benchmark microbenchmarks of the C engine's entry points.

This file owns the per-operation figures in docs/benchmarks.md: the RFC 1071
checksum, frame parsing and the flow-table lookup (through micro_build.py's
private build, each timed call repeating the operation LOOPS times in C), and
the public engine entry points through slirpy.engine, the way the unit tests
drive it (tests/helpers/engine_guest.py): no TAP, frames fed with input_frame and
what the engine sends taken back with take_output. Hosts are on 127.0.0.1
only. It is not part of `pytest tests`; run it as

    /opt/slirpy-venv/bin/python -m pytest -p no:cacheprovider benchmarks/test_micro.py

CI (.ci/run) runs it with --benchmark-disable (each benchmarked call made
once, untimed) so that every test keeps working.

It must not assert on timings (they depend on the machine); it asserts only
that each benchmarked operation did what it should, so a figure is never the
cost of an error path.
"""

from __future__ import annotations

import resource
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import micro_build

from slirpy.config import NetworkModel
from slirpy.engine import Engine
from tests.helpers.checksum import rfc1071  # RFC 1071, independent of the engine

LOOPS = 1000  # C-side repetitions per timed call of the internal functions
GUEST_MAC = bytes.fromhex("525400123456")
GW_MAC = bytes.fromhex("52550a000202")
GUEST = socket.inet_aton("10.0.2.100")
GW = socket.inet_aton("10.0.2.2")


# ---------------------------------------------------------------- frames
def ip4(proto: int, payload: bytes, src: bytes = GUEST, dst: bytes = GW) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000, 64, proto, 0,
                      src, dst)
    return hdr[:10] + struct.pack("!H", rfc1071(hdr)) + hdr[12:] + payload


def eth(ethertype: int, payload: bytes) -> bytes:
    return GW_MAC + GUEST_MAC + struct.pack("!H", ethertype) + payload


def tcp4(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"",
         window: int = 65535, options: bytes = b"") -> bytes:
    off = (20 + len(options)) // 4
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                      off << 4, flags, window, 0, 0) + options
    pseudo = GUEST + GW + struct.pack("!BBH", 0, 6, len(hdr) + len(payload))
    c = rfc1071(pseudo + hdr + payload)
    hdr = hdr[:16] + struct.pack("!H", c) + hdr[18:]
    return eth(0x0800, ip4(6, hdr + payload))


def udp4(sport: int, dport: int, payload: bytes) -> bytes:
    hdr = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    pseudo = GUEST + GW + struct.pack("!BBH", 0, 17, 8 + len(payload))
    hdr = hdr[:6] + struct.pack("!H", rfc1071(pseudo + hdr + payload) or 0xFFFF)
    return eth(0x0800, ip4(17, hdr + payload))


def arp_request() -> bytes:
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, GUEST_MAC, GUEST, b"\0" * 6, GW)
    return b"\xff" * 6 + GUEST_MAC + b"\x08\x06" + body


def tcp_fields(frame: bytes) -> tuple[int, int, int] | None:
    """(flags, seq, ack) of an IPv4 TCP frame the engine sent, else None."""
    if frame[12:14] != b"\x08\x00" or frame[23] != 6:
        return None
    t = 14 + (frame[14] & 0x0F) * 4
    seq, ack = struct.unpack("!II", frame[t + 4:t + 12])
    return frame[t + 13], seq, ack


# ---------------------------------------------------------------- internals
@pytest.fixture(scope="module")
def micro():
    return micro_build.load()


@pytest.mark.parametrize("size", [64, 1500, 65536])
def test_checksum(benchmark, micro, size: int) -> None:
    buf = bytes(range(256)) * (size // 256) + bytes(size % 256)
    benchmark.extra_info.update(loops=LOOPS, bytes=size)
    benchmark(micro.lib.slbench_csum, buf, size, LOOPS)
    # The engine's sum agrees with ours (start value 0 on the first loop). It
    # comes back in the byte order it was summed in: memory order.
    assert struct.pack("=H", micro.lib.slbench_csum(buf, size, 1)) == \
        struct.pack("!H", rfc1071(buf))


@pytest.mark.parametrize("kind", ["tcp-1460", "udp-64", "arp"])
def test_parse(benchmark, micro, kind: str) -> None:
    frame = {
        "tcp-1460": tcp4(40000, 5201, 1, 1, 0x18, bytes(1460)),
        "udp-64": udp4(40000, 5201, bytes(64)),
        "arp": arp_request(),
    }[kind]
    benchmark.extra_info.update(loops=LOOPS, bytes=len(frame))
    acc = benchmark(micro.lib.slbench_parse, frame, len(frame), 0, LOOPS)
    proto = {"tcp-1460": 6, "udp-64": 17, "arp": 0}[kind]
    assert acc == proto * LOOPS, "the frame did not parse as valid"


@pytest.fixture
def default_flow_caps() -> Iterator[None]:
    """A soft RLIMIT_NOFILE that lets a new engine keep its default flow caps.

    The engine scales its caps down to fit under the soft limit (1024 is a
    common default, root's included); 4096 holds the defaults' 3840 sockets
    plus the engine's 256 reserve. The old limit comes back afterwards.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096
    if soft != resource.RLIM_INFINITY and soft < want:
        # A hard limit under 4096 raises ValueError: an error, not a silent smaller table.
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# 1856: a full table at the engine's default TCP flow cap (SL_DEFAULT_TCP_FLOWS;
# the bench engine keeps the defaults, so no more fit).
@pytest.mark.parametrize("nflows", [16, 1856])
@pytest.mark.parametrize("miss", [False, True], ids=["hit", "miss"])
def test_flow_lookup(benchmark, micro, default_flow_caps, nflows: int, miss: bool) -> None:
    e = micro.lib.slbench_engine_new()
    assert e != micro.ffi.NULL
    try:
        assert micro.lib.slbench_flows_add(e, nflows) == nflows
        benchmark.extra_info.update(loops=LOOPS, flows=nflows)
        found = benchmark(micro.lib.slbench_flows_lookup, e, nflows, LOOPS, int(miss))
        assert found == (0 if miss else LOOPS)
    finally:
        micro.lib.slbench_engine_free(e)


# ---------------------------------------------------------------- public API
@pytest.fixture
def engine() -> Iterator[Engine]:
    e = Engine(NetworkModel(), vnet_hdr=False, offload=False)
    yield e
    e.close()


def _wait_output(e: Engine, pred, timeout: float = 3.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got += e.take_output()
        if any(pred(f) for f in got):
            return got
        select.select([e.fileno()], [], [], 0.02)
        e.poll(time.monotonic_ns())
    raise AssertionError(f"nothing expected came out: {got[:3]!r}")


def test_input_frame_arp(benchmark, engine: Engine) -> None:
    """ARP request in, ARP reply out: the shortest full path through the engine."""
    frame = arp_request()

    def once() -> list[bytes]:
        engine.input_frame(frame, time.monotonic_ns())
        return engine.take_output()

    out = benchmark(once)
    assert len(out) == 1 and out[0][12:14] == b"\x08\x06" and out[0][20:22] == b"\x00\x02"


def test_input_frame_udp(benchmark, engine: Engine) -> None:
    """One 64-byte UDP datagram to the gateway: parse, flow lookup, sendto."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    port = sink.getsockname()[1]
    frame = udp4(40000, port, b"u" * 64)
    try:
        engine.input_frame(frame, time.monotonic_ns())
        sink.settimeout(3)
        assert sink.recv(100) == b"u" * 64
        sink.setblocking(False)
        before = engine.counters()

        def once() -> None:
            engine.input_frame(frame, time.monotonic_ns())

        benchmark(once)
        after = engine.counters()
        drops = {k: after[k] - before.get(k, 0) for k in after
                 if k.startswith("drop") and after[k] != before.get(k, 0)}
        assert not drops, drops
    finally:
        sink.close()


# The host end of the connection lives in another process: a reader thread
# here would fight the timed loop for the GIL and for the timing's accuracy.
_SINK = """
import socket, sys
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
srv.settimeout(10)
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
conn.settimeout(60)
n = 0
while chunk := conn.recv(1 << 20):
    n += len(chunk)
print(n, flush=True)
"""


def test_input_frame_tcp_data(benchmark, engine: Engine) -> None:
    """A full input_frame of an in-order 1460-byte TCP data segment on an
    established flow: parse, checksum check, flow lookup, send() to the host
    socket, ACK bookkeeping. Each timed round feeds 64 segments (built, with
    their checksums, outside the timing) and takes back what the engine sent."""
    sink = subprocess.Popen([sys.executable, "-c", _SINK], stdout=subprocess.PIPE, text=True)
    port = int(sink.stdout.readline())  # type: ignore[union-attr]
    mss = struct.pack("!BBH", 2, 4, 1460) + b"\x01\x03\x03\x07"  # MSS, NOP, WScale 7
    seq = 1000
    engine.input_frame(tcp4(40000, port, seq, 0, 0x02, options=mss), time.monotonic_ns())
    seq += 1
    try:
        out = _wait_output(engine, lambda f: (t := tcp_fields(f)) is not None
                           and t[0] & 0x12 == 0x12)
        synack = next(t for f in out if (t := tcp_fields(f)) and t[0] & 0x12 == 0x12)
        rcv = (synack[1] + 1) & 0xFFFFFFFF
        engine.input_frame(tcp4(40000, port, seq, rcv, 0x10, window=512),
                           time.monotonic_ns())
        payload = bytes(range(256)) * 5 + bytes(180)
        assert len(payload) == 1460
        sent = 0
        batch = 64

        def setup():
            nonlocal seq
            frames = []
            for _ in range(batch):
                frames.append(tcp4(40000, port, seq, rcv, 0x18, payload, window=512))
                seq = (seq + len(payload)) & 0xFFFFFFFF
            return (frames,), {}

        def feed(frames: list[bytes]) -> None:
            nonlocal sent
            now = time.monotonic_ns()
            for f in frames:
                engine.input_frame(f, now)
            engine.poll(now)  # the batch's ACK goes out here, as after a TAP drain
            engine.take_output()
            sent += len(frames) * len(payload)

        benchmark.extra_info.update(segments_per_round=batch, payload=len(payload))
        # The host reader must keep up, or send() would see a full socket.
        benchmark.pedantic(feed, setup=setup, rounds=300, iterations=1, warmup_rounds=5)
        ctr = engine.counters()
        assert ctr.get("drop_tcp_out_of_window", 0) == 0, ctr
        # FIN: the sink sees EOF once everything before it was written.
        engine.input_frame(tcp4(40000, port, seq, rcv, 0x11, window=512), time.monotonic_ns())
        deadline = time.monotonic() + 10
        while sink.poll() is None and time.monotonic() < deadline:
            select.select([engine.fileno()], [], [], 0.01)
            engine.poll(time.monotonic_ns())
        out_s, _ = sink.communicate(timeout=10)
        assert int(out_s.split()[-1]) == sent, f"host got {out_s.split()[-1]} of {sent} bytes"
    finally:
        if sink.poll() is None:
            sink.kill()
        sink.wait(5)


# ---------------------------------------------------------------- egress policy
POLICY_DST = socket.inet_aton("198.18.0.5")  # never reached: the SYN is denied


def _policy_rules(case: str) -> list:
    """`case` rules that do not match POLICY_DST, then one that denies it."""
    from slirpy.engine import PM_CIDR, POLICY_ALLOW, POLICY_DENY, PP_TCP, PolicyRule

    def rule(i: int, action: int, addr: bytes, plen: int) -> PolicyRule:
        return PolicyRule(rule_id=i, action=action, match=PM_CIDR, family=4, prefix_len=plen,
                          addr=addr, proto_mask=PP_TCP)

    rules = []
    if case == "1000-spread":  # /24s all over 10/8, 172.16/12, 100.64/10
        for i in range(1000):
            low = (i * 40961) & 0xFFFF if i % 3 == 0 else i
            top = (10 << 24, 172 << 24 | 16 << 16, 100 << 24 | 64 << 16)[i % 3]
            rules.append(rule(i, POLICY_ALLOW, struct.pack("!I", top | low << 8), 24))
    elif case == "1000-same-16":  # the worst case: every rule in the destination's /16
        for i in range(1000):
            rules.append(rule(i, POLICY_ALLOW, bytes([198, 18, 1 + i // 256, i % 256]), 32))
    rules.append(rule(len(rules), POLICY_DENY, POLICY_DST, 32))
    return rules


@pytest.mark.parametrize("case", ["0", "1000-spread", "1000-same-16"])
def test_policy_denied_syn(benchmark, engine: Engine, case: str) -> None:
    """A guest SYN that the egress policy denies: parse, the rule lookup at flow
    creation, the RST back (no socket). "0": no rule but the one that matches;
    "1000-*": it comes after 1 000 rules that do not match, in other /16s or
    (the lookup's worst case) all in the destination's own /16."""
    rules = _policy_rules(case)
    engine.set_policy(rules, default_allow=True, nids=len(rules))
    hdr = struct.pack("!HHIIBBHHH", 40000, 443, 1000, 0, 5 << 4, 0x02, 65535, 0, 0)
    pseudo = GUEST + POLICY_DST + struct.pack("!BBH", 0, 6, len(hdr))
    hdr = hdr[:16] + struct.pack("!H", rfc1071(pseudo + hdr)) + hdr[18:]
    frame = eth(0x0800, ip4(6, hdr, dst=POLICY_DST))

    def once() -> list[bytes]:
        engine.input_frame(frame, time.monotonic_ns())
        return engine.take_output()

    out = benchmark(once)
    assert len(out) == 1 and tcp_fields(out[0])[0] == 0x14  # RST+ACK
    ctr = engine.counters()
    assert ctr["tcp_flows_opened"] == 0 and ctr["policy_denied"] >= 1
    assert engine.policy_hits(len(rules))[len(rules) - 1] == ctr["policy_denied"]
