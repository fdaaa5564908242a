"""The network model and the validated, frozen configurations slirpy runs with.

This module owns:

* `NetworkModel`: the virtual network every slirpy instance presents to its
  guest (CIDR, gateway N+2, DNS N+3, guest N+100, DHCP pool N+15..N+30, the
  IPv6 prefix and its well-known hosts, MTU, MACs). Clients such as Podman and
  RootlessKit compute these addresses themselves and never ask, so the
  arithmetic here is part of the slirp4netns contract and must not drift.
* `Slirp4netnsConfig` (the `slirpy-slirp4netns` command line) and `RunConfig`
  (the `slirpy run` developer command), each validated once at construction.
* Small parsers (`parse_cidr`, `parse_mtu`, `parse_mac`, ...) that turn user
  text into values or raise `ConfigError` with one readable line.

It must not do I/O, touch the system (no interface lookups, no file checks) or
import anything outside the standard library: it is imported by the CLI before
any heavy dependency, and by tests that run without namespaces.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from ipaddress import (
    AddressValueError,
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    NetmaskValueError,
    ip_address,
)
from typing import Literal

__all__ = [
    "DEFAULT_CIDR",
    "DEFAULT_MTU",
    "DEFAULT_PREFIX6",
    "DEFAULT_RESOLV_CONF",
    "MAX_MTU",
    "MIN_MTU",
    "ConfigError",
    "NetworkModel",
    "PortMapping",
    "RunConfig",
    "Slirp4netnsConfig",
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
    "parse_port_mapping",
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


def _parse_port(text: str, what: str, *, allow_zero: bool = False) -> int:
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
        port = _parse_port(port_text, f"DNS upstream {text!r}: port")
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


# ------------------------------------------------------- slirp4netns command line


@dataclass(frozen=True)
class Slirp4netnsConfig:
    """Everything `slirpy-slirp4netns` was asked to do; validated at construction.

    Messages name the slirp4netns options because that is what the user typed.
    """

    target: str
    net: NetworkModel = field(default_factory=NetworkModel)
    tapname: str = "tap0"
    netns_type: Literal["pid", "path"] = "pid"
    userns_path: str | None = None
    configure: bool = False
    exit_fd: int | None = None
    ready_fd: int | None = None
    api_socket: str | None = None
    enable_sandbox: bool = False
    enable_seccomp: bool = False
    outbound_addr: str | None = None
    outbound_addr6: str | None = None
    dns_upstreams: tuple[str, ...] = ()
    resolv_conf: str = DEFAULT_RESOLV_CONF
    offload: bool = True
    # Fork the spliced-forward helper before confinement (it cannot start after).
    splice_helper: bool = False
    debug: bool = False
    limits: tuple[tuple[str, int], ...] = ()  # --limit NAME=VALUE, in order

    def __post_init__(self) -> None:
        if self.netns_type not in ("pid", "path"):
            raise ConfigError(f"--netns-type must be 'pid' or 'path', got {self.netns_type!r}")
        if self.netns_type == "pid":
            _check_pid(self.target)
        elif not self.target:
            raise ConfigError("the network namespace path must not be empty")
        if not is_valid_ifname(self.tapname):
            raise ConfigError(
                f"invalid TAP device name {self.tapname!r}: 1 to {IFNAMSIZ - 1} bytes, "
                "no '/', ':' or whitespace"
            )
        if self.userns_path is not None and not self.userns_path:
            raise ConfigError("--userns-path must not be empty")
        for name in ("exit_fd", "ready_fd"):
            fd = getattr(self, name)
            if fd is not None and (isinstance(fd, bool) or not isinstance(fd, int) or fd < 0):
                option = "--" + name.replace("_", "-")
                raise ConfigError(f"{option} must be a non-negative integer, got {fd!r}")
        if self.api_socket is not None:
            _check_api_socket(self.api_socket)
        if self.net.guest_mac is not None and not self.configure:
            raise ConfigError("--macaddress can only be used with --configure")
        if self.outbound_addr is not None:
            parse_outbound_addr(self.outbound_addr)
        if self.outbound_addr6 is not None:
            parse_outbound_addr6(self.outbound_addr6)
        for upstream in self.dns_upstreams:
            parse_dns_upstream(upstream)
        if not self.resolv_conf:
            raise ConfigError("--resolv-conf must not be empty")
        for name, value in self.limits:
            parse_limit(f"{name}={value}")

    @property
    def pid(self) -> int | None:
        """The target PID with `--netns-type=pid`, else None."""
        return int(self.target, 10) if self.netns_type == "pid" else None

    @property
    def dns_upstream_endpoints(self) -> tuple[tuple[IPv4Address | IPv6Address, int], ...]:
        """`dns_upstreams` decoded as (address, port) pairs; empty means use resolv.conf."""
        return tuple(parse_dns_upstream(u) for u in self.dns_upstreams)


def _check_pid(target: str) -> None:
    if not (target.isascii() and target.isdigit()) or int(target, 10) <= 0:
        raise ConfigError(f"PID must be a positive integer: {target!r}")


def _check_api_socket(path: str) -> None:
    if not path:
        raise ConfigError("--api-socket path must not be empty")
    size = len(os.fsencode(path))
    if size >= UNIX_PATH_MAX:
        raise ConfigError(
            f"--api-socket path is too long ({size} bytes, the limit is {UNIX_PATH_MAX - 1}): "
            f"{path!r}"
        )


# ------------------------------------------------------------------- slirpy run


@dataclass(frozen=True)
class PortMapping:
    """One `slirpy run -p [HOST_ADDR:]HOST_PORT:GUEST_PORT[/PROTO]` forward.

    PROTO ``splice`` is TCP relayed by splice() in the guest's namespace
    (the guest then sees its own address as the source, not N+2).
    """

    proto: Literal["tcp", "udp"]
    host_addr: str
    host_port: int
    guest_port: int
    splice: bool = False


def parse_port_mapping(text: str) -> PortMapping:
    """Parse a `--publish` value (docker-like syntax; IPv6 host address in brackets)."""
    bad = (
        f"invalid --publish {text!r}: expected [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|udp|splice]"
    )
    spec, _, proto = text.partition("/")
    if not proto:
        if text.endswith("/"):
            raise ConfigError(bad)
        proto = "tcp"
    if proto not in ("tcp", "udp", "splice"):
        raise ConfigError(
            f"invalid --publish {text!r}: protocol must be tcp, udp or splice, got {proto!r}"
        )
    host_addr = "0.0.0.0"
    if spec.startswith("["):
        end = spec.find("]")
        if end < 0 or spec[end + 1 : end + 2] != ":":
            raise ConfigError(bad)
        try:
            host_addr = str(IPv6Address(spec[1:end]))
        except ValueError:
            raise ConfigError(f"invalid --publish {text!r}: bad IPv6 address") from None
        spec = spec[end + 2 :]
        parts = spec.split(":")
        if len(parts) != 2:
            raise ConfigError(bad)
    else:
        parts = spec.split(":")
        if len(parts) == 3:
            try:
                host_addr = str(IPv4Address(parts[0]))
            except ValueError:
                raise ConfigError(
                    f"invalid --publish {text!r}: bad IPv4 address {parts[0]!r} "
                    "(write IPv6 addresses in brackets)"
                ) from None
            parts = parts[1:]
        elif len(parts) != 2:
            raise ConfigError(bad)
    host_port = _parse_port(parts[0], f"--publish {text!r}: host port")
    guest_port = _parse_port(parts[1], f"--publish {text!r}: guest port")
    return PortMapping(
        proto="udp" if proto == "udp" else "tcp",
        host_addr=host_addr,
        host_port=host_port,
        guest_port=guest_port,
        splice=proto == "splice",
    )


@dataclass(frozen=True)
class RunConfig:
    """Everything `slirpy run [OPTIONS] -- CMD...` was asked to do."""

    command: tuple[str, ...]
    net: NetworkModel = field(default_factory=NetworkModel)
    publish: tuple[PortMapping, ...] = ()
    dns_upstreams: tuple[str, ...] = ()
    outbound_addr: str | None = None
    resolv_conf: str = DEFAULT_RESOLV_CONF
    offload: bool = True
    verbose: int = 0
    stats: bool = False
    keep_id: bool = False

    def __post_init__(self) -> None:
        if not self.command:
            raise ConfigError("no command given: use slirpy run [OPTIONS] -- COMMAND [ARG]...")
        if self.outbound_addr is not None:
            parse_outbound_addr(self.outbound_addr)
        for upstream in self.dns_upstreams:
            parse_dns_upstream(upstream)
        if not self.resolv_conf:
            raise ConfigError("--resolv-conf must not be empty")

    @property
    def debug(self) -> bool:
        return self.verbose > 0

    @property
    def dns_upstream_endpoints(self) -> tuple[tuple[IPv4Address | IPv6Address, int], ...]:
        return tuple(parse_dns_upstream(u) for u in self.dns_upstreams)
