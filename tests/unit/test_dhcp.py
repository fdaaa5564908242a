"""Tests for slirpy.services.dhcp: the sans-IO DHCPv4 server core.

Requests are built and replies parsed with scapy, an implementation independent
of the one under test, so that both directions are checked against a second
reading of RFC 2131/2132.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import BOOTP, DHCP

from slirpy.services.dhcp import DECLINE_HOLD_SECONDS, OFFER_HOLD_SECONDS, DhcpReply, DhcpServer

BCAST_IP = IPv4Address("255.255.255.255")
BCAST_MAC = b"\xff" * 6
GW = IPv4Address("10.0.2.2")
DNS = IPv4Address("10.0.2.3")
FIRST = IPv4Address("10.0.2.15")
LAST = IPv4Address("10.0.2.30")
DAY = 86400


def make_server(
    cidr: str = "10.0.2.0/24",
    *,
    dns: bool = True,
    mtu: int | None = None,
    lease_seconds: int = DAY,
) -> DhcpServer:
    net = IPv4Network(cidr)
    base = net.network_address
    return DhcpServer(
        server_ip=base + 2,
        network=net,
        router=base + 2,
        dns=base + 3 if dns else None,
        pool_start=base + 15,
        pool_end=base + 30,
        mtu=mtu,
        lease_seconds=lease_seconds,
    )


def mac(n: int) -> bytes:
    return bytes([0x52, 0x54, 0x00, 0x12, n >> 8, n & 0xFF])


def msg(
    kind: str,
    hw: bytes,
    *,
    xid: int = 0x1234,
    flags: int = 0,
    ciaddr: str | IPv4Address = "0.0.0.0",
    requested: str | IPv4Address | None = None,
    server_id: str | IPv4Address | None = None,
    giaddr: str = "0.0.0.0",
) -> bytes:
    options: list[Any] = [("message-type", kind)]
    if requested is not None:
        options.append(("requested_addr", str(requested)))
    if server_id is not None:
        options.append(("server_id", str(server_id)))
    options.append("end")
    pkt = BOOTP(chaddr=hw, xid=xid, flags=flags, ciaddr=str(ciaddr), giaddr=giaddr) / DHCP(
        options=options
    )
    return bytes(pkt)


def parse(reply: DhcpReply) -> tuple[Any, dict[str, Any]]:
    pkt = BOOTP(reply.payload)
    opts = {o[0]: o[1] for o in pkt[DHCP].options if isinstance(o, tuple)}
    return pkt, opts


def option_codes(payload: bytes) -> list[int]:
    """The option codes of a reply, in order, up to and including 255."""
    codes, i = [], 240
    while i < len(payload):
        code = payload[i]
        codes.append(code)
        if code == 255:
            break
        i += 2 + payload[i + 1]
    return codes


def dora(server: DhcpServer, hw: bytes, now: float = 0.0) -> IPv4Address:
    offer = server.handle(msg("discover", hw), hw, now)
    assert offer is not None
    ip = IPv4Address(parse(offer)[0].yiaddr)
    ack = server.handle(msg("request", hw, requested=ip, server_id=GW), hw, now)
    assert ack is not None
    pkt, opts = parse(ack)
    assert opts["message-type"] == 5
    assert IPv4Address(pkt.yiaddr) == ip
    return ip


# --------------------------------------------------------------------- DORA


def test_full_dora_default_network() -> None:
    server = make_server()
    hw = mac(1)

    offer = server.handle(msg("discover", hw, xid=0xDEADBEEF), hw, 100.0)
    assert offer is not None
    assert offer.dst_ip == BCAST_IP
    assert offer.dst_mac == BCAST_MAC
    pkt, opts = parse(offer)
    assert pkt.op == 2
    assert pkt.xid == 0xDEADBEEF
    assert pkt.chaddr[:6] == hw
    assert pkt.yiaddr == "10.0.2.15"
    assert pkt.ciaddr == "0.0.0.0"
    assert pkt.giaddr == "0.0.0.0"
    assert opts["message-type"] == 2
    assert opts["server_id"] == "10.0.2.2"
    assert opts["lease_time"] == 86400
    assert opts["renewal_time"] == 43200
    assert opts["rebinding_time"] == 75600
    assert opts["subnet_mask"] == "255.255.255.0"
    assert opts["router"] == "10.0.2.2"
    assert opts["name_server"] == "10.0.2.3"
    assert "interface-mtu" not in opts
    assert option_codes(offer.payload) == [53, 54, 51, 58, 59, 1, 3, 6, 255]
    assert len(offer.payload) >= 300
    # An offer is only a reservation, not a lease.
    assert dict(server.leases) == {}

    req = msg("request", hw, xid=0xDEADBEEF, requested="10.0.2.15", server_id="10.0.2.2")
    ack = server.handle(req, hw, 101.0)
    assert ack is not None
    assert ack.dst_ip == BCAST_IP
    assert ack.dst_mac == BCAST_MAC
    pkt, opts = parse(ack)
    assert pkt.xid == 0xDEADBEEF
    assert pkt.yiaddr == "10.0.2.15"
    assert opts["message-type"] == 5
    assert opts["server_id"] == "10.0.2.2"
    assert opts["lease_time"] == 86400
    assert opts["subnet_mask"] == "255.255.255.0"
    assert opts["router"] == "10.0.2.2"
    assert opts["name_server"] == "10.0.2.3"

    assert dict(server.leases) == {hw: (FIRST, 101.0 + DAY)}
    assert server.stats["received"] == 2
    assert server.stats["offers"] == 1
    assert server.stats["acks"] == 1
    assert server.stats["naks"] == 0
    assert server.stats["dropped_malformed"] == 0


def test_cidr_slash25() -> None:
    server = make_server("10.0.135.128/25")
    hw = mac(1)
    offer = server.handle(msg("discover", hw), hw, 0.0)
    assert offer is not None
    pkt, opts = parse(offer)
    assert pkt.yiaddr == "10.0.135.143"
    assert opts["subnet_mask"] == "255.255.255.128"
    assert opts["router"] == "10.0.135.130"
    assert opts["name_server"] == "10.0.135.131"
    assert opts["server_id"] == "10.0.135.130"
    ack = server.handle(
        msg("request", hw, requested="10.0.135.143", server_id="10.0.135.130"), hw, 0.0
    )
    assert ack is not None
    assert parse(ack)[1]["message-type"] == 5


def test_no_dns_option_when_dns_is_none() -> None:
    server = make_server(dns=False)
    hw = mac(1)
    offer = server.handle(msg("discover", hw), hw, 0.0)
    assert offer is not None
    _, opts = parse(offer)
    assert "name_server" not in opts
    assert opts["router"] == "10.0.2.2"
    assert 6 not in option_codes(offer.payload)


def test_mtu_option_when_given() -> None:
    server = make_server(mtu=65520)
    hw = mac(1)
    offer = server.handle(msg("discover", hw), hw, 0.0)
    assert offer is not None
    assert parse(offer)[1]["interface-mtu"] == 65520
    assert option_codes(offer.payload) == [53, 54, 51, 58, 59, 1, 3, 6, 26, 255]


def test_custom_lease_time_sets_t1_t2() -> None:
    server = make_server(lease_seconds=3600)
    hw = mac(1)
    offer = server.handle(msg("discover", hw), hw, 0.0)
    assert offer is not None
    _, opts = parse(offer)
    assert (opts["lease_time"], opts["renewal_time"], opts["rebinding_time"]) == (3600, 1800, 3150)


# ------------------------------------------------------------ allocation


def test_rediscover_same_mac_same_address() -> None:
    server = make_server()
    hw = mac(1)
    first = server.handle(msg("discover", hw), hw, 0.0)
    second = server.handle(msg("discover", hw), hw, 1.0)
    assert first is not None and second is not None
    assert parse(first)[0].yiaddr == parse(second)[0].yiaddr == "10.0.2.15"

    ip = dora(server, hw, 2.0)
    assert ip == FIRST
    # A bound client that DISCOVERs again is offered its address and keeps its lease.
    again = server.handle(msg("discover", hw), hw, 3.0)
    assert again is not None
    assert parse(again)[0].yiaddr == "10.0.2.15"
    assert server.leases[hw] == (FIRST, 2.0 + DAY)


def test_two_macs_get_different_addresses() -> None:
    server = make_server()
    a = dora(server, mac(1))
    b = dora(server, mac(2))
    assert a == FIRST
    assert b == IPv4Address("10.0.2.16")
    assert server.leases[mac(1)][0] != server.leases[mac(2)][0]


def test_discover_prefers_requested_address() -> None:
    server = make_server()
    hw = mac(1)
    offer = server.handle(msg("discover", hw, requested="10.0.2.25"), hw, 0.0)
    assert offer is not None
    assert parse(offer)[0].yiaddr == "10.0.2.25"
    # Not in the pool: ignored, a pool address is offered instead.
    hw2 = mac(2)
    offer = server.handle(msg("discover", hw2, requested="10.0.2.100"), hw2, 0.0)
    assert offer is not None
    assert parse(offer)[0].yiaddr == "10.0.2.15"
    # Held by someone else: not offered.
    hw3 = mac(3)
    offer = server.handle(msg("discover", hw3, requested="10.0.2.25"), hw3, 0.0)
    assert offer is not None
    assert parse(offer)[0].yiaddr == "10.0.2.16"


def test_pool_exhausted_after_16_clients() -> None:
    server = make_server()
    ips = [dora(server, mac(n)) for n in range(16)]
    assert ips == [IPv4Address(int(FIRST) + n) for n in range(16)]
    assert len(server.leases) == 16

    late = mac(99)
    assert server.handle(msg("discover", late), late, 10.0) is None
    assert server.stats["pool_exhausted"] == 1
    assert server.stats["offers"] == 16
    # Existing clients are unaffected.
    again = server.handle(msg("discover", mac(3)), mac(3), 10.0)
    assert again is not None
    assert parse(again)[0].yiaddr == "10.0.2.18"


def test_offers_hold_the_pool_only_briefly() -> None:
    server = make_server()
    for n in range(16):
        assert server.handle(msg("discover", mac(n)), mac(n), 0.0) is not None
    late = mac(99)
    assert server.handle(msg("discover", late), late, OFFER_HOLD_SECONDS - 1) is None
    offer = server.handle(msg("discover", late), late, OFFER_HOLD_SECONDS + 1)
    assert offer is not None
    assert IPv4Address(parse(offer)[0].yiaddr) in {IPv4Address(int(FIRST) + n) for n in range(16)}


def test_lease_expiry_lets_address_be_reused() -> None:
    server = make_server()
    for n in range(16):
        dora(server, mac(n), 0.0)
    late = mac(99)
    assert server.handle(msg("discover", late), late, DAY - 1) is None

    offer = server.handle(msg("discover", late), late, DAY + 1)
    assert offer is not None
    ip = IPv4Address(parse(offer)[0].yiaddr)
    assert ip == FIRST
    ack = server.handle(msg("request", late, requested=ip, server_id=GW), late, DAY + 2)
    assert ack is not None and parse(ack)[1]["message-type"] == 5
    assert server.leases[late] == (FIRST, DAY + 2 + DAY)
    assert mac(0) not in server.leases
    # The previous owner, renewing too late, is refused.
    renew = msg("request", mac(0), ciaddr=FIRST)
    nak = server.handle(renew, mac(0), DAY + 3)
    assert nak is not None and parse(nak)[1]["message-type"] == 6


def test_expired_lease_is_given_back_to_its_owner_if_free() -> None:
    server = make_server(lease_seconds=100)
    hw = mac(1)
    dora(server, hw, 0.0)
    # Long after expiry, nobody took the address: same client, same address.
    assert dora(server, hw, 10_000.0) == FIRST


# ---------------------------------------------------------------- REQUEST


def test_request_for_address_taken_by_other_mac_is_naked() -> None:
    server = make_server()
    dora(server, mac(1))
    thief = mac(2)
    # INIT-REBOOT style (no server id) for mac(1)'s address.
    nak = server.handle(msg("request", thief, requested=FIRST, xid=77), thief, 1.0)
    assert nak is not None
    assert nak.dst_ip == BCAST_IP and nak.dst_mac == BCAST_MAC
    pkt, opts = parse(nak)
    assert opts["message-type"] == 6
    assert opts["server_id"] == "10.0.2.2"
    assert pkt.xid == 77
    assert pkt.yiaddr == "0.0.0.0"
    assert "lease_time" not in opts
    assert server.stats["naks"] == 1
    assert server.leases[mac(1)] == (FIRST, float(DAY))
    assert thief not in server.leases
    # SELECTING style (our server id) for the same address: also NAK.
    nak = server.handle(msg("request", thief, requested=FIRST, server_id=GW), thief, 1.0)
    assert nak is not None and parse(nak)[1]["message-type"] == 6


@pytest.mark.parametrize("addr", ["10.0.2.100", "10.0.2.2", "10.0.2.31", "192.168.1.50"])
def test_request_outside_pool_is_naked(addr: str) -> None:
    server = make_server()
    hw = mac(1)
    nak = server.handle(msg("request", hw, requested=addr), hw, 0.0)
    assert nak is not None
    assert parse(nak)[1]["message-type"] == 6
    # RENEWING with that ciaddr: NAK too, and broadcast (RFC 2131 4.1, giaddr 0).
    nak = server.handle(msg("request", hw, ciaddr=addr), hw, 0.0)
    assert nak is not None
    assert nak.dst_ip == BCAST_IP
    assert parse(nak)[1]["message-type"] == 6
    assert dict(server.leases) == {}


def test_request_with_foreign_server_id_is_ignored() -> None:
    server = make_server()
    hw = mac(1)
    offer = server.handle(msg("discover", hw), hw, 0.0)
    assert offer is not None
    req = msg("request", hw, requested="10.0.2.15", server_id="10.0.2.99")
    assert server.handle(req, hw, 1.0) is None
    assert server.stats["dropped_foreign"] == 1
    assert server.stats["naks"] == 0
    assert dict(server.leases) == {}
    # The client chose another server, so its reservation is released: a full
    # pool of other clients can use it right away.
    got = {dora(server, mac(n), 2.0) for n in range(100, 116)}
    assert FIRST in got and len(got) == 16


def test_init_reboot_request_is_acked_broadcast() -> None:
    server = make_server()
    hw = mac(1)
    ack = server.handle(msg("request", hw, requested="10.0.2.20"), hw, 5.0)
    assert ack is not None
    assert ack.dst_ip == BCAST_IP
    pkt, opts = parse(ack)
    assert opts["message-type"] == 5
    assert pkt.yiaddr == "10.0.2.20"
    assert server.leases[hw] == (IPv4Address("10.0.2.20"), 5.0 + DAY)


def test_renewing_is_acked_unicast_and_extends_the_lease() -> None:
    server = make_server()
    hw = mac(1)
    dora(server, hw, 0.0)
    ack = server.handle(msg("request", hw, ciaddr=FIRST), hw, DAY / 2)
    assert ack is not None
    assert ack.dst_ip == FIRST
    assert ack.dst_mac == hw
    pkt, opts = parse(ack)
    assert opts["message-type"] == 5
    assert pkt.ciaddr == "10.0.2.15"
    assert pkt.yiaddr == "10.0.2.15"
    assert server.leases[hw] == (FIRST, DAY / 2 + DAY)


def test_rebinding_after_server_restart_adopts_the_address() -> None:
    server = make_server()  # a fresh server knows nothing of the lease
    hw = mac(1)
    ack = server.handle(msg("request", hw, ciaddr="10.0.2.22", flags=0x8000), hw, 0.0)
    assert ack is not None
    assert parse(ack)[1]["message-type"] == 5
    assert server.leases[hw][0] == IPv4Address("10.0.2.22")


def test_broadcast_flag_is_echoed() -> None:
    server = make_server()
    hw = mac(1)
    offer = server.handle(msg("discover", hw, flags=0x8000), hw, 0.0)
    assert offer is not None
    assert parse(offer)[0].flags == 0x8000
    assert offer.dst_ip == BCAST_IP
    # Reserved flag bits are not echoed.
    offer = server.handle(msg("discover", hw, flags=0x7FFF), hw, 0.0)
    assert offer is not None
    assert parse(offer)[0].flags == 0


def test_request_without_address_is_dropped() -> None:
    server = make_server()
    hw = mac(1)
    assert server.handle(msg("request", hw), hw, 0.0) is None
    assert server.stats["dropped_malformed"] == 1


# ------------------------------------------------- RELEASE, DECLINE, INFORM


def test_release_frees_the_lease() -> None:
    server = make_server()
    hw = mac(1)
    dora(server, hw)
    assert server.handle(msg("release", hw, ciaddr=FIRST, server_id=GW), hw, 1.0) is None
    assert server.stats["releases"] == 1
    assert hw not in server.leases
    # 16 other clients now fit in the pool, one of them on the released address.
    got = {dora(server, mac(n), 2.0) for n in range(100, 116)}
    assert len(got) == 16 and FIRST in got


def test_released_client_gets_its_address_back_when_free() -> None:
    server = make_server()
    hw = mac(1)
    dora(server, hw)
    dora(server, mac(2))
    server.handle(msg("release", hw, ciaddr=FIRST, server_id=GW), hw, 1.0)
    dora(server, mac(3), 2.0)  # prefers a never-used address
    assert dora(server, hw, 3.0) == FIRST


def test_release_that_does_not_match_is_ignored() -> None:
    server = make_server()
    hw = mac(1)
    dora(server, hw)
    # Foreign server id: not ours to act on.
    server.handle(msg("release", hw, ciaddr=FIRST, server_id="10.0.2.99"), hw, 1.0)
    assert server.stats["dropped_foreign"] == 1
    # Another client cannot release mac(1)'s address.
    server.handle(msg("release", mac(2), ciaddr=FIRST, server_id=GW), mac(2), 1.0)
    # Wrong ciaddr for this client.
    server.handle(msg("release", hw, ciaddr="10.0.2.16", server_id=GW), hw, 1.0)
    assert server.leases[hw] == (FIRST, float(DAY))


def test_decline_takes_the_address_out_of_the_pool_for_a_while() -> None:
    server = make_server()
    hw = mac(1)
    dora(server, hw)
    assert server.handle(msg("decline", hw, requested=FIRST, server_id=GW), hw, 1.0) is None
    assert server.stats["declines"] == 1
    assert hw not in server.leases
    # Nobody is offered the declined address, not even by asking for it.
    offer = server.handle(msg("discover", hw), hw, 2.0)
    assert offer is not None and parse(offer)[0].yiaddr == "10.0.2.16"
    other = mac(2)
    offer = server.handle(msg("discover", other, requested=FIRST), other, 2.0)
    assert offer is not None and parse(offer)[0].yiaddr == "10.0.2.17"
    nak = server.handle(msg("request", other, requested=FIRST), other, 3.0)
    assert nak is not None and parse(nak)[1]["message-type"] == 6
    # After the hold, it is back.
    later = mac(3)
    offer = server.handle(msg("discover", later), later, 1.0 + DECLINE_HOLD_SECONDS + 1)
    assert offer is not None and parse(offer)[0].yiaddr == "10.0.2.15"


def test_decline_of_someone_elses_address_is_ignored() -> None:
    server = make_server()
    dora(server, mac(1))
    server.handle(msg("decline", mac(2), requested=FIRST, server_id=GW), mac(2), 1.0)
    assert server.stats["declines"] == 0
    assert server.leases[mac(1)][0] == FIRST


def test_inform_gets_configuration_without_lease() -> None:
    server = make_server(mtu=1500)
    hw = mac(1)
    ack = server.handle(msg("inform", hw, ciaddr="10.0.2.100", xid=5), hw, 0.0)
    assert ack is not None
    assert ack.dst_ip == IPv4Address("10.0.2.100")
    assert ack.dst_mac == hw
    pkt, opts = parse(ack)
    assert pkt.xid == 5
    assert opts["message-type"] == 5
    assert pkt.yiaddr == "0.0.0.0"
    assert pkt.ciaddr == "10.0.2.100"
    assert opts["subnet_mask"] == "255.255.255.0"
    assert opts["router"] == "10.0.2.2"
    assert opts["name_server"] == "10.0.2.3"
    assert opts["interface-mtu"] == 1500
    assert opts["server_id"] == "10.0.2.2"
    for absent in ("lease_time", "renewal_time", "rebinding_time"):
        assert absent not in opts
    assert dict(server.leases) == {}
    assert server.stats["informs"] == 1
    assert server.stats["acks"] == 0


# -------------------------------------------------------------- malformed


def _valid_discover() -> bytearray:
    return bytearray(msg("discover", mac(1)))


def _set(offset: int, value: bytes) -> bytes:
    data = _valid_discover()
    data[offset : offset + len(value)] = value
    return bytes(data)


def _with_options(options: bytes, *, header: bytes | None = None) -> bytes:
    data = _valid_discover()[:240]
    if header is not None:
        data[: len(header)] = header
    return bytes(data) + options


MALFORMED = {
    "empty": b"",
    "short": bytes(_valid_discover()[:239]),
    "bootreply": _set(0, b"\x02"),
    "htype_not_ethernet": _set(1, b"\x06"),
    "hlen_16": _set(2, b"\x10"),
    "bad_cookie": _set(236, b"\x63\x82\x53\x64"),
    "multicast_chaddr": _set(28, b"\x01\x00\x5e\x00\x00\x01"),
    "zero_chaddr": _set(28, bytes(6)),
    "missing_53": _with_options(b"\x32\x04\x0a\x00\x02\x0f\xff"),
    "only_pad": _with_options(bytes(60)),
    "53_too_long": _with_options(b"\x35\x02\x01\x01\xff"),
    "53_empty": _with_options(b"\x35\x00\xff"),
    "53_twice_concatenated": _with_options(b"\x35\x01\x01\x35\x01\x01\xff"),
    "value_past_end": _with_options(b"\x35\x01\x01\x0c\x10abc"),
    "length_past_end": _with_options(b"\x35\x01\x01\x0c"),
    "requested_ip_3_bytes": _with_options(b"\x35\x01\x01\x32\x03\x0a\x00\x02\xff"),
    "server_id_5_bytes": _with_options(b"\x35\x01\x03\x36\x05\x0a\x00\x02\x02\x00\xff"),
    "overload_bad_value": _with_options(b"\x35\x01\x01\x34\x01\x04\xff"),
    "overload_too_long": _with_options(b"\x35\x01\x01\x34\x02\x01\x01\xff"),
    "overload_field_runs_past": _set(108, b"\x0c\xff")[:240] + b"\x35\x01\x01\x34\x01\x01\xff",
    "overload_inside_file": _set(108, b"\x34\x01\x03\xff")[:240] + b"\x35\x01\x01\x34\x01\x01\xff",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_is_dropped_and_counted(name: str) -> None:
    server = make_server()
    assert server.handle(MALFORMED[name], mac(1), 0.0) is None
    assert server.stats["dropped_malformed"] == 1
    assert server.stats["received"] == 1
    assert server.stats["offers"] == 0
    assert dict(server.leases) == {}


def test_bad_arguments_from_caller_never_raise() -> None:
    server = make_server()
    good = msg("discover", mac(1))
    assert server.handle(good, b"\x00" * 5, 0.0) is None
    assert server.handle("not bytes", mac(1), 0.0) is None  # type: ignore[arg-type]
    assert server.handle(42, mac(1), 0.0) is None  # type: ignore[arg-type]
    assert server.stats["dropped_malformed"] == 3


def test_relayed_request_is_dropped() -> None:
    server = make_server()
    hw = mac(1)
    assert server.handle(msg("discover", hw, giaddr="10.0.2.1"), hw, 0.0) is None
    assert server.stats["dropped_relayed"] == 1
    assert server.stats["dropped_malformed"] == 0


@pytest.mark.parametrize("kind", ["offer", "ack", "nak"])
def test_server_message_types_from_client_are_dropped(kind: str) -> None:
    server = make_server()
    hw = mac(1)
    assert server.handle(msg(kind, hw), hw, 0.0) is None
    assert server.stats["dropped_unexpected"] == 1


def test_accepted_oddities() -> None:
    server = make_server()
    hw = mac(1)
    # No end option, options stop exactly at the end of the datagram.
    reply = server.handle(_with_options(b"\x35\x01\x01"), hw, 0.0)
    assert reply is not None and parse(reply)[1]["message-type"] == 2
    # Pads before and after, unknown options skipped, trailing garbage after end.
    reply = server.handle(_with_options(b"\x00\x00\xfa\x02xy\x35\x01\x01\x00\xff\x99\x99"), hw, 0.0)
    assert reply is not None and parse(reply)[1]["message-type"] == 2
    # Option overload: message type carried in the 'file' field.
    data = bytearray(_with_options(b"\x34\x01\x01\xff"))
    data[108:112] = b"\x35\x01\x01\xff"
    reply = server.handle(bytes(data), hw, 0.0)
    assert reply is not None and parse(reply)[1]["message-type"] == 2
    # Overload of both fields: requested address in 'sname' (a fresh server, as
    # this chaddr already holds an offer above and would be given it again).
    server = make_server()
    data = bytearray(_with_options(b"\x34\x01\x03\xff"))
    data[108:111] = b"\x35\x01\x01"
    data[44:50] = b"\x32\x04\x0a\x00\x02\x1a"
    reply = server.handle(bytes(data), hw, 0.0)
    assert reply is not None and parse(reply)[0].yiaddr == "10.0.2.26"
    assert server.stats["dropped_malformed"] == 0


def test_bytearray_and_memoryview_accepted() -> None:
    server = make_server()
    data = msg("discover", mac(1))
    assert server.handle(bytearray(data), bytearray(mac(1)), 0.0) is not None
    assert server.handle(memoryview(data), mac(1), 0.0) is not None


# --------------------------------------------------------- configuration


def test_leases_view_is_read_only() -> None:
    server = make_server()
    dora(server, mac(1))
    with pytest.raises(TypeError):
        server.leases[mac(2)] = (FIRST, 0.0)  # type: ignore[index]


@pytest.mark.parametrize(
    "changes",
    [
        {"pool_start": IPv4Address("10.0.2.1")},  # contains the server
        {"pool_end": IPv4Address("10.0.3.5")},  # outside the network
        {"pool_start": IPv4Address("10.0.2.40")},  # start after end
        {"mtu": 10},
        {"lease_seconds": 0},
    ],
)
def test_bad_configuration_raises(changes: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {
        "server_ip": GW,
        "network": IPv4Network("10.0.2.0/24"),
        "router": GW,
        "dns": DNS,
        "pool_start": FIRST,
        "pool_end": LAST,
    }
    kwargs.update(changes)
    with pytest.raises(ValueError):
        DhcpServer(**kwargs)


# ---------------------------------------------------------------- property

POOL = {IPv4Address(int(FIRST) + n) for n in range(16)}


def assert_well_formed(reply: DhcpReply, request: bytes) -> None:
    data = reply.payload
    assert len(data) >= 300
    op, htype, hlen, hops, xid = struct.unpack_from("!BBBBI", data)
    assert (op, htype, hlen, hops) == (2, 1, 6, 0)
    assert data[4:8] == request[4:8]  # xid echoed
    assert data[28:34] == request[28:34]  # chaddr echoed
    assert data[236:240] == b"\x63\x82\x53\x63"
    pkt, opts = parse(reply)
    assert pkt.xid == xid
    assert opts["message-type"] in (2, 5, 6)
    assert opts["server_id"] == "10.0.2.2"
    yiaddr = IPv4Address(pkt.yiaddr)
    if opts["message-type"] == 6:
        assert yiaddr == IPv4Address(0)
    elif opts["message-type"] == 2 or "lease_time" in opts:
        assert yiaddr in POOL
    assert len(reply.dst_mac) == 6
    if reply.dst_ip == BCAST_IP:
        assert reply.dst_mac == BCAST_MAC
    else:
        assert reply.dst_ip == IPv4Address(pkt.ciaddr)
        assert reply.dst_mac == data[28:34]


def _seed_messages() -> list[bytes]:
    hw = mac(7)
    return [
        msg("discover", hw),
        msg("discover", hw, requested="10.0.2.20", flags=0x8000),
        msg("request", hw, requested=FIRST, server_id=GW),
        msg("request", hw, requested="10.0.2.16"),
        msg("request", hw, ciaddr="10.0.2.17"),
        msg("release", hw, ciaddr=FIRST, server_id=GW),
        msg("decline", hw, requested=FIRST, server_id=GW),
        msg("inform", hw, ciaddr="10.0.2.100"),
    ]


SEEDS = _seed_messages()
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(data=st.binary(max_size=700), src=st.binary(min_size=0, max_size=8))
def test_arbitrary_bytes_never_raise(data: bytes, src: bytes) -> None:
    server = make_server()
    reply = server.handle(data, src, 0.0)
    if reply is not None:
        assert_well_formed(reply, data)
    assert sum(server.stats[k] for k in server.stats if k.startswith("dropped")) <= 1
    assert len(server.leases) <= 1


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        action = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif action == "truncate":
            del data[pos:]
        elif action == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[pos : pos + draw(st.integers(1, 4))]
    # Mutations aimed at the options area, where most parsing happens.
    tail = draw(st.binary(max_size=40))
    if draw(st.booleans()) and len(data) >= 240:
        data[240:] = tail
    return bytes(data)


@FUZZ
@given(data=mutated())
def test_mutated_messages_never_raise(data: bytes) -> None:
    server = make_server()
    dora(server, mac(7), 0.0)  # so that renew/release/decline have state to hit
    before = server.stats["received"]
    reply = server.handle(data, mac(7), 1.0)
    assert server.stats["received"] == before + 1
    if reply is not None:
        assert_well_formed(reply, data)
    # Leases are keyed by chaddr: a mutation of chaddr is another client, and
    # its REQUEST (e.g. INIT-REBOOT for a free address) may bind one more.
    # One message never creates more than one lease.
    assert len(server.leases) <= 2
    if data[28:34] == mac(7):
        assert len(server.leases) <= 1


OPS = st.lists(
    st.tuples(
        st.sampled_from(["discover", "select", "reboot", "renew", "release", "decline", "inform"]),
        st.integers(0, 39),  # 40 clients for 16 addresses
        st.sampled_from([*sorted(POOL), IPv4Address("10.0.2.100")]),
        st.sampled_from([0.0, 1.0, 30.0, OFFER_HOLD_SECONDS, 3600.0, float(DAY)]),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_pool_invariants_hold_under_any_sequence(ops: list[Any]) -> None:
    server = make_server()
    now = 0.0
    for kind, client, addr, step in ops:
        now += step
        hw = mac(client)
        if kind == "discover":
            request = msg("discover", hw, requested=addr)
        elif kind == "select":
            request = msg("request", hw, requested=addr, server_id=GW)
        elif kind == "reboot":
            request = msg("request", hw, requested=addr)
        elif kind == "renew":
            request = msg("request", hw, ciaddr=addr)
        elif kind == "release":
            request = msg("release", hw, ciaddr=addr, server_id=GW)
        elif kind == "decline":
            request = msg("decline", hw, requested=addr, server_id=GW)
        else:
            request = msg("inform", hw, ciaddr=addr)
        reply = server.handle(request, hw, now)
        if reply is not None:
            assert_well_formed(reply, request)
            pkt, opts = parse(reply)
            if opts["message-type"] in (2, 5) and "lease_time" in opts:
                ip = IPv4Address(pkt.yiaddr)
                # Never offer or ack an address another client holds.
                for other, (held, expiry) in server.leases.items():
                    if other != hw and expiry > now:
                        assert held != ip
            if opts["message-type"] == 5 and "lease_time" in opts:
                assert server.leases[hw] == (IPv4Address(pkt.yiaddr), now + DAY)

        live = [ip for ip, expiry in server.leases.values() if expiry > now]
        assert len(live) == len(set(live))
        assert all(ip in POOL for ip, _ in server.leases.values())
        assert len(server.leases) <= 16
        # Memory stays bounded by the pool whatever the 40 clients do.
        assert len(server._bindings) <= server.pool_size
        assert len(server._declined) <= server.pool_size
    assert server.stats["dropped_malformed"] == 0
