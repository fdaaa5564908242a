"""A tiny authoritative DNS server on loopback, and the guest-side checks of
the DNS tests.

Owns `FakeDns`/`fake_dns()` (UDP + TCP on a 127/8 or ::1 address, answering
A/AAAA from a dict and logging every query), `build_answer()`, the shared
`RECORDS`, `nslookup()` in the container, `assert_forwarded()` and
`PORT_PROBE` (a guest program that probes one port over UDP and TCP). DNS
never leaves the machine: the upstream of every slirpy in the tests is a
`FakeDns`.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address

from tests.helpers.testbed import Container

TYPE_A = 1
TYPE_AAAA = 28


def parse_question(msg: bytes) -> tuple[str, int, int] | None:
    """(lower-cased name, qtype, end offset of the question) or None."""
    if len(msg) < 12 or msg[4:6] != b"\x00\x01":
        return None
    off, labels = 12, []
    while True:
        if off >= len(msg):
            return None
        n = msg[off]
        off += 1
        if n == 0:
            break
        if n & 0xC0 or off + n > len(msg):
            return None
        labels.append(msg[off : off + n])
        off += n
    if off + 4 > len(msg):
        return None
    qtype = struct.unpack("!H", msg[off : off + 2])[0]
    return b".".join(labels).decode("ascii", "replace").lower(), qtype, off + 4


Records = dict[str, str | list[str]]


def build_answer(query: bytes, records: Records) -> bytes | None:
    """The answer to a one-question query: A/AAAA records from `records`
    (one address or a list), NOERROR/NODATA for a known name and another
    type, NXDOMAIN otherwise. None for anything that is not such a query
    (dropped, like garbage)."""
    if len(query) < 12 or query[2] & 0x80:
        return None
    q = parse_question(query)
    if q is None:
        return None
    name, qtype, end = q
    answers = []
    if name in records:
        rcode = 0
        value = records[name]
        for text in [value] if isinstance(value, str) else value:
            addr = ip_address(text)
            want = TYPE_A if addr.version == 4 else TYPE_AAAA
            if qtype == want:
                answers.append(
                    b"\xc0\x0c" + struct.pack("!HHIH", want, 1, 60, len(addr.packed))
                    + addr.packed
                )
    else:
        rcode = 3
    flags = bytes([0x84 | (query[2] & 0x01), rcode])  # QR AA (+RD copied)
    header = query[:2] + flags + struct.pack("!HHHH", 1, len(answers), 0, 0)
    return header + query[12:end] + b"".join(answers)


@dataclass
class FakeDns:
    """UDP + TCP DNS server on (host, port), answering from `records`.

    `log` holds (transport, name, qtype) for every well-formed query, so that
    a test can tell which server a query reached and how.
    """

    host: str
    records: Records
    port: int = 0
    log: list[tuple[str, str, int]] = field(default_factory=list)
    garbage: int = 0

    def __post_init__(self) -> None:
        fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for _ in range(20):  # the same port must be free for UDP and TCP
            udp = socket.socket(fam, socket.SOCK_DGRAM)
            tcp = socket.socket(fam, socket.SOCK_STREAM)
            try:
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                udp.bind((self.host, self.port))
                tcp.bind((self.host, udp.getsockname()[1]))
                tcp.listen(16)
                break
            except OSError:
                udp.close()
                tcp.close()
                if self.port:
                    raise
        else:
            raise AssertionError("no free port for the fake DNS server")
        self.port = udp.getsockname()[1]
        udp.settimeout(0.1)
        tcp.settimeout(0.1)
        self._udp, self._tcp = udp, tcp
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._serve_udp, daemon=True),
            threading.Thread(target=self._serve_tcp, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _record(self, transport: str, msg: bytes) -> bytes | None:
        reply = build_answer(msg, self.records)
        q = parse_question(msg)
        if reply is None or q is None:
            self.garbage += 1
            return None
        self.log.append((transport, q[0], q[1]))
        return reply

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            try:
                msg, peer = self._udp.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            reply = self._record("udp", msg)
            if reply is not None:
                with contextlib.suppress(OSError):
                    self._udp.sendto(reply, peer)

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._tcp.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve_conn, args=(conn,), daemon=True).start()

    def _serve_conn(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        buf = b""
        with conn:
            try:
                while not self._stop.is_set():
                    chunk = conn.recv(65535)
                    if not chunk:
                        return
                    buf += chunk
                    while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                        n = int.from_bytes(buf[:2], "big")
                        msg, buf = buf[2 : 2 + n], buf[2 + n :]
                        reply = self._record("tcp", msg)
                        if reply is not None:
                            conn.sendall(len(reply).to_bytes(2, "big") + reply)
            except OSError:
                return

    def names(self, transport: str | None = None) -> list[str]:
        return [n for t, n, _ in list(self.log) if transport in (None, t)]

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self._udp.close()
        self._tcp.close()


@contextlib.contextmanager
def fake_dns(host: str, records: Records, port: int = 0) -> Iterator[FakeDns]:
    srv = FakeDns(host, records, port)
    try:
        yield srv
    finally:
        srv.close()


RECORDS = {"alpha.slirpy.test": "192.0.2.10", "beta.slirpy.test": "192.0.2.11"}


def nslookup(c: Container, name: str, server: str) -> tuple[int, str]:
    r = c.run("busybox", "nslookup", name, server, timeout=30, check=False)
    return r.returncode, r.stdout.decode() + r.stderr.decode()


def assert_forwarded(res: dict[str, str], records: Records) -> bytes:
    """The guest got exactly the fake server's answer, with its own ID."""
    assert "error" not in res, res
    query, reply = bytes.fromhex(res["query"]), bytes.fromhex(res["reply"])
    assert reply == build_answer(query, records)
    return reply


PORT_PROBE = r"""
import errno, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, kind)
    s.settimeout(5)
    try:
        s.connect((host, port))
        s.send(b"hello")
        print(repr(s.recv(100)))
    except OSError as e:
        print(errno.errorcode.get(e.errno, type(e).__name__))
"""
