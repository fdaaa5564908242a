"""slirp4netns's command line (`slirpy-slirp4netns`, `slirpy slirp4netns`): a front end.

This module owns turning slirp4netns's argv into one `DaemonOptions` (with
slirp4netns's defaults: join a PID's namespaces, no -c, MTU 1500,
10.0.2.0/24), its `--help` and `--version` texts, its error wording, and
the lines slirp4netns prints once the TAP is open (Podman shows them on
failure). Everything else is `slirpy.daemon.Daemon`'s.

It must not import anything heavy at import time (the cffi engine,
asyncio/uvloop, argparse): Podman and RootlessKit run `--help` before every
container, so that path must stay fast.
"""

from __future__ import annotations

import getopt
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

from slirpy import __version__
from slirpy.config import (
    DEFAULT_RESOLV_CONF,
    ConfigError,
    NetworkModel,
    normalize_dns_upstream,
    parse_cidr,
    parse_fd,
    parse_limit,
    parse_mac,
    parse_mtu,
    parse_outbound_addr,
    parse_outbound_addr6,
    parse_prefix6,
)
from slirpy.frontends.common import UsageError, fail, run_daemon, write_stdout
from slirpy.options import DaemonOptions, JoinPath, JoinPid

if TYPE_CHECKING:
    from slirpy.host.netns import TapHandle

__all__ = [
    "PROG_SLIRP4NETNS",
    "HelpRequested",
    "VersionRequested",
    "banner_lines",
    "help_text",
    "parse_slirp4netns_args",
    "slirp4netns_main",
    "version_text",
]

PROG_SLIRP4NETNS = "slirpy-slirp4netns"
# What slirp4netns 1.2 reports; scripts parse this line to pick API features.
SLIRP_CONFIG_VERSION_MAX = 4


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
    (
        "--policy=SPEC",
        "slirpy: egress policy: public-only, host-only, none, allow-all or a TOML file",
    ),
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
    "policy=",
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
) -> DaemonOptions:
    """Parse slirp4netns's command line (without argv[0]) into the daemon's options.

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
    netns_type = "pid"
    userns_path: str | None = None
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
                netns_type = value
            case "--userns-path":
                userns_path = value
            case "--enable-sandbox":
                kw["sandbox"] = True
            case "--enable-seccomp":
                kw["seccomp"] = True
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
            case "--policy":
                # Lazy: tomllib and the policy model only when asked for.
                from slirpy.control.policy import load_policy

                kw["policy"] = load_policy(value)
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
    return DaemonOptions(
        target=_target(args[0], netns_type, userns_path),
        tapname=args[1] if len(args) == 2 else "tap0",
        net=NetworkModel(**net),  # type: ignore[arg-type]
        dns_upstreams=tuple(dns_upstreams),
        limits=tuple(limits),
        **kw,  # type: ignore[arg-type]
    )


def _target(text: str, netns_type: str, userns_path: str | None) -> JoinPid | JoinPath:
    """The target's own checks (empty paths) are JoinPid's and JoinPath's."""
    if netns_type == "path":
        return JoinPath(text, userns_path)
    # Checked on the text: the message quotes what the user typed.
    if not (text.isascii() and text.isdigit()) or int(text, 10) <= 0:
        raise ConfigError(f"PID must be a positive integer: {text!r}")
    return JoinPid(int(text, 10), userns_path)


def banner_lines(opts: DaemonOptions, tap: TapHandle) -> tuple[list[str], list[str]]:
    """What slirp4netns prints once the TAP is open: (stderr lines, stdout lines)."""
    net = opts.net
    err = [f"sent tapfd={tap.fd} for {opts.tapname}", f"received tapfd={tap.fd}"]
    out = [
        "Starting slirp",
        f"* MTU:             {net.mtu}",
        f"* Network:         {net.cidr.network_address}",
        f"* Netmask:         {net.netmask}",
        f"* Gateway:         {net.gateway}",
        f"* DNS:             {net.dns}",
        f"* DHCP begin:      {net.dhcp_start}",
        f"* DHCP end:        {net.dhcp_end}",
        f"* Recommended IP:  {net.guest}",
    ]
    if opts.api_socket:
        out.append(f"* API Socket:      {opts.api_socket}")
    if net.host_loopback:
        out.append(
            f"WARNING: 127.0.0.1:* on the host is accessible as {net.gateway} "
            "(set --disable-host-loopback to prohibit connecting to 127.0.0.1:*)"
        )
    return err, out


def _print_banner(opts: DaemonOptions, tap: TapHandle) -> None:
    err, out = banner_lines(opts, tap)
    for stream, lines in ((sys.stderr, err), (sys.stdout, out)):
        stream.write("".join(line + "\n" for line in lines))
        stream.flush()


def slirp4netns_main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of `slirpy-slirp4netns`: parse, then run the daemon."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        opts = parse_slirp4netns_args(args)
    except HelpRequested:
        write_stdout(help_text())
        sys.exit(0)
    except VersionRequested:
        write_stdout(version_text())
        sys.exit(0)
    except ConfigError as err:
        fail(PROG_SLIRP4NETNS, str(err), 1)
    run_daemon(PROG_SLIRP4NETNS, opts, on_tap=lambda tap: _print_banner(opts, tap))
