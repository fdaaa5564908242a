"""The source address of outbound sockets: an address, or an interface's address.

This module owns resolving slirp4netns's `--outbound-addr`/`--outbound-addr6`
values (an address literal, or an interface name looked up on the host). It
must not bind anything: the engine binds each outbound socket itself.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

from slirpy.config import ConfigError

SIOCGIFADDR = 0x8915


def _ifaddr4(name: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            res = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            raise ConfigError(f"interface {name} has no IPv4 address (--outbound-addr)") from None
    return socket.inet_ntoa(res[20:24])


def _ifaddr6(name: str) -> str:
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                hexaddr, _idx, _plen, scope, _flags, ifname = line.split()
                if ifname == name and scope == "00":
                    return str(ipaddress.IPv6Address(bytes.fromhex(hexaddr)))
    except OSError:
        pass
    raise ConfigError(f"interface {name} has no global IPv6 address (--outbound-addr6)")


def resolve_outbound(value: str | None, family: int) -> str | None:
    """An address literal as is, or an interface name resolved to its address."""
    if not value:
        return None
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        return _ifaddr4(value) if family == 4 else _ifaddr6(value)
