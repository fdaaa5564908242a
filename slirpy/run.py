"""`slirpy run [OPTIONS] -- CMD [ARGS...]`: run a command with its own network.

This module owns the developer command, after parsing (`RunConfig`):

1. fork a child that unshares a user (the caller mapped to root inside, or to
   itself with --keep-id), network and mount namespace (slirpy.network's
   `fork_namespaced`) and waits on a pipe;
2. open and configure `tap0` in it like slirp4netns's `-c` (slirpy.netns's
   helper, joined by the child's PID), start the engine and services
   (slirpy.app's `Daemon`), bind the `--publish` forwards;
3. write the "go" byte: the child bind-mounts a resolv.conf naming N+3 over
   /etc/resolv.conf (in its own mount namespace: the host's file is
   untouched), restores default signal dispositions and execs CMD;
4. forward SIGTERM, SIGHUP and SIGINT to CMD (not a SIGINT that the terminal
   already delivered to CMD's process group), stop when CMD exits, print
   --stats, and return CMD's exit code (128+N when killed by signal N).

Errors are one line: exec failures are reported by the child itself (127 not
found, 126 not executable), set-up failures raise ConfigError (exit 1).

It must not parse arguments (slirpy.cli) nor know the daemon's start-up
order beyond the `Daemon` hooks (`setup`, `on_signal`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from typing import Any, NoReturn

from slirpy.config import ConfigError, NetworkModel, PortMapping, RunConfig
from slirpy.netns import NamespaceError, TapRequest, start_open_tap, target_for_pid
from slirpy.network import (
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWUSER,
    TAPNAME,
    _Libc,
    fork_namespaced,
)

MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 0x80000
IPV6_WAIT_S = 5.0
IFA_F_TENTATIVE = 0x40
GUEST_RESOLV_CONF = "/etc/resolv.conf"
log = logging.getLogger("slirpy.run")


def _say(text: str) -> None:
    sys.stderr.write(f"slirpy: {text}\n")
    sys.stderr.flush()


def guest_resolv_conf(net: NetworkModel, host_resolv_conf: str) -> str:
    """The resolv.conf CMD sees: N+3 (and prefix::3), the host's search domains."""
    lines = [f"nameserver {net.dns}"]
    if net.ipv6:
        lines.append(f"nameserver {net.dns6}")
    with contextlib.suppress(OSError, UnicodeDecodeError), open(host_resolv_conf) as f:
        lines += [ln.strip() for ln in f if ln.split()[:1] in (["search"], ["domain"])]
    return "\n".join(lines) + "\n"


def exec_status(err: OSError) -> tuple[int, str]:
    """Exit code and message for a failed exec, the way shells say it."""
    if err.errno in (errno.ENOENT, errno.ENOTDIR):
        return 127, "command not found"
    if err.errno == errno.EACCES:
        return 126, "permission denied (not executable)"
    if err.errno == errno.ENOEXEC:
        return 126, "cannot execute: exec format error"
    return 126, f"cannot execute: {os.strerror(err.errno or 0)}"


def find_program(name: str) -> str:
    """`name` resolved the way shells do: OSError(ENOENT) when nowhere on PATH.

    Unlike execvp(3), a PATH directory we may not search does not turn "not
    found" into "permission denied"; a file found but not executable does.
    """
    if "/" in name:
        return name
    found = shutil.which(name)
    if found:
        return found
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(d or ".", name)
        if os.path.isfile(candidate):
            return candidate  # exec says EACCES: 126
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def _has_ipv6_address(ifname: str) -> bool:
    """A global, no longer tentative address on `ifname` (in our netns)?"""
    with contextlib.suppress(OSError), open("/proc/net/if_inet6") as f:
        for line in f:
            _addr, _idx, _plen, scope, flags, name = line.split()
            if name == ifname and scope == "00" and not int(flags, 16) & IFA_F_TENTATIVE:
                return True
    return False


def _fast_ipv6_defaults() -> None:
    """In the new netns, before tap0 exists: no DAD, no router solicitation delay.

    DAD is pointless on a link where slirpy is the only other host, and with
    the 1 s solicitation delay it would keep COMMAND IPv6-less for ~2.5 s.
    New interfaces take these from `default`.
    """
    for name, value in (("accept_dad", "0"), ("router_solicitation_delay", "0")):
        with contextlib.suppress(OSError):
            _write_text(f"/proc/sys/net/ipv6/conf/default/{name}", value)


def _wait_ipv6(ifname: str) -> None:
    """Give COMMAND a usable IPv6 address (SLAAC from slirpy's RA) before it runs."""
    deadline = time.monotonic() + IPV6_WAIT_S
    while time.monotonic() < deadline and not _has_ipv6_address(ifname):
        time.sleep(0.01)


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _child(
    libc: _Libc, go_r: int, go_w: int, resolv: str, command: tuple[str, ...], ipv6: bool
) -> NoReturn:
    """In the new namespaces: wait for the network, mount resolv.conf, exec CMD."""
    os.close(go_w)
    if os.read(go_r, 1) != b"1":
        os._exit(1)  # slirpy failed to start and says why itself
    os.close(go_r)
    if ipv6:
        _wait_ipv6(TAPNAME)
    # Slave: host mounts still show up here, ours never go back (the kernel
    # already makes it so for a mount namespace owned by a new user namespace).
    libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None)
    if libc.mount(resolv.encode(), GUEST_RESOLV_CONF.encode(), None, MS_BIND, None) != 0:
        import ctypes

        e = ctypes.get_errno()
        os.write(2, f"slirpy: warning: cannot bind-mount {GUEST_RESOLV_CONF}: "
                    f"{os.strerror(e)}; DNS uses the host's resolv.conf\n".encode())
    # Python ignores SIGPIPE and SIGXFSZ; exec keeps ignored signals ignored.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execv(find_program(command[0]), list(command))
    except OSError as e:
        code, msg = exec_status(e)
        os.write(2, f"slirpy: {command[0]}: {msg}\n".encode())
        os._exit(code)
    os._exit(127)  # pragma: no cover - execv returns only by raising


def _terminal_sent_it() -> bool:
    """True when our terminal's foreground group is ours (Ctrl-C reached CMD too)."""
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
    return False


def _fwd_text(m: PortMapping) -> str:
    host = f"[{m.host_addr}]" if ":" in m.host_addr else m.host_addr
    return f"{host}:{m.host_port} -> guest {m.guest_port}/{'splice' if m.splice else m.proto}"


def _endpoint(addr: object, port: int | None) -> str:
    if port is None:
        return str(addr)
    return f"[{addr}]:{port}" if ":" in str(addr) else f"{addr}:{port}"


def _duration_text(ns: int) -> str:
    if ns < 1_000_000:
        return f"{ns / 1000:.0f} us"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e9:.1f} s"


def flow_line(ev: Any) -> str:
    """-v: one line for a FLOW_OPEN or FLOW_CLOSE event (slirpy.engine.Event).

    ``->`` is a flow the guest opened, ``<-`` one opened through a published
    port; the guest's end is always on the left. A close adds why, how long
    the flow lived and, for TCP, the bytes each way ("out" = from the guest).
    """
    from slirpy.engine import EV_FLOW_OPEN

    proto = {6: "tcp", 17: "udp"}.get(ev.proto, "icmp")
    info = ev.flow
    inbound = bool(info and info.inbound)
    if proto == "icmp":  # sport is the echo id; no ports
        guest, remote = str(ev.src), f"{ev.dst} id {ev.sport}"
    else:
        guest, remote = _endpoint(ev.src, ev.sport), _endpoint(ev.dst, ev.dport)
    text = f"{proto} {guest} {'<-' if inbound else '->'} {remote}"
    if ev.type == EV_FLOW_OPEN:
        return f"flow open  {text}"
    text = f"flow close {text} {info.reason if info else 'closed'}"
    if info is not None:
        text += f" after {_duration_text(info.duration_ns)}"
        if info.bytes_to_host is not None:
            text += f", out {info.bytes_to_host} B, in {info.bytes_to_guest} B"
    return text


def stats_table(counters: dict[str, int], services: dict[str, Any]) -> str:
    """The --stats summary: traffic each way, flows, drops by reason."""
    c = counters.get
    rows = [
        ("guest -> slirpy", f"{c('frames_in', 0)} frames", f"{c('bytes_in', 0)} bytes"),
        ("slirpy -> guest", f"{c('frames_out', 0)} frames", f"{c('bytes_out', 0)} bytes"),
        ("tcp to host / to guest", f"{c('tcp_bytes_to_host', 0)} bytes",
         f"{c('tcp_bytes_to_guest', 0)} bytes"),
        ("udp to host / to guest", f"{c('udp_datagrams_to_host', 0)} datagrams",
         f"{c('udp_datagrams_to_guest', 0)} datagrams"),
        ("tcp flows", f"{c('tcp_flows_opened', 0)} opened",
         f"{c('tcp_flows_inbound', 0)} inbound, {c('tcp_retransmits', 0)} retransmits"),
        ("udp flows", f"{c('udp_flows_opened', 0)} opened", ""),
        ("icmp flows", f"{c('icmp_flows_opened', 0)} opened",
         f"{c('icmp_echo_local', 0)} echoes answered by slirpy"),
    ]
    dns = services.get("dns")
    if isinstance(dns, dict) and dns:
        queries = int(dns.get("udp_queries", 0)) + int(dns.get("tcp_queries", 0))
        answered = int(dns.get("udp_answered", 0)) + int(dns.get("tcp_answered", 0))
        rows.append(("dns queries", f"{queries} queries", f"{answered} answered"))
    drops = {k: v for k, v in counters.items() if k.startswith("drop_") and v}
    lines = ["slirpy: statistics"]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines += [f"  {a:<{w0}}  {b:>{w1}}  {d}".rstrip() for a, b, d in rows]
    lines.append(f"  {'drops':<{w0}}  {sum(drops.values()):>{w1}}")
    lines += [f"    {k[5:]:<{w0 - 2}}  {v:>{w1}}" for k, v in sorted(drops.items())]
    return "\n".join(lines) + "\n"


class _Runner:
    """One `slirpy run`: the child's PID, the go pipe, the Daemon's hooks."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.child: int | None = None
        self.go_w: int | None = None
        self.counters: dict[str, int] = {}
        self.services: dict[str, Any] = {}

    def forward(self, sig: int) -> None:
        if sig == signal.SIGINT and _terminal_sent_it():
            return
        if self.child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child, sig)

    def go(self) -> None:
        if self.go_w is not None:
            try:
                os.write(self.go_w, b"1")
            finally:
                os.close(self.go_w)
                self.go_w = None

    def abort(self) -> None:
        """Set-up failed: the child reads EOF instead of "1" and exits."""
        if self.go_w is not None:
            os.close(self.go_w)
            self.go_w = None

    async def setup(self, daemon: Any, stack: AsyncExitStack) -> None:
        from slirpy.api import HostFwdError, HostFwdRequest
        from slirpy.portfwd import PortForwarder

        engine = daemon.engine

        def snapshot() -> None:  # runs before the engine closes (LIFO)
            self.counters = engine.counters()
            self.services = daemon.stats()

        stack.callback(snapshot)
        fwd = PortForwarder(engine, splice_helper=daemon.start_ns_helper)
        for m in self.cfg.publish:
            req = HostFwdRequest(m.proto, m.host_addr, m.host_port, str(daemon.net.guest),
                                 m.guest_port, m.splice)
            try:
                fwd.add_hostfwd(req)
            except HostFwdError as e:
                raise ConfigError(f"cannot publish {_fwd_text(m)}: {e}") from None
            if self.cfg.verbose:
                _say(f"published {_fwd_text(m)}")
        if self.cfg.verbose:
            # Last: runs first at shut-down, before snapshot() and the engine
            # close, so flows that closed as CMD exited are still logged.
            stack.callback(daemon.drain)
        self.go()

    def wait_child(self) -> int:
        """Reap CMD (forwarding signals meanwhile); its exit code, 128+N if killed."""
        assert self.child is not None
        old = {s: signal.signal(s, lambda n, _f: self.forward(n))
               for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            while True:
                try:
                    _pid, status = os.waitpid(self.child, 0)
                    break
                except InterruptedError:  # pragma: no cover - PEP 475 retries
                    continue
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        self.child = None
        code = os.waitstatus_to_exitcode(status)
        return 128 - code if code < 0 else code


def run(cfg: RunConfig, *, keep_id: bool = False) -> int:
    """`slirpy run`: returns CMD's exit code; ConfigError for set-up failures."""
    from slirpy.app import Daemon, _loop_factory, _preload, resolve_outbound

    logging.basicConfig(
        level=logging.DEBUG if cfg.verbose > 1 else logging.WARNING,
        stream=sys.stderr,
        format="slirpy: %(name)s: %(message)s",
    )
    keep_id = keep_id or cfg.keep_id
    net = cfg.net
    outbound4 = resolve_outbound(cfg.outbound_addr, 4)
    runner = _Runner(cfg)
    tmpdir = tempfile.mkdtemp(prefix="slirpy-run-")
    try:
        resolv = os.path.join(tmpdir, "resolv.conf")
        with open(resolv, "w") as f:
            f.write(guest_resolv_conf(net, cfg.resolv_conf))
        os.chmod(resolv, 0o644)
        libc = _Libc()
        go_r, go_w = os.pipe()
        runner.go_w = go_w
        try:
            runner.child = fork_namespaced(
                CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS,
                lambda: _child(libc, go_r, go_w, resolv, cfg.command, net.ipv6),
                keep_id=keep_id,
                prepare=_fast_ipv6_defaults if net.ipv6 else None,
            )
        except NamespaceError as e:
            runner.abort()
            raise ConfigError(str(e)) from None
        finally:
            os.close(go_r)
        try:
            code = _serve(runner, cfg, net, outbound4, Daemon, _loop_factory, _preload)
        except BaseException:
            runner.abort()
            if runner.child is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(runner.child, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(runner.child, 0)
            raise
        if cfg.stats:
            sys.stderr.write(stats_table(runner.counters, runner.services))
            sys.stderr.flush()
        return code
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _serve(
    runner: _Runner,
    cfg: RunConfig,
    net: NetworkModel,
    outbound4: str | None,
    daemon_cls: Any,
    loop_factory: Any,
    preload: Any,
) -> int:
    assert runner.child is not None
    target = target_for_pid(runner.child)
    try:
        pending = start_open_tap(
            target,
            TapRequest.for_net(net, TAPNAME, offload=cfg.offload, configure=True),
        )
        preload()  # overlaps with the helper child's work
        tap = pending.wait()
    except NamespaceError as e:
        raise ConfigError(str(e)) from None
    daemon = daemon_cls(
        net,
        tap,
        offload=cfg.offload,
        resolv_conf=cfg.resolv_conf,
        dns_upstreams=tuple((str(a), p) for a, p in cfg.dns_upstream_endpoints),
        outbound4=outbound4,
        watch_pid=runner.child,
        on_signal=runner.forward,
        setup=runner.setup,
        on_flow=(lambda ev: _say(flow_line(ev))) if cfg.verbose else None,
        ns_target=target,
    )
    with asyncio.Runner(loop_factory=loop_factory()) as aio:
        aio.run(daemon.serve())
    # The daemon stops when CMD exits (or, rarely, when CMD removed tap0:
    # then CMD goes on without a network and we still wait for it).
    return runner.wait_child()
