"""Bounded polling: wait for a condition instead of sleeping a fixed time.

Owns `wait_until` only. A fixed sleep either wastes time or, on a loaded
machine, is too short; polling a condition with a deadline does neither.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(cond: Callable[[], T], timeout: float = 5.0, *, interval: float = 0.01,
               what: str = "") -> T:
    """Call @cond every @interval seconds until it returns something true, and
    return that; AssertionError (naming @what, or @cond) after @timeout
    seconds. @cond is called at least once, and once more at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        left = deadline - time.monotonic()
        if left <= 0:
            got = cond()
            if got:
                return got
            name = what or getattr(cond, "__name__", repr(cond))
            raise AssertionError(f"not true within {timeout} s: {name} (last: {got!r})")
        time.sleep(min(interval, left))
