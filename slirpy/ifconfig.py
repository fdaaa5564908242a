"""Configure an interface in the current network namespace with ioctls.

This module owns `-c/--configure`: bring `lo` and the TAP up, set the MTU,
MAC and transmit queue length, the IPv4 address and the default route. It uses
the classic SIOCSIF* / SIOCADDRT ioctls (and one rtnetlink message) because
they cost microseconds, while importing pyroute2 costs ~250 ms, more than
slirpy's whole start-up budget.
It runs only in the namespace helper child and must not touch namespaces.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
from ipaddress import IPv4Address, IPv4Interface

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFADDR = 0x8916
SIOCSIFNETMASK = 0x891C
SIOCSIFMTU = 0x8922
SIOCSIFHWADDR = 0x8924
RTM_NEWLINK = 16
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
IFLA_TXQLEN = 13
SIOCADDRT = 0x890B
IFF_UP = 0x1
ARPHRD_ETHER = 1
RTF_UP = 0x1
RTF_GATEWAY = 0x2


class _SockaddrIn(ctypes.Structure):
    _fields_ = (
        ("family", ctypes.c_ushort),
        ("port", ctypes.c_ushort),
        ("addr", ctypes.c_ubyte * 4),
        ("zero", ctypes.c_ubyte * 8),
    )


class _RtEntry(ctypes.Structure):
    """struct rtentry from <net/route.h>."""

    _fields_ = (
        ("rt_pad1", ctypes.c_ulong),
        ("rt_dst", _SockaddrIn),
        ("rt_gateway", _SockaddrIn),
        ("rt_genmask", _SockaddrIn),
        ("rt_flags", ctypes.c_ushort),
        ("rt_pad2", ctypes.c_short),
        ("rt_pad3", ctypes.c_ulong),
        ("rt_pad4", ctypes.c_void_p),
        ("rt_metric", ctypes.c_short),
        ("rt_dev", ctypes.c_char_p),
        ("rt_mtu", ctypes.c_ulong),
        ("rt_window", ctypes.c_ulong),
        ("rt_irtt", ctypes.c_ushort),
    )


def _ifreq(name: str, payload: bytes = b"") -> bytes:
    return struct.pack("16s", name.encode()) + payload.ljust(24, b"\0")


def _sockaddr(addr: IPv4Address) -> bytes:
    return struct.pack("=HH4s8x", socket.AF_INET, 0, addr.packed)


def _set_txqueuelen(index: int, qlen: int) -> None:
    """RTM_NEWLINK with IFLA_TXQLEN: the ioctl for it needs init-ns CAP_NET_ADMIN."""
    attr = struct.pack("=HHI", 8, IFLA_TXQLEN, qlen)
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 0, 0) + attr
    msg = struct.pack("=IHHII", 16 + len(body), RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
        nl.sendall(msg + body)
        reply = nl.recv(4096)
    _len, mtype = struct.unpack_from("=IH", reply)
    if mtype == NLMSG_ERROR:
        err = struct.unpack_from("=i", reply, 16)[0]
        if err:
            raise OSError(-err, os.strerror(-err))


def _set_up(s: socket.socket, name: str) -> None:
    res = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, _ifreq(name))
    flags = struct.unpack_from("=H", res, 16)[0]
    fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, _ifreq(name, struct.pack("=H", flags | IFF_UP)))


def configure(
    name: str,
    *,
    mtu: int,
    txqueuelen: int,
    address: IPv4Interface | None,
    gateway: IPv4Address | None,
    mac: bytes | None,
) -> None:
    """Configure `name` like slirp4netns's -c. Raises OSError on failure."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fd = s.fileno()
        _set_up(s, "lo")
        fcntl.ioctl(fd, SIOCSIFMTU, _ifreq(name, struct.pack("=i", mtu)))
        _set_txqueuelen(socket.if_nametoindex(name), txqueuelen)
        if mac is not None:
            fcntl.ioctl(fd, SIOCSIFHWADDR, _ifreq(name, struct.pack("=H6s", ARPHRD_ETHER, mac)))
        if address is not None:
            fcntl.ioctl(fd, SIOCSIFADDR, _ifreq(name, _sockaddr(address.ip)))
            fcntl.ioctl(fd, SIOCSIFNETMASK, _ifreq(name, _sockaddr(address.netmask)))
        _set_up(s, name)
        if gateway is not None:
            rt = _RtEntry()
            rt.rt_dst.family = socket.AF_INET
            rt.rt_genmask.family = socket.AF_INET
            rt.rt_gateway.family = socket.AF_INET
            rt.rt_gateway.addr[:] = list(gateway.packed)
            rt.rt_flags = RTF_UP | RTF_GATEWAY
            fcntl.ioctl(fd, SIOCADDRT, bytes(rt))
