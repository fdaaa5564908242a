"""RootlessKit's `--net=pasta` (rootless Docker, nerdctl) with each pasta (COMPAT-pasta.md §3).

Two contracts, both against each pasta in PASTAS (tests/helpers/pastabed.py),
as the Debian 13 root's test user inside the fake host:

* RootlessKit 2.0-2.2, run for real (Debian 13 ships 2.0.2): it makes and
  configures tap0 itself, then starts `pasta --foreground --stderr
  --ns-ifname=tap0 --mtu=N --no-dhcp --no-ra --address= --netmask=
  --gateway= --dns-forward= ... PID` without waiting for it. The child sees
  10.0.2.100/24 on tap0, the default route via 10.0.2.2, MTU 65520;
  outbound TCP leaves as the fake host's address, 10.0.2.3 forwards DNS, and
  the stack is gone once RootlessKit's child has exited.
* RootlessKit 2.3+ and 3.x, replayed with its exact argv (this root has no
  such RootlessKit): the `--version` and `--host-lo-to-ns-lo --version`
  probes, then `--config-net` against a container the test user made, the
  target given as a positional PID or (--detach-netns) as `--userns=
  --netns=/proc/PID/root/...`; the stack must exit 0 only once the
  namespace is configured, and, with the PID form, quit once the container
  is gone. `--tcp-ports=auto` (the implicit port driver) must mirror a port
  bound in the container onto the fake host's loopback.

Processes of a test are killed by PID at its end, even on failure. Traffic
stays in the test's namespaces. This file must not change the root or slirpy.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterator

import pytest

from tests.helpers import fakehost, pastabed

pytestmark = pytest.mark.clients

# The fixtures of tests/helpers/pastabed.py: one bed per module, each pasta in PASTAS.
bed = pastabed.bed
pasta = pastabed.pasta
Pasta = pastabed.Pasta

TAP4 = "10.0.2.100"
GATEWAY = "10.0.2.2"
DNS = "10.0.2.3"
MTU = "65520"
AUTO_PORT = 8380
# What the namespace shows, in sections split by "---" lines: tap0's IPv4
# address, the routes, tap0's link line, the TCP peer's view of us, DNS.
CHECKS = (
    "ip -o -4 addr show dev tap0; echo ---; ip route; echo ---; ip -o link show tap0; "
    f"echo ---; busybox timeout 10 busybox nc {fakehost.TEST_HOST4} {fakehost.PEER_PORT} "
    f"</dev/null; echo ---; busybox timeout 10 busybox nslookup www.{fakehost.DOMAIN} {DNS}"
)
# RootlessKit 2.0 does not wait for pasta: the child waits (bounded) for the
# tap's carrier, which comes up once the stack has attached to it.
WAIT_CARRIER = ("for i in $(seq 200); do ip link show tap0 | grep -q LOWER_UP && break; "
                "sleep 0.05; done")
# RootlessKit 2.3+ argv (pkg/network/pasta), before the target. --no-map-gw
# comes from --disable-host-loopback, --ipv4-only from no --ipv6, the port
# options from the port driver, --host-lo-to-ns-lo from the feature probe.
V23_ARGV = ("--stderr", "--ns-ifname=tap0", f"--mtu={MTU}", "--config-net",
            f"--address={TAP4}", "--netmask=24", f"--gateway={GATEWAY}",
            f"--dns-forward={DNS}")
V23_IMPLICIT = ("--no-map-gw", "--ipv4-only", "--tcp-ports=auto", "--udp-ports=auto",
                "--host-lo-to-ns-lo")
V23_NONE = ("--ipv4-only", "--tcp-ports=none", "--udp-ports=none")


def _assert_configured(pasta: Pasta, out: str, before: int) -> None:
    """The sections CHECKS printed: what RootlessKit's child expects of the stack."""
    addr, routes, link, peer, dns = out.split("---\n")
    assert f"inet {TAP4}/24 " in addr
    assert f"default via {GATEWAY} dev tap0" in routes
    assert f" mtu {MTU} " in link
    assert "UP" in link.split("<")[1].split(">")[0].split(",")
    assert peer.split()[0] == fakehost.HOST4
    assert f"Address: {fakehost.TEST_HOST4}" in dns
    asked = [e for e in pasta.bed.fh.events()[before:] if e.get("service") == "dns"]
    assert {e["peer"] for e in asked} == {fakehost.HOST4}


@contextlib.contextmanager
def _killed_after(pasta: Pasta) -> Iterator[None]:
    """Kill (by PID) whatever this pasta left running, even when the test failed."""
    try:
        yield
    finally:
        for pid in pastabed.pasta_pids(pasta):
            pasta.bed.session.run("kill", "-KILL", str(pid), check=False)
        pastabed.wait_no_pasta(pasta, 5)


# ------------------------------------------------------------------ RootlessKit 2.0.2


@pytest.mark.parametrize("flags", [
    ("--disable-host-loopback", "--port-driver=implicit"),  # as dockerd-rootless.sh with pasta
    (),
], ids=["implicit", "defaults"])
def test_rootlesskit_2_runs_the_stack(pasta: Pasta, flags: tuple[str, ...]) -> None:
    before = len(pasta.bed.fh.events())
    script = f"{WAIT_CARRIER}; {CHECKS}; echo ---; ps -eo args"
    with _killed_after(pasta):
        assert pastabed.wait_no_pasta(pasta, 5) == []
        r = pasta.bed.session.run_user(
            "timeout", "60", "rootlesskit", "--net=pasta", f"--pasta-binary={pasta.executable}",
            "--copy-up=/etc", *flags, "sh", "-c", script, timeout=90)
        out, ps = r.stdout.rsplit("---\n", 1)
        _assert_configured(pasta, out, before)
        # The stack RootlessKit ran was the pasta under test, in the 2.0 contract.
        stack = [ln for ln in ps.splitlines() if pasta.executable + " --foreground" in ln]
        assert stack, ps
        assert " --ns-ifname=tap0 " in stack[0] and " --no-dhcp " in stack[0]
        # RootlessKit's child has exited: the stack is gone too.
        assert pastabed.wait_no_pasta(pasta, 5) == []


# ------------------------------------------------------------------ RootlessKit 2.3+/3 replayed


def test_version_probes(pasta: Pasta) -> None:
    session = pasta.bed.session
    assert session.run_user(pasta.executable, "--version", timeout=30).returncode == 0
    r = session.run_user(pasta.executable, "--host-lo-to-ns-lo", "--version", check=False,
                         timeout=30)
    assert r.returncode == 0, r.stderr


def _replay(pasta: Pasta, target: str, argv: tuple[str, ...], container: str,
            enter: str, after: str = "") -> str:
    """Run one test-user shell: make the container, run the stack, check from inside.

    `container`: command (in the background) holding the container; `target`:
    the stack's target arguments ($C is the container's PID); `enter`: the
    prefix that runs a command in the container's network namespace; `after`:
    more shell run before the container is killed.
    """
    stack = shlex.join([pasta.executable, *argv])
    script = f"""
{container} &
C=$!
for i in $(seq 100); do [ -e /tmp/rk-ready-$C ] && break; sleep 0.05; done
{stack} {target}
echo "rc=$?"
echo ===
{enter} sh -c {shlex.quote(CHECKS)}
echo ===
{after}
kill $C
wait $C
"""
    r = pasta.bed.session.run_user("timeout", "60", "sh", "-c", script, check=False,
                                   timeout=90)
    assert "rc=0\n" in r.stdout, r.stdout + r.stderr
    return r.stdout


# A user+net namespace of the test user, held by a sleep; readiness is a file
# written from inside once unshare has made it.
PID_CONTAINER = ("unshare --user --map-root-user --net sh -c "
                 "'touch /tmp/rk-ready-$$ && exec sleep 60'")
PID_ENTER = "nsenter -t $C -U -n --preserve-credentials"


@pytest.mark.parametrize("argv", [V23_IMPLICIT, V23_NONE], ids=["implicit", "none"])
def test_rootlesskit_3_pid_target(pasta: Pasta, argv: tuple[str, ...]) -> None:
    before = len(pasta.bed.fh.events())
    with _killed_after(pasta):
        assert pastabed.wait_no_pasta(pasta, 5) == []
        out = _replay(pasta, "$C", (*V23_ARGV, *argv), PID_CONTAINER, PID_ENTER)
        _assert_configured(pasta, out.split("===\n")[1], before)
        # The container is gone: the stack quits on its own (procfs polling).
        assert pastabed.wait_no_pasta(pasta, 5) == []


def test_rootlesskit_3_implicit_ports(pasta: Pasta) -> None:
    """`--tcp-ports=auto`: a port bound in the container appears on the fake host's loopback."""
    serve = ("mkdir -p /tmp/rk-www-$C && echo bed13-auto > /tmp/rk-www-$C/index.html && "
             f"{PID_ENTER} busybox httpd -f -p {AUTO_PORT} -h /tmp/rk-www-$C &")
    fetch = (f"(for i in $(seq 100); do busybox wget -q -T 2 -O- "
             f"http://127.0.0.1:{AUTO_PORT}/ && exit 0; sleep 0.1; done; exit 1)")
    with _killed_after(pasta):
        assert pastabed.wait_no_pasta(pasta, 5) == []
        out = _replay(pasta, "$C", (*V23_ARGV, *V23_IMPLICIT), PID_CONTAINER, PID_ENTER,
                      after=f"{serve}\nH=$!\n{fetch}\necho \"fetch=$?\"\nkill $H")
        assert "bed13-auto\nfetch=0\n" in out.split("===\n")[2]


# --detach-netns: RootlessKit's child keeps the network namespace as a file
# in its own mount namespace; the stack is given --userns and --netns.
DETACHED_CONTAINER = (
    "unshare --user --map-root-user --mount sh -c 'mkdir -p /tmp/rk-state-$$ && "
    "touch /tmp/rk-state-$$/netns && unshare --net=/tmp/rk-state-$$/netns true && "
    "touch /tmp/rk-ready-$$ && exec sleep 60'"
)
DETACHED_TARGET = "--userns=/proc/$C/ns/user --netns=/proc/$C/root/tmp/rk-state-$C/netns"
DETACHED_ENTER = ("nsenter -t $C -U -m --preserve-credentials "
                  "nsenter --net=/tmp/rk-state-$C/netns")


def test_rootlesskit_3_userns_netns_target(pasta: Pasta) -> None:
    before = len(pasta.bed.fh.events())
    with _killed_after(pasta):
        assert pastabed.wait_no_pasta(pasta, 5) == []
        out = _replay(pasta, DETACHED_TARGET, (*V23_ARGV, *V23_IMPLICIT), DETACHED_CONTAINER,
                      DETACHED_ENTER)
        _assert_configured(pasta, out.split("===\n")[1], before)
