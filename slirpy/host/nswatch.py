"""Notice that a network namespace's path was removed (pasta's netns-gone exit).

Podman never signals its per-container network stack: it unmounts and
unlinks the namespace's bind mount and expects the stack to exit on its own.
This module owns noticing that: an inotify watch on the path's directory
(IN_DELETE / IN_MOVED_FROM naming the path's basename), or, where inotify
cannot be used (no instances left, or a /proc path such as Buildah's
/proc/PID/ns/net, which inotify never reports), a check every second.

It must not stop anything itself: it calls `on_gone` once and the daemon
decides what to close first.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable

__all__ = ["NetnsGoneWatch"]

IN_DELETE = 0x00000200
IN_MOVED_FROM = 0x00000040
IN_DELETE_SELF = 0x00000400
IN_IGNORED = 0x00008000
_EVENT = struct.Struct("=iIII")
POLL_INTERVAL_S = 1.0
_PSEUDO_FS = ("/proc/", "/sys/", "/dev/pts/")


class NetnsGoneWatch:
    """Calls `on_gone()` once `path` no longer exists."""

    def __init__(self, path: str, on_gone: Callable[[], None]) -> None:
        self.path = os.path.abspath(path)
        self._dir, self._name = os.path.split(self.path)
        self._on_gone = on_gone
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._fired = False

    @property
    def uses_inotify(self) -> bool:
        return self._fd is not None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if not self.path.startswith(_PSEUDO_FS):
            from slirpy.engine import inotify_watch

            try:
                self._fd = inotify_watch(self._dir, IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF)
            except OSError:
                self._fd = None
        if self._fd is not None:
            loop.add_reader(self._fd, self._on_inotify)
        else:
            self._timer = loop.call_later(POLL_INTERVAL_S, self._poll)
        # It may have gone between the namespace being joined and now.
        if not os.path.lexists(self.path):
            self._fire()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._fd is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None

    def _fire(self) -> None:
        if not self._fired:
            self._fired = True
            self._on_gone()

    def _poll(self) -> None:
        self._timer = None
        if not os.path.lexists(self.path):
            self._fire()
            return
        assert self._loop is not None
        self._timer = self._loop.call_later(POLL_INTERVAL_S, self._poll)

    def _on_inotify(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        off = 0
        gone = False
        while off + _EVENT.size <= len(data):
            _wd, mask, _cookie, size = _EVENT.unpack_from(data, off)
            name = data[off + _EVENT.size : off + _EVENT.size + size].rstrip(b"\0")
            off += _EVENT.size + size
            if mask & (IN_DELETE_SELF | IN_IGNORED):
                gone = True  # the directory itself went: so did the path
            elif name == os.fsencode(self._name):
                gone = True
        if gone and not os.path.lexists(self.path):
            self._fire()
