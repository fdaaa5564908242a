"""The fake host of ../shared/TESTBED.md: where a pasta-style stack may look.

A pasta-style stack copies the host's addresses and routes and sends the
container's traffic to the real gateway, so it must never run in the
machine's own network namespace. This module owns the two namespaces it runs
in instead, and the servers on the far side:

* "upstream" (`ip netns add`): 198.51.100.1/24 and 2001:db8:1::1/64 on a
  veth (the fake host's gateway), test hosts as addresses on its loopback
  (203.0.113.10, a private-range 10.13.0.10, a metadata-like
  169.254.169.254, 2001:db8:2::10, the DNS server 203.0.113.53), and
  servers started there from this file (`python fakehost.py serve`): TCP and
  UDP echo on port 7 (UDP bound per address), a TCP "peer" on port 8 that answers with the client's
  address and port as it sees them, and a DNS server (UDP and TCP) for the
  test domain bed13.test. Python stdlib only.
  The fake host runs one server of its own: a TCP "peer" on port 8 (on all
  its addresses), a service of the host that host.containers.internal
  reaches.
* "fake host": 198.51.100.2/24 and 2001:db8:1::2/64 on the veth's other end,
  default routes via upstream, ping_group_range of a desktop distribution,
  and a resolv.conf naming the upstream's DNS server, which the caller
  bind-mounts over the root's /etc/resolv.conf (trixie_root.RootSession).

`fake_host()` builds both, checks the fake host's links and routes before
anything is sent (and that it is not the machine's own namespace), then
checks the servers answer; it raises BedError if any of it fails, never
falling back to the machine's network. Everything it made is removed on
exit, even on failure; namespaces left by killed runs are removed at the
next start. Enter the namespaces with `nsenter --net=/run/netns/NAME`, not
`ip netns exec` (which remounts /sys and hides the cgroup mounts runc needs).

It must not send anything outside its two namespaces, touch namespaces or
processes it did not make, or do anything at import time.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import pathlib
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

HERE = pathlib.Path(__file__).resolve()
PREFIX = "bed13"

GATEWAY4 = "198.51.100.1"
GATEWAY6 = "2001:db8:1::1"
HOST4 = "198.51.100.2"
HOST6 = "2001:db8:1::2"
TEST_HOST4 = "203.0.113.10"
TEST_HOST6 = "2001:db8:2::10"
PRIVATE_HOST4 = "10.13.0.10"
METADATA4 = "169.254.169.254"
DNS4 = "203.0.113.53"
ECHO_PORT = 7
PEER_PORT = 8
DOMAIN = "bed13.test"
# Names the DNS server answers; any other name in DOMAIN is NXDOMAIN, any
# name outside it REFUSED.
RECORDS: dict[str, dict[str, list[str]]] = {
    f"www.{DOMAIN}": {"A": [TEST_HOST4], "AAAA": [TEST_HOST6]},
    f"private.{DOMAIN}": {"A": [PRIVATE_HOST4]},
    f"metadata.{DOMAIN}": {"A": [METADATA4]},
}
_UPSTREAM_LO = (f"{TEST_HOST4}/32", f"{PRIVATE_HOST4}/32", f"{METADATA4}/32", f"{DNS4}/32",
                f"{TEST_HOST6}/128")
_PR_SET_PDEATHSIG = 1
_MAX_ECHO = 16 << 20


class BedError(RuntimeError):
    """The fake host could not be built: the test must fail, not fall back."""


def _set_pdeathsig() -> None:
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise BedError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def _ip_json(*args: str) -> list[dict[str, object]]:
    return json.loads(_ip("-j", *args).stdout or "[]")


@dataclass
class FakeHost:
    """The built bed: namespace names and paths, the resolv.conf, the servers' event log."""

    name: str
    upstream: str
    resolv_conf: pathlib.Path
    events_path: pathlib.Path

    @property
    def netns(self) -> str:
        return f"/run/netns/{self.name}"

    @property
    def upstream_netns(self) -> str:
        return f"/run/netns/{self.upstream}"

    def argv(self, *cmd: str) -> list[str]:
        """`cmd` in the fake host's network namespace (the machine's mounts)."""
        return ["nsenter", f"--net={self.netns}", *cmd]

    def upstream_argv(self, *cmd: str) -> list[str]:
        return ["nsenter", f"--net={self.upstream_netns}", *cmd]

    def client(self, host: str, port: int, data: bytes = b"", udp: bool = False,
               upstream: bool = False, timeout: float = 10) -> bytes:
        """Send `data` from the fake host (or upstream) and return all that came back."""
        cmd = [sys.executable, str(HERE), "client", "--host", host, "--port", str(port),
               "--timeout", str(timeout), *(["--udp"] if udp else [])]
        argv = self.upstream_argv(*cmd) if upstream else self.argv(*cmd)
        r = subprocess.run(argv, input=data, capture_output=True, timeout=timeout + 10)
        if r.returncode != 0:
            raise BedError(f"client to {host}:{port} failed: {r.stderr.decode(errors='replace')}")
        return r.stdout

    def events(self) -> list[dict[str, object]]:
        """What the upstream servers saw (one dict per connection, datagram or query)."""
        if not self.events_path.exists():
            return []
        return [json.loads(ln) for ln in self.events_path.read_text().splitlines() if ln]


# ------------------------------------------------------------------ building


def _remove_stale() -> None:
    """Namespaces of earlier runs whose process is gone (killed before their clean-up)."""
    netns_dir = pathlib.Path("/run/netns")
    if not netns_dir.is_dir():
        return
    for entry in netns_dir.iterdir():
        parts = entry.name.split("-")
        ours = len(parts) == 3 and parts[0] in (f"{PREFIX}u", f"{PREFIX}h")
        if ours and parts[1].isdigit() and not os.path.exists(f"/proc/{parts[1]}"):
            _ip("netns", "del", entry.name, check=False)


def _build_namespaces(fh: FakeHost) -> None:
    up, host = fh.upstream, fh.name
    _ip("netns", "add", up)
    _ip("netns", "add", host)
    for ns in (up, host):
        _ip("-n", ns, "link", "set", "lo", "up")
    # Made inside upstream, its peer moved straight into the fake host: the
    # machine's own namespace never holds either end.
    _ip("-n", up, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", host)
    _ip("-n", up, "addr", "add", f"{GATEWAY4}/24", "dev", "eth0")
    _ip("-n", up, "addr", "add", f"{GATEWAY6}/64", "dev", "eth0", "nodad")
    for addr in _UPSTREAM_LO:
        _ip("-n", up, "addr", "add", addr, "dev", "lo")
    _ip("-n", host, "addr", "add", f"{HOST4}/24", "dev", "eth0")
    _ip("-n", host, "addr", "add", f"{HOST6}/64", "dev", "eth0", "nodad")
    for ns in (up, host):
        _ip("-n", ns, "link", "set", "eth0", "up")
    _ip("-n", host, "route", "add", "default", "via", GATEWAY4, "dev", "eth0")
    _ip("-n", host, "-6", "route", "add", "default", "via", GATEWAY6, "dev", "eth0")
    # ping sockets for every user, as desktop distributions have it (per netns).
    r = subprocess.run(fh.argv("sysctl", "-q", "-w", "net.ipv4.ping_group_range=0 2147483647"),
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise BedError(f"ping_group_range in the fake host: {r.stderr.strip()}")


def check_routes(fh: FakeHost) -> None:
    """Fail unless the fake host is a namespace of its own whose every path leads upstream."""
    own = os.stat("/proc/self/ns/net")
    mine = os.stat(fh.netns)
    if (own.st_dev, own.st_ino) == (mine.st_dev, mine.st_ino):
        raise BedError(f"{fh.netns} is the machine's own network namespace")
    links = sorted(str(link["ifname"]) for link in _ip_json("-n", fh.name, "link", "show"))
    if links != ["eth0", "lo"]:
        raise BedError(f"fake host links are {links}, want eth0 and lo only")
    v4 = {(str(r["dst"]), str(r.get("gateway", "")), str(r.get("dev", "")))
          for r in _ip_json("-n", fh.name, "-4", "route", "show", "table", "all")
          if r.get("table", "main") == "main"}
    want4 = {("default", GATEWAY4, "eth0"), ("198.51.100.0/24", "", "eth0")}
    if v4 != want4:
        raise BedError(f"fake host IPv4 routes are {sorted(v4)}, want {sorted(want4)}")
    v6 = {(str(r["dst"]), str(r.get("gateway", "")), str(r.get("dev", "")))
          for r in _ip_json("-n", fh.name, "-6", "route", "show")}
    v6 = {r for r in v6 if not r[0].startswith("fe80:")}
    want6 = {("default", GATEWAY6, "eth0"), ("2001:db8:1::/64", "", "eth0")}
    if v6 != want6:
        raise BedError(f"fake host IPv6 routes are {sorted(v6)}, want {sorted(want6)}")
    for dst, via in ((TEST_HOST4, GATEWAY4), (TEST_HOST6, GATEWAY6), (DNS4, GATEWAY4)):
        got = _ip_json("-n", fh.name, "route", "get", dst)
        if not got or got[0].get("gateway") != via or got[0].get("dev") != "eth0":
            raise BedError(f"fake host route to {dst} is {got}, want via {via} dev eth0")


def _start_servers(fh: FakeHost, role: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(HERE), "serve", "--role", role, "--events", str(fh.events_path)]
    proc = subprocess.Popen(
        fh.upstream_argv(*cmd) if role == "upstream" else fh.argv(*cmd),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_set_pdeathsig,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise BedError(f"{role} servers did not start: {line}{err}")
    return proc


def _check_servers(fh: FakeHost) -> None:
    """One echo per family and one DNS query from the fake host, through the veth."""
    for host in (TEST_HOST4, TEST_HOST6):
        got = fh.client(host, ECHO_PORT, b"bed13 probe\n", timeout=5)
        if got != b"bed13 probe\n":
            raise BedError(f"echo from the fake host to {host} returned {got!r}")
    query = _dns_query(f"www.{DOMAIN}", 1, 0x1313)
    got = fh.client(DNS4, 53, query, udp=True, timeout=5)
    if _dns_answers(got) != [TEST_HOST4]:
        raise BedError(f"DNS from the fake host returned {got!r}")
    got = fh.client(HOST4, PEER_PORT, upstream=True, timeout=5)
    if got.split()[:1] != [GATEWAY4.encode()]:
        raise BedError(f"the fake host's own peer server returned {got!r} to upstream")


@contextlib.contextmanager
def fake_host() -> Iterator[FakeHost]:
    """The upstream and fake-host namespaces with their servers, removed on exit."""
    if os.geteuid() != 0:
        raise BedError("the fake host needs root to build")
    for tool in ("ip", "nsenter", "sysctl"):
        if shutil.which(tool) is None:
            raise BedError(f"{tool} is not installed")
    _remove_stale()
    tag = f"{os.getpid()}-{time.monotonic_ns() % 1_000_000}"
    with contextlib.ExitStack() as stack:
        tmp = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bed13-")))
        os.chmod(tmp, 0o755)
        fh = FakeHost(name=f"{PREFIX}h-{tag}", upstream=f"{PREFIX}u-{tag}",
                      resolv_conf=tmp / "resolv.conf", events_path=tmp / "events.jsonl")
        fh.resolv_conf.write_text(f"nameserver {DNS4}\n")
        fh.resolv_conf.chmod(0o644)
        # Deletion is registered before creation: a half-built bed is removed too.
        for ns in (fh.upstream, fh.name):
            stack.callback(_ip, "netns", "del", ns, check=False)
        _build_namespaces(fh)
        check_routes(fh)
        for role in ("upstream", "host"):
            stack.callback(_stop, _start_servers(fh, role))
        _check_servers(fh)
        yield fh


def _stop(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=10)


# ------------------------------------------------------------------ DNS


def _dns_name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"


def _dns_query(name: str, qtype: int, qid: int) -> bytes:
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + _dns_name(name) + struct.pack(
        "!HH", qtype, 1)


def _dns_answers(msg: bytes) -> list[str]:
    """The A/AAAA addresses of a response this module's server wrote (name pointers only)."""
    if len(msg) < 12:
        return []
    an = struct.unpack("!H", msg[6:8])[0]
    i = 12
    while i < len(msg) and msg[i]:
        i += msg[i] + 1
    i += 5
    out = []
    for _ in range(an):
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", msg[i + 2 : i + 12])
        rdata = msg[i + 12 : i + 12 + rdlen]
        fam = socket.AF_INET if rtype == 1 else socket.AF_INET6
        out.append(socket.inet_ntop(fam, rdata))
        i += 12 + rdlen
    return out


def dns_response(query: bytes, records: dict[str, dict[str, list[str]]]) -> tuple[bytes, str]:
    """The answer to one query, and the name asked (for the event log)."""
    qid, flags, qd = struct.unpack("!HHH", query[:6])
    labels, i = [], 12
    while query[i]:
        n = query[i]
        labels.append(query[i + 1 : i + 1 + n].decode("ascii", "replace"))
        i += n + 1
    qtype, _qclass = struct.unpack("!HH", query[i + 1 : i + 5])
    question = query[12 : i + 5]
    name = ".".join(labels).lower()
    kind = {1: "A", 28: "AAAA"}.get(qtype)
    answers = []
    if name in records:
        rcode = 0
        for addr in records[name].get(kind or "", []):
            fam = socket.AF_INET if kind == "A" else socket.AF_INET6
            rdata = socket.inet_pton(fam, addr)
            answers.append(struct.pack("!HHHIH", 0xC00C, qtype, 1, 60, len(rdata)) + rdata)
    elif name == DOMAIN or name.endswith("." + DOMAIN):
        rcode = 3
    else:
        rcode = 5
    out_flags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode
    head = struct.pack("!HHHHHH", qid, out_flags, min(qd, 1), len(answers), 0, 0)
    return head + question + b"".join(answers), name


# ------------------------------------------------------------------ servers (in upstream)


class _Events:
    def __init__(self, path: str) -> None:
        self._f = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the server
        self._lock = threading.Lock()
        self._count = 0

    def log(self, **event: object) -> None:
        with self._lock:
            if self._count < 10_000:  # bounded, whatever a test sends
                self._count += 1
                self._f.write(json.dumps(event) + "\n")


def _udp_on(addr: str, port: int) -> socket.socket:
    """A UDP socket bound to one address: its replies leave from that address (a
    wildcard socket would answer from the route's source, which connected
    clients such as pasta's drop)."""
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    return s


def _dual_stack(kind: int, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    if kind == socket.SOCK_STREAM:
        s.listen(64)
    return s


def _peer(addr: tuple[str, ...]) -> str:
    return addr[0].removeprefix("::ffff:")


def _tcp_serve(lsock: socket.socket, handle: object, events: _Events, service: str) -> None:
    def one(conn: socket.socket, addr: tuple[str, ...]) -> None:
        with conn:
            conn.settimeout(15)
            local = conn.getsockname()
            events.log(service=service, proto="tcp", peer=_peer(addr), port=addr[1],
                       local=_peer(local))
            done = 0
            with contextlib.suppress(OSError):
                done = handle(conn, addr)  # type: ignore[operator]
            # How many bytes were echoed: tells a short reply's culprit apart.
            events.log(service=service, proto="tcp", peer=_peer(addr), port=addr[1],
                       closed=True, bytes=done)

    while True:
        conn, addr = lsock.accept()
        threading.Thread(target=one, args=(conn, addr), daemon=True).start()


def _echo(conn: socket.socket, _addr: tuple[str, ...]) -> int:
    total = 0
    while total < _MAX_ECHO:
        data = conn.recv(65536)
        if not data:
            break
        conn.sendall(data)
        total += len(data)
    return total


def _whoami(conn: socket.socket, addr: tuple[str, ...]) -> int:
    reply = f"{_peer(addr)} {addr[1]}\n".encode()
    conn.sendall(reply)
    return len(reply)


def _dns_tcp(conn: socket.socket, _addr: tuple[str, ...]) -> int:
    sent = 0
    for _ in range(16):
        head = conn.recv(2, socket.MSG_WAITALL)
        if len(head) < 2:
            break
        query = conn.recv(struct.unpack("!H", head)[0], socket.MSG_WAITALL)
        reply, _name = dns_response(query, RECORDS)
        conn.sendall(struct.pack("!H", len(reply)) + reply)
        sent += len(reply) + 2
    return sent


def _udp_serve(sock: socket.socket, events: _Events, dns: bool) -> None:
    while True:
        data, addr = sock.recvfrom(65535)
        if dns:
            try:
                reply, name = dns_response(data, RECORDS)
            except (IndexError, struct.error):
                continue
            events.log(service="dns", proto="udp", peer=_peer(addr), name=name)
        else:
            reply = data
            events.log(service="echo", proto="udp", peer=_peer(addr), port=addr[1],
                       size=len(data))
        sock.sendto(reply, addr)


def serve(role: str, events_path: str) -> None:
    """The servers of `role` (run inside its namespace); forever, until killed."""
    events = _Events(events_path)
    if role == "host":
        # A service of the fake host itself (what host.containers.internal reaches).
        host = threading.Thread(target=_tcp_serve, daemon=True, args=(
            _dual_stack(socket.SOCK_STREAM, PEER_PORT), _whoami, events, "host-peer"))
        host.start()
        print("ready", flush=True)
        host.join()
        return
    tcp = [(_dual_stack(socket.SOCK_STREAM, ECHO_PORT), _echo, "echo"),
           (_dual_stack(socket.SOCK_STREAM, PEER_PORT), _whoami, "peer"),
           (_dual_stack(socket.SOCK_STREAM, 53), _dns_tcp, "dns")]
    addrs = [a.split("/")[0] for a in _UPSTREAM_LO] + [GATEWAY4, GATEWAY6]
    udp = [(_udp_on(a, port), port == 53) for a in addrs for port in (ECHO_PORT, 53)]
    threads = [threading.Thread(target=_tcp_serve, args=(s, h, events, n), daemon=True)
               for s, h, n in tcp]
    threads += [threading.Thread(target=_udp_serve, args=(s, events, d), daemon=True)
                for s, d in udp]
    for t in threads:
        t.start()
    print("ready", flush=True)
    for t in threads:
        t.join()


def client(host: str, port: int, udp: bool, timeout: float) -> None:
    """Send stdin to host:port, write what comes back to stdout (bounded in time and size)."""
    data = sys.stdin.buffer.read()
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + timeout
    out = bytearray()
    if udp:
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            # Connected, as pasta's sockets are: a reply from another address is dropped.
            s.settimeout(timeout)
            s.connect((host, port))
            s.send(data)
            out += s.recv(65535)
    else:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while len(out) < _MAX_ECHO and time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
    sys.stdout.buffer.write(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("serve")
    sp.add_argument("--events", required=True)
    sp.add_argument("--role", choices=("upstream", "host"), required=True)
    cp = sub.add_parser("client")
    cp.add_argument("--host", required=True)
    cp.add_argument("--port", type=int, required=True)
    cp.add_argument("--udp", action="store_true")
    cp.add_argument("--timeout", type=float, default=10)
    args = ap.parse_args()
    if args.cmd == "serve":
        serve(args.role, args.events)
    else:
        client(args.host, args.port, args.udp, args.timeout)


if __name__ == "__main__":
    main()
