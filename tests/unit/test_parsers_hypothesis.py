"""Property tests for the DNS helpers that take guest- or file-controlled
input and had no property test yet: resolv.conf parsing and the UDP
truncation of answers. (The DHCP server, the DNS forwarder core and the API
request parser have theirs in test_dhcp.py, test_dns.py and test_api.py.)

Owns only these properties; it opens no socket and reads no file.
"""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slirpy.services.dns import HEADER_LEN, parse_resolv_conf, truncate_for_udp

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LINES = st.one_of(
    st.text(max_size=60),
    st.builds(lambda a, tail: f"nameserver {a}{tail}",
              st.one_of(st.ip_addresses().map(str), st.text(max_size=20)),
              st.sampled_from(["", " # c", "%eth0", "%", "%1", " extra", "\t;x"])),
)


@FUZZ
@given(st.lists(LINES, max_size=12))
def test_resolv_conf_never_raises_and_yields_addresses(lines: list[str]) -> None:
    # A known good line after the generated ones: whatever came before, it counts.
    out = parse_resolv_conf("\n".join([*lines, "nameserver 192.0.2.53"]))
    assert ("192.0.2.53", 53) in out
    assert len(out) == len(set(out))
    for host, port in out:
        assert port == 53
        addr, _, scope = host.partition("%")
        ip = ipaddress.ip_address(addr)
        if scope:
            assert isinstance(ip, ipaddress.IPv6Address) and ip.is_link_local


def _expected_host(addr: str) -> str:
    """How a resolv.conf address is reported: compressed, an IPv4-mapped
    IPv6 address as the IPv4 address it maps, a link-local scope kept."""
    text, pct, scope = addr.partition("%")
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return ip.compressed + pct + scope


NOT_A_NAMESERVER = st.sampled_from([
    "# nameserver 192.0.2.1", "; nameserver 192.0.2.1", "search example.test",
    "options ndots:2", "nameserver", "nameserver not-an-address", "nameserver 192.0.2.1%eth0",
    "domain example.test", "",
])


@FUZZ
@given(st.lists(st.tuples(
    st.one_of(st.none(), st.ip_addresses().map(str), st.sampled_from(["fe80::1%eth0"])),
    st.sampled_from(["", " # c", " extra", "\t;x", "  "]),
    NOT_A_NAMESERVER,
), max_size=12))
def test_resolv_conf_keeps_every_nameserver_in_order(
    entries: list[tuple[str | None, str, str]],
) -> None:
    """Against a model: each valid `nameserver` line gives its address (first
    occurrence only, in file order), every other line gives nothing. A parser
    that returned nothing, dropped, reordered or mangled entries fails."""
    lines, expected = [], []
    for addr, tail, other in entries:
        if addr is None:
            lines.append(other)
            continue
        lines.append(f"nameserver {addr}{tail}")
        entry = (_expected_host(addr), 53)
        if entry not in expected:
            expected.append(entry)
    assert parse_resolv_conf("\n".join(lines)) == expected


@FUZZ
@given(st.text(max_size=400))
def test_resolv_conf_arbitrary_text(text: str) -> None:
    out = parse_resolv_conf(text + "\nnameserver 192.0.2.53\n")
    assert ("192.0.2.53", 53) in out  # garbage before a good line does not hide it
    for host, port in out:
        assert port == 53
        ipaddress.ip_address(host.partition("%")[0])


@FUZZ
@given(reply=st.binary(max_size=700), limit=st.integers(0, 1500))
def test_truncate_for_udp_never_raises(reply: bytes, limit: int) -> None:
    out = truncate_for_udp(reply, limit)
    if len(reply) <= limit or len(reply) < HEADER_LEN:
        assert out == reply
        return
    assert out[:2] == reply[:2]  # same ID
    assert out[2] & 0x02  # TC set
    assert out[6:12] == bytes(6)  # no answer, authority or additional records
    assert HEADER_LEN <= len(out) <= len(reply)
    assert out[HEADER_LEN:] == reply[HEADER_LEN:len(out)]
