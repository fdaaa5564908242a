"""Unit tests for pasta's command line (slirpy.frontends.pasta) and its exits.

Every argv that ../shared/COMPAT-pasta.md quotes (Podman 5.x/6, the
rootless netns, RootlessKit 2.0-2.2 and 2.3+) parses to the DaemonOptions it
must; getopt_long's rules and glibc's messages hold; every option of pasta's
list either changes the options, warns, or is refused with one line and
exit 1. `slirpy.daemon` is replaced by a fake module where a command line
parses, so nothing here needs namespaces or the engine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slirpy import __version__
from slirpy.config import ConfigError
from slirpy.frontends.common import UsageError
from slirpy.frontends.main import main
from slirpy.frontends.pasta import (
    HelpRequested,
    VersionRequested,
    help_text,
    parse_pasta_args,
    pasta_main,
    read_ephemeral_range,
    version_text,
)
from slirpy.frontends.pasta_ports import DEFAULT_EPHEMERAL
from slirpy.options import (
    AutoForward,
    DaemonOptions,
    HostLoopbackForward,
    JoinPath,
    JoinPid,
    NewNamespace,
    PortMapping,
    SharedAddressing,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
NS = "/run/user/1000/netns/netns-0a1b2c3d-0a1b-0a1b-0a1b-0a1b2c3d4e5f"
EPHEMERAL = frozenset(range(DEFAULT_EPHEMERAL[0], DEFAULT_EPHEMERAL[1] + 1))
V4 = IPv4Address


def parse(*argv: str, warnings: list[str] | None = None) -> DaemonOptions:
    sink = [] if warnings is None else warnings
    return parse_pasta_args(list(argv), warn=sink.append, environ={"SHELL": "/bin/zsh"})


def auto(*which: str) -> tuple[AutoForward, ...]:
    """pasta's default `auto` for the given options, in -t -u -T -U order."""
    table = {"-t": ("tcp", "in"), "-u": ("udp", "in"), "-T": ("tcp", "out"),
             "-U": ("udp", "out")}
    return tuple(AutoForward(*table[w], excluded=EPHEMERAL) for w in which)  # type: ignore[misc]


def podman(*middle: str) -> list[str]:
    """Podman 5.3+'s argv around `middle` (CONF, CLI, ports, --dns-forward...)."""
    return ["--config-net", *middle, "--no-map-gw", "--quiet", "--netns", NS,
            "--map-guest-addr", "169.254.1.2"]


PODMAN_SHARED = SharedAddressing(
    config_net=True, no_ra=True, no_map_gw=True,
    dns_forward=(V4("169.254.1.1"),), map_guest_addr=(V4("169.254.1.2"),),
)


# ----------------------------------------------------------- Podman's lines


def test_podman_default_line() -> None:
    got = parse(*podman("--dns-forward", "169.254.1.1", "-t", "none", "-u", "none",
                        "-T", "none", "-U", "none"))
    assert got == DaemonOptions(
        target=JoinPath(NS, netns_only=True),
        shared=PODMAN_SHARED,
        quiet=True,
        daemonize=True,
        netns_quit=True,
    )


def test_podman_published_ports() -> None:
    got = parse(*podman("-t", "80-80:60-60", "-u", "100-100:100-100",
                        "--dns-forward", "169.254.1.1", "-T", "none", "-U", "none"))
    assert got.forwards == (
        PortMapping("tcp", "", 80, 60, splice_loopback=True, option="-t 80-80:60-60"),
        PortMapping("udp", "", 100, 100, option="-u 100-100:100-100"),
    )
    assert got.loopback_forwards == () and got.auto_forwards == ()
    assert got.shared == PODMAN_SHARED


def test_podman_host_ip_ports() -> None:
    got = parse(*podman("-t", "127.0.0.1/8080-8080:80-80", "-t", "::1/8080-8080:80-80",
                        "--dns-forward", "169.254.1.1", "-u", "none", "-T", "none",
                        "-U", "none"))
    assert [(m.host_addr, m.host_port, m.guest_port) for m in got.forwards] == [
        ("127.0.0.1", 8080, 80), ("::1", 8080, 80),
    ]


def test_podman_conf_and_cli_options() -> None:
    got = parse(*podman("-i", "eth0", "-n", "24", "--dns-forward", "169.254.1.1",
                        "-t", "none", "-u", "none", "-T", "none", "-U", "none"))
    assert got.shared is not None
    assert (got.shared.template_if4, got.shared.template_if6) == ("eth0", "eth0")
    assert got.shared.prefixlen4 == 24 and got.shared.address4 is None
    assert got.outbound_addr is None


def test_podman_debug_options_without_quiet() -> None:
    argv = ["--config-net", "--log-file=/tmp/log", "--trace", "--debug", "--dns-forward",
            "169.254.1.1", "-t", "none", "-u", "none", "-T", "none", "-U", "none",
            "--no-map-gw", "--netns", NS, "--map-guest-addr", "169.254.1.2"]
    got = parse(*argv)
    assert (got.log_file, got.debug, got.log_flows, got.quiet) == ("/tmp/log", True, True, False)


def test_podman_rootless_netns_line() -> None:
    d = "/run/user/1000/containers/networks/rootless-netns"
    got = parse("--config-net", "--pid", f"{d}/rootless-netns-conn.pid", "--dns-forward",
                "169.254.1.1", "-t", "none", "-u", "none", "-T", "none", "-U", "none",
                "--no-map-gw", "--quiet", "--netns", f"{d}/rootless-netns",
                "--map-guest-addr", "169.254.1.2")
    assert got == DaemonOptions(
        target=JoinPath(f"{d}/rootless-netns", netns_only=True),
        shared=PODMAN_SHARED,
        quiet=True,
        daemonize=True,
        netns_quit=True,
        pid_file=f"{d}/rootless-netns-conn.pid",
    )


def test_podman_500_line() -> None:
    got = parse("--config-net", "-t", "8080-8080:80-80", "-u", "none", "-T", "none",
                "-U", "none", "--no-map-gw", "--dns", "none", "--quiet", "--netns", NS)
    assert got.shared is not None and got.shared.dns_servers == ()
    assert len(got.forwards) == 1


def test_buildah_proc_netns_path() -> None:
    got = parse("--config-net", "--netns", "/proc/4242/ns/net", "-t", "none", "-u", "none",
                "-T", "none", "-U", "none")
    assert got.target == JoinPath("/proc/4242/ns/net", netns_only=True)
    assert got.netns_quit


def test_podman_user_dns_forward_twice_last_wins() -> None:
    # A user --dns-forward=X is not seen by Podman, which adds its own after it.
    got = parse(*podman("--dns-forward=192.0.2.53", "--dns-forward", "169.254.1.1",
                        "--dns-forward", "fd00::53"))
    assert got.shared is not None
    assert got.shared.dns_forward == (V4("169.254.1.1"), IPv6Address("fd00::53"))


def test_podman_user_tcp_ports_then_none_conflicts() -> None:
    with pytest.raises(ConfigError, match=r"^-t none conflicts with previous options$"):
        parse(*podman("--tcp-ports=80", "-t", "none"))


# -------------------------------------------------------- RootlessKit's lines

RK_COMMON = ["--stderr", "--ns-ifname=tap0", "--mtu=65520", "--config-net",
             "--address=10.0.2.100", "--netmask=24", "--gateway=10.0.2.2",
             "--dns-forward=10.0.2.3"]
RK_SHARED = SharedAddressing(
    config_net=True, no_ra=True, ifname="tap0", address4=V4("10.0.2.100"), prefixlen4=24,
    gateway4=V4("10.0.2.2"), dns_forward=(V4("10.0.2.3"),),
)


def test_rootlesskit_23_with_pid() -> None:
    warnings: list[str] = []
    got = parse(*RK_COMMON, "--no-map-gw", "--ipv4-only", "--tcp-ports=auto",
                "--udp-ports=auto", "--host-lo-to-ns-lo", "4242", warnings=warnings)
    assert warnings == ["--stderr will be dropped soon"]
    assert got == DaemonOptions(
        target=JoinPid(4242),
        tapname="tap0",
        shared=SharedAddressing(
            **{**RK_SHARED.__dict__, "no_map_gw": True, "ipv6": False, "host_lo_to_ns_lo": True}
        ),
        auto_forwards=(
            AutoForward("tcp", "in", excluded=EPHEMERAL, host_addr="0.0.0.0"),
            AutoForward("udp", "in", excluded=EPHEMERAL, host_addr="0.0.0.0"),
            AutoForward("tcp", "out", excluded=EPHEMERAL),
            AutoForward("udp", "out", excluded=EPHEMERAL),
        ),
        daemonize=True,
    )


def test_rootlesskit_23_detach_netns() -> None:
    got = parse(*RK_COMMON, "--tcp-ports=none", "--udp-ports=none",
                "--userns=/proc/4242/ns/user", "--netns=/proc/4242/root/run/rk/netns")
    assert got.target == JoinPath("/proc/4242/root/run/rk/netns", "/proc/4242/ns/user")
    assert got.forwards == () and got.auto_forwards == auto("-T", "-U")
    assert got.shared == RK_SHARED
    assert got.daemonize and got.netns_quit


def test_rootlesskit_20_foreground_line() -> None:
    got = parse("--foreground", "--stderr", "--ns-ifname=tap0", "--mtu=1500", "--no-dhcp",
                "--no-ra", "--address=10.0.2.100", "--netmask=24", "--gateway=10.0.2.2",
                "--dns-forward=10.0.2.3", "4242")
    assert got == DaemonOptions(
        target=JoinPid(4242),
        tapname="tap0",
        shared=SharedAddressing(
            ifname="tap0", mtu=1500, no_dhcp=True, no_ra=True, address4=V4("10.0.2.100"),
            prefixlen4=24, gateway4=V4("10.0.2.2"), dns_forward=(V4("10.0.2.3"),),
        ),
        auto_forwards=auto("-t", "-u", "-T", "-U"),
    )


# ----------------------------------------------------------------- targets


def test_netns_name_is_under_run_netns() -> None:
    assert parse("--netns", "ctr").target == JoinPath("/run/netns/ctr", netns_only=True)


def test_pid_joins_its_user_namespace_unless_userns() -> None:
    assert parse("1234").target == JoinPid(1234)
    assert parse("--userns", "/u", "1234").target == JoinPid(1234, "/u")
    assert parse("--netns-only", "1234").target == JoinPath("/proc/1234/ns/net",
                                                            netns_only=True)
    # --userns after --netns-only undoes it, and the reverse.
    assert parse("--netns-only", "--userns", "/u", "1").target == JoinPid(1, "/u")
    assert parse("--userns", "/u", "--netns-only", "--netns", "n").target == JoinPath(
        "/run/netns/n", netns_only=True)


def test_pid_target_does_not_watch_a_path() -> None:
    got = parse("1234")
    assert got.daemonize and not got.netns_quit


def test_command_runs_as_slirpy_run() -> None:
    got = parse("-t", "80", "--", "sh", "-c", "true")
    assert got.target == NewNamespace(command=("sh", "-c", "true"))
    assert not got.daemonize and not got.netns_quit


def test_no_target_runs_the_shell() -> None:
    assert parse("-f").target == NewNamespace(command=("/bin/zsh",))
    got = parse_pasta_args([], environ={})
    assert got.target == NewNamespace(command=("/bin/sh",))


def test_two_positionals_are_a_command_even_if_the_first_is_digits() -> None:
    assert parse("1234", "5").target == NewNamespace(command=("1234", "5"))


def test_no_netns_quit_and_foreground() -> None:
    got = parse("--no-netns-quit", "-f", "--netns", "x")
    assert not got.netns_quit and not got.daemonize


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--netns", "x", "1234"], "Both --netns and PID or command given"),
        (["--netns", "x", "sh"], "Both --netns and PID or command given"),
        (["--netns", ""], "--netns: empty network namespace name or path"),
        (["99999999999"], "Invalid PID 99999999999"),
        (["0"], "Invalid PID 0"),
        (["--userns", "/u", "sh"], "--userns needs --netns or a PID (slirpy-pasta runs a "
         "command in a user namespace of its own)"),
        (["--netns-only"], "--netns-only needs --netns or a PID (slirpy-pasta runs a "
         "command in a user namespace of its own)"),
        (["--userns", "", "1"], "--userns: empty path"),
    ],
)
def test_target_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(*argv)
    assert str(info.value) == message


# ------------------------------------------------------------------ getopt


def test_stops_at_first_non_option() -> None:
    got = parse("-f", "sh", "-t", "80", "--netns", "x")
    assert got.target == NewNamespace(command=("sh", "-t", "80", "--netns", "x"))
    assert got.forwards == ()


def test_bundled_short_options_and_attached_values() -> None:
    got = parse("-qf46", "-t80", "-m", "9000", "-P/tmp/p", "-ieth1", "--netns", "x")
    assert got.quiet and not got.daemonize
    assert got.shared is not None
    assert (got.shared.ipv4, got.shared.ipv6, got.shared.mtu) == (False, True, 9000)
    assert got.shared.template_if4 == "eth1" and got.pid_file == "/tmp/p"
    assert [(m.host_addr, m.host_port) for m in got.forwards] == [("::", 80)]
    assert parse("-dqt", "81", "1").quiet


def test_long_forms_and_prefixes() -> None:
    a = parse("--tcp-ports=80", "--pid", "/p", "--netns=x")
    b = parse("--tcp-ports", "80", "--pid=/p", "--netns", "x")
    c = parse("--tcp-p=80", "--pi=/p", "--netns", "x")  # unique prefixes
    assert a == b == c
    # An exact name wins over longer ones it prefixes.
    assert parse("--netns", "x", "--no-dhcp").shared.no_dhcp  # type: ignore[union-attr]
    # --sock is a prefix of --socket and --socket-path, both -s: not ambiguous.
    with pytest.raises(ConfigError, match=r"^-s/--socket-path is for passt"):
        parse("--sock=/x")


def test_double_dash_ends_options() -> None:
    assert parse("--", "-t").target == NewNamespace(command=("-t",))
    assert parse("-t", "none", "--").target == NewNamespace(command=("/bin/zsh",))


def test_last_one_wins() -> None:
    got = parse("-m", "1500", "-m", "9000", "-I", "a", "-I", "b", "-q", "-d", "1")
    assert got.shared is not None and (got.shared.mtu, got.shared.ifname) == (9000, "b")
    assert got.debug and not got.quiet
    got = parse("-d", "--trace", "-q", "1")
    assert got.quiet and not got.debug and not got.log_flows


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--map-guest-addr", "169.254.1.2"], None),  # the control: accepted
        (["--bogus"], "unrecognized option '--bogus'"),
        (["--map-gw"], "unrecognized option '--map-gw'"),
        (["--bogus=1"], "unrecognized option '--bogus=1'"),
        (["-k"], "invalid option -- 'k'"),
        (["-qk"], "invalid option -- 'k'"),
        (["-t"], "option requires an argument -- 't'"),
        (["--netns"], "option '--netns' requires an argument"),
        (["--tcp-p"], "option '--tcp-ports' requires an argument"),
        (["--quiet=1"], "option '--quiet' doesn't allow an argument"),
        (["--no"], "option '--no' is ambiguous; possibilities: '--no-tcp' '--no-udp' "
         "'--no-icmp' '--no-dhcp' '--no-dhcpv6' '--no-ndp' '--no-ra' '--no-splice' "
         "'--no-map-gw' '--no-dhcp-dns' '--no-dhcp-search' '--no-netns-quit' "
         "'--no-copy-routes' '--no-copy-addrs'"),
        (["--tcp=80"], "option '--tcp=80' is ambiguous; possibilities: '--tcp-ports' "
         "'--tcp-ns'"),
    ],
)
def test_getopt_errors(argv: list[str], message: str | None) -> None:
    if message is None:
        parse(*argv)
        return
    with pytest.raises(UsageError) as info:
        parse(*argv)
    assert str(info.value) == message


def test_options_are_handled_in_argv_order() -> None:
    with pytest.raises(VersionRequested):
        parse("--host-lo-to-ns-lo", "--version", "--bogus")
    with pytest.raises(HelpRequested):
        parse("-t", "bogus-spec", "-h")  # port specs are checked after all options
    with pytest.raises(UsageError):
        parse("--bogus", "--version")
    with pytest.raises(ConfigError, match="MTU"):
        parse("-m", "x", "--version")


# ------------------------------------------------------------------ network


def test_addresses_by_family() -> None:
    got = parse("-a", "192.0.2.1", "-a", "2001:db8::1", "-g", "192.0.2.254",
                "-g", "2001:db8::ff", "1").shared
    assert got is not None
    assert (got.address4, got.address6) == (V4("192.0.2.1"), IPv6Address("2001:db8::1"))
    assert (got.gateway4, got.gateway6) == (V4("192.0.2.254"), IPv6Address("2001:db8::ff"))
    assert got.prefixlen4 is None and got.address4_interface is not None
    assert str(got.address4_interface) == "192.0.2.1/24"


def test_address_prefix_and_netmask() -> None:
    assert parse("-a", "10.0.0.5/8", "1").shared.prefixlen4 == 8  # type: ignore[union-attr]
    assert parse("-n", "255.255.0.0", "-a", "10.0.0.5", "1").shared.prefixlen4 == 16  # type: ignore[union-attr]
    assert parse("-a", "10.0.0.5", "-n", "20", "1").shared.prefixlen4 == 20  # type: ignore[union-attr]
    assert parse("-a", "2001:db8::1/48", "1").shared.address6 == IPv6Address("2001:db8::1")  # type: ignore[union-attr]


def test_outbound() -> None:
    got = parse("-o", "192.0.2.7", "-o", "2001:db8::7", "1")
    assert (got.outbound_addr, got.outbound_addr6) == ("192.0.2.7", "2001:db8::7")
    got = parse("--outbound-if4", "eth1", "--outbound-if6", "wlan0", "1")
    assert (got.outbound_addr, got.outbound_addr6) == ("eth1", "wlan0")
    assert got.shared is not None
    assert (got.shared.template_if4, got.shared.template_if6) == ("eth1", "wlan0")
    got = parse("-i", "eth0", "--outbound-if4", "eth1", "1")
    assert got.shared is not None and got.shared.template_if4 == "eth0"


def test_dns_options() -> None:
    got = parse("-D", "192.0.2.53", "-D", "2001:db8::53", "-S", "a.example b.example",
                "-S", "c.example", "--dhcp-dns", "--dhcp-search", "--dns-host", "127.0.0.53",
                "1").shared
    assert got is not None
    assert got.dns_servers == (V4("192.0.2.53"), IPv6Address("2001:db8::53"))
    assert got.search_domains == ("a.example", "b.example", "c.example")
    assert got.dhcp_dns and got.dhcp_search and got.dns_host == (V4("127.0.0.53"),)
    got = parse("--dns-forward", "169.254.1.1", "--dns-host", "192.0.2.1", "-D", "192.0.2.9",
                "-D", "none", "-S", "x", "-S", "none", "1").shared
    assert got is not None
    assert got.dns_forward == got.dns_host == got.dns_servers == got.search_domains == ()


def test_maps() -> None:
    got = parse("--map-host-loopback", "169.254.1.3", "--map-guest-addr", "fd00::2",
                "--guest-addr-reaches-loopback", "1").shared
    assert got is not None
    assert got.map_host_loopback == (V4("169.254.1.3"),)
    assert got.map_guest_addr == (IPv6Address("fd00::2"),)
    assert got.guest_addr_reaches_loopback and not got.no_map_gw
    got = parse("--map-host-loopback", "169.254.1.3", "--map-host-loopback", "none",
                "--map-guest-addr", "169.254.1.2", "--map-guest-addr", "none", "1").shared
    assert got is not None
    assert got.map_host_loopback == got.map_guest_addr == () and got.no_map_gw


def test_splice_flags() -> None:
    got = parse("--no-splice", "-t", "80", "1")
    assert got.shared is not None and got.shared.no_splice
    assert not got.forwards[0].splice_loopback
    with pytest.raises(ConfigError, match=r"^--host-lo-to-ns-lo is incompatible with "
                       r"--no-splice$"):
        parse("--no-splice", "--host-lo-to-ns-lo", "1")


def test_api_socket_and_policy() -> None:
    got = parse("--api-socket", "/tmp/slirpy.sock", "--policy", "public-only", "1")
    assert got.api_socket == "/tmp/slirpy.sock"
    assert got.policy is not None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-m", "x"], "-m/--mtu: invalid MTU 'x'"),
        (["-m", "65521"], "-m/--mtu: MTU 65521 too large (max 65520)"),
        (["-m", "50"], "-m/--mtu: MTU 50 too small (min 68, or 0 not to set it)"),
        (["-a", "127.0.0.1"], "-a/--address: invalid address '127.0.0.1'"),
        (["-a", "10.0.0.1/33"], "-a/--address: invalid prefix length in '10.0.0.1/33'"),
        (["-n", "24", "-a", "10.0.0.1/8"], "-a/--address 10.0.0.1/8: redundant prefix length "
         "specification (-n given)"),
        (["-a", "10.0.0.1/8", "-n", "24"], "-n/--netmask 24: redundant prefix length "
         "specification (-a has one)"),
        (["-n", "255.0.255.0"], "-n/--netmask: invalid prefix length or netmask '255.0.255.0'"),
        (["-n", "33"], "-n/--netmask: invalid prefix length or netmask '33'"),
        (["-g", "0.0.0.0"], "-g/--gateway: invalid gateway address: 0.0.0.0"),
        (["-o", "ff02::1"], "-o/--outbound: invalid outbound address: ff02::1"),
        (["-i", "a/b"], "-i/--interface: invalid interface name 'a/b'"),
        (["-I", "x" * 16], f"-I/--ns-ifname: invalid interface name '{'x' * 16}'"),
        (["--outbound-if4", ""], "--outbound-if4: invalid interface name ''"),
        (["-M", "01:00:00:00:00:01"], "-M/--mac-addr: invalid MAC address "
         "'01:00:00:00:00:01': multicast addresses cannot be used"),
        (["--ns-mac-addr", "zz"], "--ns-mac-addr: invalid MAC address 'zz': expected six hex "
         "octets like 02:42:ac:11:00:02"),
        (["-D", "dns.example"], "-D/--dns: cannot use DNS address 'dns.example'"),
        (["-S", " "], "-S/--search: cannot use DNS search domain ' '"),
        (["--dns-forward", "127.0.0.1"], "--dns-forward: invalid DNS forwarding address: "
         "127.0.0.1"),
        (["--dns-host", "::"], "--dns-host: invalid host nameserver address: ::"),
        (["--map-guest-addr", "224.0.0.1"], "--map-guest-addr: invalid address to remap to "
         "host: 224.0.0.1"),
        (["--map-host-loopback", "::1"], "--map-host-loopback: invalid address to remap to "
         "host: ::1"),
        (["-o", "192.0.2.1", "--outbound-if4", "eth0"], "-o 192.0.2.1 and --outbound-if4 eth0: "
         "slirpy-pasta binds outbound IPv4 sockets to an address or to an interface, not both"),
        (["-l", ""], "-l/--log-file: empty path"),
        (["-P", ""], "-P/--pid: empty path"),
        (["--log-size", "big"], "--log-size: invalid size 'big'"),
        (["--no-tcp", "-t", "80"], "--no-tcp: not supported by slirpy-pasta (--policy can "
         "deny TCP)"),
        (["-t", "80-70"], "invalid port spec '-t 80-70': range '80-70' ends before it starts"),
        (["-T", "::1/80"], "Listening address not allowed for -T ::1/80"),
        (["--policy", "nonexistent-preset"], None),
        (["--pcap", "/tmp/x.pcap"], "-p/--pcap: not supported by slirpy-pasta (--api-socket's "
         "list_flows and get_stats show its traffic)"),
    ],
)
def test_bad_values(argv: list[str], message: str | None) -> None:
    with pytest.raises(ConfigError) as info:
        parse(*argv, "1")
    assert "\n" not in str(info.value)
    if message is not None:
        assert str(info.value) == message


# ------------------------------------------------- no option silently ignored

# Every option of COMPAT-pasta.md section 4 (and passt's that pasta's parser
# knows), with a value that is valid for pasta.
SECTION_4 = [
    ("-l", "/tmp/pasta.log"), ("--log-file", "/tmp/pasta.log"), ("--log-size", "1048576"),
    ("--runas", "1000"), ("-c", "/tmp/pasta.sock"), ("--conf-path", "/tmp/pasta.sock"),
    ("-p", "/tmp/x.pcap"), ("--pcap", "/tmp/x.pcap"), ("-P", "/tmp/p"), ("--pid", "/tmp/p"),
    ("-m", "1500"), ("--mtu", "1500"), ("-a", "192.0.2.1"), ("--address", "2001:db8::1"),
    ("-n", "16"), ("--netmask", "255.255.0.0"), ("-M", "02:00:00:00:00:01"),
    ("--mac-addr", "02:00:00:00:00:01"), ("-g", "192.0.2.254"), ("--gateway", "fe80::1"),
    ("-i", "eth0"), ("--interface", "eth0"), ("-o", "192.0.2.1"), ("--outbound", "::2"),
    ("--outbound-if4", "eth0"), ("--outbound-if6", "eth0"), ("-D", "192.0.2.53"),
    ("--dns", "2001:db8::53"), ("-S", "bed13.test"), ("--search", "bed13.test"),
    ("-H", "host"), ("--hostname", "host"), ("--fqdn", "host.bed13.test"),
    ("--dns-forward", "169.254.1.1"), ("--dns-host", "192.0.2.53"),
    ("--map-host-loopback", "169.254.1.3"), ("--map-guest-addr", "169.254.1.2"),
    ("-t", "80"), ("--tcp-ports", "none"), ("-u", "53"), ("--udp-ports", "none"),
    ("-T", "5201"), ("--tcp-ns", "none"), ("-U", "53"), ("--udp-ns", "none"),
    ("-I", "eth7"), ("--ns-ifname", "eth7"), ("--userns", "/proc/1/ns/user"),
    ("--netns", "/run/netns/x"), ("--ns-mac-addr", "02:00:00:00:00:02"), ("--stats", "1"),
    ("-d", None), ("--debug", None), ("--trace", None), ("-q", None), ("--quiet", None),
    ("-f", None), ("--foreground", None), ("-e", None), ("--stderr", None),
    ("--no-tcp", None), ("--no-udp", None), ("--no-icmp", None), ("--no-dhcp", None),
    ("--no-dhcpv6", None), ("--no-ndp", None), ("--no-ra", None), ("--freebind", None),
    ("--no-map-gw", None), ("-4", None), ("--ipv4-only", None), ("-6", None),
    ("--ipv6-only", None), ("--dhcp-dns", None), ("--dhcp-search", None),
    ("--no-netns-quit", None), ("--netns-only", None), ("--config-net", None),
    ("--no-copy-routes", None), ("--no-copy-addrs", None), ("--no-splice", None),
    ("--splice-only", None), ("--host-lo-to-ns-lo", None), ("--chroot-fallback", None),
    # passt's, which pasta's parser knows too
    ("-s", "/tmp/s"), ("--socket", "/tmp/s"), ("--socket-path", "/tmp/s"), ("-F", "3"),
    ("--fd", "3"), ("-1", None), ("--one-off", None), ("--no-dhcp-dns", None),
    ("--no-dhcp-search", None), ("--vhost-user", None), ("--print-capabilities", None),
    ("--repair-path", "/tmp/r"), ("--migrate-exit", None), ("--migrate-no-linger", None),
    # slirpy's
    ("--api-socket", "/tmp/api.sock"), ("--guest-addr-reaches-loopback", None),
    ("--policy", "host-only"),
]


@pytest.mark.parametrize(("option", "value"), SECTION_4)
def test_no_option_is_silently_ignored(option: str, value: str | None) -> None:
    """Each option changes the options, prints a warning, or is refused (one line)."""
    # --netns conflicts with a PID target: use a baseline with --netns for it.
    base = ["--netns", "/run/netns/base"] if option not in ("--netns",) else ["1"]
    if option in ("--userns", "--netns-only"):
        base = ["1"]
    argv = [option] if value is None else [option, value]
    baseline = parse(*base)
    warnings: list[str] = []
    try:
        got = parse(*argv, *base, warnings=warnings)
    except ConfigError as err:
        assert "\n" not in str(err) and str(err)
        return
    assert got != baseline or warnings, f"{argv} changed nothing and said nothing"


def test_warn_only_options() -> None:
    warnings: list[str] = []
    got = parse("-e", "--no-copy-routes", "--no-copy-addrs", "--chroot-fallback", "1",
                warnings=warnings)
    assert got == parse("1")
    assert warnings[0] == "--stderr will be dropped soon"
    assert len(warnings) == 4 and all("\n" not in w for w in warnings)


# ----------------------------------------------------------- texts and exits


def test_help_names_every_option() -> None:
    text = help_text("pasta")
    assert text.startswith("Usage: pasta [OPTION]... [COMMAND] [ARGS]...\n")
    for option, _ in SECTION_4:
        if option.startswith("--"):
            assert option in text, option


def test_version_text_starts_like_pastas() -> None:
    first = version_text().splitlines()[0]
    assert first == f"pasta slirpy-{__version__}"


def test_ephemeral_range_reader(tmp_path: Path) -> None:
    f = tmp_path / "range"
    f.write_text("40000\t50000\n")
    assert read_ephemeral_range(str(f)) == (40000, 50000)
    f.write_text("garbage\n")
    assert read_ephemeral_range(str(f)) == DEFAULT_EPHEMERAL
    assert read_ephemeral_range(str(tmp_path / "missing")) == DEFAULT_EPHEMERAL


def _exit(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[object, str, str]:
    with pytest.raises(SystemExit) as info:
        pasta_main(argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


@pytest.mark.parametrize("argv", [["--version"], ["--host-lo-to-ns-lo", "--version"]])
def test_version_exits_0(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _exit(argv, capsys)
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == f"pasta slirpy-{__version__}"


@pytest.mark.parametrize("option", ["-h", "--help"])
def test_help_exits_0(option: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _exit([option], capsys)
    assert (code, err) == (0, "")
    assert out == help_text()


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--map-guest-addrx", "1"], "slirpy-pasta: unrecognized option '--map-guest-addrx'"),
        (["--netns"], "slirpy-pasta: option '--netns' requires an argument"),
        (["-m", "0x10"], "slirpy-pasta: -m/--mtu: invalid MTU '0x10'"),
        (["--pcap=/x", "1"], "slirpy-pasta: -p/--pcap: not supported by slirpy-pasta "
         "(--api-socket's list_flows and get_stats show its traffic)"),
        (["--netns", "n", "1"], "slirpy-pasta: Both --netns and PID or command given"),
    ],
)
def test_errors_are_one_line_and_exit_1(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _exit(argv, capsys)
    assert (code, out, err) == (1, "", line + "\n")


@pytest.fixture
def fake_daemon(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Install a fake `slirpy.daemon` recording the options it was given."""
    calls: dict[str, Any] = {"return": 0}
    module = types.ModuleType("slirpy.daemon")

    class Daemon:
        def __init__(self, opts: DaemonOptions, **_kw: object) -> None:
            self.opts = opts

        def run(self) -> int:
            calls["opts"] = self.opts
            if isinstance(calls["return"], BaseException):
                raise calls["return"]
            return int(calls["return"])

    module.Daemon = Daemon  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "slirpy.daemon", module)
    return calls


def test_pasta_main_runs_the_daemon(fake_daemon: dict[str, Any]) -> None:
    with pytest.raises(SystemExit) as info:
        pasta_main(podman())
    assert info.value.code == 0
    assert fake_daemon["opts"].target == JoinPath(NS, netns_only=True)


def test_pasta_main_runtime_error(fake_daemon: dict[str, Any],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    fake_daemon["return"] = ConfigError("Failed to bind port 8080 (Address already in use) "
                                        "for option '-t 8080-8080:80-80', exiting")
    code, _, err = _exit(podman("-t", "8080-8080:80-80"), capsys)
    assert code == 1
    assert err == ("slirpy-pasta: Failed to bind port 8080 (Address already in use) for option "
                   "'-t 8080-8080:80-80', exiting\n")


def test_slirpy_pasta_subcommand_passes_through(fake_daemon: dict[str, Any]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["pasta", "-t", "80", "--netns", "x", "-u", "none", "-T", "none", "-U", "none"])
    assert info.value.code == 0
    assert [m.host_port for m in fake_daemon["opts"].forwards] == [80]


def test_loopback_forwards_reach_the_daemon_options() -> None:
    got = parse("-T", "5201", "-U", "none", "1")
    assert got.loopback_forwards == (HostLoopbackForward("tcp", 5201, 5201, option="-T 5201"),)


# ------------------------------------------------------- as a `pasta` command

_AS_PASTA = (
    "import sys; sys.argv[0] = '/usr/local/libexec/podman/pasta'; "
    "from slirpy.frontends.pasta import pasta_main; pasta_main()"
)


def _pasta(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-c", _AS_PASTA, *args], capture_output=True,
                          text=True, env=env, timeout=60, check=False)


def test_podman_retry_sees_glibcs_message() -> None:
    """Podman drops --map-guest-addr when pasta says this (exit 1, argv[0]'s basename)."""
    proc = _pasta("--config-net", "--map-guest-addrr", "169.254.1.2")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == "pasta: unrecognized option '--map-guest-addrr'\n"
    assert "unrecognized option '--map-guest-addr" in proc.stderr


def test_rootlesskit_probes_as_a_command() -> None:
    for args in (["--version"], ["--host-lo-to-ns-lo", "--version"]):
        proc = _pasta(*args)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("pasta ")


# ------------------------------------------------------------ property test

_TOKENS = [opt for opt, _ in SECTION_4] + [
    v for _, v in SECTION_4 if v is not None
] + ["1", "sh", "--", "-", "none", "auto", "all", "~22", "::1/80", "-46qf", "--netns=x",
     "--tcp-ports=80", "-t80", "--no", "--map-gw", "", "0", "/x", "=", "--=1", "-tnone"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_TOKENS), max_size=8))
def test_any_argv_parses_or_fails_in_one_line(argv: list[str]) -> None:
    try:
        parse(*argv)
    except (HelpRequested, VersionRequested):
        pass
    except ConfigError as err:
        assert str(err) and "\n" not in str(err)
