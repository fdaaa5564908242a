"""DHCPv4 and the DNS forwarder against a real guest (issue 4).

This file owns the integration tests of slirpy's DHCP server (busybox udhcpc
in the container gets its lease) and of the DNS forwarder at N+3 (UDP and
TCP, `--dns-upstream`, `--resolv-conf` and its reload, `--disable-dns`, and
garbage that must not disturb later good exchanges). The loopback DNS server
(`FakeDns`) lives in tests/helpers/fake_dns.py.

DNS never leaves the machine: every slirpy started here names its upstream
explicitly (`--dns-upstream` or a resolv.conf file written by the test), and
the upstream is a `FakeDns` on a 127/8 address: no query leaves the machine.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator

import pytest

from tests.helpers.daemons import Slirpy
from tests.helpers.fake_dns import (
    PORT_PROBE,
    RECORDS,
    TYPE_A,
    FakeDns,
    assert_forwarded,
    build_answer,
    fake_dns,
    nslookup,
)
from tests.helpers.testbed import Container, free_port

GUEST_PY = "/opt/slirpy-venv/bin/python"

# ---------------------------------------------------------------------------
# Guest-side helpers
# ---------------------------------------------------------------------------

# A DNS client run by the guest's own Python: builds one A query with a fixed
# ID, sends it over UDP or TCP (length-prefixed), prints the reply as JSON,
# or the exception class name when the exchange fails.
DNS_CLIENT = r"""
import json, socket, struct, sys
transport, server, name = sys.argv[1], sys.argv[2], sys.argv[3]
qid = int(sys.argv[4]) if len(sys.argv) > 4 else 0x1234
q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
q += struct.pack("!HH", 1, 1)
fam = socket.AF_INET6 if ":" in server else socket.AF_INET
try:
    if transport == "udp":
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.connect((server, 53))
        s.send(q)
        r = s.recv(65535)
    else:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect((server, 53))
        s.sendall(struct.pack("!H", len(q)) + q)
        def take(n):
            b = b""
            while len(b) < n:
                c = s.recv(n - len(b))
                if not c:
                    raise EOFError("short read")
                b += c
            return b
        r = take(struct.unpack("!H", take(2))[0])
except Exception as e:
    print(json.dumps({"error": type(e).__name__}))
    sys.exit(0)
print(json.dumps({"query": q.hex(), "reply": r.hex()}))
"""

UDHCPC_SCRIPT = """#!/bin/sh
echo "EVENT=$1 ip=$ip subnet=$subnet router=$router dns=$dns lease=$lease" \\
     "serverid=$serverid mtu=$mtu"
"""


@pytest.fixture
def scripts() -> Iterator[str]:
    """A directory the container's root (uid 65534 outside) can read."""
    d = tempfile.mkdtemp(prefix="slirpy-h8-", dir="/tmp")
    try:
        os.chmod(d, 0o755)
        for name, text in (("dnsclient.py", DNS_CLIENT), ("udhcpc.sh", UDHCPC_SCRIPT)):
            path = os.path.join(d, name)
            with open(path, "w") as f:
                f.write(text)
            os.chmod(path, 0o755)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def dns_query(
    c: Container, scripts: str, transport: str, server: str, name: str, qid: int = 0x1234
) -> dict[str, str]:
    r = c.run(GUEST_PY, f"{scripts}/dnsclient.py", transport, server, name, str(qid), timeout=30)
    return json.loads(r.stdout.decode().strip().splitlines()[-1])


def udhcpc(c: Container, scripts: str) -> dict[str, str]:
    """One DHCP exchange with busybox udhcpc; the env of the `bound` event."""
    r = c.run(
        "busybox", "udhcpc", "-i", "tap0", "-n", "-q", "-f", "-t", "4", "-T", "1",
        "-O", "mtu", "-s", f"{scripts}/udhcpc.sh", timeout=30, check=False,
    )
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    bound = [ln for ln in out.splitlines() if ln.startswith("EVENT=bound ")]
    assert len(bound) == 1, out
    return dict(kv.split("=", 1) for kv in bound[0].split())


def alive(s: Slirpy) -> None:
    assert s.proc.poll() is None, s.output()


# ---------------------------------------------------------------------------
# DHCP
# ---------------------------------------------------------------------------


def _unused_upstream() -> str:
    # Nothing listens there: no test may fall back to the host's resolv.conf.
    return f"--dns-upstream=127.0.0.1:{free_port()}"


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (
            [],
            {"ip": "10.0.2.15", "subnet": "255.255.255.0", "router": "10.0.2.2",
             "dns": "10.0.2.3", "serverid": "10.0.2.2"},
        ),
        (
            ["--cidr=10.0.135.128/25"],
            {"ip": "10.0.135.143", "subnet": "255.255.255.128", "router": "10.0.135.130",
             "dns": "10.0.135.131", "serverid": "10.0.135.130"},
        ),
        (
            ["--disable-dns"],
            {"ip": "10.0.2.15", "subnet": "255.255.255.0", "router": "10.0.2.2",
             "dns": "", "serverid": "10.0.2.2"},
        ),
        (
            # The DHCP server is made lazily, but before the sandbox's pivot:
            # slirpy's own files are out of reach after it.
            ["--enable-sandbox", "--enable-seccomp"],
            {"ip": "10.0.2.15", "subnet": "255.255.255.0", "router": "10.0.2.2",
             "dns": "10.0.2.3", "serverid": "10.0.2.2"},
        ),
    ],
    ids=["default", "cidr25", "disable-dns", "sandbox"],
)
def test_udhcpc_lease(container: Container, slirpy_factory, scripts: str, args, expect) -> None:
    s = slirpy_factory([*args, _unused_upstream(), str(container.pid), "tap0"])
    container.run("ip", "link", "set", "tap0", "up")
    env = udhcpc(container, scripts)
    assert {k: env[k] for k in expect} == expect
    assert env["lease"] == "86400"
    assert env["mtu"] == "1500"  # asked for with -O mtu: the TAP's MTU
    # A second client run (a renewal from scratch) gets the same address back.
    assert udhcpc(container, scripts)["ip"] == expect["ip"]
    alive(s)


# ---------------------------------------------------------------------------
# DNS
# ---------------------------------------------------------------------------

@pytest.fixture
def dns_net(container: Container, slirpy_factory) -> Iterator[tuple[Container, Slirpy, FakeDns]]:
    """A configured guest whose slirpy forwards DNS to a FakeDns on 127.0.0.1."""
    with fake_dns("127.0.0.1", RECORDS) as srv:
        s = slirpy_factory(
            ["-c", "--mtu=65520", f"--dns-upstream=127.0.0.1:{srv.port}", str(container.pid),
             "tap0"]
        )
        yield container, s, srv


def test_dns_udp_nslookup(dns_net, scripts: str) -> None:
    c, s, srv = dns_net
    rc, out = nslookup(c, "alpha.slirpy.test", "10.0.2.3")
    assert rc == 0, out
    assert "Address: 192.0.2.10" in out
    assert "alpha.slirpy.test" in srv.names("udp")
    rc, out = nslookup(c, "nosuch.slirpy.test", "10.0.2.3")
    assert rc != 0 and "NXDOMAIN" in out, out
    # Byte-exact: the guest gets the server's answer with its own query ID.
    for qid in (0x1234, 0x0001, 0xFFFF):
        reply = assert_forwarded(dns_query(c, scripts, "udp", "10.0.2.3", "beta.slirpy.test", qid),
                                 RECORDS)
        assert reply[:2] == qid.to_bytes(2, "big")
        assert reply[-4:] == bytes([192, 0, 2, 11])
    alive(s)


def test_dns_tcp(dns_net, scripts: str) -> None:
    c, s, srv = dns_net
    reply = assert_forwarded(dns_query(c, scripts, "tcp", "10.0.2.3", "alpha.slirpy.test"),
                             RECORDS)
    assert reply[:2] == b"\x12\x34" and reply[-4:] == bytes([192, 0, 2, 10])
    assert srv.names("tcp") == ["alpha.slirpy.test"]
    assert srv.names("udp") == []
    nx = assert_forwarded(dns_query(c, scripts, "tcp", "10.0.2.3", "gamma.slirpy.test"), RECORDS)
    assert nx[3] & 0x0F == 3  # NXDOMAIN passed through
    alive(s)


# Several queries written at once on one TCP connection (RFC 7766
# pipelining); the answers may come back in any order and are matched by ID.
DNS_PIPELINE = r"""
import json, socket, struct, sys
server, names = sys.argv[1], sys.argv[2:]
qs = {}
for i, name in enumerate(names):
    qid = 0x4000 + i
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
    qs[qid] = q + struct.pack("!HH", 1, 1)
s = socket.create_connection((server, 53), timeout=5)
s.sendall(b"".join(struct.pack("!H", len(q)) + q for q in qs.values()))
def take(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("short read")
        b += c
    return b
out = []
for _ in qs:
    r = take(struct.unpack("!H", take(2))[0])
    out.append({"query": qs[int.from_bytes(r[:2], "big")].hex(), "reply": r.hex()})
print(json.dumps(out))
"""


def test_dns_tcp_pipelined(dns_net, scripts: str) -> None:
    c, s, srv = dns_net
    path = os.path.join(scripts, "pipeline.py")
    with open(path, "w") as f:
        f.write(DNS_PIPELINE)
    os.chmod(path, 0o644)
    names = ["alpha.slirpy.test", "beta.slirpy.test", "nosuch.slirpy.test", "alpha.slirpy.test"]
    r = c.run(GUEST_PY, path, "10.0.2.3", *names, timeout=30)
    answers = json.loads(r.stdout.decode().strip().splitlines()[-1])
    assert len(answers) == len(names)
    got = sorted((bytes.fromhex(a["query"])[:2].hex(), assert_forwarded(a, RECORDS)[-4:].hex())
                 for a in answers)
    # Every query answered once, by ID; A records for the known names.
    assert [g[0] for g in got] == ["4000", "4001", "4002", "4003"]
    assert got[0][1] == got[3][1] == bytes([192, 0, 2, 10]).hex()
    assert got[1][1] == bytes([192, 0, 2, 11]).hex()
    assert sorted(srv.names("tcp")) == sorted(names)
    alive(s)


def _write_resolv_conf(path: str, server: str) -> None:
    # Atomic replace (new inode), the way resolvconf/systemd rewrite it.
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(f"# written by test_dhcp_dns\nnameserver {server}\noptions edns0\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def test_dns_resolv_conf_and_reload(container: Container, slirpy_factory, scripts: str) -> None:
    # resolv.conf has no port syntax, so the servers listen on port 53 of
    # two private loopback addresses (bound here as root; slirpy itself
    # stays unprivileged and only sends to them).
    base = 100 + os.getpid() % 100
    first, second = f"127.53.{base}.1", f"127.53.{base}.2"
    resolv = os.path.join(scripts, "resolv.conf")
    with (
        fake_dns(first, {"alpha.slirpy.test": "192.0.2.21"}, 53) as one,
        fake_dns(second, {"alpha.slirpy.test": "192.0.2.22"}, 53) as two,
    ):
        _write_resolv_conf(resolv, first)
        s = slirpy_factory(["-c", f"--resolv-conf={resolv}", str(container.pid), "tap0"])
        rc, out = nslookup(container, "alpha.slirpy.test", "10.0.2.3")
        assert rc == 0 and "Address: 192.0.2.21" in out, out
        assert "alpha.slirpy.test" in one.names() and two.names() == []
        tcp = dns_query(container, scripts, "tcp", "10.0.2.3", "alpha.slirpy.test")
        assert_forwarded(tcp, one.records)

        _write_resolv_conf(resolv, second)
        time.sleep(1.2)  # the file is checked at most once a second, on query
        before = len(one.log)
        for transport in ("udp", "tcp"):
            res = dns_query(container, scripts, transport, "10.0.2.3", "alpha.slirpy.test")
            assert assert_forwarded(res, two.records)[-4:] == bytes([192, 0, 2, 22])
        assert two.names("udp") == ["alpha.slirpy.test"]
        assert two.names("tcp") == ["alpha.slirpy.test"]
        assert len(one.log) == before
        alive(s)


def test_disable_dns_refused(container: Container, slirpy_factory, scripts: str) -> None:
    with fake_dns("127.0.0.1", RECORDS) as srv:
        s = slirpy_factory(
            ["-c", "--disable-dns", f"--dns-upstream=127.0.0.1:{srv.port}", str(container.pid),
             "tap0"]
        )
        for transport in ("udp", "tcp"):
            res = dns_query(container, scripts, transport, "10.0.2.3", "alpha.slirpy.test")
            assert res == {"error": "ConnectionRefusedError"}
        rc, out = nslookup(container, "alpha.slirpy.test", "10.0.2.3")
        assert rc != 0 and "192.0.2.10" not in out
        assert srv.log == []
        # N+3 itself still answers pings.
        r = container.run("busybox", "ping", "-c", "1", "-W", "2", "10.0.2.3")
        assert "1 packets received" in r.stdout.decode()
        alive(s)


# Junk sent by the guest's own Python: a bounded list of malformed DHCP and
# DNS payloads (empty, short, wrong magic, truncated options, responses,
# compression loops, oversized), each sent once to every target.
GARBAGE_SENDER = r"""
import random, socket, struct, sys
rng = random.Random(4)
bootp = bytearray(240)
bootp[0:4] = b"\x01\x01\x06\x00"
bootp[236:240] = b"\x63\x82\x53\x63"
junk = [
    b"", b"\x01", bytes(11), bytes(12), bytes(300), rng.randbytes(1400),
    bytes(bootp[:239]),                                  # cut inside the cookie
    bytes(bootp[:236]) + b"XXXX",                         # wrong magic
    bytes(bootp) + b"\x35",                               # option without length
    bytes(bootp) + b"\x35\x01",                           # option cut short
    bytes(bootp) + b"\x35\x01\x01\x37\xff" + bytes(10),   # length past the end
    bytes(bootp) + b"\x35\x01\x09\xff",                   # unknown message type
    bytes(bootp) + b"\x35\x01\x03\x32\x04\x0a\x00\x02\xfe\xff",  # request, foreign IP
    bytes(bootp) + b"\x34\x01\x03" + b"\x35\x01\x01\xff",  # option overload, no sname data
    struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0) + b"\x03foo\x00\x00\x01\x00\x01",  # response
    struct.pack("!HHHHHH", 2, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01",  # ptr loop
    struct.pack("!HHHHHH", 3, 0x0100, 9, 0, 0, 0) + b"\x3f" + b"a" * 10,  # cut label
    struct.pack("!HHHHHH", 4, 0x0100, 1, 0, 0, 0) + (b"\x3f" + b"a" * 63) * 5 + b"\x00",
    rng.randbytes(60000),
]
targets = [("10.0.2.2", 67), ("10.0.2.3", 67), ("255.255.255.255", 67), ("10.0.2.3", 53)]
sent = 0
for dst, port in targets:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    if port == 67:
        s.bind(("0.0.0.0", 68))
    for j in junk:
        s.sendto(j, (dst, port))
        sent += 1
    s.close()
# TCP: a length prefix that promises more than is sent, then a half-close.
for frame in (b"\x00", b"\x00\x20" + bytes(5), b"\xff\xff" + bytes(100)):
    s = socket.create_connection(("10.0.2.3", 53), timeout=5)
    s.sendall(frame)
    s.shutdown(socket.SHUT_WR)
    try:
        s.recv(100)
    except OSError:
        pass
    s.close()
print(sent)
"""


def test_garbage_then_good_exchanges(dns_net, scripts: str) -> None:
    c, s, _srv = dns_net
    path = os.path.join(scripts, "garbage.py")
    with open(path, "w") as f:
        f.write(GARBAGE_SENDER)
    os.chmod(path, 0o644)
    r = c.run(GUEST_PY, path, timeout=60)
    assert int(r.stdout.decode().strip()) == 4 * 19
    time.sleep(0.3)
    alive(s)
    env = udhcpc(c, scripts)
    assert (env["ip"], env["router"], env["dns"], env["lease"]) == (
        "10.0.2.15", "10.0.2.2", "10.0.2.3", "86400",
    )
    for transport in ("udp", "tcp"):
        res = dns_query(c, scripts, transport, "10.0.2.3", "alpha.slirpy.test", 0x4242)
        assert assert_forwarded(res, RECORDS)[:2] == b"\x42\x42"
    rc, out = nslookup(c, "beta.slirpy.test", "10.0.2.3")
    assert rc == 0 and "Address: 192.0.2.11" in out, out
    alive(s)


def test_other_ports_on_dns_host_refused(dns_net, scripts: str) -> None:
    c, s, srv = dns_net
    path = os.path.join(scripts, "probe.py")
    with open(path, "w") as f:
        f.write(PORT_PROBE)
    os.chmod(path, 0o644)
    for port in ("54", "5353", "80"):
        r = c.run(GUEST_PY, path, "10.0.2.3", port, timeout=30)
        # UDP: ICMP port unreachable; TCP: RST. Both read as ECONNREFUSED.
        assert r.stdout.decode().split() == ["ECONNREFUSED"] * 2
    assert srv.log == []
    alive(s)


# 200 A records: a 3233-byte answer, more than a 1500-byte MTU can carry in
# one datagram (slirpy never fragments).
BIG = {"big.slirpy.test": [f"192.0.2.{i}" for i in range(1, 201)]}


@pytest.mark.parametrize("mtu", [1500, 65520])
def test_dns_answer_larger_than_mtu(container: Container, slirpy_factory, scripts: str,
                                    mtu: int) -> None:
    with fake_dns("127.0.0.1", BIG) as srv:
        s = slirpy_factory(
            ["-c", f"--mtu={mtu}", f"--dns-upstream=127.0.0.1:{srv.port}",
             str(container.pid), "tap0"]
        )
        full = assert_forwarded(dns_query(container, scripts, "tcp", "10.0.2.3",
                                          "big.slirpy.test"), BIG)
        assert len(full) == 12 + 21 + 200 * 16
        res = dns_query(container, scripts, "udp", "10.0.2.3", "big.slirpy.test")
        assert "error" not in res, res  # an answer, not a timeout
        query, reply = bytes.fromhex(res["query"]), bytes.fromhex(res["reply"])
        if mtu > len(full) + 28:
            assert reply == full
        else:
            # Too big for the guest's MTU: a truncated answer (TC set, header
            # and question only), so that the guest retries over TCP at once.
            assert len(reply) <= mtu - 28
            assert reply[:2] == query[:2]
            assert reply[2] & 0x82 == 0x82  # QR, TC
            assert reply[3] & 0x0F == 0  # NOERROR
            assert reply[4:6] == b"\x00\x01" and reply[12:] == query[12:]
        alive(s)


def test_fake_dns_answers_are_what_tests_expect() -> None:
    # The helper itself: an A query for a known name gets exactly one record.
    q = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x05alpha\x06slirpy\x04test\x00"
    q += struct.pack("!HH", TYPE_A, 1)
    a = build_answer(q, RECORDS)
    assert a is not None and a[:2] == b"\x00\x07" and a[6:8] == b"\x00\x01"
    assert a.endswith(bytes([192, 0, 2, 10]))
    assert build_answer(a, RECORDS) is None
    assert build_answer(random.Random(1).randbytes(40), RECORDS) is None
