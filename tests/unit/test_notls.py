"""slirpy.notls: asyncio and uvloop without ssl, and loops that still work.

Each case runs in a fresh interpreter (the test process has asyncio already).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

ECHO = """
async def echo_once(loop_name):
    import asyncio
    async def handle(r, w):
        w.write(await r.read(5))
        await w.drain()
        w.close()
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"hello")
    got = await r.read()
    w.close()
    srv.close()
    await srv.wait_closed()
    return loop_name + ":" + got.decode()
"""


def run(code: str) -> list[str]:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_no_ssl_and_both_loops_work() -> None:
    out = run(ECHO + """
import sys
from slirpy import notls
asyncio = notls.import_asyncio()
uvloop = notls.import_uvloop()
print("ssl" in sys.modules, "_ssl" in sys.modules)
maps = open("/proc/self/maps").read()
print("libssl" in maps, "libcrypto" in maps)
print(uvloop.new_event_loop().run_until_complete(echo_once("uvloop")))
print(asyncio.new_event_loop().run_until_complete(echo_once("asyncio")))
import ssl
print(hasattr(ssl, "create_default_context") and ssl.SSLContext.__module__ == "ssl")
""")
    assert out == ["False", "False", "False", "False", "uvloop:hello", "asyncio:hello", "True"]


def test_a_uvloop_the_stand_in_does_not_satisfy_gets_the_real_ssl() -> None:
    out = run(ECHO + """
import sys
from slirpy import notls
def refuse(name):
    raise TypeError("this uvloop wants more of ssl")
notls._placeholder = refuse
uvloop = notls.import_uvloop()
import ssl
print(uvloop is not None, "_ssl" in sys.modules, isinstance(ssl.SSLContext, type))
print(uvloop.new_event_loop().run_until_complete(echo_once("uvloop")))
""")
    assert out == ["True", "True", "True", "uvloop:hello"]


@pytest.mark.parametrize("first", ["asyncio", "ssl"])
def test_changes_nothing_once_asyncio_or_ssl_is_imported(first: str) -> None:
    out = run(f"""
import sys
import {first}
from slirpy import notls
notls.import_uvloop()
print(type(sys.modules["ssl"].SSLContext).__name__, "_ssl" in sys.modules)
""")
    assert out == ["type", "True"]


def test_refuse_ssl_keeps_ssl_out_and_uvloop_in() -> None:
    out = run(ECHO + """
import sys
from slirpy import notls
notls.refuse_ssl()
import asyncio
uvloop = notls.import_uvloop()
print(uvloop is not None, "_ssl" in sys.modules, sys.modules["ssl"] is None)
print(uvloop.new_event_loop().run_until_complete(echo_once("uvloop")))
try:
    import ssl
except ImportError:
    print("refused")
""")
    assert out == ["True", "False", "True", "uvloop:hello", "refused"]
