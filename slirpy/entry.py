"""The console scripts' entry points: slirpy, slirpy-slirp4netns, slirpy-pasta.

Each one imports asyncio without ssl (slirpy.notls: a stack process never
speaks TLS, and ssl costs every start ~15 ms and every process libssl and
libcrypto) before the front end is imported, then hands over to it. This is
the only place that choice is made: the library (`slirpy.Network`) runs in
other people's programs, which may need TLS, and never comes through here.
It must not do anything else.
"""

from __future__ import annotations


def _without_tls() -> None:
    from slirpy import notls

    notls.import_asyncio()


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
