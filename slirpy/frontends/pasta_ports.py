"""pasta's port-forwarding specs (-t/-u/-T/-U): the grammar and what it asks for.

This module owns turning each `-t`/`-u`/`-T`/`-U` argument of pasta's command
line into the daemon's port options: `PortMapping`s (host → guest, -t/-u),
`HostLoopbackForward`s (namespace loopback → host loopback, -T/-U) and
`AutoForward`s (`auto`), with pasta's rules for combining several options
(they accumulate; `-X none` after another spec of the same option is an
error; an absent option means `auto`). The grammar, as in passt.1:

    none
    [ADDR][%IFNAME]/PORTS    or    PORTS
    PORTS := CHUNK[,CHUNK]...
    CHUNK := FIRST[-LAST][:[TOADDR/]TOFIRST[-TOLAST]]   include (equal lengths)
           | FIRST[-LAST]:TOADDR                         include, to that address
           | ~FIRST[-LAST]                               exclude
           | all[:TOADDR]                                all non-ephemeral ports
           | auto                                        only ports bound there

ADDR and TOADDR are IPv4 or IPv6, brackets optional (`::1/80`, `[::1]/80`);
`*` or nothing before `%` or `/` means any address. Specs made only of
exclusions (or `all`) cover every non-ephemeral port, and a port of those that
cannot be bound is skipped (`optional`), as in pasta.

The ephemeral range is a parameter (`PortContext.ephemeral`, default Linux's
32768-60999): the caller reads /proc/sys/net/ipv4/ip_local_port_range.

It must not do I/O or bind anything (slirpy.control.sharedports does).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv6Address
from typing import Literal, NamedTuple

from slirpy.config import IFNAMSIZ, ConfigError
from slirpy.options import AutoForward, HostLoopbackForward, PortMapping

__all__ = [
    "DEFAULT_EPHEMERAL",
    "PORT_OPTIONS",
    "PortContext",
    "PortForwards",
    "PortSpecError",
    "parse_port_options",
    "parse_port_spec",
]

# Linux's default net.ipv4.ip_local_port_range.
DEFAULT_EPHEMERAL = (32768, 60999)
MAX_PORT = 65535
# The short option of each port option, and what it forwards.
PORT_OPTIONS: dict[str, tuple[Literal["tcp", "udp"], Literal["in", "out"]]] = {
    "-t": ("tcp", "in"),
    "-u": ("udp", "in"),
    "-T": ("tcp", "out"),
    "-U": ("udp", "out"),
}

_V6_CHARS = frozenset("0123456789abcdefABCDEF:.")
_V4_CHARS = frozenset("0123456789.")
# What ends an interface name in `%IFNAME/` (pasta: anything but '/' or space).
_IFNAME_END = frozenset("/ \f\n\r\t\v")

Addr = IPv4Address | IPv6Address


class PortSpecError(ConfigError):
    """A -t/-u/-T/-U argument is malformed or cannot be honoured."""


# NamedTuples and a plain class, not dataclasses: this module is imported at
# every start, and a frozen dataclass costs ~0.9 ms of code generation per
# class here (a NamedTuple ~0.1 ms; issue 17).
class PortContext(NamedTuple):
    """What the rest of pasta's command line says that port specs depend on."""

    ipv4: bool = True
    ipv6: bool = True
    tcp: bool = True
    udp: bool = True
    # -t: loopback clients take the spliced path (off with --no-splice).
    splice_loopback: bool = True
    # First and last port of the host's ephemeral range (inclusive).
    ephemeral: tuple[int, int] = DEFAULT_EPHEMERAL


class PortForwards(NamedTuple):
    """The port options of one daemon, as DaemonOptions' fields want them."""

    forwards: tuple[PortMapping, ...] = ()
    loopback_forwards: tuple[HostLoopbackForward, ...] = ()
    auto_forwards: tuple[AutoForward, ...] = ()


class _Include(NamedTuple):
    first: int
    last: int
    target: Addr | None
    to_first: int


class _Chunks:
    __slots__ = ("all_seen", "all_target", "auto", "excluded", "includes")

    def __init__(self, includes: list[_Include], excluded: set[int]) -> None:
        self.includes = includes
        self.excluded = excluded
        self.auto = False
        self.all_seen = False
        self.all_target: Addr | None = None


# ------------------------------------------------------------------ lexing


def _ip(text: str, chars: frozenset[str]) -> Addr | None:
    """`text` as an address of the family `chars` allows, else None."""
    if not text or not set(text) <= chars:
        return None
    try:
        addr: Addr = IPv6Address(text) if ":" in text else IPv4Address(text)
    except ValueError:
        return None
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _take_addr(text: str, pos: int) -> tuple[Addr, int] | None:
    """An address at `pos` (bracketed or not) and the position after it."""
    if text.startswith("[", pos):
        end = text.find("]", pos)
        if end < 0:
            return None
        addr = _ip(text[pos + 1 : end], _V6_CHARS)
        return (addr, end + 1) if addr is not None else None
    for chars in (_V6_CHARS, _V4_CHARS):
        end = pos
        while end < len(text) and text[end] in chars:
            end += 1
        addr = _ip(text[pos:end], chars)
        if addr is not None:
            return addr, end
    return None


def _take_ifname(text: str, pos: int) -> tuple[str | None, int] | None:
    """An optional `%IFNAME` at `pos`; None if it is malformed."""
    if not text.startswith("%", pos):
        return None, pos
    end = pos + 1
    while end < len(text) and text[end] not in _IFNAME_END:
        end += 1
    name = text[pos + 1 : end]
    if not name or len(name.encode()) >= IFNAMSIZ or name in (".", ".."):
        return None
    return name, end


def _split_listen(spec: str) -> tuple[Addr | None, str | None, str, bool]:
    """(address, interface, ports, had a `.../` prefix) of a spec."""
    taken = _take_addr(spec, 0)
    if taken is not None:
        addr, pos = taken
        iface = _take_ifname(spec, pos)
        if iface is not None and spec.startswith("/", iface[1]):
            return addr, iface[0], spec[iface[1] + 1 :], True
    pos = 1 if spec.startswith("*") else 0
    iface = _take_ifname(spec, pos)
    if iface is not None and spec.startswith("/", iface[1]):
        return None, iface[0], spec[iface[1] + 1 :], True
    return None, None, spec, False


def _range(text: str, where: str) -> tuple[int, int]:
    """`FIRST[-LAST]` as (first, last); `where` names the spec in errors."""
    first_text, dash, last_text = text.partition("-")
    for part in (first_text, last_text) if dash else (first_text,):
        if not (part.isascii() and part.isdigit()):
            raise PortSpecError(f"{where}: {text!r} is not a port or a FIRST-LAST range")
    first = int(first_text, 10)
    last = int(last_text, 10) if dash else first
    if first > MAX_PORT or last > MAX_PORT:
        raise PortSpecError(f"{where}: port numbers go up to {MAX_PORT}, got {text!r}")
    if first == 0:
        raise PortSpecError(f"{where}: port 0 cannot be forwarded")
    if last < first:
        raise PortSpecError(f"{where}: range {text!r} ends before it starts")
    return first, last


def _target_addr(text: str, where: str) -> Addr:
    addr = _ip(text.removeprefix("[").removesuffix("]"), _V6_CHARS)
    if addr is None or addr.is_multicast or addr.is_unspecified:
        raise PortSpecError(f"{where}: invalid target address {text!r}")
    return addr


def _include(chunk: str, where: str) -> _Include:
    """`FIRST[-LAST][:[TOADDR/]TOFIRST[-TOLAST]]` or `FIRST[-LAST]:TOADDR`."""
    listen, colon, target = chunk.partition(":")
    first, last = _range(listen, where)
    if not colon:
        return _Include(first, last, None, first)
    taken = _take_addr(target, 0)
    if taken is not None and taken[1] == len(target):
        return _Include(first, last, _target_addr(target, where), first)
    if taken is not None and target.startswith("/", taken[1]):
        addr = _target_addr(target[: taken[1]], where)
        to_text = target[taken[1] + 1 :]
    else:
        addr, to_text = None, target
    to_first, to_last = _range(to_text, where)
    if to_last - to_first != last - first:
        raise PortSpecError(
            f"{where}: target range {to_text!r} and {listen!r} differ in length"
        )
    return _Include(first, last, addr, to_first)


def _chunks(ports: str, where: str) -> _Chunks:
    out = _Chunks(includes=[], excluded=set())
    for chunk in ports.split(","):
        if chunk == "auto":
            out.auto = True
        elif chunk == "all" or chunk.startswith("all:"):
            out.all_seen = True
            if chunk != "all":
                out.all_target = _target_addr(chunk[4:], where)
        elif chunk.startswith("~"):
            first, last = _range(chunk[1:], where)
            out.excluded.update(range(first, last + 1))
        elif chunk:
            out.includes.append(_include(chunk, where))
        else:
            raise PortSpecError(f"{where}: empty entry in the port list")
    if out.all_seen and out.includes:
        raise PortSpecError(f"{where}: 'all' cannot be combined with port ranges")
    return out


# ---------------------------------------------------------------- meaning


def _listen_addr(option: str, spec: str, addr: Addr | None, ctx: PortContext) -> str:
    """The PortMapping.host_addr for a listening address: "" is both families."""
    if addr is None:
        if ctx.ipv4 and ctx.ipv6:
            return ""
        return "0.0.0.0" if ctx.ipv4 else "::"
    if addr.version == 4 and not ctx.ipv4:
        raise PortSpecError(f"{option} {spec}: IPv4 address, but IPv4 is disabled (-6)")
    if addr.version == 6 and not ctx.ipv6:
        raise PortSpecError(f"{option} {spec}: IPv6 address, but IPv6 is disabled (-4)")
    return str(addr)


def _check_target(option: str, spec: str, host_addr: str, target: Addr | None) -> None:
    if target is None:
        return
    if not host_addr:
        any_addr = "0.0.0.0" if target.version == 4 else "[::]"
        raise PortSpecError(
            f"{option} {spec}: a forward from both families to IPv{target.version} "
            f"address {target} is not possible; did you mean {any_addr}/... ?"
        )
    if (6 if ":" in host_addr else 4) != target.version:
        raise PortSpecError(
            f"{option} {spec}: cannot forward from {host_addr} to {target} "
            "(the address families differ)"
        )


def _ephemeral(ctx: PortContext) -> frozenset[int]:
    start, end = ctx.ephemeral
    return frozenset(range(start, end + 1))


def parse_port_spec(option: str, spec: str, ctx: PortContext | None = None) -> PortForwards:
    """One `-t`/`-u`/`-T`/`-U` argument as the forwards it asks for.

    `none` is no forwards. Raises PortSpecError (one line naming the option
    and the spec) on malformed input or on something slirpy cannot do.
    """
    ctx = ctx or PortContext()
    proto, direction = PORT_OPTIONS[option]
    text = f"{option} {spec}"
    where = f"invalid port spec '{text}'"
    if spec == "none":
        return PortForwards()
    addr, ifname, ports, prefixed = _split_listen(spec)
    if direction == "out" and prefixed:
        raise PortSpecError(f"Listening address not allowed for {text}")
    host_addr = _listen_addr(option, spec, addr, ctx)
    parsed = _chunks(ports, where)
    excluded = parsed.excluded
    weak = not parsed.includes
    if weak:
        # Only exclusions (or `all`, or `auto`): every non-ephemeral port.
        excluded = excluded | _ephemeral(ctx)
        targets: Iterable[_Include] = [_Include(1, MAX_PORT, parsed.all_target, 1)]
    else:
        targets = parsed.includes

    if parsed.auto:
        return PortForwards(auto_forwards=(
            _auto(text, proto, direction, host_addr, ifname, parsed, excluded),
        ))
    if direction == "out":
        loop = tuple(
            HostLoopbackForward(proto, port, port - inc.first + inc.to_first, option=text,
                                optional=weak)
            for inc in targets
            if _no_target(text, inc)
            for port in range(inc.first, inc.last + 1)
            if port not in excluded
        )
        return PortForwards(loopback_forwards=loop)
    maps = []
    splice_loopback = proto == "tcp" and ctx.splice_loopback
    for inc in targets:
        _check_target(option, spec, host_addr, inc.target)
        guest_addr = None if inc.target is None else str(inc.target)
        maps.extend(
            PortMapping(proto, host_addr, port, port - inc.first + inc.to_first,
                        guest_addr=guest_addr, bind_device=ifname, optional=weak,
                        splice_loopback=splice_loopback, option=text)
            for port in range(inc.first, inc.last + 1)
            if port not in excluded
        )
    return PortForwards(forwards=tuple(maps))


def _no_target(text: str, inc: _Include) -> bool:
    if inc.target is not None:
        raise PortSpecError(
            f"{text}: a target address is not supported by slirpy-pasta for -T/-U "
            "(they always forward to the host's loopback)"
        )
    return True


def _auto(text: str, proto: Literal["tcp", "udp"], direction: Literal["in", "out"],
          host_addr: str, ifname: str | None, parsed: _Chunks,
          excluded: frozenset[int] | set[int]) -> AutoForward:
    """`auto`, possibly limited to some ranges: an AutoForward."""
    if ifname is not None:
        raise PortSpecError(f"{text}: %IFNAME with 'auto' is not supported by slirpy-pasta")
    if parsed.all_target is not None or any(
        inc.target is not None or inc.to_first != inc.first for inc in parsed.includes
    ):
        raise PortSpecError(
            f"{text}: 'auto' with a target address or port is not supported by slirpy-pasta"
        )
    if parsed.includes:
        wanted = {p for inc in parsed.includes for p in range(inc.first, inc.last + 1)}
        excluded = set(range(1, MAX_PORT + 1)) - (wanted - excluded)
    # -T/-U listen on the namespace's loopback: no address of their own.
    return AutoForward(proto, direction, excluded=frozenset(excluded),
                       host_addr=(host_addr or None) if direction == "in" else None)


# --------------------------------------------------------------- combining


def _overlap(a: str, b: str) -> bool:
    """Whether two listening addresses ("" = both families' any) share sockets."""
    if a == b or not a or not b:
        return True
    fam_a, fam_b = (6 if ":" in a else 4), (6 if ":" in b else 4)
    return fam_a == fam_b and (a in ("0.0.0.0", "::") or b in ("0.0.0.0", "::"))


def _merge_forwards(maps: Iterable[PortMapping]) -> tuple[PortMapping, ...]:
    """Reject two explicit forwards of one port; explicit ones beat `all`'s."""
    explicit: dict[tuple[str, int], list[PortMapping]] = {}
    weak: list[PortMapping] = []
    for m in maps:
        if m.optional:
            weak.append(m)
            continue
        same = explicit.setdefault((m.proto, m.host_port), [])
        for other in same:
            if _overlap(other.host_addr, m.host_addr) and other.bind_device == m.bind_device:
                raise PortSpecError(
                    f"Forwarding configuration conflict: '{other.option}' versus "
                    f"'{m.option}' (port {m.host_port}/{m.proto})"
                )
        same.append(m)
    kept = [m for same in explicit.values() for m in same]
    seen: set[tuple[str, str, int, str | None]] = set()
    for m in weak:
        key = (m.proto, m.host_addr, m.host_port, m.bind_device)
        clash = any(_overlap(o.host_addr, m.host_addr)
                    for o in explicit.get((m.proto, m.host_port), ()))
        if key not in seen and not clash:
            seen.add(key)
            kept.append(m)
    return tuple(kept)


def _merge_loopback(fwds: Iterable[HostLoopbackForward]) -> tuple[HostLoopbackForward, ...]:
    explicit: dict[tuple[str, int], HostLoopbackForward] = {}
    weak: dict[tuple[str, int], HostLoopbackForward] = {}
    for f in fwds:
        key = (f.proto, f.ns_port)
        if f.optional:
            weak.setdefault(key, f)
        elif key in explicit:
            raise PortSpecError(
                f"Forwarding configuration conflict: '{explicit[key].option}' versus "
                f"'{f.option}' (port {f.ns_port}/{f.proto})"
            )
        else:
            explicit[key] = f
    return tuple(explicit.values()) + tuple(f for k, f in weak.items() if k not in explicit)


def parse_port_options(
    specs: Sequence[tuple[str, str]], ctx: PortContext | None = None
) -> PortForwards:
    """All port options of one command line, `(option, spec)` in argv order.

    Specs accumulate; `-X none` after another spec of the same option is an
    error (pasta 2026_05_07+); an option never given means `auto` (pasta's
    default) unless its protocol is disabled (--no-tcp/--no-udp).
    """
    ctx = ctx or PortContext()
    given: dict[str, list[str]] = {opt: [] for opt in PORT_OPTIONS}
    parts: list[PortForwards] = []
    for option, spec in specs:
        proto, _ = PORT_OPTIONS[option]
        if spec == "none":
            if given[option]:
                raise PortSpecError(f"{option} none conflicts with previous options")
        elif not (ctx.tcp if proto == "tcp" else ctx.udp):
            name = proto.upper()
            raise PortSpecError(
                f"{name} port forwarding requested ({option} {spec}) but {name} is "
                f"disabled (--no-{proto})"
            )
        else:
            given[option].append(spec)
        parts.append(parse_port_spec(option, spec, ctx))
    mentioned = {option for option, _ in specs}
    for option, (proto, _) in PORT_OPTIONS.items():
        if option not in mentioned and (ctx.tcp if proto == "tcp" else ctx.udp):
            parts.append(parse_port_spec(option, "auto", ctx))
    return PortForwards(
        forwards=_merge_forwards(m for p in parts for m in p.forwards),
        loopback_forwards=_merge_loopback(f for p in parts for f in p.loopback_forwards),
        auto_forwards=tuple(a for p in parts for a in p.auto_forwards),
    )
