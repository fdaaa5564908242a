"""`slirpy run [OPTIONS] -- CMD [ARGS...]`: the developer command, as a front end.

This module owns `slirpy run`'s options (argparse; `add_run_arguments` is
shared with the `slirpy` command's parser), its `-p` grammar
(`parse_port_mapping`), and turning them into one `DaemonOptions` whose
target is a `NewNamespace` running CMD: a new user (the caller mapped to
root inside, or to itself with --keep-id), network and mount namespace with
`tap0` configured like slirp4netns's `-c` and a resolv.conf naming N+3.
The daemon runs CMD once the network is up, forwards SIGTERM, SIGHUP and
SIGINT to it, stops when it exits and returns its exit code (128+N when
killed by signal N); exec failures are reported by the child itself (127 not
found, 126 not executable).

It must not know the daemon's start-up order nor run anything itself.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, NoReturn

from slirpy.config import (
    DEFAULT_RESOLV_CONF,
    ConfigError,
    NetworkModel,
    normalize_dns_upstream,
    parse_cidr,
    parse_mtu,
    parse_outbound_addr,
    parse_port,
    parse_prefix6,
)
from slirpy.frontends.common import fail
from slirpy.options import DaemonOptions, NewNamespace, PortMapping

if TYPE_CHECKING:
    from slirpy.control.policy import Policy

__all__ = [
    "PROG_RUN",
    "OneLineArgumentParser",
    "PolicyFileError",
    "add_run_arguments",
    "options_from_args",
    "parse_port_mapping",
    "parse_run_args",
]

PROG_RUN = "slirpy run"
TAPNAME = "tap0"


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: `PROG: <message>`, exit 2."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog, message, 2)


def parse_port_mapping(text: str) -> PortMapping:
    """Parse a `--publish` value (docker-like syntax; IPv6 host address in brackets).

    Without HOST_ADDR the port is published on 0.0.0.0 (every IPv4 address),
    as `docker run -p` does.
    """
    bad = (
        f"invalid --publish {text!r}: expected [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|udp|splice]"
    )
    spec, _, proto = text.partition("/")
    if not proto:
        if text.endswith("/"):
            raise ConfigError(bad)
        proto = "tcp"
    if proto not in ("tcp", "udp", "splice"):
        raise ConfigError(
            f"invalid --publish {text!r}: protocol must be tcp, udp or splice, got {proto!r}"
        )
    host_addr = "0.0.0.0"
    if spec.startswith("["):
        end = spec.find("]")
        if end < 0 or spec[end + 1 : end + 2] != ":":
            raise ConfigError(bad)
        try:
            host_addr = str(IPv6Address(spec[1:end]))
        except ValueError:
            raise ConfigError(f"invalid --publish {text!r}: bad IPv6 address") from None
        spec = spec[end + 2 :]
        parts = spec.split(":")
        if len(parts) != 2:
            raise ConfigError(bad)
    else:
        parts = spec.split(":")
        if len(parts) == 3:
            try:
                host_addr = str(IPv4Address(parts[0]))
            except ValueError:
                raise ConfigError(
                    f"invalid --publish {text!r}: bad IPv4 address {parts[0]!r} "
                    "(write IPv6 addresses in brackets)"
                ) from None
            parts = parts[1:]
        elif len(parts) != 2:
            raise ConfigError(bad)
    host_port = parse_port(parts[0], f"--publish {text!r}: host port")
    guest_port = parse_port(parts[1], f"--publish {text!r}: guest port")
    return PortMapping(
        proto="udp" if proto == "udp" else "tcp",
        host_addr=host_addr,
        host_port=host_port,
        guest_port=guest_port,
        splice=proto == "splice",
    )


def add_run_arguments(run: argparse.ArgumentParser) -> None:
    """`slirpy run`'s options, on `run` (a subcommand parser or a parser of its own)."""
    run.add_argument(
        "-p",
        "--publish",
        action="append",
        default=[],
        metavar="[HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|udp|splice]",
        help="forward a host port to the guest (repeatable; HOST_ADDR defaults to 0.0.0.0); "
        "/splice: TCP relayed by splice() in the guest's namespace (faster; the guest "
        "sees its own address)",
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
        "-v", "--verbose", action="count", default=0,
        help="log flows as they open and close (-vv: debug logging too)",
    )
    run.add_argument("--stats", action="store_true", help="print traffic statistics on exit")
    run.add_argument(
        "--policy",
        metavar="SPEC",
        help="egress policy: public-only, host-only, none, allow-all or a TOML file "
        "(denied flows are logged on stderr)",
    )
    # REMAINDER: everything from the first positional on belongs to COMMAND,
    # including its own options.
    run.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


class PolicyFileError(ConfigError):
    """A --policy that cannot be used: exit 1 like every front end (issue 18),
    not `slirpy run`'s 2 for a malformed option."""


def _load_policy(spec: str) -> Policy:
    from slirpy.control.policy import load_policy  # lazy: tomllib only when asked

    try:
        return load_policy(spec)
    except ConfigError as err:
        raise PolicyFileError(str(err)) from None


def options_from_args(ns: argparse.Namespace) -> DaemonOptions:
    """The daemon's options for parsed `slirpy run` arguments; ConfigError on bad values."""
    command = list(ns.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise ConfigError("no command given: use slirpy run [OPTIONS] -- COMMAND [ARG]...")
    net: dict[str, object] = {"ipv6": ns.ipv6, "host_loopback": not ns.no_host_loopback}
    if ns.mtu is not None:
        net["mtu"] = parse_mtu(ns.mtu)
    if ns.cidr is not None:
        net["cidr"] = parse_cidr(ns.cidr)
    if ns.ipv6_prefix is not None:
        net["prefix6"] = parse_prefix6(ns.ipv6_prefix)
    return DaemonOptions(
        target=NewNamespace(command=tuple(command), keep_id=ns.keep_id),
        net=NetworkModel(**net),  # type: ignore[arg-type]
        tapname=TAPNAME,
        configure=True,
        offload=not ns.disable_offload,
        forwards=tuple(parse_port_mapping(p) for p in ns.publish),
        dns_upstreams=tuple(normalize_dns_upstream(d) for d in ns.dns_upstream),
        outbound_addr=None if ns.outbound_addr is None else parse_outbound_addr(ns.outbound_addr),
        resolv_conf=ns.resolv_conf,
        debug=ns.verbose > 1,
        log_flows=ns.verbose > 0,
        print_stats=ns.stats,
        policy=None if ns.policy is None else _load_policy(ns.policy),
    )


def parse_run_args(argv: Sequence[str]) -> DaemonOptions:
    """Parse `slirpy run` arguments (after the word `run`); ConfigError on bad values.

    argparse usage errors still exit 2 through the parser's `error()`.
    """
    parser = OneLineArgumentParser(prog=PROG_RUN, usage=f"{PROG_RUN} [OPTIONS] -- COMMAND [ARG]...")
    add_run_arguments(parser)
    return options_from_args(parser.parse_args(list(argv)))
