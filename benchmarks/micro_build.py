"""A private cffi build of the C engine's internal functions, for test_micro.py.

This module owns one thing: compiling csrc/*.c (the same sources and flags as
csrc/build_engine.py) together with a few `slbench_*` wrappers into a
throwaway extension module, so that pytest-benchmark can time functions that
slirpy._engine does not export: the RFC 1071 checksum, frame parsing and the
flow-table lookup. Each wrapper repeats its operation `loops` times in C, so
that the figure is the C code's cost and not cffi's call overhead.

It must not touch the installed package or the repository: the build goes
to a cache directory keyed by a hash of csrc/ (rebuilt when the engine
changes), under $SLIRPY_MICRO_CACHE or the system's temp directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pathlib
import sys
import tempfile
from types import ModuleType

REPO = pathlib.Path(__file__).resolve().parents[1]
CSRC = REPO / "csrc"
NAME = "_slirpy_micro"

CDEF = """
uint16_t slbench_csum(const uint8_t *buf, size_t len, int loops);
int slbench_parse(const uint8_t *frame, size_t len, int vnet, int loops);
void *slbench_engine_new(void);
void slbench_engine_free(void *e);
int slbench_flows_add(void *e, int n);
int slbench_flows_lookup(void *e, int n, int loops, int miss);
"""

# The wrappers: they see the engine's internal headers, and keep every
# result live (summed into the return value) so that -O2 cannot drop a loop.
SOURCE = r"""
#include <string.h>
#include "slirpy.h"
#include "internal.h"
#include "wire.h"

uint16_t slbench_csum(const uint8_t *buf, size_t len, int loops)
{
	uint16_t acc = 0;
	int i;

	for (i = 0; i < loops; i++)
		acc ^= sl_csum_fold(sl_csum_add((uint32_t)i, buf, len));
	return acc;
}

int slbench_parse(const uint8_t *frame, size_t len, int vnet, int loops)
{
	struct sl_pkt p;
	int i, acc = 0;

	for (i = 0; i < loops; i++) {
		memset(&p, 0, sizeof(p));
		acc += sl_parse(frame, len, vnet != 0, &p) + p.proto;
	}
	return acc;
}

void *slbench_engine_new(void)
{
	struct sl_config c;

	memset(&c, 0, sizeof(c));
	c.net4[0] = 10;
	c.net4[2] = 2;
	c.prefix4 = 24;
	memcpy(c.gw4, (uint8_t[]){ 10, 0, 2, 2 }, 4);
	memcpy(c.dns4, (uint8_t[]){ 10, 0, 2, 3 }, 4);
	memcpy(c.guest4, (uint8_t[]){ 10, 0, 2, 100 }, 4);
	c.mtu = 1500;
	c.host_loopback = 1;
	return sl_engine_new(&c);
}

void slbench_engine_free(void *e)
{
	sl_engine_free(e);
}

static void key(int i, uint8_t *g, uint16_t *gport, uint8_t *r)
{
	memcpy(g, (uint8_t[]){ 10, 0, 2, 100 }, 4);
	memcpy(r, (uint8_t[]){ 93, 184, (uint8_t)(i >> 8), (uint8_t)i }, 4);
	*gport = (uint16_t)(20000 + i);
}

int slbench_flows_add(void *e, int n)
{
	uint8_t g[4], r[4];
	uint16_t gp;
	int i;

	for (i = 0; i < n; i++) {
		key(i, g, &gp, r);
		if (!sl_flow_new(e, SL_FLOW_TCP, 4, g, gp, r, 443))
			return i;
	}
	return n;
}

int slbench_flows_lookup(void *e, int n, int loops, int miss)
{
	uint8_t g[4], r[4];
	uint16_t gp;
	int i, found = 0;

	for (i = 0; i < loops; i++) {
		key(i % n, g, &gp, r);
		if (sl_flow_lookup(e, SL_FLOW_TCP, 4, g, gp, r, miss ? 444 : 443))
			found++;
	}
	return found;
}
"""


def _digest() -> str:
    h = hashlib.sha256(SOURCE.encode() + CDEF.encode())
    for p in sorted(CSRC.glob("*.[ch]")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:16]


def load() -> ModuleType:
    """Build (once per csrc/ version) and import the micro-benchmark module."""
    from cffi import FFI

    sys.path.insert(0, str(CSRC))
    try:
        from build_engine import CFLAGS  # the engine's own flags: same -O level
    finally:
        sys.path.remove(str(CSRC))
    base = pathlib.Path(os.environ.get("SLIRPY_MICRO_CACHE", tempfile.gettempdir()))
    out = base / f"slirpy-micro-{_digest()}"
    found = sorted(out.glob(f"{NAME}*.so"))
    if not found:
        out.mkdir(parents=True, exist_ok=True)
        ffi = FFI()
        ffi.cdef(CDEF)
        ffi.set_source(NAME, SOURCE, sources=[str(p) for p in sorted(CSRC.glob("*.c"))],
                       include_dirs=[str(CSRC)], extra_compile_args=CFLAGS)
        ffi.compile(tmpdir=str(out), verbose=False)
        found = sorted(out.glob(f"{NAME}*.so"))
    spec = importlib.util.spec_from_file_location(NAME, found[0])
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
