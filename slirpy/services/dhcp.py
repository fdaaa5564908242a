"""Sans-IO DHCPv4 server core (RFC 2131 / RFC 2132) for the guest's link.

What this module owns:
  * parsing a guest's BOOTP/DHCP request (the UDP payload of a datagram the
    engine saw going to port 67), validating every byte of it;
  * the lease table for the small address pool the caller hands in
    (N+15..N+30 by default): offers, bindings, releases, declined addresses,
    expiry against a caller-supplied clock;
  * building the reply (OFFER / ACK / NAK) and deciding where it must go
    (broadcast, or unicast to the client's address and MAC).

What it must not do: any I/O (no sockets, no asyncio, no logging per packet),
read a clock (``now`` is always passed in), raise on guest input, or let guest
input grow memory beyond the pool size. The asyncio edge and the engine
(which emits the reply from N+2:67 to port 68) live elsewhere.

Deliberate limits: no relay agents (a request with ``giaddr`` set cannot be
answered correctly on this link and is dropped), no pure BOOTP (option 53 is
required), no persistence, no static reservations.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType

__all__ = ["DhcpReply", "DhcpServer"]

BROADCAST_IP = IPv4Address("255.255.255.255")
BROADCAST_MAC = b"\xff" * 6
_ZERO_IP = IPv4Address(0)

# How long an OFFER reserves its address for the client to REQUEST it. Short, so
# that a guest DISCOVERing from many MACs cannot hold the pool for long.
OFFER_HOLD_SECONDS = 60.0
# How long an address declined by a client (it saw it in use) stays out of the
# pool. RFC 2131 leaves the value to the server.
DECLINE_HOLD_SECONDS = 600.0
# Guards against a caller configuring an absurd pool; the default pool is 16.
MAX_POOL_SIZE = 65536

_MAGIC_COOKIE = b"\x63\x82\x53\x63"
# op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr,
# sname, file: the fixed BOOTP header (RFC 2131 figure 1), 236 bytes.
_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
_OPTIONS_OFFSET = _HEADER.size + len(_MAGIC_COOKIE)  # 240
# RFC 1542 2.1: some BOOTP-era clients drop replies shorter than 300 bytes.
_MIN_REPLY_SIZE = 300
_FLAG_BROADCAST = 0x8000

_BOOTREQUEST = 1
_BOOTREPLY = 2
_HTYPE_ETHERNET = 1

# Option codes (RFC 2132).
_OPT_PAD = 0
_OPT_SUBNET_MASK = 1
_OPT_ROUTER = 3
_OPT_DNS = 6
_OPT_MTU = 26
_OPT_REQUESTED_IP = 50
_OPT_LEASE_TIME = 51
_OPT_OVERLOAD = 52
_OPT_MESSAGE_TYPE = 53
_OPT_SERVER_ID = 54
_OPT_MESSAGE = 56
_OPT_T1 = 58
_OPT_T2 = 59
_OPT_END = 255

# Message types (option 53).
_DISCOVER = 1
_OFFER = 2
_REQUEST = 3
_DECLINE = 4
_ACK = 5
_NAK = 6
_RELEASE = 7
_INFORM = 8

_STAT_KEYS = (
    "received",
    "offers",
    "acks",
    "naks",
    "releases",
    "declines",
    "informs",
    "pool_exhausted",
    "dropped_malformed",
    "dropped_foreign",
    "dropped_relayed",
    "dropped_unexpected",
)


@dataclass(frozen=True)
class DhcpReply:
    """A reply for the engine to emit from the server (port 67) to port 68."""

    payload: bytes  # the BOOTP/DHCP message
    dst_ip: IPv4Address  # 255.255.255.255 when broadcast is needed, else yiaddr/ciaddr
    dst_mac: bytes  # 6 bytes; ff*6 when broadcasting, else the client's chaddr


class _Malformed(Exception):
    """Internal: the request cannot be trusted; never escapes handle()."""


@dataclass(frozen=True, slots=True)
class _Request:
    msg_type: int
    xid: int
    flags: int
    ciaddr: IPv4Address
    chaddr: bytes  # 6 bytes
    requested_ip: IPv4Address | None
    server_id: IPv4Address | None


class _State(enum.Enum):
    OFFERED = 1
    BOUND = 2
    # Released or superseded: kept only so that the client gets the same address
    # back while nobody else needs it. Always reclaimable.
    FREE = 3


@dataclass(slots=True)
class _Binding:
    ip: IPv4Address
    state: _State
    expiry: float

    def live(self, now: float) -> bool:
        return self.state is not _State.FREE and self.expiry > now


def _parse_options(data: bytes, start: int, end: int, out: dict[int, bytearray]) -> None:
    """Parse the TLV options in data[start:end] into out.

    Repeated options are concatenated (RFC 3396), so one bytearray per code: the
    total kept is bounded by the input size.
    """
    i = start
    while i < end:
        code = data[i]
        if code == _OPT_END:
            return
        if code == _OPT_PAD:
            i += 1
            continue
        if i + 1 >= end:
            raise _Malformed("option length past the end")
        length = data[i + 1]
        value_end = i + 2 + length
        if value_end > end:
            raise _Malformed("option value past the end")
        out.setdefault(code, bytearray()).extend(data[i + 2 : value_end])
        i = value_end
    # Reaching the end of the field without option 255 is tolerated (the
    # options are complete); only a truncated option is an error.


def _ip_option(options: dict[int, bytearray], code: int) -> IPv4Address | None:
    value = options.get(code)
    if value is None:
        return None
    if len(value) != 4:
        raise _Malformed(f"option {code} is not 4 bytes")
    return IPv4Address(bytes(value))


class _Relayed(Exception):
    """Internal: the request came through a relay agent (giaddr set)."""


# Offsets of the fields that option overload (option 52) may reuse.
_SNAME = slice(44, 44 + 64)
_FILE = slice(108, 108 + 128)


def _parse_request(data: bytes) -> _Request:
    if len(data) < _OPTIONS_OFFSET:
        raise _Malformed("short")
    fields = _HEADER.unpack_from(data)
    op, htype, hlen, _hops, xid, _secs, flags, ciaddr = fields[:8]
    giaddr, chaddr = fields[10:12]
    if op != _BOOTREQUEST or htype != _HTYPE_ETHERNET or hlen != 6:
        raise _Malformed("not an Ethernet BOOTREQUEST")
    if data[_HEADER.size : _OPTIONS_OFFSET] != _MAGIC_COOKIE:
        raise _Malformed("bad magic cookie")
    mac = bytes(chaddr[:6])
    # A real interface never has a group or all-zero address; refusing them keeps
    # a lease key from meaning "everyone".
    if mac[0] & 1 or mac == bytes(6):
        raise _Malformed("chaddr is not a unicast MAC")

    options: dict[int, bytearray] = {}
    _parse_options(data, _OPTIONS_OFFSET, len(data), options)
    overload = options.get(_OPT_OVERLOAD)
    if overload is not None:
        if len(overload) != 1 or overload[0] not in (1, 2, 3):
            raise _Malformed("bad option overload")
        # RFC 2131 4.1: 'file' is read before 'sname'. An overload option
        # inside them has no meaning: refuse it rather than guess.
        extra: dict[int, bytearray] = {}
        if overload[0] & 1:
            _parse_options(data, _FILE.start, _FILE.stop, extra)
        if overload[0] & 2:
            _parse_options(data, _SNAME.start, _SNAME.stop, extra)
        if _OPT_OVERLOAD in extra:
            raise _Malformed("overload inside an overloaded field")
        for code, value in extra.items():
            options.setdefault(code, bytearray()).extend(value)

    msg_type = options.get(_OPT_MESSAGE_TYPE)
    if msg_type is None or len(msg_type) != 1:
        raise _Malformed("missing or bad message type")
    requested_ip = _ip_option(options, _OPT_REQUESTED_IP)
    server_id = _ip_option(options, _OPT_SERVER_ID)
    # Checked last so that garbage is counted as malformed, not as relayed.
    if giaddr != bytes(4):
        raise _Relayed
    return _Request(
        msg_type=msg_type[0],
        xid=xid,
        flags=flags,
        ciaddr=IPv4Address(ciaddr),
        chaddr=mac,
        requested_ip=requested_ip,
        server_id=server_id,
    )


class DhcpServer:
    """DHCPv4 server for one guest link: bytes in, reply (or None) out.

    ``stats`` is a dict of counters (all keys present from the start).
    ``leases`` is a read-only live view ``mac -> (ip, expiry)`` of bound leases;
    an entry whose expiry is in the past is expired but not yet reclaimed.
    """

    def __init__(
        self,
        *,
        server_ip: IPv4Address,
        network: IPv4Network,
        router: IPv4Address,
        dns: IPv4Address | None,
        pool_start: IPv4Address,
        pool_end: IPv4Address,
        mtu: int | None = None,
        lease_seconds: int = 86400,
    ) -> None:
        # Configuration errors are the caller's bug: fail loudly here so that
        # handle() can trust its own state.
        if network.prefixlen > 30:
            raise ValueError(f"network {network} is too small for DHCP")
        for name, addr in (
            ("server_ip", server_ip),
            ("router", router),
            ("pool_start", pool_start),
            ("pool_end", pool_end),
        ):
            if addr not in network:
                raise ValueError(f"{name} {addr} is not in {network}")
        if int(pool_end) < int(pool_start):
            raise ValueError(f"pool_end {pool_end} is before pool_start {pool_start}")
        if int(pool_end) - int(pool_start) + 1 > MAX_POOL_SIZE:
            raise ValueError(f"pool larger than {MAX_POOL_SIZE} addresses")
        reserved = {network.network_address, network.broadcast_address, server_ip, router}
        if dns is not None:
            reserved.add(dns)
        for addr in reserved:
            if int(pool_start) <= int(addr) <= int(pool_end):
                raise ValueError(f"pool {pool_start}-{pool_end} contains reserved {addr}")
        if mtu is not None and not 68 <= mtu <= 0xFFFF:
            raise ValueError(f"mtu {mtu} out of range 68..65535")
        if not 1 <= lease_seconds <= 0xFFFFFFFE:
            raise ValueError(f"lease_seconds {lease_seconds} out of range")

        self._server_ip = server_ip
        self._network = network
        self._pool_start = int(pool_start)
        self._pool_end = int(pool_end)
        self._lease_seconds = lease_seconds

        # Every OFFER/ACK carries the same configuration options: build them once.
        common = [
            (_OPT_SERVER_ID, server_ip.packed),
            (_OPT_LEASE_TIME, struct.pack("!I", lease_seconds)),
            (_OPT_T1, struct.pack("!I", lease_seconds // 2)),
            (_OPT_T2, struct.pack("!I", lease_seconds * 7 // 8)),
        ]
        config = [(_OPT_SUBNET_MASK, network.netmask.packed), (_OPT_ROUTER, router.packed)]
        if dns is not None:
            config.append((_OPT_DNS, dns.packed))
        if mtu is not None:
            config.append((_OPT_MTU, struct.pack("!H", mtu)))
        self._lease_options = _encode_options(common + config)
        # INFORM: configuration only, no lease times (RFC 2131 4.3.5).
        self._inform_options = _encode_options([(_OPT_SERVER_ID, server_ip.packed), *config])
        self._nak_options = _encode_options(
            [(_OPT_SERVER_ID, server_ip.packed), (_OPT_MESSAGE, b"requested address not available")]
        )

        # Invariants: one binding per MAC, one MAC per address (_holder is the
        # inverse of _bindings), and only pool addresses are ever stored, so
        # neither grows past the pool size whatever the guest sends.
        self._bindings: dict[bytes, _Binding] = {}
        self._holder: dict[IPv4Address, bytes] = {}
        self._declined: dict[IPv4Address, float] = {}
        self._leases: dict[bytes, tuple[IPv4Address, float]] = {}

        self.stats: dict[str, int] = dict.fromkeys(_STAT_KEYS, 0)

    @property
    def leases(self) -> Mapping[bytes, tuple[IPv4Address, float]]:
        """Bound leases, ``mac -> (ip, expiry)`` (read-only, live)."""
        return MappingProxyType(self._leases)

    @property
    def pool_size(self) -> int:
        return self._pool_end - self._pool_start + 1

    # ------------------------------------------------------------------ input

    def handle(self, payload: bytes, src_mac: bytes, now: float) -> DhcpReply | None:
        """Process one datagram sent by the guest to port 67.

        Returns the reply to emit, or None (dropped, or no reply is due).
        ``src_mac`` is validated but the lease key is the message's chaddr,
        which is what identifies a DHCP client (RFC 2131 4.2).
        """
        self.stats["received"] += 1
        if (
            not isinstance(payload, bytes | bytearray | memoryview)
            or not isinstance(src_mac, bytes | bytearray)
            or len(src_mac) != 6
        ):
            self.stats["dropped_malformed"] += 1
            return None
        try:
            req = _parse_request(bytes(payload))
        except _Relayed:
            self.stats["dropped_relayed"] += 1
            return None
        except (_Malformed, ValueError, struct.error):
            self.stats["dropped_malformed"] += 1
            return None

        if req.msg_type == _DISCOVER:
            return self._discover(req, now)
        if req.msg_type == _REQUEST:
            return self._request(req, now)
        if req.msg_type == _DECLINE:
            return self._decline(req, now)
        if req.msg_type == _RELEASE:
            return self._release(req)
        if req.msg_type == _INFORM:
            return self._inform(req)
        # OFFER/ACK/NAK from a client, or types we do not serve (lease query...).
        self.stats["dropped_unexpected"] += 1
        return None

    # -------------------------------------------------------------- messages

    def _discover(self, req: _Request, now: float) -> DhcpReply | None:
        ip = self._allocate(req.chaddr, req.requested_ip, now)
        if ip is None:
            self.stats["pool_exhausted"] += 1
            return None
        binding = self._bindings.get(req.chaddr)
        # A client re-DISCOVERing while bound keeps its lease; otherwise (re)start
        # the short reservation.
        if (
            binding is None
            or binding.ip != ip
            or not (binding.state is _State.BOUND and binding.live(now))
        ):
            self._assign(req.chaddr, ip, _State.OFFERED, now + OFFER_HOLD_SECONDS)
        self.stats["offers"] += 1
        return self._reply(req, _OFFER, yiaddr=ip, ciaddr=_ZERO_IP, options=self._lease_options)

    def _request(self, req: _Request, now: float) -> DhcpReply | None:
        if req.server_id is not None:
            if req.server_id != self._server_ip:
                # SELECTING another server's offer: ours is no longer wanted.
                binding = self._bindings.get(req.chaddr)
                if binding is not None and binding.state is _State.OFFERED:
                    self._set_state(req.chaddr, binding, _State.FREE, now)
                self.stats["dropped_foreign"] += 1
                return None
            # SELECTING our offer: the address is in option 50, ciaddr MUST be 0.
            wanted = req.requested_ip
        elif req.requested_ip is not None:
            # INIT-REBOOT (ciaddr 0) - or a client that also filled ciaddr.
            wanted = req.requested_ip
        elif req.ciaddr != _ZERO_IP:
            # RENEWING (unicast) or REBINDING (broadcast): the address is ciaddr.
            wanted = req.ciaddr
        else:
            wanted = None
        if wanted is None:
            self.stats["dropped_malformed"] += 1
            return None

        # We are the only server on this link, so an address we would not give
        # this client is wrong for it: NAK so it restarts quickly.
        if not self._available(wanted, req.chaddr, now):
            self.stats["naks"] += 1
            return self._reply(
                req,
                _NAK,
                yiaddr=_ZERO_IP,
                ciaddr=_ZERO_IP,
                options=self._nak_options,
                force_broadcast=True,
            )
        self._assign(req.chaddr, wanted, _State.BOUND, now + self._lease_seconds)
        self.stats["acks"] += 1
        # Unicast only to an address the client already uses (RENEWING);
        # a ciaddr that disagrees with the address being acked is not trusted.
        ciaddr = req.ciaddr if req.ciaddr == wanted else _ZERO_IP
        return self._reply(req, _ACK, yiaddr=wanted, ciaddr=ciaddr, options=self._lease_options)

    def _decline(self, req: _Request, now: float) -> None:
        if req.server_id is not None and req.server_id != self._server_ip:
            self.stats["dropped_foreign"] += 1
            return None
        binding = self._bindings.get(req.chaddr)
        # Only the client holding the address may take it out of the pool.
        if req.requested_ip is None or binding is None or binding.ip != req.requested_ip:
            self.stats["dropped_unexpected"] += 1
            return None
        self._drop(req.chaddr)
        self._declined[req.requested_ip] = now + DECLINE_HOLD_SECONDS
        self.stats["declines"] += 1
        return None

    def _release(self, req: _Request) -> None:
        if req.server_id is not None and req.server_id != self._server_ip:
            self.stats["dropped_foreign"] += 1
            return None
        self.stats["releases"] += 1
        binding = self._bindings.get(req.chaddr)
        if binding is not None and binding.ip == req.ciaddr:
            # Keep the MAC -> address memory so that the client gets it back,
            # but make the address reclaimable at once.
            self._set_state(req.chaddr, binding, _State.FREE, float("-inf"))
        return None

    def _inform(self, req: _Request) -> DhcpReply:
        self.stats["informs"] += 1
        return self._reply(
            req, _ACK, yiaddr=_ZERO_IP, ciaddr=req.ciaddr, options=self._inform_options
        )

    # ------------------------------------------------------------- the pool

    def _in_pool(self, ip: IPv4Address) -> bool:
        return self._pool_start <= int(ip) <= self._pool_end

    def _is_declined(self, ip: IPv4Address, now: float) -> bool:
        until = self._declined.get(ip)
        if until is None:
            return False
        if until > now:
            return True
        del self._declined[ip]
        return False

    def _available(self, ip: IPv4Address, mac: bytes, now: float) -> bool:
        """Whether ip may be given to mac now."""
        if not self._in_pool(ip) or self._is_declined(ip, now):
            return False
        holder = self._holder.get(ip)
        return holder is None or holder == mac or not self._bindings[holder].live(now)

    def _allocate(
        self, mac: bytes, requested: IPv4Address | None, now: float
    ) -> IPv4Address | None:
        # RFC 2131 4.3.1 order: current/previous binding, requested address, new one.
        binding = self._bindings.get(mac)
        if binding is not None and self._available(binding.ip, mac, now):
            return binding.ip
        if requested is not None and self._available(requested, mac, now):
            return requested
        # Prefer addresses nobody has had, to keep other clients' addresses
        # stable. Each skipped address is held or declined, so this loop runs
        # at most len(_holder) + len(_declined) + 1 times.
        for value in range(self._pool_start, self._pool_end + 1):
            ip = IPv4Address(value)
            if ip not in self._holder and not self._is_declined(ip, now):
                return ip
        # Then take back the one that has been unused the longest.
        reclaimable = [b for b in self._bindings.values() if not b.live(now)]
        if not reclaimable:
            return None
        return min(reclaimable, key=lambda b: b.expiry).ip

    def _assign(self, mac: bytes, ip: IPv4Address, state: _State, expiry: float) -> None:
        old = self._bindings.get(mac)
        if old is not None and old.ip != ip:
            del self._holder[old.ip]
        previous_holder = self._holder.get(ip)
        if previous_holder is not None and previous_holder != mac:
            self._drop(previous_holder)
        binding = _Binding(ip, state, expiry)
        self._bindings[mac] = binding
        self._holder[ip] = mac
        self._sync_lease(mac, binding)

    def _set_state(self, mac: bytes, binding: _Binding, state: _State, expiry: float) -> None:
        binding.state = state
        binding.expiry = expiry
        self._sync_lease(mac, binding)

    def _drop(self, mac: bytes) -> None:
        binding = self._bindings.pop(mac)
        del self._holder[binding.ip]
        self._leases.pop(mac, None)

    def _sync_lease(self, mac: bytes, binding: _Binding) -> None:
        if binding.state is _State.BOUND:
            self._leases[mac] = (binding.ip, binding.expiry)
        else:
            self._leases.pop(mac, None)

    # ---------------------------------------------------------------- output

    def _reply(
        self,
        req: _Request,
        msg_type: int,
        *,
        yiaddr: IPv4Address,
        ciaddr: IPv4Address,
        options: bytes,
        force_broadcast: bool = False,
    ) -> DhcpReply:
        header = _HEADER.pack(
            _BOOTREPLY,
            _HTYPE_ETHERNET,
            6,
            0,
            req.xid,
            0,
            req.flags & _FLAG_BROADCAST,  # the other flag bits MUST be zero
            ciaddr.packed,
            yiaddr.packed,
            _ZERO_IP.packed,
            _ZERO_IP.packed,
            req.chaddr,
            b"",
            b"",
        )
        payload = b"".join(
            (
                header,
                _MAGIC_COOKIE,
                bytes((_OPT_MESSAGE_TYPE, 1, msg_type)),
                options,
                bytes((_OPT_END,)),
            )
        )
        if len(payload) < _MIN_REPLY_SIZE:
            payload += bytes(_MIN_REPLY_SIZE - len(payload))
        # RFC 2131 4.1 with giaddr 0: unicast to ciaddr when the client has one;
        # otherwise broadcast, which every client can receive (unicast to
        # yiaddr would need an ARP entry the client cannot answer yet). NAKs
        # are always broadcast.
        if ciaddr != _ZERO_IP and not force_broadcast:
            return DhcpReply(payload, ciaddr, req.chaddr)
        return DhcpReply(payload, BROADCAST_IP, BROADCAST_MAC)


def _encode_options(options: list[tuple[int, bytes]]) -> bytes:
    return b"".join(bytes((code, len(value))) + value for code, value in options)
