"""Configure an interface in the current network namespace with ioctls.

This module owns `-c/--configure`: bring `lo` and the TAP up, set the MTU,
MAC and transmit queue length, the IPv4 address and the default route. It uses
the classic SIOCSIF* / SIOCADDRT ioctls (and one rtnetlink message), which
cost microseconds (why not a netlink library: docs/architecture.md).
It runs only in the namespace helper child and must not touch namespaces.
"""

from __future__ import annotations

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


# struct rtentry from <net/route.h>, native layout (x86_64: 120 bytes):
# rt_pad1, rt_dst, rt_gateway, rt_genmask, rt_flags, rt_pad2, rt_pad3, rt_pad4,
# rt_metric, rt_dev, rt_mtu, rt_window, rt_irtt; "0L" pads the tail. struct,
# not ctypes: importing ctypes costs the helper child ~5 ms at every start.
_RTENTRY = "@L16s16s16sHhLPhPLLH0L"


def _ifreq(name: str, payload: bytes = b"") -> bytes:
    return struct.pack("16s", name.encode()) + payload.ljust(24, b"\0")


def _sockaddr(addr: IPv4Address) -> bytes:
    return struct.pack("=HH4s8x", socket.AF_INET, 0, addr.packed)


def _rtentry_default_via(gateway: IPv4Address) -> bytes:
    """The SIOCADDRT argument for `default via gateway`."""
    any4 = _sockaddr(IPv4Address(0))
    flags = RTF_UP | RTF_GATEWAY
    return struct.pack(_RTENTRY, 0, any4, _sockaddr(gateway), any4, flags, *[0] * 8)


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
            fcntl.ioctl(fd, SIOCADDRT, _rtentry_default_via(gateway))
