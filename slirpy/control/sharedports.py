"""pasta's published ports in the shared-address model: -t/-u, and `auto`.

This module owns the host listeners of pasta-style port options: it binds
them (both families when no address is given, IPv6-only sockets so that the
IPv4 one can coexist; a host without IPv6 just gets the IPv4 one), hands
them to the engine (TCP in "split" mode: loopback clients spliced to the
guest's own address as pasta does, or with --host-lo-to-ns-lo to the
namespace's loopback; everyone else through the TAP with their own source
address), waits out a previous stack still holding the port for
a short while (Podman's restart race), and for `auto` mirrors the ports the
guest listens on, rescanned every second. Errors read like pasta's:
`Failed to bind port P (<strerror>) for option '-t SPEC'`.

It must not parse port specs (slirpy.frontends.pasta_ports does) or relay
any data (the engine does).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from slirpy.config import ConfigError
from slirpy.engine import PROTO_TCP, PROTO_UDP, Engine, FdConsumedError
from slirpy.options import AutoForward, HostLoopbackForward, PortMapping

__all__ = ["BIND_RETRY_S", "NsSocketMaker", "SharedPorts"]

# Makes a socket in the guest's namespace bound to its loopback:
# (proto, family, port) -> fd (slirpy.engine.ns_loopback_socket_at, or
# ns_loopback_socket through a namespace helper when slirpy confines itself).
NsSocketMaker = Callable[[int, int, int], int]

# A stack that Podman replaced a moment ago may still hold the port while it
# notices its namespace is gone: retry "in use" for this long before failing.
BIND_RETRY_S = 1.5
_RETRY_STEP_S = 0.02
LISTEN_BACKLOG = 1024
# Listener ids of this module: above any the API's table would give.
_FIRST_ID = 1 << 30


@dataclass(frozen=True)
class _Key:
    proto: str
    family: int
    host_addr: str
    host_port: int


def _describe_option(m: PortMapping) -> str:
    if m.option:
        return m.option
    flag = "-t" if m.proto == "tcp" else "-u"
    return f"{flag} {m.host_port}:{m.guest_port}"


class SharedPorts:
    """The pasta-style listeners of one daemon."""

    def __init__(
        self,
        engine: Engine,
        *,
        guest4: IPv4Address | None,
        guest6: IPv6Address | None,
        splice_ready: Callable[[], None] | None = None,
        ns_socket: NsSocketMaker | None = None,
        ns_ipv6: bool = True,
        host_lo_to_ns_lo: bool = False,
    ) -> None:
        self._engine = engine
        # pasta's --host-lo-to-ns-lo: spliced (loopback) clients of -t ports
        # reach the namespace's loopback, not the guest's address.
        self._host_lo_to_ns_lo = host_lo_to_ns_lo
        self._ns_socket = ns_socket
        self._ns_families = (4, 6) if ns_ipv6 else (4,)
        # -T/-U listeners in the namespace: (proto, family, ns_port) -> id.
        self._ns_ids: dict[tuple[str, int, int], int] = {}
        self._guest = {4: guest4, 6: guest6}
        self._splice_ready = splice_ready
        self._ids: dict[_Key, int] = {}
        self._next_id = _FIRST_ID
        # auto: ports mirrored now, per (proto, direction).
        self._auto: dict[str, set[int]] = {}
        self._published: list[PortMapping] = []

    # --------------------------------------------------------------- static

    def publish(self, m: PortMapping) -> None:
        """Bind and hand over `m`; ConfigError with pasta's wording if it cannot be."""
        self._publish(m)
        self._published.append(m)

    def readdress(self, guest4: IPv4Address | None, guest6: IPv6Address | None) -> list[str]:
        """The guest's addresses changed (the host's did): listeners lead to
        the new ones. Returns the errors of ports that could not be bound again."""
        if self._guest == {4: guest4, 6: guest6}:
            return []
        self._guest = {4: guest4, 6: guest6}
        self.close_all()
        self._auto.clear()  # the next scan publishes them again
        errors = []
        for m in self._published:
            try:
                self._publish(m)
            except (ConfigError, OSError) as e:
                errors.append(str(e))
        return errors

    def _publish(self, m: PortMapping) -> None:
        families = self._families(m)
        for fam in families:
            host = m.host_addr or ("0.0.0.0" if fam == 4 else "::")
            try:
                self._add(m.proto, fam, host, m.host_port, m.guest_port,
                          split=m.proto == "tcp" and m.splice_loopback,
                          device=m.bind_device, wildcard_v6=not m.host_addr)
            except OSError as e:
                if not m.host_addr and fam == 6 and e.errno in (
                    errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL,
                ):
                    continue  # IPv6 disabled on this host: IPv4 alone serves
                if m.optional:
                    continue
                raise ConfigError(
                    f"Failed to bind port {m.host_port} ({e.strerror or e}) for option "
                    f"'{_describe_option(m)}', exiting"
                ) from None

    def _families(self, m: PortMapping) -> list[int]:
        if m.host_addr:
            fam = ip_address(m.host_addr).version
            if self._guest[fam] is None:
                raise ConfigError(
                    f"{_describe_option(m)}: the namespace has no IPv{fam} address"
                )
            return [fam]
        return [fam for fam in (4, 6) if self._guest[fam] is not None]

    def _add(self, proto: str, fam: int, host: str, host_port: int, guest_port: int, *,
             split: bool, device: str | None, wildcard_v6: bool) -> None:
        key = _Key(proto, fam, host, host_port)
        if key in self._ids:
            return
        sock = self._bind(proto, fam, host, host_port, device)
        guest = self._guest[fam]
        assert guest is not None
        if split and self._splice_ready is not None:
            try:
                self._splice_ready()
            except OSError:
                split = False  # no namespace sockets: every client takes the TAP
        lid = self._next_id
        self._next_id += 1
        try:
            self._engine.add_listener(
                sock.fileno(), PROTO_TCP if proto == "tcp" else PROTO_UDP, guest, guest_port,
                lid, mode="split" if split else "tap",
                splice_to_loopback=split and self._host_lo_to_ns_lo,
            )
        except FdConsumedError:
            sock.detach()
            raise
        except OSError:
            sock.close()
            raise
        sock.detach()
        self._ids[key] = lid

    @staticmethod
    def _bind(proto: str, fam: int, host: str, port: int, device: str | None) -> socket.socket:
        deadline = time.monotonic() + BIND_RETRY_S
        while True:
            sock = socket.socket(socket.AF_INET if fam == 4 else socket.AF_INET6,
                                 socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
            try:
                if proto == "tcp":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if fam == 6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if device:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                                    device.encode())
                sock.bind((host, port))
                if proto == "tcp":
                    sock.listen(LISTEN_BACKLOG)
                return sock
            except OSError as e:
                sock.close()
                if e.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                    raise
            time.sleep(_RETRY_STEP_S)

    def close_all(self) -> None:
        """Remove every listener now (the namespace is gone: free the ports first)."""
        for key in list(self._ids):
            self._remove(key)

    # ---------------------------------------------------------------- -T/-U

    def publish_ns(self, fwd: HostLoopbackForward) -> None:
        """pasta's -T/-U: the namespace's loopback port to the host's; ConfigError."""
        if self._ns_socket is None:
            raise ConfigError(f"{fwd.option or fwd.proto}: no namespace sockets for -T/-U")
        proto = PROTO_TCP if fwd.proto == "tcp" else PROTO_UDP
        for fam in self._ns_families:
            key = (fwd.proto, fam, fwd.ns_port)
            if key in self._ns_ids:
                continue
            try:
                fd = self._ns_socket(proto, fam, fwd.ns_port)
            except OSError as e:
                if fam == 6 or fwd.optional:
                    continue  # no IPv6 loopback in the namespace; `all` tolerates
                flag = "-T" if fwd.proto == "tcp" else "-U"
                raise ConfigError(
                    f"Failed to bind port {fwd.ns_port} ({e.strerror or e}) for option "
                    f"'{fwd.option or f'{flag} {fwd.ns_port}'}', exiting"
                ) from None
            lid = self._next_id
            self._next_id += 1
            lo = ip_address("127.0.0.1" if fam == 4 else "::1")
            try:
                self._engine.add_listener(fd, proto, lo, fwd.host_port, lid, mode="to_host_lo")
            except FdConsumedError:
                continue
            except OSError:
                os.close(fd)
                continue
            self._ns_ids[key] = lid

    def _remove_ns(self, key: tuple[str, int, int]) -> None:
        lid = self._ns_ids.pop(key)
        with contextlib.suppress(OSError):
            self._engine.remove_listener(lid)

    def ns_ports(self, proto: str) -> set[int]:
        """Namespace ports this module listens on (never mirrored back by -t auto)."""
        return {port for p, _fam, port in self._ns_ids if p == proto}

    def _remove(self, key: _Key) -> None:
        lid = self._ids.pop(key)
        with contextlib.suppress(OSError):
            self._engine.remove_listener(lid)

    # ----------------------------------------------------------------- auto

    def mirror(self, auto: AutoForward, bound: Iterable[int], own: Iterable[int] = ()) -> None:
        """Make the `auto` listeners of `auto.proto` match the guest's `bound` ports.

        `own` are ports the guest side has because of us (-T listeners):
        never mirrored back.
        """
        want = {p for p in bound if p not in auto.excluded} - set(own)
        slot = f"{auto.proto}/{auto.direction}"
        have = self._auto.setdefault(slot, set())
        if auto.direction == "out":
            self._mirror_out(auto, want, have)
            return
        for port in sorted(want - have):
            m = PortMapping(auto.proto, auto.host_addr or "", port, port,
                            splice_loopback=auto.proto == "tcp", optional=True)
            with contextlib.suppress(ConfigError, OSError):
                self.publish(m)
            if any(k.proto == auto.proto and k.host_port == port for k in self._ids):
                have.add(port)
        for port in sorted(have - want):
            for key in [k for k in self._ids if k.proto == auto.proto and k.host_port == port]:
                self._remove(key)
            have.discard(port)

    def _mirror_out(self, auto: AutoForward, want: set[int], have: set[int]) -> None:
        """-T/-U auto: host loopback ports appear on the namespace's loopback."""
        for port in sorted(want - have):
            fwd = HostLoopbackForward(auto.proto, port, port, optional=True)
            with contextlib.suppress(ConfigError, OSError):
                self.publish_ns(fwd)
            if any(k[0] == auto.proto and k[2] == port for k in self._ns_ids):
                have.add(port)
        for port in sorted(have - want):
            for key in [k for k in self._ns_ids if k[0] == auto.proto and k[2] == port]:
                self._remove_ns(key)
            have.discard(port)

    def host_ports(self, proto: str) -> set[int]:
        """Host ports this module listens on (for excluding them from -T/-U auto)."""
        return {k.host_port for k in self._ids if k.proto == proto}

