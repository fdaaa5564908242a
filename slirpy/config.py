"""The network model and the parsers of the values users give slirpy.

This module owns:

* `NetworkModel`: the virtual network every slirpy instance presents to its
  guest (CIDR, gateway N+2, DNS N+3, guest N+100, DHCP pool N+15..N+30, the
  IPv6 prefix and its well-known hosts, MTU, MACs). Clients such as Podman and
  RootlessKit compute these addresses themselves and never ask, so the
  arithmetic here is part of the slirp4netns contract and must not drift.
* Small parsers (`parse_cidr`, `parse_mtu`, `parse_mac`, ...) that turn user
  text into values or raise `ConfigError` with one readable line.

It must not do I/O, touch the system (no interface lookups, no file checks) or
import anything outside the standard library: front ends import it before
any heavy dependency, and tests import it without namespaces. What one daemon
does as a whole is `slirpy.options.DaemonOptions`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from ipaddress import (
    AddressValueError,
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    NetmaskValueError,
    ip_address,
)

__all__ = [
    "DEFAULT_CIDR",
    "DEFAULT_MTU",
    "DEFAULT_PREFIX6",
    "DEFAULT_RESOLV_CONF",
    "MAX_MTU",
    "MIN_MTU",
    "ConfigError",
    "NetworkModel",
    "is_valid_ifname",
    "mac_for_ipv4",
    "mac_for_ipv6",
    "parse_cidr",
    "parse_dns_upstream",
    "parse_fd",
    "parse_limit",
    "parse_mac",
    "parse_mtu",
    "parse_outbound_addr",
    "parse_outbound_addr6",
    "parse_port",
    "parse_prefix6",
]

DEFAULT_CIDR = IPv4Network("10.0.2.0/24")
DEFAULT_PREFIX6 = IPv6Network("fd00::/64")
DEFAULT_MTU = 1500
# slirp4netns's limits: 68 is the IPv4 minimum (RFC 791); 65521 is libslirp's
# IF_MTU_MAX, and clients (Podman, RootlessKit) pass 65520 by default.
MIN_MTU = 68
MAX_MTU = 65521
MIN_PREFIXLEN = 1
# The recommended guest address is N+100, so the network must hold at least
# 128 addresses: /25 is the smallest prefix that slirp4netns accepts.
MAX_PREFIXLEN = 25
DEFAULT_RESOLV_CONF = "/etc/resolv.conf"
DNS_PORT = 53
# sun_path is 108 bytes on Linux including the terminating NUL.
UNIX_PATH_MAX = 108
# Linux IFNAMSIZ is 16 including the terminating NUL.
IFNAMSIZ = 16

_GATEWAY_OFFSET = 2
_DNS_OFFSET = 3
_DHCP_START_OFFSET = 15
_DHCP_END_OFFSET = 30
_GUEST_OFFSET = 100
_LINK_LOCAL6 = IPv6Network("fe80::/10")
_MULTICAST6 = IPv6Network("ff00::/8")


class ConfigError(ValueError):
    """Invalid user input. The message is one readable line, shown as-is to the user."""


# --------------------------------------------------------------------------- MACs


def mac_for_ipv4(addr: IPv4Address) -> bytes:
    """MAC of a virtual IPv4 host: 52:55 followed by the 4 address bytes (as libslirp)."""
    return b"\x52\x55" + addr.packed


def mac_for_ipv6(addr: IPv6Address) -> bytes:
    """MAC of a virtual IPv6 host: 52:56 followed by the last 4 address bytes (as libslirp)."""
    return b"\x52\x56" + addr.packed[-4:]


def format_mac(mac: bytes) -> str:
    """`b"RU\\n\\0\\2\\2"` -> `"52:55:0a:00:02:02"`."""
    return ":".join(f"{b:02x}" for b in mac)


_MAC_RE = re.compile(r"^[0-9A-Fa-f]{1,2}(?::[0-9A-Fa-f]{1,2}){5}$")


def parse_mac(text: str) -> bytes:
    """Parse `xx:xx:xx:xx:xx:xx` into 6 bytes.

    Multicast and all-zero addresses are rejected here because the kernel
    would refuse them on the TAP later (EADDRNOTAVAIL), with a worse message.
    """
    if not _MAC_RE.match(text):
        raise ConfigError(
            f"invalid MAC address {text!r}: expected six hex octets like 02:42:ac:11:00:02"
        )
    mac = bytes(int(part, 16) for part in text.split(":"))
    _check_guest_mac(mac, text)
    return mac


def _check_guest_mac(mac: bytes, shown: str) -> None:
    if len(mac) != 6:
        raise ConfigError(f"invalid MAC address {shown!r}: must be 6 bytes")
    if mac[0] & 0x01:
        raise ConfigError(f"invalid MAC address {shown!r}: multicast addresses cannot be used")
    if mac == bytes(6):
        raise ConfigError(f"invalid MAC address {shown!r}: the all-zero address cannot be used")


# ------------------------------------------------------------------ value parsers


def parse_mtu(text: str) -> int:
    """Parse and range-check an MTU given as text."""
    try:
        mtu = int(text, 10)
    except ValueError:
        raise ConfigError(f"MTU must be an integer, got {text!r}") from None
    _check_mtu(mtu)
    return mtu


def _check_mtu(mtu: int) -> None:
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise ConfigError(f"MTU must be between {MIN_MTU} and {MAX_MTU}, got {mtu}")


def parse_cidr(text: str) -> IPv4Network:
    """Parse `A.B.C.D/LEN` (or `A.B.C.D/MASK`) into a network; it must be a network address."""
    if "/" not in text:
        raise ConfigError(f"CIDR must be ADDRESS/PREFIXLEN like 10.0.2.0/24, got {text!r}")
    try:
        net = IPv4Network(text, strict=False)
    except (AddressValueError, NetmaskValueError, ValueError):
        raise ConfigError(f"invalid IPv4 CIDR {text!r}") from None
    _check_cidr(net)
    if IPv4Address(text.split("/", 1)[0]) != net.network_address:
        raise ConfigError(
            f"CIDR {text!r} is not a network address (host bits are set); did you mean {net}?"
        )
    return net


def _check_cidr(net: IPv4Network) -> None:
    if not MIN_PREFIXLEN <= net.prefixlen <= MAX_PREFIXLEN:
        raise ConfigError(
            f"CIDR prefix length must be between {MIN_PREFIXLEN} and {MAX_PREFIXLEN}, "
            f"got /{net.prefixlen}"
        )


def parse_prefix6(text: str) -> IPv6Network:
    """Parse the IPv6 prefix handed to the guest by router advertisements (a /64)."""
    if "/" not in text:
        raise ConfigError(f"IPv6 prefix must be ADDRESS/64 like fd00::/64, got {text!r}")
    try:
        net = IPv6Network(text, strict=False)
    except (AddressValueError, NetmaskValueError, ValueError):
        raise ConfigError(f"invalid IPv6 prefix {text!r}") from None
    _check_prefix6(net)
    if IPv6Address(text.split("/", 1)[0]) != net.network_address:
        raise ConfigError(
            f"IPv6 prefix {text!r} is not a network address (host bits are set); "
            f"did you mean {net}?"
        )
    return net


def _check_prefix6(net: IPv6Network) -> None:
    # SLAAC needs exactly a /64: the guest builds its interface identifier
    # from the low 64 bits.
    if net.prefixlen != 64:
        raise ConfigError(f"IPv6 prefix must be a /64 (SLAAC needs it), got /{net.prefixlen}")
    if net.subnet_of(_LINK_LOCAL6) or net.subnet_of(_MULTICAST6):
        raise ConfigError(f"IPv6 prefix must not be link-local or multicast, got {net}")


def parse_fd(text: str, option: str) -> int:
    """Parse a file descriptor number given to `option` (named in the message)."""
    # isascii() first: str.isdigit() also accepts non-ASCII digits.
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(f"{option} must be a non-negative integer, got {text!r}")
    return int(text, 10)


def is_valid_ifname(name: str) -> bool:
    """What Linux's dev_valid_name() accepts: 1..15 bytes, not . or .., no '/', ':' or space."""
    try:
        raw = os.fsencode(name)
    except (UnicodeError, ValueError):
        return False
    if not 0 < len(raw) < IFNAMSIZ or name in (".", ".."):
        return False
    return not any(c in "/:" or c.isspace() for c in name) and "\0" not in name


def _looks_like_ipv4(text: str) -> bool:
    # A name made only of digits and dots is almost certainly a mistyped
    # address rather than an interface: say so instead of "no such interface".
    return bool(text) and all(c.isdigit() or c == "." for c in text) and "." in text


# The engine's hard caps and timeouts that `--limit NAME=VALUE` may set: the
# fields of slirpy.engine.Limits (kept here so that parsing options does not
# load the C engine; a unit test checks that the two agree), each with the
# largest value accepted. The engine also scales the flow caps down to what
# RLIMIT_NOFILE allows; timeouts are in seconds.
LIMITS: dict[str, int] = {
    "max_tcp_flows": 1 << 20,
    "max_udp_flows": 1 << 20,
    "max_icmp_flows": 1 << 20,
    "max_half_open": 1 << 20,
    "udp_idle_s": 7 * 86400,
    "tcp_idle_s": 7 * 86400,
}


def parse_limit(text: str) -> tuple[str, int]:
    """Validate `--limit NAME=VALUE` (e.g. `max_tcp_flows=1000`, `udp_idle_s=30`)."""
    name, sep, value = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or name not in LIMITS:
        raise ConfigError(
            f"--limit takes NAME=VALUE with NAME one of {', '.join(LIMITS)}; got {text!r}"
        )
    top = LIMITS[name]
    value = value.strip()
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= top:
        raise ConfigError(f"--limit {name} must be an integer from 1 to {top}, got {value!r}")
    return name, int(value)


def parse_outbound_addr(text: str) -> str:
    """Validate `--outbound-addr`: an IPv4 literal or a plausible interface name."""
    try:
        addr = ip_address(text)
    except ValueError:
        addr = None
    if isinstance(addr, IPv4Address):
        return str(addr)
    if isinstance(addr, IPv6Address) or ":" in text:
        raise ConfigError(
            f"--outbound-addr takes an IPv4 address or an interface name, got {text!r} "
            "(use --outbound-addr6 for IPv6)"
        )
    if _looks_like_ipv4(text):
        raise ConfigError(f"--outbound-addr: invalid IPv4 address {text!r}")
    if not is_valid_ifname(text):
        raise ConfigError(
            f"--outbound-addr takes an IPv4 address or an interface name, got {text!r}"
        )
    return text


def parse_outbound_addr6(text: str) -> str:
    """Validate `--outbound-addr6`: an IPv6 literal or a plausible interface name."""
    try:
        addr = ip_address(text)
    except ValueError:
        addr = None
    if isinstance(addr, IPv6Address):
        return str(addr)
    if isinstance(addr, IPv4Address) or _looks_like_ipv4(text):
        raise ConfigError(
            f"--outbound-addr6 takes an IPv6 address or an interface name, got {text!r} "
            "(use --outbound-addr for IPv4)"
        )
    if ":" in text:
        raise ConfigError(f"--outbound-addr6: invalid IPv6 address {text!r}")
    if not is_valid_ifname(text):
        raise ConfigError(
            f"--outbound-addr6 takes an IPv6 address or an interface name, got {text!r}"
        )
    return text


def parse_port(text: str, what: str, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if not (text.isascii() and text.isdigit()) or not low <= int(text, 10) <= 65535:
        raise ConfigError(f"{what} must be a port number between {low} and 65535, got {text!r}")
    return int(text, 10)


def parse_dns_upstream(text: str) -> tuple[IPv4Address | IPv6Address, int]:
    """Parse `ADDR[:PORT]` (IPv6: `ADDR` or `[ADDR]:PORT`) into (address, port).

    A bare IPv6 literal is taken whole (port 53): `fd00::1:53` is an address,
    write `[fd00::1]:53` to give a port.
    """
    bad = f"invalid DNS upstream {text!r}: expected ADDR, ADDR:PORT or [IPv6]:PORT"
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(bad)
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(bad)
            port_text = rest[1:]
        try:
            addr: IPv4Address | IPv6Address = IPv6Address(host)
        except ValueError:
            raise ConfigError(bad) from None
    else:
        try:
            addr = ip_address(text)
        except ValueError:
            if text.count(":") != 1:
                raise ConfigError(bad) from None
            host, port_text = text.split(":")
            try:
                addr = IPv4Address(host)
            except ValueError:
                raise ConfigError(bad) from None
    port = DNS_PORT
    if port_text or text.endswith(":"):
        port = parse_port(port_text, f"DNS upstream {text!r}: port")
    return addr, port


def _format_endpoint(addr: IPv4Address | IPv6Address, port: int) -> str:
    return f"[{addr}]:{port}" if isinstance(addr, IPv6Address) else f"{addr}:{port}"


def normalize_dns_upstream(text: str) -> str:
    """Canonical `ADDR:PORT` / `[ADDR6]:PORT` form of a `--dns-upstream` value."""
    return _format_endpoint(*parse_dns_upstream(text))


# ------------------------------------------------------------------ the network


@dataclass(frozen=True)
class NetworkModel:
    """The virtual network presented to the guest; validated at construction."""

    cidr: IPv4Network = DEFAULT_CIDR
    mtu: int = DEFAULT_MTU
    ipv6: bool = False
    prefix6: IPv6Network = DEFAULT_PREFIX6
    host_loopback: bool = True
    dns_enabled: bool = True
    guest_mac: bytes | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.cidr, IPv4Network):
            raise TypeError(f"cidr must be an IPv4Network, got {type(self.cidr).__name__}")
        if not isinstance(self.prefix6, IPv6Network):
            raise TypeError(f"prefix6 must be an IPv6Network, got {type(self.prefix6).__name__}")
        if isinstance(self.mtu, bool) or not isinstance(self.mtu, int):
            raise TypeError(f"mtu must be an int, got {type(self.mtu).__name__}")
        _check_cidr(self.cidr)
        _check_mtu(self.mtu)
        _check_prefix6(self.prefix6)
        if self.guest_mac is not None:
            _check_guest_mac(bytes(self.guest_mac), format_mac(bytes(self.guest_mac)))

    def _host(self, offset: int) -> IPv4Address:
        return self.cidr.network_address + offset

    # IPv4 -----------------------------------------------------------------
    @property
    def gateway(self) -> IPv4Address:
        """N+2: the virtual router, and the host's loopback unless disabled."""
        return self._host(_GATEWAY_OFFSET)

    @property
    def dns(self) -> IPv4Address:
        """N+3: the DNS forwarder."""
        return self._host(_DNS_OFFSET)

    @property
    def guest(self) -> IPv4Address:
        """N+100: the address recommended to (and configured by -c on) the guest."""
        return self._host(_GUEST_OFFSET)

    @property
    def dhcp_start(self) -> IPv4Address:
        return self._host(_DHCP_START_OFFSET)

    @property
    def dhcp_end(self) -> IPv4Address:
        return self._host(_DHCP_END_OFFSET)

    @property
    def netmask(self) -> IPv4Address:
        return self.cidr.netmask

    @property
    def prefixlen(self) -> int:
        return self.cidr.prefixlen

    @property
    def broadcast(self) -> IPv4Address:
        return self.cidr.broadcast_address

    @property
    def gateway_mac(self) -> bytes:
        return mac_for_ipv4(self.gateway)

    @property
    def dns_mac(self) -> bytes:
        return mac_for_ipv4(self.dns)

    # IPv6 -----------------------------------------------------------------
    @property
    def gateway6(self) -> IPv6Address:
        """prefix::2: the virtual router, and the host's ::1 unless loopback is disabled."""
        return self.prefix6.network_address + _GATEWAY_OFFSET

    @property
    def dns6(self) -> IPv6Address:
        """prefix::3: the IPv6 DNS forwarder (announced by RDNSS)."""
        return self.prefix6.network_address + _DNS_OFFSET

    @property
    def router_ll6(self) -> IPv6Address:
        """fe80::2: the link-local source of router advertisements."""
        return IPv6Address("fe80::2")

    @property
    def gateway6_mac(self) -> bytes:
        return mac_for_ipv6(self.gateway6)

    @property
    def dns6_mac(self) -> bytes:
        return mac_for_ipv6(self.dns6)
