"""`--limit NAME=VALUE` on the real daemon: the flow caps and idle timeouts
of issue 3 ("hard caps, configurable") set from the command line.

This file owns two end-to-end checks through a real guest kernel: a TCP
flow cap (the connection over the cap is not established, counted as
drop_flow_cap, and a slot freed by a close is usable again) and a short
UDP idle timeout (the flow disappears from list_flows). Peers are on host
loopback only; observations go through the API socket.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.helpers.daemons import Slirpy
from tests.helpers.portfwd import api_call, api_dir
from tests.helpers.testbed import Container
from tests.helpers.testhost import PY, serve_loopback

GW = "10.0.2.2"

# Opens N connections and holds them, then one more with a short timeout;
# closes one and tries again. Prints one result per attempt.
HOLD = r"""
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
held = [socket.create_connection(("10.0.2.2", port), timeout=10) for _ in range(n)]
for s in held:
    s.sendall(b"echo\n")
def attempt():
    try:
        s = socket.create_connection(("10.0.2.2", port), timeout=3)
    except OSError as e:
        return type(e).__name__, None
    return "OK", s
r1, _ = attempt()
held.pop().close()
time.sleep(0.5)
r2, s2 = attempt()
print(r1, r2)
"""

UDP = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.connect(("10.0.2.2", int(sys.argv[1])))
s.send(b"hello")
print(s.recv(100).decode())
"""


def _start(container: Container, factory: Callable[..., Slirpy], d: str, *limits: str) -> str:
    path = f"{d}/api.sock"
    factory(["-c", f"--api-socket={path}", *(f"--limit={x}" for x in limits),
             str(container.pid), "tap0"])
    return path


def _engine(path: str) -> dict[str, int]:
    return api_call(path, {"execute": "get_stats"})["return"]["engine"]  # type: ignore[index,return-value]


def _flows(path: str, proto: str) -> list[dict[str, object]]:
    flows = api_call(path, {"execute": "list_flows"})["return"]["flows"]  # type: ignore[index]
    return [f for f in flows if f["proto"] == proto]  # type: ignore[index]


def test_tcp_flow_cap_from_the_command_line(container: Container, slirpy_factory,
                                            shared_dir) -> None:
    srv = serve_loopback("serve-tcp")
    script = shared_dir / "hold.py"
    script.write_text(HOLD)
    try:
        with api_dir() as d:
            api = _start(container, slirpy_factory, d, "max_tcp_flows=3")
            r = container.run(PY, str(script), str(srv.port), "3", timeout=60)
            # The 4th SYN is dropped at the cap (the guest's connect times
            # out); once one connection closes, a new one gets through.
            assert r.stdout.decode().split() == ["TimeoutError", "OK"], r.stdout
            assert _engine(api)["drop_flow_cap"] >= 1
    finally:
        srv.stop()


def test_udp_idle_timeout_from_the_command_line(container: Container, slirpy_factory,
                                                shared_dir) -> None:
    srv = serve_loopback("serve-udp")
    script = shared_dir / "udp.py"
    script.write_text(UDP)
    try:
        with api_dir() as d:
            api = _start(container, slirpy_factory, d, "udp_idle_s=2")
            r = container.run(PY, str(script), str(srv.port), timeout=30)
            assert r.stdout.decode().strip() == "hello"
            assert len(_flows(api, "udp")) == 1
            deadline = time.monotonic() + 10  # 2 s idle + the engine's scan
            while _flows(api, "udp") and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _flows(api, "udp") == []
            assert time.monotonic() < deadline - 6  # gone after ~2 s, not 60 s
            assert _engine(api)["udp_flows_closed"] == 1
    finally:
        srv.stop()

