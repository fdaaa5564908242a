"""What one slirpy daemon is asked to do: `DaemonOptions`, frozen and validated.

This module owns the single description of a whole network that every front
end (slirp4netns's command line, `slirpy run`, the `slirpy.Network` library)
builds and that `slirpy.daemon.Daemon` consumes: which namespace to serve
(`JoinPid`, `JoinPath` or `NewNamespace`), the virtual network
(`slirpy.config.NetworkModel`), the TAP, DNS, outbound addresses, published
ports, engine limits, confinement, the API socket and the readiness and exit
channels. It is validated once, at construction, with one-line
`ConfigError`s.

It must not parse command lines (slirpy/frontends does, each with its own
defaults and wording), do I/O or import anything beyond the standard library
and slirpy.config: front ends import it before their ready byte.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from typing import TYPE_CHECKING, Literal

from slirpy.config import (
    DEFAULT_RESOLV_CONF,
    IFNAMSIZ,
    UNIX_PATH_MAX,
    ConfigError,
    NetworkModel,
    is_valid_ifname,
    parse_dns_upstream,
    parse_limit,
    parse_outbound_addr,
    parse_outbound_addr6,
)

if TYPE_CHECKING:  # only a type: importing it would cost the front ends' start-up
    from slirpy.control.policy import Policy

__all__ = [
    "PASTA_MAC",
    "AutoForward",
    "DaemonOptions",
    "HostLoopbackForward",
    "JoinPath",
    "JoinPid",
    "NewNamespace",
    "PortMapping",
    "SharedAddressing",
    "Target",
]

# pasta's own MAC address (its -M default): what the guest sees for every
# address behind the TAP in the shared-address model.
PASTA_MAC = bytes.fromhex("9a559a559a55")
# pasta's default MTU for the namespace's interface (not copied from the host).
SHARED_DEFAULT_MTU = 65520


@dataclass(frozen=True)
class JoinPid:
    """Serve the network namespace of process `pid` (joined through its user
    namespace, or `userns_path`); slirpy stops when that process exits."""

    pid: int
    userns_path: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.pid, bool) or not isinstance(self.pid, int) or self.pid <= 0:
            raise ConfigError(f"PID must be a positive integer: {self.pid!r}")
        _check_userns_path(self.userns_path)


@dataclass(frozen=True)
class JoinPath:
    """Serve the network namespace bind-mounted (or in /proc) at `netns_path`;
    its user namespace is `userns_path`, else the one that owns it."""

    netns_path: str
    userns_path: str | None = None
    # pasta's --netns without --userns (--netns-only): join the netns only,
    # never a user namespace (not even the one that owns it).
    netns_only: bool = False

    def __post_init__(self) -> None:
        if self.netns_only and self.userns_path is not None:
            raise ConfigError("--netns-only and a user namespace path are exclusive")
        if not self.netns_path:
            raise ConfigError("the network namespace path must not be empty")
        _check_userns_path(self.userns_path)


@dataclass(frozen=True)
class NewNamespace:
    """Create a user, network (and, for a command, mount) namespace.

    With `command`, it runs there once the network is up (the caller mapped
    to root inside, or to itself with `keep_id`), sees a resolv.conf naming
    slirpy's forwarder, gets slirpy's signals, and its exit ends slirpy (the
    daemon then returns its exit code). Without, a sleeping child holds the
    namespaces until slirpy stops.
    """

    command: tuple[str, ...] = ()
    keep_id: bool = False


Target = JoinPid | JoinPath | NewNamespace


@dataclass(frozen=True)
class HostLoopbackForward:
    """pasta's -T/-U: a port on the namespace's loopback relayed to the same
    family's host loopback (`ns_port` there → `host_port` on 127.0.0.1/::1)."""

    proto: Literal["tcp", "udp"]
    ns_port: int
    host_port: int
    option: str | None = None
    # pasta's `all` / exclusion-only specs: a port that cannot be bound in
    # the namespace is skipped, not fatal.
    optional: bool = False


@dataclass(frozen=True)
class AutoForward:
    """pasta's `auto`: mirror the ports bound on the other side, rescanned
    every second. `direction` "in" (-t/-u auto: ports bound in the namespace
    are published on the host) or "out" (-T/-U auto: host loopback ports
    appear on the namespace's loopback). `excluded` are ports never mirrored."""

    proto: Literal["tcp", "udp"]
    direction: Literal["in", "out"]
    excluded: frozenset[int] = frozenset()
    host_addr: str | None = None


@dataclass(frozen=True)
class SharedAddressing:
    """pasta's network model: the guest takes the host's addresses and routes.

    The daemon reads the host's template interface at start-up (the first
    default route per family; `template_if4/6` override it) and, with
    `config_net`, copies its addresses and routes into the namespace. The
    overrides (`address4`, `prefixlen4`, `gateway4`, ...) are pasta's -a, -n,
    -g. A family with no template uses local mode (169.254.2.1 via
    169.254.2.2; IPv6: only a route via fe80::1). Every address behind the TAP
    answers with `our_mac`; flows leave as host sockets from the host's
    address. `dns_forward` (one per family) is redirected to `dns_host`
    (None: the first nameserver of the host's resolv.conf, re-read when it
    changes); `map_guest_addr` reaches the host's own address;
    `map_host_loopback` reaches the host's loopback (the gateway too unless
    `no_map_gw`). `follow_host`: host address and route changes are copied.
    """

    ipv4: bool = True
    ipv6: bool = True
    config_net: bool = False
    template_if4: str | None = None
    template_if6: str | None = None
    # -o / --outbound-if4/6 are DaemonOptions.outbound_addr/6.
    address4: IPv4Address | None = None
    prefixlen4: int | None = None
    gateway4: IPv4Address | None = None
    address6: IPv6Address | None = None
    gateway6: IPv6Address | None = None
    ifname: str | None = None
    mtu: int = SHARED_DEFAULT_MTU
    ns_mac: bytes | None = None
    our_mac: bytes = PASTA_MAC
    dns_forward: tuple[IPv4Address | IPv6Address, ...] = ()
    dns_host: tuple[IPv4Address | IPv6Address, ...] = ()
    map_guest_addr: tuple[IPv4Address | IPv6Address, ...] = ()
    map_host_loopback: tuple[IPv4Address | IPv6Address, ...] = ()
    no_map_gw: bool = False
    # slirpy's opt-in (not pasta's): `map_guest_addr` reaches the host's
    # loopback services (what host.containers.internal users expect).
    guest_addr_reaches_loopback: bool = False
    follow_host: bool = True
    # What DHCP/NDP would advertise (-D/-S); pasta mode only with --dhcp-dns.
    dns_servers: tuple[IPv4Address | IPv6Address, ...] = ()
    search_domains: tuple[str, ...] = ()
    no_dhcp: bool = False
    no_ndp: bool = False
    no_ra: bool = False
    no_dhcpv6: bool = False
    tcp: bool = True
    udp: bool = True
    icmp: bool = True
    # pasta's --host-lo-to-ns-lo: host-loopback clients of -t/-u forwards
    # (the spliced path) appear from the namespace's loopback, not from its
    # public address.
    host_lo_to_ns_lo: bool = False
    # pasta's --no-splice: host-loopback clients take the TAP path too (also
    # for `auto` forwards).
    no_splice: bool = False
    # pasta's --dhcp-dns / --dhcp-search: advertise `dns_servers` /
    # `search_domains` via DHCP, DHCPv6 and NDP (off by default in pasta mode).
    dhcp_dns: bool = False
    dhcp_search: bool = False

    def __post_init__(self) -> None:
        if not (self.ipv4 or self.ipv6):
            raise ConfigError("cannot disable both IPv4 and IPv6")
        if self.prefixlen4 is not None and not 0 <= self.prefixlen4 <= 32:
            raise ConfigError(f"invalid IPv4 prefix length {self.prefixlen4}")
        if self.ifname is not None and not is_valid_ifname(self.ifname):
            raise ConfigError(f"invalid interface name {self.ifname!r}")
        if self.mtu and not 68 <= self.mtu <= 65520:
            raise ConfigError(f"MTU must be between 68 and 65520 (0: don't set), got {self.mtu}")
        for group in ("dns_forward", "dns_host", "map_guest_addr", "map_host_loopback"):
            fams = [a.version for a in getattr(self, group)]
            if len(fams) != len(set(fams)):
                raise ConfigError(f"{group.replace('_', '-')}: at most one address per family")

    @property
    def address4_interface(self) -> IPv4Interface | None:
        """-a/-n as an interface (the prefix from the address class without -n)."""
        if self.address4 is None:
            return None
        if self.prefixlen4 is not None:
            return IPv4Interface(f"{self.address4}/{self.prefixlen4}")
        first = self.address4.packed[0]
        plen = 8 if first < 128 else 16 if first < 192 else 24
        return IPv4Interface(f"{self.address4}/{plen}")

    @property
    def address6_interface(self) -> IPv6Interface | None:
        return None if self.address6 is None else IPv6Interface(f"{self.address6}/64")


@dataclass(frozen=True)
class PortMapping:
    """One forward from a host port to the guest.

    ``splice`` is TCP relayed by splice() in the guest's namespace (the guest
    then sees its own address as the source, not N+2). `guest_addr` None is
    the guest's recommended address (N+100).
    """

    proto: Literal["tcp", "udp"]
    host_addr: str
    host_port: int
    guest_port: int
    splice: bool = False
    guest_addr: str | None = None
    # pasta's -t/-u: bound to this interface (SO_BINDTODEVICE, `ADDR%IF/`).
    bind_device: str | None = None
    # pasta's `all`: a port that cannot be bound is skipped, not fatal.
    optional: bool = False
    # Shared-address model: loopback clients of a TCP port take the spliced
    # path (a socket in the guest's namespace to the guest's own address, as
    # pasta does); other clients keep their address on the TAP path.
    splice_loopback: bool = False
    # For error messages: the option as the user wrote it (`-t 8080-8080:80-80`).
    option: str | None = None

    def describe(self) -> str:
        """`ADDR:PORT -> guest PORT/PROTO`, as messages show it."""
        host = f"[{self.host_addr}]" if ":" in self.host_addr else self.host_addr
        kind = "splice" if self.splice else self.proto
        return f"{host}:{self.host_port} -> guest {self.guest_port}/{kind}"


@dataclass(frozen=True)
class DaemonOptions:
    """Everything one slirpy daemon does, from start to stop.

    Field names follow slirp4netns's options where it has one; the messages
    of the checks name them too (front ends check their own input first,
    with their own wording; these checks guard the library and the rest).
    """

    target: Target
    net: NetworkModel = field(default_factory=NetworkModel)
    # The TAP: its name in the namespace, whether slirpy configures it like
    # slirp4netns's -c (address N+100, route via N+2, MTU, lo up), offloads.
    tapname: str = "tap0"
    configure: bool = False
    offload: bool = True
    # DNS: upstreams (ADDR:PORT, normalized) instead of resolv_conf's servers.
    dns_upstreams: tuple[str, ...] = ()
    resolv_conf: str = DEFAULT_RESOLV_CONF
    # Source of outbound sockets: an address literal or an interface name.
    outbound_addr: str | None = None
    outbound_addr6: str | None = None
    # (name, value) pairs of slirpy.engine.Limits, in the order given.
    limits: tuple[tuple[str, int], ...] = ()
    forwards: tuple[PortMapping, ...] = ()
    # pasta's -T/-U and `auto` port mirroring (shared-address model only).
    loopback_forwards: tuple[HostLoopbackForward, ...] = ()
    auto_forwards: tuple[AutoForward, ...] = ()
    # None: slirp4netns's model (`net`); else pasta's (the guest shares the
    # host's addresses; `net` then only gives limits such as the MTU default).
    shared: SharedAddressing | None = None
    api_socket: str | None = None
    # slirp4netns's readiness and exit channels: write "1" when ready; stop
    # when the exit fd hangs up.
    ready_fd: int | None = None
    exit_fd: int | None = None
    sandbox: bool = False
    seccomp: bool = False
    # Fork the spliced-forward helper before confinement (it cannot start after).
    splice_helper: bool = False
    # SIGTERM/SIGINT/SIGHUP stop slirpy (or go to the command of a
    # NewNamespace); False leaves signals alone (the library may run outside
    # the main thread).
    handle_signals: bool = True
    # Logging: debug messages; one stderr line per flow opened and closed;
    # a traffic summary on stderr at exit.
    debug: bool = False
    log_flows: bool = False
    print_stats: bool = False
    # pasta's life cycle: once ready, fork; the parent writes `pid_file` (the
    # daemon's PID) and exits 0, the daemon setsid()s with /dev/null on 0/1/2.
    daemonize: bool = False
    pid_file: str | None = None
    # Messages after start-up go to this file instead of stderr (-l).
    log_file: str | None = None
    # Only warnings and errors (-q).
    quiet: bool = False
    # A JoinPath target: stop when the namespace's path is removed (inotify on
    # its directory; a 1 s poll for /proc paths), closing listeners first.
    netns_quit: bool = False
    # The egress policy (slirpy.control.policy.Policy), already parsed and
    # validated by the front end (--policy); None: everything allowed.
    policy: Policy | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.target, JoinPid | JoinPath | NewNamespace):
            raise TypeError(f"target must be a Target, got {type(self.target).__name__}")
        if not is_valid_ifname(self.tapname):
            raise ConfigError(
                f"invalid TAP device name {self.tapname!r}: 1 to {IFNAMSIZ - 1} bytes, "
                "no '/', ':' or whitespace"
            )
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
        if (self.loopback_forwards or self.auto_forwards) and self.shared is None:
            raise ConfigError("-T/-U and auto port forwarding need the shared-address model")
        if self.pid_file is not None and not self.pid_file:
            raise ConfigError("--pid must not be empty")

    @property
    def dns_upstream_endpoints(self) -> tuple[tuple[IPv4Address | IPv6Address, int], ...]:
        """`dns_upstreams` decoded as (address, port) pairs; empty means use resolv.conf."""
        return tuple(parse_dns_upstream(u) for u in self.dns_upstreams)

    @property
    def command(self) -> tuple[str, ...]:
        """The command slirpy runs (NewNamespace), else ()."""
        return self.target.command if isinstance(self.target, NewNamespace) else ()


def _check_userns_path(path: str | None) -> None:
    if path is not None and not path:
        raise ConfigError("--userns-path must not be empty")


def _check_api_socket(path: str) -> None:
    if not path:
        raise ConfigError("--api-socket path must not be empty")
    size = len(os.fsencode(path))
    if size >= UNIX_PATH_MAX:
        raise ConfigError(
            f"--api-socket path is too long ({size} bytes, the limit is {UNIX_PATH_MAX - 1}): "
            f"{path!r}"
        )
