"""One slirpy daemon, from `DaemonOptions` to exit: the order of things.

This module is the only place that knows in which order slirpy starts and
stops, whichever front end asked:

1. the namespaces: join the target's, or create new ones (a holder, or the
   command of `slirpy run`, waiting to be let go) — before any thread or
   event loop, since the helpers fork;
2. the TAP, opened (and with `configure`, set up) in the namespace by a
   forked helper while this process imports what it will need; in pasta's
   model, the namespace configured through the helper's netlink socket;
3. in the event loop: the DNS forwarder, the engine (its fd's reader), the
   API socket, the exit fd, the watched PID and signals, the published
   ports, the command let go, confinement, then readiness (the ready byte);
   except that a daemonizing pasta with nothing to bind (Podman's `-t none
   -u none -T none -U none`, no API socket, no policy) is ready once step 2
   is done: frames the container sends meanwhile wait in the TAP's queue,
   and the event loop, the engine and the DNS forwarder are imported and
   started after the runtime has gone on (issue 17: Podman waits for the
   parent's exit). A failure after that is reported on the daemon's stderr
   (its log file) and to syslog, and the daemon exits 1 (`_run_after_ready`);
4. on SIGTERM/SIGINT, exit-fd hang-up, the watched process' exit or the
   TAP's disappearance: undo it all in reverse (an AsyncExitStack), then
   reap the command and return its exit code.

It also wires the engine's slow-path events to the sans-IO services (DHCP)
and to the flow log. It must not parse command lines (slirpy/frontends) nor
speak any protocol itself (slirpy/services, slirpy/control).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
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
    import asyncio
    from ipaddress import IPv4Address

    from slirpy.control.policy import DenialLog, Policy
    from slirpy.control.portfwd import PortForwarder
    from slirpy.control.sharedports import SharedPorts
    from slirpy.engine import Engine
    from slirpy.host.spawn import CommandSpawn, Holder
    from slirpy.host.template import HostTemplate
    from slirpy.services.dhcp import DhcpServer
    from slirpy.services.dns import DnsProxy

__all__ = ["Daemon", "event_loop_factory"]

POLL_BUDGET = 512


def _say(text: str) -> None:
    sys.stderr.write(f"slirpy: {text}\n")
    sys.stderr.flush()


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop when installed (and SLIRPY_LOOP is not "asyncio"), else asyncio's."""
    import asyncio  # lazy: pasta's parent exits before the event loop is needed

    if os.environ.get("SLIRPY_LOOP") == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _report_late(ident: str, message: str) -> None:
    """A failure after the runtime went on: one syslog line (LOG_DAEMON,
    LOG_ERR), as pasta logs once in the background; the caller also prints
    it on stderr (the log file, if any) and exits non-zero."""
    import syslog

    syslog.openlog(ident, syslog.LOG_PID, syslog.LOG_DAEMON)
    syslog.syslog(syslog.LOG_ERR, " ".join(message.split("\n")))
    syslog.closelog()


def _reaches_loopback(addr: str) -> bool:
    """A host listener on this address serves loopback clients (-T/-U auto)."""
    return addr in ("0.0.0.0", "::", "::1", "::ffff:127.0.0.1") or addr.startswith("127.")


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
        self._ns_fds_set = False  # the engine makes namespace sockets itself
        self._confined = False
        self._stack: AsyncExitStack | None = None
        # The engine fd's reader (Engine.reader): every poll goes through it.
        self._engine_ready: Callable[[], None] | None = None
        self._stop: asyncio.Future[int] | None = None
        # Taken just before the engine closes, for print_stats.
        self._final_counters: dict[str, int] = {}
        self._final_services: dict[str, Any] = {}
        # The egress policy in force (set_policy), and its denial log's limiter.
        self.policy: Policy | None = None
        self._denial_log: DenialLog | None = None
        # pasta's life cycle and model (DaemonOptions.shared, .daemonize).
        self._detach_fd: int | None = None  # the daemonized child's readiness pipe
        self._template: HostTemplate | None = None
        self._shared_ports: SharedPorts | None = None
        self._nl: socket.socket | None = None  # NETLINK_ROUTE in the namespace
        self._diag: socket.socket | None = None  # NETLINK_SOCK_DIAG in the namespace
        self._auto_timer: asyncio.TimerHandle | None = None
        self._host_diag_sock: socket.socket | None = None
        self._lo_helper: int | None = None  # the -T/-U namespace helper's PID
        self._dhcp_src: IPv4Address | None = None  # DHCP replies' source (pasta's model)
        # --config-net done (before the loop, or in serve()): the MAC the
        # namespace's interface ended up with, for the engine.
        self._ns_configured = False
        self._ns_mac: bytes | None = None
        self._ready_announced = False

    # ------------------------------------------------------------ the whole life

    def run(self) -> int:
        """Start, serve until told to stop, stop; the exit code (the command's, if any).

        Raises ConfigError (one line) when set-up fails; nothing is left
        running then.
        """
        opts = self.opts
        early = self.ready_before_loop()
        try:
            if opts.daemonize:
                from slirpy.host.daemonize import fork_until_ready

                # Only the child returns; the parent exits once it is ready.
                self._detach_fd = fork_until_ready("slirpy", opts.pid_file)
            pending = self.start_tap()
            if early:
                self.attach_tap(self.wait_tap(pending))
                self._configure_namespace()
                self._announce_ready()
                code = self._run_after_ready()
            else:
                self.preload()  # overlaps with the helper child's work
                self.attach_tap(self.wait_tap(pending))
                code = self._run_loop()
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

    def ready_before_loop(self) -> bool:
        """Is readiness announced before the event loop starts (issue 17)?

        Only for pasta's daemonized life cycle when nothing has to be bound
        or applied first: no published or `auto` ports (their listeners are
        the engine's), no API socket, no policy (a policy that cannot be
        applied must fail the start), no ready fd, no confinement and no
        command. Then the parent exits once the TAP is open and the
        namespace configured, which is all a runtime can observe.
        """
        opts = self.opts
        return (
            opts.shared is not None
            and opts.daemonize
            and not opts.forwards
            and not opts.loopback_forwards
            and not opts.auto_forwards
            and not opts.api_socket
            and opts.policy is None
            and opts.ready_fd is None
            and opts.exit_fd is None
            and not opts.sandbox
            and not opts.seccomp
            and not isinstance(opts.target, NewNamespace)
        )

    def _run_loop(self) -> int:
        """serve() in an event loop (uvloop's when installed); its code."""
        import asyncio
        import logging

        logging.basicConfig(
            level=logging.DEBUG if self.opts.debug else logging.WARNING,
            stream=sys.stderr,
            format="slirpy: %(name)s: %(message)s",
        )
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(self.serve())

    def _run_after_ready(self) -> int:
        """The rest of the start and the whole life, once the parent has exited.

        Nobody reads our exit code or (detached) stderr now, so a failure
        also goes to syslog, as pasta's messages do once it is in the
        background, then propagates: the front end prints its one line (to
        the log file, -l) and exits 1.
        """
        try:
            self.preload()
            return self._run_loop()
        except Exception as e:
            # A ConfigError's text is already the one line; anything else names its type.
            _report_late(self._ident(), str(e) if isinstance(e, ConfigError)
                         else f"{type(e).__name__}: {e}")
            raise

    def _ident(self) -> str:
        return "slirpy-pasta" if self.opts.shared is not None else "slirpy"

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
        opts = self.opts
        if opts.outbound_addr or opts.outbound_addr6:
            from slirpy.host.outbound import resolve_outbound

            self._outbound = (
                resolve_outbound(opts.outbound_addr, 4),
                resolve_outbound(opts.outbound_addr6, 6),
            )
        try:
            target = self._namespace_target()
            self._ns_target = target  # for the helper of spliced forwards
            if opts.shared is not None:
                request = self._shared_tap_request()
            else:
                request = TapRequest.for_net(
                    self.net, opts.tapname, offload=opts.offload, configure=opts.configure
                )
            return start_open_tap(target, request)
        except NamespaceError as e:
            self.release()
            raise ConfigError(str(e)) from None

    def _shared_tap_request(self) -> TapRequest:
        """pasta's model: the host's template decides the TAP's name; the
        namespace is configured later through a netlink socket made there."""
        from slirpy.host.template import read_host_template

        shared = self.opts.shared
        assert shared is not None
        self._template = read_host_template(shared)
        return TapRequest(
            tapname=self._template.ifname,
            vnet_hdr=True,
            offload=self.opts.offload,
            configure=False,
            mtu=shared.mtu,
            netlink=True,
        )

    def _namespace_target(self) -> NamespaceTarget:
        target = self.opts.target
        if isinstance(target, JoinPid):
            found = target_for_pid(target.pid)
            if target.userns_path:
                found = NamespaceTarget(found.netns_path, target.userns_path)
            return found
        if isinstance(target, JoinPath):
            return target_for_path(target.netns_path, target.userns_path, target.netns_only)
        assert isinstance(target, NewNamespace)
        from slirpy.host import spawn

        if target.command:
            shared = self.opts.shared
            self._spawn = spawn.CommandSpawn(
                target.command,
                self.net,
                tapname=self.opts.tapname,
                host_resolv_conf=self.opts.resolv_conf,
                keep_id=target.keep_id,
                # pasta's model: the --dns-forward addresses, else the host's
                # resolv.conf; its addresses are configured without DAD.
                nameservers=None if shared is None else tuple(map(str, shared.dns_forward)),
                wait_ipv6=None if shared is None else False,
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
        Only `run()` calls it, i.e. only a front end's process, which never
        speaks TLS: asyncio and uvloop are imported without ssl
        (slirpy.notls; nothing changes if asyncio is already imported, e.g.
        by slirpy.entry). slirpy-pasta gets here after its parent exited.
        """
        from slirpy import notls

        notls.import_asyncio()
        if os.environ.get("SLIRPY_LOOP") != "asyncio":
            notls.import_uvloop()
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
        from slirpy.engine import Engine, Limits, release_free_memory

        opts, net = self.opts, self.net
        assert self.tap is not None, "attach_tap() first"
        import asyncio

        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        async with AsyncExitStack() as stack:
            self._stack = stack
            stack.callback(self._close_nl)
            dns_udp = dns_tcp = 0
            if opts.shared is not None:
                dns_udp = dns_tcp = await self._start_shared_dns(stack)
            elif net.dns_enabled:
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
                **self._shared_engine_args(),
            )
            self.engine = engine
            stack.callback(engine.close)
            if opts.policy is not None:
                try:
                    self.set_policy(opts.policy)
                except OSError as e:
                    raise ConfigError(
                        f"cannot apply the policy {opts.policy.name}: {e.strerror or e}"
                    ) from None
            # Runs just before the close: the reader holds the raw engine.
            stack.callback(setattr, self, "_engine_ready", None)
            if opts.print_stats:
                stack.callback(self._snapshot)
            engine.set_tap(self.tap.fd)
            engine.set_guest_mac(self.tap.mac)
            if opts.shared is not None:
                self._configure_namespace()
                if self._ns_mac is not None:
                    engine.set_guest_mac(self._ns_mac)  # --ns-mac-addr's, not the TAP's
                self._set_addr_maps(dns_udp)
                self._follow_host(loop, stack, dns_udp)
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
            self._announce_ready()
            if on_ready is not None:
                on_ready()
            # Start-up (imports, configuration) freed more heap than it keeps; glibc
            # would hold it resident in every idle stack process (one per container).
            release_free_memory()
            return await self._stop

    def _announce_ready(self) -> None:
        """pasta's readiness: the PID file (foreground), or the parent let go (once)."""
        if self._ready_announced:
            return
        self._ready_announced = True
        opts = self.opts
        if self._detach_fd is not None:
            from slirpy.host.daemonize import detach_stdio, signal_ready

            detach_stdio(opts.log_file)
            fd, self._detach_fd = self._detach_fd, None
            signal_ready(fd)
            return
        if opts.pid_file:
            from slirpy.host.daemonize import write_pid_file

            try:
                write_pid_file(opts.pid_file, os.getpid())
            except OSError as e:
                raise ConfigError(f"cannot write PID file {opts.pid_file}: {e.strerror}") from None
        if opts.log_file:
            from slirpy.host.daemonize import detach_stdio

            detach_stdio(opts.log_file)

    # ------------------------------------------------ pasta's shared model

    async def _start_shared_dns(self, stack: AsyncExitStack) -> int:
        """The forwarder behind --dns-forward (TCP and UDP on one port); 0 if none."""
        shared = self.opts.shared
        assert shared is not None
        if not any(a.version == 4 for a in shared.dns_forward):
            return 0
        from slirpy.services.dns import DnsProxy

        upstreams = [(str(a), 53) for a in shared.dns_host] or [
            (str(a), p) for a, p in self.opts.dns_upstream_endpoints
        ]
        last: OSError | None = None
        for _ in range(16):
            dns = DnsProxy(
                resolv_conf=self.opts.resolv_conf,
                upstreams=upstreams or None,
                max_udp_reply=(shared.mtu or 65520) - 48,
                same_port=True,
            )
            try:
                await dns.start()
            except OSError as e:
                last = e
                continue
            self.dns = dns
            stack.push_async_callback(dns.close)
            return dns.udp_port
        raise ConfigError(f"cannot start the DNS forwarder: {last}")

    def _shared_engine_args(self) -> dict[str, Any]:
        """The engine's shared-address keywords (empty for slirp4netns's model)."""
        shared, template = self.opts.shared, self._template
        if shared is None:
            return {}
        assert template is not None
        from slirpy.control.sharednet import guest_addresses, peer_substitutes

        g4, g6 = guest_addresses(template)
        s4, s6 = peer_substitutes(shared, template)
        gw4 = template.v4.gateway if template.v4 is not None else None
        gw6 = template.v6.gateway if template.v6 is not None else None
        dns4 = next((a for a in shared.dns_forward if a.version == 4), None)
        return {
            "shared": True,
            "our_mac": shared.our_mac,
            "guest4": g4,
            "guest6": g6,
            "gateway4": gw4,
            "gateway6": gw6,
            "dns4": dns4,
            "peer_sub4": s4,
            "peer_sub6": s6,
            "mtu": shared.mtu or 65520,
            "ipv4": template.v4 is not None,
            "ipv6": template.v6 is not None,
            "no_ra": True,
        }

    def _configure_namespace(self) -> None:
        """--config-net: addresses, routes, MTU, name, MAC and lo, through the
        netlink socket the TAP helper made in the namespace (once: before
        the loop when ready early, else in serve(), which closes it)."""
        if self._ns_configured:
            return
        self._ns_configured = True
        shared, template, tap = self.opts.shared, self._template, self.tap
        assert shared is not None and template is not None and tap is not None
        if tap.nl_fd is None:
            return
        nl = socket.socket(fileno=tap.nl_fd)
        self._nl = nl
        if not shared.config_net:
            return
        from slirpy.host.netconf import configure_namespace
        from slirpy.host.netns import TAP_TXQUEUELEN

        try:
            done = configure_namespace(nl, template.ifname, template, mtu=shared.mtu,
                                       ns_mac=shared.ns_mac, txqueuelen=TAP_TXQUEUELEN)
        except OSError as e:
            raise ConfigError(f"cannot configure {template.ifname}: {e.strerror or e}") from None
        self._ns_mac = done.mac
        if not done.ipv6 and template.v6 is not None:
            # The namespace cannot do IPv6: later host changes copy IPv4 only.
            self._template = template._replace(v6=None)

    def _close_nl(self) -> None:
        if self._nl is not None:
            self._nl.close()
            self._nl = None

    def _follow_host(self, loop: asyncio.AbstractEventLoop, stack: AsyncExitStack,
                     dns_port: int) -> None:
        """Better than pasta: host address and route changes reach the copy."""
        shared, template = self.opts.shared, self._template
        assert shared is not None and template is not None
        if not (shared.follow_host and shared.config_net) or self._nl is None:
            return
        from slirpy.host.hostwatch import HostWatch

        def changed(old: HostTemplate, new: HostTemplate) -> None:
            self._host_changed(old, new, dns_port)

        try:
            watch = HostWatch(shared, template, changed, loop,
                              on_error=lambda e: _say(f"host change not followed: {e}"))
        except OSError as e:
            _say(f"host changes will not be followed: {e}")
            return
        loop.add_reader(watch.fileno(), watch.on_readable)
        stack.callback(watch.close)
        stack.callback(loop.remove_reader, watch.fileno())
        # The namespace got the template read at start (before readiness,
        # with pasta's early readiness well before this watch existed).
        watch.recheck()

    def _host_changed(self, old: HostTemplate, new: HostTemplate, dns_port: int) -> None:
        from slirpy.control.sharednet import guest_addresses, peer_substitutes
        from slirpy.host.netconf import apply_change

        assert self._nl is not None and self.engine is not None
        assert self.opts.shared is not None
        try:
            apply_change(self._nl, old.ifname, old, new)
        except OSError as e:
            _say(f"cannot copy the host's change into the namespace: {e}")
        self._template = new
        self._set_addr_maps(dns_port)
        g4, g6 = guest_addresses(new)
        self.engine.set_shared_addrs(g4, g6, *peer_substitutes(self.opts.shared, new))
        if self._shared_ports is not None:
            for err in self._shared_ports.readdress(g4, g6):
                _say(err)

    def _set_addr_maps(self, dns_port: int) -> None:
        from slirpy.control.sharednet import address_maps

        shared, template, engine = self.opts.shared, self._template, self.engine
        assert shared is not None and template is not None and engine is not None
        for m in address_maps(shared, template, dns_port):
            engine.set_addr_map(m.slot, m.family, m.match, m.target,
                                dns_only=m.dns_only, target_port=m.target_port)

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

        guest = self.net.guest
        if self._template is not None:
            # pasta's model: the guest's address is the host's (or -a's).
            from slirpy.control.sharednet import guest_addresses

            g4, g6 = guest_addresses(self._template)
            guest = g4 or g6 or guest
        api = ApiServer(
            self.opts.api_socket, self.forwarder, default_guest_addr=str(guest), policy=self,
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
        target = opts.target
        if opts.netns_quit and isinstance(target, JoinPath):
            from slirpy.host.nswatch import NetnsGoneWatch

            gone = NetnsGoneWatch(target.netns_path, self._netns_gone)
            gone.start(loop)
            stack.callback(gone.close)
        watched = self.pid if self._holder is None else None
        if watched is not None:
            try:
                pidfd = os.pidfd_open(watched)
            except ProcessLookupError:
                # It exited before we watched it (pasta's early readiness
                # widens that window): as if we had seen it exit.
                self.stop(0)
            except OSError:
                pass
            else:
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

    def _netns_gone(self) -> None:
        """The namespace's path was removed: free the host ports first (a
        container restarted at once binds them again), then stop."""
        if not self.opts.quiet:
            _say("the network namespace is gone, exiting")
        if self._shared_ports is not None:
            self._shared_ports.close_all()
        if self.opts.daemonize:
            # Nobody waits for our exit code and the kernel frees the rest:
            # an orderly teardown would only keep the process around (a
            # restarted container's new stack is already starting).
            self._exit_now()
        self.stop(0)

    def _exit_now(self) -> None:
        import logging

        from slirpy.host.nshelper import stop_ns_helper

        if self.opts.api_socket:
            with contextlib.suppress(OSError):
                os.unlink(self.opts.api_socket)
        for pid in (self._ns_helper, self._lo_helper):
            if pid is not None:
                stop_ns_helper(pid)
        logging.shutdown()
        os._exit(0)

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
        if self.opts.shared is not None:
            self._publish_shared()
            return
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

    def _publish_shared(self) -> None:
        """pasta's -t/-u (split TCP listeners: loopback clients spliced)."""
        from slirpy.control.sharednet import guest_addresses
        from slirpy.control.sharedports import SharedPorts

        assert self.engine is not None and self._template is not None
        g4, g6 = guest_addresses(self._template)

        def splice_ready() -> None:
            try:
                self.start_ns_helper()
            except NamespaceError as e:
                raise OSError(str(e)) from None

        opts = self.opts
        ns_socket = None
        if opts.loopback_forwards or any(a.direction == "out" for a in opts.auto_forwards):
            ns_socket = self._ns_socket_maker()
        ports = SharedPorts(self.engine, guest4=g4, guest6=g6, splice_ready=splice_ready,
                            ns_socket=ns_socket, ns_ipv6=self._template.v6 is not None,
                            host_lo_to_ns_lo=bool(opts.shared and opts.shared.host_lo_to_ns_lo))
        self._shared_ports = ports
        for m in opts.forwards:
            ports.publish(m)  # ConfigError: pasta's "Failed to bind port ..."
            if opts.log_flows:
                _say(f"published {m.describe()}")
        for f in opts.loopback_forwards:
            ports.publish_ns(f)
        if opts.auto_forwards:
            self._auto_tick()

    def _ns_socket_maker(self) -> Callable[[int, int, int], int] | None:
        """What makes -T/-U's namespace sockets: a short-lived clone() child
        per socket (csrc/nssock.c), or, when slirpy will confine itself
        (setns() is impossible then and `auto` makes sockets later), a
        namespace helper of our own."""
        from slirpy.engine import ns_loopback_socket, ns_loopback_socket_at
        from slirpy.host.netns import open_namespaces
        from slirpy.host.nshelper import start_ns_helper, stop_ns_helper

        assert self._ns_target is not None and self._stack is not None
        if not (self.opts.sandbox or self.opts.seccomp):
            try:
                netfd, userfd = open_namespaces(self._ns_target)
            except NamespaceError as e:
                raise ConfigError(f"-T/-U: {e}") from None
            self._stack.callback(os.close, netfd)
            if userfd is not None:
                self._stack.callback(os.close, userfd)
            return lambda proto, family, port: ns_loopback_socket_at(
                netfd, userfd, proto, family, port)
        try:
            sock, pid = start_ns_helper(self._ns_target)
        except NamespaceError as e:
            raise ConfigError(f"-T/-U: {e}") from None
        self._stack.callback(stop_ns_helper, pid)
        self._stack.callback(sock.close)
        self._lo_helper = pid
        sock.setblocking(True)
        return lambda proto, family, port: ns_loopback_socket(sock, proto, family, port)

    def _auto_tick(self) -> None:
        """pasta's `-t/-u auto`: mirror what the guest listens on, every second."""
        from slirpy.host.portscan import listening_ports

        ports, tap = self._shared_ports, self.tap
        if ports is None or tap is None or tap.diag_fd is None or self._stop is None:
            return
        if self._diag is None:
            self._diag = socket.socket(fileno=tap.diag_fd)
            assert self._stack is not None
            self._stack.callback(self._diag.close)
            self._stack.callback(self._cancel_auto)
        for auto in self.opts.auto_forwards:
            try:
                if auto.direction == "in":
                    bound = {port for port, _a in listening_ports(self._diag, auto.proto)}
                    own = ports.ns_ports(auto.proto)
                else:
                    bound = {port for port, addr in listening_ports(self._host_diag(), auto.proto)
                             if _reaches_loopback(addr)}
                    own = ports.host_ports(auto.proto)
            except OSError:
                continue
            ports.mirror(auto, bound, own=own)
        import asyncio

        self._auto_timer = asyncio.get_running_loop().call_later(1.0, self._auto_tick)

    def _cancel_auto(self) -> None:
        if self._auto_timer is not None:
            self._auto_timer.cancel()
            self._auto_timer = None

    def _host_diag(self) -> socket.socket:
        """NETLINK_SOCK_DIAG in our (the host's) namespace, for -T/-U auto."""
        if self._host_diag_sock is None:
            from slirpy.host.netns import NETLINK_SOCK_DIAG

            self._host_diag_sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW,
                                                 NETLINK_SOCK_DIAG)
            assert self._stack is not None
            self._stack.callback(self._host_diag_sock.close)
        return self._host_diag_sock

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
        if self._ns_helper is not None or self._ns_fds_set:
            return
        if self._ns_target is None or self._stack is None or self.engine is None:
            raise NamespaceError("spliced forwards are not available here")
        if self._confined:
            raise NamespaceError(
                "spliced forwards need the namespace helper, which cannot start once "
                "slirpy is confined (--enable-sandbox/--enable-seccomp); "
                "start slirpy with --splice-helper"
            )
        if not (self.opts.sandbox or self.opts.seccomp) and self._set_ns_fds():
            return
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

    def _set_ns_fds(self) -> bool:
        """Let the engine make spliced forwards' namespace sockets itself
        (csrc/nssock.c: no second process); False if it cannot (then the
        helper is tried, and says why). NamespaceError: no namespace."""
        from slirpy.engine import EngineError
        from slirpy.host.netns import open_namespaces

        if self._ns_fds_set:
            return True
        assert self._ns_target is not None and self.engine is not None
        netfd, userfd = open_namespaces(self._ns_target)
        try:
            self.engine.set_ns_fds(netfd, userfd)
        except EngineError:
            os.close(netfd)
            if userfd is not None:
                os.close(userfd)
            return False
        self._ns_fds_set = True
        return True

    # ------------------------------------------------------------ engine events

    def _dhcp_server(self) -> DhcpServer | None:
        """The DHCP server, made on the first DHCP datagram (or stats request).

        Not at start: most guests never ask (Podman and `slirpy run` configure
        the TAP with -c, RootlessKit configures it itself), and importing
        slirpy.services.dhcp is a few ms of the time to ready. Under
        --enable-sandbox it is made before confinement instead, since slirpy's
        files are no longer visible after the pivot.
        """
        if self.dhcp is None and self._template is not None:
            return self._shared_dhcp_server()
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

    def _shared_dhcp_server(self) -> DhcpServer | None:
        """pasta's model: offer the guest the host's address (None: no DHCP)."""
        from slirpy.control.sharednet import dhcp_settings
        from slirpy.services.dhcp import DhcpServer

        assert self.opts.shared is not None and self._template is not None
        got = dhcp_settings(self.opts.shared, self._template)
        if got is None:
            return None
        self.dhcp = DhcpServer(server_ip=got.server_ip, network=got.network, router=got.router,
                               dns=got.dns, pool_start=got.pool_start, pool_end=got.pool_end,
                               mtu=self.opts.shared.mtu or None)
        self._dhcp_src = got.server_ip
        return self.dhcp

    # ------------------------------------------------------------ egress policy

    def set_policy(self, policy: Policy) -> None:
        """Replace the policy (the API's PolicyHandler, the library): atomic in
        the engine, which resets the open flows the new one denies. OSError
        when the engine refuses it; then nothing changed."""
        from slirpy.control.policy import apply_policy

        assert self.engine is not None, "the engine is not running"
        apply_policy(self.engine, policy)
        self.policy = policy

    def get_policy(self) -> Policy | None:
        return self.policy

    def _log_denial(self, ev: Any) -> None:
        """One line per denied destination per 10 s (the engine limits too)."""
        from slirpy.control.policy import DenialLog, format_denial

        if self._denial_log is None:
            self._denial_log = DenialLog()
        if self._denial_log.should_log(ev.dst, time.monotonic()):
            _say(format_denial(ev, self.policy))

    def stats(self) -> dict[str, object]:
        """The services' statistics (DHCP, DNS), for get_stats and --stats."""
        out: dict[str, object] = {}
        if self.policy is not None and self.engine is not None:
            from slirpy.control.policy import policy_stats

            hits = self.engine.policy_hits(len(self.policy.rules))
            out["policy"] = policy_stats(self.policy, hits)
        if self.engine is not None:
            dhcp = self._dhcp_server()
            if dhcp is not None:
                out["dhcp"] = dict(dhcp.stats)
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
            server = self._dhcp_server()
            reply = None if server is None else server.handle(ev.data, ev.mac, time.monotonic())
            if reply is not None:
                assert self.engine is not None
                self.engine.send_udp4(
                    reply.dst_mac, self._dhcp_src or self.net.gateway, 67, reply.dst_ip, 68,
                    reply.payload,
                )
        elif ev.type == eng.EV_NOTICE:
            _say(ev.data.decode(errors="replace"))
        elif ev.type in (eng.EV_FLOW_OPEN, eng.EV_FLOW_CLOSE):
            if self.opts.log_flows:
                from slirpy.control.report import flow_line

                _say(flow_line(ev))
        elif ev.type == eng.EV_POLICY_DENY:
            self._log_denial(ev)
        elif ev.type == eng.EV_TAP_DOWN:
            _say("the TAP device went away (the container's network namespace is gone)")
            self.stop(0)
