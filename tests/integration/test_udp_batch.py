"""Issue 7, UDP offloads and batching against the guest's real kernel.

This file owns: a guest program that sends one UDP_SEGMENT (USO) write of
64 datagrams, which its kernel hands to the TAP as one GSO super-frame and
slirpy must turn back into 64 exact datagrams on host loopback; and a
host-to-guest burst of 2000 datagrams of mixed sizes that must arrive
complete, in order and with their boundaries (slirpy reads them with
recvmmsg and sends runs of equal sizes to the guest as USO frames).
Evidence that the offload and batching paths really ran comes from
get_stats. Traffic stays on loopback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.helpers.portfwd import api_call, api_dir
from tests.helpers.testbed import Container

GW = "10.0.2.2"
pytestmark = pytest.mark.timeout(300)

# One write of size * (n - 1) + last bytes with UDP_SEGMENT = size.
USO_SENDER = r"""
import socket, sys
host, port, size, n, last = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6])
total = size * (n - 1) + last
payload = bytes((i * 7 + i // size) & 255 for i in range(total))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(17, 103, size)  # SOL_UDP, UDP_SEGMENT
s.connect((host, port))
print(s.send(payload), flush=True)
"""

# Receive `n` datagrams (or stop after `timeout` s of silence); report the
# count and the digest of what arrived, in arrival order, each datagram's
# length included (so that a boundary in the wrong place shows).
BURST_RECEIVER = r"""
import hashlib, json, select, socket, sys
host, port, n, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE: root in its netns
except OSError:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
s.connect((host, port))
s.send(b"ready")
h = hashlib.sha256()
got = 0
while got < n and select.select([s], [], [], timeout)[0]:
    d = s.recv(65535)
    h.update(len(d).to_bytes(4, "big") + d)
    got += 1
print(json.dumps({"got": got, "sha256": h.hexdigest()}), flush=True)
"""


def uso_payload(size: int, n: int, last: int) -> bytes:
    total = size * (n - 1) + last
    return bytes((i * 7 + i // size) & 255 for i in range(total))


@contextlib.contextmanager
def sink() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind(("127.0.0.1", 0))
    s.settimeout(10)
    try:
        yield s
    finally:
        s.close()


def stats(api: str) -> dict[str, int]:
    return api_call(api, {"execute": "get_stats"})["return"]["engine"]  # type: ignore[index]


@pytest.mark.parametrize("mtu,size,last,offload", [
    (65520, 1000, 500, True),
    (1500, 1000, 1000, True),
    (65520, 1000, 1, False),  # --disable-offload: the guest kernel segments
], ids=["mtu65520", "mtu1500", "offload-off"])
def test_guest_udp_segment_write_arrives_as_exact_datagrams(
    container: Container, slirpy_factory, shared_dir, mtu, size, last, offload
) -> None:
    with api_dir() as d:
        api = f"{d}/api.sock"
        s = slirpy_factory(["--configure", f"--mtu={mtu}", "--api-socket", api,
                            *([] if offload else ["--disable-offload"]),
                            str(container.pid), "tap0"])
        prog = shared_dir / "uso_send.py"
        prog.write_text(USO_SENDER)
        with sink() as srv:
            port = srv.getsockname()[1]
            r = container.run(sys.executable, str(prog), GW, str(port), str(size), "64",
                              str(last), timeout=60)
            assert int(r.stdout) == size * 63 + last
            got = [srv.recv(65535) for _ in range(64)]
            srv.settimeout(0.3)
            with pytest.raises(TimeoutError):
                srv.recv(65535)
        want = uso_payload(size, 64, last)
        assert got == [want[i:i + size] for i in range(0, len(want), size)]
        assert [len(g) for g in got][-2:] == [size, last]
        c = stats(api)
        # with USO the guest kernel handed slirpy one super-frame, not 64
        assert c["udp_gso_frames_in"] == (1 if offload else 0), c
        assert c["udp_datagrams_to_host"] == 64
        assert c["drop_gso_malformed"] == 0
        assert s.proc.poll() is None


def burst(n: int) -> list[bytes]:
    """Mostly 68-byte datagrams; every 37th shorter and every 500th empty, so
    that runs of equal sizes (one USO frame each toward the guest) end at
    different places."""
    out = []
    for i in range(n):
        body = hashlib.sha256(b"%d" % i).digest() * 2
        size = 0 if i % 500 == 499 else 68 if i % 37 else 4 + i % 50
        out.append((i.to_bytes(4, "big") + body)[:size])
    return out


@pytest.mark.parametrize("offload", [True, False], ids=["uso", "offload-off"])
def test_host_to_guest_burst_of_2000_arrives_complete(
    container: Container, slirpy_factory, shared_dir, offload
) -> None:
    n = 2000
    with api_dir() as d:
        api = f"{d}/api.sock"
        slirpy_factory(["--configure", "--mtu=65520", "--api-socket", api,
                        *([] if offload else ["--disable-offload"]),
                        str(container.pid), "tap0"])
        prog = shared_dir / "burst_recv.py"
        prog.write_text(BURST_RECEIVER)
        sent = burst(n)
        with sink() as srv:
            port = srv.getsockname()[1]
            rx = container.popen(sys.executable, str(prog), GW, str(port), str(n), "5",
                                 stdout=subprocess.PIPE)
            try:
                data, peer = srv.recvfrom(100)
                assert data == b"ready"
                # Bursts of 100 (well inside slirpy's socket buffer), so that
                # a busy machine cannot overflow it between two wake-ups.
                for k in range(0, n, 100):
                    for d_ in sent[k:k + 100]:
                        srv.sendto(d_, peer)
                    time.sleep(0.01)
                out, _ = rx.communicate(timeout=60)
            finally:
                if rx.poll() is None:
                    rx.kill()
        rep = json.loads(out)
        want = hashlib.sha256(b"".join(len(d).to_bytes(4, "big") + d for d in sent))
        assert rep == {"got": n, "sha256": want.hexdigest()}
        c = stats(api)
        assert c["udp_datagrams_to_guest"] == n
        # recvmmsg took more than one datagram per call on average
        assert 0 < c["udp_recv_batches"] < n, c
        # with offloads, runs of equal-sized datagrams left as USO frames
        # (bursts of 100: at least a few runs longer than one)
        assert (c["gso_frames_out"] > 0) == offload, c
