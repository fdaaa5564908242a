"""The egress policy's Python side (slirpy/control/policy.py) and its faces:
the file format and its one-line errors, the presets, compilation to the
engine's table, the reference matcher against the compiled table, the API's
set_policy/get_policy, the front ends' --policy, the denial log line and
the stats.

Nothing here sends traffic; the engine itself is driven with frames only,
in a private empty network namespace (see test_engine_agrees_with_reference).
"""

from __future__ import annotations

import ipaddress
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slirpy.config import ConfigError
from slirpy.control import policy as pol
from slirpy.control.api import HostFwdTable, handle_request
from slirpy.control.policy import (
    ACTION_ALLOW,
    ACTION_DENY,
    DEFAULT_RULE_ID,
    MATCH_CIDR,
    MATCH_HOST,
    PP_ICMP,
    PP_TCP,
    PP_UDP,
    PRESETS,
    DenialLog,
    Destination,
    Policy,
    Rule,
    compile_policy,
    evaluate_compiled,
    format_denial,
    load_policy,
    parse_policy_text,
    policy_from_dict,
    policy_stats,
)

REPO = pathlib.Path(__file__).resolve().parents[2]

ISSUE_EXAMPLE = """\
default = "allow"
[[rule]]
action = "deny"
to = ["203.0.113.0/24"]
proto = ["tcp"]
ports = ["25", "465-587"]
"""


def dest(addr: str, proto: str = "tcp", port: int = 80, host: bool = False) -> Destination:
    return Destination(ipaddress.ip_address(addr), proto, 0 if proto == "icmp" else port, host)


# ------------------------------------------------------------------ parsing


def test_issue_example() -> None:
    p = parse_policy_text(ISSUE_EXAMPLE, "p.toml")
    assert p == Policy(
        (Rule("deny", ("203.0.113.0/24",), ("tcp",), ((25, 25), (465, 587))),), "allow"
    )
    assert p.name == "p.toml"
    assert p.rules[0].line == 2


def test_full_file_forms() -> None:
    text = textwrap.dedent(
        """\
        # comments and blank lines are fine
        default = "deny"

        [[rule]]
        action = "allow"
        to = ["host"]

        [[rule]]
        action = "allow"
        to = ["2001:db8::/32", "198.51.100.7", "::1", "private"]
        proto = ["udp", "tcp"]
        ports = [53, "8000-8080", " 443 "]

        [[rule]]
        action = "deny"
        to = "link-local"        # one value stands for a list of one
        proto = "icmp"
        """
    )
    p = parse_policy_text(text, "f.toml")
    assert p.default == "deny"
    assert [r.line for r in p.rules] == [4, 8, 14]
    assert p.rules[1].to == ("2001:db8::/32", "198.51.100.7/32", "::1/128", "private")
    assert p.rules[1].proto == ("udp", "tcp")
    assert p.rules[1].ports == ((53, 53), (8000, 8080), (443, 443))
    assert p.rules[2] == Rule("deny", ("link-local",), ("icmp",))


def test_empty_file_allows_everything() -> None:
    p = parse_policy_text("", "e.toml")
    assert p == Policy((), "allow")
    assert p.verdict(dest("10.0.0.1")) == ("allow", None)


def test_json_form_round_trips() -> None:
    p = parse_policy_text(ISSUE_EXAMPLE, "p.toml")
    assert p.to_json() == {
        "default": "allow",
        "rule": [{"action": "deny", "to": ["203.0.113.0/24"], "proto": ["tcp"],
                  "ports": ["25", "465-587"]}],
    }
    assert policy_from_dict(json.loads(json.dumps(p.to_json()))) == p
    for preset in PRESETS.values():
        assert policy_from_dict(preset.to_json()) == preset


RULE = '[[rule]]\naction = "deny"\nto = ["10.0.0.0/8"]\n'

# (file text, the exact message for file "f.toml")
PARSE_ERRORS = [
    ("default = \n", 'policy f.toml:1: TOML syntax error: Invalid value'),
    ('a = "x"\nb = [1,\n', "policy f.toml:2: TOML syntax error: Invalid value"),
    ("[[rule]\n", "policy f.toml:1: TOML syntax error: Expected ']]' at the end of an array "
     "declaration"),
    ('default = "maybe"\n', 'policy f.toml:1: bad default "maybe": expected "allow" or "deny"'),
    ('default = "deny"\nrules = []\n',
     'policy f.toml:2: unknown key "rules" (a policy has default and [[rule]])'),
    ('action = "deny"\n', 'policy f.toml:1: unknown key "action" (a policy has default and '
     "[[rule]]) (write rules as [[rule]])"),
    ('# x\n[rule]\naction = "deny"\n',
     "policy f.toml:2: rule must be an array of tables: write [[rule]]"),
    (RULE + 'port = ["22"]\n',
     'policy f.toml:4: rule 1: unknown key "port" (rules take action, to, proto, ports)'),
    (RULE + RULE.replace('"deny"', '"block"'),
     'policy f.toml:5: rule 2: bad action "block": expected "allow" or "deny"'),
    ('[[rule]]\nto = ["10.0.0.0/8"]\n',
     'policy f.toml:1: rule 1: no action (action = "allow" or "deny")'),
    ('[[rule]]\naction = "deny"\n',
     'policy f.toml:1: rule 1: no destinations (to = ["CIDR" or set name, ...])'),
    ('[[rule]]\naction = "deny"\nto = []\n',
     "policy f.toml:3: rule 1: to is empty (a rule must name at least one destination)"),
    ('[[rule]]\naction = "deny"\nto = ["10.0.0.1/8"]\n',
     'policy f.toml:3: rule 1: bad CIDR "10.0.0.1/8": host bits set (did you mean 10.0.0.0/8?)'),
    ('[[rule]]\naction = "deny"\nto = ["fd00::1/8"]\n',
     'policy f.toml:3: rule 1: bad CIDR "fd00::1/8": host bits set (did you mean fd00::/8?)'),
    ('[[rule]]\naction = "deny"\nto = ["10.0.0.0/33"]\n',
     'policy f.toml:3: rule 1: bad CIDR "10.0.0.0/33": not an address, a CIDR or a set name '
     "(private, link-local, loopback, multicast, host)"),
    ('[[rule]]\naction = "deny"\nto = ["privat"]\n',
     'policy f.toml:3: rule 1: bad CIDR "privat": not an address, a CIDR or a set name '
     "(private, link-local, loopback, multicast, host)"),
    ('[[rule]]\naction = "deny"\nto = ["fe80::1%eth0"]\n',
     'policy f.toml:3: rule 1: bad CIDR "fe80::1%eth0": scoped addresses are not allowed'),
    ('[[rule]]\naction = "deny"\nto = [10]\n',
     "policy f.toml:3: rule 1: bad destination 10: expected a CIDR or a set name"),
    (RULE + 'proto = ["sctp"]\n',
     'policy f.toml:4: rule 1: bad protocol "sctp": expected "tcp", "udp" or "icmp"'),
    (RULE + "proto = []\n",
     'policy f.toml:4: rule 1: proto must be a non-empty list of "tcp", "udp", "icmp"'),
    (RULE + 'ports = ["2000-1000"]\n',
     'policy f.toml:4: rule 1: empty port range "2000-1000": 2000 is above 1000'),
    (RULE + 'ports = [""]\n',
     'policy f.toml:4: rule 1: empty port range "": expected "PORT" or "LOW-HIGH"'),
    (RULE + 'ports = ["0"]\n', 'policy f.toml:4: rule 1: bad port "0": ports are 1..65535'),
    (RULE + "ports = [65536]\n", "policy f.toml:4: rule 1: bad port 65536: ports are 1..65535"),
    (RULE + 'ports = ["1-2-3"]\n', 'policy f.toml:4: rule 1: bad port "1-2-3": ports are 1..65535'),
    (RULE + 'ports = ["ssh"]\n', 'policy f.toml:4: rule 1: bad port "ssh": ports are 1..65535'),
    (RULE + "ports = []\n",
     'policy f.toml:4: rule 1: ports must be a non-empty list of "PORT" or "LOW-HIGH"'),
    (RULE + 'proto = ["icmp"]\nports = ["22"]\n',
     "policy f.toml:5: rule 1: ports do not apply to icmp (write a separate icmp rule)"),
    (RULE + 'proto = ["tcp", "icmp"]\nports = ["22"]\n',
     "policy f.toml:5: rule 1: ports do not apply to icmp (write a separate icmp rule)"),
    # The line is the offending rule's even when the same key is fine in an earlier one.
    (RULE + "\n" + RULE + 'ports = ["9-1"]\n',
     'policy f.toml:8: rule 2: empty port range "9-1": 9 is above 1'),
    ('rule = [{action = "deny", to = []}]\n',
     "policy f.toml:1: rule 1: to is empty (a rule must name at least one destination)"),
]


@pytest.mark.parametrize(("text", "message"), PARSE_ERRORS)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_policy_text(text, "f.toml")
    assert str(err.value) == message
    assert "\n" not in str(err.value)


def test_json_form_errors_have_no_line() -> None:
    with pytest.raises(ConfigError, match=r"^policy <api>: rule 1: to is empty"):
        policy_from_dict({"rule": [{"action": "deny", "to": []}]})
    with pytest.raises(ConfigError, match=r"^policy <api>: a policy must be an object"):
        policy_from_dict(["deny"])
    with pytest.raises(ConfigError, match=r'^policy <api>: rule 1: a rule must be a table'):
        policy_from_dict({"rule": ["deny"]})


def test_load_policy(tmp_path: pathlib.Path) -> None:
    for name, preset in PRESETS.items():
        assert load_policy(name) is preset
    f = tmp_path / "p.toml"
    f.write_text(ISSUE_EXAMPLE)
    assert load_policy(str(f)) == parse_policy_text(ISSUE_EXAMPLE, str(f))
    with pytest.raises(ConfigError) as err:
        load_policy(str(tmp_path / "missing.toml"))
    assert str(err.value) == (
        f"policy {tmp_path}/missing.toml: cannot read it: No such file or directory "
        "(not a preset either: public-only, host-only, none, allow-all)"
    )
    f.write_bytes(b"default = \xff\n")
    with pytest.raises(ConfigError, match=r"^policy .*p.toml: not UTF-8 text$"):
        load_policy(str(f))
    with pytest.raises(ConfigError, match=r"^--policy must not be empty"):
        load_policy("")


@given(st.text(max_size=300))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_parser_raises_only_config_errors(text: str) -> None:
    try:
        parse_policy_text(text, "f.toml")
    except ConfigError as e:
        assert str(e).startswith("policy f.toml")
        assert "\n" not in str(e)


_KEYS = st.sampled_from(["action", "to", "proto", "ports", "default", "rule", "x"])
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=20)
    | st.sampled_from(["deny", "allow", "private", "host", "10.0.0.0/8", "::/0", "22", "1-9"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(_KEYS, _VALUES, max_size=4))
@settings(max_examples=300)
def test_json_form_raises_only_config_errors(data: dict[str, Any]) -> None:
    try:
        policy_from_dict(data)
    except ConfigError as e:
        assert "\n" not in str(e)


# ------------------------------------------------------------------ presets


@pytest.mark.parametrize(
    ("target", "verdict"),
    [
        (dest("10.13.0.10"), "deny"),
        (dest("172.31.255.1", "udp", 53), "deny"),
        (dest("192.168.1.1", "icmp"), "deny"),
        (dest("100.64.0.1"), "deny"),
        (dest("169.254.169.254"), "deny"),
        (dest("fd00::1"), "deny"),
        (dest("fc00::1", "udp"), "deny"),
        (dest("fe80::1", "icmp"), "deny"),
        (dest("224.0.0.251", "udp", 5353), "deny"),
        (dest("ff02::fb", "udp", 5353), "deny"),
        (dest("127.0.0.1"), "deny"),
        (dest("0.0.0.0"), "deny"),
        (dest("::ffff:203.0.113.10"), "deny"),
        (dest("203.0.113.10", host=True), "deny"),
        (dest("203.0.113.10"), "allow"),
        (dest("192.0.2.8", "udp", 53), "allow"),
        (dest("2001:db8::10", "icmp"), "allow"),
        (dest("100.128.0.1"), "allow"),
        (dest("172.32.0.1"), "allow"),
    ],
)
def test_public_only(target: Destination, verdict: str) -> None:
    assert PRESETS["public-only"].verdict(target)[0] == verdict


def test_other_presets() -> None:
    host_only, none, allow_all = PRESETS["host-only"], PRESETS["none"], PRESETS["allow-all"]
    assert host_only.verdict(dest("10.0.2.2", host=True)) == ("allow", 0)
    assert host_only.verdict(dest("fd00::2", "udp", host=True)) == ("allow", 0)
    assert host_only.verdict(dest("203.0.113.10")) == ("deny", None)
    assert none.verdict(dest("10.0.2.2", host=True)) == ("deny", None)
    assert none.verdict(dest("203.0.113.10")) == ("deny", None)
    assert allow_all.verdict(dest("169.254.169.254")) == ("allow", None)
    assert [p.name for p in PRESETS.values()] == list(PRESETS)


# -------------------------------------------------------------- compilation


def test_compile_issue_example() -> None:
    table = compile_policy(parse_policy_text(ISSUE_EXAMPLE, "p"))
    assert [(e.rule_id, e.family, e.prefix_len, e.proto_mask, e.port_lo, e.port_hi, e.action)
            for e in table] == [(0, 4, 24, PP_TCP, 25, 25, ACTION_DENY),
                                (0, 4, 24, PP_TCP, 465, 587, ACTION_DENY)]
    assert table[0].addr == bytes([203, 0, 113, 0]) + bytes(12)


def test_compile_expansion_and_ids() -> None:
    text = textwrap.dedent(
        """\
        [[rule]]
        action = "allow"
        to = ["host", "private", "2001:db8::/32"]
        ports = ["22", "80-90", "443"]
        [[rule]]
        action = "deny"
        to = ["link-local"]
        proto = ["icmp", "udp"]
        [[rule]]
        action = "deny"
        to = ["0.0.0.0/0", "::/0"]
        """
    )
    table = compile_policy(parse_policy_text(text, "p"))
    # rule 0: (1 host + 5 private + 1) x 3 ranges; rule 1: 2 x 1; rule 2: 2 x 1.
    assert [e.rule_id for e in table] == [0] * 21 + [1] * 2 + [2] * 2
    host = [e for e in table if e.match == MATCH_HOST]
    assert len(host) == 3 and all(e.family == 0 and e.addr == bytes(16) for e in host)
    assert {e.proto_mask for e in table[:21]} == {PP_TCP | PP_UDP}  # ports: TCP and UDP
    assert {(e.port_lo, e.port_hi) for e in table[:21]} == {(22, 22), (80, 90), (443, 443)}
    assert {e.proto_mask for e in table[21:23]} == {PP_ICMP | PP_UDP}
    assert all((e.port_lo, e.port_hi) == (0, 65535) for e in table[21:])
    assert table[23].proto_mask == 0 and table[23].prefix_len == 0
    v6 = [e for e in table if e.family == 6 and e.match == MATCH_CIDR]
    assert {(e.addr[:2], e.prefix_len) for e in v6} == {
        (b"\xfc\x00", 7), (b"\x20\x01", 32), (b"\xfe\x80", 10), (b"\x00\x00", 0)}
    assert {e.action for e in table} == {ACTION_ALLOW, ACTION_DENY}


def test_compile_presets() -> None:
    assert compile_policy(PRESETS["none"]) == []
    assert compile_policy(PRESETS["allow-all"]) == []
    assert [e.match for e in compile_policy(PRESETS["host-only"])] == [MATCH_HOST]
    public = compile_policy(PRESETS["public-only"])
    # private 5, link-local 2, loopback 2, multicast 2, host 1, 0/8, ::ffff:0:0/96
    assert len(public) == 14 and {e.rule_id for e in public} == {0}


# ------------------------------------------- reference vs compiled (hypothesis)

_V4_NETS = ["10.0.0.0/8", "10.13.0.0/16", "10.13.0.10/32", "203.0.113.0/24", "0.0.0.0/0",
            "169.254.169.254/32", "100.64.0.0/10", "198.51.100.0/25"]
_V6_NETS = ["fd00::/8", "2001:db8::/32", "2001:db8:13::10/128", "::/0", "fe80::/10"]
_ADDRS = ["10.13.0.10", "10.0.2.2", "169.254.169.254", "203.0.113.10", "198.51.100.200",
          "192.0.2.8", "127.0.0.1", "224.0.0.1", "100.64.1.1", "172.16.5.4",
          "fd00::2", "fd13::10", "2001:db8:13::10", "fe80::1", "ff02::1", "::1", "3fff::1",
          "::ffff:10.0.0.1"]


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    rules = []
    for _ in range(draw(st.integers(0, 6))):
        to = draw(st.lists(st.sampled_from(
            [*_V4_NETS, *_V6_NETS, *pol.NAMED_SETS, "host"]), min_size=1, max_size=4,
            unique=True))
        proto = tuple(draw(st.lists(st.sampled_from(["tcp", "udp", "icmp"]), max_size=3,
                                    unique=True)))
        ports: tuple[tuple[int, int], ...] = ()
        if "icmp" not in proto and draw(st.booleans()):
            ports = tuple(draw(st.lists(
                st.tuples(st.integers(1, 200), st.integers(0, 50)).map(
                    lambda t: (t[0], t[0] + t[1])), min_size=1, max_size=3, unique=True)))
        rules.append({"action": draw(st.sampled_from(["allow", "deny"])), "to": to,
                      **({"proto": list(proto)} if proto else {}),
                      **({"ports": [f"{lo}-{hi}" for lo, hi in ports]} if ports else {})})
    return policy_from_dict({"default": draw(st.sampled_from(["allow", "deny"])),
                             "rule": rules})


destinations = st.builds(
    lambda a, p, port, host: dest(a, p, port, host),
    st.sampled_from(_ADDRS), st.sampled_from(["tcp", "udp", "icmp"]), st.integers(0, 260),
    st.booleans(),
)


@given(policies(), st.lists(destinations, min_size=1, max_size=8))
@settings(max_examples=400)
def test_reference_and_compiled_agree(policy: Policy, targets: list[Destination]) -> None:
    table = compile_policy(policy)
    for t in targets:
        assert policy.verdict(t) == evaluate_compiled(table, policy.default, t), t


@given(policies())
@settings(max_examples=200)
def test_json_form_round_trips_any_policy(policy: Policy) -> None:
    assert policy_from_dict(json.loads(json.dumps(policy.to_json()))) == policy


# ------------------------------------------------ the API: set_policy, get_policy


class FakeForwards:
    """The forwards' ApiHandler, unused here but required."""

    def __init__(self) -> None:
        self.table = HostFwdTable()

    def add_hostfwd(self, fwd: object) -> int:
        raise AssertionError("not called")

    def list_hostfwd(self) -> list[Any]:
        return []

    def remove_hostfwd(self, fwd_id: int) -> None:
        raise KeyError(fwd_id)

    def get_stats(self) -> dict[str, object]:
        return {}

    def list_flows(self) -> list[dict[str, object]]:
        return []


@dataclass
class FakePolicy:
    """A PolicyHandler: remembers the policy; `refuse` makes the engine say no."""

    policy: Policy | None = None
    refuse: bool = False
    calls: int = 0

    def set_policy(self, policy: Policy) -> None:
        self.calls += 1
        if self.refuse:
            raise OSError(22, "Invalid argument")
        self.policy = policy

    def get_policy(self) -> Policy | None:
        return self.policy


def api(obj: object, handler: FakePolicy | None) -> dict[str, Any]:
    reply = handle_request(json.dumps(obj).encode(), FakeForwards(),
                           default_guest_addr="10.0.2.100", policy=handler)
    return json.loads(reply)


def test_api_get_policy_before_any() -> None:
    assert api({"execute": "get_policy"}, FakePolicy()) == {
        "return": {"name": None, "policy": {"default": "allow", "rule": []}}}


@pytest.mark.parametrize(
    "arguments",
    [
        {"preset": "public-only"},
        {"policy": PRESETS["public-only"].to_json()},
        {"toml": 'default = "allow"\n[[rule]]\naction = "deny"\nto = ["private", "link-local", '
                 '"loopback", "multicast", "host", "0.0.0.0/8", "::ffff:0:0/96"]\n'},
    ],
)
def test_api_set_policy_forms(arguments: dict[str, object]) -> None:
    h = FakePolicy()
    assert api({"execute": "set_policy", "arguments": arguments}, h) == {"return": {}}
    assert h.policy == PRESETS["public-only"]
    got = api({"execute": "get_policy"}, h)["return"]
    assert got["policy"] == PRESETS["public-only"].to_json()
    assert got["name"] == ("public-only" if "preset" in arguments else "<api>")


@pytest.mark.parametrize(
    ("arguments", "desc"),
    [
        ({}, "bad request: set_policy: give exactly one of arguments.preset, "
             "arguments.policy, arguments.toml"),
        ({"preset": "none", "toml": ""}, "bad request: set_policy: give exactly one of "
                                         "arguments.preset, arguments.policy, arguments.toml"),
        ({"preset": "public"}, "bad request: set_policy: unknown preset 'public' (presets: "
                               "public-only, host-only, none, allow-all)"),
        ({"policy": {"default": "allow", "rule": [{"action": "deny", "to": ["10.0.0.1/8"]}]}},
         'bad request: set_policy: policy <api>: rule 1: bad CIDR "10.0.0.1/8": host bits set '
         "(did you mean 10.0.0.0/8?)"),
        ({"policy": {"rule": [{"action": "deny", "to": ["10.0.0.0/8"], "ports": ["9-1"]}]}},
         'bad request: set_policy: policy <api>: rule 1: empty port range "9-1": 9 is above 1'),
        ({"toml": '[[rule]]\naction = "deny"\nto = ["x"]\n'},
         'bad request: set_policy: policy <api>:3: rule 1: bad CIDR "x": not an address, a '
         "CIDR or a set name (private, link-local, loopback, multicast, host)"),
        ({"toml": "[[rule"}, "bad request: set_policy: policy <api>:1: TOML syntax error: "
                             "Expected ']]' at the end of an array declaration"),
        ({"toml": 5}, "bad request: set_policy: arguments.toml must be a string (the policy "
                      "file's text)"),
    ],
)
def test_api_bad_policy_changes_nothing(arguments: dict[str, object], desc: str) -> None:
    h = FakePolicy(PRESETS["host-only"])
    assert api({"execute": "set_policy", "arguments": arguments}, h) == {"error": {"desc": desc}}
    assert h.calls == 0 and h.policy is PRESETS["host-only"]


def test_api_engine_refusal_is_an_error() -> None:
    h = FakePolicy(PRESETS["host-only"], refuse=True)
    reply = api({"execute": "set_policy", "arguments": {"preset": "none"}}, h)
    assert reply == {"error": {"desc": "bad request: set_policy: Invalid argument"}}
    assert h.policy is PRESETS["host-only"]


def test_api_without_policy_handler() -> None:
    for req in ({"execute": "get_policy"},
                {"execute": "set_policy", "arguments": {"preset": "none"}}):
        assert api(req, None) == {
            "error": {"desc": "bad request: this slirpy cannot change its policy"}}


# ------------------------------------------------------- what the daemon shows


@dataclass
class Ev:
    proto: int
    src: Any
    sport: int
    dst: Any
    dport: int
    data: bytes


def test_format_denial() -> None:
    p = PRESETS["public-only"]
    ev = Ev(6, ipaddress.ip_address("10.0.2.100"), 40000, ipaddress.ip_address("10.13.0.10"),
            80, (0).to_bytes(4, "little"))
    assert format_denial(ev, p, now=0) == (
        "1970-01-01T00:00:00Z policy denied tcp 10.0.2.100:40000 -> 10.13.0.10:80 by rule 1: "
        "deny to private, link-local, loopback, multicast, host, 0.0.0.0/8, ::ffff:0:0/96"
    )
    ev6 = Ev(17, ipaddress.ip_address("fd00::100"), 5353, ipaddress.ip_address("fd13::10"),
             53, DEFAULT_RULE_ID.to_bytes(4, "little"))
    assert format_denial(ev6, PRESETS["none"], now=0).endswith(
        "denied udp [fd00::100]:5353 -> [fd13::10]:53 by the default (deny)")
    ping = Ev(1, ipaddress.ip_address("10.0.2.100"), 7, ipaddress.ip_address("192.168.1.1"), 0,
              (0).to_bytes(4, "little"))
    text = parse_policy_text(RULE.replace("10.0.0.0/8", "192.168.0.0/16") + 'proto = ["icmp"]\n',
                             "f")
    assert format_denial(ping, text, now=0).endswith(
        "denied icmp 10.0.2.100 -> 192.168.1.1 by rule 1: deny to 192.168.0.0/16 (icmp)")
    # A rule id the policy does not know (changed since): still a line.
    assert format_denial(ev, PRESETS["none"], now=0).endswith("by rule 1")


def test_denial_log_rate_limit() -> None:
    log = DenialLog(interval=10, max_entries=3)
    assert log.should_log("a", 100.0)
    assert not log.should_log("a", 105.0)
    assert log.should_log("b", 105.0)
    assert log.should_log("a", 110.0)
    assert log.should_log("c", 111.0)
    assert not log.should_log("d", 112.0)  # full of fresh entries: bounded
    assert log.should_log("d", 121.0)  # the old ones are pruned
    assert log.suppressed == 2


def test_policy_stats() -> None:
    p = Policy((Rule("allow", ("host",)), Rule("deny", ("private",))), "deny", "f")
    assert policy_stats(p, [3, 4, 5]) == {
        "name": "f", "default": "deny", "rule_hits": [3, 4], "default_hits": 5, "denied": 9}
    assert policy_stats(PRESETS["allow-all"], [7])["denied"] == 0


# ------------------------------------------------------------------ front ends


def test_slirp4netns_policy_option(tmp_path: pathlib.Path) -> None:
    from slirpy.frontends.slirp4netns import help_text, parse_slirp4netns_args

    assert parse_slirp4netns_args(["--policy=public-only", "1"]).policy is PRESETS["public-only"]
    f = tmp_path / "p.toml"
    f.write_text(ISSUE_EXAMPLE)
    assert parse_slirp4netns_args(["1", "--policy", str(f)]).policy == parse_policy_text(
        ISSUE_EXAMPLE, str(f))
    assert parse_slirp4netns_args(["1"]).policy is None
    assert "--policy=SPEC" in help_text()
    f.write_text(RULE + 'ports = ["9-1"]\n')
    with pytest.raises(ConfigError) as err:
        parse_slirp4netns_args(["--policy", str(f), "1"])
    assert str(err.value) == f'policy {f}:4: rule 1: empty port range "9-1": 9 is above 1'


def test_run_policy_option() -> None:
    from slirpy.frontends.run import parse_run_args

    assert parse_run_args(["--policy", "none", "--", "true"]).policy is PRESETS["none"]
    assert parse_run_args(["--", "true"]).policy is None
    with pytest.raises(ConfigError, match=r"^policy nope\.toml: cannot read it"):
        parse_run_args(["--policy=nope.toml", "true"])


def test_library_policy_argument(tmp_path: pathlib.Path) -> None:
    from slirpy.frontends.library import AsyncNetwork

    f = tmp_path / "p.toml"
    f.write_text(ISSUE_EXAMPLE)
    assert AsyncNetwork(policy="host-only").options.policy is PRESETS["host-only"]
    assert AsyncNetwork(policy=f).options.policy == parse_policy_text(ISSUE_EXAMPLE, str(f))
    mine = Policy((Rule("deny", ("private",)),))
    assert AsyncNetwork(policy=mine).options.policy is mine
    assert AsyncNetwork().options.policy is None
    with pytest.raises(ConfigError, match=r"^policy .*missing: cannot read it"):
        AsyncNetwork(policy=tmp_path / "missing")
    with pytest.raises(TypeError):
        AsyncNetwork(policy=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("prog", ["slirp4netns", "run"])
def test_bad_policy_exits_1_before_anything(tmp_path: pathlib.Path, prog: str) -> None:
    """One line, no ready byte, a failing exit: the policy is read before anything
    starts; exit 1 from every front end (a policy is not a malformed option,
    for which `slirpy run` exits 2)."""
    f = tmp_path / "bad.toml"
    f.write_text('default = "allow"\n[[rule]]\naction = "deny"\nto = ["10.0.0.1/8"]\n')
    rfd, wfd = os.pipe()
    try:
        if prog == "slirp4netns":
            args = ["slirp4netns", "-r", str(wfd), f"--policy={f}", str(os.getpid())]
        else:
            args = ["run", "--policy", str(f), "--", "true"]
        r = subprocess.run([sys.executable, "-m", "slirpy", *args], pass_fds=(wfd,),
                           capture_output=True, text=True, timeout=60, cwd=REPO)
        os.close(wfd)
        wfd = -1
        ready = os.read(rfd, 1)
    finally:
        os.close(rfd)
        if wfd >= 0:
            os.close(wfd)
    assert r.returncode == 1
    shown = "slirpy-slirp4netns" if prog == "slirp4netns" else "slirpy"
    assert r.stderr == (f'{shown}: policy {f}:4: rule 1: bad CIDR "10.0.0.1/8": host bits set '
                        "(did you mean 10.0.0.0/8?)\n")
    assert r.stdout == "" and ready == b""


# ------------------------------------------- the engine agrees with the reference


ENGINE_CHILD = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from tests.helpers.frames import ICMP, TCP, UDP, ip4, ip6, raw
    from tests.helpers.frames import ICMPv6EchoRequest
    from slirpy import engine as eng
    from slirpy.config import NetworkModel
    from slirpy.control.policy import apply_policy, policy_from_dict

    e = eng.Engine(NetworkModel(ipv6=True), vnet_hdr=False, offload=False)
    now = 10**9
    n = 0  # every probe is a new flow: unique source ports and echo ids
    print("ready", flush=True)
    for line in sys.stdin:  # one policy and its probes per line
        case = json.loads(line)
        policy = policy_from_dict(case["policy"])
        apply_policy(e, policy)
        got = []
        for addr, proto, port in case["dests"]:
            n += 1
            before = e.policy_hits(len(policy.rules))
            v6 = ":" in addr
            ip = ip6(addr) if v6 else ip4(addr)
            if proto == "tcp":
                l4 = TCP(sport=20000 + n % 40000, dport=port, flags="S", seq=1)
            elif proto == "udp":
                l4 = UDP(sport=20000 + n % 40000, dport=port) / b"x"
            else:
                l4 = (ICMPv6EchoRequest(id=n % 65536, seq=1) if v6
                      else ICMP(type=8, id=n % 65536, seq=1)) / b"x"
            now += 10**6
            e.input_frame(raw(ip / l4), now)
            after = e.policy_hits(len(policy.rules))
            got.append([k for k in range(len(after)) if after[k] != before[k]])
        list(e.events())
        e.take_output()
        print(json.dumps(got), flush=True)
    e.close()
    """
)

# What the engine opens as an ordinary outbound flow (not multicast, loopback
# or its own addresses), and the host mapping (N+2, prefix::2) for TCP and UDP.
# Not UDP port 67: the engine hands any DHCP request to the DHCP server.
_ENGINE_ADDRS = ["10.13.0.10", "169.254.169.254", "203.0.113.10", "198.51.100.200", "192.0.2.8",
                 "100.64.1.1", "172.16.5.4", "fd13::10", "2001:db8:13::10", "3fff::1"]
_ENGINE_PORTS = st.integers(1, 260).filter(lambda p: p != 67)
engine_destinations = st.builds(
    lambda a, p, port: dest(a, p, port), st.sampled_from(_ENGINE_ADDRS),
    st.sampled_from(["tcp", "udp", "icmp"]), _ENGINE_PORTS,
) | st.builds(
    lambda a, p, port: dest(a, p, port, host=True), st.sampled_from(["10.0.2.2", "fd00::2"]),
    st.sampled_from(["tcp", "udp"]), _ENGINE_PORTS,
)


@pytest.fixture(scope="module")
def engine_child() -> Any:
    """One engine in a child process in an empty network namespace (so that
    an allowed flow's connect() goes nowhere), fed one policy per line."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private netns")
    proc = subprocess.Popen(["unshare", "--net", sys.executable, "-c", ENGINE_CHILD, str(REPO)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


@given(policy=policies(), targets=st.lists(engine_destinations, min_size=1, max_size=8))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_engine_agrees_with_reference(
    engine_child: Any, policy: Policy, targets: list[Destination]
) -> None:
    """Random policies and destinations, framed into the engine: the rule whose
    hit counter moves is the one the reference matcher names."""
    case = {"policy": policy.to_json(), "dests": [[str(t.addr), t.proto, t.port] for t in targets]}
    engine_child.stdin.write(json.dumps(case) + "\n")
    engine_child.stdin.flush()
    line = engine_child.stdout.readline()
    assert line, "the engine child died"
    moved = json.loads(line)
    no_policy = not policy.rules and policy.default == "allow"  # nothing is looked up
    for t, hits in zip(targets, moved, strict=True):
        _, rid = policy.verdict(t)
        expect = [] if no_policy else [len(policy.rules) if rid is None else rid]
        assert hits == expect, (policy.to_json(), t)


def test_constants_mirror_the_engine() -> None:
    from slirpy import engine as eng

    assert (ACTION_ALLOW, ACTION_DENY) == (eng.POLICY_ALLOW, eng.POLICY_DENY)
    assert (PP_TCP, PP_UDP, PP_ICMP) == (eng.PP_TCP, eng.PP_UDP, eng.PP_ICMP)
    assert (MATCH_CIDR, MATCH_HOST) == (eng.PM_CIDR, eng.PM_HOST)
    assert DEFAULT_RULE_ID == eng.POLICY_DEFAULT_RULE


def test_apply_policy_hands_the_table_over() -> None:
    from slirpy import engine as eng

    calls: list[tuple[list[Any], bool, int]] = []

    class FakeEngine:
        def set_policy(self, rules: list[Any], default_allow: bool, nids: int) -> None:
            calls.append((rules, default_allow, nids))

    pol.apply_policy(FakeEngine(), PRESETS["public-only"])
    rules, default_allow, nids = calls[0]
    assert default_allow and nids == 1 and len(rules) == 14
    assert all(isinstance(r, eng.PolicyRule) for r in rules)
    assert rules[0].match == MATCH_HOST  # a rule's host entry comes first
    assert rules[1] == eng.PolicyRule(rule_id=0, action=ACTION_DENY, match=MATCH_CIDR, family=4,
                                      prefix_len=8, addr=bytes([10, 0, 0, 0]), proto_mask=0,
                                      port_lo=0, port_hi=65535)
    assert {len(r.addr) for r in rules if r.family == 6} == {16}
    pol.apply_policy(FakeEngine(), PRESETS["none"])
    assert calls[1] == ([], False, 0)


# ------------------------------------ the file and the JSON form say the same


_SCALARS = (st.booleans() | st.integers(-3, 70000)
            | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)
            | st.sampled_from(["deny", "allow", "private", "host", "icmp", "tcp", "udp",
                               "10.0.0.0/8", "10.0.0.1/8", "::/0", "22", "1-9", "9-1", ""]))
_RULE_VALUES = _SCALARS | st.lists(_SCALARS, max_size=4)
_RULE_KEYS_SHOWN = ("action", "to", "proto", "ports", "x")
_RULES = st.dictionaries(st.sampled_from(_RULE_KEYS_SHOWN), _RULE_VALUES, max_size=5)


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(v) if isinstance(v, str) else str(v)


def _toml_text(top: dict[str, object], rules: list[dict[str, object]]) -> str:
    lines = [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    for r in rules:
        lines += ["", "[[rule]]", *(f"{k} = {_toml_value(v)}" for k, v in r.items())]
    return "\n".join(lines) + "\n"


@given(st.dictionaries(st.sampled_from(["default", "y"]), _SCALARS, max_size=2),
       st.lists(_RULES, max_size=4))
@settings(max_examples=400)
def test_file_and_json_forms_agree(top: dict[str, object], rules: list[dict[str, Any]]) -> None:
    """The same policy as a TOML file and as JSON: the same policy, or the same
    error, the file's naming a line of the file that holds the offending key
    or rule."""
    text = _toml_text(top, rules)
    data: dict[str, object] = {**top, "rule": rules}
    try:
        want: Policy | str = policy_from_dict(data, "J")
    except ConfigError as e:
        want = str(e)
    try:
        got: Policy | str = parse_policy_text(text, "F")
    except ConfigError as e:
        got = str(e)
    if isinstance(want, Policy):
        assert got == want
        return
    assert isinstance(got, str), (text, want)
    prefix, _, rest = got.partition(": ")
    assert rest == want.partition(": ")[2], (text, got, want)
    line = int(prefix.split(":")[1])
    assert 1 <= line <= len(text.splitlines()), (text, got)
    shown = text.splitlines()[line - 1]
    assert shown.startswith(("[[rule]]", "default", "y", *_RULE_KEYS_SHOWN)), (text, got)

