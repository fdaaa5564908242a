"""engine.release_free_memory (csrc/sys.c): freed heap leaves the process's RSS.

Runs in a fresh interpreter: 20 MB of 1000-byte objects (malloc'd below
glibc's mmap threshold, so they live in the heap) are freed, and only the
call hands their pages back.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_freed_heap_leaves_rss() -> None:
    code = textwrap.dedent("""
        from slirpy import engine
        def anon():
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
        blobs = [bytes(1000) + bytes([i % 256]) for i in range(20000)]
        keep = bytes(1000) + b"x"   # allocated last: the heap's top stays in use
        del blobs
        before = anon()
        engine.release_free_memory()
        print(before - anon(), len(keep))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    freed_kib, _ = map(int, r.stdout.split())
    assert freed_kib > 10_000
