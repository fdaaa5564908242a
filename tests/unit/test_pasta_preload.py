"""What slirpy-pasta's daemon imports after readiness (issue 17), asserted without timing.

Daemon.preload() is the first step after slirpy-pasta's parent exited: it
imports the event loop, the engine and the DNS forwarder. A front end's
process never speaks TLS, so asyncio and uvloop come without ssl
(slirpy.notls) even when nothing imported asyncio before (a front end
entered directly, not through slirpy.entry).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _modules_after(code: str) -> set[str]:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def test_preload_imports_the_loop_without_ssl() -> None:
    mods = _modules_after("""
        import sys
        from slirpy.frontends.pasta import parse_pasta_args
        from slirpy.daemon import Daemon
        opts = parse_pasta_args(["--config-net", "--dns-forward", "169.254.1.1", "-t", "none",
                                 "-u", "none", "-T", "none", "-U", "none", "--netns", "/x"])
        assert Daemon(opts).ready_before_loop()
        assert "asyncio" not in sys.modules
        Daemon(opts).preload()
        print(*sys.modules)
    """)
    assert {"asyncio", "uvloop", "slirpy.engine", "slirpy.services.dns"} <= mods
    assert "ssl" not in mods and "_ssl" not in mods


def test_ready_before_loop_only_with_nothing_to_bind() -> None:
    mods = _modules_after("""
        from slirpy.frontends.pasta import parse_pasta_args
        from slirpy.daemon import Daemon
        base = ["--config-net", "-t", "none", "-u", "none", "-T", "none", "-U", "none"]
        cases = {
            "podman": [*base, "--netns", "/x"],
            "port": ["--config-net", "-t", "8080", "-u", "none", "-T", "none", "-U", "none",
                     "--netns", "/x"],
            "auto": ["--config-net", "--netns", "/x"],
            "foreground": [*base, "-f", "--netns", "/x"],
            "api": [*base, "--api-socket", "/tmp/x.sock", "--netns", "/x"],
            "policy": [*base, "--policy", "public-only", "--netns", "/x"],
            "command": [*base, "true"],
        }
        for name, argv in cases.items():
            if Daemon(parse_pasta_args(argv)).ready_before_loop():
                print(name)
    """)
    assert mods == {"podman"}
