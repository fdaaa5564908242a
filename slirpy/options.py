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
from ipaddress import IPv4Address, IPv6Address
from typing import Literal

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

__all__ = [
    "DaemonOptions",
    "JoinPath",
    "JoinPid",
    "NewNamespace",
    "PortMapping",
    "Target",
]


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

    def __post_init__(self) -> None:
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
