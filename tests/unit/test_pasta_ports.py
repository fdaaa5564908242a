"""Unit tests for pasta's port-spec grammar (slirpy.frontends.pasta_ports).

What Podman and RootlessKit send comes first (`none`, `HP-HPEND:CP-CPEND`
with an optional raw `HOSTIP/`, IPv6 unbracketed, `auto`), then the rest of
passt.1's grammar, the rules for several options, and property tests that
generate specs and check what they forward.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slirpy.frontends.pasta_ports import (
    DEFAULT_EPHEMERAL,
    PortContext,
    PortSpecError,
    parse_port_options,
    parse_port_spec,
)
from slirpy.options import AutoForward, HostLoopbackForward, PortMapping

EPHEMERAL = frozenset(range(DEFAULT_EPHEMERAL[0], DEFAULT_EPHEMERAL[1] + 1))
NON_EPHEMERAL = frozenset(range(1, 65536)) - EPHEMERAL


def forwards(option: str, spec: str, **ctx: object) -> list[tuple[str, int, int]]:
    """(host_addr, host_port, guest_port) of each PortMapping of one spec."""
    got = parse_port_spec(option, spec, PortContext(**ctx))  # type: ignore[arg-type]
    return [(m.host_addr, m.host_port, m.guest_port) for m in got.forwards]


def error(option: str, spec: str, **ctx: object) -> str:
    with pytest.raises(PortSpecError) as info:
        parse_port_spec(option, spec, PortContext(**ctx))  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------ what runtimes send


def test_podman_single_port_range_form() -> None:
    got = parse_port_spec("-t", "80-80:60-60")
    assert got.forwards == (
        PortMapping("tcp", "", 80, 60, splice_loopback=True, option="-t 80-80:60-60"),
    )
    assert got.loopback_forwards == () and got.auto_forwards == ()


def test_podman_udp_is_not_spliced_from_loopback() -> None:
    (m,) = parse_port_spec("-u", "100-100:100-100").forwards
    assert (m.proto, m.host_port, m.guest_port, m.splice_loopback) == ("udp", 100, 100, False)
    assert m.option == "-u 100-100:100-100"


def test_podman_range() -> None:
    assert forwards("-t", "8080-8082:80-82") == [("", 8080, 80), ("", 8081, 81), ("", 8082, 82)]


@pytest.mark.parametrize(
    ("spec", "addr"),
    [
        ("127.0.0.1/8080-8080:80-80", "127.0.0.1"),
        ("::1/8080-8080:80-80", "::1"),  # Podman: IPv6 without brackets
        ("[::1]/8080-8080:80-80", "::1"),  # pesto: with brackets
        ("[127.0.0.1]/8080-8080:80-80", "127.0.0.1"),
        ("fd00::1/8080-8080:80-80", "fd00::1"),
        ("0.0.0.0/8080-8080:80-80", "0.0.0.0"),
        ("[::]/8080-8080:80-80", "::"),
        ("::ffff:127.0.0.1/8080-8080:80-80", "127.0.0.1"),
    ],
)
def test_listening_address(spec: str, addr: str) -> None:
    assert forwards("-t", spec) == [(addr, 8080, 80)]


def test_none_is_nothing() -> None:
    assert parse_port_spec("-t", "none") == parse_port_spec("-U", "none")
    got = parse_port_options([("-t", "none"), ("-u", "none"), ("-T", "none"), ("-U", "none")])
    assert got.forwards == got.loopback_forwards == got.auto_forwards == ()


def test_rootlesskit_auto() -> None:
    (auto,) = parse_port_spec("-t", "auto").auto_forwards
    assert auto == AutoForward("tcp", "in", excluded=EPHEMERAL, host_addr=None)
    (auto,) = parse_port_spec("-U", "auto").auto_forwards
    assert (auto.proto, auto.direction) == ("udp", "out")


# ------------------------------------------------------------ the rest of passt.1


def test_man_page_examples() -> None:
    assert forwards("-t", "22") == [("", 22, 22)]
    assert forwards("-t", "22:23") == [("", 22, 23)]
    assert forwards("-t", "22,25") == [("", 22, 22), ("", 25, 25)]
    assert [p for _, p, _ in forwards("-t", "22-80")] == list(range(22, 81))
    assert forwards("-t", "22-80:32-90")[-1] == ("", 80, 90)
    assert forwards("-t", "192.0.2.1/22") == [("192.0.2.1", 22, 22)]
    assert [p for _, p, _ in forwards("-t", "2000-5000,~3000-3010")] == [
        p for p in range(2000, 5001) if not 3000 <= p <= 3010
    ]
    assert forwards("-t", "192.0.2.1/20-30,~25") == [
        ("192.0.2.1", p, p) for p in (20, 21, 22, 23, 24, 26, 27, 28, 29, 30)
    ]


def test_exclusions_first_or_last() -> None:
    assert forwards("-t", "~25,20-30") == forwards("-t", "20-30,~25")


def test_interface() -> None:
    (m,) = parse_port_spec("-t", "192.0.2.1%eth0/22").forwards
    assert (m.host_addr, m.bind_device) == ("192.0.2.1", "eth0")
    (m,) = parse_port_spec("-t", "%eth0/22").forwards
    assert (m.host_addr, m.bind_device) == ("", "eth0")
    (m,) = parse_port_spec("-t", "fe80::1%eth0/22").forwards
    assert (m.host_addr, m.bind_device) == ("fe80::1", "eth0")


@pytest.mark.parametrize("spec", ["*/80", "/80", "*%lo/80"])
def test_any_address(spec: str) -> None:
    assert forwards("-t", spec) == [("", 80, 80)]


def test_target_address() -> None:
    (m,) = parse_port_spec("-t", "0.0.0.0/5000:192.0.2.5/6000").forwards
    assert (m.host_addr, m.host_port, m.guest_addr, m.guest_port) == (
        "0.0.0.0", 5000, "192.0.2.5", 6000
    )
    (m,) = parse_port_spec("-t", "[::]/22:::1").forwards
    assert (m.host_addr, m.guest_addr, m.guest_port) == ("::", "::1", 22)
    (m,) = parse_port_spec("-t", "[::]/22:[fd00::5]/23").forwards
    assert (m.guest_addr, m.guest_port) == ("fd00::5", 23)
    (m,) = parse_port_spec("-t", "22:1000", PortContext(ipv6=False)).forwards
    assert (m.host_addr, m.guest_addr, m.guest_port) == ("0.0.0.0", None, 1000)


def test_exclusions_only_mean_every_other_non_ephemeral_port() -> None:
    got = parse_port_spec("-t", "~22,~8000-8009").forwards
    assert {m.host_port for m in got} == NON_EPHEMERAL - {22} - set(range(8000, 8010))
    assert all(m.optional and m.host_port == m.guest_port for m in got)


def test_all() -> None:
    got = parse_port_spec("-u", "all").forwards
    assert {m.host_port for m in got} == NON_EPHEMERAL
    assert all(m.optional for m in got)
    got = parse_port_spec("-t", "127.0.0.6/all:192.0.2.6,~80").forwards
    assert {m.host_port for m in got} == NON_EPHEMERAL - {80}
    assert {(m.host_addr, m.guest_addr) for m in got} == {("127.0.0.6", "192.0.2.6")}


def test_ephemeral_range_is_a_parameter() -> None:
    got = parse_port_spec("-t", "all", PortContext(ephemeral=(1024, 65535))).forwards
    assert {m.host_port for m in got} == set(range(1, 1024))


def test_auto_variants() -> None:
    (a,) = parse_port_spec("-t", "::1/auto").auto_forwards
    assert (a.host_addr, a.excluded) == ("::1", EPHEMERAL)
    (a,) = parse_port_spec("-t", "8000-8010,~8005,auto").auto_forwards
    assert set(range(1, 65536)) - a.excluded == set(range(8000, 8011)) - {8005}
    (a,) = parse_port_spec("-T", "auto,~631").auto_forwards
    assert a.excluded == EPHEMERAL | {631} and a.direction == "out"
    (a,) = parse_port_spec("-t", "auto", PortContext(ipv6=False)).auto_forwards
    assert a.host_addr == "0.0.0.0"
    (a,) = parse_port_spec("-T", "auto", PortContext(ipv6=False)).auto_forwards
    assert a.host_addr is None


def test_namespace_to_host() -> None:
    got = parse_port_spec("-T", "5201").loopback_forwards
    assert got == (HostLoopbackForward("tcp", 5201, 5201, option="-T 5201"),)
    got = parse_port_spec("-U", "5353-5354:53-54").loopback_forwards
    assert [(f.proto, f.ns_port, f.host_port) for f in got] == [
        ("udp", 5353, 53), ("udp", 5354, 54),
    ]
    got = parse_port_spec("-T", "~22").loopback_forwards
    assert {f.ns_port for f in got} == NON_EPHEMERAL - {22} and all(f.optional for f in got)


def test_single_family() -> None:
    assert forwards("-t", "80", ipv6=False) == [("0.0.0.0", 80, 80)]
    assert forwards("-t", "80", ipv4=False) == [("::", 80, 80)]


def test_no_splice() -> None:
    (m,) = parse_port_spec("-t", "80", PortContext(splice_loopback=False)).forwards
    assert not m.splice_loopback


# ------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("option", "spec", "expected"),
    [
        ("-t", "80-70", "invalid port spec '-t 80-70': range '80-70' ends before it starts"),
        ("-t", "0", "invalid port spec '-t 0': port 0 cannot be forwarded"),
        ("-t", "65536", "invalid port spec '-t 65536': port numbers go up to 65535, got '65536'"),
        ("-t", "80:90-91", "invalid port spec '-t 80:90-91': target range '90-91' and '80' "
         "differ in length"),
        ("-t", "abc", "invalid port spec '-t abc': 'abc' is not a port or a FIRST-LAST range"),
        ("-t", "", "invalid port spec '-t ': empty entry in the port list"),
        ("-t", "80,", "invalid port spec '-t 80,': empty entry in the port list"),
        ("-t", "1.2.3.4", "invalid port spec '-t 1.2.3.4': '1.2.3.4' is not a port or a "
         "FIRST-LAST range"),
        ("-t", "::1/", "invalid port spec '-t ::1/': empty entry in the port list"),
        ("-t", "::1/80-", "invalid port spec '-t ::1/80-': '80-' is not a port or a "
         "FIRST-LAST range"),
        ("-t", "+80", "invalid port spec '-t +80': '+80' is not a port or a FIRST-LAST range"),
        ("-t", "%/80", "invalid port spec '-t %/80': '%/80' is not a port or a FIRST-LAST range"),
        ("-t", "%averyveryverylongname/80", "invalid port spec '-t %averyveryverylongname/80'"),
        ("-t", "all,80", "invalid port spec '-t all,80': 'all' cannot be combined with port "
         "ranges"),
        ("-t", "80:224.0.0.1", "invalid port spec '-t 80:224.0.0.1': invalid target address "
         "'224.0.0.1'"),
        ("-T", "::1/80", "Listening address not allowed for -T ::1/80"),
        ("-U", "%lo/53", "Listening address not allowed for -U %lo/53"),
        ("-T", "80:192.0.2.1", "-T 80:192.0.2.1: a target address is not supported"),
        ("-t", "5000:192.0.2.5/6000", "-t 5000:192.0.2.5/6000: a forward from both families "
         "to IPv4 address 192.0.2.5 is not possible; did you mean 0.0.0.0/... ?"),
        ("-t", "::1/80:1.2.3.4/80", "-t ::1/80:1.2.3.4/80: cannot forward from ::1 to 1.2.3.4"),
        ("-t", "%eth0/auto", "-t %eth0/auto: %IFNAME with 'auto' is not supported"),
        ("-t", "80:81,auto", "-t 80:81,auto: 'auto' with a target address or port is not "
         "supported"),
    ],
)
def test_bad_specs(option: str, spec: str, expected: str) -> None:
    assert error(option, spec).startswith(expected)


def test_family_disabled() -> None:
    assert error("-t", "127.0.0.1/80", ipv4=False) == (
        "-t 127.0.0.1/80: IPv4 address, but IPv4 is disabled (-6)"
    )
    assert error("-t", "::1/80", ipv6=False) == "-t ::1/80: IPv6 address, but IPv6 is disabled (-4)"


# ---------------------------------------------------------- several options


def test_defaults_are_auto() -> None:
    got = parse_port_options([])
    assert [(a.proto, a.direction) for a in got.auto_forwards] == [
        ("tcp", "in"), ("udp", "in"), ("tcp", "out"), ("udp", "out"),
    ]
    assert all(a.excluded == EPHEMERAL for a in got.auto_forwards)


def test_defaults_only_for_absent_options_and_enabled_protocols() -> None:
    got = parse_port_options([("-t", "none"), ("-u", "80")])
    assert [(a.proto, a.direction) for a in got.auto_forwards] == [("tcp", "out"), ("udp", "out")]
    got = parse_port_options([], PortContext(tcp=False))
    assert [(a.proto, a.direction) for a in got.auto_forwards] == [("udp", "in"), ("udp", "out")]


def test_specs_accumulate() -> None:
    got = parse_port_options([("-t", "80-80:60-60"), ("-t", "81"), ("-u", "100-100:100-100"),
                              ("-T", "none"), ("-U", "none")])
    assert [(m.proto, m.host_port) for m in got.forwards] == [("tcp", 80), ("tcp", 81),
                                                              ("udp", 100)]


def test_none_after_another_spec_conflicts() -> None:
    with pytest.raises(PortSpecError, match=r"^-t none conflicts with previous options$"):
        parse_port_options([("-t", "80"), ("-t", "none")])
    with pytest.raises(PortSpecError, match=r"^-U none conflicts with previous options$"):
        parse_port_options([("-U", "auto"), ("-U", "none")])
    # Before, or for another option, it is fine.
    parse_port_options([("-t", "none"), ("-t", "none"), ("-t", "80"), ("-u", "none")])
    parse_port_options([("-t", "80"), ("-u", "none"), ("-T", "none")])


def test_protocol_disabled() -> None:
    with pytest.raises(PortSpecError, match=r"TCP port forwarding requested \(-t 80\) but TCP is "
                       r"disabled \(--no-tcp\)"):
        parse_port_options([("-t", "80")], PortContext(tcp=False))
    parse_port_options([("-u", "none")], PortContext(udp=False))


def test_overlapping_forwards_conflict() -> None:
    with pytest.raises(PortSpecError, match=r"^Forwarding configuration conflict: '-t 80' "
                       r"versus '-t 79-81' \(port 80/tcp\)$"):
        parse_port_options([("-t", "80"), ("-t", "79-81")])
    with pytest.raises(PortSpecError, match="conflict"):
        parse_port_options([("-t", "80,80")])
    with pytest.raises(PortSpecError, match="conflict"):
        parse_port_options([("-T", "80"), ("-T", "80:81")])
    # Different families, protocols or addresses are not in conflict.
    got = parse_port_options([("-t", "0.0.0.0/80"), ("-t", "[::]/80"), ("-u", "80"),
                              ("-t", "127.0.0.1/81"), ("-t", "127.0.0.2/81")])
    assert len(got.forwards) == 5


def test_explicit_beats_all() -> None:
    got = parse_port_options([("-t", "all"), ("-t", "80:8080"), ("-u", "none"), ("-T", "none"),
                              ("-U", "none")])
    (explicit,) = [m for m in got.forwards if m.host_port == 80]
    assert (explicit.guest_port, explicit.optional) == (8080, False)
    assert len(got.forwards) == len(NON_EPHEMERAL)


# ------------------------------------------------------------ property tests

_ranges = st.tuples(st.integers(1, 65535), st.integers(0, 200)).map(
    lambda t: (t[0], min(65535, t[0] + t[1]))
)


@st.composite
def _include_specs(draw: st.DrawFn) -> tuple[str, dict[int, int]]:
    """A spec of disjoint include ranges, each maybe translated, and its port map."""
    chunks: list[str] = []
    expected: dict[int, int] = {}
    for first, last in draw(st.lists(_ranges, min_size=1, max_size=4)):
        if any(p in expected for p in range(first, last + 1)):
            continue
        listen = f"{first}-{last}" if last != first or draw(st.booleans()) else str(first)
        shift = draw(st.integers(1 - first, 65535 - last))
        if shift:
            to = f"{first + shift}-{last + shift}" if listen.count("-") else str(first + shift)
            chunks.append(f"{listen}:{to}")
        else:
            chunks.append(listen)
        expected.update({p: p + shift for p in range(first, last + 1)})
    return ",".join(chunks), expected


@settings(max_examples=200, deadline=None)
@given(_include_specs(), st.sampled_from(["", "127.0.0.1/", "::1/", "[::1]/", "*/", "%lo/"]))
def test_includes_forward_exactly_their_ports(spec_map: tuple[str, dict[int, int]],
                                              prefix: str) -> None:
    spec, expected = spec_map
    got = parse_port_spec("-t", prefix + spec).forwards
    assert {m.host_port: m.guest_port for m in got} == expected
    assert len(got) == len(expected)
    assert all(m.option == f"-t {prefix}{spec}" and not m.optional for m in got)


@settings(max_examples=100, deadline=None)
@given(_include_specs(), st.lists(_ranges, min_size=1, max_size=3))
def test_exclusions_remove_ports(spec_map: tuple[str, dict[int, int]],
                                 excluded: list[tuple[int, int]]) -> None:
    spec, expected = spec_map
    gone = {p for first, last in excluded for p in range(first, last + 1)}
    text = spec + "".join(f",~{first}-{last}" for first, last in excluded)
    got = parse_port_spec("-u", text).forwards
    assert {m.host_port: m.guest_port for m in got} == {
        p: q for p, q in expected.items() if p not in gone
    }


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789-:,~/.[]%*alutonex", max_size=20))
def test_any_text_parses_or_fails_in_one_line(spec: str) -> None:
    try:
        parse_port_spec("-t", spec, PortContext(ephemeral=(1, 65535)))
    except PortSpecError as e:
        assert "\n" not in str(e) and str(e)
