"""DNS forwarder for the virtual DNS host (N+3, port 53).

What this file owns:

* ``parse_resolv_conf``: the host's nameservers, as resolv.conf names them.
* ``DnsForwarderCore``: a sans-IO core (no sockets, no clock reads: the time is
  always passed in) that lets many clients share one upstream socket. It
  rewrites each query's ID to a fresh random unused one, restores the original
  ID on the answer, times queries out and fails over to the next upstream, and
  bounds its pending table. Every dropped message is counted in ``stats``.
* ``DnsProxy``: the thin asyncio edge. It listens on loopback (UDP and TCP);
  the C engine redirects the guest's DNS flows to those listeners, so the proxy
  only ever sees ordinary DNS messages from slirpy's own flow sockets. It
  forwards them to the upstream servers and answers on the same socket or
  connection. It follows changes to resolv.conf.

What this file must not do:

* No per-packet work on the bulk data path (DNS is a slow-path event), no
  protocol emulation: messages are forwarded as they are, except for the ID.
  Truncated (TC) answers are passed through unchanged; the guest retries over
  TCP itself.
* Never raise out of an event-loop callback: bad input is dropped, counted and
  logged at debug level.
* No module-level side effects, no assumption about the working directory, no
  traffic to anything but the configured upstreams.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_UPSTREAMS",
    "DnsForwarderCore",
    "DnsProxy",
    "Expired",
    "parse_resolv_conf",
]

log = logging.getLogger(__name__)

DNS_PORT = 53
HEADER_LEN = 12
MAX_UDP_QUERY = 4096
MAX_TCP_MESSAGE = 65535
# What glibc uses when resolv.conf names no nameserver (or cannot be read).
DEFAULT_UPSTREAMS: tuple[tuple[str, int], ...] = (("127.0.0.1", DNS_PORT),)


# --------------------------------------------------------------------------
# resolv.conf
# --------------------------------------------------------------------------


def _parse_nameserver(token: str) -> str | None:
    """Normalise one nameserver address; None if it is not an IP address."""
    addr, _, scope = token.partition("%")
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            # The v4 socket reaches it; a v6 socket with a mapped address may not.
            return str(ip.ipv4_mapped)
        if scope and ip.is_link_local:
            # A link-local server is unreachable without its scope: keep it.
            # Any other scope-id is meaningless and is ignored.
            if not scope.replace("-", "").replace("_", "").replace(".", "").isalnum():
                return None
            return f"{ip.compressed}%{scope}"
    elif scope:
        return None  # "1.2.3.4%eth0" is garbage
    return ip.compressed


def parse_resolv_conf(text: str) -> list[tuple[str, int]]:
    """Return the ``nameserver`` entries of a resolv.conf text, in order.

    IPv4 and IPv6 addresses are accepted; port is always 53. Comments (``#``,
    ``;``), other keywords, garbage and duplicates are ignored. A scope-id is
    kept only for a link-local IPv6 address (which needs it to be reachable).
    """
    out: list[tuple[str, int]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        words = line.split()
        if len(words) < 2 or words[0] != "nameserver":
            continue
        # glibc also reads only the first word after the keyword; a trailing
        # comment or junk after it does not invalidate the address.
        host = _parse_nameserver(words[1])
        if host is None:
            continue
        entry = (host, DNS_PORT)
        if entry not in out:
            out.append(entry)
    return out


# --------------------------------------------------------------------------
# Sans-IO core
# --------------------------------------------------------------------------


async def _open_numeric(
    host: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """open_connection to a numeric address without the loop's resolver threads."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


@dataclass(frozen=True, slots=True)
class Expired:
    """A query that timed out or whose upstream failed.

    ``upstream`` is the index to resend ``query`` to (already rewritten, same
    ID), or None when every upstream has been tried and the query is dropped.
    """

    client: Hashable
    query: bytes
    upstream: int | None


@dataclass(slots=True)
class _Pending:
    client: Hashable
    orig_id: bytes
    query: bytes  # as sent upstream (rewritten ID)
    question: bytes | None  # lower-cased question section, to check answers
    upstream: int
    tried: list[int] = field(default_factory=list)
    deadline: float = 0.0


def _question_section(msg: bytes) -> bytes | None:
    """Lower-cased question section of a one-question message, or None.

    Used only to check that an answer belongs to the query (spoof/mix-up
    resistance); a message we cannot parse simply goes unchecked.
    """
    if msg[4:6] != b"\x00\x01":
        return None
    off, n = HEADER_LEN, len(msg)
    while True:
        if off >= n:
            return None
        label = msg[off]
        if label == 0:
            off += 1
            break
        if label & 0xC0:
            return None
        off += 1 + label
        if off - HEADER_LEN > 255:  # a name is at most 255 octets
            return None
    off += 4  # QTYPE, QCLASS
    if off > n:
        return None
    return msg[HEADER_LEN:off].lower()


def truncate_for_udp(reply: bytes, limit: int) -> bytes:
    """``reply`` if it fits in ``limit`` bytes, else its truncated form.

    The truncated form is the header with TC set and no records, plus the
    question: what a server sends when the answer does not fit, so that the
    client retries over TCP at once instead of timing out (slirpy never
    fragments toward the guest, so an oversized datagram would be lost).
    """
    if len(reply) <= limit or len(reply) < HEADER_LEN:
        return reply
    question = _question_section(reply)
    qlen = len(question) if question is not None else 0
    qdcount = b"\x00\x01" if question is not None else b"\x00\x00"
    header = reply[:2] + bytes([reply[2] | 0x02, reply[3]]) + qdcount + b"\x00" * 6
    return header + reply[HEADER_LEN : HEADER_LEN + qlen]


def _random_id() -> int:
    """16 bits from the OS's CSPRNG, as secrets.randbits(16) would give.

    os.urandom directly: `secrets` pulls in hmac, hashlib and base64, about
    4 ms and 1 MiB of RSS at start for one function.
    """
    return int.from_bytes(os.urandom(2), "big")


class DnsForwarderCore:
    """Query-ID mapping, timeouts and failover; no I/O and no clock.

    ``submit`` a client's query, send what it returns to the upstream it names;
    feed every upstream reply to ``answer`` and send what it returns to the
    client; call ``expire`` periodically and resend what it returns.
    """

    STAT_KEYS = (
        "queries",
        "forwarded",
        "answered",
        "query_short",
        "query_is_response",
        "query_too_large",
        "no_upstream",
        "reply_malformed",
        "reply_unknown_id",
        "reply_late",
        "reply_wrong_upstream",
        "reply_mismatch",
        "replies_truncated",
        "timeouts",
        "upstream_failures",
        "failovers",
        "dropped",
        "pending_evicted",
    )

    def __init__(
        self,
        n_upstreams: int = 1,
        *,
        timeout: float = 2.0,
        max_pending: int = 4096,
        max_query_size: int = MAX_UDP_QUERY,
        recent_ids: int = 1024,
        rng: Callable[[], int] | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        if max_pending < 1 or recent_ids < 0 or max_pending + recent_ids > 32768:
            # Keep at least half the ID space free so that a random draw
            # finds an unused ID in a couple of tries.
            raise ValueError("max_pending + recent_ids must be in 1..32768")
        if n_upstreams < 0:
            raise ValueError("n_upstreams must be >= 0")
        self.timeout = timeout
        self.max_pending = max_pending
        self.max_query_size = max_query_size
        self._n = n_upstreams
        self._preferred = 0
        self._rng = rng if rng is not None else _random_id
        # Insertion order == deadline order as long as `now` does not go
        # backwards: entries are appended, and moved to the end on re-arm.
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        # IDs recently answered/expired: a late reply is told apart from a
        # forged one, and such IDs are not reused at once.
        self._recent: OrderedDict[int, None] = OrderedDict()
        self._recent_cap = recent_ids
        self.stats: dict[str, int] = dict.fromkeys(self.STAT_KEYS, 0)

    # -- introspection ----------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def n_upstreams(self) -> int:
        return self._n

    # -- helpers ------------------------------------------------------------

    def _remember(self, qid: int) -> None:
        if self._recent_cap == 0:
            return
        self._recent[qid] = None
        self._recent.move_to_end(qid)
        while len(self._recent) > self._recent_cap:
            self._recent.popitem(last=False)

    def _fresh_id(self) -> int:
        for _ in range(32):
            qid = self._rng() & 0xFFFF
            if qid not in self._pending and qid not in self._recent:
                return qid
        # Only reached with a pathological rng: probe linearly. A free ID
        # exists because max_pending + recent_ids <= 32768.
        start = self._rng() & 0xFFFF
        for k in range(0x10000):
            qid = (start + k) & 0xFFFF
            if qid not in self._pending and qid not in self._recent:
                return qid
        raise AssertionError("no free DNS ID")  # pragma: no cover

    def _next_upstream(self, e: _Pending) -> int | None:
        n = self._n
        for k in range(1, n + 1):
            cand = (e.upstream + k) % n
            if cand not in e.tried:
                return cand
        return None

    def _failover(self, qid: int, e: _Pending, now: float) -> Expired:
        nxt = self._next_upstream(e)
        if nxt is None:
            del self._pending[qid]
            self._remember(qid)
            self.stats["dropped"] += 1
            return Expired(e.client, e.query, None)
        e.upstream = nxt
        e.tried.append(nxt)
        e.deadline = now + self.timeout
        self._pending.move_to_end(qid)
        self.stats["failovers"] += 1
        return Expired(e.client, e.query, nxt)

    # -- API ----------------------------------------------------------------

    def submit(self, query: bytes, client: Hashable, now: float) -> tuple[bytes, int] | None:
        """Accept a client's query.

        Returns (query with a fresh ID, upstream index) to send, or None if the
        query is malformed or there is no upstream (counted).
        """
        self.stats["queries"] += 1
        if len(query) < HEADER_LEN:
            self.stats["query_short"] += 1
            return None
        if query[2] & 0x80:
            self.stats["query_is_response"] += 1
            return None
        if len(query) > self.max_query_size:
            self.stats["query_too_large"] += 1
            return None
        if self._n == 0:
            self.stats["no_upstream"] += 1
            return None
        while len(self._pending) >= self.max_pending:
            old_id, _ = self._pending.popitem(last=False)
            self._remember(old_id)
            self.stats["pending_evicted"] += 1
        qid = self._fresh_id()
        query = bytes(query)
        rewritten = qid.to_bytes(2, "big") + query[2:]
        up = self._preferred if self._preferred < self._n else 0
        self._pending[qid] = _Pending(
            client=client,
            orig_id=query[:2],
            query=rewritten,
            question=_question_section(query),
            upstream=up,
            tried=[up],
            deadline=now + self.timeout,
        )
        self.stats["forwarded"] += 1
        return rewritten, up

    def answer(
        self, reply: bytes, upstream_index: int, now: float
    ) -> tuple[Hashable, bytes] | None:
        """Match an upstream reply to its query.

        Returns (client, reply with the client's original ID), or None if the
        reply is malformed, unknown, duplicate, late or from the wrong upstream
        (counted). Truncated replies are passed through unchanged.
        """
        if len(reply) < HEADER_LEN or not reply[2] & 0x80:
            self.stats["reply_malformed"] += 1
            return None
        qid = int.from_bytes(reply[:2], "big")
        e = self._pending.get(qid)
        if e is None:
            self.stats["reply_late" if qid in self._recent else "reply_unknown_id"] += 1
            return None
        if upstream_index not in e.tried:
            self.stats["reply_wrong_upstream"] += 1
            return None
        # A reply with an empty question section (e.g. FORMERR) is accepted.
        if (
            e.question is not None
            and reply[4:6] != b"\x00\x00"
            and bytes(reply[HEADER_LEN : HEADER_LEN + len(e.question)]).lower() != e.question
        ):
            self.stats["reply_mismatch"] += 1
            return None
        del self._pending[qid]
        self._remember(qid)
        # Later queries start on the server that answered, so a dead first
        # server costs one timeout, not one per query.
        self._preferred = upstream_index
        self.stats["answered"] += 1
        if reply[2] & 0x02:
            self.stats["replies_truncated"] += 1
        return e.client, e.orig_id + bytes(reply[2:])

    def expire(self, now: float) -> list[Expired]:
        """Time out queries whose deadline passed; see ``Expired``."""
        out: list[Expired] = []
        while self._pending:
            qid, e = next(iter(self._pending.items()))
            if e.deadline > now:
                break
            self.stats["timeouts"] += 1
            out.append(self._failover(qid, e, now))
        return out

    def fail(self, query: bytes, now: float) -> Expired | None:
        """The edge could not send ``query`` (as returned by submit/expire):
        fail it over at once. None if it is not pending."""
        if len(query) < 2:
            return None
        qid = int.from_bytes(query[:2], "big")
        e = self._pending.get(qid)
        if e is None or e.query != query:
            return None
        self.stats["upstream_failures"] += 1
        return self._failover(qid, e, now)

    def fail_upstream(self, index: int, now: float) -> list[Expired]:
        """Upstream ``index`` became unusable (e.g. its TCP connection was
        refused or closed): fail over every query pending on it."""
        out: list[Expired] = []
        for qid, e in list(self._pending.items()):
            if e.upstream == index:
                self.stats["upstream_failures"] += 1
                out.append(self._failover(qid, e, now))
        return out

    def set_upstreams(self, n: int, now: float) -> list[Expired]:
        """The upstream list changed (n servers now): restart every pending
        query on the first server. Returns what to resend (or drops)."""
        if n < 0:
            raise ValueError("n must be >= 0")
        self._n = n
        self._preferred = 0
        out: list[Expired] = []
        for qid, e in list(self._pending.items()):
            if n == 0:
                del self._pending[qid]
                self._remember(qid)
                self.stats["dropped"] += 1
                out.append(Expired(e.client, e.query, None))
                continue
            e.upstream = 0
            e.tried = [0]
            e.deadline = now + self.timeout
            self._pending.move_to_end(qid)
            out.append(Expired(e.client, e.query, 0))
        return out


# --------------------------------------------------------------------------
# asyncio edge
# --------------------------------------------------------------------------

_AddrKey = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]


def _addr_key(host: str, port: int) -> _AddrKey | None:
    try:
        return ipaddress.ip_address(host), port
    except ValueError:
        return None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _grow_rcvbuf(sock: object) -> None:
    # Absorb a burst of queries (or answers) while the loop is busy: the
    # default buffer holds only a few hundred small datagrams. Best effort;
    # the kernel caps it at net.core.rmem_max.
    with contextlib.suppress(Exception):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # type: ignore[attr-defined]


class _UdpListener(asyncio.DatagramProtocol):
    def __init__(self, proxy: DnsProxy) -> None:
        self._proxy = proxy

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        self._proxy._on_udp_query(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("dns: udp listener error: %r", exc)


class _TcpUpstream:
    """One TCP connection to one upstream, owned by one client session."""

    def __init__(self, session: _TcpSession, index: int, host: str, port: int) -> None:
        self.session = session
        self.index = index
        self.host = host
        self.port = port
        self.queue: list[bytes] = []
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())
        self.session.tasks.add(self.task)
        self.task.add_done_callback(self.session.tasks.discard)

    def send(self, query: bytes) -> None:
        frame = len(query).to_bytes(2, "big") + query
        if self.writer is None:
            self.queue.append(frame)
        elif not self.writer.is_closing():
            self.writer.write(frame)

    async def _run(self) -> None:
        s = self.session
        try:
            reader, self.writer = await asyncio.wait_for(
                _open_numeric(self.host, self.port), s.proxy.timeout
            )
            for frame in self.queue:
                self.writer.write(frame)
            self.queue.clear()
            while True:
                hdr = await reader.readexactly(2)
                msg = await reader.readexactly(int.from_bytes(hdr, "big"))
                await s.on_upstream_reply(msg, self.index)
        except asyncio.CancelledError:
            raise
        except (OSError, EOFError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.debug("dns: tcp upstream %s:%d: %r", self.host, self.port, exc)
        except Exception:
            log.debug("dns: tcp upstream %s:%d failed", self.host, self.port, exc_info=True)
        finally:
            if self.writer is not None:
                self.writer.close()
            s.on_upstream_closed(self)


class _TcpSession:
    """One accepted client connection: pipelined queries, answers in any order."""

    def __init__(
        self, proxy: DnsProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.proxy = proxy
        self.reader = reader
        self.writer = writer
        self.core = DnsForwarderCore(
            len(proxy.upstreams),
            timeout=proxy.timeout,
            max_pending=proxy.tcp_max_pending,
            max_query_size=MAX_TCP_MESSAGE,
            recent_ids=256,
        )
        self.up: dict[int, _TcpUpstream] = {}
        # Every upstream task, retired ones too, so that close() reaps them.
        self.tasks: set[asyncio.Task[None]] = set()
        self.drained = asyncio.Event()
        self.drained.set()
        self.closing = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        idle = self.proxy.tcp_idle_timeout
        try:
            while True:
                try:
                    hdr = await asyncio.wait_for(self.reader.readexactly(2), idle)
                except TimeoutError:
                    if self.core.pending:
                        continue  # answers still owed; pending entries expire
                    self.proxy._stats["tcp_idle_closed"] += 1
                    return
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        self.proxy._stats["tcp_truncated"] += 1
                    break  # EOF (maybe a half-close): deliver what is owed
                n = int.from_bytes(hdr, "big")
                msg = await asyncio.wait_for(self.reader.readexactly(n), idle)
                now = loop.time()
                self.proxy._maybe_reload(now)
                sub = self.core.submit(msg, None, now)
                if sub is None:
                    continue  # counted by the core; the framing is still intact
                self.drained.clear()
                self._send([sub])
            if self.core.pending:
                # Bounded: every pending entry expires after at most one
                # timeout per upstream.
                bound = self.proxy.timeout * (self.core.n_upstreams + 1) + 1.0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.drained.wait(), bound)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            self.proxy._stats["tcp_truncated"] += 1
            log.debug("dns: tcp client: %r", exc)
        finally:
            self.close()

    def close(self) -> None:
        self.closing = True
        self.up.clear()
        for t in list(self.tasks):
            t.cancel()
        self.writer.close()

    def _send(self, items: Iterable[tuple[bytes, int]]) -> None:
        upstreams = self.proxy.upstreams
        for query, idx in items:
            if idx >= len(upstreams):
                continue  # stale index after a reload: it times out
            up = self.up.get(idx)
            if up is None:
                host, port = upstreams[idx]
                up = _TcpUpstream(self, idx, host, port)
                self.up[idx] = up
                up.start()
            up.send(query)

    def process_expired(self, expired: list[Expired]) -> None:
        self._send((e.query, e.upstream) for e in expired if e.upstream is not None)
        if not self.core.pending:
            self.drained.set()

    def tick(self, now: float) -> None:
        self.process_expired(self.core.expire(now))

    async def on_upstream_reply(self, msg: bytes, index: int) -> None:
        res = self.core.answer(msg, index, asyncio.get_running_loop().time())
        if not self.core.pending:
            self.drained.set()
        if res is None or self.writer.is_closing():
            return
        _, reply = res
        self.writer.write(len(reply).to_bytes(2, "big") + reply)
        # Backpressure: a client that does not read stalls only its own upstream.
        await self.writer.drain()

    def on_upstream_closed(self, up: _TcpUpstream) -> None:
        if self.up.get(up.index) is not up:
            return  # retired (reload or session close)
        del self.up[up.index]
        if self.closing or self.writer.is_closing():
            return  # nobody to answer: do not fail over
        now = asyncio.get_running_loop().time()
        self.process_expired(self.core.fail_upstream(up.index, now))

    def on_upstreams_changed(self, now: float) -> None:
        old = list(self.up.values())
        self.up.clear()  # retire first so their close does not fail over
        for up in old:
            if up.task is not None:
                up.task.cancel()
        self.process_expired(self.core.set_upstreams(len(self.proxy.upstreams), now))


class DnsProxy:
    """Loopback DNS listener (UDP + TCP) forwarding to the host's resolvers.

    Upstreams are ``upstreams`` if given, else the nameservers of
    ``resolv_conf`` (re-read when the file changes, checked at most once per
    ``resolv_conf_check_interval`` seconds, on query). If the file names no
    nameserver or cannot be read at start, 127.0.0.1:53 is used, as glibc does;
    if it disappears later, the last known list is kept. ``resolv_conf_port``
    is the port used for the file's nameservers (53 unless testing).
    ``max_udp_reply`` is the largest UDP answer the guest can receive unfragmented;
    larger ones are sent truncated (TC set). ``same_port``: TCP listens on the
    port UDP got (one address-map entry then serves both; start() raises
    EADDRINUSE when that TCP port is taken, and the caller tries again).
    """

    def __init__(
        self,
        *,
        resolv_conf: str | None = "/etc/resolv.conf",
        upstreams: list[tuple[str, int]] | None = None,
        timeout: float = 2.0,
        listen_host: str = "127.0.0.1",
        udp_port: int = 0,
        tcp_port: int = 0,
        max_pending: int = 4096,
        max_tcp_clients: int = 64,
        tcp_max_pending: int = 64,
        tcp_idle_timeout: float = 10.0,
        resolv_conf_check_interval: float = 1.0,
        resolv_conf_port: int = DNS_PORT,
        max_udp_reply: int = 65535,
        same_port: bool = False,
    ) -> None:
        if upstreams is None and resolv_conf is None:
            raise ValueError("DnsProxy needs upstreams or a resolv.conf path")
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.timeout = timeout
        self.listen_host = listen_host
        self.max_udp_reply = max_udp_reply
        self.tcp_max_pending = tcp_max_pending
        self.tcp_idle_timeout = tcp_idle_timeout
        self.max_tcp_clients = max_tcp_clients
        self._want_udp_port = udp_port
        self._want_tcp_port = tcp_port
        self._same_port = same_port
        self._explicit = [(str(h), int(p)) for h, p in upstreams] if upstreams is not None else None
        # Absolute now: the daemon may chdir (or pivot into a sandbox) later.
        self._resolv_path = (
            os.path.abspath(resolv_conf) if upstreams is None and resolv_conf else None
        )
        self._check_interval = resolv_conf_check_interval
        # resolv.conf has no port syntax; this lets a test (or a local
        # resolver on another port) be used through a resolv.conf file.
        self._resolv_port = resolv_conf_port
        self._last_check = float("-inf")
        self._resolv_sig: tuple[int, int, int, int] | None = None
        self._upstreams: list[tuple[str, int]] = []
        self._source_index: dict[_AddrKey, int] = {}
        self._core = DnsForwarderCore(0, timeout=timeout, max_pending=max_pending)
        self._stats: dict[str, int] = dict.fromkeys(
            (
                "udp_reply_unknown_source",
                "udp_send_errors",
                "udp_recv_errors",
                "tcp_accepted",
                "tcp_rejected",
                "tcp_idle_closed",
                "tcp_truncated",
                "resolv_conf_reloads",
                "resolv_conf_errors",
                "callback_errors",
            ),
            0,
        )
        self._tcp_closed_stats: dict[str, int] = dict.fromkeys(DnsForwarderCore.STAT_KEYS, 0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp_transport: asyncio.DatagramTransport | None = None
        self._udp_port: int | None = None
        self._tcp_port: int | None = None
        self._server: asyncio.Server | None = None
        self._up_socks: dict[socket.AddressFamily, socket.socket] = {}
        self._sessions: set[_TcpSession] = set()
        self._session_tasks: set[asyncio.Task[object]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._closing = False

    # -- public -------------------------------------------------------------

    @property
    def udp_port(self) -> int:
        if self._udp_port is None:
            raise RuntimeError("DnsProxy not started")
        return self._udp_port

    @property
    def tcp_port(self) -> int:
        if self._tcp_port is None:
            raise RuntimeError("DnsProxy not started")
        return self._tcp_port

    @property
    def upstreams(self) -> list[tuple[str, int]]:
        return list(self._upstreams)

    @property
    def stats(self) -> dict[str, int]:
        out = dict(self._stats)
        for k, v in self._core.stats.items():
            out["udp_" + k] = v
        tcp = dict(self._tcp_closed_stats)
        for s in self._sessions:
            for k, v in s.core.stats.items():
                tcp[k] += v
        for k, v in tcp.items():
            out["tcp_" + k] = v
        return out

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        try:
            # Bind numeric addresses ourselves: letting the loop resolve them
            # starts uvloop's resolver threads, and --enable-sandbox must run
            # single-threaded.
            family = socket.AF_INET6 if ":" in self.listen_host else socket.AF_INET
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((self.listen_host, self._want_udp_port))
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpListener(self), sock=udp
            )
            self._udp_transport = transport
            _grow_rcvbuf(transport.get_extra_info("socket"))
            self._udp_port = transport.get_extra_info("sockname")[1]
            tcp = socket.socket(family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self.listen_host,
                          self._udp_port if self._same_port else self._want_tcp_port))
            except OSError:
                tcp.close()
                raise
            self._server = await asyncio.start_server(self._on_tcp_client, sock=tcp)
            self._tcp_port = self._server.sockets[0].getsockname()[1]
            # After binding: the self-loop filter needs our own ports.
            if self._explicit is not None:
                self._set_upstreams(self._explicit, loop.time())
            else:
                self._maybe_reload(loop.time(), force=True)
            interval = max(0.02, min(0.5, self.timeout / 4))
            self._ticker = loop.create_task(self._tick_forever(interval))
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self._closing = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(BaseException):
                await self._ticker
            self._ticker = None
        if self._udp_transport is not None:
            self._udp_transport.close()
            self._udp_transport = None
        for sock in self._up_socks.values():
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(sock.fileno())
            sock.close()
        self._up_socks.clear()
        if self._server is not None:
            self._server.close()
        tasks = list(self._session_tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    # -- upstream list --------------------------------------------------------

    def _self_keys(self) -> set[_AddrKey]:
        keys = set()
        for port in (self._udp_port, self._tcp_port):
            if port is not None and (k := _addr_key(self.listen_host, port)) is not None:
                keys.add(k)
        return keys

    def _set_upstreams(self, servers: list[tuple[str, int]], now: float) -> None:
        mine = self._self_keys()
        # Forwarding to ourselves would loop every query until it expires.
        servers = [s for s in servers if _addr_key(s[0].partition("%")[0], s[1]) not in mine]
        if servers == self._upstreams:
            return
        log.debug("dns: upstreams %s", servers)
        self._upstreams = servers
        self._source_index = {}
        for i, (h, p) in enumerate(servers):
            k = _addr_key(h, p)
            if k is not None:
                self._source_index.setdefault(k, i)
        self._resend_udp(self._core.set_upstreams(len(servers), now), now)
        for s in list(self._sessions):
            s.on_upstreams_changed(now)

    def _maybe_reload(self, now: float, force: bool = False) -> None:
        path = self._resolv_path
        if path is None or (not force and now - self._last_check < self._check_interval):
            return
        self._last_check = now
        try:
            st = os.stat(path)  # follows a symlink whose target may change
            sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            sig = None
        if sig == self._resolv_sig and not force:
            return
        self._resolv_sig = sig
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read(1 << 16)  # resolv.conf is small; bound the read
        except OSError as exc:
            self._stats["resolv_conf_errors"] += 1
            log.debug("dns: cannot read %s: %r", path, exc)
            if self._upstreams:
                return  # keep the last good list through a transient removal
            self._set_upstreams(self._default_upstreams(), now)
            return
        self._stats["resolv_conf_reloads"] += 1
        servers = [(h, self._resolv_port) for h, _ in parse_resolv_conf(text)]
        self._set_upstreams(servers or self._default_upstreams(), now)

    def _default_upstreams(self) -> list[tuple[str, int]]:
        return [(h, self._resolv_port) for h, _ in DEFAULT_UPSTREAMS]

    # -- UDP ----------------------------------------------------------------

    def _upstream_sock(self, family: socket.AddressFamily) -> socket.socket:
        sock = self._up_socks.get(family)
        if sock is None:
            assert self._loop is not None
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                _grow_rcvbuf(sock)
                self._loop.add_reader(sock.fileno(), self._on_udp_upstream_readable, sock)
            except BaseException:
                sock.close()
                raise
            self._up_socks[family] = sock
        return sock

    def _on_udp_query(self, data: bytes, addr: tuple) -> None:
        try:
            if self._closing or self._loop is None:
                return
            now = self._loop.time()
            self._maybe_reload(now)
            sub = self._core.submit(data, addr, now)
            if sub is not None:
                self._send_udp([sub], now)
        except Exception:
            self._stats["callback_errors"] += 1
            log.debug("dns: udp query handling failed", exc_info=True)

    def _send_udp(self, items: list[tuple[bytes, int]], now: float) -> None:
        # A worklist, not recursion: a failed send fails over to the next
        # upstream, which may fail too; the core bounds it (each tried once).
        work = list(items)
        while work:
            query, idx = work.pop()
            try:
                host, port = self._upstreams[idx]
                self._upstream_sock(_family(host)).sendto(query, (host, port))
            except (BlockingIOError, InterruptedError):
                # Socket buffer full: leave it to the timeout.
                self._stats["udp_send_errors"] += 1
            except (OSError, IndexError) as exc:
                self._stats["udp_send_errors"] += 1
                log.debug("dns: udp send to upstream %d failed: %r", idx, exc)
                e = self._core.fail(query, now)
                if e is not None and e.upstream is not None:
                    work.append((e.query, e.upstream))

    def _resend_udp(self, expired: list[Expired], now: float) -> None:
        self._send_udp([(e.query, e.upstream) for e in expired if e.upstream is not None], now)

    def _on_udp_upstream_readable(self, sock: socket.socket) -> None:
        try:
            assert self._loop is not None
            now = self._loop.time()
            for _ in range(64):  # bounded batch; the loop calls us again
                try:
                    data, addr = sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    self._stats["udp_recv_errors"] += 1
                    log.debug("dns: upstream recv: %r", exc)
                    continue
                idx = self._source_index.get(_addr_key(addr[0], addr[1]))  # type: ignore[arg-type]
                if idx is None:
                    self._stats["udp_reply_unknown_source"] += 1
                    continue
                res = self._core.answer(data, idx, now)
                if res is not None and self._udp_transport is not None:
                    client, reply = res
                    reply = truncate_for_udp(reply, self.max_udp_reply)
                    self._udp_transport.sendto(reply, client)  # type: ignore[arg-type]
        except Exception:
            self._stats["callback_errors"] += 1
            log.debug("dns: udp upstream read failed", exc_info=True)

    # -- TCP ----------------------------------------------------------------

    def _on_tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback that starts our own task: on Python 3.11, a
        # client_connected_cb coroutine that ends cancelled (as at close())
        # makes asyncio log a spurious "Exception in callback".
        try:
            if self._closing or len(self._sessions) >= self.max_tcp_clients:
                self._stats["tcp_rejected"] += 1
                writer.close()
                return
            self._stats["tcp_accepted"] += 1
            session = _TcpSession(self, reader, writer)
            self._sessions.add(session)
            task = asyncio.get_running_loop().create_task(self._run_session(session))
            self._session_tasks.add(task)
            task.add_done_callback(self._session_tasks.discard)
        except Exception:
            self._stats["callback_errors"] += 1
            log.debug("dns: tcp accept failed", exc_info=True)
            writer.close()

    async def _run_session(self, session: _TcpSession) -> None:
        try:
            await session.run()
        except Exception:
            self._stats["callback_errors"] += 1
            log.debug("dns: tcp session failed", exc_info=True)
        finally:
            session.close()
            if session.tasks:
                # Reap the cancelled upstream tasks (bounded).
                with contextlib.suppress(BaseException):
                    await asyncio.wait(list(session.tasks), timeout=1.0)
            self._sessions.discard(session)
            for k, v in session.core.stats.items():
                self._tcp_closed_stats[k] += v

    # -- timers ---------------------------------------------------------------

    async def _tick_forever(self, interval: float) -> None:
        assert self._loop is not None
        while True:
            await asyncio.sleep(interval)
            now = self._loop.time()
            try:
                self._resend_udp(self._core.expire(now), now)
                for s in list(self._sessions):
                    s.tick(now)
            except Exception:
                self._stats["callback_errors"] += 1
                log.debug("dns: expiry tick failed", exc_info=True)
