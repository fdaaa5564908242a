"""slirpy.control.sharednet: where pasta's mapped addresses lead, per template."""

from __future__ import annotations

from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    ip_address,
)

from slirpy.control.sharednet import (
    LOOPBACK,
    SLOTS,
    AddrMap,
    address_maps,
    dhcp_settings,
    guest_addresses,
    peer_substitutes,
)
from slirpy.host.template import FamilyTemplate, HostTemplate, Route
from slirpy.options import SharedAddressing

HOST4 = IPv4Address("198.51.100.2")
HOST6 = IPv6Address("2001:db8:1::2")
GW4 = IPv4Address("198.51.100.1")
GW6 = IPv6Address("2001:db8:1::1")
PODMAN = SharedAddressing(
    config_net=True,
    dns_forward=(ip_address("169.254.1.1"),),
    map_guest_addr=(ip_address("169.254.1.2"),),
    no_map_gw=True,
)


def _online() -> HostTemplate:
    v4 = FamilyTemplate("eth0", (IPv4Interface(f"{HOST4}/24"),),
                        (Route(IPv4Network("0.0.0.0/0"), GW4, 0),), GW4, False)
    v6 = FamilyTemplate("eth0", (IPv6Interface(f"{HOST6}/64"),), (), GW6, False)
    return HostTemplate(v4, v6, "eth0", HOST4, HOST6)


def _offline() -> HostTemplate:
    local4 = IPv4Address("169.254.2.1")
    v4 = FamilyTemplate(None, (IPv4Interface(f"{local4}/16"),), (), IPv4Address("169.254.2.2"),
                        True)
    return HostTemplate(v4, None, "tap0", local4, None)


def _by_slot(maps: list[AddrMap]) -> dict[tuple[str, int], AddrMap]:
    slot_of = {v: k for k, v in SLOTS.items()}
    return {slot_of[m.slot]: m for m in maps}


def test_podman_defaults_online() -> None:
    maps = _by_slot(address_maps(PODMAN, _online(), dns_port=40053))
    assert len(maps) == 8
    dns = maps[("dns", 4)]
    assert (dns.match, dns.target, dns.dns_only, dns.target_port) == (
        IPv4Address("169.254.1.1"), LOOPBACK[4], True, 40053)
    # host.containers.internal (169.254.1.2) reaches the host's own address.
    guest = maps[("guest", 4)]
    assert (guest.match, guest.target) == (IPv4Address("169.254.1.2"), HOST4)
    # --no-map-gw: the gateway is the real gateway, no slot for it.
    assert maps[("gateway", 4)].target is None
    assert maps[("gateway", 6)].target is None
    assert maps[("loopback", 4)].target is None
    assert maps[("dns", 6)].target is None


def test_gateway_maps_to_loopback_without_no_map_gw() -> None:
    shared = SharedAddressing(config_net=True)
    maps = _by_slot(address_maps(shared, _online()))
    assert (maps[("gateway", 4)].match, maps[("gateway", 4)].target) == (GW4, LOOPBACK[4])
    assert (maps[("gateway", 6)].match, maps[("gateway", 6)].target) == (GW6, LOOPBACK[6])


def test_no_dns_forwarder_port_means_no_dns_slot() -> None:
    maps = _by_slot(address_maps(PODMAN, _online(), dns_port=0))
    assert maps[("dns", 4)].target is None


def test_opt_in_guest_addr_reaches_loopback() -> None:
    shared = SharedAddressing(map_guest_addr=(ip_address("169.254.1.2"),),
                              guest_addr_reaches_loopback=True)
    maps = _by_slot(address_maps(shared, _online()))
    assert maps[("guest", 4)].target == LOOPBACK[4]


def test_local_mode_guest_addr_reaches_loopback() -> None:
    maps = _by_slot(address_maps(PODMAN, _offline(), dns_port=53000))
    assert maps[("guest", 4)].target == LOOPBACK[4]


def test_map_host_loopback_explicit() -> None:
    shared = SharedAddressing(no_map_gw=True,
                              map_host_loopback=(ip_address("169.254.1.3"),))
    maps = _by_slot(address_maps(shared, _online()))
    assert (maps[("loopback", 4)].match, maps[("loopback", 4)].target) == (
        IPv4Address("169.254.1.3"), LOOPBACK[4])


def test_guest_addresses_and_peer_substitutes() -> None:
    assert guest_addresses(_online()) == (HOST4, HOST6)
    assert guest_addresses(_offline()) == (IPv4Address("169.254.2.1"), None)
    # Loopback clients on the TAP path look like host.containers.internal...
    assert peer_substitutes(PODMAN, _online()) == (IPv4Address("169.254.1.2"), GW6)
    # ...or like the gateway when there is no such address.
    assert peer_substitutes(SharedAddressing(), _online()) == (GW4, GW6)


def test_dhcp_offers_the_hosts_address_via_its_gateway() -> None:
    got = dhcp_settings(PODMAN, _online())
    assert got is not None
    assert (got.pool_start, got.pool_end, got.router, got.server_ip) == (HOST4, HOST4, GW4, GW4)
    assert str(got.network) == "198.51.100.0/24"
    assert got.dns is None  # pasta advertises -D servers only with --dhcp-dns
    with_dns = SharedAddressing(dhcp_dns=True, dns_servers=(ip_address("203.0.113.53"),))
    assert dhcp_settings(with_dns, _online()).dns == IPv4Address("203.0.113.53")  # type: ignore[union-attr]


def test_no_dhcp_when_disabled_or_not_expressible() -> None:
    assert dhcp_settings(SharedAddressing(no_dhcp=True), _online()) is None
    # -a outside the gateway's network: DHCP has no way to say "on-link".
    v4 = FamilyTemplate("eth0", (IPv4Interface("10.13.2.15/24"),), (), GW4, False)
    odd = HostTemplate(v4, None, "eth0", IPv4Address("10.13.2.15"), None)
    assert dhcp_settings(PODMAN, odd) is None
