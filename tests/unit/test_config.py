"""Unit tests for slirpy.config: the network model, parsers and frozen configs.

No I/O, no namespaces: everything here is pure computation.
"""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from slirpy.config import (
    ConfigError,
    NetworkModel,
    format_mac,
    is_valid_ifname,
    mac_for_ipv4,
    mac_for_ipv6,
    normalize_dns_upstream,
    parse_cidr,
    parse_dns_upstream,
    parse_fd,
    parse_mac,
    parse_mtu,
    parse_outbound_addr,
    parse_outbound_addr6,
    parse_prefix6,
)
from slirpy.frontends.run import parse_port_mapping
from slirpy.options import PortMapping


def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


# ------------------------------------------------------------------ NetworkModel


def test_network_defaults() -> None:
    n = NetworkModel()
    assert n.cidr == IPv4Network("10.0.2.0/24")
    assert n.mtu == 1500
    assert n.ipv6 is False
    assert n.prefix6 == IPv6Network("fd00::/64")
    assert n.host_loopback is True
    assert n.dns_enabled is True
    assert n.guest_mac is None


def test_default_derived_addresses() -> None:
    n = NetworkModel()
    assert n.gateway == IPv4Address("10.0.2.2")
    assert n.dns == IPv4Address("10.0.2.3")
    assert n.guest == IPv4Address("10.0.2.100")
    assert n.dhcp_start == IPv4Address("10.0.2.15")
    assert n.dhcp_end == IPv4Address("10.0.2.30")
    assert n.netmask == IPv4Address("255.255.255.0")
    assert n.prefixlen == 24
    assert n.broadcast == IPv4Address("10.0.2.255")
    assert n.gateway6 == IPv6Address("fd00::2")
    assert n.dns6 == IPv6Address("fd00::3")
    assert n.router_ll6 == IPv6Address("fe80::2")


def test_slash25_derived_addresses() -> None:
    n = NetworkModel(cidr=parse_cidr("10.0.135.128/25"))
    assert n.guest == IPv4Address("10.0.135.228")
    assert n.gateway == IPv4Address("10.0.135.130")
    assert n.dns == IPv4Address("10.0.135.131")
    assert n.dhcp_start == IPv4Address("10.0.135.143")
    assert n.dhcp_end == IPv4Address("10.0.135.158")
    assert n.netmask == IPv4Address("255.255.255.128")
    assert n.prefixlen == 25


def test_wide_network_derived_addresses() -> None:
    n = NetworkModel(cidr=parse_cidr("172.16.0.0/12"))
    assert n.gateway == IPv4Address("172.16.0.2")
    assert n.guest == IPv4Address("172.16.0.100")
    assert n.netmask == IPv4Address("255.240.0.0")


def test_custom_prefix6_derived_addresses() -> None:
    n = NetworkModel(ipv6=True, prefix6=parse_prefix6("fd12:3456:789a:1::/64"))
    assert n.gateway6 == IPv6Address("fd12:3456:789a:1::2")
    assert n.dns6 == IPv6Address("fd12:3456:789a:1::3")
    assert n.router_ll6 == IPv6Address("fe80::2")


def test_virtual_host_macs() -> None:
    n = NetworkModel()
    assert format_mac(n.gateway_mac) == "52:55:0a:00:02:02"
    assert format_mac(n.dns_mac) == "52:55:0a:00:02:03"
    assert n.gateway6_mac == bytes.fromhex("525600000002")
    assert n.dns6_mac == bytes.fromhex("525600000003")


def test_network_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        NetworkModel().mtu = 9000  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mtu": 67}, "MTU must be between 68 and 65521, got 67"),
        ({"mtu": 65522}, "MTU must be between 68 and 65521, got 65522"),
        (
            {"cidr": IPv4Network("10.0.2.0/26")},
            "CIDR prefix length must be between 1 and 25, got /26",
        ),
        ({"cidr": IPv4Network("0.0.0.0/0")}, "CIDR prefix length must be between 1 and 25, got /0"),
        (
            {"prefix6": IPv6Network("fd00::/48")},
            "IPv6 prefix must be a /64 (SLAAC needs it), got /48",
        ),
        (
            {"prefix6": IPv6Network("fe80::/64")},
            "IPv6 prefix must not be link-local or multicast, got fe80::/64",
        ),
        ({"guest_mac": bytes.fromhex("010203040506")}, "multicast addresses cannot be used"),
        ({"guest_mac": bytes(6)}, "the all-zero address cannot be used"),
        ({"guest_mac": b"\x02\x00"}, "must be 6 bytes"),
    ],
)
def test_network_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        NetworkModel(**kwargs)  # type: ignore[arg-type]
    assert message in one_line(err)


def test_network_type_errors() -> None:
    with pytest.raises(TypeError):
        NetworkModel(cidr="10.0.2.0/24")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        NetworkModel(mtu="1500")  # type: ignore[arg-type]


# ------------------------------------------------------------------------ MACs


def test_mac_for_ipv4() -> None:
    assert mac_for_ipv4(IPv4Address("10.0.2.2")) == bytes.fromhex("52550a000202")


def test_mac_for_ipv6() -> None:
    assert mac_for_ipv6(IPv6Address("fd00::2")) == bytes.fromhex("525600000002")
    assert mac_for_ipv6(IPv6Address("fd00::1234:5678:9abc")) == bytes.fromhex("525656789abc")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("02:42:ac:11:00:02", "0242ac110002"),
        ("02:42:AC:11:0:2", "0242ac110002"),
        ("52:54:00:12:34:56", "525400123456"),
    ],
)
def test_parse_mac(text: str, expected: str) -> None:
    assert parse_mac(text) == bytes.fromhex(expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid MAC address '': expected six hex octets like 02:42:ac:11:00:02"),
        ("02:42:ac:11:00", "invalid MAC address '02:42:ac:11:00': expected six hex octets"),
        ("02:42:ac:11:00:02:03", "expected six hex octets"),
        ("02:42:ac:11:00:zz", "expected six hex octets"),
        ("0242.ac11.0002", "expected six hex octets"),
        ("02:42:ac:11:00:100", "expected six hex octets"),
        (
            "01:00:5e:00:00:01",
            "invalid MAC address '01:00:5e:00:00:01': multicast addresses cannot be used",
        ),
        ("ff:ff:ff:ff:ff:ff", "multicast addresses cannot be used"),
        (
            "00:00:00:00:00:00",
            "invalid MAC address '00:00:00:00:00:00': the all-zero address cannot be used",
        ),
    ],
)
def test_parse_mac_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_mac(text)
    assert message in one_line(err)


# ---------------------------------------------------------------------- parsers


@pytest.mark.parametrize("text", ["68", "1500", "65520", "65521"])
def test_parse_mtu(text: str) -> None:
    assert parse_mtu(text) == int(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("70000", "MTU must be between 68 and 65521, got 70000"),
        ("67", "MTU must be between 68 and 65521, got 67"),
        ("0", "MTU must be between 68 and 65521, got 0"),
        ("-1", "MTU must be between 68 and 65521, got -1"),
        ("abc", "MTU must be an integer, got 'abc'"),
        ("", "MTU must be an integer, got ''"),
        ("1500.0", "MTU must be an integer, got '1500.0'"),
    ],
)
def test_parse_mtu_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_mtu(text)
    assert one_line(err) == message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.2.0/24", "10.0.2.0/24"),
        ("10.0.135.128/25", "10.0.135.128/25"),
        ("192.168.0.0/16", "192.168.0.0/16"),
        ("10.0.0.0/255.255.255.0", "10.0.0.0/24"),
        ("128.0.0.0/1", "128.0.0.0/1"),
    ],
)
def test_parse_cidr(text: str, expected: str) -> None:
    assert parse_cidr(text) == IPv4Network(expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "10.0.2.1/24",
            "CIDR '10.0.2.1/24' is not a network address (host bits are set); "
            "did you mean 10.0.2.0/24?",
        ),
        ("10.0.2.0", "CIDR must be ADDRESS/PREFIXLEN like 10.0.2.0/24, got '10.0.2.0'"),
        ("10.0.2.0/26", "CIDR prefix length must be between 1 and 25, got /26"),
        ("10.0.2.0/32", "CIDR prefix length must be between 1 and 25, got /32"),
        ("0.0.0.0/0", "CIDR prefix length must be between 1 and 25, got /0"),
        ("x/24", "invalid IPv4 CIDR 'x/24'"),
        ("10.0.2.0/33", "invalid IPv4 CIDR '10.0.2.0/33'"),
        ("fd00::/64", "invalid IPv4 CIDR 'fd00::/64'"),
        ("10.0.2.0/24/1", "invalid IPv4 CIDR '10.0.2.0/24/1'"),
    ],
)
def test_parse_cidr_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_cidr(text)
    assert one_line(err) == message


def test_parse_prefix6() -> None:
    assert parse_prefix6("fd00::/64") == IPv6Network("fd00::/64")
    assert parse_prefix6("2001:db8:1:2::/64") == IPv6Network("2001:db8:1:2::/64")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fd00::", "IPv6 prefix must be ADDRESS/64 like fd00::/64, got 'fd00::'"),
        ("fd00::/48", "IPv6 prefix must be a /64 (SLAAC needs it), got /48"),
        (
            "fd00::1/64",
            "IPv6 prefix 'fd00::1/64' is not a network address (host bits are set); "
            "did you mean fd00::/64?",
        ),
        ("zz::/64", "invalid IPv6 prefix 'zz::/64'"),
        ("ff02::/64", "IPv6 prefix must not be link-local or multicast, got ff02::/64"),
    ],
)
def test_parse_prefix6_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_prefix6(text)
    assert one_line(err) == message


def test_parse_fd() -> None:
    assert parse_fd("0", "--exit-fd") == 0
    assert parse_fd("3", "--exit-fd") == 3
    for bad in ("-1", "x", "", "+3", " 3", "\u0663"):
        with pytest.raises(ConfigError) as err:
            parse_fd(bad, "--ready-fd")
        assert one_line(err) == f"--ready-fd must be a non-negative integer, got {bad!r}"


@pytest.mark.parametrize(
    "name", ["eth0", "tap0", "a", "x" * 15, "wlp0s20f3", "br-1.100", "ens3@if4"]
)
def test_valid_ifnames(name: str) -> None:
    assert is_valid_ifname(name)


@pytest.mark.parametrize("name", ["", "x" * 16, ".", "..", "a/b", "a b", "a:b", "a\tb", "a\0b"])
def test_invalid_ifnames(name: str) -> None:
    assert not is_valid_ifname(name)


def test_parse_outbound_addr() -> None:
    assert parse_outbound_addr("192.168.1.5") == "192.168.1.5"
    assert parse_outbound_addr("eth0") == "eth0"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "::1",
            "--outbound-addr takes an IPv4 address or an interface name, got '::1' "
            "(use --outbound-addr6 for IPv6)",
        ),
        ("fd00::zz", "(use --outbound-addr6 for IPv6)"),
        ("10.0.0.256", "--outbound-addr: invalid IPv4 address '10.0.0.256'"),
        ("a/b", "--outbound-addr takes an IPv4 address or an interface name, got 'a/b'"),
        ("", "--outbound-addr takes an IPv4 address or an interface name, got ''"),
        ("x" * 16, "--outbound-addr takes an IPv4 address or an interface name"),
    ],
)
def test_parse_outbound_addr_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_outbound_addr(text)
    assert message in one_line(err)


def test_parse_outbound_addr6() -> None:
    assert parse_outbound_addr6("2001:db8::5") == "2001:db8::5"
    assert parse_outbound_addr6("2001:DB8:0::5") == "2001:db8::5"
    assert parse_outbound_addr6("eth0") == "eth0"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "192.168.1.5",
            "--outbound-addr6 takes an IPv6 address or an interface name, got '192.168.1.5' "
            "(use --outbound-addr for IPv4)",
        ),
        ("fd00::zz", "--outbound-addr6: invalid IPv6 address 'fd00::zz'"),
        ("a b", "--outbound-addr6 takes an IPv6 address or an interface name, got 'a b'"),
    ],
)
def test_parse_outbound_addr6_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_outbound_addr6(text)
    assert one_line(err) == message


@pytest.mark.parametrize(
    ("text", "addr", "port", "normal"),
    [
        ("192.0.2.53", "192.0.2.53", 53, "192.0.2.53:53"),
        ("192.0.2.53:5353", "192.0.2.53", 5353, "192.0.2.53:5353"),
        ("2001:db8::53", "2001:db8::53", 53, "[2001:db8::53]:53"),
        ("fd00::1:53", "fd00::1:53", 53, "[fd00::1:53]:53"),
        ("[::1]", "::1", 53, "[::1]:53"),
        ("[::1]:5300", "::1", 5300, "[::1]:5300"),
    ],
)
def test_parse_dns_upstream(text: str, addr: str, port: int, normal: str) -> None:
    parsed_addr, parsed_port = parse_dns_upstream(text)
    assert str(parsed_addr) == addr and parsed_port == port
    assert normalize_dns_upstream(text) == normal


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "invalid DNS upstream '': expected ADDR, ADDR:PORT or [IPv6]:PORT"),
        ("dns.google", "invalid DNS upstream 'dns.google'"),
        ("[::1", "invalid DNS upstream '[::1'"),
        ("[::1]53", "invalid DNS upstream '[::1]53'"),
        ("[192.0.2.53]:53", "invalid DNS upstream '[192.0.2.53]:53'"),
        (
            "192.0.2.53:0",
            "DNS upstream '192.0.2.53:0': port must be a port number between 1 and 65535",
        ),
        ("192.0.2.53:70000", "port must be a port number between 1 and 65535, got '70000'"),
        ("192.0.2.53:", "port must be a port number between 1 and 65535, got ''"),
        ("[::1]:x", "port must be a port number between 1 and 65535, got 'x'"),
    ],
)
def test_parse_dns_upstream_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_dns_upstream(text)
    assert message in one_line(err)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8080:80", PortMapping("tcp", "0.0.0.0", 8080, 80)),
        ("8080:80/udp", PortMapping("udp", "0.0.0.0", 8080, 80)),
        ("127.0.0.1:8080:80/tcp", PortMapping("tcp", "127.0.0.1", 8080, 80)),
        ("[::1]:53:5353/udp", PortMapping("udp", "::1", 53, 5353)),
        ("[::]:443:443", PortMapping("tcp", "::", 443, 443)),
        ("8080:80/splice", PortMapping("tcp", "0.0.0.0", 8080, 80, splice=True)),
        ("[::1]:8443:443/splice", PortMapping("tcp", "::1", 8443, 443, splice=True)),
    ],
)
def test_parse_port_mapping(text: str, expected: PortMapping) -> None:
    assert parse_port_mapping(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "8080",
            "invalid --publish '8080': expected "
            "[HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|udp|splice]",
        ),
        (
            "8080:80/sctp",
            "invalid --publish '8080:80/sctp': protocol must be tcp, udp or splice, got 'sctp'",
        ),
        ("8080:80/tcp+splice", "protocol must be tcp, udp or splice, got 'tcp+splice'"),
        ("8080:80/", "expected [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|udp|splice]"),
        ("host:8080:80", "bad IPv4 address 'host' (write IPv6 addresses in brackets)"),
        ("[zz]:8080:80", "invalid --publish '[zz]:8080:80': bad IPv6 address"),
        ("[::1]8080:80", "expected [HOST_ADDR:]HOST_PORT:GUEST_PORT"),
        ("0:80", "host port must be a port number between 1 and 65535, got '0'"),
        ("80:65536", "guest port must be a port number between 1 and 65535, got '65536'"),
        ("1:2:3:4", "expected [HOST_ADDR:]HOST_PORT:GUEST_PORT"),
    ],
)
def test_parse_port_mapping_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_port_mapping(text)
    assert message in one_line(err)
