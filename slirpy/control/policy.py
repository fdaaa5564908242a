"""The egress policy: what a guest may reach, as a model, a file format and a table.

This module owns:

* the model: `Policy` (ordered `Rule`s, first match wins, then `default`)
  and the named destination sets (`private`, `link-local`, `loopback`,
  `multicast`, `host`);
* reading it: `load_policy(spec)` (a preset name or a TOML file, stdlib
  `tomllib`), `parse_policy_text()` and `policy_from_dict()` (the API's JSON
  form is the TOML file's structure), each raising `ConfigError` with one
  line, `policy FILE:LINE: what is wrong`;
* the presets (`PRESETS`: public-only, host-only, none, allow-all);
* compiling a policy into the engine's flat table (`compile_policy`: one
  `CompiledRule` per CIDR x port range, each carrying its user rule's index
  as rule_id; `apply_policy` hands it to an engine);
* two pure-Python matchers used by tests: `Policy.verdict` on the model and
  `evaluate_compiled` on the table (they must always agree);
* what the daemon shows: `format_denial` (one log line per denied flow),
  `DenialLog` (at most one line per destination per interval) and
  `policy_stats` (per-rule hits, denied flows).

It must not import the engine (the front ends parse policies before
anything starts, and must stay fast) nor do I/O beyond reading the policy
file in `load_policy`. Enforcement is the engine's (csrc), at flow creation.

CIDRs are strict: an address with host bits set under its prefix
(`10.0.0.1/8`) is an error, since it is more likely a typo than a wish to
name the whole network. A plain address is a /32 or /128.
"""

from __future__ import annotations

import ipaddress
import re
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, TypeAlias

from slirpy.config import ConfigError

__all__ = [
    "ACTION_ALLOW",
    "ACTION_DENY",
    "DEFAULT_RULE_ID",
    "MATCH_CIDR",
    "MATCH_HOST",
    "NAMED_SETS",
    "PORTS_ANY",
    "PP_ICMP",
    "PP_TCP",
    "PP_UDP",
    "PRESETS",
    "CompiledRule",
    "DenialLog",
    "Destination",
    "Policy",
    "Rule",
    "apply_policy",
    "compile_policy",
    "evaluate_compiled",
    "format_denial",
    "load_policy",
    "parse_policy_text",
    "policy_from_dict",
    "policy_stats",
]

Action: TypeAlias = Literal["allow", "deny"]
Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

# The engine's interface (csrc/slirpy.h), mirrored so that this module needs
# no engine: enum sl_policy_action, sl_policy_proto, sl_policy_match.
ACTION_ALLOW: Final = 1
ACTION_DENY: Final = 2
PP_TCP: Final = 1
PP_UDP: Final = 2
PP_ICMP: Final = 4
MATCH_CIDR: Final = 0
MATCH_HOST: Final = 1
# The rule id of a denial event when the default action denied.
DEFAULT_RULE_ID: Final = 0xFFFFFFFF
# A rule without `ports` covers every port (and ICMP, which has none).
PORTS_ANY: Final = (0, 65535)

PROTO_BITS: Final = {"tcp": PP_TCP, "udp": PP_UDP, "icmp": PP_ICMP}
HOST: Final = "host"

NAMED_SETS: Final[Mapping[str, tuple[str, ...]]] = {
    "private": ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"),
    "link-local": ("169.254.0.0/16", "fe80::/10"),
    # A guest cannot reach these directly (the engine never connects a
    # guest's flow to the host's loopback but through `host`); the name is
    # allowed so that a policy may say it anyway.
    "loopback": ("127.0.0.0/8", "::1/128"),
    "multicast": ("224.0.0.0/4", "ff00::/8"),
}

_TOP_KEYS: Final = ("default", "rule")
_RULE_KEYS: Final = ("action", "to", "proto", "ports")
_ACTIONS: Final = ("allow", "deny")


# ----------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Rule:
    """One rule: `action` for destinations in `to` (normalised CIDRs and set
    names), for `proto` (empty: any) and `ports` (inclusive ranges; empty:
    any). `line` is where it starts in its file (0 when it has none)."""

    action: Action
    to: tuple[str, ...]
    proto: tuple[str, ...] = ()
    ports: tuple[tuple[int, int], ...] = ()
    line: int = field(default=0, compare=False)

    def networks(self) -> list[Network]:
        """`to` as networks, named sets expanded (`host` is not a network)."""
        out: list[Network] = []
        for item in self.to:
            if item == HOST:
                continue
            out += [ipaddress.ip_network(c) for c in NAMED_SETS.get(item, (item,))]
        return out

    def matches(self, dest: Destination) -> bool:
        """The reference matcher: written from the rule's meaning, not the table."""
        if self.proto:
            if dest.proto not in self.proto:
                return False
        elif self.ports and dest.proto == "icmp":
            return False  # ports only ever apply to TCP and UDP
        if self.ports and not any(lo <= dest.port <= hi for lo, hi in self.ports):
            return False
        # A flow to the host is still a flow to the address the guest used:
        # `host` names it, and so does a CIDR holding that address.
        if dest.host and HOST in self.to:
            return True
        return any(dest.addr in n for n in self.networks())

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"action": self.action, "to": list(self.to)}
        if self.proto:
            out["proto"] = list(self.proto)
        if self.ports:
            out["ports"] = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.ports]
        return out

    def describe(self) -> str:
        """`deny to private, host (tcp 22,80-90)`, as log lines show it."""
        text = f"{self.action} to {', '.join(self.to)}"
        extra = " ".join(self.proto)
        if self.ports:
            ports = ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.ports)
            extra = f"{extra} {ports}".strip()
        return f"{text} ({extra})" if extra else text


@dataclass(frozen=True)
class Destination:
    """What a new flow asks for: `addr` (the destination as the guest sent
    it), `proto` (tcp, udp or icmp), `port` (0 for ICMP) and `host`: the
    engine's address map sends it to the host itself (the host-loopback
    mapping, `--map-guest-addr`)."""

    addr: Address
    proto: str
    port: int = 0
    host: bool = False


@dataclass(frozen=True)
class Policy:
    """Ordered rules, first match wins, then `default`. `name` says where it
    came from (a preset's name or a file's path), for messages."""

    rules: tuple[Rule, ...] = ()
    default: Action = "allow"
    name: str = field(default="", compare=False)

    def verdict(self, dest: Destination) -> tuple[Action, int | None]:
        """(action, index of the matching rule or None for the default)."""
        for i, rule in enumerate(self.rules):
            if rule.matches(dest):
                return rule.action, i
        return self.default, None

    def to_json(self) -> dict[str, object]:
        """The policy in the API's form (the TOML file's structure)."""
        return {"default": self.default, "rule": [r.to_json() for r in self.rules]}


def _preset(name: str, default: Action, *rules: Rule) -> Policy:
    return Policy(tuple(rules), default, name)


PRESETS: Final[Mapping[str, Policy]] = {
    # 0.0.0.0/8 and the IPv4-mapped IPv6 range are denied too: through a host
    # socket they reach the host itself and IPv4 addresses a v4 rule would
    # have denied.
    "public-only": _preset(
        "public-only", "allow",
        Rule("deny", ("private", "link-local", "loopback", "multicast", HOST,
                      "0.0.0.0/8", "::ffff:0:0/96")),
    ),
    # DNS through slirpy's forwarder is not an outbound flow: it still works.
    "host-only": _preset("host-only", "deny", Rule("allow", (HOST,))),
    "none": _preset("none", "deny"),
    "allow-all": _preset("allow-all", "allow"),
}


# ------------------------------------------------------------------------ reading


class _Source:
    """Where things are in a policy's TOML text, for error messages.

    tomllib gives no positions for values, so the lines are found by
    scanning: the N-th `[[rule]]` header, then a `key =` line up to the next
    header. An inline form (`rule = [{...}]`) falls back to its `rule` line.
    """

    _HEADER = re.compile(r"^\s*\[")
    _RULE_HEADER = re.compile(r"^\s*\[\[\s*rule\s*\]\]")

    def __init__(self, name: str, text: str | None) -> None:
        self.name = name
        self.lines = text.splitlines() if text is not None else None

    def _key_line(self, key: str, start: int, end: int) -> int:
        assert self.lines is not None
        pat = re.compile(rf"^\s*(\"?){re.escape(key)}\1\s*=")
        for i in range(start, end):
            if pat.match(self.lines[i]):
                return i + 1
        return 0

    def _rule_span(self, index: int) -> tuple[int, int] | None:
        assert self.lines is not None
        headers = [i for i, ln in enumerate(self.lines) if self._RULE_HEADER.match(ln)]
        if index >= len(headers):
            return None
        start = headers[index]
        end = next(
            (i for i in range(start + 1, len(self.lines)) if self._HEADER.match(self.lines[i])),
            len(self.lines),
        )
        return start, end

    def table_line(self, name: str) -> int:
        """The line of a `[name]` header (a table where an array was meant)."""
        if self.lines is None:
            return 0
        pat = re.compile(rf"^\s*\[\s*{re.escape(name)}\s*\]")
        return next((i + 1 for i, ln in enumerate(self.lines) if pat.match(ln)), 0)

    def top_line(self, key: str) -> int:
        if self.lines is None:
            return 0
        first = next(
            (i for i, ln in enumerate(self.lines) if self._HEADER.match(ln)), len(self.lines)
        )
        return self._key_line(key, 0, first)

    def rule_line(self, index: int, key: str | None = None) -> int:
        if self.lines is None:
            return 0
        span = self._rule_span(index)
        if span is None:
            return self.top_line("rule")
        if key is not None:
            line = self._key_line(key, span[0] + 1, span[1])
            if line:
                return line
        return span[0] + 1

    def error(self, line: int, text: str) -> ConfigError:
        where = f"{self.name}:{line}" if line else self.name
        return ConfigError(f"policy {where}: {text}")


def _quote(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _as_list(value: object) -> list[object] | None:
    """A TOML array, or one value standing for an array of one; None if neither."""
    if isinstance(value, list):
        return value
    if isinstance(value, str | int) and not isinstance(value, bool):
        return [value]
    return None


def _parse_dest(item: object) -> str:
    """A normalised CIDR or a set name; ValueError with the reason."""
    if not isinstance(item, str):
        raise ValueError(f"bad destination {_quote(item)}: expected a CIDR or a set name")
    if item in NAMED_SETS or item == HOST:
        return item
    if "%" in item:
        raise ValueError(f"bad CIDR {_quote(item)}: scoped addresses are not allowed")
    try:
        net = ipaddress.ip_network(item, strict=False)
    except ValueError:
        names = ", ".join([*NAMED_SETS, HOST])
        raise ValueError(
            f"bad CIDR {_quote(item)}: not an address, a CIDR or a set name ({names})"
        ) from None
    if net.network_address != ipaddress.ip_interface(item).ip:
        raise ValueError(f"bad CIDR {_quote(item)}: host bits set (did you mean {net}?)")
    return str(net)


def _parse_port(text: str, item: object) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise ValueError(f"bad port {_quote(item)}: ports are 1..65535")
    return int(text)


def _parse_ports(item: object) -> tuple[int, int]:
    """`22`, `"22"` or `"1000-2000"`; ValueError with the reason."""
    if isinstance(item, int) and not isinstance(item, bool):
        text = str(item)
    elif isinstance(item, str):
        text = item.strip()
    else:
        raise ValueError(f'bad port {_quote(item)}: expected "PORT" or "LOW-HIGH"')
    if not text:
        raise ValueError('empty port range "": expected "PORT" or "LOW-HIGH"')
    lo_text, dash, hi_text = text.partition("-")
    lo = _parse_port(lo_text.strip(), item)
    hi = _parse_port(hi_text.strip(), item) if dash else lo
    if hi < lo:
        raise ValueError(f"empty port range {_quote(item)}: {lo} is above {hi}")
    return lo, hi


def _parse_rule(raw: object, index: int, src: _Source) -> Rule:
    num = index + 1

    def fail(key: str | None, text: str) -> ConfigError:
        return src.error(src.rule_line(index, key), f"rule {num}: {text}")

    if not isinstance(raw, dict):
        raise fail(None, "a rule must be a table ([[rule]])")
    for key in raw:
        if key not in _RULE_KEYS:
            raise fail(key, f"unknown key {_quote(key)} (rules take {', '.join(_RULE_KEYS)})")

    action = raw.get("action")
    if action is None:
        raise fail(None, 'no action (action = "allow" or "deny")')
    if action not in _ACTIONS:
        raise fail("action", f'bad action {_quote(action)}: expected "allow" or "deny"')

    if "to" not in raw:
        raise fail(None, 'no destinations (to = ["CIDR" or set name, ...])')
    to_items = _as_list(raw["to"])
    if to_items is None:
        raise fail("to", "to must be a list of CIDRs and set names")
    if not to_items:
        raise fail("to", "to is empty (a rule must name at least one destination)")
    try:
        to = tuple(dict.fromkeys(_parse_dest(x) for x in to_items))
    except ValueError as e:
        raise fail("to", str(e)) from None

    proto: tuple[str, ...] = ()
    if "proto" in raw:
        items = _as_list(raw["proto"])
        if items is None or not items:
            raise fail("proto", 'proto must be a non-empty list of "tcp", "udp", "icmp"')
        for p in items:
            if p not in PROTO_BITS:
                raise fail("proto", f'bad protocol {_quote(p)}: expected "tcp", "udp" or "icmp"')
        proto = tuple(dict.fromkeys(str(p) for p in items))

    ports: tuple[tuple[int, int], ...] = ()
    if "ports" in raw:
        items = _as_list(raw["ports"])
        if items is None or not items:
            raise fail("ports", 'ports must be a non-empty list of "PORT" or "LOW-HIGH"')
        try:
            ports = tuple(dict.fromkeys(_parse_ports(p) for p in items))
        except ValueError as e:
            raise fail("ports", str(e)) from None
        if "icmp" in proto:
            # ICMP has no ports: a rule mixing both would mean two things.
            raise fail("ports", "ports do not apply to icmp (write a separate icmp rule)")

    return Rule(action, to, proto, ports, src.rule_line(index))


def _from_dict(data: Mapping[str, Any], src: _Source) -> Policy:
    for key in data:
        if key not in _TOP_KEYS:
            hint = " (write rules as [[rule]])" if key in _RULE_KEYS else ""
            raise src.error(
                src.top_line(key),
                f"unknown key {_quote(key)} (a policy has default and [[rule]]){hint}",
            )
    default = data.get("default", "allow")
    if default not in _ACTIONS:
        raise src.error(
            src.top_line("default"), f'bad default {_quote(default)}: expected "allow" or "deny"'
        )
    raw_rules = data.get("rule", [])
    if not isinstance(raw_rules, list):
        raise src.error(src.top_line("rule") or src.table_line("rule"),
                        "rule must be an array of tables: write [[rule]]")
    rules = tuple(_parse_rule(r, i, src) for i, r in enumerate(raw_rules))
    return Policy(rules, default, src.name)


def policy_from_dict(data: object, name: str = "<api>") -> Policy:
    """A policy from its JSON form (the TOML file's structure); ConfigError."""
    src = _Source(name, None)
    if not isinstance(data, dict):
        raise src.error(0, "a policy must be an object with default and rule")
    return _from_dict(data, src)


def parse_policy_text(text: str, name: str) -> Policy:
    """A policy from TOML text; `name` (its path) is in the error messages."""
    src = _Source(name, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # "Invalid value (at line 3, column 7)": the position becomes ours.
        msg = str(e)
        m = re.search(r"\s*\(at line (\d+), column \d+\)$", msg)
        line = int(m.group(1)) if m else 0
        if m:
            msg = msg[: m.start()]
        elif "(at end of document)" in msg:
            line = max(1, len(src.lines or ()))
            msg = msg.replace(" (at end of document)", "")
        raise src.error(line, f"TOML syntax error: {msg}") from None
    return _from_dict(data, src)


def load_policy(spec: str) -> Policy:
    """`--policy=SPEC`: a preset's name, else the path of a TOML file."""
    if spec in PRESETS:
        return PRESETS[spec]
    if not spec:
        raise ConfigError("--policy must not be empty (a preset name or a file)")
    try:
        with open(spec, "rb") as f:
            raw = f.read()
    except OSError as e:
        presets = ", ".join(PRESETS)
        raise ConfigError(
            f"policy {spec}: cannot read it: {e.strerror} (not a preset either: {presets})"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"policy {spec}: not UTF-8 text") from None
    return parse_policy_text(text, spec)


# ---------------------------------------------------------------------- compiling


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One entry of the engine's table (struct sl_policy_rule). `addr` is 16
    bytes, an IPv4 address in the first 4; a `MATCH_HOST` entry has family 0."""

    rule_id: int
    match: int
    family: int
    prefix_len: int
    action: int
    proto_mask: int
    port_lo: int
    port_hi: int
    addr: bytes

    def matches(self, dest: Destination) -> bool:
        """The engine's comparison, in Python: used by tests against the model."""
        if self.proto_mask and not self.proto_mask & PROTO_BITS[dest.proto]:
            return False
        if dest.proto == "icmp":
            # ICMP has no port: only an entry for every port covers it.
            if (self.port_lo, self.port_hi) != PORTS_ANY:
                return False
        elif not self.port_lo <= dest.port <= self.port_hi:
            return False
        if self.match == MATCH_HOST:
            return dest.host
        if dest.addr.version != self.family:
            return False
        size = 4 if self.family == 4 else 16
        net = ipaddress.ip_network((self.addr[:size], self.prefix_len))
        return dest.addr in net


def _proto_mask(rule: Rule) -> int:
    if rule.proto:
        mask = 0
        for p in rule.proto:
            mask |= PROTO_BITS[p]
        return mask
    # Ports without a protocol: TCP and UDP (ICMP has no ports).
    return PP_TCP | PP_UDP if rule.ports else 0


def compile_policy(policy: Policy) -> list[CompiledRule]:
    """The flat table, in order: first match in it is first match in the policy."""
    table: list[CompiledRule] = []
    for rule_id, rule in enumerate(policy.rules):
        action = ACTION_ALLOW if rule.action == "allow" else ACTION_DENY
        mask = _proto_mask(rule)
        ports = rule.ports or (PORTS_ANY,)
        targets: list[tuple[int, int, int, bytes]] = []
        if HOST in rule.to:
            targets.append((MATCH_HOST, 0, 0, bytes(16)))
        for net in rule.networks():
            raw = net.network_address.packed.ljust(16, b"\0")
            targets.append((MATCH_CIDR, net.version, net.prefixlen, raw))
        for match, family, plen, raw in targets:
            for lo, hi in ports:
                table.append(CompiledRule(rule_id, match, family, plen, action, mask, lo, hi, raw))
    return table


def evaluate_compiled(
    table: Sequence[CompiledRule], default: Action, dest: Destination
) -> tuple[Action, int | None]:
    """First match in the table, as the engine does: (action, rule_id or None)."""
    for entry in table:
        if entry.matches(dest):
            return ("allow" if entry.action == ACTION_ALLOW else "deny"), entry.rule_id
    return default, None


class PolicyEngine(Protocol):
    """What `apply_policy` needs of slirpy.engine.Engine."""

    def set_policy(self, rules: list[Any], default_allow: bool, nids: int) -> None: ...


def engine_rules(table: Iterable[CompiledRule]) -> list[Any]:
    """The table as slirpy.engine.PolicyRule objects (imports the engine)."""
    from slirpy.engine import PolicyRule

    return [
        PolicyRule(
            rule_id=e.rule_id, match=e.match, family=e.family, prefix_len=e.prefix_len,
            action=e.action, proto_mask=e.proto_mask, port_lo=e.port_lo, port_hi=e.port_hi,
            # The engine takes the network's packed bytes (4 or 16).
            addr=e.addr[:4] if e.family == 4 else e.addr,
        )
        for e in table
    ]


def apply_policy(engine: PolicyEngine, policy: Policy) -> None:
    """Give `policy` to the engine, atomically (the engine closes the flows it
    now denies). OSError from the engine is left to the caller."""
    engine.set_policy(
        engine_rules(compile_policy(policy)),
        default_allow=policy.default == "allow",
        nids=len(policy.rules),
    )


# ------------------------------------------------------------------ what is shown


_PROTO_NAMES: Final = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}


def _endpoint(addr: object, port: int, proto: str) -> str:
    text = str(addr)
    if proto == "icmp":
        return text
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def rule_id_of(data: bytes) -> int:
    """The rule id a denial event carries (4 bytes little-endian)."""
    return int.from_bytes(data[:4], "little") if len(data) >= 4 else DEFAULT_RULE_ID


def format_denial(event: Any, policy: Policy | None, now: float | None = None) -> str:
    """One log line for a denial event (slirpy.engine.Event of EV_POLICY_DENY):
    time (UTC), protocol, source, destination and the rule that denied it."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))
    proto = _PROTO_NAMES.get(event.proto, str(event.proto))
    rid = rule_id_of(event.data)
    if rid == DEFAULT_RULE_ID:
        why = "the default (deny)"
    elif policy is not None and rid < len(policy.rules):
        why = f"rule {rid + 1}: {policy.rules[rid].describe()}"
    else:
        why = f"rule {rid + 1}"
    src = _endpoint(event.src, event.sport, proto)
    dst = _endpoint(event.dst, event.dport, proto)
    return f"{stamp} policy denied {proto} {src} -> {dst} by {why}"


class DenialLog:
    """At most one log line per destination address per `interval` seconds
    (the engine rate-limits its events too; this bounds what one scanning
    guest puts in a log). Memory is bounded: old entries are dropped."""

    def __init__(self, interval: float = 10.0, max_entries: int = 4096) -> None:
        self.interval = interval
        self.max_entries = max_entries
        self._last: dict[object, float] = {}
        self.suppressed = 0

    def should_log(self, dest: object, now: float) -> bool:
        last = self._last.get(dest)
        if last is not None and now - last < self.interval:
            self.suppressed += 1
            return False
        if len(self._last) >= self.max_entries:
            cutoff = now - self.interval
            self._last = {k: t for k, t in self._last.items() if t > cutoff}
            if len(self._last) >= self.max_entries:
                self.suppressed += 1
                return False  # a flood of fresh destinations: say nothing more now
        self._last[dest] = now
        return True


def policy_stats(policy: Policy, hits: Sequence[int]) -> dict[str, object]:
    """get_stats' "policy": per-rule hits, the default's, and denied flows."""
    per_rule = [int(h) for h in hits[: len(policy.rules)]]
    default_hits = int(hits[len(policy.rules)]) if len(hits) > len(policy.rules) else 0
    denied = sum(h for h, r in zip(per_rule, policy.rules, strict=True) if r.action == "deny")
    if policy.default == "deny":
        denied += default_hits
    return {
        "name": policy.name,
        "default": policy.default,
        "rule_hits": per_rule,
        "default_hits": default_hits,
        "denied": denied,
    }
