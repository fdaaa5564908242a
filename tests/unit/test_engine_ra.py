"""Router advertisements from the engine (issue 4, item 3): sent on a
router solicitation and periodically, with the prefix of --ipv6-prefix.

This file owns the RA timing and content checks at packet level, driven by
the fake clock (the integration tests see the guest kernel's result: SLAAC
address, default route, RDNSS).
"""

from __future__ import annotations

from ipaddress import IPv6Network

from tests.helpers.frames import (
    GUEST_MAC,
    Ether,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRDNSS,
    IPv6,
)

MAC = bytes.fromhex(GUEST_MAC.replace(":", ""))


def _ras(outs):
    return [o for o in outs if ICMPv6ND_RA in o.pkt]


def test_ra_on_start_then_every_600_s(make_guest):
    g = make_guest(ipv6=True)
    g.engine.set_guest_mac(MAC)
    assert len(_ras(g.advance(0.01))) == 1           # as soon as the guest is known
    assert _ras(g.advance(590)) == []
    (ra,) = _ras(g.advance(15))                      # 605 s: the periodic one
    p = ra.pkt
    assert p[IPv6].src == "fe80::2" and p[IPv6].dst == "ff02::1" and p[IPv6].hlim == 255
    assert p[ICMPv6ND_RA].routerlifetime == 1800
    assert _ras(g.advance(590)) == []
    assert len(_ras(g.advance(15))) == 1
    assert g.counters()["router_adverts"] == 3


def test_ra_answers_solicitation_with_configured_prefix(make_guest):
    g = make_guest(ipv6=True, prefix6=IPv6Network("fd42:1:2:3::/64"))
    g.engine.set_guest_mac(MAC)
    g.advance(0.01)
    rs = (Ether(src=GUEST_MAC, dst="33:33:00:00:00:02")
          / IPv6(src="fe80::5054:ff:fe12:3456", dst="ff02::2", hlim=255) / ICMPv6ND_RS())
    g.send(rs)
    (ra,) = _ras(g.out())
    pi = ra.pkt[ICMPv6NDOptPrefixInfo]
    assert (pi.prefix, pi.prefixlen, pi.L, pi.A) == ("fd42:1:2:3::", 64, 1, 1)
    assert (pi.validlifetime, pi.preferredlifetime) == (86400, 14400)
    assert ra.pkt[ICMPv6NDOptRDNSS].dns == ["fd42:1:2:3::3"]
