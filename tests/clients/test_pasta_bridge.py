"""Podman 5.4 bridge networks behind the "rootless netns" stack (COMPAT-pasta.md section 2).

Rootless Podman runs every container of a bridge network (`podman network
create`) in one shared namespace per user, whose outside connection is one
long-lived pasta started with `--pid <dir>/rootless-netns-conn.pid`; netavark
and aardvark-dns run inside it. As the Debian 13 root's test user, inside the
fake host (tests/helpers/pastabed.py), with each pasta in PASTAS as that
stack, this file checks what users of Compose-style setups meet: containers
find each other by name, reach the test hosts outside (leaving as the fake
host's address), resolve the test domain through aardvark-dns and the
stack's forwarder 169.254.1.1, a published port (rootlessport) answers from
the fake host's loopback and from upstream; Podman's PID file names the
stack; after the stack was killed Podman starts it again on the same
namespace; and removing the last container leaves no stack process.

Each test makes its own network and containers and removes them, even on
failure, so that every test starts without a rootless netns and the stack it
meets is the one under test (checked through the PID file). Traffic stays in
the test's namespaces. This file must not change the root or slirpy.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.helpers import fakehost, pastabed, trixie_root

pytestmark = pytest.mark.clients

# The fixtures of tests/helpers/pastabed.py: one bed per module, each pasta in PASTAS.
bed = pastabed.bed
pasta = pastabed.pasta
Pasta = pastabed.Pasta

NETNS_DIR = f"/run/user/{trixie_root.USER_UID}/containers/networks/rootless-netns"
PID_FILE = f"{NETNS_DIR}/rootless-netns-conn.pid"
RESTART_WARNING = "rootless netns program no longer running, trying to start it again"
BODY = "bed13-bridge\n"
WEB = (f"mkdir -p /www && echo {BODY.strip()} > /www/index.html && "
       "exec httpd -f -v -p 80 -h /www")
PUBLISHED = 8180
HTTP_GET = b"GET /index.html HTTP/1.0\r\n\r\n"
# Bounded wait (in the client container) until the web container answers by name.
GET_WEB = ("(for i in $(seq 50); do wget -q -T 2 -O- http://web/ && exit 0; sleep 0.1; "
           "done; exit 1)")
SEQ_BYTES = "".join(f"{i}\n" for i in range(1, 40001)).encode()


@dataclass
class Bridge:
    """A bridge network with a busybox httpd container `web` on it (port 80 published)."""

    pasta: Pasta
    network: str

    def run(self, script: str, check: bool = True, timeout: float = 60) -> tuple[str, str]:
        """`sh -c script` in a new container on the network: (stdout, stderr)."""
        r = self.pasta.podman("run", "--rm", "--network", self.network, trixie_root.IMAGE,
                              "timeout", "30", "sh", "-c", script, check=check,
                              timeout=timeout)
        return r.stdout, r.stderr


def _remove(pasta: Pasta, network: str) -> None:
    pasta.podman("rm", "-f", "-t", "0", "web", check=False, timeout=60)
    pasta.podman("network", "rm", "-f", network, check=False, timeout=60)


def stack_pid(pasta: Pasta) -> int:
    """The PID Podman reads from the rootless netns' PID file."""
    return int(pasta.bed.session.run("cat", PID_FILE).stdout.strip())


def _cmdline(pasta: Pasta, pid: int) -> list[str]:
    r = pasta.bed.session.run("cat", f"/proc/{pid}/cmdline", check=False)
    return r.stdout.split("\0")


@contextlib.contextmanager
def bridge(pasta: Pasta) -> Iterator[Bridge]:
    """A fresh network and `web`; the rootless netns' stack must be the pasta under test."""
    network = f"bed13-br-{pasta.name}"
    _remove(pasta, network)
    # Nothing of an earlier test may still serve the rootless netns.
    assert pastabed.wait_no_pasta(pasta, 5) == []
    try:
        pasta.podman("network", "create", network, timeout=60)
        pasta.podman("run", "-d", "--name", "web", "--network", network, "-p",
                     f"{PUBLISHED}:80", trixie_root.IMAGE, "sh", "-c", WEB, timeout=60)
        pid = stack_pid(pasta)
        pids = pastabed.pasta_pids(pasta)
        assert pid in pids, (
            f"the rootless netns' stack {pid} {_cmdline(pasta, pid)} is not one of "
            f"{pasta.executable}'s {pids}:\n"
            + pasta.bed.session.run("ps", "-eo", "pid,ppid,stat,args").stdout)
        yield Bridge(pasta, network)
    finally:
        _remove(pasta, network)


def _served(pasta: Pasta, host: str, port: int, upstream: bool = False) -> bytes:
    """What `web` answers through host:port (bounded retries while it starts)."""
    body = b""
    for _ in range(50):
        with contextlib.suppress(fakehost.BedError):
            body = pasta.bed.fh.client(host, port, HTTP_GET, upstream=upstream, timeout=5)
        if body:
            break
        time.sleep(0.1)
    return body


def test_containers_reach_each_other_by_name(pasta: Pasta) -> None:
    with bridge(pasta) as br:
        out, _ = br.run(f"nslookup web; echo ---; {GET_WEB}")
        names, body = out.split("---\n")
        # aardvark-dns answers with web's address on the bridge.
        assert "Address: 10.89." in names.split("Name:")[-1]
        assert body == BODY


@pytest.mark.parametrize("test_host", [fakehost.TEST_HOST4, fakehost.PRIVATE_HOST4])
def test_outbound_tcp_leaves_as_the_fake_host(pasta: Pasta, test_host: str) -> None:
    with bridge(pasta) as br:
        out, _ = br.run(f"nc {test_host} {fakehost.PEER_PORT} </dev/null")
        assert out.split()[0] == fakehost.HOST4


def test_outbound_tcp_echo_bytes(pasta: Pasta) -> None:
    with bridge(pasta) as br:
        before = len(pasta.bed.fh.events())
        out, _ = br.run(f"seq 1 40000 | nc {fakehost.TEST_HOST4} {fakehost.ECHO_PORT} | md5sum")
        closed = [e for e in pasta.bed.fh.events()[before:]
                  if e.get("service") == "echo" and e.get("closed")]
        assert out.split()[0] == hashlib.md5(SEQ_BYTES).hexdigest(), (
            f"echo reply differs; the echo server saw {closed}")


def test_dns_through_aardvark_and_the_forwarder(pasta: Pasta) -> None:
    with bridge(pasta) as br:
        before = len(pasta.bed.fh.events())
        out, _ = br.run(f"cat /etc/resolv.conf; echo ---; nslookup www.{fakehost.DOMAIN}; "
                        f"echo ---; nslookup nothing.{fakehost.DOMAIN} || true")
        resolv, found, missing = out.split("---\n")
        # The container asks aardvark-dns on the bridge's gateway...
        servers = [ln.split()[1] for ln in resolv.splitlines() if ln.startswith("nameserver")]
        assert servers[:1] and servers[0].startswith("10.89.")
        assert f"Address: {fakehost.TEST_HOST4}" in found
        assert f"Address: {fakehost.TEST_HOST6}" in found
        assert "NXDOMAIN" in missing
        # ...which forwards to 169.254.1.1, the stack's forwarder (first in the
        # resolv.conf Podman writes for the rootless netns): the upstream
        # server is asked from the fake host's address.
        netns_resolv = pasta.bed.session.run("cat", f"{NETNS_DIR}/resolv.conf").stdout
        assert netns_resolv.split("\n", 1)[0] == "nameserver 169.254.1.1"
        asked = [e for e in pasta.bed.fh.events()[before:] if e.get("service") == "dns"]
        assert f"www.{fakehost.DOMAIN}" in {e["name"] for e in asked}
        assert {e["peer"] for e in asked} == {fakehost.HOST4}


def test_published_port_through_rootlessport(pasta: Pasta) -> None:
    with bridge(pasta):
        end = b"\r\n\r\n" + BODY.encode()
        assert _served(pasta, "127.0.0.1", PUBLISHED).endswith(end)
        assert _served(pasta, "::1", PUBLISHED).endswith(end)
        assert _served(pasta, fakehost.HOST4, PUBLISHED, upstream=True).endswith(end)
        assert _served(pasta, fakehost.HOST6, PUBLISHED, upstream=True).endswith(end)


def test_pid_file_names_the_stack(pasta: Pasta) -> None:
    with bridge(pasta):
        pid = stack_pid(pasta)
        argv = _cmdline(pasta, pid)
        # The long-lived process itself (not a parent that exited), running
        # for the rootless netns with the PID file Podman gave it.
        assert PID_FILE in argv
        assert f"{NETNS_DIR}/rootless-netns" in argv
        assert pasta.bed.session.run("kill", "-0", str(pid), check=False).returncode == 0


def test_a_killed_stack_is_started_again_on_the_same_netns(pasta: Pasta) -> None:
    session = pasta.bed.session
    with bridge(pasta) as br:
        netns = f"{NETNS_DIR}/rootless-netns"
        inode = session.run("stat", "-L", "-c", "%i", netns).stdout.strip()
        old = stack_pid(pasta)
        session.run("kill", "-KILL", str(old))
        deadline = time.monotonic() + 5
        while old in pastabed.pasta_pids(pasta) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert old not in pastabed.pasta_pids(pasta)
        out, err = br.run(f"{GET_WEB}; echo ---; nc {fakehost.TEST_HOST4} "
                          f"{fakehost.PEER_PORT} </dev/null")
        assert RESTART_WARNING in err
        body, peer = out.split("---\n")
        assert body == BODY
        assert peer.split()[0] == fakehost.HOST4
        new = stack_pid(pasta)
        assert new != old
        assert new in pastabed.pasta_pids(pasta)
        # The same namespace (web's bridge lives there), reached again by the
        # container that ran all along.
        assert session.run("stat", "-L", "-c", "%i", netns).stdout.strip() == inode
        r = pasta.podman("exec", "web", "timeout", "20", "nc", fakehost.TEST_HOST4,
                         str(fakehost.PEER_PORT), timeout=60)
        assert r.stdout.split()[0] == fakehost.HOST4


def test_the_last_container_and_network_rm_leave_no_stack(pasta: Pasta) -> None:
    with bridge(pasta) as br:
        out, _ = br.run(GET_WEB)
        assert out == BODY
        pid = stack_pid(pasta)
        assert pastabed.pasta_pids(pasta)
        pasta.podman("rm", "-f", "-t", "0", "web", timeout=60)
        # Podman unmounts the netns and SIGTERMs the PID of its PID file.
        assert pastabed.wait_no_pasta(pasta, 5) == []
        assert pasta.bed.session.run("kill", "-0", str(pid), check=False).returncode != 0
        pasta.podman("network", "rm", br.network, timeout=60)
        assert pastabed.pasta_pids(pasta) == []


def test_network_rm_force_leaves_no_stack(pasta: Pasta) -> None:
    with bridge(pasta) as br:
        assert pastabed.pasta_pids(pasta)
        # Removes the running container with the network: the last user goes.
        pasta.podman("network", "rm", "-f", "-t", "0", br.network, timeout=60)
        assert pastabed.wait_no_pasta(pasta, 5) == []
