"""Forwarded ports: bind host listeners and hand them to the engine.

This module owns the `ApiHandler` side of the API socket for port forwards:
it binds the host socket (TCP listen or UDP bind, IPv4 or IPv6), gives the fd
to the engine, which accepts and relays in C, and keeps the table of forwards
(ids from 1, never reused). It must not relay any data itself.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from ipaddress import ip_address

from slirpy.api import HostFwd, HostFwdError, HostFwdRequest, HostFwdTable
from slirpy.engine import PROTO_TCP, PROTO_UDP, Engine

LISTEN_BACKLOG = 1024


class PortForwarder:
    """Implements slirpy.api.ApiHandler on top of one engine."""

    def __init__(
        self, engine: Engine, *, stats: Callable[[], dict[str, object]] | None = None
    ) -> None:
        self._engine = engine
        self._table = HostFwdTable()
        self._stats = stats

    def add_hostfwd(self, fwd: HostFwdRequest) -> int:
        tcp = fwd.transport == "tcp"
        sock = socket.socket(fwd.host_family, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fwd.host_family == socket.AF_INET6 and fwd.proto.endswith("6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((fwd.host_addr, fwd.host_port))
            if tcp:
                sock.listen(LISTEN_BACKLOG)
        except OSError as e:
            sock.close()
            raise HostFwdError(str(e)) from None
        entry = self._table.add(fwd)
        try:
            self._engine.add_listener(
                sock.fileno(),
                PROTO_TCP if tcp else PROTO_UDP,
                ip_address(fwd.guest_addr),
                fwd.guest_port,
                entry.id,
            )
        except OSError as e:
            self._table.remove(entry.id)
            sock.close()
            raise HostFwdError(str(e)) from None
        sock.detach()  # the engine owns the fd now
        return entry.id

    def list_hostfwd(self) -> list[HostFwd]:
        return self._table.entries()

    def remove_hostfwd(self, fwd_id: int) -> None:
        self._table.remove(fwd_id)  # KeyError for an unknown id
        self._engine.remove_listener(fwd_id)

    def get_stats(self) -> dict[str, object]:
        stats: dict[str, object] = {"engine": self._engine.counters()}
        stats["forwards"] = len(self._table)
        if self._stats is not None:
            stats.update(self._stats())
        return stats

    def list_flows(self) -> list[dict[str, object]]:
        return self._engine.flows()
