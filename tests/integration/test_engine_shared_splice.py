"""The engine's "split" TCP listener (pasta's -t) in a network namespace of its own.

What this file owns: the end-to-end check that one split listener sends a
loopback client through splice() (the guest's server sees its own address as
the peer, as with pasta) and any other client through the TAP path with its
own address kept. The engine runs in shared-address mode inside a private
network namespace (`unshare --net`, made by this test and gone with its
process), where 192.0.2.1 (the "host's" = the guest's address) and
192.0.2.2 (a non-loopback client) sit on that namespace's lo. The namespace
helper is forked there too, so "the guest" is a server on 192.0.2.1; the TAP
path's output is read from the engine (no TAP attached) as frames. Also
pasta's --host-lo-to-ns-lo (`splice_to_loopback`): a loopback client reaches
a guest server bound to 127.0.0.1 only and appears from 127.0.0.1.

Traffic stays inside the private namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

SCRIPT = r"""
import contextlib, json, os, socket, subprocess, threading, time
from ipaddress import IPv4Address
from slirpy.config import NetworkModel
from slirpy.engine import PROTO_TCP, Engine, ns_helper_serve

for cmd in (["ip", "link", "set", "lo", "up"],
            ["ip", "addr", "add", "192.0.2.1/32", "dev", "lo"],
            ["ip", "addr", "add", "192.0.2.2/32", "dev", "lo"]):
    subprocess.run(cmd, check=True)

parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
pid = os.fork()
if pid == 0:
    parent.close()
    os._exit(0 if ns_helper_serve(child.fileno()) == 0 else 1)
child.close()

e = Engine(NetworkModel(), vnet_hdr=False, offload=False, shared=True,
           guest4="192.0.2.1", gateway4="192.0.2.254", peer_sub4="169.254.1.2",
           our_mac=bytes.fromhex("9a559a559a55"))
e.set_ns_helper(parent.detach())

# "The guest": a server on its own address that says who its peer is.
srv = socket.socket()
srv.bind(("192.0.2.1", 0))
srv.listen(4)
gport = srv.getsockname()[1]
seen = []

def serve():
    with contextlib.suppress(OSError):
        c, peer = srv.accept()
        with c:
            seen.append(peer[0])
            c.sendall(b"peer " + peer[0].encode())

threading.Thread(target=serve, daemon=True).start()

lst = socket.socket()
lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(("0.0.0.0", 0))
lst.listen(16)
hport = lst.getsockname()[1]
e.add_listener(lst.detach(), PROTO_TCP, IPv4Address("192.0.2.1"), gport, 1, mode="split")

def drive(done, timeout=10):
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(json.dumps({"timeout": e.counters()}))
        e.poll(time.monotonic_ns(), 64)
        time.sleep(0.001)

# 1. A loopback client: spliced.
got = bytearray()
cl = socket.create_connection(("127.0.0.1", hport), timeout=5)
def client():
    while d := cl.recv(100):
        got.extend(d)
t = threading.Thread(target=client, daemon=True)
t.start()
drive(lambda: not t.is_alive())
cl.close()

# 2. A client from 192.0.2.2: the TAP path, its address kept.
cl2 = socket.socket()
cl2.bind(("192.0.2.2", 0))
cl2.setblocking(False)
with contextlib.suppress(BlockingIOError):
    cl2.connect(("192.0.2.1", hport))
frames = []
drive(lambda: frames.extend(e.take_output()) or frames)
ip = frames[0][14:]
tcp = ip[(ip[0] & 15) * 4:]
syn = {"src": str(IPv4Address(ip[12:16])), "dst": str(IPv4Address(ip[16:20])),
       "sport": int.from_bytes(tcp[0:2], "big"), "dport": int.from_bytes(tcp[2:4], "big"),
       "flags": tcp[13]}
cl2.close()
c = e.counters()
print(json.dumps({"spliced_reply": got.decode(), "seen": seen, "syn": syn,
                  "gport": gport, "splice_opened": c["splice_opened"],
                  "tcp_flows_inbound": c["tcp_flows_inbound"]}))
e.close()
os.kill(pid, 9)
os.waitpid(pid, 0)
"""

# pasta's --host-lo-to-ns-lo: "the guest" serves on 127.0.0.1 only (Docker's
# `-p 127.0.0.1:X:Y`, moby#48838). A split listener spliced to the loopback
# reaches it and the server sees 127.0.0.1; a plain split one (to the
# guest's address, 192.0.2.1) is refused.
SCRIPT_LO = r"""
import contextlib, json, os, socket, subprocess, threading, time
from ipaddress import IPv4Address
from slirpy.config import NetworkModel
from slirpy.engine import PROTO_TCP, Engine, ns_helper_serve

for cmd in (["ip", "link", "set", "lo", "up"],
            ["ip", "addr", "add", "192.0.2.1/32", "dev", "lo"]):
    subprocess.run(cmd, check=True)

parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
pid = os.fork()
if pid == 0:
    parent.close()
    os._exit(0 if ns_helper_serve(child.fileno()) == 0 else 1)
child.close()

e = Engine(NetworkModel(), vnet_hdr=False, offload=False, shared=True,
           guest4="192.0.2.1", gateway4="192.0.2.254", peer_sub4="169.254.1.2",
           our_mac=bytes.fromhex("9a559a559a55"))
e.set_ns_helper(parent.detach())

srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(4)
gport = srv.getsockname()[1]
seen = []

def serve():
    while True:
        try:
            c, peer = srv.accept()
        except OSError:
            return
        with c:
            seen.append(peer[0])
            c.sendall(b"peer " + peer[0].encode())

threading.Thread(target=serve, daemon=True).start()

def listener(fid, to_lo):
    lst = socket.socket()
    lst.bind(("0.0.0.0", 0))
    lst.listen(16)
    port = lst.getsockname()[1]
    e.add_listener(lst.detach(), PROTO_TCP, IPv4Address("192.0.2.1"), gport, fid,
                   mode="split", splice_to_loopback=to_lo)
    return port

def drive(done, timeout=10):
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(json.dumps({"timeout": e.counters()}))
        e.poll(time.monotonic_ns(), 64)
        time.sleep(0.001)

def talk(port):
    got = bytearray()
    err = []
    cl = socket.create_connection(("127.0.0.1", port), timeout=5)
    def client():
        try:
            while d := cl.recv(100):
                got.extend(d)
        except OSError as x:
            err.append(type(x).__name__)
    t = threading.Thread(target=client, daemon=True)
    t.start()
    drive(lambda: not t.is_alive())
    cl.close()
    return {"reply": got.decode(), "error": err}

with_flag = talk(listener(1, True))
without = talk(listener(2, False))
c = e.counters()
print(json.dumps({"with": with_flag, "without": without, "seen": seen,
                  "splice_opened": c["splice_opened"]}))
e.close()
srv.close()
os.kill(pid, 9)
os.waitpid(pid, 0)
"""


def _run(script: str) -> dict:
    assert shutil.which("unshare") and shutil.which("ip")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run(["unshare", "--net", sys.executable, "-c", script], cwd=root,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr + r.stdout
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_split_to_loopback_reaches_a_server_bound_to_loopback_only() -> None:
    out = _run(SCRIPT_LO)
    assert out["with"] == {"reply": "peer 127.0.0.1", "error": []}
    assert out["seen"] == ["127.0.0.1"]
    # Without the flag the splice goes to 192.0.2.1, where nothing listens.
    assert out["without"]["reply"] == ""
    assert out["splice_opened"] == 2


def test_split_listener_splices_loopback_and_keeps_other_clients_address() -> None:
    out = _run(SCRIPT)
    # Spliced: the guest's server saw its own address as the peer.
    assert out["spliced_reply"] == "peer 192.0.2.1" and out["seen"] == ["192.0.2.1"]
    assert out["splice_opened"] == 1
    # TAP path: a SYN toward the guest from the client's own address.
    syn = out["syn"]
    assert (syn["src"], syn["dst"], syn["dport"]) == ("192.0.2.2", "192.0.2.1", out["gport"])
    assert syn["flags"] & 0x02
    assert out["tcp_flows_inbound"] == 1
