"""rtnetlink messages: build them, parse them, send one request on a socket.

This module owns the wire format of NETLINK_ROUTE (links, addresses, routes)
and the request/answer exchange on a socket the caller gives it: a dump
(RTM_GET* with NLM_F_DUMP, read until NLMSG_DONE) or a change (RTM_NEW*/DEL*
with NLM_F_ACK; a kernel error becomes OSError with the kernel's errno and,
when the kernel gave one, its extended-ack message). Encoders and parsers are
pure functions on bytes (tested without a kernel).

It must not decide what to configure (slirpy.host.netconf does), nor open
namespaces: a netlink socket works in the namespace it was created in, so
the caller chooses the namespace by choosing the socket. No pyroute2: its
import alone costs more than a whole start-up.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import socket
import struct
from collections.abc import Iterator
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from typing import NamedTuple

# <linux/netlink.h>
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # in an NLMSG_ERROR: the request is not echoed
NLM_F_ACK_TLVS = 0x200  # in an NLMSG_ERROR: extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
NLA_TYPE_MASK = 0x3FFF
# <linux/rtnetlink.h>
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_TXQLEN = 13
IFLA_AF_SPEC = 26
IFLA_INET6_ADDR_GEN_MODE = 8
IN6_ADDR_GEN_MODE_NONE = 1  # the kernel makes no link-local address itself
NLA_F_NESTED = 0x8000
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_LABEL = 3
IFA_CACHEINFO = 6
IFA_FLAGS = 8
IFA_F_SECONDARY = 0x01
IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08
IFA_F_DEPRECATED = 0x20
IFA_F_TENTATIVE = 0x40
IFA_F_PERMANENT = 0x80
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_PREFSRC = 7
RTA_MULTIPATH = 9
RTA_TABLE = 15
RT_TABLE_MAIN = 254
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_HOST = 254
RT_SCOPE_NOWHERE = 255
RTN_UNICAST = 1
RTPROT_KERNEL = 2
RTPROT_BOOT = 3
RTNH_F_ONLINK = 0x4
RTM_F_CLONED = 0x200
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_NOARP = 0x80

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
RTATTR = struct.Struct("=HH")  # len, type
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBi")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst/src len, tos, table, proto, scope, type, flags
RTNEXTHOP = struct.Struct("=HBBi")  # len, flags, hops, ifindex
IFA_CACHEINFO_S = struct.Struct("=IIII")  # preferred, valid, cstamp, tstamp
RECV_SIZE = 1 << 16  # enough for any one datagram of a dump (the kernel's 32 KiB)
REPLY_TIMEOUT = 5.0  # the kernel answers at once; this only bounds a lost answer
INFINITY_LIFE = 0xFFFFFFFF

Addr = IPv4Address | IPv6Address
Iface = IPv4Interface | IPv6Interface
Net = IPv4Network | IPv6Network

# Sequence numbers of our requests (answers to anything else are skipped).
_seq = itertools.count(1)


class Link(NamedTuple):
    index: int
    name: str
    flags: int
    mtu: int
    mac: bytes | None
    txqlen: int


class AddrEntry(NamedTuple):
    """One RTM_NEWADDR: an interface address and its flags (IFA_FLAGS merged)."""

    index: int
    interface: Iface
    scope: int
    flags: int


class NextHop(NamedTuple):
    ifindex: int
    gateway: Addr | None
    flags: int


class RouteEntry(NamedTuple):
    """One RTM_NEWROUTE. `oif`/`gateway`: of the first nexthop for multipath routes."""

    family: int
    dst: Net
    gateway: Addr | None
    oif: int | None
    metric: int
    table: int
    protocol: int
    scope: int
    type: int
    flags: int
    prefsrc: Addr | None = None
    nexthops: tuple[NextHop, ...] = ()


# ------------------------------------------------------------------ attributes


def attr(atype: int, data: bytes) -> bytes:
    """One rtattr, padded to 4 bytes."""
    raw = RTATTR.pack(RTATTR.size + len(data), atype) + data
    return raw + b"\0" * (-len(raw) % 4)


def parse_attrs(buf: bytes, offset: int = 0, end: int | None = None) -> dict[int, bytes]:
    """The attributes in buf[offset:end] by type (the last one of a type wins)."""
    end = len(buf) if end is None else end
    out: dict[int, bytes] = {}
    while offset + RTATTR.size <= end:
        alen, atype = RTATTR.unpack_from(buf, offset)
        if alen < RTATTR.size or offset + alen > end:
            break
        out[atype & NLA_TYPE_MASK] = bytes(buf[offset + RTATTR.size : offset + alen])
        offset += (alen + 3) & ~3
    return out


def _family(addr: Addr | Iface | Net) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


def _addr_of(family: int, raw: bytes) -> Addr:
    return IPv4Address(raw[:4]) if family == socket.AF_INET else IPv6Address(raw[:16])


# ------------------------------------------------------------------ messages


def message(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    """A netlink message: header (pid 0: the kernel) and body."""
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), mtype, flags, seq, 0) + body


def split_messages(buf: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, seq, payload) of each message in one datagram."""
    offset = 0
    while offset + NLMSGHDR.size <= len(buf):
        mlen, mtype, flags, seq, _pid = NLMSGHDR.unpack_from(buf, offset)
        if mlen < NLMSGHDR.size or offset + mlen > len(buf):
            return
        yield mtype, flags, seq, bytes(buf[offset + NLMSGHDR.size : offset + mlen])
        offset += (mlen + 3) & ~3


def error_of(flags: int, payload: bytes) -> OSError | None:
    """The OSError an NLMSG_ERROR payload carries (None for an ack)."""
    err = struct.unpack_from("=i", payload)[0]
    if err == 0:
        return None
    code = -err
    text = os.strerror(code)
    if flags & NLM_F_ACK_TLVS:
        # The request comes back after the error code unless capped.
        skip = 4 + NLMSGHDR.size
        if not flags & NLM_F_CAPPED and len(payload) >= skip:
            skip = 4 + NLMSGHDR.unpack_from(payload, 4)[0]
        msg = parse_attrs(payload, (skip + 3) & ~3).get(NLMSGERR_ATTR_MSG)
        if msg:
            why = msg.rstrip(b"\0").decode(errors="replace")
            text = f"{text} ({why})"
    return OSError(code, text)


def link_request(
    index: int,
    *,
    name: str | None = None,
    flags: int = 0,
    change: int = 0,
    mtu: int | None = None,
    mac: bytes | None = None,
    txqlen: int | None = None,
    addr_gen_mode: int | None = None,
) -> bytes:
    """The body of RTM_NEWLINK (set flags under `change`, MTU, MAC, queue, IPv6
    address generation mode) or RTM_GETLINK."""
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)
    if name is not None:
        body += attr(IFLA_IFNAME, name.encode() + b"\0")
    if mtu is not None:
        body += attr(IFLA_MTU, struct.pack("=I", mtu))
    if mac is not None:
        body += attr(IFLA_ADDRESS, mac)
    if txqlen is not None:
        body += attr(IFLA_TXQLEN, struct.pack("=I", txqlen))
    if addr_gen_mode is not None:
        inet6 = attr(IFLA_INET6_ADDR_GEN_MODE, bytes([addr_gen_mode]))
        body += attr(IFLA_AF_SPEC | NLA_F_NESTED, attr(socket.AF_INET6 | NLA_F_NESTED, inet6))
    return body


def addr_request(
    index: int, iface: Iface, *, flags: int = 0, scope: int = RT_SCOPE_UNIVERSE
) -> bytes:
    """The body of RTM_NEWADDR/RTM_DELADDR for `iface` on interface `index`.

    Lifetimes are left out: the kernel then makes the address permanent.
    """
    raw = iface.ip.packed
    body = IFADDRMSG.pack(_family(iface), iface.network.prefixlen, flags & 0xFF, scope, index)
    body += attr(IFA_LOCAL, raw) + attr(IFA_ADDRESS, raw)
    if flags > 0xFF:
        body += attr(IFA_FLAGS, struct.pack("=I", flags))
    return body


def route_request(
    dst: Net,
    *,
    oif: int | None,
    gateway: Addr | None = None,
    metric: int = 0,
    onlink: bool = False,
    table: int = RT_TABLE_MAIN,
    protocol: int = RTPROT_BOOT,
    scope: int | None = None,
    rtype: int = RTN_UNICAST,
) -> bytes:
    """The body of RTM_NEWROUTE/RTM_DELROUTE: unicast `dst` via `gateway` out of `oif`.

    The scope defaults to link for an IPv4 route without a gateway (what
    `ip route add PREFIX dev X` gives), universe otherwise.
    """
    family = _family(dst)
    if scope is None:
        link = gateway is None and family == socket.AF_INET
        scope = RT_SCOPE_LINK if link else RT_SCOPE_UNIVERSE
    body = RTMSG.pack(
        family,
        dst.prefixlen,
        0,
        0,
        table if table < 256 else 252,
        protocol,
        scope,
        rtype,
        RTNH_F_ONLINK if onlink else 0,
    )
    if dst.prefixlen:
        body += attr(RTA_DST, dst.network_address.packed)
    if gateway is not None:
        body += attr(RTA_GATEWAY, gateway.packed)
    if oif is not None:
        body += attr(RTA_OIF, struct.pack("=i", oif))
    if metric:
        body += attr(RTA_PRIORITY, struct.pack("=I", metric))
    if table >= 256:
        body += attr(RTA_TABLE, struct.pack("=I", table))
    return body


def dump_request(family: int, kind: int) -> bytes:
    """The body of a dump request of RTM_GETLINK/GETADDR/GETROUTE for `family`."""
    if kind == RTM_GETLINK:
        return IFINFOMSG.pack(family, 0, 0, 0, 0)
    if kind == RTM_GETADDR:
        return IFADDRMSG.pack(family, 0, 0, 0, 0)
    return RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)


# ------------------------------------------------------------------ parsers


def parse_link(payload: bytes) -> Link:
    _fam, _type, index, flags, _change = IFINFOMSG.unpack_from(payload)
    attrs = parse_attrs(payload, IFINFOMSG.size)
    name = attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace")
    mtu = struct.unpack("=I", attrs[IFLA_MTU][:4])[0] if IFLA_MTU in attrs else 0
    qlen = struct.unpack("=I", attrs[IFLA_TXQLEN][:4])[0] if IFLA_TXQLEN in attrs else 0
    return Link(index, name, flags, mtu, attrs.get(IFLA_ADDRESS), qlen)


def parse_addr(payload: bytes) -> AddrEntry:
    family, prefixlen, flags, scope, index = IFADDRMSG.unpack_from(payload)
    attrs = parse_attrs(payload, IFADDRMSG.size)
    # IFA_LOCAL is our address (IFA_ADDRESS is the peer's on point-to-point links).
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS, b"")
    if IFA_FLAGS in attrs:
        flags = struct.unpack("=I", attrs[IFA_FLAGS][:4])[0]
    ip = _addr_of(family, raw)
    iface: Iface = (
        IPv4Interface((ip, prefixlen))
        if family == socket.AF_INET
        else IPv6Interface((ip, prefixlen))
    )
    return AddrEntry(index, iface, scope, flags)


def _parse_nexthops(family: int, buf: bytes) -> tuple[NextHop, ...]:
    out: list[NextHop] = []
    offset = 0
    while offset + RTNEXTHOP.size <= len(buf):
        nlen, nflags, _hops, ifindex = RTNEXTHOP.unpack_from(buf, offset)
        if nlen < RTNEXTHOP.size or offset + nlen > len(buf):
            break
        inner = parse_attrs(buf, offset + RTNEXTHOP.size, offset + nlen)
        gw = _addr_of(family, inner[RTA_GATEWAY]) if RTA_GATEWAY in inner else None
        out.append(NextHop(ifindex, gw, nflags))
        offset += (nlen + 3) & ~3
    return tuple(out)


def parse_route(payload: bytes) -> RouteEntry:
    family, dst_len, _src_len, _tos, table, proto, scope, rtype, flags = RTMSG.unpack_from(payload)
    attrs = parse_attrs(payload, RTMSG.size)
    if RTA_DST in attrs:
        dst_addr = _addr_of(family, attrs[RTA_DST])
    else:
        dst_addr = IPv4Address(0) if family == socket.AF_INET else IPv6Address(0)
    dst: Net = (
        IPv4Network((dst_addr, dst_len))
        if family == socket.AF_INET
        else IPv6Network((dst_addr, dst_len))
    )
    gateway = _addr_of(family, attrs[RTA_GATEWAY]) if RTA_GATEWAY in attrs else None
    oif = struct.unpack("=i", attrs[RTA_OIF][:4])[0] if RTA_OIF in attrs else None
    metric = struct.unpack("=I", attrs[RTA_PRIORITY][:4])[0] if RTA_PRIORITY in attrs else 0
    if RTA_TABLE in attrs:
        table = struct.unpack("=I", attrs[RTA_TABLE][:4])[0]
    prefsrc = _addr_of(family, attrs[RTA_PREFSRC]) if RTA_PREFSRC in attrs else None
    nexthops = _parse_nexthops(family, attrs[RTA_MULTIPATH]) if RTA_MULTIPATH in attrs else ()
    if oif is None and nexthops:
        oif = nexthops[0].ifindex
        gateway = gateway or nexthops[0].gateway
    return RouteEntry(
        family, dst, gateway, oif, metric, table, proto, scope, rtype, flags, prefsrc, nexthops
    )


# ------------------------------------------------------------------ sockets


def open_route(groups: int = 0) -> socket.socket:
    """A NETLINK_ROUTE socket in the current namespace, subscribed to `groups`."""
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       socket.NETLINK_ROUTE)
    try:
        enable_ext_ack(nl)
        nl.bind((0, groups))
    except BaseException:
        nl.close()
        raise
    return nl


def enable_ext_ack(nl: socket.socket) -> None:
    """Ask for the kernel's error messages with errors (harmless where unsupported)."""
    with contextlib.suppress(OSError):
        nl.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)


def _recv(nl: socket.socket) -> bytes:
    """One datagram, waiting for it even on a non-blocking socket."""
    while True:
        try:
            return nl.recv(RECV_SIZE)
        except BlockingIOError:
            ready, _, _ = select.select([nl], [], [], REPLY_TIMEOUT)
            if not ready:
                raise TimeoutError("no answer from the kernel on a netlink socket") from None


def exchange(nl: socket.socket, kind: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
    """Send one request; (type, payload) of each answer until NLMSG_DONE or the ack.

    A kernel error (in the ack or in NLMSG_DONE) raises OSError.
    """
    seq = next(_seq) & 0xFFFFFFFF
    nl.sendall(message(kind, NLM_F_REQUEST | flags, seq, body))
    out: list[tuple[int, bytes]] = []
    while True:
        for mtype, mflags, mseq, payload in split_messages(_recv(nl)):
            if mseq != seq:
                continue  # an answer to an earlier, abandoned request
            if mtype == NLMSG_DONE:
                err = struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else 0
                if err:
                    raise OSError(-err, os.strerror(-err))
                return out
            if mtype == NLMSG_ERROR:
                exc = error_of(mflags, payload)
                if exc is not None:
                    raise exc
                return out
            if mtype != NLMSG_NOOP:
                out.append((mtype, payload))


def dump(nl: socket.socket, kind: int, body: bytes) -> list[tuple[int, bytes]]:
    """(type, payload) of each message answering one dump request."""
    return exchange(nl, kind, NLM_F_DUMP, body)


def change(nl: socket.socket, kind: int, flags: int, body: bytes) -> None:
    """Send one RTM_NEW*/DEL* request and wait for its ack; OSError on a kernel error."""
    exchange(nl, kind, NLM_F_ACK | flags, body)


# ------------------------------------------------------------------ operations


def dump_links(nl: socket.socket) -> list[Link]:
    return [parse_link(p) for t, p in dump(nl, RTM_GETLINK, dump_request(0, RTM_GETLINK))
            if t == RTM_NEWLINK]


def dump_addrs(nl: socket.socket, family: int = socket.AF_UNSPEC) -> list[AddrEntry]:
    msgs = dump(nl, RTM_GETADDR, dump_request(family, RTM_GETADDR))
    return [parse_addr(p) for t, p in msgs if t == RTM_NEWADDR]


def dump_routes(nl: socket.socket, family: int = socket.AF_UNSPEC) -> list[RouteEntry]:
    msgs = dump(nl, RTM_GETROUTE, dump_request(family, RTM_GETROUTE))
    return [parse_route(p) for t, p in msgs if t == RTM_NEWROUTE]


def link_by_name(nl: socket.socket, name: str) -> Link:
    """The link called `name` in the socket's namespace (not ours: if_nametoindex
    would look in the caller's namespace). OSError(ENODEV) when there is none."""
    msgs = exchange(nl, RTM_GETLINK, NLM_F_ACK, link_request(0, name=name))
    for mtype, payload in msgs:
        if mtype == RTM_NEWLINK:
            return parse_link(payload)
    raise OSError(19, f"{os.strerror(19)}: {name}")


def set_link(
    nl: socket.socket,
    index: int,
    *,
    up: bool | None = None,
    noarp: bool | None = None,
    mtu: int | None = None,
    mac: bytes | None = None,
    txqlen: int | None = None,
    addr_gen_mode: int | None = None,
) -> None:
    """Change a link: each argument given (not None) is set, the rest left alone."""
    flags = change_mask = 0
    for wanted, bit in ((up, IFF_UP), (noarp, IFF_NOARP)):
        if wanted is not None:
            change_mask |= bit
            flags |= bit if wanted else 0
    body = link_request(index, flags=flags, change=change_mask, mtu=mtu, mac=mac, txqlen=txqlen,
                        addr_gen_mode=addr_gen_mode)
    change(nl, RTM_NEWLINK, 0, body)


def add_addr(
    nl: socket.socket, index: int, iface: Iface, *, nodad: bool = False, replace: bool = False,
    scope: int = RT_SCOPE_UNIVERSE,
) -> None:
    """Add (or with `replace`, update) an address; IPv6 `nodad` skips DAD."""
    flags = IFA_F_NODAD if nodad else 0
    how = NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL)
    change(nl, RTM_NEWADDR, how, addr_request(index, iface, flags=flags, scope=scope))


def del_addr(nl: socket.socket, index: int, iface: Iface) -> None:
    change(nl, RTM_DELADDR, 0, addr_request(index, iface))


def add_route(
    nl: socket.socket,
    dst: Net,
    *,
    oif: int | None,
    gateway: Addr | None = None,
    metric: int = 0,
    onlink: bool = False,
    replace: bool = False,
) -> None:
    """Add a main-table unicast route (with `replace`: add or replace it)."""
    how = NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL)
    body = route_request(dst, oif=oif, gateway=gateway, metric=metric, onlink=onlink)
    change(nl, RTM_NEWROUTE, how, body)


def del_route(
    nl: socket.socket, dst: Net, *, oif: int | None, gateway: Addr | None = None, metric: int = 0
) -> None:
    """Delete a main-table route (any scope, protocol and type: what `ip route del` matches)."""
    body = route_request(dst, oif=oif, gateway=gateway, metric=metric, protocol=0,
                         scope=RT_SCOPE_NOWHERE, rtype=0)
    change(nl, RTM_DELROUTE, 0, body)

