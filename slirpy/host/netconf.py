"""Configure the guest's interface from a HostTemplate (pasta's --config-net).

This module owns what the namespace gets and in which order: `lo` up; the
TAP's MTU, MAC and queue length; IPv6 without DAD (IFF_NOARP while the link
comes up, the link-local address made nodad, global addresses added nodad,
so no DAD delays readiness, as pasta does); link up; the addresses; the
routes with the TAP as their device (on-link routes before the gateway
routes that need them; a gateway no prefix reaches gets RTNH_F_ONLINK).
`apply_change` moves the copy when the host's template changes.

Everything goes through a netlink socket the caller created inside the
namespace (a netlink socket keeps the namespace it was made in), so the
daemon never changes namespace. It must not read the host (see
slirpy.host.template) nor decide when to reconfigure.
"""

from __future__ import annotations

import errno
import socket
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, IPv6Network
from typing import NamedTuple

from slirpy.host import rtnl
from slirpy.host.template import FamilyTemplate, HostTemplate, Route

Addr = IPv4Address | IPv6Address
Iface = IPv4Interface | IPv6Interface
_LINK_LOCAL6 = IPv6Network("fe80::/10")


def _on_link(gateway: Addr, fam: FamilyTemplate) -> bool:
    """Whether `gateway` is reachable without another router: an address's prefix
    or a device route covers it (IPv6 link-local gateways always are)."""
    if isinstance(gateway, IPv6Address) and gateway in _LINK_LOCAL6:
        return True
    if any(gateway in a.network for a in fam.addrs):
        return True
    return any(r.gateway is None and gateway in r.dst for r in fam.routes)


def ordered_routes(fam: FamilyTemplate) -> list[tuple[Route, bool]]:
    """(route, onlink flag) in the order to add them: device routes first."""
    direct = [r for r in fam.routes if r.gateway is None]
    via = [r for r in fam.routes if r.gateway is not None]
    return [(r, False) for r in direct] + [
        (r, r.gateway is not None and not _on_link(r.gateway, fam)) for r in via
    ]


def _add_routes(nl: socket.socket, index: int, fam: FamilyTemplate, *, replace: bool) -> None:
    for route, onlink in ordered_routes(fam):
        try:
            rtnl.add_route(nl, route.dst, oif=index, gateway=route.gateway, metric=route.metric,
                           onlink=onlink, replace=replace)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise OSError(e.errno, f"route {_describe(route)}: {e.strerror}") from None


def _describe(route: Route) -> str:
    via = f" via {route.gateway}" if route.gateway is not None else ""
    return f"{route.dst}{via}"


def _add_addrs(nl: socket.socket, index: int, addrs: tuple[Iface, ...]) -> None:
    for iface in addrs:
        try:
            rtnl.add_addr(nl, index, iface, nodad=iface.version == 6)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise OSError(e.errno, f"address {iface}: {e.strerror}") from None


def link_local_of(mac: bytes) -> IPv6Interface:
    """The EUI-64 link-local address the kernel would make from `mac` (RFC 4291)."""
    eui = bytes([mac[0] ^ 0x02]) + mac[1:3] + b"\xff\xfe" + mac[3:6]
    return IPv6Interface((IPv6Address(b"\xfe\x80" + b"\0" * 6 + eui), 64))


class Configured(NamedTuple):
    """What configure_namespace made: the guest's MAC, whether IPv6 is on.

    `ipv6` is False when the template has no IPv6 or the namespace cannot do
    IPv6 (no IPv6 in the kernel, or disable_ipv6): IPv4 is configured all
    the same, and the caller should drop the template's v6 half (for
    apply_change too) rather than fail the start.
    """

    mac: bytes
    ipv6: bool


def _start_ipv6(nl: socket.socket, index: int) -> bool:
    """Turn the kernel's link-local generation off; False if the link has no IPv6."""
    try:
        rtnl.set_link(nl, index, addr_gen_mode=rtnl.IN6_ADDR_GEN_MODE_NONE)
    except OSError as e:
        if e.errno in (errno.EAFNOSUPPORT, errno.EOPNOTSUPP):
            return False
        raise
    return True


def configure_namespace(
    nl: socket.socket,
    ifname: str,
    template: HostTemplate,
    *,
    mtu: int,
    ns_mac: bytes | None,
    txqueuelen: int,
) -> Configured:
    """Configure `ifname` (the TAP, already open) in the socket's namespace.

    `mtu` 0 leaves the MTU alone; `ns_mac` None keeps the kernel's random
    MAC. Returns the interface's MAC (the guest's, for the engine) and
    whether IPv6 was configured. Raises OSError (the kernel's errno, with
    what failed) on any other failure.
    """
    lo = rtnl.link_by_name(nl, "lo")
    rtnl.set_link(nl, lo.index, up=True)
    tap = rtnl.link_by_name(nl, ifname)
    rtnl.set_link(nl, tap.index, mtu=mtu or None, mac=ns_mac, txqlen=txqueuelen or None)
    # IPv6: the kernel makes its link-local address only once the link's
    # operational state catches up (linkwatch, up to a second after "up"),
    # then runs DAD on it. We make it ourselves, nodad, like every other
    # address: nothing is tentative when the guest starts.
    v6 = template.v6 is not None and _start_ipv6(nl, tap.index)
    rtnl.set_link(nl, tap.index, up=True)
    mac = rtnl.link_by_name(nl, ifname).mac or b""
    if v6 and len(mac) == 6:
        try:
            _add_addrs(nl, tap.index, (link_local_of(mac),))
        except OSError as e:
            if e.errno != errno.EACCES:  # disable_ipv6 in the namespace
                raise
            v6 = False
    families = [f for f in (template.v4, template.v6 if v6 else None) if f is not None]
    for fam in families:
        _add_addrs(nl, tap.index, fam.addrs)
    for fam in families:
        _add_routes(nl, tap.index, fam, replace=False)
    return Configured(mac, v6)


def _remove(nl: socket.socket, index: int, old: FamilyTemplate, new: FamilyTemplate | None) -> None:
    keep_routes = set(new.routes) if new is not None else set()
    keep_addrs = set(new.addrs) if new is not None else set()
    for route in old.routes:
        if route not in keep_routes:
            try:
                rtnl.del_route(nl, route.dst, oif=index, gateway=route.gateway,
                               metric=route.metric)
            except OSError as e:
                # Gone already: the kernel drops routes with their address.
                if e.errno not in (errno.ESRCH, errno.ENOENT):
                    raise
    for iface in old.addrs:
        if iface not in keep_addrs:
            try:
                rtnl.del_addr(nl, index, iface)
            except OSError as e:
                if e.errno not in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                    raise


def apply_change(nl: socket.socket, ifname: str, old: HostTemplate, new: HostTemplate) -> None:
    """Move the guest's copy from `old` to `new`: remove what went, add what came.

    Every route of `new` is (re)installed with NLM_F_REPLACE: a kept route
    the kernel dropped with an address comes back, and a changed onlink
    need is applied. The interface keeps its name. Raises OSError.
    """
    index = rtnl.link_by_name(nl, ifname).index
    pairs = [(old.v4, new.v4), (old.v6, new.v6)]
    for before, after in pairs:
        if before is not None:
            _remove(nl, index, before, after)
    for before, after in pairs:
        if after is not None:
            added = tuple(a for a in after.addrs if before is None or a not in before.addrs)
            _add_addrs(nl, index, added)
    for _before, after in pairs:
        if after is not None:
            _add_routes(nl, index, after, replace=True)
