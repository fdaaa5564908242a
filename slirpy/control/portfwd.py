"""Forwarded ports: bind host listeners and hand them to the engine.

This module owns the `ApiHandler` side of the API socket for port forwards:
it binds the host socket (TCP listen or UDP bind, IPv4 or IPv6), gives the fd
to the engine, which accepts and relays in C, and keeps the table of forwards
(ids from 1, never reused; a failed add uses no id, as in slirp4netns). It must
not relay any data itself.

A spliced forward (TCP, ``splice=True``) first makes sure the engine can
get sockets in the guest's namespace (`splice_helper`, from
slirpy.daemon.Daemon: namespace fds for csrc/nssock.c, or the namespace
helper when confined), then marks the listener so that the engine relays
it with splice() (csrc/splice.c).

An add either fully succeeds (bound, listening, in the engine, in the table) or
leaves nothing behind: the socket is closed and no id is taken.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from ipaddress import ip_address

from slirpy.control.api import HostFwd, HostFwdError, HostFwdRequest, HostFwdTable
from slirpy.engine import PROTO_TCP, PROTO_UDP, Engine, FdConsumedError
from slirpy.host.netns import NamespaceError

LISTEN_BACKLOG = 1024


def _bind(fwd: HostFwdRequest) -> socket.socket:
    """A bound (and for TCP listening) socket for `fwd`; HostFwdError if it cannot be."""
    tcp = fwd.transport == "tcp"
    sock = socket.socket(fwd.host_family, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    try:
        if tcp:
            # Rebinding while old connections sit in TIME-WAIT must work (a
            # restarted container gets its port back). Not for UDP: there
            # SO_REUSEADDR lets two sockets share a port, so a port already
            # forwarded (or used by a program that also set it) would not be
            # reported as in use.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fwd.host_family == socket.AF_INET6:
            # Explicit either way, whatever net.ipv6.bindv6only says: "::" with
            # proto tcp/udp serves IPv4 clients too, tcp6/udp6 only IPv6 ones.
            v6only = 1 if fwd.proto.endswith("6") else 0
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        sock.bind((fwd.host_addr, fwd.host_port))
        if tcp:
            sock.listen(LISTEN_BACKLOG)
    except OSError as e:
        sock.close()
        raise HostFwdError(str(e)) from None
    return sock


class PortForwarder:
    """Implements slirpy.api.ApiHandler on top of one engine."""

    def __init__(
        self,
        engine: Engine,
        *,
        stats: Callable[[], dict[str, object]] | None = None,
        splice_helper: Callable[[], None] | None = None,
    ) -> None:
        self._engine = engine
        self._table = HostFwdTable()
        self._stats = stats
        self._splice_helper = splice_helper

    def add_hostfwd(self, fwd: HostFwdRequest) -> int:
        if fwd.splice:
            if fwd.transport != "tcp":
                raise HostFwdError("splice: TCP forwards only")
            if self._splice_helper is None:
                raise HostFwdError("splice: not available here")
            try:
                self._splice_helper()
            except (OSError, NamespaceError) as e:
                raise HostFwdError(f"splice: {e}") from None
        sock = _bind(fwd)
        # The engine is told the id the table will give; the table only takes it
        # once the engine has the fd, so a failure here consumes no id.
        fwd_id = self._table.next_id
        try:
            self._engine.add_listener(
                sock.fileno(),
                PROTO_TCP if fwd.transport == "tcp" else PROTO_UDP,
                ip_address(fwd.guest_addr),
                fwd.guest_port,
                fwd_id,
                splice=fwd.splice,
            )
        except FdConsumedError as e:
            sock.detach()  # the engine took and closed the fd
            raise HostFwdError(str(e)) from None
        except OSError as e:
            sock.close()
            raise HostFwdError(str(e)) from None
        sock.detach()  # the engine owns (and closes) the fd now
        entry = self._table.add(fwd)
        assert entry.id == fwd_id
        return entry.id

    def list_hostfwd(self) -> list[HostFwd]:
        return self._table.entries()

    def remove_hostfwd(self, fwd_id: int) -> None:
        self._table.get(fwd_id)  # KeyError for an unknown id: "bad arguments.id"
        # Engine first: if it failed (OSError: "slirp_remove_hostfwd failed"), the
        # forward would still be listed, which is the truth.
        self._engine.remove_listener(fwd_id)
        self._table.remove(fwd_id)

    def get_stats(self) -> dict[str, object]:
        stats: dict[str, object] = {"engine": self._engine.counters()}
        stats["forwards"] = len(self._table)
        if self._stats is not None:
            stats.update(self._stats())
        return stats

    def list_flows(self) -> list[dict[str, object]]:
        return self._engine.flows()
