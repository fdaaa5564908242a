"""Fixtures that more than one conftest.py registers, each defined once here.

A conftest.py registers one with one assignment (`testhost =
fixtures.testhost`). Owns only fixture definitions; what they build lives
in the other helper modules.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.testhost import Server, TestHost, make_testhost, serve_loopback


@pytest.fixture
def testhost() -> Iterator[TestHost]:
    """A test host: a namespace behind a veth (testhost.py), removed at the end."""
    with make_testhost() as th:
        yield th


@pytest.fixture
def tcp_server() -> Iterator[Server]:
    """testhost.py's TCP server (sink/echo/source) on the host's loopback."""
    s = serve_loopback("serve-tcp")
    yield s
    s.stop()


@pytest.fixture
def udp_server() -> Iterator[Server]:
    """testhost.py's UDP echo server on the host's loopback."""
    s = serve_loopback("serve-udp")
    yield s
    s.stop()
