"""Front ends: each turns its own command line (or arguments) into one
`slirpy.options.DaemonOptions` and hands it to `slirpy.daemon.Daemon`.

`slirp4netns` (slirp4netns's command line), `run` (`slirpy run`), `main`
(the `slirpy` command), `library` (`slirpy.Network`); `common` holds what
they share. Nothing below the front ends knows which one is in use.
"""
