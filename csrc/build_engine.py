"""cffi builder for slirpy._engine: compiles every csrc/*.c, out-of-line API mode.

Owns only the build description (sources, flags, cdef). It must not import
slirpy: setuptools runs it before the package exists.
"""

from __future__ import annotations

import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11", "-fvisibility=hidden"]


def make_ffi() -> FFI:
    ffi = FFI()
    ffi.cdef((HERE / "slirpy.cdef").read_text())
    sources = sorted(str(p.relative_to(HERE.parent)) for p in HERE.glob("*.c"))
    ffi.set_source(
        "slirpy._engine",
        '#include "slirpy.h"',
        sources=sources,
        include_dirs=[str(HERE.relative_to(HERE.parent))],
        extra_compile_args=CFLAGS,
        depends=[str(p.relative_to(HERE.parent)) for p in HERE.glob("*.h")],
    )
    return ffi


ffibuilder = make_ffi()

if __name__ == "__main__":
    ffibuilder.compile(verbose=False)
