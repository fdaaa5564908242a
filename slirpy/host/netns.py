"""Open the TAP device inside the container's network namespace.

This module owns the namespace helper: a child forked while the process is
still single-threaded joins the container's user namespace (when needed) and
network namespace, opens (or attaches to) the TAP, optionally configures it
(`-c`), and sends the fd back over a Unix socket with SCM_RIGHTS (with
`netlink`, also a NETLINK_ROUTE and a NETLINK_SOCK_DIAG socket made there,
which keep working in that namespace). The parent never changes namespace.

It must not start threads or an event loop; the child configures the TAP
(`-c`) with slirpy.host.ifconfig, imported only there. The child calls the
C engine's `sl_setns`/`sl_tun_open` through the cffi module itself
(slirpy._engine, imported by the parent before the fork), not through
slirpy.engine: that module's import (asyncio, its dataclasses) would be on
the start's critical path, which waits for the child (issue 17).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from ipaddress import IPv4Address, IPv4Interface
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Callable

    from slirpy.config import NetworkModel

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
NS_GET_USERNS = 0xB701
SIOCGIFHWADDR = 0x8927
NETLINK_SOCK_DIAG = 4  # <linux/netlink.h>; not in Python's socket module
TAP_TXQUEUELEN = 10000  # a window burst must not overflow the default 1000


class NamespaceError(Exception):
    """One readable line: what is wrong and what to do."""


# NamedTuples, not dataclasses: these are made at every start, and a frozen
# dataclass costs ~0.6 ms of code generation per class at import time.
class TapRequest(NamedTuple):
    """What the helper child must do inside the namespace."""

    tapname: str
    vnet_hdr: bool
    offload: bool
    configure: bool
    mtu: int
    address: IPv4Interface | None = None
    gateway: IPv4Address | None = None
    mac: bytes | None = None
    ipv6: bool = False
    # Also send back a NETLINK_ROUTE and a NETLINK_SOCK_DIAG socket made in
    # the namespace: the daemon configures it and scans its ports through
    # them later without another helper (pasta's model).
    netlink: bool = False

    @classmethod
    def for_net(
        cls, net: NetworkModel, tapname: str, *, offload: bool, configure: bool
    ) -> TapRequest:
        """The request for `net`'s guest side: N+100/prefix, route via N+2."""
        return cls(
            tapname=tapname,
            vnet_hdr=True,
            offload=offload,
            configure=configure,
            mtu=net.mtu,
            address=IPv4Interface(f"{net.guest}/{net.prefixlen}"),
            gateway=net.gateway,
            mac=net.guest_mac,
            ipv6=net.ipv6,
        )


class TapHandle(NamedTuple):
    fd: int
    mac: bytes
    nl_fd: int | None = None
    diag_fd: int | None = None


class NamespaceTarget(NamedTuple):
    """Which namespaces to join: paths, opened in the parent for clear errors."""

    netns_path: str
    userns_path: str | None
    # pasta's --netns without --userns: join the network namespace only, not
    # (when userns_path is None) the user namespace that owns it.
    netns_only: bool = False


def target_for_pid(pid: int) -> NamespaceTarget:
    if not os.path.exists(f"/proc/{pid}"):
        raise NamespaceError(f"no process with PID {pid}: is the container still running?")
    userns = f"/proc/{pid}/ns/user"
    return NamespaceTarget(netns_path=f"/proc/{pid}/ns/net", userns_path=userns)


def target_for_path(path: str, userns_path: str | None,
                    netns_only: bool = False) -> NamespaceTarget:
    if not os.path.exists(path):
        raise NamespaceError(f"network namespace {path} does not exist")
    return NamespaceTarget(netns_path=path, userns_path=userns_path, netns_only=netns_only)


def _open_ns(path: str, what: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NamespaceError(f"{what} {path} does not exist") from None
    except PermissionError:
        raise NamespaceError(
            f"cannot open {what} {path}: permission denied "
            "(run slirpy as the user that owns the container)"
        ) from None
    except OSError as e:
        raise NamespaceError(f"cannot open {what} {path}: {e.strerror}") from None


def _same_ns(fd: int, own: str) -> bool:
    a, b = os.fstat(fd), os.stat(own)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _owning_userns(netfd: int) -> int | None:
    """The user namespace that owns a netns (NS_GET_USERNS), or None."""
    try:
        return fcntl.ioctl(netfd, NS_GET_USERNS)
    except OSError:
        return None


def open_namespaces(target: NamespaceTarget) -> tuple[int, int | None]:
    """The network namespace's fd and the user namespace's to join first
    (None: none): the given user namespace, else (unless `netns_only`) the
    one owning the network namespace, never our own. The caller owns both
    fds. NamespaceError with one readable line.
    """
    netfd = _open_ns(target.netns_path, "network namespace")
    if target.userns_path is not None:
        try:
            userfd: int | None = _open_ns(target.userns_path, "user namespace")
        except NamespaceError:
            if target.netns_path.startswith("/proc/"):
                userfd = None  # the PID may share our user namespace
            else:
                os.close(netfd)
                raise
    elif target.netns_only:
        userfd = None
    else:
        userfd = _owning_userns(netfd)
    if userfd is not None and _same_ns(userfd, "/proc/self/ns/user"):
        os.close(userfd)
        userfd = None
    return netfd, userfd


def _configure(req: TapRequest) -> None:
    from slirpy.host.ifconfig import configure

    configure(
        req.tapname,
        mtu=req.mtu,
        txqueuelen=TAP_TXQUEUELEN,
        address=req.address,
        gateway=req.gateway,
        mac=req.mac,
    )


def _tap_mac(name: str) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16s16x", name.encode())
        res = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, ifr)
        return res[18:24]


def _netlink_sockets() -> list[int]:
    """NETLINK_ROUTE and NETLINK_SOCK_DIAG sockets of the current namespace (fds)."""
    flags = socket.SOCK_RAW | socket.SOCK_CLOEXEC
    out = []
    for proto in (socket.NETLINK_ROUTE, NETLINK_SOCK_DIAG):
        s = socket.socket(socket.AF_NETLINK, flags, proto)
        s.bind((0, 0))
        out.append(s.detach())
    return out


def _child(sock: socket.socket, netfd: int, userfd: int | None, req: TapRequest) -> int:
    # Already imported by start_open_tap() before the fork: free here.
    from slirpy._engine import ffi, lib

    try:
        if userfd is not None:
            rc = lib.sl_setns(userfd, CLONE_NEWUSER)
            if rc < 0:
                raise NamespaceError(
                    f"cannot join the container's user namespace: {os.strerror(-rc)}"
                )
        rc = lib.sl_setns(netfd, CLONE_NEWNET)
        if rc < 0:
            hint = ""
            if -rc == errno.EPERM:
                hint = " (not permitted: pass --userns-path, or run as the container's owner)"
            raise NamespaceError(
                f"cannot join the container's network namespace: {os.strerror(-rc)}{hint}"
            )
        err = ffi.new("char[]", 512)
        fd = lib.sl_tun_open(req.tapname.encode(), int(req.vnet_hdr),
                             int(req.offload and req.vnet_hdr), err, 512)
        if fd < 0:
            # The engine's one-line advice (what slirpy.engine's TunError carries).
            raise NamespaceError(ffi.string(err).decode() or os.strerror(-fd))
        if req.configure:
            try:
                _configure(req)
            except OSError as e:
                raise NamespaceError(f"cannot configure {req.tapname}: {e.strerror}") from None
        mac = _tap_mac(req.tapname)
        fds = [fd, *_netlink_sockets()] if req.netlink else [fd]
        # The reply is "ok <mac hex>" with the fds, or "error <message>" (no
        # json: the parent would import it for this alone).
        socket.send_fds(sock, [b"ok " + mac.hex().encode()], fds)
        return 0
    except NamespaceError as e:
        sock.sendall(b"error " + str(e).encode())
        return 1
    except Exception as e:
        msg = f"namespace helper failed: {e!r}"
        if os.environ.get("SLIRPY_DEBUG"):
            import traceback

            msg += "\n" + traceback.format_exc()
        sock.sendall(b"error " + msg.encode())
        return 1


class PendingTap:
    """The helper child at work; `wait()` collects the TAP fd or the error."""

    def __init__(self, pid: int, sock: socket.socket, nfds: int = 1) -> None:
        self._pid = pid
        self._sock = sock
        self._nfds = nfds

    def wait(self) -> TapHandle:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(self._sock, 4096, self._nfds)
        finally:
            self._sock.close()
            os.waitpid(self._pid, 0)
        if not msg:
            raise NamespaceError("namespace helper died without an answer")
        status, _, rest = msg.partition(b" ")
        if status != b"ok" or len(fds) != self._nfds:
            for fd in fds:
                os.close(fd)
            raise NamespaceError(rest.decode(errors="replace") or "namespace helper failed")
        mac = bytes.fromhex(rest.decode())
        if self._nfds == 3:
            return TapHandle(fd=fds[0], mac=mac, nl_fd=fds[1], diag_fd=fds[2])
        return TapHandle(fd=fds[0], mac=mac)


def fork_into(
    target: NamespaceTarget, child_main: Callable[[socket.socket, int, int | None], int]
) -> tuple[int, socket.socket]:
    """Fork a child that will join `target`; its PID and our end of its socket.

    The child runs `child_main(sock, netfd, userfd)` (which joins the
    namespaces itself: only a single-threaded process may) and exits with
    its return value. The namespace fds are closed here once forked.
    Raises NamespaceError with one readable line when a namespace cannot be
    opened.
    """
    netfd, userfd = open_namespaces(target)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            rc = 1
            try:
                parent.close()
                rc = child_main(child, netfd, userfd)
            finally:
                os._exit(rc)
    except BaseException:
        parent.close()
        raise
    finally:
        child.close()
        os.close(netfd)
        if userfd is not None:
            os.close(userfd)
    return pid, parent


def start_open_tap(target: NamespaceTarget, req: TapRequest) -> PendingTap:
    """Fork the helper that opens the TAP in the target namespace.

    The caller may do other work (imports) before `wait()`. Raises
    NamespaceError with one readable line when a namespace cannot be opened.
    """
    import slirpy._engine  # noqa: F401 - for the child (see the module's docstring)

    pid, parent = fork_into(target, lambda sock, netfd, userfd: _child(sock, netfd, userfd, req))
    return PendingTap(pid, parent, 3 if req.netlink else 1)


def open_tap(target: NamespaceTarget, req: TapRequest) -> TapHandle:
    """Open the TAP in the target namespace (fork, join, open, send back)."""
    return start_open_tap(target, req).wait()
