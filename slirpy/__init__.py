"""slirpy: rootless userspace networking for unprivileged containers.

This module names the package's version and the public library API
(`Network`, `AsyncNetwork`, from `slirpy.frontends.library`), imported
lazily on first use. It must not import the C engine, asyncio or any heavy dependency at
import time, so that `slirpy --help` and slirpy-slirp4netns start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slirpy.frontends.library import AsyncNetwork, Network

__version__ = "0.1.0"
__all__ = ["AsyncNetwork", "Network", "__version__"]

_LAZY = {"Network", "AsyncNetwork"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from slirpy.frontends import library

        return getattr(library, name)
    raise AttributeError(f"module 'slirpy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
