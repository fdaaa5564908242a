"""`--limit NAME=VALUE`: the engine's caps and timeouts from the command line.

This file owns the parsing checks (names, ranges, error texts) and the
guarantee that config.LIMITS names exactly the fields of engine.Limits, so
an option can never name a cap the engine does not have.
"""

from __future__ import annotations

import dataclasses

import pytest

from slirpy.config import LIMITS, ConfigError, parse_limit
from slirpy.engine import Limits
from slirpy.frontends.slirp4netns import parse_slirp4netns_args
from slirpy.options import DaemonOptions, JoinPid


def test_limit_names_are_the_engine_limits_fields() -> None:
    assert list(LIMITS) == [f.name for f in dataclasses.fields(Limits)]


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("max_tcp_flows=1000", ("max_tcp_flows", 1000)),
        ("max-udp-flows=8", ("max_udp_flows", 8)),
        (" udp_idle_s = 30 ", ("udp_idle_s", 30)),
        ("tcp_idle_s=604800", ("tcp_idle_s", 604800)),
        ("max_half_open=1", ("max_half_open", 1)),
    ],
)
def test_parse_limit_accepts(text: str, want: tuple[str, int]) -> None:
    assert parse_limit(text) == want


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_tcp_flows", "--limit takes NAME=VALUE with NAME one of max_tcp_flows, "),
        ("nope=3", "--limit takes NAME=VALUE with NAME one of"),
        ("max_tcp_flows=0", "--limit max_tcp_flows must be an integer from 1 to 1048576, got '0'"),
        ("max_tcp_flows=-1", "must be an integer from 1 to 1048576, got '-1'"),
        ("udp_idle_s=1.5", "--limit udp_idle_s must be an integer from 1 to 604800, got '1.5'"),
        ("udp_idle_s=604801", "got '604801'"),
        ("udp_idle_s=", "got ''"),
    ],
)
def test_parse_limit_rejects(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_limit(text)
    assert message in str(e.value)


def test_command_line_collects_limits_in_order() -> None:
    cfg = parse_slirp4netns_args(
        ["--limit=udp_idle_s=5", "--limit", "max_tcp_flows=10", "--limit=udp_idle_s=7", "1"]
    )
    assert cfg.limits == (("udp_idle_s", 5), ("max_tcp_flows", 10), ("udp_idle_s", 7))
    # The last one wins, as the daemon builds engine.Limits from them.
    assert Limits(**dict(cfg.limits)) == Limits(udp_idle_s=7, max_tcp_flows=10)
    assert parse_slirp4netns_args(["1"]).limits == ()


def test_config_validates_limits_given_directly() -> None:
    with pytest.raises(ConfigError, match="--limit max_udp_flows must be an integer"):
        DaemonOptions(target=JoinPid(1), limits=(("max_udp_flows", 0),))
