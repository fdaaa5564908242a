"""The client test bed: a throw-away unprivileged user running real Podman and RootlessKit.

This module owns the pieces the client tests share:

* `ClientUser`: a login user made for the test session (`useradd`, which also
  gives it /etc/subuid and /etc/subgid ranges), an XDG runtime directory, and a
  way to run commands as that user; `remove()` takes all of it away again.
* `Podman`: rootless Podman configured for this VM (runc, cgroupfs, vfs
  storage, file events) with containers.conf `network_cmd_path` pointing at
  slirpy's `slirpy-slirp4netns` console script, and an image imported from a
  busybox-static root file system (no registry).
* proof that slirpy served a container: the process list (`slirpy_procs`,
  `real_slirp4netns_procs`) and the API's slirpy-only `get_stats` call.
* `LineServer`: a bounded TCP server on the host's loopback that answers one
  line with a digest of it and records who connected.

It must not send traffic anywhere but loopback or test-host namespaces, must
not touch users, processes or files it did not create, and must not do
anything at import time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

REPO = pathlib.Path(__file__).resolve().parents[2]
# The console script pip made next to the interpreter running the tests: the
# very command a user puts in containers.conf / --slirp4netns-binary.
SLIRPY_SCRIPT = pathlib.Path(sys.executable).parent / "slirpy-slirp4netns"
# One user per test run ("slirpy-c" + the pytest process's PID): runs of the
# suite at the same time on one machine must not remove each other's user.
USER_PREFIX = "slirpy-c"
IMAGE = "localhost/slirpy-busybox:latest"


# ------------------------------------------------------------------ the user


def _uid_procs(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
    return pids


@dataclass
class ClientUser:
    """The unprivileged user the client tests run Podman and RootlessKit as."""

    name: str
    uid: int
    gid: int
    home: pathlib.Path
    runtime_dir: pathlib.Path

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            # The console script imports slirpy: make it this checkout's,
            # whatever the venv's editable install points at.
            "PYTHONPATH": str(REPO),
            **extra,
        }

    def argv(self, *cmd: str) -> list[str]:
        return [
            "setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", *cmd
        ]

    def run(
        self, *cmd: str, timeout: float = 90, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            self.argv(*cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            cwd=self.home,
            stdin=subprocess.DEVNULL,
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
            )
        return r

    def popen(self, *cmd: str, **kw: object) -> subprocess.Popen[str]:
        return subprocess.Popen(  # type: ignore[call-overload]
            self.argv(*cmd), env=self.env(), cwd=self.home, text=True, **kw
        )

    def kill_all(self) -> None:
        """Kill every process of this user (all of them were started by the tests)."""
        for _ in range(50):
            pids = _uid_procs(self.uid)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def remove(self) -> None:
        self.kill_all()
        # userdel -r also drops the user's /etc/subuid and /etc/subgid lines.
        subprocess.run(["userdel", "-r", "-f", self.name], capture_output=True, timeout=60)
        shutil.rmtree(self.home, ignore_errors=True)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


def _drop_sub_ids(name: str) -> None:
    for path in ("/etc/subuid", "/etc/subgid"):
        p = pathlib.Path(path)
        if p.exists():
            lines = p.read_text().splitlines(keepends=True)
            p.write_text("".join(ln for ln in lines if not ln.startswith(f"{name}:")))


def _remove_user(name: str) -> None:
    with contextlib.suppress(KeyError):
        old = pwd.getpwnam(name)
        ClientUser(name, old.pw_uid, old.pw_gid, pathlib.Path(old.pw_dir),
                   pathlib.Path(f"/run/user/{old.pw_uid}")).remove()
    _drop_sub_ids(name)


def _remove_stale_users() -> None:
    """Users of earlier runs that were killed before their clean-up (their PID is gone)."""
    for entry in pwd.getpwall():
        suffix = entry.pw_name.removeprefix(USER_PREFIX)
        alive = suffix.isdigit() and os.path.exists(f"/proc/{suffix}")
        if entry.pw_name.startswith(USER_PREFIX) and suffix.isdigit() and not alive:
            _remove_user(entry.pw_name)


def make_client_user() -> ClientUser:
    """Create this run's test user afresh (leftovers of killed runs are removed first)."""
    _remove_stale_users()
    name = f"{USER_PREFIX}{os.getpid()}"
    _remove_user(name)
    home = pathlib.Path(f"/tmp/{name}-home")
    shutil.rmtree(home, ignore_errors=True)
    for attempt in range(10):
        # useradd fails when another one holds the lock on /etc/passwd: retry.
        r = subprocess.run(
            ["useradd", "--create-home", "--home-dir", str(home), "--shell", "/bin/sh", name],
            capture_output=True, text=True, timeout=30,
        )
        if r.returncode == 0:
            break
        if attempt == 9 or "lock" not in r.stderr:
            raise AssertionError(f"useradd {name} failed: {r.stderr.strip()}")
        time.sleep(0.5)
    pw = pwd.getpwnam(name)
    subuid = pathlib.Path("/etc/subuid").read_text() if os.path.exists("/etc/subuid") else ""
    if not any(ln.startswith(f"{name}:") for ln in subuid.splitlines()):
        # useradd gives ranges only when login.defs says so: add them by hand,
        # one per uid so that concurrent runs do not share one.
        first = 3_000_000 + (pw.pw_uid % 10_000) * 65_536
        sub = f"{first}-{first + 65_535}"
        subprocess.run(
            ["usermod", "--add-subuids", sub, "--add-subgids", sub, name],
            check=True, capture_output=True, timeout=30,
        )
    runtime = pathlib.Path(f"/run/user/{pw.pw_uid}")
    runtime.mkdir(parents=True, exist_ok=True)
    os.chown(runtime, pw.pw_uid, pw.pw_gid)
    runtime.chmod(0o700)
    home.chmod(0o755)
    return ClientUser(name, pw.pw_uid, pw.pw_gid, home, runtime)


# ------------------------------------------------------------------ podman


def busybox_rootfs_tar(path: pathlib.Path) -> None:
    """A root file system: /bin/busybox, one symlink per applet, a few dirs."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    applets = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    with tarfile.open(path, "w") as tar:
        for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "www"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, "bin/busybox")
        for applet in applets:
            if applet == "busybox":  # a symlink to itself would shadow the binary
                continue
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
        # What the forwarding tests serve: deterministic, ~100 KB, computable here.
        blob = served_blob()
        info = tarfile.TarInfo("www/blob")
        info.size, info.mode = len(blob), 0o644
        tar.addfile(info, fileobj=_BytesReader(blob))


def served_blob() -> bytes:
    return "".join(f"{i}\n" for i in range(1, 20001)).encode()


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._pos + n
        chunk, self._pos = self._data[self._pos:end], min(end, len(self._data))
        return chunk


@dataclass
class Podman:
    user: ClientUser
    names: list[str] = field(default_factory=list)

    def __call__(self, *args: str, timeout: float = 90, check: bool = True) -> (
        subprocess.CompletedProcess[str]
    ):
        return self.user.run("podman", *args, timeout=timeout, check=check)

    @contextlib.contextmanager
    def container(self, *opts: str, cmd: str = "sleep 600") -> Iterator[PodmanContainer]:
        """`podman run -d` a container; on exit remove it and check slirpy went away."""
        name = f"slirpy-t{len(self.names)}-{os.getpid()}"
        self.names.append(name)
        self("run", "-d", "--name", name, *opts, IMAGE, "sh", "-c", cmd)
        c = PodmanContainer(self, name)
        try:
            assert c.netns, "podman gave the container no network namespace path"
            yield c
        finally:
            self("rm", "-f", "-t", "0", name, check=False)
        # Podman closes the exit fd: slirpy must be gone, not lingering.
        deadline = time.monotonic() + 10
        while c.netns and slirpy_procs(self.user.uid, c.netns):
            assert time.monotonic() < deadline, "slirpy outlived its container"
            time.sleep(0.1)


@dataclass
class PodmanContainer:
    podman: Podman
    name: str
    _netns: str | None = None

    def sh(self, script: str, timeout: float = 60, check: bool = True) -> (
        subprocess.CompletedProcess[str]
    ):
        return self.podman("exec", self.name, "sh", "-c", script, timeout=timeout, check=check)

    @property
    def netns(self) -> str:
        if self._netns is None:
            self._netns = self.podman(
                "inspect", "--format", "{{.NetworkSettings.SandboxKey}}", self.name
            ).stdout.strip()
        return self._netns

    def slirpy_argv(self) -> list[str]:
        """slirpy's command line for this container; asserts it is slirpy, not slirp4netns."""
        procs = slirpy_procs(self.podman.user.uid, self.netns)
        assert len(procs) == 1, f"expected one slirpy for {self.netns}, got {procs}"
        assert real_slirp4netns_procs(self.podman.user.uid) == []
        return procs[0][1]


# ------------------------------------------------------------------ proof


def _cmdlines(uid: int) -> Iterator[tuple[int, list[str]]]:
    for pid in _uid_procs(uid):
        with contextlib.suppress(OSError):
            raw = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
            if raw:
                yield pid, [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")]


def slirpy_procs(uid: int, needle: str = "") -> list[tuple[int, list[str]]]:
    """Processes of `uid` running slirpy's console script (with `needle` in argv).

    The script is run by its interpreter: argv is [python, script, options...].
    """
    out = []
    for pid, argv in _cmdlines(uid):
        if len(argv) > 1 and argv[1] == str(SLIRPY_SCRIPT) and (
            not needle or needle in argv
        ):
            out.append((pid, argv[2:]))
    return out


def real_slirp4netns_procs(uid: int) -> list[tuple[int, list[str]]]:
    return [
        (pid, argv) for pid, argv in _cmdlines(uid) if os.path.basename(argv[0]) == "slirp4netns"
    ]


def api_call(path: str, request: dict[str, object]) -> dict[str, object]:
    """One request on a slirp4netns API socket, the way Podman sends it."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(json.dumps(request).encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return json.loads(data)


def option_value(argv: list[str], name: str) -> str | None:
    """The value of `--name V` or `--name=V` in a command line."""
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


# ------------------------------------------------------------------ servers


def line_digest(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()[:32]


class LineServer:
    """TCP server on host loopback: reads one line, answers `pong <digest>\\n`, closes.

    Records (peer address, line) per connection. Bounded: at most 64
    connections, 10 s per connection, stopped by `close()`.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.seen: list[tuple[str, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set() and len(self.seen) < 64:
            try:
                conn, peer = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(10)
                data = b""
                with contextlib.suppress(OSError):
                    while b"\n" not in data and len(data) < 4096:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    line = data.split(b"\n", 1)[0]
                    self.seen.append((peer[0], line))
                    conn.sendall(f"pong {line_digest(line)}\n".encode())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()
