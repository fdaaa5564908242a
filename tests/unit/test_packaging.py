"""Packaging: the sdist carries csrc/, and a wheel built from it has the engine."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tarfile
import zipfile

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_wheel_from_sdist_contains_engine(tmp_path: pathlib.Path) -> None:
    subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)],
        cwd=REPO, check=True, capture_output=True,
    )
    sdist = next(tmp_path.glob("slirpy-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    assert any(n.endswith("csrc/tcp.c") for n in names)
    assert any(n.endswith("csrc/slirpy.cdef") for n in names)
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheel_dir),
         str(sdist)],
        check=True, capture_output=True,
    )
    wheel = next(wheel_dir.glob("slirpy-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        files = z.namelist()
        entry_points = z.read(next(f for f in files if f.endswith("entry_points.txt")))
    assert any(f.startswith("slirpy/_engine") and f.endswith(".so") for f in files)
    assert b"slirpy-slirp4netns = slirpy.entry:slirp4netns_main" in entry_points
    assert b"slirpy-pasta = slirpy.entry:pasta_main" in entry_points
