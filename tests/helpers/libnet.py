"""A slirpy served through the library API, for the integration fixtures.

This file owns the process behind daemons.py's `LibSlirpy`: run as the
unprivileged test user, it attaches `slirpy.Network` to a container (a PID,
given with the keyword arguments of `Network` as one JSON argument), prints
one JSON line once the network serves ({"ready": true} or {"error": "..."}),
then answers one JSON request per stdin line (`publish`, `unpublish`,
`stats`, `flows`) with one JSON line, and closes the network when stdin
reaches EOF. It uses only the public library API (`slirpy.Network`), never
the CLI, so the tests that run on it exercise the library; it must not
decide anything about the network itself.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _answer(net: Any, req: dict[str, Any]) -> object:
    op, args = req["op"], req.get("args", {})
    if op == "publish":
        return net.publish(**args)
    if op == "unpublish":
        net.unpublish(**args)
        return None
    if op == "stats":
        return net.stats()
    if op == "flows":
        return net.flows()
    raise ValueError(f"unknown op {op!r}")


def main() -> int:
    import slirpy

    kw: dict[str, Any] = json.loads(sys.argv[1])
    target = kw.pop("target")
    try:
        net = slirpy.Network(target, **kw).start()
    except Exception as e:  # one line for the fixture's assertion message
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        return 1
    try:
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            try:
                out: dict[str, object] = {"return": _answer(net, json.loads(line))}
            except Exception as e:  # reported to the test, which decides
                out = {"error": f"{type(e).__name__}: {e}"}
            print(json.dumps(out), flush=True)
    finally:
        net.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
