"""slirpy.host.nswatch: the netns-gone watch fires once the path is removed."""

from __future__ import annotations

import asyncio
import os
import pathlib

import pytest

from slirpy.host import nswatch
from slirpy.host.nswatch import NetnsGoneWatch


async def _gone_after_unlink(path: pathlib.Path, *, expect_inotify: bool) -> float:
    loop = asyncio.get_running_loop()
    gone = loop.create_future()
    watch = NetnsGoneWatch(str(path), lambda: gone.set_result(loop.time()))
    watch.start(loop)
    try:
        assert watch.uses_inotify is expect_inotify
        # A sibling going away is not our path.
        sibling = path.with_name(path.name + "-other")
        sibling.write_text("")
        sibling.unlink()
        await asyncio.sleep(0)
        assert not gone.done()
        start = loop.time()
        path.unlink()
        return await asyncio.wait_for(gone, 5) - start
    finally:
        watch.close()


def test_inotify_sees_the_unlink_at_once(tmp_path: pathlib.Path) -> None:
    ns = tmp_path / "netns-1234"
    ns.write_text("")
    took = asyncio.run(_gone_after_unlink(ns, expect_inotify=True))
    assert took < 0.5


def test_poll_fallback_without_inotify(tmp_path: pathlib.Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # /proc paths (Buildah's /proc/PID/ns/net) cannot be watched with inotify.
    monkeypatch.setattr(nswatch, "_PSEUDO_FS", (str(tmp_path) + "/",))
    monkeypatch.setattr(nswatch, "POLL_INTERVAL_S", 0.05)
    ns = tmp_path / "netns-5678"
    ns.write_text("")
    took = asyncio.run(_gone_after_unlink(ns, expect_inotify=False))
    assert took < 1.0


def test_already_gone_fires_at_start(tmp_path: pathlib.Path) -> None:
    async def main() -> bool:
        loop = asyncio.get_running_loop()
        fired: list[bool] = []
        watch = NetnsGoneWatch(str(tmp_path / "missing"), lambda: fired.append(True))
        watch.start(loop)
        watch.close()
        return bool(fired)

    assert asyncio.run(main())


def test_a_proc_path_is_polled() -> None:
    async def main() -> bool:
        watch = NetnsGoneWatch(f"/proc/{os.getpid()}/ns/net", lambda: None)
        watch.start(asyncio.get_running_loop())
        try:
            return watch.uses_inotify
        finally:
            watch.close()

    assert asyncio.run(main()) is False
