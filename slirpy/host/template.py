"""The host's template for pasta's model: which addresses and routes the guest gets.

This module owns choosing, per family, the host interface the guest copies
(the one with the first default route of the main table, lowest metric
first; else the only interface with any route; `-i`/`--outbound-if4/6`
override), reading its addresses and routes in the *current* network
namespace, and applying SharedAddressing's overrides (-a/-n/-g, -4/-6) and
local mode (no template: 169.254.2.1/16 via 169.254.2.2; IPv6 only a route
via fe80::1). It never raises for an offline host.

It must not change anything: slirpy.host.netconf installs a template.
"""

from __future__ import annotations

import socket
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from typing import TYPE_CHECKING, NamedTuple

from slirpy.config import ConfigError
from slirpy.host import rtnl

if TYPE_CHECKING:
    from slirpy.options import SharedAddressing

Addr = IPv4Address | IPv6Address
Iface = IPv4Interface | IPv6Interface
Net = IPv4Network | IPv6Network

LOCAL_ADDR4 = IPv4Interface("169.254.2.1/16")
LOCAL_GATEWAY4 = IPv4Address("169.254.2.2")
LOCAL_GATEWAY6 = IPv6Address("fe80::1")
DEFAULT_IFNAME = "tap0"
# The metric the kernel gives an IPv6 route added without one (IP6_RT_PRIO_USER).
IPV6_DEFAULT_METRIC = 1024
UNUSABLE = "External interface not usable"
_LINK_LOCAL6 = IPv6Network("fe80::/10")
_MULTICAST6 = IPv6Network("ff00::/8")
_LINK_LOCAL4 = IPv4Network("169.254.0.0/16")
# Addresses not worth copying: failed DAD, or on their way out.
_SKIP_ADDR_FLAGS = rtnl.IFA_F_DADFAILED | rtnl.IFA_F_DEPRECATED


# NamedTuples, not frozen dataclasses: this module is on slirpy-pasta's path
# to readiness, where each dataclass costs ~0.9 ms of code generation (issue
# 17). Equality is field by field, as before; `_replace` is `replace`.
class Route(NamedTuple):
    """One main-table route of the template (its device is the template's)."""

    dst: Net
    gateway: Addr | None
    metric: int


class FamilyTemplate(NamedTuple):
    """What one family of the guest gets. `ifname` None: local mode (no host interface)."""

    ifname: str | None
    addrs: tuple[Iface, ...]
    routes: tuple[Route, ...]
    gateway: Addr | None
    local_mode: bool


class HostTemplate(NamedTuple):
    """Both families (None: disabled by -4/-6), the guest's interface name, its addresses."""

    v4: FamilyTemplate | None
    v6: FamilyTemplate | None
    ifname: str
    address4: IPv4Address | None
    address6: IPv6Address | None

    def families(self) -> tuple[FamilyTemplate, ...]:
        return tuple(t for t in (self.v4, self.v6) if t is not None)


class HostState:
    """One snapshot of the links, addresses and main-table routes of a namespace."""

    def __init__(self, links: list[rtnl.Link], addrs: list[rtnl.AddrEntry],
                 routes: list[rtnl.RouteEntry]) -> None:
        self.links = {link.index: link for link in links}
        self.addrs = addrs
        # Cloned (cache) entries and other tables are not the host's routing.
        self.routes = [r for r in routes
                       if r.table == rtnl.RT_TABLE_MAIN and not r.flags & rtnl.RTM_F_CLONED]

    @classmethod
    def read(cls, nl: socket.socket) -> HostState:
        return cls(rtnl.dump_links(nl), rtnl.dump_addrs(nl), rtnl.dump_routes(nl))

    def index_of(self, name: str) -> int | None:
        for link in self.links.values():
            if link.name == name:
                return link.index
        return None

    def is_loopback(self, index: int) -> bool:
        link = self.links.get(index)
        return link is None or bool(link.flags & rtnl.IFF_LOOPBACK)


# ------------------------------------------------------------------ choosing


def _family_routes(state: HostState, family: int) -> list[rtnl.RouteEntry]:
    return [r for r in state.routes if r.family == family and r.type == rtnl.RTN_UNICAST]


def _is_link_local(dst: Net) -> bool:
    if isinstance(dst, IPv6Network):
        return dst.prefixlen > 0 and dst.subnet_of(_LINK_LOCAL6)
    return dst.prefixlen > 0 and dst.subnet_of(_LINK_LOCAL4)


def choose_interface(state: HostState, family: int) -> int | None:
    """The template interface's index for `family`, or None (local mode).

    The default route with the lowest metric (main table) wins; without one,
    the only interface that has any route (link-local prefixes and loopback
    left out: every IPv6 link has fe80::/64). Several candidates and no
    default route: None, as no interface is the obvious one.
    """
    routes = [r for r in _family_routes(state, family)
              if r.oif is not None and not state.is_loopback(r.oif)]
    defaults = sorted((r for r in routes if r.dst.prefixlen == 0), key=lambda r: r.metric)
    if defaults:
        return defaults[0].oif
    with_routes = {r.oif for r in routes if not _is_link_local(r.dst)}
    return with_routes.pop() if len(with_routes) == 1 else None


def _copied_addrs(state: HostState, index: int, family: int) -> tuple[Iface, ...]:
    """Global addresses of the interface (link and host scope are the host's own)."""
    out: list[Iface] = []
    for a in state.addrs:
        if a.index != index or _family_of(a.interface) != family:
            continue
        if a.scope != rtnl.RT_SCOPE_UNIVERSE or a.flags & _SKIP_ADDR_FLAGS:
            continue
        if a.interface not in out:
            out.append(a.interface)
    return tuple(out)


def _copied_routes(state: HostState, index: int, family: int) -> tuple[Route, ...]:
    """The interface's main-table routes the kernel does not make itself.

    Left out: `proto kernel` routes (the prefix routes of addresses; adding
    our copy of an address makes the guest's own), link-local and multicast
    destinations, and multipath routes with a nexthop on another interface.
    """
    out: list[Route] = []
    for r in _family_routes(state, family):
        if r.oif != index or r.protocol == rtnl.RTPROT_KERNEL:
            continue
        if any(nh.ifindex != index for nh in r.nexthops):
            continue
        if isinstance(r.dst, IPv6Network) and r.dst.prefixlen and (
            r.dst.subnet_of(_LINK_LOCAL6) or r.dst.subnet_of(_MULTICAST6)
        ):
            continue
        route = Route(r.dst, r.gateway, r.metric)
        if route not in out:
            out.append(route)
    return tuple(out)


def _family_of(x: Iface | Addr | Net) -> int:
    return socket.AF_INET if x.version == 4 else socket.AF_INET6


def primary_address(addrs: tuple[Iface, ...], tentative: frozenset[Iface] = frozenset()
                    ) -> Addr | None:
    """The guest's (= the host's) address: the most specific settled one, first among equals."""
    best: Iface | None = None
    for a in addrs:
        if best is None or (a not in tentative, a.network.prefixlen) > (
            best not in tentative, best.network.prefixlen
        ):
            best = a
    return None if best is None else best.ip


def default_gateway(routes: tuple[Route, ...]) -> Addr | None:
    defaults = sorted((r for r in routes if r.dst.prefixlen == 0 and r.gateway is not None),
                      key=lambda r: r.metric)
    return defaults[0].gateway if defaults else None


# ------------------------------------------------------------------ building


def _local_mode(family: int) -> FamilyTemplate:
    if family == socket.AF_INET:
        route = Route(IPv4Network("0.0.0.0/0"), LOCAL_GATEWAY4, 0)
        return FamilyTemplate(None, (LOCAL_ADDR4,), (route,), LOCAL_GATEWAY4, True)
    route = Route(IPv6Network("::/0"), LOCAL_GATEWAY6, IPV6_DEFAULT_METRIC)
    return FamilyTemplate(None, (), (route,), LOCAL_GATEWAY6, True)


def family_template(state: HostState, family: int, template_if: str | None) -> FamilyTemplate:
    """The copy of one family's template interface (local mode if there is none).

    An explicit `template_if` that is missing or has no address of the
    family raises ConfigError with pasta's words.
    """
    if template_if is not None:
        index = state.index_of(template_if)
        if index is None:
            raise ConfigError(UNUSABLE)
        addrs = _copied_addrs(state, index, family)
        if not addrs:
            raise ConfigError(UNUSABLE)
    else:
        found = choose_interface(state, family)
        if found is None:
            return _local_mode(family)
        index = found
        addrs = _copied_addrs(state, index, family)
    routes = _copied_routes(state, index, family)
    ifname = state.links[index].name if index in state.links else None
    if not addrs and family == socket.AF_INET:
        # An IPv4 route with no address to send from is no template.
        return _local_mode(family)
    return FamilyTemplate(ifname, addrs, routes, default_gateway(routes), False)


def _override(fam: FamilyTemplate, address: Iface | None, gateway: Addr | None) -> FamilyTemplate:
    """-a/-n (only that address) and -g (only a default route via it)."""
    addrs = (address,) if address is not None else fam.addrs
    routes = fam.routes
    if gateway is not None:
        zero: Net = IPv4Network("0.0.0.0/0") if gateway.version == 4 else IPv6Network("::/0")
        metric = 0 if gateway.version == 4 else IPV6_DEFAULT_METRIC
        routes = (Route(zero, gateway, metric),)
    gw = default_gateway(routes)
    return FamilyTemplate(fam.ifname, addrs, routes, gw, fam.local_mode)


def build_template(state: HostState, shared: SharedAddressing) -> HostTemplate:
    """The HostTemplate for `shared` from a snapshot of the host."""
    v4 = v6 = None
    if shared.ipv4:
        v4 = _override(family_template(state, socket.AF_INET, shared.template_if4),
                       shared.address4_interface, shared.gateway4)
    if shared.ipv6:
        v6 = _override(family_template(state, socket.AF_INET6, shared.template_if6),
                       shared.address6_interface, shared.gateway6)
    ifname = shared.ifname or (v4 and v4.ifname) or (v6 and v6.ifname) or DEFAULT_IFNAME
    tentative = frozenset(a.interface for a in state.addrs if a.flags & rtnl.IFA_F_TENTATIVE)
    found4 = primary_address(v4.addrs, tentative) if v4 is not None else None
    found6 = primary_address(v6.addrs, tentative) if v6 is not None else None
    address4 = found4 if isinstance(found4, IPv4Address) else None
    address6 = found6 if isinstance(found6, IPv6Address) else None
    return HostTemplate(v4, v6, ifname, address4, address6)


def read_template(nl: socket.socket, shared: SharedAddressing) -> HostTemplate:
    """The template of the namespace `nl` was made in (see read_host_template)."""
    return build_template(HostState.read(nl), shared)


def read_host_template(shared: SharedAddressing) -> HostTemplate:
    """The host's template in the current network namespace, with `shared`'s overrides.

    Raises ConfigError("External interface not usable") only for an explicit
    template interface that is missing or has no address; OSError when
    netlink itself fails.
    """
    with rtnl.open_route() as nl:
        return read_template(nl, shared)
