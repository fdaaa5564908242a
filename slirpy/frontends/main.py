"""The `slirpy` command: `slirpy run ...`, `slirpy slirp4netns ...` and `slirpy pasta ...`.

This module owns the top-level command line (argparse; `--version`, the
subcommands) and dispatching to the front end each subcommand names. It
must not parse a subcommand's own options (slirpy.frontends.run,
slirpy.frontends.slirp4netns, slirpy.frontends.pasta do) nor run anything
itself.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from slirpy import __version__
from slirpy.config import ConfigError
from slirpy.frontends.common import fail, run_daemon
from slirpy.frontends.pasta import pasta_main
from slirpy.frontends.slirp4netns import slirp4netns_main

if TYPE_CHECKING:
    from argparse import ArgumentParser

__all__ = ["PROG_SLIRPY", "main"]

PROG_SLIRPY = "slirpy"


def _build_parser() -> ArgumentParser:
    # Not at import time: `slirpy slirp4netns` parses with getopt and must
    # not pay for argparse before its ready byte.
    from slirpy.frontends.run import OneLineArgumentParser, add_run_arguments

    parser = OneLineArgumentParser(
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
    sub.add_parser(
        "pasta",
        help="run as a pasta drop-in (same as slirpy-pasta)",
        add_help=False,
    )
    run = sub.add_parser(
        "run",
        help="run COMMAND in a new user+network namespace with slirpy networking",
        description="Run COMMAND in a new user, network and mount namespace networked by slirpy.",
        usage=f"{PROG_SLIRPY} run [OPTIONS] -- COMMAND [ARG]...",
    )
    add_run_arguments(run)
    return parser


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the `slirpy` command."""
    args = sys.argv[1:] if argv is None else list(argv)
    # slirp4netns's arguments are passed through untouched: argparse would
    # otherwise try to interpret its options (-c, -6, -e 3...).
    if args[:1] == ["slirp4netns"]:
        slirp4netns_main(args[1:])
    # Likewise pasta's (-t 80, --netns NS, a PID or a command...).
    if args[:1] == ["pasta"]:
        pasta_main(args[1:])

    ns = _build_parser().parse_args(args)
    if ns.subcommand is None:
        fail(PROG_SLIRPY, "a COMMAND is required (slirp4netns or run); see --help", 2)
    from slirpy.frontends.run import PolicyFileError, options_from_args

    try:
        opts = options_from_args(ns)
    except PolicyFileError as err:
        fail(PROG_SLIRPY, str(err), 1)
    except ConfigError as err:
        fail(PROG_SLIRPY, str(err), 2)
    run_daemon(PROG_SLIRPY, opts)
