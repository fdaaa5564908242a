"""Command lines of `slirpy-slirp4netns` and `slirpy`: parsing only.

This module owns turning argv into a frozen, validated configuration
(`Slirp4netnsConfig`, `RunConfig` from `slirpy.config`), the `--help` and
`--version` texts, and the rule that bad input ends in one readable line on
stderr and a non-zero exit, never a traceback.

It must not import anything heavy at import time (pyroute2, the cffi engine,
asyncio/uvloop): Podman and RootlessKit run `--help` before every container,
so that path must stay fast. `slirpy.app` is imported lazily, only once the
command line parsed, and does all the work.
"""

from __future__ import annotations

import getopt
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

from slirpy import __version__
from slirpy.config import (
    DEFAULT_RESOLV_CONF,
    ConfigError,
    NetworkModel,
    RunConfig,
    Slirp4netnsConfig,
    normalize_dns_upstream,
    parse_cidr,
    parse_fd,
    parse_limit,
    parse_mac,
    parse_mtu,
    parse_outbound_addr,
    parse_outbound_addr6,
    parse_port_mapping,
    parse_prefix6,
)

if TYPE_CHECKING:
    import argparse

__all__ = [
    "PROG_SLIRP4NETNS",
    "ConfigError",
    "HelpRequested",
    "UsageError",
    "VersionRequested",
    "help_text",
    "main",
    "parse_run_args",
    "parse_slirp4netns_args",
    "slirp4netns_main",
    "version_text",
]

PROG_SLIRP4NETNS = "slirpy-slirp4netns"
PROG_SLIRPY = "slirpy"
# What slirp4netns 1.2 reports; scripts parse this line to pick API features.
SLIRP_CONFIG_VERSION_MAX = 4


class UsageError(ConfigError):
    """The command line itself is malformed (unknown option, missing argument...)."""


class HelpRequested(Exception):
    """`-h/--help` was given: print `help_text()` to stdout and exit 0."""


class VersionRequested(Exception):
    """`-v/--version` was given: print `version_text()` to stdout and exit 0."""


# ------------------------------------------------------------ slirp4netns CLI

# One line per option, in slirp4netns's layout: Podman and RootlessKit grep this
# text for option names to decide which features to use, so every option name
# must appear literally.
_HELP_OPTIONS = (
    ("-c, --configure", "bring up the interface"),
    ("-e, --exit-fd=FD", "specify the FD for terminating slirp4netns"),
    ("-r, --ready-fd=FD", "specify the FD to write to when the network is configured"),
    ("-m, --mtu=MTU", "specify MTU (default=1500, max=65521)"),
    ("-6, --enable-ipv6", "enable IPv6 (prefix fd00::/64, gateway fd00::2, DNS fd00::3)"),
    ("-a, --api-socket=PATH", "specify API socket path"),
    ("--cidr=CIDR", "specify network address CIDR (default=10.0.2.0/24)"),
    ("--disable-host-loopback", "prohibit connecting to 127.0.0.1:* on the host namespace"),
    ("--netns-type=TYPE", "specify network namespace type ([path|pid], default=pid)"),
    ("--userns-path=PATH", "specify user namespace path"),
    (
        "--enable-sandbox",
        "create a new mount namespace (and drop all caps except CAP_NET_BIND_SERVICE)",
    ),
    ("--enable-seccomp", "enable seccomp to limit syscalls"),
    ("--outbound-addr=IPv4", "sets outbound ipv4 address (or interface name) to bind to"),
    ("--outbound-addr6=IPv6", "sets outbound ipv6 address (or interface name) to bind to"),
    ("--disable-dns", "disables 10.0.2.3 (or configured internal ip) to host dns redirect"),
    ("--macaddress=MAC", "specify the MAC address of the TAP (only valid with -c)"),
    ("--target-type=TYPE", "specify the target type ([netns], default=netns)"),
    ("--ipv6-prefix=PREFIX", "slirpy: IPv6 /64 prefix for --enable-ipv6 (default=fd00::/64)"),
    ("--dns-upstream=ADDR[:PORT]", "slirpy: forward DNS here instead of resolv.conf (repeatable)"),
    ("--resolv-conf=PATH", f"slirpy: take DNS servers from PATH (default={DEFAULT_RESOLV_CONF})"),
    ("--disable-offload", "slirpy: do not use TAP checksum/segmentation offloads"),
    ("--limit=NAME=VALUE", "slirpy: engine cap or timeout, e.g. udp_idle_s=60 (repeatable)"),
    ("--splice-helper", "slirpy: allow spliced forwards (API) under --enable-sandbox/seccomp"),
    ("--debug", "slirpy: verbose logging to stderr"),
    ("-h, --help", "show this help and exit"),
    ("-v, --version", "show version and exit"),
)

_SHORT_OPTS = "ce:r:m:6a:hv"
_LONG_OPTS = [
    "configure",
    "exit-fd=",
    "ready-fd=",
    "mtu=",
    "enable-ipv6",
    "api-socket=",
    "cidr=",
    "disable-host-loopback",
    "no-host-loopback",
    "netns-type=",
    "userns-path=",
    "enable-sandbox",
    "enable-seccomp",
    "outbound-addr=",
    "outbound-addr6=",
    "disable-dns",
    "macaddress=",
    "target-type=",
    "help",
    "version",
    # slirpy extensions
    "ipv6-prefix=",
    "dns-upstream=",
    "resolv-conf=",
    "disable-offload",
    "limit=",
    "splice-helper",
    "debug",
]


def help_text() -> str:
    """The `slirpy-slirp4netns --help` text (ends with a newline)."""
    width = max(len(opt) for opt, _ in _HELP_OPTIONS) + 2
    lines = [
        f"Usage: {PROG_SLIRP4NETNS} [OPTION]... PID|PATH [TAPNAME]",
        "User-mode networking for unprivileged network namespaces (slirp4netns-compatible).",
    ]
    lines += [f"{opt:<{width}}{desc}" for opt, desc in _HELP_OPTIONS]
    return "\n".join(lines) + "\n"


def version_text() -> str:
    """The `slirpy-slirp4netns --version` text (ends with a newline)."""
    return (
        f"{PROG_SLIRP4NETNS} version {__version__}\n"
        "commit: slirpy\n"
        "libslirp: none (slirpy engine)\n"
        f"SLIRP_CONFIG_VERSION_MAX: {SLIRP_CONFIG_VERSION_MAX}\n"
    )


def _getopt_error(err: getopt.GetoptError) -> UsageError:
    """Reword getopt's messages the way glibc's getopt_long (and so slirp4netns) says them."""
    opt = err.opt
    # getopt formats "--name" for long options and "-x" for short ones.
    shown = f"--{opt}" if f"--{opt}" in err.msg else f"-{opt}"
    if "not recognized" in err.msg:
        return UsageError(f"unrecognized option '{shown}'")
    if "requires argument" in err.msg:
        return UsageError(f"option '{shown}' requires an argument")
    if "must not have an argument" in err.msg:
        return UsageError(f"option '{shown}' doesn't allow an argument")
    if "not a unique prefix" in err.msg:
        return UsageError(f"option '{shown}' is ambiguous")
    return UsageError(err.msg)


def _default_warn(message: str) -> None:
    print(f"{PROG_SLIRP4NETNS}: warning: {message}", file=sys.stderr)


def parse_slirp4netns_args(
    argv: Sequence[str], warn: Callable[[str], None] | None = None
) -> Slirp4netnsConfig:
    """Parse slirp4netns's command line (without argv[0]).

    Raises `UsageError`/`ConfigError` (one-line messages) on bad input, and
    `HelpRequested`/`VersionRequested` when asked; those win over any later
    value error so that `--help` always answers.
    """
    warn = warn or _default_warn
    try:
        # gnu_getopt: options may follow positionals, --opt=v and --opt v,
        # -m1500 / -m 1500 and -c6 all work, unique prefixes of long options
        # are accepted: the semantics of getopt_long, which slirp4netns uses.
        opts, args = getopt.gnu_getopt(list(argv), _SHORT_OPTS, _LONG_OPTS)
    except getopt.GetoptError as err:
        raise _getopt_error(err) from None

    names = {name for name, _ in opts}
    if names & {"-h", "--help"}:
        raise HelpRequested
    if names & {"-v", "--version"}:
        raise VersionRequested

    net: dict[str, object] = {}
    kw: dict[str, object] = {}
    dns_upstreams: list[str] = []
    limits: list[tuple[str, int]] = []
    mac_text: str | None = None
    for name, value in opts:
        match name:
            case "-c" | "--configure":
                kw["configure"] = True
            case "-e" | "--exit-fd":
                kw["exit_fd"] = parse_fd(value, "--exit-fd")
            case "-r" | "--ready-fd":
                kw["ready_fd"] = parse_fd(value, "--ready-fd")
            case "-m" | "--mtu":
                net["mtu"] = parse_mtu(value)
            case "-6" | "--enable-ipv6":
                net["ipv6"] = True
            case "-a" | "--api-socket":
                kw["api_socket"] = value
            case "--cidr":
                net["cidr"] = parse_cidr(value)
            case "--disable-host-loopback":
                net["host_loopback"] = False
            case "--no-host-loopback":
                warn("--no-host-loopback is deprecated, use --disable-host-loopback")
                net["host_loopback"] = False
            case "--netns-type":
                if value not in ("pid", "path"):
                    raise ConfigError(f"--netns-type must be 'pid' or 'path', got {value!r}")
                kw["netns_type"] = value
            case "--userns-path":
                kw["userns_path"] = value
            case "--enable-sandbox":
                kw["enable_sandbox"] = True
            case "--enable-seccomp":
                kw["enable_seccomp"] = True
            case "--outbound-addr":
                kw["outbound_addr"] = parse_outbound_addr(value)
            case "--outbound-addr6":
                kw["outbound_addr6"] = parse_outbound_addr6(value)
            case "--disable-dns":
                net["dns_enabled"] = False
            case "--macaddress":
                mac_text = value
            case "--target-type":
                if value != "netns":
                    raise ConfigError(f"--target-type={value} is not supported by slirpy")
            case "--ipv6-prefix":
                net["prefix6"] = parse_prefix6(value)
            case "--dns-upstream":
                dns_upstreams.append(normalize_dns_upstream(value))
            case "--resolv-conf":
                kw["resolv_conf"] = value
            case "--limit":
                limits.append(parse_limit(value))
            case "--disable-offload":
                kw["offload"] = False
            case "--splice-helper":
                kw["splice_helper"] = True
            case "--debug":
                kw["debug"] = True
            case _:  # pragma: no cover - getopt only returns the options listed above
                raise UsageError(f"unrecognized option '{name}'")

    if mac_text is not None:
        # Checked before parsing the MAC: without -c the value is never used,
        # and that is the more useful thing to say.
        if not kw.get("configure"):
            raise ConfigError("--macaddress can only be used with --configure")
        net["guest_mac"] = parse_mac(mac_text)

    if not args:
        raise UsageError("missing PID|PATH argument (see --help)")
    if len(args) > 2:
        raise UsageError(f"too many arguments: unexpected {args[2]!r}")
    kw["target"] = args[0]
    if len(args) == 2:
        kw["tapname"] = args[1]
    return Slirp4netnsConfig(
        net=NetworkModel(**net),  # type: ignore[arg-type]
        dns_upstreams=tuple(dns_upstreams),
        limits=tuple(limits),
        **kw,  # type: ignore[arg-type]
    )


def _write_stdout(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # `... --help | head -1`: not an error. Point stdout at /dev/null so
        # the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _fail(prog: str, message: str, code: int) -> NoReturn:
    # Exactly one line, whatever the message contains.
    line = " ".join(str(message).split("\n"))
    print(f"{prog}: {line}", file=sys.stderr)
    sys.exit(code)


def slirp4netns_main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of `slirpy-slirp4netns`: parse, then hand over to `slirpy.app`."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        cfg = parse_slirp4netns_args(args)
    except HelpRequested:
        _write_stdout(help_text())
        sys.exit(0)
    except VersionRequested:
        _write_stdout(version_text())
        sys.exit(0)
    except ConfigError as err:
        _fail(PROG_SLIRP4NETNS, str(err), 1)

    _run_app(PROG_SLIRP4NETNS, "run_slirp4netns", cfg)


def _run_app(prog: str, entry: str, cfg: object) -> NoReturn:
    """Call `slirpy.app.<entry>(cfg)` and exit with its code, errors in one line."""
    try:
        # Lazy: the app pulls in asyncio and the cffi engine.
        from slirpy import app
    except ImportError as err:
        _fail(prog, f"slirpy is not installed correctly: {err}", 1)
    try:
        code = getattr(app, entry)(cfg)
    except ConfigError as err:
        # Bad input found only at run time (no such PID, no such interface...).
        _fail(prog, str(err), 1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code)


# ---------------------------------------------------------------- slirpy CLI


def _build_parser() -> argparse.ArgumentParser:
    # argparse is imported here, not at the top: slirpy-slirp4netns parses
    # with getopt and must not pay for it before its ready byte.
    import argparse

    class _ArgumentParser(argparse.ArgumentParser):
        """argparse with one-line errors: `slirpy: <message>`, exit 2."""

        def error(self, message: str) -> NoReturn:
            _fail(self.prog, message, 2)

    parser = _ArgumentParser(
        prog=PROG_SLIRPY,
        description="Rootless userspace networking for unprivileged containers.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG_SLIRPY} {__version__}")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND")
    sub.add_parser(
        "slirp4netns",
        help="run as a slirp4netns drop-in (same as slirpy-slirp4netns)",
        add_help=False,
    )
    run = sub.add_parser(
        "run",
        help="run COMMAND in a new user+network namespace with slirpy networking",
        description="Run COMMAND in a new user, network and mount namespace networked by slirpy.",
        usage=f"{PROG_SLIRPY} run [OPTIONS] -- COMMAND [ARG]...",
    )
    run.add_argument(
        "-p",
        "--publish",
        action="append",
        default=[],
        metavar="[HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|udp|splice]",
        help="forward a host port to the guest (repeatable); /splice: TCP relayed by "
        "splice() in the guest's namespace (faster; the guest sees its own address)",
    )
    run.add_argument("--ipv6", action="store_true", help="enable IPv6 (fd00::/64 by default)")
    run.add_argument("--ipv6-prefix", metavar="PREFIX", help="IPv6 /64 prefix (default fd00::/64)")
    run.add_argument("--mtu", metavar="MTU", help="MTU of the guest interface (default 1500)")
    run.add_argument("--cidr", metavar="CIDR", help="IPv4 network (default 10.0.2.0/24)")
    run.add_argument(
        "--dns-upstream",
        action="append",
        default=[],
        metavar="ADDR[:PORT]",
        help="forward DNS here instead of resolv.conf (repeatable)",
    )
    run.add_argument(
        "--resolv-conf",
        metavar="PATH",
        default=DEFAULT_RESOLV_CONF,
        help=f"take DNS servers from PATH (default {DEFAULT_RESOLV_CONF})",
    )
    run.add_argument("--outbound-addr", metavar="IPv4|IFNAME", help="source of outbound sockets")
    run.add_argument(
        "--no-host-loopback",
        action="store_true",
        help="the gateway does not reach the host's 127.0.0.1",
    )
    run.add_argument(
        "--disable-offload",
        action="store_true",
        help="do not use TAP checksum/segmentation offloads",
    )
    run.add_argument(
        "--keep-id",
        action="store_true",
        help="COMMAND runs as your own uid/gid inside, not as root",
    )
    run.add_argument(
        "-v", "--verbose", action="count", default=0, help="log flows as they open and close"
    )
    run.add_argument("--stats", action="store_true", help="print traffic statistics on exit")
    # REMAINDER: everything from the first positional on belongs to COMMAND,
    # including its own options.
    run.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _run_config_from(ns: argparse.Namespace) -> RunConfig:
    command = list(ns.command)
    if command[:1] == ["--"]:
        command = command[1:]
    net: dict[str, object] = {"ipv6": ns.ipv6, "host_loopback": not ns.no_host_loopback}
    if ns.mtu is not None:
        net["mtu"] = parse_mtu(ns.mtu)
    if ns.cidr is not None:
        net["cidr"] = parse_cidr(ns.cidr)
    if ns.ipv6_prefix is not None:
        net["prefix6"] = parse_prefix6(ns.ipv6_prefix)
    return RunConfig(
        command=tuple(command),
        net=NetworkModel(**net),  # type: ignore[arg-type]
        publish=tuple(parse_port_mapping(p) for p in ns.publish),
        dns_upstreams=tuple(normalize_dns_upstream(d) for d in ns.dns_upstream),
        outbound_addr=None if ns.outbound_addr is None else parse_outbound_addr(ns.outbound_addr),
        resolv_conf=ns.resolv_conf,
        offload=not ns.disable_offload,
        verbose=ns.verbose,
        stats=ns.stats,
        keep_id=ns.keep_id,
    )


def parse_run_args(argv: Sequence[str]) -> RunConfig:
    """Parse `slirpy run` arguments (after the word `run`); ConfigError on bad values.

    argparse usage errors still exit 2 through the parser's `error()`.
    """
    ns = _build_parser().parse_args(["run", *argv])
    return _run_config_from(ns)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the `slirpy` command."""
    args = sys.argv[1:] if argv is None else list(argv)
    # slirp4netns's arguments are passed through untouched: argparse would
    # otherwise try to interpret its options (-c, -6, -e 3...).
    if args[:1] == ["slirp4netns"]:
        slirp4netns_main(args[1:])

    parser = _build_parser()
    ns = parser.parse_args(args)
    if ns.subcommand is None:
        _fail(PROG_SLIRPY, "a COMMAND is required (slirp4netns or run); see --help", 2)
    try:
        cfg = _run_config_from(ns)
    except ConfigError as err:
        _fail(PROG_SLIRPY, str(err), 2)

    _run_app(PROG_SLIRPY, "run_command", cfg)
