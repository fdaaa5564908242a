"""The TCP path toward the guest without SO_PEEK_OFF (issue 3, item 1:
"SO_PEEK_OFF where available, fallback otherwise").

This kernel supports SO_PEEK_OFF, so the fallback (peek from the start of
the socket and skip what is in flight) would never run. Here a tiny
LD_PRELOAD shim, compiled by the test, makes setsockopt(SO_PEEK_OFF) fail
with ENOPROTOOPT as on kernels or socket types without it; a child process
then moves data host -> guest through the engine with losses that force
retransmissions, and must deliver every byte once, in order, then the FIN.
Only 127.0.0.1 is used.
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

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/socket.h>

int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
	static int (*real)(int, int, int, const void *, socklen_t);

	if (level == SOL_SOCKET && name == SO_PEEK_OFF) {
		errno = ENOPROTOOPT;
		return -1;
	}
	if (!real)
		real = (int (*)(int, int, int, const void *, socklen_t))
			dlsym(RTLD_NEXT, "setsockopt");
	return real(fd, level, name, val, len);
}
"""

CHILD = textwrap.dedent(
    """
    import hashlib, json, random, socket, sys, time
    sys.path.insert(0, sys.argv[1])  # the repository root: tests.helpers, slirpy
    from tests.helpers.engine_guest import Clock, Guest
    from tests.helpers.tcp_conn import Conn
    from tests.helpers.frames import TCP, tcp_payload
    from slirpy.config import NetworkModel
    from slirpy.engine import Engine

    probe = socket.socket()
    try:
        probe.setsockopt(socket.SOL_SOCKET, 42, 0)  # SO_PEEK_OFF
        shim = False
    except OSError as err:
        shim = err.errno == 92  # ENOPROTOOPT: the shim is in place
    probe.close()
    e = Engine(NetworkModel(), vnet_hdr=False, offload=False)
    g = Guest(e, Clock(), False)
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    c = Conn(g, lst.getsockname()[1])
    c.handshake()
    h, _ = lst.accept()
    data = random.Random(11).randbytes(1 << 20)
    h.setblocking(False)
    sent, rng, dropped = 0, random.Random(2), 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if sent < len(data):
            try:
                sent += h.send(data[sent:sent + 65536])
            except BlockingIOError:
                pass
            if sent == len(data):
                h.shutdown(socket.SHUT_WR)
        g.poll(0.01)
        outs = c.mine(g.out())
        # Lose one segment in twenty on its way to the guest.
        kept = []
        for o in outs:
            if tcp_payload(o.pkt) and rng.random() < 0.05:
                dropped += 1
            else:
                kept.append(o)
        before = len(c.received)
        c.take(kept, ack=True)
        if c.rcv_nxt == (c.isn + 1 + len(data) + 1) & 0xFFFFFFFF:
            break  # all data and the FIN
        if len(c.received) == before and not kept:
            c.take(g.advance(0.5), ack=True)  # let the RTO fire
    print(json.dumps({
        "shim": shim,
        "bytes": len(c.received),
        "ok": hashlib.sha256(c.received).digest() == hashlib.sha256(data).digest(),
        "fin": c.rcv_nxt == (c.isn + 1 + len(data) + 1) & 0xFFFFFFFF,
        "dropped": dropped,
        "retransmits": e.counters()["tcp_retransmits"],
    }))
    e.close()
    """
)


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler for the shim")
def test_host_to_guest_without_so_peek_off(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "nopeekoff.c"
    src.write_text(SHIM)
    lib = tmp_path / "nopeekoff.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(src), "-ldl"], check=True,
                   capture_output=True, timeout=60)
    env = {**os.environ, "LD_PRELOAD": str(lib), "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", CHILD, str(REPO)], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    assert rep["shim"], "the LD_PRELOAD shim did not take effect"
    assert rep["bytes"] == 1 << 20 and rep["ok"] and rep["fin"], rep
    assert rep["dropped"] > 0 and rep["retransmits"] > 0, rep
