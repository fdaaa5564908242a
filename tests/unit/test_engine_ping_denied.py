"""ICMP echo when ping sockets are not permitted (issue 3, item 3).

This file owns one scenario: net.ipv4.ping_group_range excludes everyone, so
the engine cannot open ping sockets. It must say so once, clearly (one
EV_NOTICE naming the sysctl, however many echoes the guest sends), count
the drops, and still answer N+2 and N+3 itself.

The sysctl is per network namespace, so the scenario runs in a child
process inside a fresh, empty netns (`unshare --net`): the machine's setting,
which other tests rely on, is never touched, and no echo can leave (the new
namespace has no interface but a down loopback).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import json, pathlib, sys, time
    sys.path.insert(0, sys.argv[1])  # the repository root: tests.helpers, slirpy
    pathlib.Path("/proc/sys/net/ipv4/ping_group_range").write_text("1 0\\n")
    from tests.helpers.frames import DNS, GW, ICMP, ip4, raw, split_out
    from slirpy import engine as eng
    from slirpy.config import NetworkModel

    e = eng.Engine(NetworkModel(), vnet_hdr=False, offload=False)
    now = time.monotonic_ns()
    # TEST-NET-2, unroutable here: the socket() call fails before any send.
    for seq in range(3):
        e.input_frame(raw(ip4("198.51.100.1") / ICMP(type=8, id=7, seq=seq) / b"x"), now)
    for seq, dst in enumerate((GW, DNS)):
        e.input_frame(raw(ip4(dst) / ICMP(type=8, id=7, seq=seq) / b"y"), now)
    replies = [split_out(f, False).pkt for f in e.take_output()]
    notices = [ev.data.decode() for ev in e.events() if ev.type == eng.EV_NOTICE]
    print(json.dumps({
        "notices": notices,
        "replies": [[p["IP"].src, p[ICMP].type] for p in replies],
        "counters": e.counters(),
    }))
    e.close()
    """
)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) for a private netns")
def test_echo_without_ping_sockets_logs_once_and_gateway_still_answers() -> None:
    r = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", CHILD, str(REPO)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(rep["notices"]) == 1, rep["notices"]
    assert "ping_group_range" in rep["notices"][0]
    assert "not permitted" in rep["notices"][0]
    # No reply for the outside destination; N+2 and N+3 answered locally.
    assert rep["replies"] == [["10.0.2.2", 0], ["10.0.2.3", 0]]
    c = rep["counters"]
    assert c["drop_socket_error"] == 3 and c["icmp_flows_opened"] == 0
    assert c["icmp_echo_local"] == 2
