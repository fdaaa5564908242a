"""The host side of a daemon's start: namespaces and what runs in them.

`netns` (the helper that opens the TAP in the target namespace), `ifconfig`
(its configuration, in that helper), `spawn` (new namespaces: a holder or a
command), `nshelper` (the helper of spliced forwards), `outbound` (outbound
source addresses), `confine` (sandbox and seccomp).
"""
