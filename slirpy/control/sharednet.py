"""pasta's shared-address model, between the host's template and the engine.

This module owns the decisions that follow from `SharedAddressing` and the
host's template interface (slirpy.host.template): which address the guest
owns per family, where each mapped address leads (`--dns-forward` to the DNS
forwarder, `--map-guest-addr` to the host's own address — or, opt-in, its
loopback — `--map-host-loopback` and the gateway without `--no-map-gw` to the
host's loopback), what a loopback client looks like to the guest on the TAP
path, and following the host: when the template changes, the namespace's
copy and the mappings move with it.

The decisions are pure functions of their inputs (`address_maps`,
`guest_addresses`, `peer_substitutes`); the daemon does the I/O (the
namespace's netlink socket, the engine's `set_addr_map`). It must not read
the host's configuration itself (slirpy.host.template does) nor parse
options (slirpy.frontends.pasta does).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address
from typing import TYPE_CHECKING

from slirpy.options import SharedAddressing

if TYPE_CHECKING:
    from slirpy.host.template import HostTemplate

__all__ = ["AddrMap", "DhcpSettings", "address_maps", "dhcp_settings", "guest_addresses",
           "peer_substitutes"]

Addr = IPv4Address | IPv6Address
LOOPBACK = {4: IPv4Address("127.0.0.1"), 6: IPv6Address("::1")}
# Slots of the engine's address-map table (SL_MAX_ADDR_MAPS is 8): one per
# purpose and family, so that a change rewrites exactly one slot.
SLOTS = {
    ("dns", 4): 0, ("dns", 6): 1,
    ("guest", 4): 2, ("guest", 6): 3,
    ("loopback", 4): 4, ("loopback", 6): 5,
    ("gateway", 4): 6, ("gateway", 6): 7,
}


@dataclass(frozen=True)
class AddrMap:
    """One entry of the engine's address-map table; `target` None = slot unused."""

    slot: int
    family: int
    match: Addr | None
    target: Addr | None
    dns_only: bool = False
    target_port: int = 0


def guest_addresses(template: HostTemplate) -> tuple[IPv4Address | None, IPv6Address | None]:
    """The address the guest owns per family (the host's, or -a's; None: none)."""
    a4 = template.address4
    a6 = template.address6
    return (a4 if isinstance(a4, IPv4Address) else None,
            a6 if isinstance(a6, IPv6Address) else None)


def _gateway(template: HostTemplate, family: int) -> Addr | None:
    fam = template.v4 if family == 4 else template.v6
    return None if fam is None else fam.gateway


def address_maps(shared: SharedAddressing, template: HostTemplate,
                 dns_port: int = 0) -> list[AddrMap]:
    """Every slot of the address-map table for this template."""
    out: list[AddrMap] = []
    own = dict(zip((4, 6), guest_addresses(template), strict=True))

    def put(purpose: str, family: int, match: Addr | None, target: Addr | None,
            **kw: object) -> None:
        slot = SLOTS[(purpose, family)]
        if match is None or target is None:
            out.append(AddrMap(slot, family, None, None))
        else:
            out.append(AddrMap(slot, family, match, target, **kw))  # type: ignore[arg-type]

    for fam in (4, 6):
        dns = next((a for a in shared.dns_forward if a.version == fam), None)
        # The forwarder listens on 127.0.0.1 only: an IPv6 --dns-forward
        # address has no target (its queries are refused).
        put("dns", fam, dns, LOOPBACK[4] if fam == 4 and dns_port else None,
            dns_only=True, target_port=dns_port)
        guest = next((a for a in shared.map_guest_addr if a.version == fam), None)
        ftpl = template.v4 if fam == 4 else template.v6
        # Local mode (offline): the guest's address is not the host's, so the
        # host is only reachable on its loopback.
        local = ftpl is None or ftpl.local_mode or own[fam] is None
        target = LOOPBACK[fam] if shared.guest_addr_reaches_loopback or local else own[fam]
        put("guest", fam, guest, target)
        lo = next((a for a in shared.map_host_loopback if a.version == fam), None)
        put("loopback", fam, lo, LOOPBACK[fam])
        gw = None if shared.no_map_gw else _gateway(template, fam)
        put("gateway", fam, gw, LOOPBACK[fam])
    return out


def peer_substitutes(shared: SharedAddressing,
                     template: HostTemplate) -> tuple[IPv4Address | None, IPv6Address | None]:
    """How a client the guest cannot be shown (loopback, or the guest's own
    address) appears on the TAP path: the --map-guest-addr address (which
    leads back to the host), else the gateway."""
    out: list[Addr | None] = []
    for fam in (4, 6):
        sub = next((a for a in shared.map_guest_addr if a.version == fam), None)
        out.append(sub if sub is not None else _gateway(template, fam))
    s4, s6 = out
    return (s4 if isinstance(s4, IPv4Address) else None,
            s6 if isinstance(s6, IPv6Address) else None)


@dataclass(frozen=True)
class DhcpSettings:
    """What slirpy's DHCP server hands out in pasta's model (its keywords)."""

    server_ip: IPv4Address
    network: IPv4Network
    router: IPv4Address
    dns: IPv4Address | None
    pool_start: IPv4Address
    pool_end: IPv4Address


def dhcp_settings(shared: SharedAddressing, template: HostTemplate) -> DhcpSettings | None:
    """DHCP as pasta answers it: the guest's (= the host's) address, its
    prefix and the gateway; None when there is nothing sound to offer
    (--no-dhcp, no IPv4, or a gateway outside the address's network, which
    DHCP cannot express)."""
    fam = template.v4
    own = template.address4
    if shared.no_dhcp or fam is None or own is None or fam.gateway is None:
        return None
    iface = next((a for a in fam.addrs if isinstance(a, IPv4Interface) and a.ip == own), None)
    if iface is None or iface.network.prefixlen > 30:
        return None
    gateway = fam.gateway
    if not isinstance(gateway, IPv4Address) or gateway not in iface.network or gateway == own:
        return None
    dns = None
    if shared.dhcp_dns:
        dns = next((a for a in shared.dns_servers if isinstance(a, IPv4Address)), None)
    if dns == own:
        dns = None  # the guest's own address is never its resolver
    return DhcpSettings(gateway, iface.network, gateway, dns, own, own)
