"""Fixtures for the engine's packet-level tests: a fake clock, engines with no
TAP (closed at teardown, pass or fail), the `Guest` that plays the guest's
side, loopback sockets and a fake TAP. The classes behind them live in
tests/helpers (engine_guest.py, tcp_conn.py); this file holds fixtures only.

Everything here talks only to 127.0.0.1 / ::1.
"""

from __future__ import annotations

import pytest

from slirpy.config import NetworkModel
from slirpy.engine import Engine, Limits
from tests.helpers.engine_guest import Clock, FakeTap, Guest, Sockets


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_guest(clock):
    """Factory: make_guest(vnet_hdr=False, offload=False, **NetworkModel
    fields, limits=..., flow_events=...). Engines are closed at teardown."""
    engines: list[Engine] = []

    def make(*, vnet_hdr: bool = False, offload: bool = False, limits: Limits | None = None,
             dns_udp_port: int = 0, dns_tcp_port: int = 0, flow_events: bool = False,
             **net) -> Guest:
        e = Engine(NetworkModel(**net), vnet_hdr=vnet_hdr, offload=offload, limits=limits,
                   dns_udp_port=dns_udp_port, dns_tcp_port=dns_tcp_port,
                   flow_events=flow_events)
        engines.append(e)
        return Guest(e, clock, vnet_hdr)

    yield make
    for e in engines:
        e.close()


@pytest.fixture
def guest(make_guest) -> Guest:
    return make_guest()


@pytest.fixture
def guest6(make_guest) -> Guest:
    return make_guest(ipv6=True)


@pytest.fixture
def socks():
    s = Sockets()
    yield s
    s.close()


@pytest.fixture
def tap_guest(make_guest):
    g = make_guest(vnet_hdr=True, offload=True)
    t = FakeTap(g)
    yield g, t
    t.close()
