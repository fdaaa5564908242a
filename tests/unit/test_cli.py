"""Unit tests for the command-line front ends: slirp4netns's, `slirpy`, and their exits.

`slirpy.daemon` is replaced by a fake module wherever a command line parses
successfully, so nothing here needs namespaces, a TAP or the C engine.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import types
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

import pytest

import slirpy
from slirpy.config import ConfigError, NetworkModel
from slirpy.frontends.common import UsageError
from slirpy.frontends.main import main
from slirpy.frontends.run import parse_run_args
from slirpy.frontends.slirp4netns import (
    HelpRequested,
    VersionRequested,
    help_text,
    parse_slirp4netns_args,
    slirp4netns_main,
    version_text,
)
from slirpy.options import DaemonOptions, JoinPath, JoinPid, NewNamespace, PortMapping

REPO_ROOT = Path(__file__).resolve().parents[2]

HELP_SUBSTRINGS = (
    "--netns-type",
    "--userns-path",
    "--enable-ipv6",
    "--cidr",
    "--disable-host-loopback",
    "--api-socket",
    "--enable-sandbox",
    "--enable-seccomp",
    "--outbound-addr",
    "--outbound-addr6",
    "--disable-dns",
    "--mtu",
    "--macaddress",
)


def parse(*argv: str) -> DaemonOptions:
    return parse_slirp4netns_args(list(argv))


# ------------------------------------------------------------- option table

# (long name, short letter or None, value or None for flags, prerequisite args,
#  check on the resulting config)
Check = Callable[[DaemonOptions], bool]
OPTIONS: list[tuple[str, str | None, str | None, tuple[str, ...], Check]] = [
    ("configure", "c", None, (), lambda c: c.configure),
    ("exit-fd", "e", "3", (), lambda c: c.exit_fd == 3),
    ("ready-fd", "r", "4", (), lambda c: c.ready_fd == 4),
    ("mtu", "m", "65520", (), lambda c: c.net.mtu == 65520),
    ("enable-ipv6", "6", None, (), lambda c: c.net.ipv6),
    ("api-socket", "a", "/tmp/api.sock", (), lambda c: c.api_socket == "/tmp/api.sock"),
    ("cidr", None, "10.0.135.128/25", (), lambda c: c.net.guest == IPv4Address("10.0.135.228")),
    ("disable-host-loopback", None, None, (), lambda c: not c.net.host_loopback),
    ("netns-type", None, "pid", (), lambda c: isinstance(c.target, JoinPid)),
    (
        "userns-path",
        None,
        "/proc/1/ns/user",
        (),
        lambda c: c.target == JoinPid(1234, "/proc/1/ns/user"),
    ),
    ("enable-sandbox", None, None, (), lambda c: c.sandbox),
    ("enable-seccomp", None, None, (), lambda c: c.seccomp),
    ("outbound-addr", None, "192.168.1.5", (), lambda c: c.outbound_addr == "192.168.1.5"),
    ("outbound-addr6", None, "2001:db8::5", (), lambda c: c.outbound_addr6 == "2001:db8::5"),
    ("disable-dns", None, None, (), lambda c: not c.net.dns_enabled),
    (
        "macaddress",
        None,
        "02:42:ac:11:00:02",
        ("-c",),
        lambda c: c.net.guest_mac == bytes.fromhex("0242ac110002"),
    ),
    ("target-type", None, "netns", (), lambda c: c.target == JoinPid(1234)),
    ("ipv6-prefix", None, "fd12::/64", (), lambda c: c.net.prefix6 == IPv6Network("fd12::/64")),
    ("dns-upstream", None, "192.0.2.53", (), lambda c: c.dns_upstreams == ("192.0.2.53:53",)),
    ("resolv-conf", None, "/tmp/resolv.conf", (), lambda c: c.resolv_conf == "/tmp/resolv.conf"),
    ("disable-offload", None, None, (), lambda c: not c.offload),
    ("debug", None, None, (), lambda c: c.debug),
]


def _forms(long: str, short: str | None, value: str | None) -> list[list[str]]:
    if value is None:
        forms = [[f"--{long}"]]
        if short:
            forms.append([f"-{short}"])
        return forms
    forms = [[f"--{long}={value}"], [f"--{long}", value]]
    if short:
        forms += [[f"-{short}{value}"], [f"-{short}", value]]
    return forms


OPTION_CASES = [
    pytest.param(form, pre, check, position, id=f"{' '.join(form)}-{position}")
    for long, short, value, pre, check in OPTIONS
    for form in _forms(long, short, value)
    for position in ("before", "after")
]


@pytest.mark.parametrize(("form", "pre", "check", "position"), OPTION_CASES)
def test_every_option(form: list[str], pre: tuple[str, ...], check: Check, position: str) -> None:
    argv = [*pre, *form, "1234"] if position == "before" else ["1234", *pre, *form]
    cfg = parse(*argv)
    assert check(cfg)
    assert cfg.target.pid == 1234


def test_defaults() -> None:
    cfg = parse("1234")
    assert cfg == DaemonOptions(target=JoinPid(1234))
    assert cfg.net == NetworkModel()
    assert cfg.tapname == "tap0"
    assert cfg.target == JoinPid(1234, None)
    assert cfg.configure is False
    assert cfg.exit_fd is None and cfg.ready_fd is None
    assert cfg.net.mtu == 1500
    assert cfg.net.ipv6 is False
    assert cfg.net.cidr == IPv4Network("10.0.2.0/24")
    assert cfg.net.host_loopback is True and cfg.net.dns_enabled is True
    assert cfg.net.guest_mac is None
    assert cfg.offload is True and cfg.debug is False
    assert cfg.resolv_conf == "/etc/resolv.conf"


def test_default_addresses() -> None:
    net = parse("1234").net
    assert (str(net.gateway), str(net.dns), str(net.guest)) == (
        "10.0.2.2",
        "10.0.2.3",
        "10.0.2.100",
    )
    assert (str(net.gateway6), str(net.dns6), str(net.router_ll6)) == (
        "fd00::2",
        "fd00::3",
        "fe80::2",
    )


def test_slash25_addresses() -> None:
    net = parse("--cidr", "10.0.135.128/25", "1234").net
    assert str(net.guest) == "10.0.135.228"
    assert str(net.gateway) == "10.0.135.130"
    assert str(net.dns) == "10.0.135.131"
    assert str(net.netmask) == "255.255.255.128"


def test_podman_invocation() -> None:
    cfg = parse(
        *shlex.split(
            "--disable-host-loopback --mtu=65520 --enable-sandbox --enable-seccomp --enable-ipv6 "
            "-c -e 3 -r 4 --netns-type=path /run/user/1000/netns/netns-abcd tap0"
        )
    )
    assert cfg.target == JoinPath("/run/user/1000/netns/netns-abcd")
    assert cfg.tapname == "tap0"
    assert (cfg.exit_fd, cfg.ready_fd) == (3, 4)
    assert cfg.configure and cfg.sandbox and cfg.seccomp
    assert cfg.net.ipv6 and not cfg.net.host_loopback and cfg.net.mtu == 65520


def test_rootlesskit_invocation() -> None:
    cfg = parse(
        *shlex.split(
            "--mtu 65520 -r 3 --disable-host-loopback --cidr 10.0.3.0/24 --api-socket /tmp/s "
            "--enable-sandbox --enable-seccomp --enable-ipv6 4242 tap0"
        )
    )
    assert cfg.target == JoinPid(4242) and cfg.tapname == "tap0"
    assert cfg.ready_fd == 3 and cfg.exit_fd is None
    assert cfg.api_socket == "/tmp/s"
    assert str(cfg.net.guest) == "10.0.3.100"


def test_options_after_positionals() -> None:
    cfg = parse("1234", "tap1", "-c", "--mtu", "9000", "-6")
    assert cfg.tapname == "tap1" and cfg.configure and cfg.net.mtu == 9000 and cfg.net.ipv6


def test_combined_short_options() -> None:
    cfg = parse("-c6m1400", "1234")
    assert cfg.configure and cfg.net.ipv6 and cfg.net.mtu == 1400
    cfg = parse("-c6e", "5", "1234")
    assert cfg.configure and cfg.net.ipv6 and cfg.exit_fd == 5


def test_double_dash_ends_options() -> None:
    cfg = parse("--netns-type=path", "--", "-weird-path")
    assert cfg.target == JoinPath("-weird-path")


def test_unique_prefix_of_long_option() -> None:
    # getopt_long semantics (as slirp4netns): unambiguous prefixes are accepted.
    assert parse("--conf", "1234").configure


def test_last_value_wins_and_dns_upstream_repeats() -> None:
    cfg = parse(
        "--mtu=1400", "--mtu=1500", "--dns-upstream=192.0.2.53", "--dns-upstream", "[::1]:5353", "1"
    )
    assert cfg.net.mtu == 1500
    assert cfg.dns_upstreams == ("192.0.2.53:53", "[::1]:5353")


def test_tapname_and_path_target() -> None:
    cfg = parse("--netns-type=path", "/var/run/netns/x", "eth7")
    assert cfg.target == JoinPath("/var/run/netns/x") and cfg.tapname == "eth7"


def test_no_host_loopback_alias_warns(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = parse("--no-host-loopback", "1234")
    assert cfg.net.host_loopback is False
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "slirpy-slirp4netns: warning: --no-host-loopback is deprecated, "
        "use --disable-host-loopback\n"
    )


def test_warn_callback() -> None:
    seen: list[str] = []
    parse_slirp4netns_args(["--no-host-loopback", "1"], warn=seen.append)
    assert seen == ["--no-host-loopback is deprecated, use --disable-host-loopback"]


# ------------------------------------------------------------------ errors

ERRORS: list[tuple[list[str], type[ConfigError], str]] = [
    (["--foo", "1234"], UsageError, "unrecognized option '--foo'"),
    (["-x", "1234"], UsageError, "unrecognized option '-x'"),
    (["1234", "--mtu"], UsageError, "option '--mtu' requires an argument"),
    (["1234", "-m"], UsageError, "option '-m' requires an argument"),
    (["--configure=yes", "1234"], UsageError, "option '--configure' doesn't allow an argument"),
    (["--disable", "1234"], UsageError, "option '--disable' is ambiguous"),
    ([], UsageError, "missing PID|PATH argument (see --help)"),
    (["-c", "--mtu=1500"], UsageError, "missing PID|PATH argument (see --help)"),
    (["1", "tap0", "extra"], UsageError, "too many arguments: unexpected 'extra'"),
    (["abc"], ConfigError, "PID must be a positive integer: 'abc'"),
    (["0"], ConfigError, "PID must be a positive integer: '0'"),
    (["/proc/1/ns/net"], ConfigError, "PID must be a positive integer: '/proc/1/ns/net'"),
    (["--mtu=70000", "123"], ConfigError, "MTU must be between 68 and 65521, got 70000"),
    (["--mtu=67", "123"], ConfigError, "MTU must be between 68 and 65521, got 67"),
    (["-m", "big", "123"], ConfigError, "MTU must be an integer, got 'big'"),
    (["-e", "x", "1"], ConfigError, "--exit-fd must be a non-negative integer, got 'x'"),
    (["--exit-fd=-1", "1"], ConfigError, "--exit-fd must be a non-negative integer, got '-1'"),
    (["-r", "", "1"], ConfigError, "--ready-fd must be a non-negative integer, got ''"),
    (
        ["--cidr=10.0.2.1/24", "1"],
        ConfigError,
        "CIDR '10.0.2.1/24' is not a network address (host bits are set); "
        "did you mean 10.0.2.0/24?",
    ),
    (
        ["--cidr=10.0.2.0/26", "1"],
        ConfigError,
        "CIDR prefix length must be between 1 and 25, got /26",
    ),
    (["--netns-type=foo", "1"], ConfigError, "--netns-type must be 'pid' or 'path', got 'foo'"),
    (
        ["--macaddress=02:42:ac:11:00:02", "1"],
        ConfigError,
        "--macaddress can only be used with --configure",
    ),
    (
        ["-c", "--macaddress=zz", "1"],
        ConfigError,
        "invalid MAC address 'zz': expected six hex octets like 02:42:ac:11:00:02",
    ),
    (["--target-type=bess", "1"], ConfigError, "--target-type=bess is not supported by slirpy"),
    (["--target-type", "foo", "1"], ConfigError, "--target-type=foo is not supported by slirpy"),
    (
        ["--outbound-addr=::1", "1"],
        ConfigError,
        "--outbound-addr takes an IPv4 address or an interface name, got '::1' "
        "(use --outbound-addr6 for IPv6)",
    ),
    (
        ["--outbound-addr6=10.0.0.1", "1"],
        ConfigError,
        "--outbound-addr6 takes an IPv6 address or an interface name, got '10.0.0.1' "
        "(use --outbound-addr for IPv4)",
    ),
    (
        ["--api-socket", "/" + "s" * 120, "1"],
        ConfigError,
        f"--api-socket path is too long (121 bytes, the limit is 107): '/{'s' * 120}'",
    ),
    (
        ["1", "x" * 16],
        ConfigError,
        f"invalid TAP device name '{'x' * 16}': 1 to 15 bytes, no '/', ':' or whitespace",
    ),
    (["--userns-path=", "1"], ConfigError, "--userns-path must not be empty"),
    (
        ["--dns-upstream=dns.google", "1"],
        ConfigError,
        "invalid DNS upstream 'dns.google': expected ADDR, ADDR:PORT or [IPv6]:PORT",
    ),
    (
        ["--ipv6-prefix=fd00::/48", "1"],
        ConfigError,
        "IPv6 prefix must be a /64 (SLAAC needs it), got /48",
    ),
]


@pytest.mark.parametrize(("argv", "kind", "message"), ERRORS)
def test_errors(argv: list[str], kind: type[ConfigError], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(*argv)
    assert isinstance(err.value, kind)
    assert str(err.value) == message
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("argv", "kind", "message"), ERRORS)
def test_errors_exit_1_with_one_line(
    argv: list[str], kind: type[ConfigError], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        slirp4netns_main(argv)
    assert exc.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"slirpy-slirp4netns: {message}\n"


# ------------------------------------------------------------- help/version


def test_help_text_is_an_interface() -> None:
    text = help_text()
    lines = text.splitlines()
    assert lines[0] == "Usage: slirpy-slirp4netns [OPTION]... PID|PATH [TAPNAME]"
    assert lines[1] and not lines[1].startswith("-")
    for sub in HELP_SUBSTRINGS:
        assert sub in text, sub
    # One line per option, every option line starts with a dash.
    assert all(line.startswith("-") for line in lines[2:])
    assert any(line.startswith("--cidr=CIDR ") and "default=10.0.2.0/24" in line for line in lines)
    assert any(line.startswith("-c, --configure ") for line in lines)


@pytest.mark.parametrize(
    "argv",
    [["-h"], ["--help"], ["--help", "1234"], ["--mtu=1", "--help"], ["-ch"], ["--he"]],
)
def test_help_wins(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(HelpRequested):
        parse(*argv)
    with pytest.raises(SystemExit) as exc:
        slirp4netns_main(argv)
    assert exc.value.code == 0
    captured = capsys.readouterr()
    assert captured.out == help_text() and captured.err == ""


@pytest.mark.parametrize("argv", [["-v"], ["--version"], ["--version", "abc"]])
def test_version(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(VersionRequested):
        parse(*argv)
    with pytest.raises(SystemExit) as exc:
        slirp4netns_main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out == version_text()
    assert out.splitlines() == [
        f"slirpy-slirp4netns version {slirpy.__version__}",
        "commit: slirpy",
        "libslirp: none (slirpy engine)",
        "SLIRP_CONFIG_VERSION_MAX: 4",
    ]


# ------------------------------------------------------ delegation to the daemon


@pytest.fixture
def fake_daemon(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Install a fake `slirpy.daemon` recording the options each front end built."""
    calls: dict[str, Any] = {"return": 7}
    module = types.ModuleType("slirpy.daemon")

    class Daemon:
        def __init__(self, opts: DaemonOptions, **_kw: object) -> None:
            self.opts = opts

        def run(self) -> int:
            kind = "run" if isinstance(self.opts.target, NewNamespace) else "slirp4netns"
            calls[kind] = self.opts
            if isinstance(calls["return"], BaseException):
                raise calls["return"]
            return int(calls["return"])

    module.Daemon = Daemon  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "slirpy.daemon", module)
    return calls


def test_slirp4netns_main_runs_daemon(fake_daemon: dict[str, Any]) -> None:
    with pytest.raises(SystemExit) as exc:
        slirp4netns_main(["-c", "1234", "tap0"])
    assert exc.value.code == 7
    assert fake_daemon["slirp4netns"] == DaemonOptions(target=JoinPid(1234), configure=True)


def test_slirp4netns_main_runtime_config_error(
    fake_daemon: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_daemon["return"] = ConfigError("no process with PID 1234; is the container running?")
    with pytest.raises(SystemExit) as exc:
        slirp4netns_main(["1234"])
    assert exc.value.code == 1
    assert capsys.readouterr().err == (
        "slirpy-slirp4netns: no process with PID 1234; is the container running?\n"
    )


def test_slirpy_slirp4netns_subcommand(fake_daemon: dict[str, Any]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["slirp4netns", "-c", "-6", "--mtu", "9000", "99"])
    assert exc.value.code == 7
    cfg = fake_daemon["slirp4netns"]
    assert cfg.target == JoinPid(99) and cfg.configure and cfg.net.ipv6 and cfg.net.mtu == 9000


def test_slirpy_slirp4netns_subcommand_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["slirp4netns", "--bogus", "1"])
    assert exc.value.code == 1
    assert capsys.readouterr().err == "slirpy-slirp4netns: unrecognized option '--bogus'\n"


# ---------------------------------------------------------------- slirpy run


def test_slirpy_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"slirpy {slirpy.__version__}\n"


def test_run_defaults() -> None:
    cfg = parse_run_args(["--", "sh", "-c", "echo hi"])
    assert cfg == DaemonOptions(
        target=NewNamespace(command=("sh", "-c", "echo hi")), configure=True
    )


def test_run_command_without_double_dash() -> None:
    assert parse_run_args(["ls", "-l", "--", "x"]).command == ("ls", "-l", "--", "x")


def test_run_all_options() -> None:
    cfg = parse_run_args(
        [
            "-p", "8080:80",
            "--publish=127.0.0.1:5353:53/udp",
            "--publish", "[::1]:8443:443",
            "--ipv6",
            "--ipv6-prefix", "fd12::/64",
            "--mtu", "9000",
            "--cidr=10.0.135.128/25",
            "--dns-upstream", "192.0.2.53",
            "--dns-upstream=[2001:db8::53]:53",
            "--outbound-addr", "eth0",
            "--no-host-loopback",
            "--resolv-conf", "/tmp/r",
            "--disable-offload",
            "-vv",
            "--stats",
            "--",
            "curl", "-v", "http://10.0.2.2:8080/",
        ]
    )  # fmt: skip
    assert cfg.command == ("curl", "-v", "http://10.0.2.2:8080/")
    assert cfg.forwards == (
        PortMapping("tcp", "0.0.0.0", 8080, 80),
        PortMapping("udp", "127.0.0.1", 5353, 53),
        PortMapping("tcp", "::1", 8443, 443),
    )
    assert cfg.net.ipv6 and cfg.net.prefix6 == IPv6Network("fd12::/64")
    assert cfg.net.mtu == 9000
    assert str(cfg.net.guest) == "10.0.135.228"
    assert cfg.net.host_loopback is False
    assert cfg.dns_upstreams == ("192.0.2.53:53", "[2001:db8::53]:53")
    assert cfg.outbound_addr == "eth0"
    assert cfg.resolv_conf == "/tmp/r"
    assert cfg.offload is False
    assert cfg.log_flows and cfg.debug
    assert cfg.print_stats is True


def test_main_run_calls_daemon(fake_daemon: dict[str, Any]) -> None:
    fake_daemon["return"] = 3
    with pytest.raises(SystemExit) as exc:
        main(["run", "-p", "8080:80", "--", "true"])
    assert exc.value.code == 3
    assert fake_daemon["run"] == DaemonOptions(
        target=NewNamespace(command=("true",)),
        configure=True,
        forwards=(PortMapping("tcp", "0.0.0.0", 8080, 80),),
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "slirpy: a COMMAND is required (slirp4netns or run); see --help"),
        (["run"], "slirpy: no command given: use slirpy run [OPTIONS] -- COMMAND [ARG]..."),
        (["run", "--"], "slirpy: no command given: use slirpy run [OPTIONS] -- COMMAND [ARG]..."),
        (
            ["run", "--mtu", "70000", "--", "sh"],
            "slirpy: MTU must be between 68 and 65521, got 70000",
        ),
        (["run", "-p", "80", "--", "sh"], "slirpy: invalid --publish '80': expected"),
        (["run", "--bogus", "--", "sh"], "slirpy: unrecognized arguments: --bogus"),
        (["run", "--mtu"], "slirpy run: argument --mtu: expected one argument"),
        (["frobnicate"], "slirpy: argument COMMAND: invalid choice: 'frobnicate'"),
    ],
)
def test_main_errors_one_line_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(message)


# ------------------------------------------------------------- real entry point


def _run(*args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "slirpy", *args]
    env = {k: v for k, v in os.environ.items() if k != "POSIXLY_CORRECT"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_subprocess_help() -> None:
    proc = _run("slirp4netns", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: slirpy-slirp4netns [OPTION]... PID|PATH [TAPNAME]\n")
    for sub in HELP_SUBSTRINGS:
        assert sub in proc.stdout
    assert proc.stderr == ""


def test_subprocess_version() -> None:
    proc = _run("slirp4netns", "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == f"slirpy-slirp4netns version {slirpy.__version__}"
    assert "SLIRP_CONFIG_VERSION_MAX: 4" in proc.stdout.splitlines()


def test_subprocess_slirpy_version() -> None:
    proc = _run("--version")
    assert proc.returncode == 0
    assert proc.stdout == f"slirpy {slirpy.__version__}\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mtu=70000", "123"], "MTU must be between 68 and 65521, got 70000"),
        (["--foo", "123"], "unrecognized option '--foo'"),
        ([], "missing PID|PATH argument (see --help)"),
        (["abc"], "PID must be a positive integer: 'abc'"),
    ],
)
def test_subprocess_bad_input(args: list[str], message: str) -> None:
    proc = _run("slirp4netns", *args)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == f"slirpy-slirp4netns: {message}\n"
    assert "Traceback" not in proc.stderr


def test_subprocess_help_into_closed_pipe() -> None:
    # `slirpy-slirp4netns --help | head -1` must not print a traceback.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        f"'{sys.executable}' -m slirpy slirp4netns --help | head -c 1 >/dev/null; "
        "exit ${PIPESTATUS[0]}",
        shell=True,
        executable="/bin/bash",
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in proc.stderr
    assert "Exception ignored" not in proc.stderr


def test_cli_import_stays_light() -> None:
    heavy = (
        "argparse",
        "cffi",
        "_cffi_backend",
        "asyncio",
        "uvloop",
        "slirpy.daemon",
        "slirpy._engine",
    )
    proc = _run(
        code=(
            "import sys, slirpy.frontends.slirp4netns, slirpy.options, slirpy.__main__\n"
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
        )
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_help_and_errors_do_not_import_the_daemon() -> None:
    proc = _run(
        code=(
            "import sys\n"
            "from slirpy.frontends.slirp4netns import slirp4netns_main\n"
            "for argv in (['--help'], ['--mtu=1', '1']):\n"
            "    try:\n"
            "        slirp4netns_main(argv)\n"
            "    except SystemExit:\n"
            "        pass\n"
            "print('slirpy.daemon' in sys.modules, 'asyncio' in sys.modules)\n"
        )
    )
    assert proc.stdout.strip().splitlines()[-1] == "False False"
