"""cffi builder for slirpy._engine: compiles every csrc/*.c, out-of-line API mode.

Owns only the build description (sources, flags, cdef). It must not import
slirpy: setuptools runs it before the package exists.
"""

from __future__ import annotations

import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
# The engine fd's reader (sl_engine_on_ready): polls in C and calls back into
# Python (sl_py_events, an extern "Python" function) only when the punt queue
# has events, so the hot path runs no Python code per wake-up.
READER_GLUE = r"""
static void sl_py_events(void *ctx);

static void sl_engine_on_ready(struct sl_engine *e, int budget, void *ctx)
{
	if (sl_engine_poll_now(e, budget) > 0)
		sl_py_events(ctx);
}
"""
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11", "-fvisibility=hidden"]


def make_ffi() -> FFI:
    ffi = FFI()
    ffi.cdef((HERE / "slirpy.cdef").read_text())
    sources = sorted(str(p.relative_to(HERE.parent)) for p in HERE.glob("*.c"))
    ffi.set_source(
        "slirpy._engine",
        '#include "slirpy.h"\n' + READER_GLUE,
        sources=sources,
        include_dirs=[str(HERE.relative_to(HERE.parent))],
        extra_compile_args=CFLAGS,
        depends=[str(p.relative_to(HERE.parent)) for p in HERE.glob("*.h")],
    )
    return ffi


ffibuilder = make_ffi()

if __name__ == "__main__":
    ffibuilder.compile(verbose=False)
