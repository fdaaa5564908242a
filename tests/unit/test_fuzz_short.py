"""A bounded libFuzzer run of the C engine (tests/fuzz/run.sh, 45 s).

Owns only launching the run and judging its result: any crash, sanitizer
report, leak or timeout fails the test, with the end of libFuzzer's log; then
one of the run's history files is replayed (FUZZ_REPLAY=1), the way a finding
that needed earlier inputs is reproduced. The
harness isolates itself in an empty network namespace (see fuzz_engine.c),
so this test sends nothing anywhere. Skipped when clang or its libFuzzer
runtime (libclang-rt-14-dev) is missing.
"""

from __future__ import annotations

import glob
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
RUN = ROOT / "tests" / "fuzz" / "run.sh"
SECONDS = 45  # plus the build: ~60 s in all


def _have_libfuzzer() -> bool:
    if not shutil.which("clang"):
        return False
    return bool(glob.glob("/usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a")
                or glob.glob("/usr/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a"))


@pytest.mark.skipif(not _have_libfuzzer(), reason="clang with libFuzzer is not installed")
def test_fuzz_engine_short_run(tmp_path: pathlib.Path) -> None:
    env = dict(os.environ, FUZZ_WORK=str(tmp_path), PYTHON=sys.executable)
    proc = subprocess.run([str(RUN), str(SECONDS)], env=env, capture_output=True,
                          text=True, timeout=SECONDS + 240, check=False)
    log = proc.stdout + proc.stderr
    tail = "\n".join(log.splitlines()[-60:])
    findings = sorted(p.name for p in (tmp_path / "findings").iterdir())
    assert proc.returncode == 0, f"fuzzer finding (rc {proc.returncode}):\n{tail}"
    assert not findings, f"findings: {findings}\n{tail}"
    m = re.search(r"stat::number_of_executed_units:\s+(\d+)", log)
    assert m, f"no final stats:\n{tail}"
    # It really ran: with engines kept across inputs even a slow CI machine
    # does tens of thousands a minute.
    assert int(m.group(1)) > 10000, tail
    # Replaying an engine's history (every input it saw, in order) works.
    hist = sorted((tmp_path / "history").iterdir(), key=lambda p: p.stat().st_mtime)
    assert hist, "no history files"
    rep = subprocess.run([str(tmp_path / "fuzz_engine"), str(hist[-1])],
                         env=dict(env, FUZZ_REPLAY="1"), capture_output=True, text=True,
                         timeout=120, check=False)
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert f"Executed {hist[-1]}" in rep.stderr, rep.stderr[-3000:]
