"""The console scripts' entry points: slirpy, slirpy-slirp4netns, slirpy-pasta.

Each one makes `import ssl` fail in its process before the front end is
imported (slirpy.notls.refuse_ssl: a stack process never speaks TLS, and
ssl costs every start ~15 ms and every process libssl and libcrypto, which
asyncio would import whenever it is first imported), then hands over to it.
Nothing is imported early: slirpy-pasta becomes ready before it imports
asyncio at all. The library (`slirpy.Network`) runs in other people's
programs, which may need TLS, and never comes through here. It must not do
anything else.
"""

from __future__ import annotations


def _without_tls() -> None:
    from slirpy import notls

    notls.refuse_ssl()


def slirpy_main() -> None:
    _without_tls()
    from slirpy.frontends.main import main

    main()


def slirp4netns_main() -> None:
    _without_tls()
    from slirpy.frontends.slirp4netns import slirp4netns_main as front_end

    front_end()


def pasta_main() -> None:
    _without_tls()
    from slirpy.frontends.pasta import pasta_main as front_end

    front_end()
