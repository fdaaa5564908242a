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
    out = parse_resolv_conf("\n".join(lines))
    assert len(out) == len(set(out))
    for host, port in out:
        assert port == 53
        addr, _, scope = host.partition("%")
        ip = ipaddress.ip_address(addr)
        if scope:
            assert isinstance(ip, ipaddress.IPv6Address) and ip.is_link_local


@FUZZ
@given(st.text(max_size=400))
def test_resolv_conf_arbitrary_text(text: str) -> None:
    for host, port in parse_resolv_conf(text):
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
