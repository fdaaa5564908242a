"""Unit tests for slirpy.options: `DaemonOptions` and its targets, validated once.

Every front end builds one `DaemonOptions`; these checks are the last guard
(the library passes its keyword arguments straight in), so each bad value
must give one readable line naming the option.
"""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address, IPv6Address

import pytest

from slirpy.config import ConfigError, NetworkModel
from slirpy.options import DaemonOptions, JoinPath, JoinPid, NewNamespace, PortMapping


def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


def test_defaults() -> None:
    opts = DaemonOptions(target=JoinPid(1234))
    assert opts.net == NetworkModel()
    assert opts.tapname == "tap0"
    assert opts.target.pid == 1234 and opts.target.userns_path is None
    assert opts.configure is False
    assert opts.exit_fd is None and opts.ready_fd is None
    assert opts.api_socket is None
    assert opts.sandbox is False and opts.seccomp is False
    assert opts.outbound_addr is None and opts.outbound_addr6 is None
    assert opts.dns_upstreams == ()
    assert opts.dns_upstream_endpoints == ()
    assert opts.resolv_conf == "/etc/resolv.conf"
    assert opts.offload is True
    assert opts.forwards == ()
    assert opts.handle_signals is True
    assert (opts.debug, opts.log_flows, opts.print_stats) == (False, False, False)
    assert opts.command == ()


def test_command_is_the_new_namespace_one() -> None:
    opts = DaemonOptions(target=NewNamespace(command=("sh", "-c", "true"), keep_id=True))
    assert opts.command == ("sh", "-c", "true")
    assert DaemonOptions(target=JoinPath("/run/netns/x")).command == ()


def test_dns_endpoints() -> None:
    opts = DaemonOptions(target=JoinPid(1), dns_upstreams=("192.0.2.53:53", "[::1]:5353"))
    assert opts.dns_upstream_endpoints == (
        (IPv4Address("192.0.2.53"), 53),
        (IPv6Address("::1"), 5353),
    )


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (lambda: JoinPid(0), "PID must be a positive integer: 0"),
        (lambda: JoinPid(-5), "PID must be a positive integer: -5"),
        (lambda: JoinPid(True), "PID must be a positive integer: True"),
        (lambda: JoinPath(""), "the network namespace path must not be empty"),
        (lambda: JoinPid(1, ""), "--userns-path must not be empty"),
        (lambda: JoinPath("/x", ""), "--userns-path must not be empty"),
    ],
)
def test_target_validation(target: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        target()  # type: ignore[operator]
    assert message in one_line(err)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"tapname": "x" * 16},
            f"invalid TAP device name {'x' * 16!r}: 1 to 15 bytes, no '/', ':' or whitespace",
        ),
        ({"tapname": "a/b"}, "invalid TAP device name 'a/b'"),
        ({"tapname": "a b"}, "invalid TAP device name 'a b'"),
        ({"tapname": ""}, "invalid TAP device name ''"),
        ({"exit_fd": -1}, "--exit-fd must be a non-negative integer, got -1"),
        ({"ready_fd": -2}, "--ready-fd must be a non-negative integer, got -2"),
        ({"api_socket": ""}, "--api-socket path must not be empty"),
        (
            {"api_socket": "/" + "a" * 107},
            "--api-socket path is too long (108 bytes, the limit is 107)",
        ),
        (
            {"net": NetworkModel(guest_mac=bytes.fromhex("020000000001"))},
            "--macaddress can only be used with --configure",
        ),
        ({"outbound_addr": "::1"}, "(use --outbound-addr6 for IPv6)"),
        ({"outbound_addr6": "192.0.2.4"}, "(use --outbound-addr for IPv4)"),
        ({"dns_upstreams": ("x",)}, "invalid DNS upstream 'x'"),
        ({"resolv_conf": ""}, "--resolv-conf must not be empty"),
        ({"limits": (("max_udp_flows", 0),)}, "--limit max_udp_flows must be an integer"),
    ],
)
def test_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        DaemonOptions(target=JoinPid(1), **kwargs)  # type: ignore[arg-type]
    assert message in one_line(err)


def test_target_must_be_a_target() -> None:
    with pytest.raises(TypeError):
        DaemonOptions(target="1234")  # type: ignore[arg-type]


def test_api_socket_107_bytes_is_accepted() -> None:
    path = "/" + "a" * 106
    assert DaemonOptions(target=JoinPid(1), api_socket=path).api_socket == path


def test_frozen() -> None:
    opts = DaemonOptions(target=JoinPid(1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.tapname = "x"  # type: ignore[misc]


def test_port_mapping_describe() -> None:
    assert PortMapping("tcp", "0.0.0.0", 8080, 80).describe() == "0.0.0.0:8080 -> guest 80/tcp"
    assert PortMapping("tcp", "::1", 8443, 443, splice=True).describe() == (
        "[::1]:8443 -> guest 443/splice"
    )
