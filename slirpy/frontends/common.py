"""What every command-line front end shares: one-line errors and handing over.

This module owns the rule that bad input ends in one readable line on stderr
and a non-zero exit, never a traceback (`fail`), writing help and version
texts to a stdout that may be a closed pipe (`write_stdout`), and
`run_daemon()`: hand one `DaemonOptions` to `slirpy.daemon.Daemon` and exit
with its code (1 and one line for a ConfigError, 130 for Ctrl-C).

It must not import the daemon, the engine or asyncio at import time: Podman
and RootlessKit run `--help` before every container, and that path must stay
fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from slirpy.config import ConfigError

if TYPE_CHECKING:
    from slirpy.host.netns import TapHandle
    from slirpy.options import DaemonOptions

__all__ = ["EXIT_INTERRUPTED", "UsageError", "fail", "run_daemon", "write_stdout"]

# What a shell reports for a command ended by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130


class UsageError(ConfigError):
    """The command line itself is malformed (unknown option, missing argument...)."""


def write_stdout(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # `... --help | head -1`: not an error. Point stdout at /dev/null so
        # the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def fail(prog: str, message: str, code: int) -> NoReturn:
    """Print `prog: message` as exactly one line on stderr and exit with `code`."""
    line = " ".join(str(message).split("\n"))
    print(f"{prog}: {line}", file=sys.stderr)
    sys.exit(code)


def run_daemon(
    prog: str, opts: DaemonOptions, on_tap: Callable[[TapHandle], None] | None = None
) -> NoReturn:
    """Run one daemon for `opts` and exit with its code, errors in one line."""
    try:
        # Lazy: the daemon pulls in asyncio and the cffi engine.
        from slirpy.daemon import Daemon
    except ImportError as err:
        fail(prog, f"slirpy is not installed correctly: {err}", 1)
    try:
        code = Daemon(opts, on_tap=on_tap).run()
    except ConfigError as err:
        # Bad input found only at run time (no such PID, no such interface...).
        fail(prog, str(err), 1)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code)
