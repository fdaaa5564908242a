"""asyncio and uvloop imported without the ssl module.

slirpy never speaks TLS, yet `import asyncio` imports ssl, and with it
libssl and libcrypto: measured here ~15 ms of every start and ~3.5 MiB of
every stack process's RSS (one per container). asyncio is built to run
without ssl (it catches the ImportError); uvloop is not (its module
initialisation reads names from ssl), so while uvloop initialises it sees a
stand-in module whose names are placeholder exception classes and integers.

This module owns those two imports (and refuse_ssl(), for a process that
will never want TLS) and nothing else. It must not be used by code that
needs TLS, and it changes nothing once the real ssl is imported: then that
is what everyone has, and so be it. Unless refuse_ssl() was called,
`import ssl` afterwards gets the real module.
"""

from __future__ import annotations

import sys
import types

__all__ = ["import_asyncio", "import_uvloop", "refuse_ssl"]


def _placeholder(name: str) -> object:
    """What uvloop reads from ssl at start-up: constants (integers) and classes it
    names in `except` clauses and isinstance() checks (never raised without TLS)."""
    if name.startswith("__"):
        raise AttributeError(name)
    if name.isupper() or name.startswith(("SSL_ERROR", "CERT_", "OP_", "PROTOCOL_")):
        return 0
    return type(name, (Exception,), {})


def _stand_in() -> types.ModuleType:
    mod = types.ModuleType("ssl", "stand-in for ssl while uvloop initialises (slirpy.notls)")
    mod.__getattr__ = _placeholder  # type: ignore[method-assign]
    return mod


def import_asyncio() -> types.ModuleType:
    """asyncio, imported with `import ssl` failing if nothing has imported either yet."""
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        import asyncio
        return asyncio
    sys.modules["ssl"] = None  # type: ignore[assignment]  # import ssl -> ImportError
    try:
        import asyncio
    finally:
        if sys.modules.get("ssl", 0) is None:
            del sys.modules["ssl"]
    return asyncio


def refuse_ssl() -> None:
    """Make `import ssl` fail for the rest of this process (a stack process, which never
    speaks TLS: slirpy.entry), at no cost now; import_uvloop still works."""
    if "ssl" not in sys.modules:
        sys.modules["ssl"] = None  # type: ignore[assignment]


def import_uvloop() -> types.ModuleType | None:
    """uvloop (None when not installed), initialised against the stand-in if the real ssl
    is not imported; should the stand-in not satisfy this uvloop, the real ssl is used."""
    import_asyncio()
    if "uvloop" in sys.modules or sys.modules.get("ssl") is not None:
        return _plain_uvloop()
    refused = "ssl" in sys.modules  # None: refuse_ssl() was called, and stays in force
    stand_in = _stand_in()
    sys.modules["ssl"] = stand_in
    try:
        import uvloop
    except ImportError:
        return None
    except Exception:  # a uvloop that needs more of ssl: use the real one
        for name in [m for m in sys.modules if m == "uvloop" or m.startswith("uvloop.")]:
            del sys.modules[name]
        del sys.modules["ssl"]
        return _plain_uvloop()
    finally:
        if sys.modules.get("ssl") is stand_in:
            if refused:
                sys.modules["ssl"] = None  # type: ignore[assignment]
            else:
                del sys.modules["ssl"]
    return uvloop


def _plain_uvloop() -> types.ModuleType | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop
