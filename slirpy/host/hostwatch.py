"""Follow the host's address and route changes (slirpy's answer to pasta's stale copy).

This module owns noticing that the host's template changed: a NETLINK_ROUTE
socket subscribed to link, address and route notifications of the namespace
it was created in (the host's), drained when readable; after a burst (one
re-read ~100 ms after its first message, not one per message) the template
is read again through a second socket of the same namespace and
`callback(old, new)` runs only when it differs.

It must not change the guest (the callback does, e.g. with
slirpy.host.netconf.apply_change) nor own an event loop: the caller
registers `fileno()` (loop.add_reader) and passes something with
`call_later(delay, fn)` (an asyncio loop will do).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from slirpy.config import ConfigError
from slirpy.host import rtnl
from slirpy.host.template import HostTemplate, read_template

if TYPE_CHECKING:
    from slirpy.options import SharedAddressing

GROUPS = (rtnl.RTMGRP_LINK | rtnl.RTMGRP_IPV4_IFADDR | rtnl.RTMGRP_IPV6_IFADDR
          | rtnl.RTMGRP_IPV4_ROUTE | rtnl.RTMGRP_IPV6_ROUTE)
DEBOUNCE = 0.1
# Bounded drain per wake-up: a flood of notifications cannot starve the loop
# (what is left makes the socket readable again).
MAX_DRAIN = 256


class Timer(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    def call_later(self, delay: float, callback: Callable[[], None], /) -> Timer: ...


class HostWatch:
    """Re-reads the host's template after netlink notifications; calls back on change.

    Both sockets are made in the current network namespace at construction:
    the watch follows that namespace from then on, wherever it is used.
    """

    def __init__(
        self,
        shared: SharedAddressing,
        current: HostTemplate,
        callback: Callable[[HostTemplate, HostTemplate], None],
        scheduler: Scheduler,
        *,
        debounce: float = DEBOUNCE,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.shared = shared
        self.current = current
        self._callback = callback
        self._scheduler = scheduler
        self._debounce = debounce
        self._on_error = on_error
        self._timer: Timer | None = None
        self._monitor = rtnl.open_route(GROUPS)
        try:
            self._monitor.setblocking(False)
            self._query = rtnl.open_route()
        except BaseException:
            self._monitor.close()
            raise

    def fileno(self) -> int:
        return self._monitor.fileno()

    def on_readable(self) -> None:
        """Drain the notifications; schedule one re-read for the burst."""
        seen = False
        for _ in range(MAX_DRAIN):
            try:
                data = self._monitor.recv(rtnl.RECV_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                # ENOBUFS: notifications were lost; re-reading covers them.
                if e.errno != errno.ENOBUFS:
                    raise
                seen = True
                continue
            if not data:
                break
            seen = True
        if seen:
            self.recheck()

    def recheck(self) -> None:
        """Re-read once soon, as after a notification: covers changes made
        between reading `current` and making this watch (slirpy-pasta reads
        the template before it is ready and watches only after, issue 17)."""
        if self._timer is None:
            self._timer = self._scheduler.call_later(self._debounce, self._reread)

    def _reread(self) -> None:
        self._timer = None
        try:
            new = read_template(self._query, self.shared)
        except (ConfigError, OSError) as e:
            # E.g. the explicit -i interface went away: keep the old copy.
            if self._on_error is not None:
                self._on_error(e)
            return
        if new != self.current:
            old, self.current = self.current, new
            self._callback(old, new)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._monitor.close()
        self._query.close()
