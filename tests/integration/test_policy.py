"""The egress policy end to end (issue 18): a real container, a real TAP, the
guest's own sockets, every front end.

What this file owns: the `--policy=public-only` tests for slirpy-slirp4netns,
`slirpy run` and `slirpy.Network(policy=...)` (TCP to a private address, to
the metadata address 169.254.169.254 and to the host mapping is refused at
once, UDP gets ICMP/ICMPv6 administratively prohibited, echo requests too,
IPv4 and IPv6; the public test address still echoes every byte), the log
line of a denial and the API's live `set_policy`, which resets an open
connection the new policy denies. slirpy's pasta front end is checked in the
fake host of TESTBED.md (tests/helpers/fakehost.py) as Podman runs it,
DNS through the forwarder included.

Where traffic goes: slirpy (and so its host sockets) and the test servers
run in a network namespace this file makes, `pol-host`, whose only
interface is its loopback holding the test addresses (10.13.0.10,
169.254.169.254, 203.0.113.10, fd13::10, fd00:ec2::254, 2001:db8:13::10).
Nothing can leave it: no test here touches the machine's routes, and an
address missing from the namespace fails with "unreachable", never goes
elsewhere. The container and slirpy run as the unprivileged test user.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.helpers import fakehost
from tests.helpers.daemons import Slirpy
from tests.helpers.portfwd import api_call, api_dir
from tests.helpers.slirpy_run import run_cmd
from tests.helpers.testbed import AS_USER, Container, make_container, slirp4netns_cmd, user_env
from tests.helpers.testhost import HERE, Server
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.timeout(300)

PY = sys.executable
LIBNET = str(pathlib.Path(HERE).with_name("libnet.py"))

PRIVATE4, METADATA4, PUBLIC4 = "10.13.0.10", "169.254.169.254", "203.0.113.10"
PRIVATE6, METADATA6, PUBLIC6 = "fd13::10", "fd00:ec2::254", "2001:db8:13::10"
HOST4, HOST6 = "10.0.2.2", "fd00::2"  # the host-loopback mapping
DENIED4, DENIED6 = (PRIVATE4, METADATA4), (PRIVATE6, METADATA6)

# The guest's probes: one JSON report on stdout. `tcp`: connect, the errno
# name and the time it took; `udp`: a connected socket's send and next recv;
# `ping`: one echo request on a raw socket, "OK", "PROHIBITED" (ICMP type 3
# code 13, ICMPv6 type 1 code 1) or what came; `echo`: bytes through the
# server's echo mode and their sha256; `hold`: connect, say CONNECTED, then
# the errno of the next recv (the live policy change).
PROBE = r'''
import errno, hashlib, json, os, random, socket, struct, sys, time

def name(e):
    if isinstance(e, TimeoutError):
        return "TIMEOUT"
    return errno.errorcode.get(e.errno or 0, str(e))

def fam(a):
    return socket.AF_INET6 if ":" in a else socket.AF_INET

def wait_v6(timeout=15):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for line in open("/proc/net/if_inet6"):
            f = line.split()
            if f[5] != "lo" and f[3] == "00" and not int(f[4], 16) & 0x40:
                return True
        time.sleep(0.05)
    return False

def tcp(a, port):
    s = socket.socket(fam(a), socket.SOCK_STREAM)
    s.settimeout(5)
    t = time.monotonic()
    try:
        s.connect((a, port))
        r = "OK"
    except OSError as e:
        r = name(e)
    return {"result": r, "seconds": time.monotonic() - t}

def udp(a, port):
    s = socket.socket(fam(a), socket.SOCK_DGRAM)
    s.settimeout(3)
    s.connect((a, port))
    t = time.monotonic()
    try:
        s.send(b"probe")
        r = "OK" if s.recv(100) == b"probe" else "MISMATCH"
    except OSError as e:
        r = name(e)
    return {"result": r, "seconds": time.monotonic() - t}

def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return ~s & 0xffff

def ping(a):
    v6 = ":" in a
    s = socket.socket(fam(a), socket.SOCK_RAW,
                      socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
    ident = random.randrange(1, 65535)
    body = struct.pack("!HH", ident, 1) + b"policy"
    if v6:  # the kernel fills in the ICMPv6 checksum
        pkt = struct.pack("!BBH", 128, 0, 0) + body
    else:
        pkt = struct.pack("!BBH", 8, 0, 0) + body
        pkt = pkt[:2] + struct.pack("!H", csum(pkt)) + pkt[4:]
    t = time.monotonic()
    s.sendto(pkt, (a, 0))
    end = t + 3
    while time.monotonic() < end:
        s.settimeout(max(end - time.monotonic(), 0.01))
        try:
            data = s.recv(2048)
        except TimeoutError:
            break
        icmp = data if v6 else data[(data[0] & 15) * 4:]
        typ, code = icmp[0], icmp[1]
        if (typ, code) == ((129, 0) if v6 else (0, 0)) and icmp[4:6] == struct.pack("!H", ident):
            return {"result": "OK", "seconds": time.monotonic() - t}
        if (typ, code) == ((1, 1) if v6 else (3, 13)):
            return {"result": "PROHIBITED", "seconds": time.monotonic() - t}
    return {"result": "TIMEOUT", "seconds": time.monotonic() - t}

def echo(a, port, size):
    data = random.Random(size).randbytes(size)
    s = socket.create_connection((a, port), timeout=20)
    s.sendall(b"echo\n" + data)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while chunk := s.recv(1 << 20):
        got += chunk
    ok = hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    return {"result": "OK" if ok else "MISMATCH", "bytes": len(got)}

def dns(a, port, name):
    q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    q += struct.pack("!HH", 1, 1)
    s = socket.socket(fam(a), socket.SOCK_DGRAM)
    s.settimeout(3)
    s.connect((a, port))
    try:
        s.send(q)
        r = "OK" if s.recv(512)[:2] == b"\x12\x34" else "BAD"
    except OSError as e:
        r = name(e)
    return {"result": r}

def hold(a, port):
    s = socket.create_connection((a, port), timeout=5)
    s.sendall(b"echo\n")
    print("CONNECTED", flush=True)
    s.settimeout(10)
    try:
        r = "EOF" if s.recv(100) == b"" else "DATA"
    except OSError as e:
        r = name(e)
    return {"result": r}

req = json.loads(sys.argv[1])
out = {"v6": wait_v6() if req.get("v6") else None, "probes": []}
for p in req["probes"]:
    out["probes"].append({"tcp": tcp, "udp": udp, "ping": ping, "echo": echo,
                          "hold": hold, "dns": dns}[p[0]](*p[1:]))
print(json.dumps(out), flush=True)
'''


# ------------------------------------------------------------------- the bed


@dataclass
class PolicyHost:
    """The namespace where slirpy and the servers run (see the module text)."""

    name: str
    tcp: Server
    udp: Server
    scripts: str

    @property
    def nsenter(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.name}"]

    def lines(self, server: Server, quiet: float = 0.5) -> list[dict[str, object]]:
        """What `server` printed until it stayed quiet for `quiet` seconds."""
        out = []
        with contextlib.suppress(AssertionError):
            while True:
                out.append(server.next(quiet))
        return out


def _sh(*cmd: str) -> None:
    r = subprocess.run(cmd, capture_output=True, timeout=30)
    assert r.returncode == 0, f"{cmd}: {r.stderr.decode().strip()}"


@pytest.fixture
def pol_host() -> Iterator[PolicyHost]:
    name = f"slirpy-pol{os.getpid() % 100000}"
    scripts = tempfile.mkdtemp(prefix="slirpy-pol-", dir="/tmp")
    servers: list[Server] = []
    try:
        os.chmod(scripts, 0o755)
        probe = pathlib.Path(scripts, "probe.py")
        probe.write_text(PROBE)
        probe.chmod(0o644)
        _sh("ip", "netns", "add", name)
        ns = ["nsenter", f"--net=/run/netns/{name}"]
        _sh(*ns, "ip", "link", "set", "lo", "up")
        for a in (PRIVATE4, METADATA4, PUBLIC4):
            _sh(*ns, "ip", "addr", "add", f"{a}/32", "dev", "lo")
        for a in (PRIVATE6, METADATA6, PUBLIC6):
            _sh(*ns, "ip", "addr", "add", f"{a}/128", "dev", "lo", "nodad")
        # Per namespace: slirpy's ping sockets (the public echo) need it here too.
        _sh(*ns, "sh", "-c", "echo '0 2147483647' > /proc/sys/net/ipv4/ping_group_range")
        # One dual-stack server of each kind for every address: anything that
        # reached any of them is seen.
        tcp = Server.start([*ns, PY, HERE, "serve-tcp", "--bind", "::", "--lifetime", "280"])
        servers.append(tcp)
        udp = Server.start([*ns, PY, HERE, "serve-udp", "--bind", "::", "--lifetime", "280"])
        servers.append(udp)
        yield PolicyHost(name, tcp, udp, scripts)
    finally:
        for s in servers:
            s.stop()
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        shutil.rmtree(scripts, ignore_errors=True)


def probe_cmd(h: PolicyHost, probes: list[list[object]], v6: bool = True) -> list[str]:
    return [PY, f"{h.scripts}/probe.py", json.dumps({"v6": v6, "probes": probes})]


def report(out: bytes | str) -> dict[str, object]:
    text = out.decode() if isinstance(out, bytes) else out
    lines = [ln for ln in text.splitlines() if ln.startswith("{")]
    assert lines, f"no report from the guest: {text[-2000:]!r}"
    return json.loads(lines[-1])


def start_slirp4netns(h: PolicyHost, args: list[str]) -> Slirpy:
    """slirpy-slirp4netns in the policy host's namespace, as the test user,
    once it wrote its ready byte."""
    rfd, wfd = os.pipe()
    proc = subprocess.Popen(
        [*h.nsenter, *AS_USER, *slirp4netns_cmd(), "-r", str(wfd), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        pass_fds=(wfd,), env=user_env(),
    )
    os.close(wfd)
    try:
        r, _, _ = select.select([rfd], [], [], 15)
        if not r or os.read(rfd, 1) != b"1":
            proc.kill()
            out, err = proc.communicate(timeout=10)
            raise AssertionError(f"slirpy did not become ready: {out!r} {err!r}")
    finally:
        os.close(rfd)
    return Slirpy(proc, b"1", 0.0)


@contextlib.contextmanager
def slirp4netns(h: PolicyHost, c: Container, *extra: str) -> Iterator[Slirpy]:
    s = start_slirp4netns(h, ["-c", "-6", *extra, str(c.pid), "tap0"])
    try:
        yield s
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
        with contextlib.suppress(Exception):
            s.proc.communicate(timeout=10)


@contextlib.contextmanager
def library(h: PolicyHost, c: Container, **kw: object) -> Iterator[subprocess.Popen[bytes]]:
    """slirpy.Network(c.pid, **kw) (tests/helpers/libnet.py) in the policy host's namespace."""
    proc = subprocess.Popen(
        [*h.nsenter, *AS_USER, PY, LIBNET, json.dumps({"target": c.pid, **kw})],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=user_env(), cwd="/tmp",
    )
    try:
        assert proc.stdout is not None
        r, _, _ = select.select([proc.stdout], [], [], 15)
        line = proc.stdout.readline() if r else b""
        assert json.loads(line or b"{}") == {"ready": True}, line
        yield proc
    finally:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        with contextlib.suppress(Exception):
            proc.communicate(timeout=10)


# ---------------------------------------------------------------- the checks


def all_probes(h: PolicyHost) -> list[list[object]]:
    tport, uport = h.tcp.port, h.udp.port
    probes: list[list[object]] = []
    for a in (*DENIED4, *DENIED6, HOST4, HOST6):
        probes += [["tcp", a, tport], ["udp", a, uport]]
    for a in (*DENIED4, *DENIED6):
        probes.append(["ping", a])
    for a in (PUBLIC4, PUBLIC6):
        probes += [["echo", a, tport, 1 << 20], ["udp", a, uport], ["ping", a]]
    return probes


def check_public_only(h: PolicyHost, probes: list[list[object]], rep: dict[str, object]) -> None:
    """Denied: refused at once (RST, ICMP prohibited), nothing reached a
    server; public: every byte echoed."""
    assert rep["v6"] is True, "the guest got no IPv6 address"
    results = rep["probes"]
    assert isinstance(results, list)
    for p, got in zip(probes, results, strict=True):
        kind, addr = p[0], p[1]
        if addr in (PUBLIC4, PUBLIC6):
            assert got["result"] == "OK", (p, got)
            if kind == "echo":
                assert got["bytes"] == 1 << 20
            continue
        v6 = ":" in str(addr)
        expect = {"tcp": "ECONNREFUSED", "udp": "EACCES" if v6 else "EHOSTUNREACH",
                  "ping": "PROHIBITED"}[str(kind)]
        assert got["result"] == expect, (p, got)
        assert got["seconds"] < 0.5, (p, got)
    tcp_seen = h.lines(h.tcp)
    udp_seen = h.lines(h.udp)
    # Exactly the two public echoes and the two public datagrams' flows.
    assert len(tcp_seen) == 2 and all(s.get("mode") == "echo" for s in tcp_seen), tcp_seen
    assert len(udp_seen) == 2, udp_seen


@pytest.mark.parametrize("confined", [False, True], ids=["plain", "sandbox-seccomp"])
def test_public_only_slirp4netns(
    pol_host: PolicyHost, container: Container, confined: bool
) -> None:
    """Also confined as Podman runs it (--enable-sandbox --enable-seccomp):
    the denial log line must still be written from inside the sandbox."""
    probes = all_probes(pol_host)
    extra = ["--enable-sandbox", "--enable-seccomp"] if confined else []
    with slirp4netns(pol_host, container, "--policy=public-only", *extra) as s:
        r = container.run(*probe_cmd(pol_host, probes), timeout=120, check=False)
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        check_public_only(pol_host, probes, report(r.stdout))
        s.stop()
        _, err = s.output()
    # One log line per denied destination: time, protocol, destination, rule.
    for a in (*DENIED4, HOST4):
        assert any(f"-> {a}:" in ln and "policy denied" in ln and "by rule 1: deny to private"
                   in ln for ln in err.splitlines()), (a, err)
    lines = [ln for ln in err.splitlines() if f"-> {PRIVATE4}:" in ln]
    assert len(lines) == 1, lines  # TCP, UDP and ping to it: one line in 10 s


def test_public_only_slirpy_run(pol_host: PolicyHost) -> None:
    probes = all_probes(pol_host)
    cmd = [*pol_host.nsenter,
           *run_cmd(["--ipv6", "-v", "--policy", "public-only"], probe_cmd(pol_host, probes))]
    r = subprocess.run(cmd, capture_output=True, text=True, env=user_env(), cwd="/tmp",
                       timeout=180, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    check_public_only(pol_host, probes, report(r.stdout))
    assert f"-> {METADATA4}:" in r.stderr and "policy denied" in r.stderr  # -v shows it


def test_public_only_library(pol_host: PolicyHost, container: Container) -> None:
    probes = all_probes(pol_host)
    with library(pol_host, container, ipv6=True, policy="public-only") as lib:
        r = container.run(*probe_cmd(pol_host, probes), timeout=120, check=False)
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        check_public_only(pol_host, probes, report(r.stdout))
        assert lib.stdin is not None and lib.stdout is not None
        lib.stdin.write(b'{"op": "stats"}\n')
        lib.stdin.flush()
        stats = json.loads(lib.stdout.readline())["return"]
    pol = stats["policy"]
    assert pol["name"] == "public-only"
    # 6 denied destinations x TCP and UDP, 4 pings; the public ones by default.
    assert pol["rule_hits"] == [16] and pol["denied"] == 16
    assert pol["default_hits"] == 6


def test_without_policy_everything_reaches(pol_host: PolicyHost, container: Container) -> None:
    """The bed itself: without --policy the same probes all get through, so
    the tests above fail without the feature."""
    h = pol_host
    probes = [["tcp", PRIVATE4, h.tcp.port], ["udp", METADATA6, h.udp.port], ["ping", METADATA4],
              ["ping", PRIVATE6], ["tcp", HOST4, h.tcp.port]]
    with slirp4netns(h, container):
        r = container.run(*probe_cmd(h, probes), timeout=120, check=False)
    rep = report(r.stdout)
    assert [p["result"] for p in rep["probes"]] == ["OK"] * 5, rep  # type: ignore[index]


@pytest.mark.parametrize("confined", [False, True], ids=["plain", "sandbox-seccomp"])
def test_live_set_policy_resets_open_connection(
    pol_host: PolicyHost, container: Container, confined: bool
) -> None:
    h = pol_host
    extra = ["--enable-sandbox", "--enable-seccomp"] if confined else []
    with api_dir() as d, slirp4netns(h, container, f"--api-socket={d}/api.sock",
                                     "--policy=allow-all", *extra):
        api = f"{d}/api.sock"
        assert api_call(api, {"execute": "get_policy"}) == {
            "return": {"name": "allow-all", "policy": {"default": "allow", "rule": []}}}
        guest = container.popen(*probe_cmd(h, [["hold", PRIVATE4, h.tcp.port]], v6=False),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert guest.stdout is not None
        r, _, _ = select.select([guest.stdout], [], [], 20)
        assert r and guest.stdout.readline() == b"CONNECTED\n"
        # A bad policy changes nothing: the connection stays.
        bad = api_call(api, {"execute": "set_policy",
                             "arguments": {"policy": {"rule": [{"action": "deny", "to": []}]}}})
        assert bad == {"error": {"desc": "bad request: set_policy: policy <api>: rule 1: to is "
                                         "empty (a rule must name at least one destination)"}}
        t0 = time.monotonic()
        assert api_call(api, {"execute": "set_policy",
                              "arguments": {"preset": "public-only"}}) == {"return": {}}
        out, err = guest.communicate(timeout=30)
        assert report(out)["probes"] == [{"result": "ECONNRESET"}], err.decode()[-2000:]
        assert time.monotonic() - t0 < 5
        got = api_call(api, {"execute": "get_policy"})["return"]
        assert got["name"] == "public-only"  # type: ignore[index]
        # New connections follow the new policy.
        r2 = container.run(*probe_cmd(h, [["tcp", PRIVATE4, h.tcp.port]], v6=False),
                           check=False)
        assert report(r2.stdout)["probes"][0]["result"] == "ECONNREFUSED"  # type: ignore[index]
        stats = api_call(api, {"execute": "get_stats"})["return"]
        assert stats["policy"]["rule_hits"] == [1]  # type: ignore[index]
    # The server's side of the reset connection was closed too.
    seen = h.lines(h.tcp, quiet=2)
    assert len(seen) == 1 and seen[0]["mode"] == "echo", seen


# ------------------------------------------------------------- pasta's model

# What Podman 5.4 passes to pasta (tests/unit/test_pasta_cli.py), DNS pinned
# to the fake upstream's server, and its host.containers.internal address.
PASTA_ARGS = ("--config-net", "--dns-forward", "169.254.1.1", "--dns-host", fakehost.DNS4,
              "-t", "none", "-u", "none", "-T", "none", "-U", "none", "--no-map-gw",
              "--quiet", "--map-guest-addr", "169.254.1.2")


@pytest.fixture(scope="module")
def fh() -> Iterator[fakehost.FakeHost]:
    """The fake host of TESTBED.md (tests/helpers/fakehost.py): a pasta-style
    stack copies its routes, which lead only to the test's upstream namespace."""
    if os.geteuid() != 0:
        pytest.skip("the fake host needs root to build")
    os.chmod("/dev/net/tun", 0o666)
    with fakehost.fake_host() as bed:
        yield bed


@contextlib.contextmanager
def pasta(fh: fakehost.FakeHost, c: Container, *args: str) -> Iterator[None]:
    """slirpy pasta as Podman runs it: it forks once ready, writing its PID file."""
    d = tempfile.mkdtemp(prefix="slirpy-pol-pasta-")
    os.chmod(d, 0o777)
    pid_file = f"{d}/pasta.pid"
    try:
        r = subprocess.run(
            ["nsenter", f"--net={fh.netns}", *AS_USER, PY, "-m", "slirpy", "pasta", *args,
             "-P", pid_file, str(c.pid)],
            capture_output=True, text=True, timeout=30, env=user_env())
        assert r.returncode == 0, r.stderr
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            pid = int(pathlib.Path(pid_file).read_text())
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda: not pathlib.Path(f"/proc/{pid}").exists(), 5,
                       what="slirpy pasta to exit")
        shutil.rmtree(d, ignore_errors=True)


def test_public_only_pasta(fh: fakehost.FakeHost, pol_host: PolicyHost) -> None:
    """`--network pasta:--policy,public-only`: the private and metadata test
    hosts and the host itself refused at once and never reached, the public
    one reached, DNS through the forwarder still answered."""
    private, meta, public = fakehost.PRIVATE_HOST4, fakehost.METADATA4, fakehost.TEST_HOST4
    port = fakehost.ECHO_PORT
    probes: list[list[object]] = [
        ["tcp", private, port], ["tcp", meta, port], ["udp", private, port],
        ["udp", meta, port], ["ping", private], ["ping", meta],
        ["tcp", "169.254.1.2", fakehost.PEER_PORT],  # --map-guest-addr: the host
        ["tcp", public, port], ["udp", public, port], ["ping", public],
        ["tcp", fakehost.TEST_HOST6, port], ["udp", fakehost.TEST_HOST6, port],
        ["dns", "169.254.1.1", 53, f"www.{fakehost.DOMAIN}"],
    ]
    before = len(fh.events())
    with make_container(fh.netns) as c, pasta(fh, c, *PASTA_ARGS, "--policy", "public-only"):
        r = c.run(*probe_cmd(pol_host, probes), timeout=120, check=False)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    results = report(r.stdout)["probes"]
    expect = ["ECONNREFUSED", "ECONNREFUSED", "EHOSTUNREACH", "EHOSTUNREACH", "PROHIBITED",
              "PROHIBITED", "ECONNREFUSED", "OK", "OK", "OK", "OK", "OK", "OK"]
    assert [p["result"] for p in results] == expect, results  # type: ignore[index]
    for p, got in zip(probes[:7], results, strict=False):  # type: ignore[call-overload]
        assert got["seconds"] < 0.5, (p, got)
    seen = fh.events()[before:]
    reached = {str(e.get("local")) for e in seen if e.get("proto") == "tcp"}
    assert reached.isdisjoint({private, meta}), seen
    assert {public, fakehost.TEST_HOST6} <= reached, seen
