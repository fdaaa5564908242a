"""Startup, readiness, signals and orderly shutdown: the order of things.

This module is the only place that knows in which order slirpy starts and
stops: open the TAP in the namespace (before any thread or event loop), start
the DNS forwarder, create the engine, start the API socket, then announce
readiness; on SIGTERM/SIGINT, exit-fd hang-up or namespace death, undo it all
in reverse (an AsyncExitStack). It wires the engine's slow-path events to the
sans-IO cores (DHCP). It must not parse arguments (cli.py) nor speak any
protocol itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, TextIO

from slirpy.config import ConfigError, NetworkModel, Slirp4netnsConfig
from slirpy.netns import (
    NamespaceError,
    NamespaceTarget,
    TapHandle,
    TapRequest,
    start_open_tap,
    target_for_path,
    target_for_pid,
)

if TYPE_CHECKING:
    from slirpy.dhcp import DhcpServer

POLL_BUDGET = 512
SIOCGIFADDR = 0x8915


def _say(text: str, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    stream.write(text + "\n")
    stream.flush()


def _warn(text: str) -> None:
    sys.stderr.write(f"slirpy: {text}\n")
    sys.stderr.flush()


def _ifaddr4(name: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            res = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            raise ConfigError(f"interface {name} has no IPv4 address (--outbound-addr)") from None
    return socket.inet_ntoa(res[20:24])


def _ifaddr6(name: str) -> str:
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                hexaddr, _idx, _plen, scope, _flags, ifname = line.split()
                if ifname == name and scope == "00":
                    return str(ipaddress.IPv6Address(bytes.fromhex(hexaddr)))
    except OSError:
        pass
    raise ConfigError(f"interface {name} has no global IPv6 address (--outbound-addr6)")


def resolve_outbound(value: str | None, family: int) -> str | None:
    """An address literal as is, or an interface name resolved to its address."""
    if not value:
        return None
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        return _ifaddr4(value) if family == 4 else _ifaddr6(value)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    if os.environ.get("SLIRPY_LOOP") == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def print_banner(cfg: Slirp4netnsConfig) -> None:
    """The lines slirp4netns prints at start; Podman shows them on failure."""
    net = cfg.net
    _say("Starting slirp")
    _say(f"* MTU:             {net.mtu}")
    _say(f"* Network:         {net.cidr.network_address}")
    _say(f"* Netmask:         {net.netmask}")
    _say(f"* Gateway:         {net.gateway}")
    _say(f"* DNS:             {net.dns}")
    _say(f"* DHCP begin:      {net.dhcp_start}")
    _say(f"* DHCP end:        {net.dhcp_end}")
    _say(f"* Recommended IP:  {net.guest}")
    if cfg.api_socket:
        _say(f"* API Socket:      {cfg.api_socket}")
    if net.host_loopback:
        _say(
            f"WARNING: 127.0.0.1:* on the host is accessible as {net.gateway} "
            "(set --disable-host-loopback to prohibit connecting to 127.0.0.1:*)"
        )


class Daemon:
    """One running slirpy: engine, services and the fds that control its life."""

    def __init__(
        self,
        net: NetworkModel,
        tap: TapHandle,
        *,
        offload: bool = True,
        resolv_conf: str = "/etc/resolv.conf",
        dns_upstreams: tuple[tuple[str, int], ...] = (),
        outbound4: str | None = None,
        outbound6: str | None = None,
        api_socket: str | None = None,
        ready_fd: int | None = None,
        exit_fd: int | None = None,
        watch_pid: int | None = None,
        sandbox: bool = False,
        seccomp: bool = False,
        on_signal: Callable[[int], None] | None = None,
        handle_signals: bool = True,
        setup: Callable[[Daemon, AsyncExitStack], Awaitable[None]] | None = None,
        limits: tuple[tuple[str, int], ...] = (),
        on_flow: Callable[[object], None] | None = None,
        ns_target: NamespaceTarget | None = None,
        splice_helper: bool = False,
    ) -> None:
        self.net = net
        self.tap = tap
        self.offload = offload
        self.resolv_conf = resolv_conf
        self.dns_upstreams = dns_upstreams
        self.outbound4 = outbound4
        self.outbound6 = outbound6
        self.limits = limits  # (name, value) pairs of slirpy.engine.Limits fields
        self.api_socket = api_socket
        self.ready_fd = ready_fd
        self.exit_fd = exit_fd
        self.watch_pid = watch_pid
        self.sandbox = sandbox
        self.seccomp = seccomp
        # `slirpy run` forwards signals to its command instead of stopping;
        # the library (slirpy.Network) may run outside the main thread, where
        # signal handlers cannot be installed, and leaves signals alone.
        self.on_signal = on_signal
        self.handle_signals = handle_signals
        # Called once the engine and services run, before confinement and
        # the ready byte: `slirpy run` and the library add forwards there
        # and push their own clean-up (it runs before the engine closes).
        self.setup = setup
        # `slirpy run -v`: gets each flow open/close event (slirpy.engine.Event).
        # Only then does the engine make them (no cost otherwise).
        self.on_flow = on_flow
        # Where the namespace helper of spliced forwards goes (None: no
        # spliced forwards); it is forked on first use, or before
        # confinement when an API client might ask for one later.
        self.ns_target = ns_target
        # Confined (sandbox/seccomp), the helper must be forked before
        # confinement; only on request (--splice-helper): slirp4netns's
        # clients never ask for spliced forwards, and it is one more process.
        self.splice_helper = splice_helper
        self._ns_helper: int | None = None
        self._confined = False
        self._stack: AsyncExitStack | None = None
        self.engine = None
        # The engine fd's reader (Engine.reader): every poll goes through it.
        self._engine_ready: Callable[[], None] | None = None
        self.dhcp: DhcpServer | None = None
        self.dns = None
        self._stop: asyncio.Future[int] | None = None

    def _dhcp_server(self) -> DhcpServer:
        """The DHCP server, made on the first DHCP datagram (or stats request).

        Not at start: most guests never ask (Podman and `slirpy run` configure
        the TAP with -c, RootlessKit configures it itself), and importing
        slirpy.dhcp is a few ms of the time to ready. Under --enable-sandbox it
        is made before confinement instead, since slirpy's files are no longer
        visible after the pivot.
        """
        if self.dhcp is None:
            from slirpy.dhcp import DhcpServer

            net = self.net
            self.dhcp = DhcpServer(
                server_ip=net.gateway,
                network=net.cidr,
                router=net.gateway,
                dns=net.dns if net.dns_enabled else None,
                pool_start=net.dhcp_start,
                pool_end=net.dhcp_end,
                mtu=net.mtu,
            )
        return self.dhcp

    def stop(self, code: int = 0) -> None:
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(code)

    def _on_events(self) -> None:
        for ev in self.engine.events():
            self._on_event(ev)

    def _on_event(self, ev: object) -> None:
        from slirpy import engine as eng

        if ev.type == eng.EV_DHCP:
            reply = self._dhcp_server().handle(ev.data, ev.mac, time.monotonic())
            if reply is not None:
                self.engine.send_udp4(
                    reply.dst_mac, self.net.gateway, 67, reply.dst_ip, 68, reply.payload
                )
        elif ev.type == eng.EV_NOTICE:
            _warn(ev.data.decode(errors="replace"))
        elif ev.type in (eng.EV_FLOW_OPEN, eng.EV_FLOW_CLOSE):
            if self.on_flow is not None:
                self.on_flow(ev)
        elif ev.type == eng.EV_TAP_DOWN:
            _warn("the TAP device went away (the container's network namespace is gone)")
            self.stop(0)

    def drain(self) -> None:
        """Run the engine once more and handle its events: at shut-down,
        so that the last flows' close events are not lost."""
        if self._engine_ready is not None:
            self._engine_ready()

    def _on_exit_fd(self) -> None:
        try:
            data = os.read(self.exit_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # hang-up or error: the parent is gone
            self.stop(0)

    def start_ns_helper(self) -> None:
        """Make spliced forwards possible (once); NamespaceError if they cannot be."""
        if self._ns_helper is not None:
            return
        if self.ns_target is None or self._stack is None:
            raise NamespaceError("spliced forwards are not available here")
        if self._confined:
            raise NamespaceError(
                "spliced forwards need the namespace helper, which cannot start once "
                "slirpy is confined (--enable-sandbox/--enable-seccomp); "
                "start slirpy with --splice-helper"
            )
        from slirpy.nshelper import start_ns_helper, stop_ns_helper

        sock, pid = start_ns_helper(self.ns_target)
        self._stack.callback(stop_ns_helper, pid)
        try:
            self.engine.set_ns_helper(sock.fileno())
        except OSError:
            sock.close()
            raise
        sock.detach()  # the engine owns it now
        self._ns_helper = pid

    def stats(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.engine is not None:
            out["dhcp"] = dict(self._dhcp_server().stats)
        if self.dns is not None:
            out["dns"] = dict(self.dns.stats)
        return out

    async def serve(self) -> int:
        from slirpy.engine import Engine, Limits

        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        net = self.net
        async with AsyncExitStack() as stack:
            self._stack = stack
            dns_udp = dns_tcp = 0
            if net.dns_enabled:
                from slirpy.dns import DnsProxy

                self.dns = DnsProxy(
                    resolv_conf=self.resolv_conf,
                    upstreams=list(self.dns_upstreams) or None,
                    # IPv6 + UDP headers: the worst case of both families.
                    max_udp_reply=net.mtu - 48,
                )
                await self.dns.start()
                stack.push_async_callback(self.dns.close)
                dns_udp, dns_tcp = self.dns.udp_port, self.dns.tcp_port
            self.engine = Engine(
                net,
                vnet_hdr=True,
                offload=self.offload,
                dns_udp_port=dns_udp,
                dns_tcp_port=dns_tcp,
                outbound4=self.outbound4,
                outbound6=self.outbound6,
                limits=Limits(**dict(self.limits)),
                flow_events=self.on_flow is not None,
            )
            stack.callback(self.engine.close)
            # Runs just before the close: the reader holds the raw engine.
            stack.callback(setattr, self, "_engine_ready", None)
            self.engine.set_tap(self.tap.fd)
            self.engine.set_guest_mac(self.tap.mac)
            efd = self.engine.fileno()
            self._engine_ready = self.engine.reader(self._on_events, POLL_BUDGET)
            loop.add_reader(efd, self._engine_ready)
            stack.callback(loop.remove_reader, efd)
            if self.api_socket:
                from slirpy.api import ApiServer
                from slirpy.portfwd import PortForwarder

                fwd = PortForwarder(
                    self.engine, stats=self.stats, splice_helper=self.start_ns_helper
                )
                api = ApiServer(self.api_socket, fwd, default_guest_addr=str(net.guest))
                try:
                    await api.start()
                except (OSError, ValueError) as e:
                    raise ConfigError(str(e)) from None
                stack.push_async_callback(api.close)
            if self.exit_fd is not None:
                os.set_blocking(self.exit_fd, False)
                loop.add_reader(self.exit_fd, self._on_exit_fd)
                stack.callback(loop.remove_reader, self.exit_fd)
            if self.watch_pid is not None:
                with contextlib.suppress(OSError):
                    pidfd = os.pidfd_open(self.watch_pid)
                    loop.add_reader(pidfd, self.stop, 0)
                    stack.callback(os.close, pidfd)
                    stack.callback(loop.remove_reader, pidfd)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                if not self.handle_signals:
                    break
                if self.on_signal is not None:
                    loop.add_signal_handler(sig, self.on_signal, sig)
                else:
                    loop.add_signal_handler(sig, self.stop, 0)
                stack.callback(loop.remove_signal_handler, sig)
            if self.setup is not None:
                await self.setup(self, stack)
            if self.sandbox:
                self._dhcp_server()  # lazy imports are impossible after the pivot
            self._engine_ready()  # frames queued before we listened
            confined = self.sandbox or self.seccomp
            if confined and self.splice_helper and self.api_socket and self.ns_target:
                # Forking and setns() are impossible once confined: an API
                # client may ask for a spliced forward later, so start the
                # helper now (one idle process; see docs/architecture.md).
                try:
                    self.start_ns_helper()
                except (NamespaceError, OSError) as e:
                    _warn(f"spliced forwards unavailable: {e}")
            confine(self.sandbox, self.seccomp, self.resolv_conf)
            self._confined = self.sandbox or self.seccomp
            if self.ready_fd is not None:
                try:
                    os.write(self.ready_fd, b"1")
                finally:
                    os.close(self.ready_fd)
            return await self._stop


def _preload(*, api: bool = True, dns: bool = True) -> None:
    """Import what the daemon needs while the namespace helper works.

    Only what runs before the ready byte: slirpy.dhcp is imported on first use
    (Daemon._dhcp_server), the API and DNS modules only when enabled.
    """
    import slirpy.engine

    if api:
        import slirpy.api
        import slirpy.portfwd
    if dns:
        import slirpy.dns  # noqa: F401
    _loop_factory()


def sandbox_extra_dirs(resolv_conf: str) -> list[str]:
    """Directories the sandbox must keep visible besides /etc and /run.

    resolv.conf is often a symlink (systemd-resolved, WSL, NetworkManager);
    slirp4netns loses DNS when its target is elsewhere. Keep the directory of
    every link in the chain and of the final file.
    """
    dirs: list[str] = []
    path = os.path.abspath(resolv_conf)
    for _ in range(16):
        d = os.path.dirname(path)
        if d not in dirs and d != "/":
            dirs.append(d)
        if not os.path.islink(path):
            break
        path = os.path.normpath(os.path.join(d, os.readlink(path)))
    real = os.path.dirname(os.path.realpath(resolv_conf))
    if real not in dirs and real != "/":
        dirs.append(real)
    return [d for d in dirs if os.path.isdir(d)]


def confine(sandbox: bool, seccomp: bool, resolv_conf: str) -> None:
    """Apply --enable-sandbox then --enable-seccomp (after set-up, before ready)."""
    from slirpy.engine import sandbox_apply, seccomp_apply

    if sandbox:
        # unshare(CLONE_NEWUSER) fails in a multi-threaded process; a thread
        # here is a bug in slirpy, reported rather than worked around.
        if len(os.listdir("/proc/self/task")) > 1:
            raise ConfigError("--enable-sandbox: slirpy has started a thread; cannot sandbox")
        try:
            sandbox_apply(sandbox_extra_dirs(resolv_conf))
        except OSError as e:
            raise ConfigError(e.strerror or str(e)) from None
    if seccomp:
        try:
            seccomp_apply()
        except OSError as e:
            raise ConfigError(e.strerror or str(e)) from None


def run_slirp4netns(cfg: Slirp4netnsConfig) -> int:
    """The slirpy-slirp4netns command, after parsing. Returns the exit code."""
    import logging

    logging.basicConfig(
        level=logging.DEBUG if cfg.debug else logging.WARNING,
        stream=sys.stderr,
        format="slirpy: %(name)s: %(message)s",
    )
    net = cfg.net
    outbound4 = resolve_outbound(cfg.outbound_addr, 4)
    outbound6 = resolve_outbound(cfg.outbound_addr6, 6)
    try:
        if cfg.netns_type == "pid":
            target = target_for_pid(int(cfg.target))
        else:
            target = target_for_path(cfg.target, cfg.userns_path)
        if cfg.userns_path and cfg.netns_type == "pid":
            target = type(target)(target.netns_path, cfg.userns_path)
        pending = start_open_tap(
            target,
            TapRequest.for_net(net, cfg.tapname, offload=cfg.offload, configure=cfg.configure),
        )
        # Overlaps with the helper child's work.
        _preload(api=bool(cfg.api_socket), dns=net.dns_enabled)
        tap = pending.wait()
    except NamespaceError as e:
        raise ConfigError(str(e)) from None
    # slirp4netns prints these two on stderr and the banner on stdout: same here.
    _say(f"sent tapfd={tap.fd} for {cfg.tapname}", sys.stderr)
    _say(f"received tapfd={tap.fd}", sys.stderr)
    print_banner(cfg)
    daemon = Daemon(
        net,
        tap,
        offload=cfg.offload,
        resolv_conf=cfg.resolv_conf,
        dns_upstreams=tuple((str(a), p) for a, p in cfg.dns_upstream_endpoints),
        outbound4=outbound4,
        outbound6=outbound6,
        limits=cfg.limits,
        api_socket=cfg.api_socket,
        ready_fd=cfg.ready_fd,
        exit_fd=cfg.exit_fd,
        watch_pid=cfg.pid,
        sandbox=cfg.enable_sandbox,
        seccomp=cfg.enable_seccomp,
        ns_target=target,
        splice_helper=cfg.splice_helper,
    )
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(daemon.serve())


def run_command(cfg: object) -> int:
    """`slirpy run` (slirpy.run owns it); returns CMD's exit code."""
    from slirpy.run import run

    return run(cfg)  # type: ignore[arg-type]
