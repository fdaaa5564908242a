"""pasta's --config-net, host side: template reading, namespace configuration,
following host changes and the port scan, against real kernels' namespaces.

A small fake host (a network namespace with a dummy `eth0`: 198.51.100.2/24
and 2001:db8:1::2/64, default routes via .1 and ::1, 192.0.2.0/24 via .1) is
read with slirpy.host.template from inside it; the "container" is another
namespace whose TAP the namespace helper opens (slirpy.host.netns with
`netlink`), configured through the netlink socket the helper made there, and
checked with `ip -j`. The machine's own namespace is never changed: the test
process enters the fake host only to create sockets there (they keep that
namespace) and always returns. Nothing is sent anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface

import pytest

from slirpy.engine import setns
from slirpy.host import netconf
from slirpy.host.hostwatch import HostWatch
from slirpy.host.netns import TapHandle, TapRequest, open_tap, target_for_path
from slirpy.host.portscan import listening_ports
from slirpy.host.template import HostTemplate, read_host_template
from slirpy.options import SharedAddressing
from tests.helpers.testbed import AS_USER, Container, user_env
from tests.helpers.wait import wait_until

CLONE_NEWNET = 0x40000000
NS_MAC = bytes.fromhex("02aabbccddee")
_names = itertools.count()


def _ip(*args: str) -> str:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"ip {' '.join(args)}: {r.stderr}"
    return r.stdout


def _ip_json(ns: str, *args: str) -> list[dict[str, object]]:
    return json.loads(_ip("-n", ns, "-j", *args) or "[]")


@contextlib.contextmanager
def _netns() -> Iterator[str]:
    name = f"shnc-{os.getpid()}-{next(_names)}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


@contextlib.contextmanager
def _inside(ns: str) -> Iterator[None]:
    """This thread in `ns` (for sockets to be made there), back home on exit."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    there = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(there, CLONE_NEWNET)
        try:
            yield
        finally:
            setns(home, CLONE_NEWNET)
    finally:
        os.close(there)
        os.close(home)


@contextlib.contextmanager
def _host(*, routes: bool = True) -> Iterator[str]:
    """The fake host: `eth0` a veth whose peer is in an "upstream" namespace."""
    with _netns() as host, _netns() as upstream:
        _ip("-n", host, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
            "netns", upstream)
        _ip("-n", upstream, "link", "set", "eth0", "up")
        _ip("-n", host, "addr", "add", "198.51.100.2/24", "dev", "eth0")
        _ip("-n", host, "addr", "add", "2001:db8:1::2/64", "dev", "eth0", "nodad")
        _ip("-n", host, "link", "set", "eth0", "up")
        if routes:
            _ip("-n", host, "route", "add", "default", "via", "198.51.100.1", "dev", "eth0")
            _ip("-n", host, "route", "add", "192.0.2.0/24", "via", "198.51.100.1", "dev", "eth0")
            _ip("-n", host, "-6", "route", "add", "default", "via", "2001:db8:1::1", "dev", "eth0")
        own, mine = os.stat("/proc/self/ns/net"), os.stat(f"/run/netns/{host}")
        assert (own.st_dev, own.st_ino) != (mine.st_dev, mine.st_ino)
        yield host


@pytest.fixture
def fake_host() -> Iterator[str]:
    with _host() as ns:
        yield ns


@pytest.fixture
def guest_ns() -> Iterator[str]:
    with _netns() as ns:
        yield ns


@contextlib.contextmanager
def _tap(ns: str, name: str) -> Iterator[tuple[TapHandle, socket.socket, socket.socket]]:
    req = TapRequest(tapname=name, vnet_hdr=True, offload=True, configure=False, mtu=1500,
                     netlink=True)
    handle = open_tap(target_for_path(f"/run/netns/{ns}", None), req)
    assert handle.nl_fd is not None and handle.diag_fd is not None
    nl = socket.socket(fileno=handle.nl_fd)
    diag = socket.socket(fileno=handle.diag_fd)
    try:
        yield handle, nl, diag
    finally:
        nl.close()
        diag.close()
        os.close(handle.fd)


def _template(host_ns: str, **kw: object) -> HostTemplate:
    with _inside(host_ns):
        return read_host_template(SharedAddressing(**kw))  # type: ignore[arg-type]


def _addrs(ns: str, dev: str) -> dict[str, dict[str, object]]:
    info = _ip_json(ns, "addr", "show", "dev", dev)[0]
    return {f"{a['local']}/{a['prefixlen']}": a for a in info["addr_info"]}  # type: ignore[index]


def _routes(ns: str, family: str) -> set[tuple[str, str, str]]:
    out = set()
    for r in _ip_json(ns, family, "route", "show"):
        if str(r["dst"]).startswith("fe80:"):
            continue
        out.add((str(r["dst"]), str(r.get("gateway", "")), str(r.get("dev", ""))))
    return out


def _configure(host_ns: str, guest: str, **kw: object) -> tuple[HostTemplate, Callable[[], None]]:
    """Read the template in `host_ns`, open the guest's TAP and configure it."""
    mtu = kw.pop("mtu", 65520)
    ns_mac = kw.pop("ns_mac", NS_MAC)
    template = _template(host_ns, **kw)
    stack = contextlib.ExitStack()
    _handle, nl, _diag = stack.enter_context(_tap(guest, template.ifname))
    done = netconf.configure_namespace(nl, template.ifname, template, mtu=mtu,  # type: ignore[arg-type]
                                       ns_mac=ns_mac, txqueuelen=10000)  # type: ignore[arg-type]
    if ns_mac is not None:
        assert done.mac == ns_mac
    assert done.ipv6 == (template.v6 is not None)
    return template, stack.close


def test_config_net_copies_the_host(fake_host: str, guest_ns: str) -> None:
    template, close = _configure(fake_host, guest_ns)
    try:
        assert template.ifname == "eth0"
        assert template.address4 == IPv4Address("198.51.100.2")
        assert template.address6 == IPv6Address("2001:db8:1::2")
        links = {str(x["ifname"]): x for x in _ip_json(guest_ns, "link", "show")}
        assert "UP" in links["lo"]["flags"]  # type: ignore[operator]
        eth0 = links["eth0"]
        assert eth0["mtu"] == 65520 and eth0["address"] == "02:aa:bb:cc:dd:ee"
        assert "UP" in eth0["flags"] and "NOARP" not in eth0["flags"]  # type: ignore[operator]
        assert eth0["txqlen"] == 10000
        addrs = _addrs(guest_ns, "eth0")
        assert {"198.51.100.2/24", "2001:db8:1::2/64"} <= set(addrs)
        # No DAD: nothing is tentative right after configuration.
        for a in addrs.values():
            assert not a.get("tentative"), a
        # One link-local address, ours: the kernel makes none of its own,
        # not even once the link's operational state is up.
        wait_until(lambda: _ip_json(guest_ns, "link", "show", "dev", "eth0")[0]["operstate"]
                   in ("UP", "UNKNOWN"), what="eth0's operational state is up")
        assert len([k for k in _addrs(guest_ns, "eth0") if k.startswith("fe80:")]) == 1
        assert _routes(guest_ns, "-4") == {("default", "198.51.100.1", "eth0"),
                                           ("192.0.2.0/24", "198.51.100.1", "eth0"),
                                           ("198.51.100.0/24", "", "eth0")}
        assert _routes(guest_ns, "-6") == {("default", "2001:db8:1::1", "eth0"),
                                           ("2001:db8:1::/64", "", "eth0")}
    finally:
        close()


def test_offline_host_gives_local_mode(guest_ns: str) -> None:
    with _netns() as offline:
        template, close = _configure(offline, guest_ns, ns_mac=None)
        try:
            assert template.ifname == "tap0"
            assert template.v4 is not None and template.v4.local_mode
            assert template.address4 == IPv4Address("169.254.2.1") and template.address6 is None
            assert "169.254.2.1/16" in _addrs(guest_ns, "tap0")
            assert _routes(guest_ns, "-4") == {("default", "169.254.2.2", "tap0"),
                                               ("169.254.0.0/16", "", "tap0")}
            assert ("default", "fe80::1", "tap0") in _routes(guest_ns, "-6")
            assert not [a for a in _addrs(guest_ns, "tap0") if ":" in a and
                        not a.startswith("fe80:")]
        finally:
            close()


def test_no_default_route_one_routed_interface(guest_ns: str) -> None:
    with _host(routes=False) as host:
        _ip("-n", host, "route", "add", "192.0.2.0/24", "via", "198.51.100.1")
        template, close = _configure(host, guest_ns)
        try:
            assert template.v4 is not None and not template.v4.local_mode
            assert template.ifname == "eth0"
            assert ("192.0.2.0/24", "198.51.100.1", "eth0") in _routes(guest_ns, "-4")
        finally:
            close()


def test_overrides(fake_host: str, guest_ns: str) -> None:
    # -a/-n/-g/-I: the gateways are not on the given prefixes (RTNH_F_ONLINK).
    template, close = _configure(
        fake_host, guest_ns, mtu=1280, address4=IPv4Address("203.0.113.5"), prefixlen4=24,
        gateway4=IPv4Address("198.51.100.1"), address6=IPv6Address("2001:db8:9::5"),
        gateway6=IPv6Address("2001:db8:1::1"), ifname="myname")
    try:
        assert template.ifname == "myname"
        assert _ip_json(guest_ns, "link", "show", "dev", "myname")[0]["mtu"] == 1280
        addrs = _addrs(guest_ns, "myname")
        assert {"203.0.113.5/24", "2001:db8:9::5/64"} <= set(addrs)
        assert "198.51.100.2/24" not in addrs
        v4 = _ip_json(guest_ns, "-4", "route", "show", "default")
        assert v4[0]["gateway"] == "198.51.100.1" and "onlink" in v4[0]["flags"]  # type: ignore[operator]
        assert ("192.0.2.0/24", "198.51.100.1", "myname") not in _routes(guest_ns, "-4")
        v6 = _ip_json(guest_ns, "-6", "route", "show", "default")
        assert v6[0]["gateway"] == "2001:db8:1::1"
    finally:
        close()


@pytest.mark.parametrize("family", ["-4", "-6"])
def test_one_family(fake_host: str, guest_ns: str, family: str) -> None:
    kw = {"ipv6": False} if family == "-4" else {"ipv4": False}
    template, close = _configure(fake_host, guest_ns, **kw)
    try:
        addrs = set(_addrs(guest_ns, "eth0"))
        if family == "-4":
            assert template.v6 is None and "198.51.100.2/24" in addrs
            assert not [a for a in addrs if ":" in a and not a.startswith("fe80:")]
            assert _routes(guest_ns, "-6") == set()
        else:
            assert template.v4 is None and "2001:db8:1::2/64" in addrs
            assert not [a for a in addrs if "." in a]
            assert _routes(guest_ns, "-4") == set()
    finally:
        close()


def test_guest_without_ipv6_still_gets_ipv4(fake_host: str, guest_ns: str) -> None:
    """disable_ipv6 in the guest's namespace: IPv4 configured, IPv6 reported off."""
    for scope in ("all", "default"):
        subprocess.run(["nsenter", f"--net=/run/netns/{guest_ns}", "sysctl", "-q", "-w",
                        f"net.ipv6.conf.{scope}.disable_ipv6=1"], check=True, timeout=30)
    template = _template(fake_host)
    with _tap(guest_ns, template.ifname) as (_h, nl, _d):
        done = netconf.configure_namespace(nl, template.ifname, template, mtu=65520,
                                           ns_mac=None, txqueuelen=0)
        assert not done.ipv6
        assert "198.51.100.2/24" in _addrs(guest_ns, "eth0")
        assert ("default", "198.51.100.1", "eth0") in _routes(guest_ns, "-4")


def test_unusable_template_interface(fake_host: str) -> None:
    from slirpy.config import ConfigError

    with pytest.raises(ConfigError, match="External interface not usable"):
        _template(fake_host, template_if4="nosuch0")


def test_configure_errors_carry_the_kernel_errno(guest_ns: str) -> None:
    with _netns() as offline, _tap(guest_ns, "tap0") as (_h, nl, _d):
        template = _template(offline)
        with pytest.raises(OSError) as info:
            netconf.configure_namespace(nl, "nosuch0", template, mtu=0, ns_mac=None,
                                        txqueuelen=0)
        assert info.value.errno == 19  # ENODEV


async def _until(cond: Callable[[], object], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"not true within {timeout} s: {what}")
        await asyncio.sleep(0.02)


def test_hostwatch_moves_the_copy(fake_host: str, guest_ns: str) -> None:
    shared = SharedAddressing()
    template = _template(fake_host)
    seen: list[HostTemplate] = []

    async def scenario(nl: socket.socket) -> None:
        loop = asyncio.get_running_loop()

        def changed(old: HostTemplate, new: HostTemplate) -> None:
            netconf.apply_change(nl, template.ifname, old, new)
            seen.append(new)

        with _inside(fake_host):
            watch = HostWatch(shared, template, changed, loop)
        loop.add_reader(watch.fileno(), watch.on_readable)
        try:
            _ip("-n", fake_host, "addr", "add", "203.0.113.2/24", "dev", "eth0")
            _ip("-n", fake_host, "route", "replace", "default", "via", "203.0.113.1")
            _ip("-n", fake_host, "addr", "del", "198.51.100.2/24", "dev", "eth0")
            _ip("-n", fake_host, "-6", "addr", "add", "2001:db8:7::2/64", "dev", "eth0", "nodad")

            def moved() -> bool:
                if not seen:
                    return False
                last = seen[-1]
                return (last.v4 is not None and last.v6 is not None
                        and last.v4.addrs == (IPv4Interface("203.0.113.2/24"),)
                        and IPv6Interface("2001:db8:7::2/64") in last.v6.addrs)

            await _until(moved, 10, "the template follows the host")
            assert seen[-1].address4 == IPv4Address("203.0.113.2")
            assert watch.current == seen[-1]
        finally:
            loop.remove_reader(watch.fileno())
            watch.close()

    with _tap(guest_ns, template.ifname) as (_h, nl, _d):
        netconf.configure_namespace(nl, template.ifname, template, mtu=65520, ns_mac=None,
                                    txqueuelen=0)
        asyncio.run(scenario(nl))
        addrs = set(_addrs(guest_ns, "eth0"))
        assert "203.0.113.2/24" in addrs and "198.51.100.2/24" not in addrs
        assert {"2001:db8:1::2/64", "2001:db8:7::2/64"} <= addrs
        routes = _routes(guest_ns, "-4")
        assert ("default", "203.0.113.1", "eth0") in routes
        assert ("default", "198.51.100.1", "eth0") not in routes


def test_hostwatch_ignores_unrelated_changes(fake_host: str) -> None:
    """A change that leaves the template as it was calls nothing back."""
    template = _template(fake_host)
    calls: list[object] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        with _inside(fake_host):
            watch = HostWatch(SharedAddressing(), template, lambda o, n: calls.append(n), loop,
                              debounce=0.01)
        rereads = 0
        original = watch._reread  # counting the re-reads

        def counting() -> None:
            nonlocal rereads
            rereads += 1
            original()

        watch._reread = counting  # type: ignore[method-assign]
        loop.add_reader(watch.fileno(), watch.on_readable)
        try:
            _ip("-n", fake_host, "link", "add", "other0", "type", "veth", "peer", "other1")
            await _until(lambda: rereads > 0, 10, "a re-read after the notification")
        finally:
            loop.remove_reader(watch.fileno())
            watch.close()

    asyncio.run(scenario())
    assert calls == []


def test_portscan_sees_the_namespace_listeners(guest_ns: str) -> None:
    with _tap(guest_ns, "tap0") as (_h, _nl, diag), contextlib.ExitStack() as stack:
        with _inside(guest_ns):
            t4 = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            t4.bind(("127.0.0.1", 0))
            t4.listen()
            t6 = stack.enter_context(socket.socket(socket.AF_INET6, socket.SOCK_STREAM))
            t6.bind(("::", 0))
            t6.listen()
            u4 = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            u4.bind(("0.0.0.0", 0))
            connected = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            connected.connect(("127.0.0.1", 9))
        # A listener of the test's own namespace is not the guest's.
        own = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        own.bind(("127.0.0.1", 0))
        own.listen()
        tcp = listening_ports(diag, "tcp")
        assert (t4.getsockname()[1], "127.0.0.1") in tcp
        assert (t6.getsockname()[1], "::") in tcp
        assert (own.getsockname()[1], "127.0.0.1") not in tcp
        udp = listening_ports(diag, "udp")
        assert (u4.getsockname()[1], "0.0.0.0") in udp
        assert all(port != connected.getsockname()[1] for port, _ in udp)
        port = t4.getsockname()[1]
        t4.close()
        wait_until(lambda: (port, "127.0.0.1") not in listening_ports(diag, "tcp"),
                   what="a closed listener leaves the scan")


_ROOTLESS = textwrap.dedent("""
    import json, socket, sys
    from slirpy.host import netconf, rtnl
    from slirpy.host.netns import TapRequest, open_tap, target_for_pid
    from slirpy.host.template import HostState, build_template
    from slirpy.options import SharedAddressing

    req = TapRequest(tapname="tap0", vnet_hdr=True, offload=True, configure=False, mtu=1500,
                     netlink=True)
    handle = open_tap(target_for_pid(int(sys.argv[1])), req)
    nl = socket.socket(fileno=handle.nl_fd)
    template = build_template(HostState([], [], []), SharedAddressing())
    netconf.configure_namespace(nl, "tap0", template, mtu=65520, ns_mac=None, txqueuelen=1000)
    addrs = [str(a.interface) for a in rtnl.dump_addrs(nl)]
    routes = [(str(r.dst), str(r.gateway)) for r in rtnl.dump_routes(nl)
              if r.table == rtnl.RT_TABLE_MAIN]
    print(json.dumps({"addrs": addrs, "routes": routes}))
""")


@pytest.mark.parametrize("where", ["owner", "in_userns"])
def test_rootless_daemon_configures_through_the_socket(container: Container, where: str) -> None:
    """Unprivileged, from the host's network namespace: as the owner of the
    container's user namespace (slirp4netns-style), or inside that user
    namespace as Podman runs pasta."""
    enter = ["nsenter", "-t", str(container.pid), "-U", "--preserve-credentials"]
    prefix = [*AS_USER, *(enter if where == "in_userns" else [])]
    r = subprocess.run([*prefix, sys.executable, "-c", _ROOTLESS, str(container.pid)],
                       capture_output=True, text=True, timeout=60, env=user_env())
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert "169.254.2.1/16" in got["addrs"]
    assert ["0.0.0.0/0", "169.254.2.2"] in got["routes"]
    assert ["::/0", "fe80::1"] in got["routes"]
