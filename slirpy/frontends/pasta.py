"""pasta's command line (`slirpy-pasta`, `slirpy pasta`, or a `pasta` symlink): a front end.

This module owns turning pasta's argv into one `DaemonOptions` in the
shared-address model (`SharedAddressing`): getopt_long's rules as pasta
uses them (optstring `+dqfel:hs:c:F:I:...`: parsing stops at the first
non-option, bundled short options, `--opt value` and `--opt=value`, unique
prefixes of long options, `--` ends options, processed in argv order so
that `--host-lo-to-ns-lo --version` prints the version), glibc's error
wording (`PROG: unrecognized option '--x'`: Podman greps it), pasta's
targets (`--netns PATH|NAME` joins the netns only, a PID its user and
network namespaces, anything else is a command run as `slirpy run` does),
its life-cycle defaults (daemonize unless -f or a command, quit when a
joined namespace's path is removed), its `--help` and `--version` texts.
Port specs are slirpy.frontends.pasta_ports'.

Every option of pasta is either honoured or refused with one line and exit
1 (`--pcap: not supported by slirpy-pasta ...`); the deprecated no-ops
(`-e/--stderr`, `--no-copy-routes`, `--no-copy-addrs`) and the few harmless
ones slirpy has no use for (`--log-size`, `--chroot-fallback`) print one
warning line. The help text says which is which.

It must not import anything heavy at import time (the cffi engine,
asyncio, argparse, tomllib): RootlessKit runs `--version` before every start.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import TYPE_CHECKING, NoReturn

from slirpy import __version__
from slirpy.config import ConfigError, is_valid_ifname, parse_mac
from slirpy.frontends.common import UsageError, fail, run_daemon, write_stdout
from slirpy.frontends.pasta_ports import (
    DEFAULT_EPHEMERAL,
    PortContext,
    parse_port_options,
)
from slirpy.options import (
    DaemonOptions,
    JoinPath,
    JoinPid,
    NewNamespace,
    SharedAddressing,
    Target,
)

if TYPE_CHECKING:
    from slirpy.control.policy import Policy

__all__ = [
    "PROG_PASTA",
    "HelpRequested",
    "VersionRequested",
    "help_text",
    "parse_pasta_args",
    "pasta_main",
    "read_ephemeral_range",
    "version_text",
]

PROG_PASTA = "slirpy-pasta"
# pasta's optstring without the leading '+': this parser always stops at the
# first non-option.
SHORT_OPTS = "dqfel:hs:c:F:I:p:P:m:a:n:M:g:i:o:D:S:H:461t:u:T:U:"
NETNS_RUN_DIR = "/run/netns"
MAX_MTU = 65520
MIN_MTU = 68
INT_MAX = 2**31 - 1
EPHEMERAL_SYSCTL = "/proc/sys/net/ipv4/ip_local_port_range"

Addr = IPv4Address | IPv6Address


class HelpRequested(Exception):
    """`-h/--help` was reached: print `help_text()` to stdout and exit 0."""


class VersionRequested(Exception):
    """`--version` was reached: print `version_text()` to stdout and exit 0."""


# --------------------------------------------------------------- option table

# (long name, takes an argument, key): the key is the short option's letter
# where pasta has one, else the long name. pasta's own options, then passt's
# (accepted by pasta's parser, refused in pasta mode), then slirpy's.
_LONG_OPTS: tuple[tuple[str, bool, str], ...] = (
    ("debug", False, "d"),
    ("quiet", False, "q"),
    ("foreground", False, "f"),
    ("stderr", False, "e"),
    ("log-file", True, "l"),
    ("help", False, "h"),
    ("socket", True, "s"),
    ("fd", True, "F"),
    ("ns-ifname", True, "I"),
    ("pcap", True, "p"),
    ("pid", True, "P"),
    ("mtu", True, "m"),
    ("address", True, "a"),
    ("netmask", True, "n"),
    ("mac-addr", True, "M"),
    ("gateway", True, "g"),
    ("interface", True, "i"),
    ("outbound", True, "o"),
    ("dns", True, "D"),
    ("search", True, "S"),
    ("hostname", True, "H"),
    ("no-tcp", False, "no-tcp"),
    ("no-udp", False, "no-udp"),
    ("no-icmp", False, "no-icmp"),
    ("no-dhcp", False, "no-dhcp"),
    ("no-dhcpv6", False, "no-dhcpv6"),
    ("no-ndp", False, "no-ndp"),
    ("no-ra", False, "no-ra"),
    ("no-splice", False, "no-splice"),
    ("splice-only", False, "splice-only"),
    ("freebind", False, "freebind"),
    ("no-map-gw", False, "no-map-gw"),
    ("ipv4-only", False, "4"),
    ("ipv6-only", False, "6"),
    ("one-off", False, "1"),
    ("tcp-ports", True, "t"),
    ("udp-ports", True, "u"),
    ("tcp-ns", True, "T"),
    ("udp-ns", True, "U"),
    ("userns", True, "userns"),
    ("netns", True, "netns"),
    ("ns-mac-addr", True, "ns-mac-addr"),
    ("dhcp-dns", False, "dhcp-dns"),
    ("no-dhcp-dns", False, "no-dhcp-dns"),
    ("dhcp-search", False, "dhcp-search"),
    ("no-dhcp-search", False, "no-dhcp-search"),
    ("dns-forward", True, "dns-forward"),
    ("no-netns-quit", False, "no-netns-quit"),
    ("trace", False, "trace"),
    ("runas", True, "runas"),
    ("log-size", True, "log-size"),
    ("version", False, "version"),
    ("outbound-if4", True, "outbound-if4"),
    ("outbound-if6", True, "outbound-if6"),
    ("config-net", False, "config-net"),
    ("no-copy-routes", False, "no-copy-routes"),
    ("no-copy-addrs", False, "no-copy-addrs"),
    ("netns-only", False, "netns-only"),
    ("map-host-loopback", True, "map-host-loopback"),
    ("map-guest-addr", True, "map-guest-addr"),
    ("host-lo-to-ns-lo", False, "host-lo-to-ns-lo"),
    ("dns-host", True, "dns-host"),
    ("vhost-user", False, "vhost-user"),
    ("print-capabilities", False, "print-capabilities"),
    ("socket-path", True, "s"),
    ("fqdn", True, "fqdn"),
    ("repair-path", True, "repair-path"),
    ("migrate-exit", False, "migrate-exit"),
    ("migrate-no-linger", False, "migrate-no-linger"),
    ("stats", True, "stats"),
    ("conf-path", True, "c"),
    ("chroot-fallback", False, "chroot-fallback"),
    # slirpy's own
    ("api-socket", True, "api-socket"),
    ("guest-addr-reaches-loopback", False, "guest-addr-reaches-loopback"),
    ("policy", True, "policy"),
)

# Options refused in pasta mode, with the reason shown after the option.
_REFUSED = {
    "s": "-s/--socket-path is for passt / vhost-user mode only",
    "F": "-F/--fd is for passt mode only",
    "1": "-1/--one-off is for passt mode only",
    "no-dhcp-dns": "--no-dhcp-dns is for passt mode only",
    "no-dhcp-search": "--no-dhcp-search is for passt mode only",
    "vhost-user": "--vhost-user is for passt mode only",
    "print-capabilities": "--print-capabilities is for passt's vhost-user mode only",
    "repair-path": "--repair-path is for vhost-user mode only",
    "migrate-exit": "--migrate-exit is for vhost-user mode only",
    "migrate-no-linger": "--migrate-no-linger is for vhost-user mode only",
    "c": "-c/--conf-path: the pesto configuration socket is not supported by slirpy-pasta "
    "(publish ports with -t/-u, or keep Podman's rootlessport)",
    "p": "-p/--pcap: not supported by slirpy-pasta (--api-socket's list_flows and "
    "get_stats show its traffic)",
    "H": "-H/--hostname: not supported by slirpy-pasta (its DHCP server sends no host name)",
    "fqdn": "--fqdn: not supported by slirpy-pasta (its DHCP server sends no FQDN)",
    "runas": "--runas: not supported by slirpy-pasta (it never changes its user)",
    "freebind": "--freebind: not supported by slirpy-pasta (listening addresses must be local)",
    "splice-only": "--splice-only: not supported by slirpy-pasta",
    "stats": "--stats: not supported by slirpy-pasta (--api-socket's get_stats has counters)",
    "no-tcp": "--no-tcp: not supported by slirpy-pasta (--policy can deny TCP)",
    "no-udp": "--no-udp: not supported by slirpy-pasta (--policy can deny UDP)",
    "no-icmp": "--no-icmp: not supported by slirpy-pasta (--policy can deny ICMP)",
    "no-ndp": "--no-ndp: not supported by slirpy-pasta (its engine always answers "
    "neighbour solicitations)",
}

# Accepted, with this warning and no other effect.
_WARN_ONLY = {
    "e": "--stderr will be dropped soon",
    "no-copy-routes": "--no-copy-routes will be dropped soon; slirpy-pasta ignores it "
    "(use -g to install only a default route)",
    "no-copy-addrs": "--no-copy-addrs will be dropped soon; slirpy-pasta ignores it "
    "(use -a to install only one address)",
    "chroot-fallback": "--chroot-fallback has no effect: slirpy-pasta does not chroot",
}

_LONG_BY_KEY = {key: name for name, _, key in reversed(_LONG_OPTS)}


def _shown(key: str) -> str:
    """`-m/--mtu`, `-4/--ipv4-only` or `--netns`: how messages name an option."""
    long = _LONG_BY_KEY.get(key)
    if len(key) == 1:
        return f"-{key}/--{long}" if long else f"-{key}"
    return f"--{key}"


# ------------------------------------------------------------------- getopt


def _getopt_long(argv: Sequence[str], rest: list[str]) -> Iterator[tuple[str, str | None]]:
    """Yield (key, value) in argv order as glibc's getopt_long with a '+' optstring.

    Raises UsageError with glibc's messages when it reaches a bad option,
    not before (options before it are handled first, like pasta). Fills
    `rest` with the arguments after the options once exhausted.
    """
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            long, has_arg, key = _match_long(name, arg)
            if has_arg and not eq:
                if i >= len(argv):
                    raise UsageError(f"option '--{long}' requires an argument")
                value = argv[i]
                i += 1
            elif not has_arg and eq:
                raise UsageError(f"option '--{long}' doesn't allow an argument")
            yield key, value if has_arg else None
            continue
        if not arg.startswith("-") or arg == "-":
            i -= 1
            break
        pos = 1
        while pos < len(arg):
            letter = arg[pos]
            pos += 1
            at = SHORT_OPTS.find(letter)
            if letter == ":" or at < 0:
                raise UsageError(f"invalid option -- '{letter}'")
            if SHORT_OPTS[at + 1 : at + 2] != ":":
                yield letter, None
                continue
            if pos < len(arg):
                value, pos = arg[pos:], len(arg)
            elif i < len(argv):
                value = argv[i]
                i += 1
            else:
                raise UsageError(f"option requires an argument -- '{letter}'")
            yield letter, value
    rest.extend(argv[i:])


def _match_long(name: str, arg: str) -> tuple[str, bool, str]:
    """The long option `name` names exactly or as glibc's unique prefix."""
    for opt in _LONG_OPTS:
        if opt[0] == name:
            return opt
    found = [opt for opt in _LONG_OPTS if opt[0].startswith(name)] if name else []
    # glibc: a prefix of several names is ambiguous only if they differ in
    # what they do (--sock = --socket or --socket-path, both -s).
    if found and all(opt[1:] == found[0][1:] for opt in found):
        return found[0]
    if found:
        names = " ".join(f"'--{opt[0]}'" for opt in found)
        raise UsageError(f"option '{arg}' is ambiguous; possibilities: {names}")
    raise UsageError(f"unrecognized option '{arg}'")


# ------------------------------------------------------------- value parsers


def _addr(text: str) -> Addr | None:
    try:
        return ip_address(text)
    except ValueError:
        return None


def _addr_for(text: str, what: str, *, loopback: bool = False,
              multicast: bool = True) -> Addr:
    """An address that is not unspecified (nor broadcast, nor, unless
    allowed, loopback or multicast), else ConfigError `what: text`."""
    addr = _addr(text)
    if (
        addr is None
        or addr.is_unspecified
        or (not loopback and addr.is_loopback)
        or (not multicast and addr.is_multicast)
        or addr == IPv4Address("255.255.255.255")
    ):
        raise ConfigError(f"{what}: {text}")
    return addr


def _ifname(text: str, key: str) -> str:
    if not is_valid_ifname(text):
        raise ConfigError(f"{_shown(key)}: invalid interface name {text!r}")
    return text


def _prefix4(text: str) -> int:
    """-n: a prefix length or a dotted netmask with contiguous ones."""
    if text.isascii() and text.isdigit() and int(text, 10) <= 32:
        return int(text, 10)
    mask = _addr(text)
    if isinstance(mask, IPv4Address):
        bits = int(mask)
        length = bin(bits).count("1")
        if bits == ((1 << length) - 1) << (32 - length):
            return length
    raise ConfigError(f"-n/--netmask: invalid prefix length or netmask {text!r}")


def _mtu(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(f"-m/--mtu: invalid MTU {text!r}")
    mtu = int(text, 10)
    if mtu > MAX_MTU:
        raise ConfigError(f"-m/--mtu: MTU {mtu} too large (max {MAX_MTU})")
    if 0 < mtu < MIN_MTU:
        raise ConfigError(f"-m/--mtu: MTU {mtu} too small (min {MIN_MTU}, or 0 not to set it)")
    return mtu


def _netns_path(text: str) -> str:
    if not text:
        raise ConfigError("--netns: empty network namespace name or path")
    return text if "/" in text else f"{NETNS_RUN_DIR}/{text}"


def _load_policy(spec: str) -> Policy:
    from slirpy.control.policy import load_policy  # lazy: tomllib only when asked

    return load_policy(spec)


# --------------------------------------------------------------- the parser


class _State:
    """What the options said so far (last one wins unless noted).

    A plain class, not a dataclass: its code generation would cost ~0.7 ms
    of every start (issue 17).
    """

    def __init__(self) -> None:
        self.shared: dict[str, object] = {}
        self.opts: dict[str, object] = {}
        self.ports: list[tuple[str, str]] = []
        # Per family (4, 6), last one wins.
        self.dns_forward: dict[int, Addr] = {}
        self.dns_host: dict[int, Addr] = {}
        self.map_guest_addr: dict[int, Addr] = {}
        self.map_host_loopback: dict[int, Addr] = {}
        self.dns_servers: list[Addr] = []
        self.search: list[str] = []
        # -n's value, and whether the last IPv4 -a carried its own prefix.
        self.netmask: int | None = None
        self.prefix_from_a = False
        self.interface: str | None = None
        self.outbound_if: dict[int, str] = {}
        self.outbound_addr: dict[int, Addr] = {}
        self.userns: str | None = None
        self.netns: str | None = None
        self.netns_only = False
        self.foreground = False
        self.no_netns_quit = False
        self.no_splice = False
        self.host_lo_to_ns_lo = False


def _address(state: _State, text: str) -> None:
    """-a ADDR[/PREFIXLEN] (IPv6 prefixes are accepted and, as in pasta, unused)."""
    addr_text, slash, plen_text = text.partition("/")
    addr = _addr(addr_text)
    if addr is None or addr.is_loopback or addr.is_multicast or addr.is_unspecified or (
        addr == IPv4Address("255.255.255.255")
    ):
        raise ConfigError(f"-a/--address: invalid address {text!r}")
    if slash:
        top = 32 if addr.version == 4 else 128
        if not (plen_text.isascii() and plen_text.isdigit()) or int(plen_text, 10) > top:
            raise ConfigError(f"-a/--address: invalid prefix length in {text!r}")
        if state.netmask is not None:
            raise ConfigError(
                f"-a/--address {text}: redundant prefix length specification (-n given)"
            )
    if addr.version == 6:
        state.shared["address6"] = addr
        return
    state.shared["address4"] = addr
    state.prefix_from_a = bool(slash)
    state.shared["prefixlen4"] = int(plen_text, 10) if slash else state.netmask


def _handle(state: _State, key: str, value: str | None,
            warn: Callable[[str], None]) -> None:
    """Apply one option to `state` (value checks happen here, in argv order)."""
    v = value or ""
    shared, opts = state.shared, state.opts
    if key in _REFUSED:
        raise ConfigError(_REFUSED[key])
    if key in _WARN_ONLY:
        warn(_WARN_ONLY[key])
        return
    match key:
        case "h":
            raise HelpRequested
        case "version":
            raise VersionRequested
        case "d":
            opts.update(debug=True, quiet=False)
        case "trace":
            opts.update(debug=True, log_flows=True, quiet=False)
        case "q":
            opts.update(quiet=True, debug=False, log_flows=False)
        case "f":
            state.foreground = True
        case "l":
            if not v:
                raise ConfigError("-l/--log-file: empty path")
            opts["log_file"] = v
        case "log-size":
            if not (v.isascii() and v.isdigit()) or int(v, 10) == 0:
                raise ConfigError(f"--log-size: invalid size {v!r}")
            warn("--log-size has no effect: slirpy-pasta does not truncate its log file")
        case "P":
            if not v:
                raise ConfigError("-P/--pid: empty path")
            opts["pid_file"] = v
        case "I":
            shared["ifname"] = opts["tapname"] = _ifname(v, key)
        case "m":
            shared["mtu"] = _mtu(v)
        case "a":
            _address(state, v)
        case "n":
            if state.prefix_from_a:
                raise ConfigError(
                    f"-n/--netmask {v}: redundant prefix length specification (-a has one)"
                )
            state.netmask = shared["prefixlen4"] = _prefix4(v)
        case "M":
            shared["our_mac"] = _mac(v, key)
        case "ns-mac-addr":
            shared["ns_mac"] = _mac(v, key)
        case "g":
            gw = _addr_for(v, "-g/--gateway: invalid gateway address")
            shared["gateway4" if gw.version == 4 else "gateway6"] = gw
        case "i":
            state.interface = _ifname(v, key)
        case "outbound-if4" | "outbound-if6":
            state.outbound_if[int(key[-1])] = _ifname(v, key)
        case "o":
            out = _addr_for(v, "-o/--outbound: invalid outbound address", multicast=False)
            if isinstance(out, IPv6Address) and out.ipv4_mapped is not None:
                raise ConfigError(f"-o/--outbound: invalid outbound address: {v}")
            state.outbound_addr[out.version] = out
        case "D":
            if v == "none":
                state.dns_servers.clear()
                state.dns_forward.clear()
                state.dns_host.clear()
            else:
                dns = _addr(v)
                if dns is None:
                    raise ConfigError(f"-D/--dns: cannot use DNS address {v!r}")
                state.dns_servers.append(dns)
        case "S":
            if v == "none":
                state.search.clear()
            elif not v.split():
                raise ConfigError(f"-S/--search: cannot use DNS search domain {v!r}")
            else:
                state.search.extend(v.split())
        case "dns-forward":
            fwd = _addr_for(v, "--dns-forward: invalid DNS forwarding address")
            state.dns_forward[fwd.version] = fwd
        case "dns-host":
            host = _addr_for(v, "--dns-host: invalid host nameserver address", loopback=True)
            state.dns_host[host.version] = host
        case "map-host-loopback" | "map-guest-addr":
            table = state.map_host_loopback if key == "map-host-loopback" else (
                state.map_guest_addr)
            if v == "none":
                table.clear()
                if key == "map-host-loopback":
                    shared["no_map_gw"] = True
            else:
                mapped = _addr_for(v, f"--{key}: invalid address to remap to host",
                                   multicast=False)
                table[mapped.version] = mapped
        case "4":
            shared.update(ipv4=True, ipv6=False)
        case "6":
            shared.update(ipv4=False, ipv6=True)
        case "t" | "u" | "T" | "U":
            state.ports.append((f"-{key}", v))
        case "no-tcp" | "no-udp" | "no-icmp":
            shared[key[3:]] = False
        case "no-dhcp" | "no-dhcpv6" | "no-ndp" | "no-ra" | "no-map-gw":
            shared[key.replace("-", "_")] = True
        case "no-splice":
            state.no_splice = True
        case "host-lo-to-ns-lo":
            state.host_lo_to_ns_lo = True
        case "dhcp-dns" | "dhcp-search" | "config-net":
            shared[key.replace("-", "_")] = True
        case "userns":
            if not v:
                raise ConfigError("--userns: empty path")
            state.userns, state.netns_only = v, False
        case "netns":
            state.netns = _netns_path(v)
        case "netns-only":
            state.netns_only, state.userns = True, None
        case "no-netns-quit":
            state.no_netns_quit = True
        case "api-socket":
            opts["api_socket"] = v
        case "guest-addr-reaches-loopback":
            shared["guest_addr_reaches_loopback"] = True
        case "policy":
            opts["policy"] = _load_policy(v)
        case _:  # pragma: no cover - every key of _LONG_OPTS and SHORT_OPTS is handled
            raise UsageError(f"unhandled option {_shown(key)}")


def _mac(text: str, key: str) -> bytes:
    try:
        return parse_mac(text)
    except ConfigError as err:
        raise ConfigError(f"{_shown(key)}: {err}") from None


def _target(state: _State, args: list[str], environ: dict[str, str]) -> Target:
    """pasta's conf_pasta_ns(): --netns, a PID or a command."""
    if state.netns is not None and args:
        raise ConfigError("Both --netns and PID or command given")
    if len(args) == 1 and args[0].isascii() and args[0].isdigit():
        pid = int(args[0], 10)
        if not 0 < pid <= INT_MAX:
            raise ConfigError(f"Invalid PID {args[0]}")
        if state.netns_only:
            return JoinPath(f"/proc/{pid}/ns/net", netns_only=True)
        return JoinPid(pid, state.userns)
    if state.netns is not None:
        if state.userns is None:
            # pasta: --netns without --userns implies --netns-only.
            return JoinPath(state.netns, netns_only=True)
        return JoinPath(state.netns, state.userns)
    if state.userns is not None or state.netns_only:
        raise ConfigError(
            f"{'--userns' if state.userns else '--netns-only'} needs --netns or a PID "
            "(slirpy-pasta runs a command in a user namespace of its own)"
        )
    return NewNamespace(command=tuple(args) or (environ.get("SHELL") or "/bin/sh",))


def _by_family(table: dict[int, Addr]) -> tuple[Addr, ...]:
    return tuple(table[fam] for fam in (4, 6) if fam in table)


def _outbound(state: _State, fam: int) -> str | None:
    addr, ifname = state.outbound_addr.get(fam), state.outbound_if.get(fam)
    if addr is not None and ifname is not None:
        raise ConfigError(
            f"-o {addr} and --outbound-if{fam} {ifname}: slirpy-pasta binds outbound "
            f"IPv{fam} sockets to an address or to an interface, not both"
        )
    return str(addr) if addr is not None else ifname


def parse_pasta_args(
    argv: Sequence[str],
    *,
    warn: Callable[[str], None] | None = None,
    ephemeral: tuple[int, int] = DEFAULT_EPHEMERAL,
    environ: dict[str, str] | None = None,
) -> DaemonOptions:
    """Parse pasta's command line (without argv[0]) into the daemon's options.

    Options are handled in argv order: `HelpRequested`/`VersionRequested`
    when -h/--version is reached, `UsageError` (glibc's wording) for a
    malformed option, `ConfigError` for a bad or unsupported value; all
    one line. `ephemeral` is the host's ephemeral port range (for `all` and
    `auto`); `environ` gives $SHELL for pasta without a target.
    """
    warn = warn or _default_warn
    state = _State()
    rest: list[str] = []
    for key, value in _getopt_long(list(argv), rest):
        _handle(state, key, value, warn)

    shared = state.shared
    if state.no_splice and state.host_lo_to_ns_lo:
        raise ConfigError("--host-lo-to-ns-lo is incompatible with --no-splice")
    target = _target(state, rest, dict(os.environ) if environ is None else environ)
    if isinstance(target, NewNamespace):
        # pasta configures a namespace it made itself, as --config-net does.
        shared["config_net"] = True
    if shared.get("config_net"):
        shared["no_ra"] = True  # pasta: --config-net implies --no-ra
    for fam in (4, 6):
        template = state.interface or state.outbound_if.get(fam)
        if template is not None:
            shared[f"template_if{fam}"] = template
    ipv4, ipv6 = bool(shared.get("ipv4", True)), bool(shared.get("ipv6", True))
    ports = parse_port_options(state.ports, PortContext(
        ipv4=ipv4, ipv6=ipv6,
        tcp=bool(shared.get("tcp", True)), udp=bool(shared.get("udp", True)),
        splice_loopback=not state.no_splice, ephemeral=ephemeral,
    ))
    addressing = SharedAddressing(
        dns_forward=_by_family(state.dns_forward),
        dns_host=_by_family(state.dns_host),
        map_guest_addr=_by_family(state.map_guest_addr),
        map_host_loopback=_by_family(state.map_host_loopback),
        dns_servers=tuple(state.dns_servers),
        search_domains=tuple(state.search),
        no_splice=state.no_splice,
        host_lo_to_ns_lo=state.host_lo_to_ns_lo,
        **shared,  # type: ignore[arg-type]
    )
    return DaemonOptions(
        target=target,
        shared=addressing,
        outbound_addr=_outbound(state, 4),
        outbound_addr6=_outbound(state, 6),
        forwards=ports.forwards,
        loopback_forwards=ports.loopback_forwards,
        auto_forwards=ports.auto_forwards,
        daemonize=not state.foreground and not isinstance(target, NewNamespace),
        netns_quit=isinstance(target, JoinPath) and not state.no_netns_quit,
        **state.opts,  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------ texts

# One line per option: (option, argument, description). Podman and
# RootlessKit only need --version, but users read this.
_HELP = (
    ("-d, --debug", "", "debug messages"),
    ("--trace", "", "debug messages and one line per flow"),
    ("-q, --quiet", "", "only warnings and errors"),
    ("-f, --foreground", "", "don't run in background (default: daemonize once ready)"),
    ("-e, --stderr", "", "deprecated, no effect (warns)"),
    ("-l, --log-file", "PATH", "log to PATH once running"),
    ("--log-size", "BYTES", "accepted, no effect (warns): the log file is not truncated"),
    ("-P, --pid", "FILE", "write the daemon's PID to FILE"),
    ("-h, --help", "", "show this help and exit"),
    ("--version", "", "show version and exit"),
    ("-I, --ns-ifname", "NAME", "namespace interface name (default: the template's name)"),
    ("-m, --mtu", "MTU", "MTU of the interface, 0: don't set (default: 65520)"),
    ("-a, --address", "ADDR[/LEN]", "IPv4 or IPv6 address for the namespace (IPv6: /64)"),
    ("-n, --netmask", "MASK", "IPv4 prefix length or dotted netmask"),
    ("-M, --mac-addr", "ADDR", "slirpy's MAC address (default: 9a:55:9a:55:9a:55)"),
    ("-g, --gateway", "ADDR", "IPv4 or IPv6 gateway: install only a default route via it"),
    ("-i, --interface", "NAME", "host template interface for addresses and routes"),
    ("-o, --outbound", "ADDR", "source address of outbound IPv4 or IPv6 sockets"),
    ("--outbound-if4", "NAME", "bind outbound IPv4 sockets to NAME (and use it as template)"),
    ("--outbound-if6", "NAME", "bind outbound IPv6 sockets to NAME (and use it as template)"),
    ("-D, --dns", "ADDR|none", "DNS server to advertise with --dhcp-dns (none: also clears "
     "--dns-forward/--dns-host)"),
    ("-S, --search", "LIST|none", "search domains to advertise with --dhcp-search"),
    ("--dhcp-dns", "", "advertise -D servers via DHCP/DHCPv6/NDP"),
    ("--dhcp-search", "", "advertise -S domains via DHCP/DHCPv6/NDP"),
    ("--dns-forward", "ADDR", "DNS to ADDR goes to the host's resolver (one per family)"),
    ("--dns-host", "ADDR", "that resolver (default: first nameserver of resolv.conf)"),
    ("--map-host-loopback", "ADDR|none", "ADDR reaches the host's loopback (default: gateway)"),
    ("--map-guest-addr", "ADDR|none", "ADDR reaches the host's own address"),
    ("--no-map-gw", "", "the gateway does not reach the host's loopback"),
    ("--no-dhcp, --no-dhcpv6, --no-ra", "", "disable that service"),
    ("--no-tcp, --no-udp, --no-icmp, --no-ndp", "", "refused (use --policy to deny a protocol)"),
    ("-4, --ipv4-only", "", "IPv4 only"),
    ("-6, --ipv6-only", "", "IPv6 only"),
    ("-t, --tcp-ports", "SPEC", "TCP ports from the host to the namespace (default: auto)"),
    ("-u, --udp-ports", "SPEC", "UDP ports from the host to the namespace (default: auto)"),
    ("-T, --tcp-ns", "SPEC", "TCP ports from the namespace's to the host's loopback "
     "(default: auto)"),
    ("-U, --udp-ns", "SPEC", "UDP likewise (default: auto)"),
    ("", "", "SPEC: none | [ADDR][%IF]/PORTS | PORTS; PORTS: comma list of"),
    ("", "", "  FIRST[-LAST][:[TOADDR/]TOFIRST[-TOLAST]], ~FIRST[-LAST], all, auto"),
    ("--no-splice", "", "host-loopback clients of -t take the TAP path too"),
    ("--host-lo-to-ns-lo", "", "host-loopback clients appear from the namespace's loopback"),
    ("--userns", "PATH", "user namespace to join"),
    ("--netns", "PATH|NAME", "network namespace to join (NAME: /run/netns/NAME)"),
    ("--netns-only", "", "don't join a user namespace (implied by --netns without --userns)"),
    ("--no-netns-quit", "", "don't quit when the namespace's path is removed"),
    ("--config-net", "", "configure the interface, addresses and routes in the namespace"),
    ("--ns-mac-addr", "ADDR", "MAC address of the namespace's interface"),
    ("--no-copy-routes, --no-copy-addrs", "", "deprecated, no effect (warn)"),
    ("--chroot-fallback", "", "accepted, no effect (warns): slirpy does not chroot"),
    ("-p, --pcap / --stats", "", "refused: use --api-socket (list_flows, get_stats)"),
    ("-c, --conf-path", "", "refused: no pesto socket"),
    ("-H, --hostname / --fqdn", "", "refused: slirpy's DHCP sends neither"),
    ("--runas / --freebind / --splice-only", "", "refused"),
    ("-s, --socket, --socket-path, -F, --fd, -1, --one-off, --no-dhcp-dns, --no-dhcp-search",
     "", "refused: passt mode only"),
    ("--vhost-user, --print-capabilities, --repair-path, --migrate-exit, --migrate-no-linger",
     "", "refused: passt's vhost-user mode only"),
    ("--api-socket", "PATH", "slirpy: slirp4netns-style API socket (list_flows, get_stats, "
     "forwards)"),
    ("--guest-addr-reaches-loopback", "", "slirpy: the --map-guest-addr address reaches the "
     "host's loopback services too"),
    ("--policy", "SPEC", "slirpy: egress policy: public-only, host-only, none, allow-all "
     "or a TOML file"),
)


def help_text(prog: str = PROG_PASTA) -> str:
    """The `--help` text (ends with a newline)."""
    lines = [
        f"Usage: {prog} [OPTION]... [COMMAND] [ARGS]...",
        f"       {prog} [OPTION]... PID",
        f"       {prog} [OPTION]... --netns [PATH|NAME]",
        "",
        "slirpy's pasta-compatible front end: the namespace shares the host's addresses.",
        "Without PID or --netns, run COMMAND (or $SHELL) in new namespaces, as slirpy run.",
        "",
    ]
    for opt, arg, desc in _HELP:
        left = f"  {opt} {arg}".rstrip() if opt else ""
        lines.append(f"{left:<38} {desc}" if len(left) < 38 else f"{left}\n{'':<38} {desc}")
    return "\n".join(lines) + "\n"


def version_text() -> str:
    """The `--version` text: pasta's first-line shape, naming slirpy's version."""
    return (
        f"pasta slirpy-{__version__}\n"
        f"slirpy {__version__}: a pasta-compatible front end of slirpy, not passt's pasta\n"
    )


def _default_warn(message: str) -> None:
    print(f"{PROG_PASTA}: warning: {message}", file=sys.stderr)


def read_ephemeral_range(path: str = EPHEMERAL_SYSCTL) -> tuple[int, int]:
    """The host's ephemeral port range, or Linux's default if unreadable."""
    try:
        with open(path) as f:
            first, last = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL
    if not 1 <= first <= last <= 65535:
        return DEFAULT_EPHEMERAL
    return first, last


def pasta_main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of `slirpy-pasta` (and of a `pasta` symlink to it).

    Messages start with argv[0]'s basename when run as a command (so a
    `pasta` symlink says `pasta: unrecognized option '--x'`, as Podman
    expects), with `slirpy-pasta` when called with explicit arguments.
    """
    if argv is None:
        args = sys.argv[1:]
        prog = os.path.basename(sys.argv[0]) or PROG_PASTA
    else:
        args, prog = list(argv), PROG_PASTA

    def warn(message: str) -> None:
        print(f"{prog}: warning: {message}", file=sys.stderr)

    try:
        opts = parse_pasta_args(args, warn=warn, ephemeral=read_ephemeral_range())
    except HelpRequested:
        write_stdout(help_text(prog))
        sys.exit(0)
    except VersionRequested:
        write_stdout(version_text())
        sys.exit(0)
    except ConfigError as err:
        fail(prog, str(err), 1)
    run_daemon(prog, opts)
