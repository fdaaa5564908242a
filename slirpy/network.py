"""slirpy as a Python library: `Network` and `AsyncNetwork`, and new namespaces.

This module owns two things:

* creating namespaces: `fork_namespaced()` forks a child that unshares a new
  user namespace (mapping the caller to root inside, or to itself with
  `keep_id`) plus whatever other namespaces are asked for, and reports
  success or a one-line error (`userns_error()` says which sysctl to change
  when user namespaces are disabled). `slirpy run` and the library use it.
* the library: `AsyncNetwork` runs one slirpy (`slirpy.app.Daemon`) in the
  caller's event loop, attached to a given namespace (a PID or a netns path)
  or to one it creates; `Network` is the same thing for synchronous code,
  running the event loop in a thread of its own. Both offer `publish()`,
  `stats()` and `close()` and are context managers.

Python 3.11 has no `os.unshare` and no `os.mount`: the forked child calls
libc's `unshare(2)` (and `slirpy.run` calls `mount(2)`) through ctypes. They
run once per namespace, in a child that is about to exec or to sleep, so they
do not belong in the C engine's interface (which is the data path's), and the
ctypes functions are looked up in the parent before the fork, so the child
imports nothing.

It must not parse command lines or print anything: errors are exceptions
with one readable line (`NamespaceError`, `ConfigError`, `HostFwdError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import ipaddress
import os
import signal
import threading
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any, NoReturn

from slirpy.config import (
    DEFAULT_RESOLV_CONF,
    ConfigError,
    NetworkModel,
    normalize_dns_upstream,
    parse_cidr,
    parse_dns_upstream,
    parse_prefix6,
)
from slirpy.netns import NamespaceError, NamespaceTarget, PendingTap, TapRequest

__all__ = [
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWUSER",
    "AsyncNetwork",
    "Network",
    "fork_namespaced",
    "userns_error",
]

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
TAPNAME = "tap0"


class _Libc:
    """The libc calls Python 3.11 lacks, resolved before any fork."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.unshare = libc.unshare
        self.unshare.argtypes = (ctypes.c_int,)
        self.prctl = libc.prctl
        self.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                               ctypes.c_ulong)
        self.mount = libc.mount
        self.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                               ctypes.c_ulong, ctypes.c_void_p)

    @staticmethod
    def check(rc: int, what: str) -> None:
        if rc != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"{what}: {os.strerror(e)}")


def _sysctl(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def userns_error(err: OSError, proc_sys: str = "/proc/sys") -> str:
    """One line saying why unshare(CLONE_NEWUSER) failed and what to do."""
    base = "cannot create a user namespace"
    if _sysctl(f"{proc_sys}/kernel/unprivileged_userns_clone") == "0" and os.geteuid() != 0:
        return (
            f"{base}: unprivileged user namespaces are disabled "
            "(kernel.unprivileged_userns_clone=0); enable them with "
            "'sysctl -w kernel.unprivileged_userns_clone=1'"
        )
    if _sysctl(f"{proc_sys}/user/max_user_namespaces") == "0":
        return (
            f"{base}: user namespaces are disabled (user.max_user_namespaces=0); "
            "enable them with 'sysctl -w user.max_user_namespaces=15000'"
        )
    if _sysctl(f"{proc_sys}/kernel/apparmor_restrict_unprivileged_userns") == "1":
        return (
            f"{base}: AppArmor restricts unprivileged user namespaces "
            "(kernel.apparmor_restrict_unprivileged_userns=1); allow them with "
            "'sysctl -w kernel.apparmor_restrict_unprivileged_userns=0' or an AppArmor profile"
        )
    if err.errno == errno.ENOSPC:
        limit = _sysctl(f"{proc_sys}/user/max_user_namespaces") or "?"
        return (
            f"{base}: the limit on user namespaces is reached "
            f"(user.max_user_namespaces={limit}); raise it with sysctl"
        )
    if err.errno == errno.EPERM:
        return (
            f"{base}: not permitted (a seccomp filter or the container slirpy runs in "
            "forbids unshare(CLONE_NEWUSER)); run slirpy where user namespaces are allowed"
        )
    return f"{base}: {os.strerror(err.errno or 0)}"


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _enter_new_namespaces(libc: _Libc, flags: int, keep_id: bool) -> None:
    """In the forked child: unshare, then map our uid/gid (root inside, or keep_id)."""
    uid, gid = os.geteuid(), os.getegid()
    # The child must not outlive slirpy: its network would be gone anyway.
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:
        libc.check(libc.unshare(flags), "unshare")
    except OSError as e:
        if flags & CLONE_NEWUSER:
            raise NamespaceError(userns_error(e)) from None
        raise NamespaceError(f"cannot create namespaces: {e.strerror}") from None
    if flags & CLONE_NEWUSER:
        inside_uid, inside_gid = (uid, gid) if keep_id else (0, 0)
        try:
            # "deny" first: an unprivileged process may write gid_map only then.
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"{inside_uid} {uid} 1\n")
            _write("/proc/self/gid_map", f"{inside_gid} {gid} 1\n")
        except OSError as e:
            raise NamespaceError(f"cannot map the user in the new user namespace: {e}") from None


def fork_namespaced(
    flags: int,
    then: Callable[[], NoReturn],
    *,
    keep_id: bool = False,
    prepare: Callable[[], None] | None = None,
) -> int:
    """Fork a child in new namespaces (`flags`: CLONE_NEW*), run `then` in it.

    Returns the child's PID once its namespaces exist, its user is mapped and
    `prepare` (if any) ran in it, so that /proc/PID/ns/* can be joined;
    raises NamespaceError with the child's one-line reason otherwise (the
    child is reaped). `then` runs in the child and must end with os._exit or
    an exec.
    """
    libc = _Libc()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        rc = 1
        try:
            os.close(rfd)
            try:
                _enter_new_namespaces(libc, flags, keep_id)
                if prepare is not None:
                    prepare()
            except NamespaceError as e:
                os.write(wfd, str(e).encode() + b"\n")
                os._exit(1)
            os.write(wfd, b"ok\n")
            os.close(wfd)
            then()
        except BaseException as e:  # nothing may escape a forked child
            with contextlib.suppress(OSError):
                os.write(2, f"slirpy: {e}\n".encode())
        finally:
            os._exit(rc)
    os.close(wfd)
    try:
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = os.read(rfd, 4096)
            if not chunk:
                break
            reply += chunk
    finally:
        os.close(rfd)
    if reply != b"ok\n":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        text = reply.decode(errors="replace").strip()
        raise NamespaceError(text or "the namespace child died before creating its namespaces")
    return pid


def _hold(keep: int) -> NoReturn:
    """The namespace holder: drop every other fd, sleep until `keep` hangs up."""
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
    with contextlib.suppress(OSError):
        while os.read(keep, 1):
            pass
    os._exit(0)


def _network_model(
    cidr: str, mtu: int, ipv6: bool, prefix6: str | None, host_loopback: bool
) -> NetworkModel:
    kw: dict[str, Any] = {
        "cidr": parse_cidr(cidr), "mtu": mtu, "ipv6": ipv6, "host_loopback": host_loopback
    }
    if prefix6 is not None:
        kw["prefix6"] = parse_prefix6(prefix6)
    return NetworkModel(**kw)


class AsyncNetwork:
    """One slirpy in the running event loop, for one network namespace.

    `target` is a PID (its network namespace, joined through its user
    namespace), a network namespace path, or None to create a new user+net
    namespace held by a sleeping child (its PID is `pid`; run commands in it
    with `command()`). The guest interface `tap0` is configured like
    slirp4netns's `-c` (N+100/prefix, default route via N+2, `lo` up) unless
    `configure=False`.

    ``async with AsyncNetwork() as net: net.publish(8080, 80)``
    """

    def __init__(
        self,
        target: int | str | None = None,
        *,
        userns_path: str | None = None,
        cidr: str = "10.0.2.0/24",
        mtu: int = 1500,
        ipv6: bool = False,
        ipv6_prefix: str | None = None,
        host_loopback: bool = True,
        dns_upstreams: Sequence[str] = (),
        resolv_conf: str = DEFAULT_RESOLV_CONF,
        outbound_addr: str | None = None,
        configure: bool = True,
        offload: bool = True,
    ) -> None:
        self.net = _network_model(cidr, mtu, ipv6, ipv6_prefix, host_loopback)
        self._target = target
        self._ns_target: NamespaceTarget | None = None
        self._userns_path = userns_path
        self._dns_upstreams = tuple(normalize_dns_upstream(d) for d in dns_upstreams)
        self._resolv_conf = resolv_conf
        self._outbound = outbound_addr
        self._configure = configure
        self._offload = offload
        self._holder_pid: int | None = None
        self._holder_fd: int | None = None
        self._daemon: Any = None
        self._forwarder: Any = None
        self._task: asyncio.Task[int] | None = None

    @property
    def pid(self) -> int | None:
        """The PID whose namespaces are served (the holder's when created here)."""
        if self._holder_pid is not None:
            return self._holder_pid
        return self._target if isinstance(self._target, int) else None

    def command(self, *argv: str) -> list[str]:
        """argv that runs `argv` inside the namespace (as root there), via nsenter."""
        if self.pid is None:
            raise ValueError("command() needs a PID target or a namespace created here")
        return ["nsenter", "-t", str(self.pid), "-U", "-n", "--preserve-credentials", *argv]

    def _create_namespace(self) -> None:
        rfd, wfd = os.pipe()
        try:
            self._holder_pid = fork_namespaced(
                CLONE_NEWUSER | CLONE_NEWNET, lambda: _hold(rfd)
            )
        finally:
            os.close(rfd)
        self._holder_fd = wfd

    def _start_tap(self) -> PendingTap:
        from slirpy.netns import start_open_tap, target_for_path, target_for_pid

        if self._target is None:
            self._create_namespace()
            assert self._holder_pid is not None
            target = target_for_pid(self._holder_pid)
        elif isinstance(self._target, int):
            target = target_for_pid(self._target)
        else:
            target = target_for_path(self._target, self._userns_path)
        if self._userns_path and isinstance(self._target, int):
            target = type(target)(target.netns_path, self._userns_path)
        self._ns_target = target  # for the helper of spliced forwards
        net = self.net
        return start_open_tap(
            target,
            TapRequest.for_net(net, TAPNAME, offload=self._offload, configure=self._configure),
        )

    async def start(self) -> AsyncNetwork:
        """Open the TAP, start the engine and services; return once serving."""
        # Everything the forked helpers use is imported before they fork:
        # this process may have threads (an import lock held across fork()).
        import slirpy.engine
        import slirpy.ifconfig  # noqa: F401
        from slirpy.app import Daemon, resolve_outbound
        from slirpy.portfwd import PortForwarder

        if self._task is not None:
            raise RuntimeError("this network is already started")
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        async def setup(daemon: Daemon, stack: AsyncExitStack) -> None:
            self._forwarder = PortForwarder(
                daemon.engine, stats=daemon.stats, splice_helper=daemon.start_ns_helper
            )
            ready.set_result(None)

        try:
            outbound4 = resolve_outbound(self._outbound, 4)
            pending = self._start_tap()
            tap = await asyncio.to_thread(pending.wait)
        except NamespaceError as e:
            self._reap_holder()
            raise ConfigError(str(e)) from None
        except BaseException:
            self._reap_holder()
            raise
        self._daemon = Daemon(
            self.net,
            tap,
            offload=self._offload,
            resolv_conf=self._resolv_conf,
            dns_upstreams=tuple(
                (str(a), p) for a, p in (parse_dns_upstream(d) for d in self._dns_upstreams)
            ),
            outbound4=outbound4,
            watch_pid=self._target if isinstance(self._target, int) else None,
            handle_signals=False,
            setup=setup,
            ns_target=self._ns_target,
        )
        self._task = loop.create_task(self._daemon.serve())
        await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            try:
                self._task.result()
            finally:
                self._task = None
                self._reap_holder()
            raise ConfigError("slirpy stopped while starting")
        return self

    def publish(
        self,
        host_port: int,
        guest_port: int,
        *,
        proto: str = "tcp",
        host_addr: str = "127.0.0.1",
        guest_addr: str | None = None,
        splice: bool = False,
    ) -> int:
        """Forward host_addr:host_port to the guest; returns the forward's id.

        `proto` is tcp or udp (tcp4/tcp6/udp4/udp6 as in the API socket);
        host_port 0 is not allowed. `splice`: TCP only, relay by splice()
        in the guest's namespace (the guest sees its own address as the
        source, not N+2). Raises HostFwdError (port in use...).
        """
        from slirpy.api import HostFwdRequest

        if self._forwarder is None:
            raise RuntimeError("the network is not started")
        if proto not in ("tcp", "udp", "tcp4", "udp4", "tcp6", "udp6"):
            raise ValueError(f"proto must be tcp or udp, got {proto!r}")
        host = str(ipaddress.ip_address(host_addr))
        guest = str(ipaddress.ip_address(guest_addr)) if guest_addr else str(self.net.guest)
        for what, port in (("host_port", host_port), ("guest_port", guest_port)):
            if not 1 <= port <= 65535:
                raise ValueError(f"{what} must be 1..65535, got {port}")
        return self._forwarder.add_hostfwd(
            HostFwdRequest(proto, host, host_port, guest, guest_port, splice)
        )

    def unpublish(self, fwd_id: int) -> None:
        """Remove a forward added by publish() (KeyError for an unknown id)."""
        if self._forwarder is None:
            raise RuntimeError("the network is not started")
        self._forwarder.remove_hostfwd(fwd_id)

    def stats(self) -> dict[str, Any]:
        """Engine counters (frames, bytes, drops by reason, flows) + DHCP/DNS stats."""
        if self._forwarder is None:
            raise RuntimeError("the network is not started")
        return self._forwarder.get_stats()

    def flows(self) -> list[dict[str, object]]:
        """The engine's open flows (proto, guest and remote endpoints, state)."""
        if self._forwarder is None:
            raise RuntimeError("the network is not started")
        return self._forwarder.list_flows()

    def _reap_holder(self) -> None:
        if self._holder_fd is not None:
            os.close(self._holder_fd)  # the holder reads EOF and exits
            self._holder_fd = None
        if self._holder_pid is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._holder_pid, 0)
            self._holder_pid = None

    async def close(self) -> None:
        """Stop slirpy (engine, listeners, services) and a namespace created here."""
        task, self._task = self._task, None
        self._forwarder = None
        try:
            if task is not None:
                self._daemon.stop(0)
                await task
        finally:
            self._reap_holder()

    async def __aenter__(self) -> AsyncNetwork:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Network:
    """`AsyncNetwork` for synchronous code: its event loop runs in a thread.

    ``with Network() as net: net.publish(8080, 80); subprocess.run(net.command("ip", "a"))``
    Methods may be called from any thread.
    """

    def __init__(self, target: int | str | None = None, **kw: Any) -> None:
        self._anet = AsyncNetwork(target, **kw)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def net(self) -> NetworkModel:
        return self._anet.net

    @property
    def pid(self) -> int | None:
        return self._anet.pid

    def command(self, *argv: str) -> list[str]:
        return self._anet.command(*argv)

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run fn in the loop's thread (the engine is not thread-safe)."""
        if self._loop is None:
            raise RuntimeError("the network is not started")

        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result()

    def start(self) -> Network:
        from slirpy.app import _loop_factory

        if self._loop is not None:
            raise RuntimeError("this network is already started")
        loop = _loop_factory()()
        thread = threading.Thread(target=loop.run_forever, name="slirpy", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            # In the loop's thread: the namespace holder is forked there, and
            # its parent-death signal follows that thread's life.
            asyncio.run_coroutine_threadsafe(self._anet.start(), loop).result()
        except BaseException:
            self._stop_loop()
            raise
        return self

    def publish(self, host_port: int, guest_port: int, **kw: Any) -> int:
        """See AsyncNetwork.publish."""
        return self._call(lambda: self._anet.publish(host_port, guest_port, **kw))

    def unpublish(self, fwd_id: int) -> None:
        self._call(lambda: self._anet.unpublish(fwd_id))

    def stats(self) -> dict[str, Any]:
        """See AsyncNetwork.stats."""
        return self._call(self._anet.stats)

    def flows(self) -> list[dict[str, object]]:
        return self._call(self._anet.flows)

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    def close(self) -> None:
        """Stop slirpy and a namespace created here; idempotent."""
        if self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._anet.close(), self._loop).result()
        finally:
            self._stop_loop()

    def __enter__(self) -> Network:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
