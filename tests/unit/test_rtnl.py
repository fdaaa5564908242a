"""slirpy.host.rtnl's messages and slirpy.host.template's choices, without a kernel.

Encoders are checked by parsing what they build (a dump answer has the same
layout as the request that makes the object), errors by decoding NLMSG_ERROR
payloads as the kernel writes them, and the template rules on synthetic
snapshots of a host. One read-only dump of the test's own namespace checks
the exchange against the real kernel.
"""

from __future__ import annotations

import errno
import socket
import struct
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)

import pytest

from slirpy.config import ConfigError
from slirpy.host import netconf, rtnl
from slirpy.host.template import (
    FamilyTemplate,
    HostState,
    Route,
    build_template,
    choose_interface,
)
from slirpy.options import SharedAddressing

# ------------------------------------------------------------------ attributes


def test_attr_padding_and_parse() -> None:
    raw = rtnl.attr(3, b"abcde") + rtnl.attr(4, b"\x01\x02\x03\x04")
    assert len(raw) == 12 + 8
    assert rtnl.parse_attrs(raw) == {3: b"abcde", 4: b"\x01\x02\x03\x04"}


def test_parse_attrs_stops_at_truncation() -> None:
    raw = rtnl.attr(1, b"xxxx") + struct.pack("=HH", 64, 2) + b"short"
    assert rtnl.parse_attrs(raw) == {1: b"xxxx"}


def test_parse_attrs_masks_nested_flag() -> None:
    raw = rtnl.attr(9 | 0x8000, b"\0\0\0\0")
    assert 9 in rtnl.parse_attrs(raw)


def test_messages_round_trip() -> None:
    a = rtnl.message(rtnl.RTM_NEWADDR, rtnl.NLM_F_REQUEST, 7, b"\1\2\3")
    b = rtnl.message(rtnl.NLMSG_DONE, rtnl.NLM_F_MULTI, 7, struct.pack("=i", 0))
    got = list(rtnl.split_messages(a + b"\0" + b))  # the first one is padded to 4
    assert got == [(rtnl.RTM_NEWADDR, rtnl.NLM_F_REQUEST, 7, b"\1\2\3"),
                   (rtnl.NLMSG_DONE, rtnl.NLM_F_MULTI, 7, b"\0\0\0\0")]


# ------------------------------------------------------------------ objects


def test_link_round_trip() -> None:
    body = rtnl.link_request(5, name="tap0", flags=rtnl.IFF_UP, change=rtnl.IFF_UP, mtu=65520,
                             mac=bytes.fromhex("9a559a559a55"), txqlen=10000)
    link = rtnl.parse_link(body)
    assert link == rtnl.Link(5, "tap0", rtnl.IFF_UP, 65520, bytes.fromhex("9a559a559a55"), 10000)
    assert struct.unpack_from("=I", body, 12)[0] == rtnl.IFF_UP  # ifi_change


def test_link_addr_gen_mode_is_nested() -> None:
    body = rtnl.link_request(5, addr_gen_mode=rtnl.IN6_ADDR_GEN_MODE_NONE)
    spec = rtnl.parse_attrs(body, rtnl.IFINFOMSG.size)[rtnl.IFLA_AF_SPEC]
    inet6 = rtnl.parse_attrs(spec)[socket.AF_INET6]
    assert rtnl.parse_attrs(inet6) == {rtnl.IFLA_INET6_ADDR_GEN_MODE: b"\x01"}


@pytest.mark.parametrize("iface", [IPv4Interface("198.51.100.2/24"),
                                   IPv6Interface("2001:db8:1::2/64")])
def test_addr_round_trip(iface: IPv4Interface | IPv6Interface) -> None:
    body = rtnl.addr_request(3, iface, flags=rtnl.IFA_F_NODAD)
    entry = rtnl.parse_addr(body)
    assert entry == rtnl.AddrEntry(3, iface, rtnl.RT_SCOPE_UNIVERSE, rtnl.IFA_F_NODAD)


def test_addr_wide_flags_go_in_ifa_flags() -> None:
    body = rtnl.addr_request(3, IPv6Interface("2001:db8::1/64"), flags=0x100 | rtnl.IFA_F_NODAD)
    assert rtnl.parse_attrs(body, rtnl.IFADDRMSG.size)[rtnl.IFA_FLAGS] == struct.pack("=I", 0x102)
    assert rtnl.parse_addr(body).flags == 0x102


def test_addr_point_to_point_takes_local() -> None:
    body = rtnl.IFADDRMSG.pack(socket.AF_INET, 32, 0, 0, 2)
    body += rtnl.attr(rtnl.IFA_ADDRESS, IPv4Address("10.0.0.2").packed)
    body += rtnl.attr(rtnl.IFA_LOCAL, IPv4Address("10.0.0.1").packed)
    assert rtnl.parse_addr(body).interface == IPv4Interface("10.0.0.1/32")


def test_route_round_trip_v4() -> None:
    body = rtnl.route_request(IPv4Network("192.0.2.0/24"), oif=4,
                              gateway=IPv4Address("198.51.100.1"), metric=100, onlink=True)
    r = rtnl.parse_route(body)
    assert (r.family, r.dst, r.gateway, r.oif, r.metric) == (
        socket.AF_INET, IPv4Network("192.0.2.0/24"), IPv4Address("198.51.100.1"), 4, 100)
    assert (r.table, r.protocol, r.scope, r.type) == (
        rtnl.RT_TABLE_MAIN, rtnl.RTPROT_BOOT, rtnl.RT_SCOPE_UNIVERSE, rtnl.RTN_UNICAST)
    assert r.flags == rtnl.RTNH_F_ONLINK


def test_route_scopes() -> None:
    onlink4 = rtnl.parse_route(rtnl.route_request(IPv4Network("192.0.2.0/24"), oif=4))
    assert onlink4.scope == rtnl.RT_SCOPE_LINK and onlink4.gateway is None
    default6 = rtnl.parse_route(rtnl.route_request(IPv6Network("::/0"), oif=4,
                                                   gateway=IPv6Address("fe80::1")))
    assert default6.scope == rtnl.RT_SCOPE_UNIVERSE
    assert default6.dst == IPv6Network("::/0")  # no RTA_DST for a default route
    assert rtnl.RTA_DST not in rtnl.parse_attrs(
        rtnl.route_request(IPv6Network("::/0"), oif=4), rtnl.RTMSG.size)


def test_route_high_table_goes_in_rta_table() -> None:
    r = rtnl.parse_route(rtnl.route_request(IPv4Network("0.0.0.0/0"), oif=1, table=1000))
    assert r.table == 1000


def test_route_multipath_first_nexthop() -> None:
    nh1 = rtnl.attr(rtnl.RTA_GATEWAY, IPv6Address("fe80::1").packed)
    nh2 = rtnl.attr(rtnl.RTA_GATEWAY, IPv6Address("fe80::2").packed)
    hops = (rtnl.RTNEXTHOP.pack(8 + len(nh1), 0, 0, 3) + nh1
            + rtnl.RTNEXTHOP.pack(8 + len(nh2), 0, 0, 5) + nh2)
    body = rtnl.RTMSG.pack(socket.AF_INET6, 0, 0, 0, 254, 9, 0, 1, 0)
    body += rtnl.attr(rtnl.RTA_MULTIPATH, hops)
    r = rtnl.parse_route(body)
    assert r.oif == 3 and r.gateway == IPv6Address("fe80::1")
    assert [n.ifindex for n in r.nexthops] == [3, 5]


# ------------------------------------------------------------------ errors


def _error_payload(err: int, request: bytes, msg: bytes | None = None) -> tuple[int, bytes]:
    payload = struct.pack("=i", err) + request
    flags = 0
    if msg is not None:
        payload += rtnl.attr(rtnl.NLMSGERR_ATTR_MSG, msg + b"\0")
        flags = rtnl.NLM_F_ACK_TLVS
    return flags, payload


def test_error_decoding() -> None:
    req = rtnl.message(rtnl.RTM_NEWADDR, rtnl.NLM_F_REQUEST, 3, b"\0" * 8)
    assert rtnl.error_of(*_error_payload(0, req[:16])) is None
    exc = rtnl.error_of(*_error_payload(-errno.EEXIST, req))
    assert isinstance(exc, OSError) and exc.errno == errno.EEXIST
    exc = rtnl.error_of(*_error_payload(-errno.ENETUNREACH, req, b"Nexthop has invalid gateway"))
    assert exc is not None and exc.errno == errno.ENETUNREACH
    assert "Nexthop has invalid gateway" in str(exc)


def test_error_decoding_capped() -> None:
    req = rtnl.message(rtnl.RTM_NEWROUTE, rtnl.NLM_F_REQUEST, 3, b"\0" * 40)
    payload = struct.pack("=i", -errno.EINVAL) + req[:16]
    payload += rtnl.attr(rtnl.NLMSGERR_ATTR_MSG, b"bad thing\0")
    exc = rtnl.error_of(rtnl.NLM_F_ACK_TLVS | rtnl.NLM_F_CAPPED, payload)
    assert exc is not None and "bad thing" in str(exc)


class _FakeSocket:
    """Answers one request with prepared datagrams (their seq taken from the request)."""

    def __init__(self, answers: list[tuple[int, int, bytes]]) -> None:
        self.answers = answers
        self.sent: list[bytes] = []
        self.queue: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sent.append(data)
        seq = struct.unpack_from("=I", data, 8)[0]
        stale = rtnl.message(rtnl.RTM_NEWLINK, 0, seq - 1, b"")
        self.queue = [stale + b"".join(rtnl.message(t, f, seq, p) for t, f, p in self.answers)]

    def recv(self, _n: int) -> bytes:
        return self.queue.pop(0)


def test_change_raises_kernel_errno() -> None:
    flags, payload = _error_payload(-errno.EEXIST, b"\0" * 16)
    fake = _FakeSocket([(rtnl.NLMSG_ERROR, flags, payload)])
    with pytest.raises(OSError) as info:
        rtnl.add_addr(fake, 2, IPv4Interface("192.0.2.1/24"))  # type: ignore[arg-type]
    assert info.value.errno == errno.EEXIST
    hdr = rtnl.NLMSGHDR.unpack_from(fake.sent[0])
    assert hdr[1] == rtnl.RTM_NEWADDR
    assert hdr[2] & (rtnl.NLM_F_ACK | rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL) == (
        rtnl.NLM_F_ACK | rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL)


def test_dump_collects_until_done_and_skips_stale() -> None:
    link = rtnl.link_request(1, name="lo", mtu=65536)
    fake = _FakeSocket([(rtnl.RTM_NEWLINK, rtnl.NLM_F_MULTI, link),
                        (rtnl.NLMSG_DONE, rtnl.NLM_F_MULTI, struct.pack("=i", 0))])
    links = rtnl.dump_links(fake)  # type: ignore[arg-type]
    assert [x.name for x in links] == ["lo"]


def test_dump_of_own_namespace() -> None:
    """Read-only: the test's namespace has a loopback link and its address."""
    with rtnl.open_route() as nl:
        lo = rtnl.link_by_name(nl, "lo")
        assert lo.flags & rtnl.IFF_LOOPBACK
        assert any(a.index == lo.index for a in rtnl.dump_addrs(nl, socket.AF_INET))
        rtnl.dump_routes(nl)
        with pytest.raises(OSError) as info:
            rtnl.link_by_name(nl, "nosuchif0")
        assert info.value.errno == errno.ENODEV


# ------------------------------------------------------------------ template rules


def _state(routes: list[rtnl.RouteEntry], addrs: list[rtnl.AddrEntry]) -> HostState:
    links = [rtnl.Link(1, "lo", rtnl.IFF_LOOPBACK | rtnl.IFF_UP, 65536, None, 0),
             rtnl.Link(2, "eth0", rtnl.IFF_UP, 1500, b"\2" * 6, 1000),
             rtnl.Link(3, "wlan0", rtnl.IFF_UP, 1500, b"\4" * 6, 1000)]
    return HostState(links, addrs, routes)


def _r(dst: str, gw: str | None, oif: int, metric: int = 0, proto: int = rtnl.RTPROT_BOOT,
       table: int = rtnl.RT_TABLE_MAIN) -> rtnl.RouteEntry:
    net = IPv6Network(dst) if ":" in dst else IPv4Network(dst)
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    gateway = None if gw is None else (IPv6Address(gw) if ":" in gw else IPv4Address(gw))
    return rtnl.RouteEntry(fam, net, gateway, oif, metric, table, proto, 0, rtnl.RTN_UNICAST, 0)


def _a(iface: str, index: int, scope: int = 0, flags: int = 0) -> rtnl.AddrEntry:
    i = IPv6Interface(iface) if ":" in iface else IPv4Interface(iface)
    return rtnl.AddrEntry(index, i, scope, flags)


HOST_ADDRS = [_a("198.51.100.2/24", 2), _a("198.51.100.7/28", 2), _a("10.9.0.5/16", 3),
              _a("2001:db8:1::2/64", 2), _a("fe80::2/64", 2, scope=rtnl.RT_SCOPE_LINK),
              _a("2001:db8:1::9/64", 2, flags=rtnl.IFA_F_DEPRECATED),
              _a("127.0.0.1/8", 1, scope=rtnl.RT_SCOPE_HOST)]
HOST_ROUTES = [
    _r("0.0.0.0/0", "10.9.0.1", 3, metric=600),
    _r("0.0.0.0/0", "198.51.100.1", 2, metric=100),
    _r("198.51.100.0/24", None, 2, proto=rtnl.RTPROT_KERNEL),
    _r("192.0.2.0/24", "198.51.100.1", 2),
    _r("10.9.0.0/16", None, 3, proto=rtnl.RTPROT_KERNEL),
    _r("0.0.0.0/0", "203.0.113.1", 2, table=100),
    _r("::/0", "fe80::1", 2, metric=1024, proto=9),
    _r("2001:db8:1::/64", None, 2, metric=256, proto=rtnl.RTPROT_KERNEL),
    _r("fe80::/64", None, 2, metric=256, proto=rtnl.RTPROT_KERNEL),
    _r("fe80::/64", None, 3, metric=256, proto=rtnl.RTPROT_KERNEL),
]


def test_template_copies_the_default_interface() -> None:
    t = build_template(_state(HOST_ROUTES, HOST_ADDRS), SharedAddressing())
    assert t.ifname == "eth0"
    assert t.v4 is not None and t.v6 is not None
    assert t.v4.addrs == (IPv4Interface("198.51.100.2/24"), IPv4Interface("198.51.100.7/28"))
    assert t.v4.routes == (Route(IPv4Network("0.0.0.0/0"), IPv4Address("198.51.100.1"), 100),
                           Route(IPv4Network("192.0.2.0/24"), IPv4Address("198.51.100.1"), 0))
    assert t.v4.gateway == IPv4Address("198.51.100.1") and not t.v4.local_mode
    # The most specific address is the guest's (pasta's choice).
    assert t.address4 == IPv4Address("198.51.100.7")
    assert t.v6.addrs == (IPv6Interface("2001:db8:1::2/64"),)
    assert t.v6.routes == (Route(IPv6Network("::/0"), IPv6Address("fe80::1"), 1024),)
    assert t.address6 == IPv6Address("2001:db8:1::2")


def test_template_without_default_route() -> None:
    one = [_r("192.0.2.0/24", "198.51.100.1", 2), _r("198.51.100.0/24", None, 2, proto=2),
           _r("fe80::/64", None, 2, proto=2), _r("fe80::/64", None, 3, proto=2)]
    st = _state(one, HOST_ADDRS)
    assert choose_interface(st, socket.AF_INET) == 2
    # IPv6: only link-local prefixes, on two links: no template.
    assert choose_interface(st, socket.AF_INET6) is None
    two = [*one, _r("10.9.0.0/16", None, 3, proto=2)]
    assert choose_interface(_state(two, HOST_ADDRS), socket.AF_INET) is None


def test_local_mode_when_offline() -> None:
    t = build_template(_state([], HOST_ADDRS), SharedAddressing())
    assert t.ifname == "tap0"
    assert t.v4 is not None and t.v4.local_mode
    assert t.v4.addrs == (IPv4Interface("169.254.2.1/16"),)
    assert t.v4.routes == (Route(IPv4Network("0.0.0.0/0"), IPv4Address("169.254.2.2"), 0),)
    assert t.v6 is not None and t.v6.local_mode and t.v6.addrs == ()
    assert t.v6.gateway == IPv6Address("fe80::1")
    assert t.address4 == IPv4Address("169.254.2.1") and t.address6 is None


def test_local_mode_per_family() -> None:
    only4 = [r for r in HOST_ROUTES if r.family == socket.AF_INET]
    t = build_template(_state(only4, HOST_ADDRS), SharedAddressing())
    assert t.v4 is not None and not t.v4.local_mode and t.ifname == "eth0"
    assert t.v6 is not None and t.v6.local_mode


def test_overrides() -> None:
    shared = SharedAddressing(address4=IPv4Address("192.0.2.1"),
                              gateway4=IPv4Address("192.0.2.254"),
                              address6=IPv6Address("2001:db8::1"), ifname="myname")
    t = build_template(_state(HOST_ROUTES, HOST_ADDRS), shared)
    assert t.ifname == "myname"
    assert t.v4 is not None and t.v4.addrs == (IPv4Interface("192.0.2.1/24"),)
    assert t.v4.routes == (Route(IPv4Network("0.0.0.0/0"), IPv4Address("192.0.2.254"), 0),)
    assert t.address4 == IPv4Address("192.0.2.1")
    assert t.v6 is not None and t.v6.addrs == (IPv6Interface("2001:db8::1/64"),)
    assert t.v6.routes == (Route(IPv6Network("::/0"), IPv6Address("fe80::1"), 1024),)
    assert t.address6 == IPv6Address("2001:db8::1")
    n = build_template(_state(HOST_ROUTES, HOST_ADDRS),
                       SharedAddressing(address4=IPv4Address("10.1.2.3"), prefixlen4=30))
    assert n.v4 is not None and n.v4.addrs == (IPv4Interface("10.1.2.3/30"),)


def test_one_family_only() -> None:
    t = build_template(_state(HOST_ROUTES, HOST_ADDRS), SharedAddressing(ipv6=False))
    assert t.v6 is None and t.address6 is None and t.v4 is not None
    t = build_template(_state(HOST_ROUTES, HOST_ADDRS), SharedAddressing(ipv4=False))
    assert t.v4 is None and t.address4 is None and t.ifname == "eth0"


def test_explicit_template_interface() -> None:
    st = _state(HOST_ROUTES, HOST_ADDRS)
    t = build_template(st, SharedAddressing(template_if4="wlan0", ipv6=False))
    assert t.v4 is not None and t.v4.addrs == (IPv4Interface("10.9.0.5/16"),)
    assert t.v4.gateway == IPv4Address("10.9.0.1") and t.ifname == "wlan0"
    with pytest.raises(ConfigError, match="External interface not usable"):
        build_template(st, SharedAddressing(template_if4="nosuch0"))
    with pytest.raises(ConfigError, match="External interface not usable"):
        build_template(st, SharedAddressing(template_if6="wlan0"))  # no IPv6 address there


# ------------------------------------------------------------------ netconf's order


def test_link_local_of_mac() -> None:
    assert netconf.link_local_of(bytes.fromhex("02aabbccddee")) == IPv6Interface(
        "fe80::aa:bbff:fecc:ddee/64")


def test_routes_ordered_and_onlink() -> None:
    fam = FamilyTemplate(
        "eth0", (IPv4Interface("198.51.100.2/24"),),
        (Route(IPv4Network("0.0.0.0/0"), IPv4Address("198.51.100.1"), 0),
         Route(IPv4Network("10.0.0.0/8"), IPv4Address("172.16.0.1"), 0),
         Route(IPv4Network("172.16.0.0/24"), None, 0),
         Route(IPv4Network("192.0.2.0/24"), IPv4Address("203.0.113.1"), 0)),
        IPv4Address("198.51.100.1"), False)
    got = [(str(r.dst), onlink) for r, onlink in netconf.ordered_routes(fam)]
    # Device routes first; a gateway reached only through another router: onlink.
    assert got == [("172.16.0.0/24", False), ("0.0.0.0/0", False), ("10.0.0.0/8", False),
                   ("192.0.2.0/24", True)]
    v6 = FamilyTemplate(None, (), (Route(IPv6Network("::/0"), IPv6Address("fe80::1"), 1024),
                                   Route(IPv6Network("2001:db8:5::/48"),
                                         IPv6Address("2001:db8:1::1"), 1024)),
                        IPv6Address("fe80::1"), True)
    assert [o for _r, o in netconf.ordered_routes(v6)] == [False, True]


# ------------------------------------------------------------------ inet_diag


def test_diag_request_and_answer() -> None:
    from slirpy.host import portscan

    req = portscan.diag_request(socket.AF_INET6, socket.IPPROTO_UDP, 1 << portscan.TCP_CLOSE)
    assert len(req) == 56
    assert req[:8] == struct.pack("=BBBxI", socket.AF_INET6, socket.IPPROTO_UDP, 0, 1 << 7)
    msg = struct.pack("=BBBB", socket.AF_INET, portscan.TCP_LISTEN, 0, 0)
    msg += struct.pack("!HH", 8080, 0) + IPv4Address("127.0.0.1").packed + b"\0" * 12
    msg += b"\0" * 16 + b"\0" * 28  # dst, if, cookie, expires, queues, uid, inode
    assert portscan.parse_diag(msg) == (portscan.TCP_LISTEN, 8080, "127.0.0.1")
