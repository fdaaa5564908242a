"""--enable-sandbox and --enable-seccomp: confined, and every feature still works."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading

import pytest

from tests.helpers.testbed import AS_USER, Container, user_env

PID_STATUS_FIELDS = ("CapEff", "CapPrm", "CapBnd", "NoNewPrivs", "Seccomp")


def status(pid: int) -> dict[str, str]:
    out = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in PID_STATUS_FIELDS:
            out[key] = value.strip()
    return out


def api(path: str, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(request + b"\n")
        s.shutdown(socket.SHUT_WR)
        return s.recv(65536)


class OneShotDns:
    """A UDP DNS server on 127.0.1.53:53 answering every A query with 192.0.2.55.

    resolv.conf cannot name a port, so the server takes port 53 on a loopback
    address of its own (the test runs as root).
    """

    ADDR = "127.0.1.53"

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((self.ADDR, 53))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.queries = 0
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from scapy.layers.dns import DNS, DNSRR

        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            q = DNS(data)
            self.queries += 1
            reply = DNS(id=q.id, qr=1, aa=1, rd=q.rd, ra=1, qd=q.qd,
                        an=DNSRR(rrname=q.qd.qname, type="A", ttl=60, rdata="192.0.2.55"))
            self.sock.sendto(bytes(reply), peer)

    def close(self) -> None:
        self._stop = True
        self.thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def resolv_symlink(shared_dir: pathlib.Path):
    """resolv.conf as a symlink into a directory outside /etc and /run."""
    dns = OneShotDns()
    real_dir = shared_dir / "elsewhere"
    real_dir.mkdir(mode=0o755)
    (real_dir / "resolv.conf").write_text(f"nameserver {dns.ADDR}\n")
    link = shared_dir / "resolv.conf"
    link.symlink_to(real_dir / "resolv.conf")
    try:
        yield link, dns
    finally:
        dns.close()


def test_sandbox_and_seccomp_confine_and_keep_features(
    container: Container, slirpy_factory, resolv_symlink
) -> None:
    link, dns = resolv_symlink
    mounts_before = pathlib.Path("/proc/self/mountinfo").read_text()
    api_path = f"/tmp/slirpy-sb-{os.getpid()}.sock"
    s = slirpy_factory([
        "--enable-sandbox", "--enable-seccomp", "-c", f"--api-socket={api_path}",
        f"--resolv-conf={link}", str(container.pid), "tap0",
    ])
    pid = s.proc.pid
    st = status(pid)
    assert st["CapEff"] == st["CapPrm"] == st["CapBnd"] == "0000000000000400"
    assert st["NoNewPrivs"] == "1"
    assert st["Seccomp"] == "2"
    assert sorted(os.listdir(f"/proc/{pid}/root")) == ["etc", "run", "tmp"]
    # /etc is read-only inside; the host's mount table is untouched.
    mi = pathlib.Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    etc = [line for line in mi if line.split()[4] == "/etc"]
    assert etc and " ro," in f" {etc[0].split()[5]},"
    assert pathlib.Path("/proc/self/mountinfo").read_text() == mounts_before
    # Data path and API still work.
    r = container.run("busybox", "ping", "-c", "2", "-W", "2", "10.0.2.2")
    assert "2 packets received" in r.stdout.decode()
    assert api(api_path, b'{"execute":"list_hostfwd"}') == b'{"return":{"entries":[]},"entries":[]}'
    # DNS through N+3 reaches the resolver named by a resolv.conf that is a
    # symlink outside /etc and /run (slirp4netns loses DNS there).
    r = container.run("busybox", "nslookup", "probe.test", "10.0.2.3", check=False)
    assert "192.0.2.55" in r.stdout.decode(), r.stdout.decode() + r.stderr.decode()
    assert dns.queries >= 1
    assert s.stop(signal.SIGTERM) == 0
    assert not os.path.exists(api_path)  # removed even from inside the sandbox


@pytest.mark.parametrize(
    "code",
    [
        "os.execv('/bin/true', ['true'])",
        "import ctypes; ctypes.CDLL(None).unshare(0x20000)",
        "import ctypes; ctypes.CDLL(None).mount(b'none', b'/tmp', b'tmpfs', 0, None)",
        "import ctypes; ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)",
    ],
)
def test_seccomp_filter_kills_forbidden_syscalls(code: str) -> None:
    prog = f"import os\nfrom slirpy.engine import seccomp_apply\nseccomp_apply()\n{code}\n"
    r = subprocess.run([*AS_USER, sys.executable, "-c", prog], env=user_env(),
                       capture_output=True, timeout=30)
    assert r.returncode == -signal.SIGSYS, (r.returncode, r.stderr.decode())


def test_seccomp_filter_allows_normal_work() -> None:
    prog = (
        "import socket\nfrom slirpy.engine import seccomp_apply\nseccomp_apply()\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); print('ok')\n"
    )
    r = subprocess.run([*AS_USER, sys.executable, "-c", prog], env=user_env(),
                       capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stdout == b"ok\n", r.stderr.decode()
