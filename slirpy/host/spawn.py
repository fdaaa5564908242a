"""New namespaces for `NewNamespace` targets: a holder, or a command.

This module owns creating namespaces and what runs in them:

* `fork_namespaced()` forks a child that unshares a new user namespace
  (mapping the caller to root inside, or to itself with `keep_id`) plus the
  other namespaces asked for, and reports success or a one-line error
  (`userns_error()` says which sysctl to change when user namespaces are
  disabled);
* `Holder`: a child that only keeps a new user+net namespace alive until
  slirpy closes its pipe (the library's `Network()` with no target);
* `CommandSpawn`: `slirpy run`'s child, which waits for the "go" byte (the
  network is up, ports are published), bind-mounts a resolv.conf naming
  slirpy's forwarder over /etc/resolv.conf in its own mount namespace,
  restores default signal dispositions and execs the command; its exit code
  is the daemon's.

Python 3.11 has no `os.unshare` and no `os.mount`: the child calls libc's
`unshare(2)` and `mount(2)` through ctypes, resolved in the parent before the
fork so that the child imports nothing. They run once per namespace, so they
do not belong in the C engine's interface (the data path's). ctypes is
imported only here, and this module only for a NewNamespace target: joining
an existing namespace never pays for it.

It must not configure the network (slirpy.host.netns does, from the daemon)
nor print anything but the child's one-line exec errors.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from typing import NoReturn

from slirpy.config import NetworkModel
from slirpy.host.netns import NamespaceError

__all__ = [
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWUSER",
    "CommandSpawn",
    "Holder",
    "exec_status",
    "find_program",
    "fork_namespaced",
    "guest_resolv_conf",
    "userns_error",
]

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 0x80000
IPV6_WAIT_S = 5.0
IFA_F_TENTATIVE = 0x40
GUEST_RESOLV_CONF = "/etc/resolv.conf"


class Libc:
    """The libc calls Python 3.11 lacks, resolved before any fork."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.unshare = libc.unshare
        self.unshare.argtypes = (ctypes.c_int,)
        self.prctl = libc.prctl
        self.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                               ctypes.c_ulong)
        self.mount = libc.mount
        self.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                               ctypes.c_ulong, ctypes.c_void_p)

    @staticmethod
    def check(rc: int, what: str) -> None:
        if rc != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"{what}: {os.strerror(e)}")

    @staticmethod
    def errno() -> int:
        return ctypes.get_errno()


def _sysctl(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def userns_error(err: OSError, proc_sys: str = "/proc/sys") -> str:
    """One line saying why unshare(CLONE_NEWUSER) failed and what to do."""
    base = "cannot create a user namespace"
    if _sysctl(f"{proc_sys}/kernel/unprivileged_userns_clone") == "0" and os.geteuid() != 0:
        return (
            f"{base}: unprivileged user namespaces are disabled "
            "(kernel.unprivileged_userns_clone=0); enable them with "
            "'sysctl -w kernel.unprivileged_userns_clone=1'"
        )
    if _sysctl(f"{proc_sys}/user/max_user_namespaces") == "0":
        return (
            f"{base}: user namespaces are disabled (user.max_user_namespaces=0); "
            "enable them with 'sysctl -w user.max_user_namespaces=15000'"
        )
    if _sysctl(f"{proc_sys}/kernel/apparmor_restrict_unprivileged_userns") == "1":
        return (
            f"{base}: AppArmor restricts unprivileged user namespaces "
            "(kernel.apparmor_restrict_unprivileged_userns=1); allow them with "
            "'sysctl -w kernel.apparmor_restrict_unprivileged_userns=0' or an AppArmor profile"
        )
    if err.errno == errno.ENOSPC:
        limit = _sysctl(f"{proc_sys}/user/max_user_namespaces") or "?"
        return (
            f"{base}: the limit on user namespaces is reached "
            f"(user.max_user_namespaces={limit}); raise it with sysctl"
        )
    if err.errno == errno.EPERM:
        return (
            f"{base}: not permitted (a seccomp filter or the container slirpy runs in "
            "forbids unshare(CLONE_NEWUSER)); run slirpy where user namespaces are allowed"
        )
    return f"{base}: {os.strerror(err.errno or 0)}"


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _enter_new_namespaces(libc: Libc, flags: int, keep_id: bool) -> None:
    """In the forked child: unshare, then map our uid/gid (root inside, or keep_id)."""
    uid, gid = os.geteuid(), os.getegid()
    # The child must not outlive slirpy: its network would be gone anyway.
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:
        libc.check(libc.unshare(flags), "unshare")
    except OSError as e:
        if flags & CLONE_NEWUSER:
            raise NamespaceError(userns_error(e)) from None
        raise NamespaceError(f"cannot create namespaces: {e.strerror}") from None
    if flags & CLONE_NEWUSER:
        inside_uid, inside_gid = (uid, gid) if keep_id else (0, 0)
        try:
            # "deny" first: an unprivileged process may write gid_map only then.
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"{inside_uid} {uid} 1\n")
            _write("/proc/self/gid_map", f"{inside_gid} {gid} 1\n")
        except OSError as e:
            raise NamespaceError(f"cannot map the user in the new user namespace: {e}") from None


def fork_namespaced(
    flags: int,
    then: Callable[[], NoReturn],
    *,
    keep_id: bool = False,
    prepare: Callable[[], None] | None = None,
    libc: Libc | None = None,
) -> int:
    """Fork a child in new namespaces (`flags`: CLONE_NEW*), run `then` in it.

    Returns the child's PID once its namespaces exist, its user is mapped and
    `prepare` (if any) ran in it, so that /proc/PID/ns/* can be joined;
    raises NamespaceError with the child's one-line reason otherwise (the
    child is reaped). `then` runs in the child and must end with os._exit or
    an exec.
    """
    libc = libc or Libc()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        rc = 1
        try:
            os.close(rfd)
            try:
                _enter_new_namespaces(libc, flags, keep_id)
                if prepare is not None:
                    prepare()
            except NamespaceError as e:
                os.write(wfd, str(e).encode() + b"\n")
                os._exit(1)
            os.write(wfd, b"ok\n")
            os.close(wfd)
            then()
        except BaseException as e:  # nothing may escape a forked child
            with contextlib.suppress(OSError):
                os.write(2, f"slirpy: {e}\n".encode())
        finally:
            os._exit(rc)
    os.close(wfd)
    try:
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = os.read(rfd, 4096)
            if not chunk:
                break
            reply += chunk
    finally:
        os.close(rfd)
    if reply != b"ok\n":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        text = reply.decode(errors="replace").strip()
        raise NamespaceError(text or "the namespace child died before creating its namespaces")
    return pid


def _hold(keep: int) -> NoReturn:
    """The namespace holder: drop every other fd, sleep until `keep` hangs up."""
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
    with contextlib.suppress(OSError):
        while os.read(keep, 1):
            pass
    os._exit(0)


class Holder:
    """A sleeping child that holds a new user+net namespace until `close()`."""

    def __init__(self) -> None:
        rfd, wfd = os.pipe()
        try:
            self.pid: int | None = fork_namespaced(
                CLONE_NEWUSER | CLONE_NEWNET, lambda: _hold(rfd)
            )
        except BaseException:
            os.close(wfd)
            raise
        finally:
            os.close(rfd)
        self._fd: int | None = wfd

    def close(self) -> None:
        """Let the holder go (it reads EOF and exits) and reap it; idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.pid is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = None


# ------------------------------------------------------------ a command to run


def guest_resolv_conf(net: NetworkModel, host_resolv_conf: str,
                      nameservers: tuple[str, ...] | None = None) -> str:
    """The resolv.conf the command sees: N+3 (and prefix::3), or `nameservers`
    (pasta's model: its --dns-forward addresses), the host's search domains."""
    if nameservers is not None:
        lines = [f"nameserver {a}" for a in nameservers]
    else:
        lines = [f"nameserver {net.dns}"]
        if net.ipv6:
            lines.append(f"nameserver {net.dns6}")
    with contextlib.suppress(OSError, UnicodeDecodeError), open(host_resolv_conf) as f:
        lines += [ln.strip() for ln in f if ln.split()[:1] in (["search"], ["domain"])]
    return "\n".join(lines) + "\n"


def exec_status(err: OSError) -> tuple[int, str]:
    """Exit code and message for a failed exec, the way shells say it."""
    if err.errno in (errno.ENOENT, errno.ENOTDIR):
        return 127, "command not found"
    if err.errno == errno.EACCES:
        return 126, "permission denied (not executable)"
    if err.errno == errno.ENOEXEC:
        return 126, "cannot execute: exec format error"
    return 126, f"cannot execute: {os.strerror(err.errno or 0)}"


def find_program(name: str) -> str:
    """`name` resolved the way shells do: OSError(ENOENT) when nowhere on PATH.

    Unlike execvp(3), a PATH directory we may not search does not turn "not
    found" into "permission denied"; a file found but not executable does.
    """
    if "/" in name:
        return name
    found = shutil.which(name)
    if found:
        return found
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(d or ".", name)
        if os.path.isfile(candidate):
            return candidate  # exec says EACCES: 126
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def _has_ipv6_address(ifname: str) -> bool:
    """A global, no longer tentative address on `ifname` (in our netns)?"""
    with contextlib.suppress(OSError), open("/proc/net/if_inet6") as f:
        for line in f:
            _addr, _idx, _plen, scope, flags, name = line.split()
            if name == ifname and scope == "00" and not int(flags, 16) & IFA_F_TENTATIVE:
                return True
    return False


def _fast_ipv6_defaults() -> None:
    """In the new netns, before the TAP exists: no DAD, no router solicitation delay.

    DAD is pointless on a link where slirpy is the only other host, and with
    the 1 s solicitation delay it would keep the command IPv6-less for ~2.5 s.
    New interfaces take these from `default`.
    """
    for name, value in (("accept_dad", "0"), ("router_solicitation_delay", "0")):
        with contextlib.suppress(OSError):
            _write(f"/proc/sys/net/ipv6/conf/default/{name}", value)


def _wait_ipv6(ifname: str) -> None:
    """Give the command a usable IPv6 address (SLAAC from slirpy's RA) before it runs."""
    deadline = time.monotonic() + IPV6_WAIT_S
    while time.monotonic() < deadline and not _has_ipv6_address(ifname):
        time.sleep(0.01)


def _run_command(
    libc: Libc, go_r: int, go_w: int, resolv: str | None, command: tuple[str, ...],
    tapname: str, ipv6: bool,
) -> NoReturn:
    """In the new namespaces: wait for the network, mount resolv.conf, exec the command."""
    os.close(go_w)
    if os.read(go_r, 1) != b"1":
        os._exit(1)  # slirpy failed to start and says why itself
    os.close(go_r)
    if ipv6:
        _wait_ipv6(tapname)
    # Slave: host mounts still show up here, ours never go back (the kernel
    # already makes it so for a mount namespace owned by a new user namespace).
    libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None)
    if resolv is not None and libc.mount(resolv.encode(), GUEST_RESOLV_CONF.encode(), None,
                                         MS_BIND, None) != 0:
        e = libc.errno()
        os.write(2, f"slirpy: warning: cannot bind-mount {GUEST_RESOLV_CONF}: "
                    f"{os.strerror(e)}; DNS uses the host's resolv.conf\n".encode())
    # Python ignores SIGPIPE and SIGXFSZ; exec keeps ignored signals ignored.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execv(find_program(command[0]), list(command))
    except OSError as e:
        code, msg = exec_status(e)
        os.write(2, f"slirpy: {command[0]}: {msg}\n".encode())
        os._exit(code)
    os._exit(127)  # pragma: no cover - execv returns only by raising


class CommandSpawn:
    """The command of a NewNamespace target, waiting in its namespaces for "go"."""

    def __init__(
        self,
        command: tuple[str, ...],
        net: NetworkModel,
        *,
        tapname: str,
        host_resolv_conf: str,
        keep_id: bool,
        nameservers: tuple[str, ...] | None = None,
        wait_ipv6: bool | None = None,
    ) -> None:
        """`nameservers`: the resolv.conf's servers instead of N+3 (empty: the
        host's resolv.conf is left as it is); `wait_ipv6` None: net.ipv6."""
        self.pid: int | None = None
        self._go_w: int | None = None
        self._tmpdir = tempfile.mkdtemp(prefix="slirpy-run-")
        ipv6 = net.ipv6 if wait_ipv6 is None else wait_ipv6
        try:
            resolv: str | None = None
            if nameservers != ():
                resolv = os.path.join(self._tmpdir, "resolv.conf")
                with open(resolv, "w") as f:
                    f.write(guest_resolv_conf(net, host_resolv_conf, nameservers))
                os.chmod(resolv, 0o644)
            libc = Libc()
            go_r, go_w = os.pipe()
            self._go_w = go_w
            try:
                self.pid = fork_namespaced(
                    CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS,
                    lambda: _run_command(libc, go_r, go_w, resolv, command, tapname, ipv6),
                    keep_id=keep_id,
                    prepare=_fast_ipv6_defaults if ipv6 else None,
                    libc=libc,
                )
            finally:
                os.close(go_r)
        except BaseException:
            self.kill()
            raise

    def go(self) -> None:
        """The network is ready: let the command run."""
        if self._go_w is not None:
            try:
                os.write(self._go_w, b"1")
            finally:
                os.close(self._go_w)
                self._go_w = None

    def signal(self, sig: int) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def wait(self) -> int:
        """Reap the command; its exit code, 128+N if killed by signal N."""
        assert self.pid is not None
        while True:
            try:
                _pid, status = os.waitpid(self.pid, 0)
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
        self.pid = None
        self._cleanup()
        code = os.waitstatus_to_exitcode(status)
        return 128 - code if code < 0 else code

    def kill(self) -> None:
        """Set-up failed: the child reads EOF instead of "1" (or is killed) and is reaped."""
        if self._go_w is not None:
            os.close(self._go_w)
            self._go_w = None
        if self.pid is not None:
            self.signal(signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = None
        self._cleanup()

    def _cleanup(self) -> None:
        shutil.rmtree(self._tmpdir, ignore_errors=True)
