"""The benchmark bed: containers, the three stacks, and process bookkeeping.

This module owns building what `benchmarks/compare` measures, the same way
tests/integration/conftest.py builds its test bed (copied here in minimal form
so that the benchmarks do not depend on pytest): an unprivileged user+net
namespace held by a sleeping process (uid 65534), and a network stack started
as that same user against it: slirp4netns 1.2, slirpy-slirp4netns (uvloop or
plain asyncio) or pasta. Every process it starts is registered and killed on
exit, Ctrl-C or SIGTERM. Traffic only ever goes to the host's loopback through
the gateway 10.0.2.2 (see shared/TESTBED.md); nothing here talks to any other
address.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pathlib
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

UID = int(os.environ.get("SLIRPY_TEST_UID", "65534"))
# Every process the bed starts gets SIGKILL when compare dies, even by
# SIGKILL (PR_SET_PDEATHSIG, set by setpriv after its credential changes): no
# stack, namespace or load generator outlives the run.
DIE_WITH_US = ["setpriv", "--pdeathsig", "KILL"]
AS_USER = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups",
           "--pdeathsig", "KILL"]
VENV_BIN = pathlib.Path(sys.executable).parent
# The checkout that benchmarks/ lives in: slirpy is imported from here (the
# venv's editable install may point elsewhere, and may not be readable by uid
# 65534), so that the figures are always those of this tree.
REPO = pathlib.Path(__file__).resolve().parents[1]
SLIRP4NETNS = "/usr/bin/slirp4netns"
PASTA = shutil.which("pasta") or "/usr/bin/pasta"
GATEWAY = "10.0.2.2"
GUEST = "10.0.2.100"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# ---------------------------------------------------------------- cleanup
_procs: list[subprocess.Popen[bytes]] = []
_dirs: list[str] = []


def register(p: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    _procs.append(p)
    return p


def kill(p: subprocess.Popen[bytes], timeout: float = 5) -> None:
    """Kill one process we started (by its own pid, never by name)."""
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            p.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(timeout=timeout)
    with contextlib.suppress(ValueError):
        _procs.remove(p)


def cleanup_all() -> None:
    # Newest first: clients and stacks die before the namespaces they use.
    for p in reversed(list(_procs)):
        kill(p)
    for d in _dirs:
        shutil.rmtree(d, ignore_errors=True)
    _dirs.clear()


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install_cleanup() -> None:
    atexit.register(cleanup_all)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)


def prepare_host() -> None:
    """What a desktop distribution already has (see shared/TESTBED.md)."""
    if os.geteuid() != 0:
        sys.exit("benchmarks/compare must run as root (it builds namespaces for uid 65534)")
    for tool in ("setpriv", "unshare", "nsenter", "iperf3", "ip"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
    os.chmod("/dev/net/tun", 0o666)
    pathlib.Path("/proc/sys/net/ipv4/ping_group_range").write_text("0 2147483647\n")


def pycache_dir() -> str:
    """Where the stacks' Python writes and finds its bytecode (PYTHONPYCACHEPREFIX).

    A pip-installed slirpy has its .pyc files from install time. Run from
    this checkout as uid 65534, Python could not write them next to the
    sources (root owns the tree) and would compile every module at every
    start: about 80 ms of "time to ready" that no installed slirpy pays. A
    prefix that the unprivileged user owns fixes that after one warm-up start
    (see compare's warm_up), without writing into the repository.
    """
    d = pathlib.Path(tempfile.gettempdir()) / f"slirpy-bench-pycache-{UID}"
    d.mkdir(mode=0o755, exist_ok=True)
    os.chown(d, UID, UID)
    return str(d)


def user_tmpdir() -> str:
    """A private directory the unprivileged user owns (API sockets)."""
    d = tempfile.mkdtemp(prefix="slirpy-bench-")
    os.chown(d, UID, UID)
    _dirs.append(d)
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(pid_for_netns: int | None, port: int, proto: str = "tcp") -> bool:
    """Is something listening on `port` in the netns of pid (None: ours)?"""
    want = f":{port:04X}"
    for table in (proto, proto + "6"):  # iperf3 listens on [::] by default
        path = f"/proc/{pid_for_netns or 'self'}/net/{table}"
        with contextlib.suppress(OSError), open(path) as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[1].endswith(want) and (proto == "udp" or cols[3] == "0A"):
                    return True
    return False


def wait_until(pred: object, timeout: float, what: str, step: float = 0.005) -> float:
    """Poll pred() until true; return the seconds it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():  # type: ignore[operator]
            return time.monotonic() - t0
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


# ---------------------------------------------------------------- containers
@dataclass
class Container:
    """An unprivileged user+net namespace held open by a sleeping process."""

    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def nsenter(self) -> list[str]:
        # setpriv after nsenter: joining the user namespace changes
        # credentials, which clears a parent-death signal set before it.
        return ["nsenter", "-t", str(self.pid), "-U", "-n", *DIE_WITH_US]

    def run(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        r = subprocess.run([*self.nsenter(), *cmd], capture_output=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)!r} in the container exited {r.returncode}: "
                f"{r.stdout.decode(errors='replace')[-800:]}"
                f"{r.stderr.decode(errors='replace')[-800:]}"
            )
        return r

    def popen(self, *cmd: str, **kw: object) -> subprocess.Popen[bytes]:
        return register(subprocess.Popen([*self.nsenter(), *cmd], **kw))  # type: ignore[call-overload]


@contextlib.contextmanager
def container() -> Iterator[Container]:
    proc = register(
        subprocess.Popen(
            [*AS_USER, "unshare", "--user", "--map-root-user", "--net", "sleep", "3600"],
            stdin=subprocess.DEVNULL,
        )
    )
    c = Container(proc)
    try:
        own = os.readlink("/proc/self/ns/net")

        def ready() -> bool:
            try:
                return os.readlink(f"/proc/{proc.pid}/ns/net") != own
            except OSError:
                return False

        wait_until(ready, 5, "the container namespace")
        yield c
    finally:
        kill(proc)


# ---------------------------------------------------------------- stacks
@dataclass(frozen=True)
class StackSpec:
    """One contender: how to start it."""

    name: str  # column title
    kind: str  # slirp4netns | slirpy | pasta
    env: tuple[tuple[str, str], ...] = ()
    # If set, the TAP's txqueuelen is raised to this once the stack is ready
    # (a tuning pasta 2023-03 lacks: see docs/benchmarks.md).
    txqueuelen: int = 0


@dataclass
class Stack:
    """A running network stack serving one container."""

    spec: StackSpec
    proc: subprocess.Popen[bytes]
    ready_s: float
    api_socket: str | None
    log: pathlib.Path
    fwd_port: int
    pasta_fwd: bool = False
    fwds: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_s(self) -> float:
        """utime+stime of the stack process (all threads), in seconds."""
        with open(f"/proc/{self.pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK

    def mem_kb(self) -> dict[str, int]:
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0])
        return out

    def add_hostfwd(self, guest_port: int, *, host_port: int | None = None,
                    splice: bool = False) -> None:
        """tcp 127.0.0.1:host_port (default fwd_port) -> 10.0.2.100:guest_port;
        `splice`: slirpy's spliced relay (an API extension)."""
        if self.spec.kind == "pasta":
            if not self.pasta_fwd:
                raise RuntimeError("pasta was started without a port forward")
            return  # pasta's forwards are fixed on its command line (-t)
        req = {
            "execute": "add_hostfwd",
            "arguments": {
                "proto": "tcp",
                "host_addr": "127.0.0.1",
                "host_port": host_port or self.fwd_port,
                "guest_addr": GUEST,
                "guest_port": guest_port,
            },
        }
        if splice:
            req["arguments"]["splice"] = True  # type: ignore[index]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(self.api_socket)  # type: ignore[arg-type]
            s.sendall(json.dumps(req).encode() + b"\n")
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        ans = json.loads(reply)
        if "return" not in ans:
            raise RuntimeError(f"{self.spec.name}: add_hostfwd failed: {reply.decode()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        kill(self.proc)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-1500:]
        return ""


def _slirp_cmd(spec: StackSpec, c: Container, mtu: int, wfd: int, api: str) -> list[str]:
    exe = SLIRP4NETNS if spec.kind == "slirp4netns" else str(VENV_BIN / "slirpy-slirp4netns")
    return [exe, "--configure", f"--mtu={mtu}", "-r", str(wfd), "--api-socket", api,
            str(c.pid), "tap0"]


def _pasta_cmd(c: Container, mtu: int, fwd_port: int | None) -> list[str]:
    # The same addressing as slirp4netns; the gateway 10.0.2.2 is mapped to the
    # host's loopback (pasta's default, --map-gw). No automatic port forwarding.
    tcp = f"127.0.0.1/{fwd_port}:5201" if fwd_port else "none"
    return [PASTA, "-f", "-q", "-4", "--config-net", "-I", "tap0", "-a", GUEST, "-n", "24",
            "-g", GATEWAY, "-m", str(mtu), "-t", tcp, "-u", "none", "-T", "none", "-U", "none",
            "--no-dhcp", "--no-ndp", "--no-dhcpv6", "--no-ra", str(c.pid)]


def _pasta_configured(c: Container) -> bool:
    # pasta has no ready fd: it is taken as ready when the guest has its
    # default route via 10.0.2.2 (the last step of --config-net).
    with contextlib.suppress(OSError), open(f"/proc/{c.pid}/net/route") as f:
        return any(line.split()[1:3] == ["00000000", "0202000A"] for line in f)
    return False


def start_stack(spec: StackSpec, c: Container, mtu: int, *, fwd_port: int,
                logdir: str, timeout: float = 20) -> Stack:
    log = pathlib.Path(logdir) / f"{spec.name}-{c.pid}.log"
    env = {
        "PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(REPO),
        "PYTHONPYCACHEPREFIX": pycache_dir(),
        **dict(spec.env),
    }
    with open(log, "wb") as logf:
        os.chown(log, UID, UID)
        if spec.kind == "pasta":
            t0 = time.monotonic()
            proc = register(subprocess.Popen(
                [*AS_USER, *_pasta_cmd(c, mtu, fwd_port)], stdin=subprocess.DEVNULL,
                stdout=logf, stderr=logf, env=env))
            try:
                wait_until(lambda: _pasta_configured(c) or proc.poll() is not None,
                           timeout, "pasta to configure the container", step=0.001)
            except TimeoutError:
                kill(proc)
                raise
            ready = time.monotonic() - t0
            st = Stack(spec, proc, ready, None, log, fwd_port, pasta_fwd=True)
            if proc.poll() is not None:
                raise RuntimeError(f"pasta exited {proc.returncode}: {st.log_tail()}")
            if spec.txqueuelen:
                c.run("ip", "link", "set", "tap0", "txqueuelen", str(spec.txqueuelen))
            return st
        api = os.path.join(user_tmpdir(), "api.sock")
        rfd, wfd = os.pipe()
        t0 = time.monotonic()
        try:
            proc = register(subprocess.Popen(
                [*AS_USER, *_slirp_cmd(spec, c, mtu, wfd, api)], stdin=subprocess.DEVNULL,
                stdout=logf, stderr=logf, pass_fds=(wfd,), env=env))
            os.close(wfd)
            wfd = -1
            r, _, _ = select.select([rfd], [], [], timeout)
            byte = os.read(rfd, 1) if r else b""
            ready = time.monotonic() - t0
        finally:
            os.close(rfd)
            if wfd >= 0:
                os.close(wfd)
    st = Stack(spec, proc, ready, api, log, fwd_port)
    if byte != b"1":
        kill(proc)
        raise RuntimeError(f"{spec.name} did not become ready (rc={proc.returncode}): "
                           f"{st.log_tail()}")
    return st


def pasta_works() -> str | None:
    """None if pasta can serve a container here, else why not."""
    if not os.path.exists(PASTA):
        return "pasta is not installed"
    logdir = user_tmpdir()
    try:
        with container() as c:
            st = start_stack(StackSpec("pasta", "pasta"), c, 65520, fwd_port=free_port(),
                             logdir=logdir, timeout=10)
            try:
                # One TCP round trip to the host loopback through the gateway.
                srv = socket.socket()
                srv.bind(("127.0.0.1", 0))
                srv.listen(1)
                srv.settimeout(10)
                port = srv.getsockname()[1]
                p = c.popen(sys.executable, "-c",
                            "import socket,sys;s=socket.create_connection(('10.0.2.2',"
                            f"{port}),5);s.sendall(b'x');sys.exit(s.recv(1)!=b'y')")
                conn, _ = srv.accept()
                with conn:
                    conn.settimeout(10)
                    if conn.recv(1) == b"x":
                        conn.sendall(b"y")
                rc = p.wait(timeout=10)
                srv.close()
                if rc != 0:
                    return f"a TCP round trip through pasta failed (exit {rc})"
            finally:
                st.stop()
    except (RuntimeError, TimeoutError, OSError, subprocess.TimeoutExpired) as e:
        return f"pasta does not work here: {e}"
    return None
