"""Start-up cost guards (issue 7: time to ready, idle RSS), asserted without timing.

Each check runs in a fresh interpreter: what a test process imported or
allocated before must not hide what slirpy's start path does.
"""

from __future__ import annotations

import ctypes
import socket
import subprocess
import sys
import textwrap
from ipaddress import IPv4Address

import pytest

from slirpy.host import ifconfig


def run_py(code: str) -> str:
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_start_path_imports_only_what_it_needs() -> None:
    """slirpy-slirp4netns's parent (parse, daemon, preload) and the helper child's
    modules: no argparse, secrets/hashlib, ctypes, json, DHCP, API, `slirpy run`,
    namespace-creation or library code."""
    out = run_py("""
        import sys
        from slirpy.frontends.slirp4netns import parse_slirp4netns_args
        opts = parse_slirp4netns_args(["--configure", "--mtu=65520", "1", "tap0"])
        from slirpy.daemon import Daemon
        Daemon(opts).preload()
        import slirpy.host.ifconfig  # what the helper child adds
        print(*sorted(sys.modules))
    """)
    mods = set(out.split())
    assert {"slirpy.daemon", "slirpy.services.dns", "slirpy.engine", "slirpy.host.netns",
            "uvloop"} <= mods
    never = {"argparse", "secrets", "hmac", "hashlib", "_hashlib", "ctypes",
             "slirpy.services.dhcp", "slirpy.control.api", "slirpy.control.portfwd",
             "slirpy.frontends.run", "slirpy.host.spawn", "slirpy.frontends.library", "json"}
    assert mods & never == set()


def test_flow_pool_is_not_resident_until_used() -> None:
    """Creating an engine does not touch its flow pool (~1.4 MiB at the default
    caps): the pages become resident only as flows open."""
    out = run_py("""
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # Room for the default caps, or the engine scales them down (raising
        # the hard limit needs CAP_SYS_RESOURCE: root has it).
        try:
            hard = max(hard, 16384)
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        from slirpy.config import NetworkModel
        from slirpy.engine import Engine
        def rss_kb():
            with open("/proc/self/status") as f:
                return int(f.read().split("VmRSS:")[1].split()[0])
        net = NetworkModel()
        before = rss_kb()
        e = Engine(net, vnet_hdr=False, offload=False)
        print(rss_kb() - before, hard)
        e.close()
    """)
    delta_kb, hard = map(int, out.split())
    # 4096 TCP + 4096 UDP + 256 ICMP + 1024 listener flows of 160 bytes each
    # would be 1480 KiB if touched; the hash table (128 KiB) is.
    if hard < 9500:  # never a silent pass: say why nothing was checked
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 9500: the default caps do not apply")
    assert delta_kb < 800, delta_kb


def test_rtentry_is_packed_like_struct_rtentry() -> None:
    """The default route's ioctl argument, packed with struct, has the layout of
    <net/route.h>'s struct rtentry (checked against a ctypes definition)."""

    class SockaddrIn(ctypes.Structure):
        _fields_ = (("family", ctypes.c_ushort), ("port", ctypes.c_ushort),
                    ("addr", ctypes.c_ubyte * 4), ("zero", ctypes.c_ubyte * 8))

    class RtEntry(ctypes.Structure):
        _fields_ = (
            ("rt_pad1", ctypes.c_ulong), ("rt_dst", SockaddrIn), ("rt_gateway", SockaddrIn),
            ("rt_genmask", SockaddrIn), ("rt_flags", ctypes.c_ushort),
            ("rt_pad2", ctypes.c_short), ("rt_pad3", ctypes.c_ulong),
            ("rt_pad4", ctypes.c_void_p), ("rt_metric", ctypes.c_short),
            ("rt_dev", ctypes.c_char_p), ("rt_mtu", ctypes.c_ulong),
            ("rt_window", ctypes.c_ulong), ("rt_irtt", ctypes.c_ushort),
        )

    gw = IPv4Address("192.0.2.1")
    rt = RtEntry()
    for sa in (rt.rt_dst, rt.rt_genmask, rt.rt_gateway):
        sa.family = socket.AF_INET
    rt.rt_gateway.addr[:] = list(gw.packed)
    rt.rt_flags = ifconfig.RTF_UP | ifconfig.RTF_GATEWAY
    assert ifconfig._rtentry_default_via(gw) == bytes(rt)
