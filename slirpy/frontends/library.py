"""slirpy as a Python library: `Network` and `AsyncNetwork` (a front end).

This module owns the library's surface: it turns `AsyncNetwork(...)`'s
keyword arguments into one `DaemonOptions` and drives the same
`slirpy.daemon.Daemon` as the commands, in the caller's event loop
(`AsyncNetwork`) or in a thread of its own (`Network`). The target is a PID
(its network namespace, joined through its user namespace), a network
namespace path, or None to create a new user+net namespace held by a
sleeping child. Both classes offer `publish()`, `stats()`, `flows()`,
`set_policy()`, `get_policy()` and `close()` and are context managers.

It must not know the daemon's start-up order beyond its two phases (the TAP,
then `serve()`), nor print anything: errors are exceptions with one readable
line (`ConfigError`, `HostFwdError`, `ValueError`, `RuntimeError`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from slirpy.config import (
    DEFAULT_RESOLV_CONF,
    ConfigError,
    NetworkModel,
    normalize_dns_upstream,
    parse_cidr,
    parse_prefix6,
)
from slirpy.control.policy import Policy, load_policy
from slirpy.daemon import Daemon, event_loop_factory
from slirpy.options import DaemonOptions, JoinPath, JoinPid, NewNamespace, Target

__all__ = ["AsyncNetwork", "Network"]

TAPNAME = "tap0"


def _network_model(
    cidr: str, mtu: int, ipv6: bool, prefix6: str | None, host_loopback: bool
) -> NetworkModel:
    kw: dict[str, Any] = {
        "cidr": parse_cidr(cidr), "mtu": mtu, "ipv6": ipv6, "host_loopback": host_loopback
    }
    if prefix6 is not None:
        kw["prefix6"] = parse_prefix6(prefix6)
    return NetworkModel(**kw)


PolicySpec = str | os.PathLike[str] | Policy
"""A preset's name (public-only, host-only, none, allow-all), the path of a
policy file, or a `slirpy.control.policy.Policy`."""


def _policy(spec: PolicySpec) -> Policy:
    """ConfigError (one line) for a bad file; TypeError for anything else."""
    if isinstance(spec, Policy):
        return spec
    if isinstance(spec, str | os.PathLike):
        return load_policy(os.fspath(spec))
    raise TypeError(f"policy must be a preset name, a path or a Policy, not {type(spec).__name__}")


def _target(target: int | str | None, userns_path: str | None) -> Target:
    if target is None:
        return NewNamespace()
    if isinstance(target, int):
        return JoinPid(target, userns_path)
    return JoinPath(target, userns_path)


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
        policy: PolicySpec | None = None,
    ) -> None:
        self.net = _network_model(cidr, mtu, ipv6, ipv6_prefix, host_loopback)
        self.options = DaemonOptions(
            target=_target(target, userns_path),
            net=self.net,
            tapname=TAPNAME,
            configure=configure,
            offload=offload,
            dns_upstreams=tuple(normalize_dns_upstream(d) for d in dns_upstreams),
            resolv_conf=resolv_conf,
            outbound_addr=outbound_addr,
            # The library may run outside the main thread, where signal
            # handlers cannot be installed: signals are the caller's.
            handle_signals=False,
            policy=None if policy is None else _policy(policy),
        )
        self._daemon: Daemon | None = None
        self._task: asyncio.Task[int] | None = None

    @property
    def pid(self) -> int | None:
        """The PID whose namespaces are served (the holder's when created here)."""
        if self._daemon is not None and self._daemon.pid is not None:
            return self._daemon.pid
        target = self.options.target
        return target.pid if isinstance(target, JoinPid) else None

    def command(self, *argv: str) -> list[str]:
        """argv that runs `argv` inside the namespace (as root there), via nsenter."""
        if self.pid is None:
            raise ValueError("command() needs a PID target or a namespace created here")
        return ["nsenter", "-t", str(self.pid), "-U", "-n", "--preserve-credentials", *argv]

    async def start(self) -> AsyncNetwork:
        """Open the TAP, start the engine and services; return once serving."""
        # Everything the forked helpers use is imported before they fork:
        # this process may have threads (an import lock held across fork()).
        import slirpy.control.portfwd
        import slirpy.engine
        import slirpy.host.ifconfig  # noqa: F401

        if self._task is not None:
            raise RuntimeError("this network is already started")
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        daemon = Daemon(self.options)
        try:
            pending = daemon.start_tap()
            daemon.attach_tap(await asyncio.to_thread(daemon.wait_tap, pending))
        except BaseException:
            daemon.release()
            raise
        self._daemon = daemon
        self._task = loop.create_task(daemon.serve(on_ready=lambda: ready.set_result(None)))
        await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            try:
                self._task.result()
            finally:
                self._task = None
                self._daemon = None
                daemon.release()
            raise ConfigError("slirpy stopped while starting")
        return self

    def _running(self) -> Daemon:
        if self._daemon is None or self._task is None:
            raise RuntimeError("the network is not started")
        return self._daemon

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
        from slirpy.control.api import HostFwdRequest

        daemon = self._running()
        if proto not in ("tcp", "udp", "tcp4", "udp4", "tcp6", "udp6"):
            raise ValueError(f"proto must be tcp or udp, got {proto!r}")
        host = str(ipaddress.ip_address(host_addr))
        guest = str(ipaddress.ip_address(guest_addr)) if guest_addr else str(self.net.guest)
        for what, port in (("host_port", host_port), ("guest_port", guest_port)):
            if not 1 <= port <= 65535:
                raise ValueError(f"{what} must be 1..65535, got {port}")
        return daemon.forwarder.add_hostfwd(
            HostFwdRequest(proto, host, host_port, guest, guest_port, splice)
        )

    def unpublish(self, fwd_id: int) -> None:
        """Remove a forward added by publish() (KeyError for an unknown id)."""
        self._running().forwarder.remove_hostfwd(fwd_id)

    def stats(self) -> dict[str, Any]:
        """Engine counters (frames, bytes, drops by reason, flows) + DHCP/DNS stats."""
        return self._running().forwarder.get_stats()

    def flows(self) -> list[dict[str, object]]:
        """The engine's open flows (proto, guest and remote endpoints, state)."""
        return self._running().forwarder.list_flows()

    def set_policy(self, policy: PolicySpec) -> None:
        """Replace the egress policy now: new flows follow it, open flows it
        denies are reset. ConfigError for a bad policy (nothing changes)."""
        self._running().set_policy(_policy(policy))

    def get_policy(self) -> Policy | None:
        """The egress policy in force (None: none was set, all allowed)."""
        return self._running().get_policy()

    async def close(self) -> None:
        """Stop slirpy (engine, listeners, services) and a namespace created here."""
        task, self._task = self._task, None
        daemon, self._daemon = self._daemon, None
        if daemon is None:
            return
        try:
            if task is not None:
                daemon.stop(0)
                await task
        finally:
            daemon.release()

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
        if self._loop is not None:
            raise RuntimeError("this network is already started")
        loop = event_loop_factory()()
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

    def set_policy(self, policy: PolicySpec) -> None:
        """See AsyncNetwork.set_policy."""
        resolved = _policy(policy)  # read a file here, not in the loop's thread
        self._call(lambda: self._anet.set_policy(resolved))

    def get_policy(self) -> Policy | None:
        return self._call(self._anet.get_policy)

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
