"""slirpy: rootless userspace networking for unprivileged containers.

This module only names the package's version; it must not import the C engine
or any heavy dependency, so that `slirpy --help` stays fast.
"""

__version__ = "0.1.0"
