"""One slirpy daemon, from `DaemonOptions` to exit: the order of things.

This module is the only place that knows in which order slirpy starts and
stops, whichever front end asked:

1. the namespaces: join the target's, or create new ones (a holder, or the
   command of `slirpy run`, waiting to be let go) — before any thread or
   event loop, since the helpers fork;
2. the TAP, opened (and with `configure`, set up) in the namespace by a
   forked helper while this process imports what it will need;
3. in the event loop: the DNS forwarder, the engine (its fd's reader), the
   API socket, the exit fd, the watched PID and signals, the published
   ports, the command let go, confinement, then readiness (the ready byte);
4. on SIGTERM/SIGINT, exit-fd hang-up, the watched process' exit or the
   TAP's disappearance: undo it all in reverse (an AsyncExitStack), then
   reap the command and return its exit code.

It also wires the engine's slow-path events to the sans-IO services (DHCP)
and to the flow log. It must not parse command lines (slirpy/frontends) nor
speak any protocol itself (slirpy/services, slirpy/control).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from slirpy.config import ConfigError
from slirpy.host.netns import (
    NamespaceError,
    NamespaceTarget,
    PendingTap,
    TapHandle,
    TapRequest,
    start_open_tap,
    target_for_path,
    target_for_pid,
)
from slirpy.options import DaemonOptions, JoinPath, JoinPid, NewNamespace

if TYPE_CHECKING:
    from slirpy.control.portfwd import PortForwarder
    from slirpy.engine import Engine
    from slirpy.host.spawn import CommandSpawn, Holder
    from slirpy.services.dhcp import DhcpServer
    from slirpy.services.dns import DnsProxy

__all__ = ["Daemon", "event_loop_factory"]

POLL_BUDGET = 512


def _say(text: str) -> None:
    sys.stderr.write(f"slirpy: {text}\n")
    sys.stderr.flush()


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop when installed (and SLIRPY_LOOP is not "asyncio"), else asyncio's."""
    if os.environ.get("SLIRPY_LOOP") == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _terminal_sent_it() -> bool:
    """True when our terminal's foreground group is ours (Ctrl-C reached the command too)."""
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
    return False


class Daemon:
    """One running slirpy: its namespaces, TAP, engine, services and life-cycle fds.

    Front ends call `run()` (the whole life, synchronously; returns the exit
    code). The library drives the two phases itself: `start_tap()` +
    `wait_tap()` + `attach_tap()` in its event loop's thread, then `serve()` as a task.
    `on_tap` is called with the TAP once it is open (slirp4netns prints its
    banner there).
    """

    def __init__(
        self, opts: DaemonOptions, *, on_tap: Callable[[TapHandle], None] | None = None
    ) -> None:
        self.opts = opts
        self.net = opts.net
        self._on_tap = on_tap
        self.tap: TapHandle | None = None
        self.engine: Engine | None = None
        self.dhcp: DhcpServer | None = None
        self.dns: DnsProxy | None = None
        self._forwarder: PortForwarder | None = None
        self._outbound: tuple[str | None, str | None] = (None, None)
        # What NewNamespace made: the command, or the holder of the namespaces.
        self._spawn: CommandSpawn | None = None
        self._holder: Holder | None = None
        self._ns_target: NamespaceTarget | None = None
        self._ns_helper: int | None = None
        self._confined = False
        self._stack: AsyncExitStack | None = None
        # The engine fd's reader (Engine.reader): every poll goes through it.
        self._engine_ready: Callable[[], None] | None = None
        self._stop: asyncio.Future[int] | None = None
        # Taken just before the engine closes, for print_stats.
        self._final_counters: dict[str, int] = {}
        self._final_services: dict[str, Any] = {}

    # ------------------------------------------------------------ the whole life

    def run(self) -> int:
        """Start, serve until told to stop, stop; the exit code (the command's, if any).

        Raises ConfigError (one line) when set-up fails; nothing is left
        running then.
        """
        opts = self.opts
        logging.basicConfig(
            level=logging.DEBUG if opts.debug else logging.WARNING,
            stream=sys.stderr,
            format="slirpy: %(name)s: %(message)s",
        )
        try:
            pending = self.start_tap()
            self.preload()  # overlaps with the helper child's work
            self.attach_tap(self.wait_tap(pending))
            with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                code = runner.run(self.serve())
            if self._spawn is not None:
                # The daemon stops when the command exits (or, rarely, when the
                # command removed the TAP: then it goes on without a network
                # and we still wait for it).
                code = self._wait_command()
        finally:
            self.release()
        if opts.print_stats:
            from slirpy.control.report import stats_table

            sys.stderr.write(stats_table(self._final_counters, self._final_services))
            sys.stderr.flush()
        return code

    @property
    def pid(self) -> int | None:
        """The PID whose namespaces are served (the holder's or command's when made here)."""
        target = self.opts.target
        if isinstance(target, JoinPid):
            return target.pid
        if self._spawn is not None:
            return self._spawn.pid
        return self._holder.pid if self._holder is not None else None

    def release(self) -> None:
        """Let go of what NewNamespace made (kill a command not yet reaped); idempotent."""
        if self._spawn is not None:
            self._spawn.kill()
            self._spawn = None
        if self._holder is not None:
            self._holder.close()
            self._holder = None

    # ------------------------------------------------------ phase 1: the TAP

    def start_tap(self) -> PendingTap:
        """Make or find the namespaces and fork the helper that opens the TAP there.

        Runs before any event loop or thread of ours (it forks). ConfigError
        when a namespace cannot be made or opened.
        """
        from slirpy.host.outbound import resolve_outbound

        opts = self.opts
        self._outbound = (
            resolve_outbound(opts.outbound_addr, 4),
            resolve_outbound(opts.outbound_addr6, 6),
        )
        try:
            target = self._namespace_target()
            self._ns_target = target  # for the helper of spliced forwards
            return start_open_tap(
                target,
                TapRequest.for_net(
                    self.net, opts.tapname, offload=opts.offload, configure=opts.configure
                ),
            )
        except NamespaceError as e:
            self.release()
            raise ConfigError(str(e)) from None

    def _namespace_target(self) -> NamespaceTarget:
        target = self.opts.target
        if isinstance(target, JoinPid):
            found = target_for_pid(target.pid)
            if target.userns_path:
                found = NamespaceTarget(found.netns_path, target.userns_path)
            return found
        if isinstance(target, JoinPath):
            return target_for_path(target.netns_path, target.userns_path)
        assert isinstance(target, NewNamespace)
        from slirpy.host import spawn

        if target.command:
            self._spawn = spawn.CommandSpawn(
                target.command,
                self.net,
                tapname=self.opts.tapname,
                host_resolv_conf=self.opts.resolv_conf,
                keep_id=target.keep_id,
            )
            assert self._spawn.pid is not None
            return target_for_pid(self._spawn.pid)
        self._holder = spawn.Holder()
        assert self._holder.pid is not None
        return target_for_pid(self._holder.pid)

    def wait_tap(self, pending: PendingTap) -> TapHandle:
        """The TAP from `start_tap()`'s helper (blocks); ConfigError if it failed."""
        try:
            return pending.wait()
        except NamespaceError as e:
            self.release()
            raise ConfigError(str(e)) from None

    def attach_tap(self, tap: TapHandle) -> None:
        """The TAP the helper opened (from `start_tap()`'s PendingTap.wait())."""
        self.tap = tap
        if self._on_tap is not None:
            self._on_tap(tap)

    def preload(self) -> None:
        """Import what serve() needs while the namespace helper works.

        Only what runs before the ready byte: slirpy.services.dhcp is imported
        on first use (_dhcp_server), the API and DNS modules only when enabled.
        """
        import slirpy.engine

        if self.opts.api_socket or self.opts.forwards:
            import slirpy.control.api
            import slirpy.control.portfwd
        if self.net.dns_enabled:
            import slirpy.services.dns  # noqa: F401
        event_loop_factory()

    # ---------------------------------------------------- phase 2: the loop

    async def serve(self, on_ready: Callable[[], None] | None = None) -> int:
        """Run everything until stopped; `on_ready` is called once ready. Returns 0."""
        from slirpy.engine import Engine, Limits

        opts, net = self.opts, self.net
        assert self.tap is not None, "attach_tap() first"
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        async with AsyncExitStack() as stack:
            self._stack = stack
            dns_udp = dns_tcp = 0
            if net.dns_enabled:
                from slirpy.services.dns import DnsProxy

                self.dns = DnsProxy(
                    resolv_conf=opts.resolv_conf,
                    upstreams=[(str(a), p) for a, p in opts.dns_upstream_endpoints] or None,
                    # IPv6 + UDP headers: the worst case of both families.
                    max_udp_reply=net.mtu - 48,
                )
                await self.dns.start()
                stack.push_async_callback(self.dns.close)
                dns_udp, dns_tcp = self.dns.udp_port, self.dns.tcp_port
            outbound4, outbound6 = self._outbound
            engine = Engine(
                net,
                vnet_hdr=True,
                offload=opts.offload,
                dns_udp_port=dns_udp,
                dns_tcp_port=dns_tcp,
                outbound4=outbound4,
                outbound6=outbound6,
                limits=Limits(**dict(opts.limits)),
                flow_events=opts.log_flows,
            )
            self.engine = engine
            stack.callback(engine.close)
            # Runs just before the close: the reader holds the raw engine.
            stack.callback(setattr, self, "_engine_ready", None)
            if opts.print_stats:
                stack.callback(self._snapshot)
            engine.set_tap(self.tap.fd)
            engine.set_guest_mac(self.tap.mac)
            efd = engine.fileno()
            self._engine_ready = engine.reader(self._on_events, POLL_BUDGET)
            loop.add_reader(efd, self._engine_ready)
            stack.callback(loop.remove_reader, efd)
            if opts.api_socket:
                await self._start_api(stack)
            self._watch(loop, stack)
            self._publish()
            if opts.log_flows:
                # Last: runs first at shut-down, before the snapshot and the
                # engine close, so flows that closed as we stopped are logged.
                stack.callback(self.drain)
            if self._spawn is not None:
                self._spawn.go()
            if opts.sandbox:
                self._dhcp_server()  # lazy imports are impossible after the pivot
            self._engine_ready()  # frames queued before we listened
            self._confine()
            if opts.ready_fd is not None:
                try:
                    os.write(opts.ready_fd, b"1")
                finally:
                    os.close(opts.ready_fd)
            if on_ready is not None:
                on_ready()
            return await self._stop

    def stop(self, code: int = 0) -> None:
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(code)

    def drain(self) -> None:
        """Run the engine once more and handle its events: at shut-down,
        so that the last flows' close events are not lost."""
        if self._engine_ready is not None:
            self._engine_ready()

    def _snapshot(self) -> None:
        assert self.engine is not None
        self._final_counters = self.engine.counters()
        self._final_services = self.stats()

    async def _start_api(self, stack: AsyncExitStack) -> None:
        from slirpy.control.api import ApiServer

        api = ApiServer(
            self.opts.api_socket, self.forwarder, default_guest_addr=str(self.net.guest)
        )
        try:
            await api.start()
        except (OSError, ValueError) as e:
            raise ConfigError(str(e)) from None
        stack.push_async_callback(api.close)

    def _watch(self, loop: asyncio.AbstractEventLoop, stack: AsyncExitStack) -> None:
        """What ends slirpy: the exit fd, the served process, signals."""
        opts = self.opts
        if opts.exit_fd is not None:
            os.set_blocking(opts.exit_fd, False)
            loop.add_reader(opts.exit_fd, self._on_exit_fd)
            stack.callback(loop.remove_reader, opts.exit_fd)
        watched = self.pid if self._holder is None else None
        if watched is not None:
            with contextlib.suppress(OSError):
                pidfd = os.pidfd_open(watched)
                loop.add_reader(pidfd, self.stop, 0)
                stack.callback(os.close, pidfd)
                stack.callback(loop.remove_reader, pidfd)
        if not opts.handle_signals:
            return
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            if self._spawn is not None:
                loop.add_signal_handler(sig, self._forward_signal, sig)
            else:
                loop.add_signal_handler(sig, self.stop, 0)
            stack.callback(loop.remove_signal_handler, sig)

    def _forward_signal(self, sig: int) -> None:
        """A command runs: signals are its to handle (slirpy stops when it exits)."""
        if sig == signal.SIGINT and _terminal_sent_it():
            return
        if self._spawn is not None:
            self._spawn.signal(sig)

    def _wait_command(self) -> int:
        """Reap the command (forwarding signals meanwhile); its exit code."""
        assert self._spawn is not None
        old = {s: signal.signal(s, lambda n, _f: self._forward_signal(n))
               for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            code = self._spawn.wait()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        self._spawn = None
        return code

    def _on_exit_fd(self) -> None:
        assert self.opts.exit_fd is not None
        try:
            data = os.read(self.opts.exit_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # hang-up or error: the parent is gone
            self.stop(0)

    # ------------------------------------------------------- ports and confinement

    @property
    def forwarder(self) -> PortForwarder:
        """The published ports (made on first use: the API socket, -p, the library)."""
        if self._forwarder is None:
            from slirpy.control.portfwd import PortForwarder

            assert self.engine is not None, "the engine is not running"
            self._forwarder = PortForwarder(
                self.engine, stats=self.stats, splice_helper=self.start_ns_helper
            )
        return self._forwarder

    def _publish(self) -> None:
        if not self.opts.forwards:
            return
        from slirpy.control.api import HostFwdError, HostFwdRequest

        for m in self.opts.forwards:
            req = HostFwdRequest(m.proto, m.host_addr, m.host_port,
                                 m.guest_addr or str(self.net.guest), m.guest_port, m.splice)
            try:
                self.forwarder.add_hostfwd(req)
            except HostFwdError as e:
                raise ConfigError(f"cannot publish {m.describe()}: {e}") from None
            if self.opts.log_flows:
                _say(f"published {m.describe()}")

    def _confine(self) -> None:
        from slirpy.host.confine import confine

        opts = self.opts
        confined = opts.sandbox or opts.seccomp
        if confined and opts.splice_helper and opts.api_socket:
            # Forking and setns() are impossible once confined: an API
            # client may ask for a spliced forward later, so start the
            # helper now (one idle process; see docs/architecture.md).
            try:
                self.start_ns_helper()
            except (NamespaceError, OSError) as e:
                _say(f"spliced forwards unavailable: {e}")
        confine(opts.sandbox, opts.seccomp, opts.resolv_conf)
        self._confined = confined

    def start_ns_helper(self) -> None:
        """Make spliced forwards possible (once); NamespaceError if they cannot be."""
        if self._ns_helper is not None:
            return
        if self._ns_target is None or self._stack is None or self.engine is None:
            raise NamespaceError("spliced forwards are not available here")
        if self._confined:
            raise NamespaceError(
                "spliced forwards need the namespace helper, which cannot start once "
                "slirpy is confined (--enable-sandbox/--enable-seccomp); "
                "start slirpy with --splice-helper"
            )
        from slirpy.host.nshelper import start_ns_helper, stop_ns_helper

        sock, pid = start_ns_helper(self._ns_target)
        self._stack.callback(stop_ns_helper, pid)
        try:
            self.engine.set_ns_helper(sock.fileno())
        except OSError:
            sock.close()
            raise
        sock.detach()  # the engine owns it now
        self._ns_helper = pid

    # ------------------------------------------------------------ engine events

    def _dhcp_server(self) -> DhcpServer:
        """The DHCP server, made on the first DHCP datagram (or stats request).

        Not at start: most guests never ask (Podman and `slirpy run` configure
        the TAP with -c, RootlessKit configures it itself), and importing
        slirpy.services.dhcp is a few ms of the time to ready. Under
        --enable-sandbox it is made before confinement instead, since slirpy's
        files are no longer visible after the pivot.
        """
        if self.dhcp is None:
            from slirpy.services.dhcp import DhcpServer

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

    def stats(self) -> dict[str, object]:
        """The services' statistics (DHCP, DNS), for get_stats and --stats."""
        out: dict[str, object] = {}
        if self.engine is not None:
            out["dhcp"] = dict(self._dhcp_server().stats)
        if self.dns is not None:
            out["dns"] = dict(self.dns.stats)
        return out

    def _on_events(self) -> None:
        assert self.engine is not None
        for ev in self.engine.events():
            self._on_event(ev)

    def _on_event(self, ev: Any) -> None:
        from slirpy import engine as eng

        if ev.type == eng.EV_DHCP:
            reply = self._dhcp_server().handle(ev.data, ev.mac, time.monotonic())
            if reply is not None:
                assert self.engine is not None
                self.engine.send_udp4(
                    reply.dst_mac, self.net.gateway, 67, reply.dst_ip, 68, reply.payload
                )
        elif ev.type == eng.EV_NOTICE:
            _say(ev.data.decode(errors="replace"))
        elif ev.type in (eng.EV_FLOW_OPEN, eng.EV_FLOW_CLOSE):
            if self.opts.log_flows:
                from slirpy.control.report import flow_line

                _say(flow_line(ev))
        elif ev.type == eng.EV_TAP_DOWN:
            _say("the TAP device went away (the container's network namespace is gone)")
            self.stop(0)
