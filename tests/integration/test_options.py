"""slirp4netns options not proven elsewhere, and operational parity with slirp4netns.

This file owns behaviour tests of the options the other integration files do
not exercise (--macaddress, --userns-path, --outbound-addr=IFNAME,
--outbound-addr6, --no-host-loopback, --ipv6-prefix, --disable-offload,
--debug), and side-by-side checks against the real slirp4netns (Debian's
package, run the same way as slirpy): startup lines on stdout, exit codes,
API socket clean-up, and that every option slirp4netns lists is accepted.
Error *texts* are in tests/unit/test_cli.py.

Traffic goes only to loopback and test hosts made here: nothing leaves the
machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import re
import select
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.helpers.testbed import (
    AS_USER,
    Container,
    make_container,
    pipe_bytes,
    slirp4netns_cmd,
    user_env,
)
from tests.helpers.testbed import UID as USER_UID
from tests.helpers.testhost import (
    TESTNET,
    TestHost,
    guest_cmd,
    parse_report,
    pattern_digest,
    serve_loopback,
)
from tests.helpers.wait import wait_until

REAL = shutil.which("slirp4netns")
needs_real = pytest.mark.skipif(REAL is None, reason="slirp4netns is not installed")


def run_to_exit_fd(cmd: list[str], args: list[str], timeout: float = 15) -> tuple[int, str, str]:
    """Start `cmd -r R -e E args` as the test user, wait for ready, close E; rc/stdout/stderr."""
    rr, rw = os.pipe()
    er, ew = os.pipe()
    proc = subprocess.Popen(
        [*AS_USER, *cmd, "-r", str(rw), "-e", str(er), *args],
        pass_fds=(rw, er),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=user_env(),
    )
    os.close(rw)
    os.close(er)
    try:
        r, _, _ = select.select([rr], [], [], timeout)
        ready = os.read(rr, 1) if r else b""
        os.close(ew)
        out, err = proc.communicate(timeout=timeout)
        assert ready == b"1", f"{cmd[0]} never became ready: {out.decode()} {err.decode()}"
        return proc.returncode, out.decode(), err.decode()
    finally:
        os.close(rr)
        with contextlib.suppress(OSError):
            os.close(ew)
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)


def run_bad(cmd: list[str], args: list[str]) -> tuple[int, str, str]:
    r = subprocess.run(
        [*AS_USER, *cmd, *args], capture_output=True, timeout=30, env=user_env(),
        stdin=subprocess.DEVNULL,
    )
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def banner(stdout: str) -> list[str]:
    # slirp4netns 1.2 also prints "WARNING: Support for IPv6 is experimental"
    # (twice: once per process); IPv6 is not experimental in slirpy.
    return [ln for ln in stdout.splitlines() if "IPv6 is experimental" not in ln]


# ---------------------------------------------------------------- parity


@needs_real
@pytest.mark.parametrize(
    "options",
    [
        ["-c"],
        ["-c", "--mtu=65520", "--cidr=10.0.135.128/25", "--disable-host-loopback", "API"],
        ["--enable-ipv6", "--mtu", "1500", "--disable-dns", "API"],
    ],
    ids=["default", "cidr-api", "ipv6-no-c"],
)
def test_startup_lines_and_exit_like_slirp4netns(
    container: Container, shared_dir, options: list[str]
) -> None:
    os.chown(shared_dir, USER_UID, -1)  # the API sockets are made there
    results = {}
    for name, cmd in (("slirp4netns", [str(REAL)]), ("slirpy", slirp4netns_cmd())):
        sock = shared_dir / f"{name}.sock"
        args = [f"--api-socket={sock}" if o == "API" else o for o in options]
        if args[0] != "-c":
            # Without -c the TAP must exist (RootlessKit's way): make it.
            container.run("ip", "tuntap", "add", "tap0", "mode", "tap", check=False)
        rc, out, err = run_to_exit_fd(cmd, [*args, str(container.pid), "tap0"])
        results[name] = (rc, banner(out.replace(str(sock), "SOCK")), sock.exists())
        # Both say the same two tap fd lines, on stderr.
        assert re.search(r"^sent tapfd=\d+ for tap0$", err, re.M), err
        assert re.search(r"^received tapfd=\d+$", err, re.M), err
    assert results["slirpy"] == results["slirp4netns"]
    rc, lines, sock_left = results["slirpy"]
    assert rc == 0 and not sock_left  # exit fd closed: exit 0, API socket removed
    assert lines[0] == "Starting slirp" and lines[1].startswith("* MTU:")


@needs_real
@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["-v"],
        ["--no-such-option", "1"],
        [],
        ["--mtu=67", "1"],
        ["--mtu", "65522", "1"],
        ["--cidr=10.0.2.0/26", "1"],
        ["--netns-type=foo", "1"],
        ["--macaddress=02:42:ac:11:00:02", "1"],
        ["999999999", "tap0"],
    ],
)
def test_exit_codes_like_slirp4netns(args: list[str]) -> None:
    real = run_bad([str(REAL)], args)
    ours = run_bad(slirp4netns_cmd(), args)
    assert ours[0] == real[0], (real, ours)
    if ours[0] != 0:
        assert len(ours[2].strip().splitlines()) == 1, ours[2]
        assert "Traceback" not in ours[2] and ours[1] == ""


def test_bess_target_type_refused_one_line() -> None:
    rc, out, err = run_bad(slirp4netns_cmd(), ["--target-type=bess", "1234"])
    assert (rc, out) == (1, "")
    assert err.strip().splitlines() == [
        "slirpy-slirp4netns: --target-type=bess is not supported by slirpy"
    ]


@needs_real
def test_help_lists_every_slirp4netns_option() -> None:
    real = subprocess.run([str(REAL), "--help"], capture_output=True, text=True, check=True)
    ours = subprocess.run(
        [*slirp4netns_cmd(), "--help"], capture_output=True, text=True, env=user_env()
    )
    assert ours.returncode == 0 and ours.stderr == ""
    real_opts = set(re.findall(r"(?m)^(-\w, )?(--[a-z0-9-]+)", real.stdout))
    ours_text = ours.stdout
    for short, long in real_opts:
        assert long in ours_text, long
        if short:
            assert re.search(rf"(?m)^{short}{long}\b", ours_text), short + long
    # Same shape: usage line first, then one line per option.
    def usage(text: str) -> str:
        return re.sub(r"^Usage: \S+", "Usage: X", text.splitlines()[0])

    assert usage(real.stdout) == usage(ours_text)
    # And every long option it lists is accepted by the parser (not "unrecognized").
    for _short, long in real_opts:
        if long in ("--help", "--version"):
            continue
        _rc, _out, err = run_bad(slirp4netns_cmd(), [long] if long in _FLAGS else [long, "x"])
        assert "unrecognized option" not in err, (long, err)


_FLAGS = {
    "--configure", "--enable-ipv6", "--disable-host-loopback", "--enable-sandbox",
    "--enable-seccomp", "--disable-dns",
}


@needs_real
def test_version_shape_like_slirp4netns() -> None:
    real = subprocess.run([str(REAL), "--version"], capture_output=True, text=True).stdout
    ours = subprocess.run(
        [*slirp4netns_cmd(), "--version"], capture_output=True, text=True, env=user_env()
    ).stdout
    first = r"^\S+ version \d+\.\d+\.\d+\S*$"
    assert re.match(first, real.splitlines()[0]) and re.match(first, ours.splitlines()[0])
    for key in ("commit: ", "libslirp: ", "SLIRP_CONFIG_VERSION_MAX: 4"):
        assert any(ln.startswith(key) for ln in real.splitlines())
        assert any(ln.startswith(key) for ln in ours.splitlines()), key


def test_stale_api_socket_is_replaced(container: Container, slirpy_factory, shared_dir) -> None:
    """A socket file left by a killed run (slirp4netns leaves one on SIGKILL) is removed."""
    os.chown(shared_dir, USER_UID, -1)
    sock = shared_dir / "api.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))  # bound, never listened, closed: a dead socket file
    os.chown(sock, USER_UID, -1)
    s2 = slirpy_factory(["-c", f"--api-socket={sock}", str(container.pid), "tap0"])
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(5)
        c.connect(str(sock))
        c.sendall(b'{"execute":"list_hostfwd"}\n')
        c.shutdown(socket.SHUT_WR)
        assert b'"entries":[]' in c.recv(4096)
    assert s2.stop() == 0  # SIGTERM: orderly, exit 0 ...
    assert not sock.exists()  # ... and the socket file is gone


def test_api_socket_path_is_a_regular_file_one_line(container: Container, shared_dir) -> None:
    """Not a socket: slirpy must not delete the user's file; one line, exit 1."""
    path = shared_dir / "notasocket"
    path.write_text("keep me\n")
    rc, _out, err = run_bad(
        slirp4netns_cmd(), ["-c", f"--api-socket={path}", str(container.pid), "tap0"]
    )
    errors = [ln for ln in err.splitlines() if "tapfd=" not in ln]
    assert rc == 1 and len(errors) == 1, err
    assert errors[0].startswith("slirpy-slirp4netns: ") and str(path) in errors[0]
    assert path.read_text() == "keep me\n"


# ---------------------------------------------------------------- behaviour


def test_exit_fd_data_is_ignored_hangup_exits_zero(container: Container, slirpy_factory) -> None:
    er, ew = os.pipe()
    try:
        s = slirpy_factory(["-c", "-e", str(er), str(container.pid), "tap0"], pass_fds=(er,))
    finally:
        os.close(er)
    try:
        os.write(ew, b"data is not a request to exit\n")
        wait_until(lambda: pipe_bytes(ew) == 0, 5, what="slirpy read the exit fd's data")
        assert s.proc.poll() is None
        r = container.run("busybox", "ping", "-c", "1", "-W", "5", "10.0.2.2")
        assert "1 packets received" in r.stdout.decode()
    finally:
        os.close(ew)
    assert s.proc.wait(timeout=10) == 0


def test_macaddress_is_the_guest_mac(container: Container, slirpy_factory) -> None:
    slirpy_factory(["-c", "--macaddress=02:42:ac:11:00:02", str(container.pid), "tap0"])
    link = container.run("ip", "-o", "link", "show", "tap0").stdout.decode()
    assert "link/ether 02:42:ac:11:00:02 " in link
    # And the gateway talks to that MAC: ping gets answered.
    r = container.run("busybox", "ping", "-c", "1", "-W", "5", "10.0.2.2")
    assert "1 packets received" in r.stdout.decode()


def test_userns_path_with_netns_path(slirpy_factory) -> None:
    with make_container() as c:
        slirpy_factory([
            "-c", "--netns-type=path", f"--userns-path=/proc/{c.pid}/ns/user",
            f"/proc/{c.pid}/ns/net", "tap0",
        ])
        r = c.run("busybox", "ping", "-c", "1", "-W", "5", "10.0.2.3")
        assert "1 packets received" in r.stdout.decode()


def test_no_host_loopback_alias_refuses_gateway(container: Container, slirpy_factory) -> None:
    srv = serve_loopback("serve-tcp")
    try:
        s = slirpy_factory(["-c", "--no-host-loopback", str(container.pid), "tap0"])
        r = container.run(*guest_cmd("connect", "10.0.2.2", str(srv.port)), check=False)
        rep = parse_report(r.stdout)
    finally:
        srv.stop()
    assert rep["result"] == "ENETUNREACH", rep
    s.stop()
    _out, err = s.output()
    assert "--no-host-loopback is deprecated, use --disable-host-loopback" in err


def _free_subnet() -> ipaddress.IPv4Network:
    used = [
        ipaddress.IPv4Interface(a).network
        for a in re.findall(
            r"inet (\S+)", subprocess.run(["ip", "-4", "addr"], capture_output=True,
                                          text=True).stdout
        )
    ]
    free = [n for n in TESTNET.subnets(new_prefix=29) if not any(n.overlaps(u) for u in used)]
    return random.choice(free)


def test_outbound_addr_interface_name(
    container: Container, slirpy_factory, testhost: TestHost
) -> None:
    """--outbound-addr=IFNAME: outbound sockets take that interface's address."""
    # An interface of its own with one address, not on the route to the test
    # host: only a bind to it makes it the source. (No dummy module here: a
    # veth pair with both ends in the root namespace does the same.)
    dev = f"sdm{os.getpid() % 100000}"
    addr = str(_free_subnet()[1])
    subprocess.run(["ip", "link", "add", dev, "type", "veth", "peer", "name", dev + "p"],
                   check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{addr}/32", "dev", dev], check=True)
        subprocess.run(["ip", "link", "set", dev + "p", "up"], check=True)
        subprocess.run(["ip", "link", "set", dev, "up"], check=True)
        testhost.run("ip", "route", "add", f"{addr}/32", "via", testhost.root_addr)
        slirpy_factory(["-c", f"--outbound-addr={dev}", str(container.pid), "tap0"])
        srv = testhost.serve("serve-tcp")
        r = container.run(
            *guest_cmd("send", testhost.addr, str(srv.port), "--size", "100000"), timeout=60
        )
        rep = parse_report(r.stdout)
    finally:
        subprocess.run(["ip", "link", "del", dev], check=False)
    assert rep["server"]["peer"][0] == addr  # type: ignore[index]
    assert rep["server"]["sha256"] == pattern_digest(1, 100000)  # type: ignore[index]


_SERVE6 = """
import socket, sys
s = socket.socket(socket.AF_INET6)
s.bind((sys.argv[1], 0)); s.listen(4); s.settimeout(30)
print(s.getsockname()[1], flush=True)
c, peer = s.accept()
c.settimeout(10)
data = c.recv(100)
c.sendall(b"v6 " + data)
c.close()
print(peer[0], flush=True)
"""


@pytest.mark.parametrize("form", ["address", "ifname"])
def test_outbound_addr6(container: Container, slirpy_factory, testhost: TestHost, form) -> None:
    """--outbound-addr6: the test host sees the chosen IPv6 address as the source.

    "address": the secondary address of the veth (never the kernel's choice);
    "ifname": an interface of its own whose one global address is not on the
    route to the test host (a veth pair with both ends in the root namespace).
    """
    tag = random.randrange(1, 0xFFFF)
    net = f"2001:db8:5117:{tag:x}"
    host, root1, root2 = testhost.add_ipv6(net)
    dev = f"sdm6{os.getpid() % 100000}"
    if form == "address":
        option, expected = f"--outbound-addr6={root2}", root2
    else:
        expected = f"2001:db8:5118:{tag:x}::5"
        subprocess.run(["ip", "link", "add", dev, "type", "veth", "peer", "name", dev + "p"],
                       check=True)
        subprocess.run(["ip", "addr", "add", f"{expected}/128", "dev", dev, "nodad"],
                       check=True)
        subprocess.run(["ip", "link", "set", dev + "p", "up"], check=True)
        subprocess.run(["ip", "link", "set", dev, "up"], check=True)
        testhost.run("ip", "-6", "route", "add", f"{expected}/128", "via", root1)
        option = f"--outbound-addr6={dev}"
    try:
        srv = subprocess.Popen(
            [*testhost.exec_prefix(), sys.executable, "-c", _SERVE6, host],
            stdout=subprocess.PIPE, text=True,
        )
        testhost.procs.append(srv)  # type: ignore[arg-type]
        assert srv.stdout is not None
        port = int(srv.stdout.readline())
        slirpy_factory(["-c", "-6", option, str(container.pid), "tap0"])
        out = ""
        deadline = time.monotonic() + 20
        while not out and time.monotonic() < deadline:  # SLAAC and DAD in the guest first
            r = container.sh(f"echo hello6 | busybox nc -w 5 {host} {port}", check=False)
            out = r.stdout.decode()
            if not out:
                time.sleep(0.5)
        assert out == "v6 hello6\n"
        assert srv.stdout.readline().strip() == expected
    finally:
        if form == "ifname":
            subprocess.run(["ip", "link", "del", dev], check=False)


def test_ipv6_prefix(container: Container, slirpy_factory) -> None:
    slirpy_factory(["-c", "-6", "--ipv6-prefix=fd42:1:2:3::/64", str(container.pid), "tap0"])
    out = ""
    for _ in range(50):
        out = container.run("ip", "-6", "addr", "show", "dev", "tap0", "scope", "global")\
            .stdout.decode()
        if "fd42:1:2:3:" in out and "tentative" not in out:
            break
        time.sleep(0.2)
    assert "inet6 fd42:1:2:3:" in out
    r = container.run("busybox", "ping", "-6", "-c", "1", "-W", "5", "fd42:1:2:3::2")
    assert "1 packets received" in r.stdout.decode()


def test_disable_offload_still_moves_data_exactly(container: Container, slirpy_factory) -> None:
    slirpy_factory(["-c", "--mtu=65520", "--disable-offload", str(container.pid), "tap0"])
    srv = serve_loopback("serve-tcp")
    try:
        size = 8 << 20
        r = container.run(*guest_cmd("send", "10.0.2.2", str(srv.port), "--size", str(size)),
                          timeout=120)
        rep = parse_report(r.stdout)
        r = container.run(*guest_cmd("recv", "10.0.2.2", str(srv.port), "--size", str(size),
                                     "--seed", "6"), timeout=120)
        rep2 = parse_report(r.stdout)
    finally:
        srv.stop()
    assert rep["server"]["sha256"] == pattern_digest(1, size)  # type: ignore[index]
    assert rep2["bytes"] == size and rep2["sha256"] == pattern_digest(6, size)


def test_debug_logs_to_stderr(container: Container, slirpy_factory) -> None:
    quiet = slirpy_factory(
        ["-c", "--dns-upstream=127.0.0.1:5353", str(container.pid), "tap0"]
    )
    quiet.stop()
    _out, quiet_err = quiet.output()
    with make_container() as c2:
        loud = slirpy_factory(
            ["-c", "--debug", "--dns-upstream=127.0.0.1:5353", str(c2.pid), "tap0"]
        )
        # One DNS query makes the forwarder say what it does (127.0.0.1:5353
        # has no server: the answer does not matter, the log line does).
        c2.run("busybox", "nslookup", "-timeout=1", "example.test", "10.0.2.3", check=False,
               timeout=20)
        loud.stop()
        _out, loud_err = loud.output()
    assert "slirpy: " not in quiet_err.replace("slirpy-slirp4netns", "")
    assert re.search(r"(?m)^slirpy: slirpy\.[\w.]+: ", loud_err), loud_err


_SHORT_REPLY_CLIENT = """
import socket, sys
port, rounds = int(sys.argv[1]), int(sys.argv[2])
ok = 0
for i in range(rounds):
    s = socket.create_connection(("10.0.2.2", port), timeout=5)
    s.sendall(b"m" * 3000 + b"\\n")
    data = b""
    try:
        while chunk := s.recv(4096):
            data += chunk
    except TimeoutError:
        print(f"round {i}: no EOF within 5 s after {data!r}", flush=True)
        break
    finally:
        s.close()
    if data != b"pong\\n":
        print(f"round {i}: got {data!r}", flush=True)
        break
    ok += 1
print(f"ok {ok}", flush=True)
"""


@pytest.mark.parametrize("mtu", ["1500", "65520"])
def test_mtu_short_reply_and_close_reach_the_guest(
    container: Container, slirpy_factory, mtu: str
) -> None:
    """The host answers a multi-segment request with a few bytes and closes at once.

    The reply and the FIN usually reach slirpy in one socket event: the guest
    must get both (a stalled FIN leaves the guest's reader hanging; Podman's
    clients tests at MTU 1500 first showed that).
    """
    rounds = 20
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(10)

    def serve() -> None:
        for _ in range(rounds):
            try:
                conn, _peer = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                data = b""
                with contextlib.suppress(OSError):
                    while b"\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    conn.sendall(b"pong\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        slirpy_factory(["-c", f"--mtu={mtu}", str(container.pid), "tap0"])
        r = container.run(
            sys.executable, "-c", _SHORT_REPLY_CLIENT, str(listener.getsockname()[1]),
            str(rounds), timeout=150, check=False,
        )
    finally:
        listener.close()
        t.join(timeout=10)
    assert r.stdout.decode().strip().splitlines()[-1:] == [f"ok {rounds}"], r.stdout.decode()
