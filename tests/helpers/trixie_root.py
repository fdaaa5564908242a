"""The Debian 13 root of ../shared/TESTBED.md: Podman 5.4, pasta and RootlessKit 2 on this VM.

This module owns the root and the ways into it:

* `build_root()`: debootstrap of Debian 13 (trixie) with the package list of
  TESTBED.md, cached under /var/cache/slirpy-trixie-root/<key>/ where the key
  is a digest of suite, variant and packages (a changed list builds a new
  root; $SLIRPY_TRIXIE_ROOT_CACHE moves the cache). The mirror is the
  machine's own, read from its apt sources: no host name is written into
  the repository. Then the configuration the client
  tests need: the machine's CA bundle, a test user with subuid/subgid ranges,
  containers.conf (runc, cgroupfs, file events), per-user vfs storage, and a
  busybox image imported with `podman import` (no registry).
* `install_slirpy()`: a separate step (slirpy's layout moves): a venv made by
  the root's python3 (3.13) with slirpy installed from a checkout.
* `RootSession`: the root entered with `pivot_root` in a private mount
  namespace and a new PID namespace (a plain chroot cannot create user
  namespaces), inside a network namespace given by path (the fake host of
  fakehost.py) or else a fresh empty one; commands run in it as root or as
  the test user. Leaving the session kills every process in it.

It must not: let the root's Podman or pasta see the machine's network
namespace (only the pip step of `install_slirpy` uses it, to reach PyPI);
make mounts outside its private mount namespaces; touch processes it did
not start; do anything at import time.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

SUITE = "trixie"
VARIANT = "minbase"
PACKAGES: tuple[str, ...] = (
    "podman", "passt", "runc", "uidmap", "catatonit", "conmon", "netavark",
    "aardvark-dns", "iproute2", "ca-certificates", "fuse-overlayfs",
    "busybox-static", "procps", "python3-venv", "python3-dev", "gcc",
    "libc6-dev", "rootlesskit", "nftables",
    # slirp4netns: the Podman-level benchmark's slirp4netns mode (issue 17);
    # docker.io: rootless Docker over RootlessKit's pasta network.
    "slirp4netns", "docker.io", "docker-cli",
)
CACHE = pathlib.Path("/var/cache/slirpy-trixie-root")
# CI may keep the cache elsewhere (e.g. a directory its runner restores).
CACHE_ENV = "SLIRPY_TRIXIE_ROOT_CACHE"
# Bump when the configuration written into the root changes: the debootstrap
# result is kept, the configuration and the image are redone.
CONFIG_VERSION = 1

USER = "bed13"
# Fixed ids, far from the machine's own users and from the ranges clientbed.py
# hands out (3,000,000+), so a process of the root's user is recognisable.
USER_UID = 61013
SUBID_FIRST = 4_100_000
SUBID_COUNT = 65_536
IMAGE = "localhost/bed13-busybox:latest"
VENV = "/opt/slirpy-venv"
SRC_MOUNT = "/mnt/slirpy-src"

CONTAINERS_CONF = """\
# Written by tests/helpers/trixie_root.py.
[engine]
# This VM has cgroup v1 (hybrid): crun refuses it, runc with cgroupfs works.
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
"""

STORAGE_CONF = """\
[storage]
driver = "vfs"
graphroot = "/home/{user}/.local/share/containers/storage"
runroot = "/run/user/{uid}/containers"
"""

_PR_SET_PDEATHSIG = 1


class BedError(RuntimeError):
    """The test bed could not be built: a test using it must fail, never fall back."""


# ------------------------------------------------------------------ building


def cache_key(packages: Sequence[str] = PACKAGES) -> str:
    text = json.dumps([SUITE, VARIANT, sorted(packages)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _apt_source_lines() -> Iterator[tuple[str, list[str]]]:
    """(URI, suites) of every `deb` entry of the machine's apt sources, in order."""
    src = pathlib.Path("/etc/apt/sources.list.d")
    files = sorted(src.glob("*.sources")) + sorted(src.glob("*.list"))
    files.append(pathlib.Path("/etc/apt/sources.list"))
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":
            for stanza in text.split("\n\n"):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if ":" in line and not line.startswith(("#", " ")):
                        k, v = line.split(":", 1)
                        fields[k.strip().lower()] = v.strip()
                enabled = fields.get("enabled", "yes") != "no"
                if enabled and "deb" in fields.get("types", "").split():
                    for uri in fields.get("uris", "").split():
                        yield uri, fields.get("suites", "").split()
        else:
            for line in text.splitlines():
                words = line.split("#", 1)[0].split()
                if words[:1] != ["deb"]:
                    continue
                words = [w for w in words[1:] if not w.startswith("[")]
                if len(words) >= 2:
                    yield words[0], [words[1]]


def mirror_from_apt_sources() -> str:
    """The machine's Debian archive mirror (not its security archive)."""
    for uri, suites in _apt_source_lines():
        if suites and all(s.endswith("-security") for s in suites):
            continue
        if uri.startswith(("http://", "https://", "file:")):
            return uri
    raise BedError("no Debian mirror in /etc/apt/sources.list.d/ or /etc/apt/sources.list")


def _ensure_debootstrap() -> None:
    if shutil.which("debootstrap"):
        return
    r = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "debootstrap"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    if r.returncode != 0 or not shutil.which("debootstrap"):
        raise BedError(f"debootstrap is missing and apt-get could not install it: {r.stderr}")


@contextlib.contextmanager
def _locked(path: pathlib.Path) -> Iterator[None]:
    """One builder at a time per cache entry (concurrent runs wait for it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _debootstrap(root: pathlib.Path) -> None:
    _ensure_debootstrap()
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    mirror = mirror_from_apt_sources()
    argv = [
        "debootstrap", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}",
        SUITE, str(partial), mirror,
    ]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=1800,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if r.returncode != 0:
        log = partial / "debootstrap" / "debootstrap.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise BedError(f"debootstrap failed ({r.returncode}):\n{r.stderr[-3000:]}\n{tail}")
    partial.rename(root)


def _write(path: pathlib.Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _configure(root: pathlib.Path) -> None:
    """Files only (no process runs in the root here, except useradd through chroot)."""
    # pip inside the root reaches PyPI the way the machine does: same CA bundle.
    shutil.copyfile("/etc/ssl/certs/ca-certificates.crt",
                    root / "etc/ssl/certs/ca-certificates.crt")
    _write(root / "etc/containers/containers.conf", CONTAINERS_CONF)
    _write(root / "etc/resolv.conf", "# replaced per session by fakehost.py\n")
    home = root / "home" / USER
    r = subprocess.run(["chroot", str(root), "getent", "passwd", USER], capture_output=True)
    if r.returncode != 0:
        # chroot is enough for useradd (no user namespace is made here).
        for cmd in (["groupadd", "--gid", str(USER_UID), USER],
                    ["useradd", "--create-home", "--uid", str(USER_UID), "--gid",
                     str(USER_UID), "--shell", "/bin/sh", USER]):
            subprocess.run(["chroot", str(root), *cmd], check=True, capture_output=True,
                           timeout=60)
    ids = f"{USER}:{SUBID_FIRST}:{SUBID_COUNT}\n"
    _write(root / "etc/subuid", ids)
    _write(root / "etc/subgid", ids)
    conf = home / ".config" / "containers"
    _write(conf / "storage.conf", STORAGE_CONF.format(user=USER, uid=USER_UID))
    for p in (home / ".config", conf, conf / "storage.conf"):
        os.chown(p, USER_UID, USER_UID)


def _busybox_tar(root: pathlib.Path, out: pathlib.Path) -> None:
    """A root file system: the root's static busybox, one symlink per applet."""
    busybox = root / "usr/bin/busybox"
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True,
                             check=True, timeout=30).stdout.split()
    with tarfile.open(out, "w") as tar:
        for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "root"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(busybox), "bin/busybox")
        for applet in applets:
            if applet != "busybox":
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(info)


def _import_image(root: pathlib.Path) -> None:
    tar = root / "home" / USER / "bed13-busybox.tar"
    _busybox_tar(root, tar)
    os.chown(tar, USER_UID, USER_UID)
    # An empty network namespace: `podman import` needs no network at all.
    with RootSession(root) as s:
        s.run_user("podman", "rm", "-a", "-f", check=False)
        s.run_user("podman", "rmi", "-f", IMAGE, check=False)
        s.run_user("podman", "import", "--change", "CMD=/bin/sh",
                   f"/home/{USER}/{tar.name}", IMAGE, timeout=300)
    tar.unlink()


def build_root(cache: pathlib.Path | None = None) -> pathlib.Path:
    """The configured root with the busybox image, built on first use and cached.

    `cache` defaults to $SLIRPY_TRIXIE_ROOT_CACHE, else /var/cache/slirpy-trixie-root.
    """
    if cache is None:
        cache = pathlib.Path(os.environ.get(CACHE_ENV) or CACHE)
    if os.geteuid() != 0:
        raise BedError("building the Debian 13 root needs root")
    entry = cache / cache_key()
    root = entry / "root"
    stamp = entry / f"configured-v{CONFIG_VERSION}"
    with _locked(entry.with_suffix(".lock")):
        if not (root / "usr/bin/podman").exists():
            entry.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(root, ignore_errors=True)
            for old in entry.glob("configured-v*"):
                old.unlink()
            _debootstrap(root)
        if not stamp.exists():
            _configure(root)
            _import_image(root)
            stamp.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
    return root


def install_slirpy(root: pathlib.Path, checkout: pathlib.Path) -> pathlib.Path:
    """slirpy from `checkout` into the root's venv (made by the root's python3); its bin dir.

    The only step that runs in the machine's network namespace: pip fetches
    slirpy's dependencies from PyPI with the machine's CA bundle and index.
    """
    venv = pathlib.Path(VENV)
    with _locked(root.parent / "venv.lock"):
        env = {
            k: v for k, v in os.environ.items()
            if k.startswith("PIP_INDEX") or k.startswith("PIP_EXTRA_INDEX")
            or k.lower() in ("http_proxy", "https_proxy", "no_proxy")
        }
        env |= {"PIP_CERT": "/etc/ssl/certs/ca-certificates.crt",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1"}
        # The machine's resolver, for this step only: the root's own
        # /etc/resolv.conf names nothing, and sessions bind the fake host's.
        resolv = pathlib.Path("/etc/resolv.conf").resolve()
        with RootSession(root, host_network=True, resolv_conf=resolv,
                         binds=[(checkout, pathlib.Path(SRC_MOUNT))]) as s:
            if not (root / venv.relative_to("/") / "bin/python").exists():
                s.run("/usr/bin/python3", "-m", "venv", str(venv), timeout=300)
            # A copy of the checkout: pip must not write build/ or *.egg-info
            # into the source tree, which other engineers share.
            s.run("sh", "-c", f"rm -rf /tmp/src && cp -a {SRC_MOUNT} /tmp/src "
                  "&& rm -rf /tmp/src/build /tmp/src/*.egg-info /tmp/src/.git", timeout=300)
            s.run(f"{venv}/bin/pip", "install", "-q", "--force-reinstall", "--no-deps",
                  "/tmp/src", env=env, timeout=900)
            s.run(f"{venv}/bin/pip", "install", "-q", "/tmp/src", env=env, timeout=900)
    return venv / "bin"


# ------------------------------------------------------------------ entering


def _enter_script(root: pathlib.Path, resolv_conf: pathlib.Path | None,
                  binds: Sequence[tuple[pathlib.Path, pathlib.Path]]) -> str:
    """Shell run by PID 1 of the new PID namespace: set up the mounts, pivot, pause."""
    q = shlex.quote
    r = q(str(root))
    lines = [
        "set -e",
        f"mount --bind {r} {r}",
        f"mount -t proc proc {r}/proc",
        f"mount --rbind /dev {r}/dev",
        f"mount --rbind /sys {r}/sys",
        f"mount -t tmpfs -o mode=0755 tmpfs {r}/run",
        f"mount -t tmpfs -o mode=1777 tmpfs {r}/tmp",
    ]
    if resolv_conf is not None:
        lines.append(f"mount --bind {q(str(resolv_conf))} {r}/etc/resolv.conf")
    for src, dst in binds:
        target = q(str(root / dst.relative_to("/")))
        lines += [f"mkdir -p {target}", f"mount --bind -o ro {q(str(src))} {target}",
                  f"mount -o remount,bind,ro {target}"]
    lines += [
        f"cd {r}",
        "mkdir -p .oldroot",
        "pivot_root . .oldroot",
        "cd /",
        "umount -l /.oldroot",
        "mount --make-rshared /",
        f"install -d -o {USER_UID} -g {USER_UID} -m 0700 /run/user/{USER_UID}",
        "echo ready",
        # catatonit -P: a PID 1 that reaps orphans (conmon, pasta's parents).
        "exec /usr/bin/catatonit -P",
    ]
    return "\n".join(lines)


def _set_pdeathsig() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class RootSession:
    """The root entered once: a mount + PID namespace pivoted into it, in a chosen netns.

    `netns`: a network namespace path (e.g. /run/netns/NAME of the fake host);
    None gives a fresh empty one, unless `host_network` (the pip step only).
    """

    root: pathlib.Path
    netns: str | None = None
    resolv_conf: pathlib.Path | None = None
    binds: Sequence[tuple[pathlib.Path, pathlib.Path]] = ()
    host_network: bool = False
    _holder: subprocess.Popen[str] | None = None
    _pid1: int = 0

    def __enter__(self) -> RootSession:
        if self.netns is not None and self.host_network:
            raise BedError("netns and host_network exclude each other")
        argv: list[str] = []
        if self.netns is not None:
            if not os.path.exists(self.netns):
                raise BedError(f"network namespace {self.netns} does not exist")
            argv += ["nsenter", f"--net={self.netns}"]
        argv += ["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
                 "--kill-child"]
        if self.netns is None and not self.host_network:
            argv.append("--net")
        argv += ["sh", "-c", _enter_script(self.root, self.resolv_conf, self.binds)]
        self._holder = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, preexec_fn=_set_pdeathsig,
        )
        try:
            assert self._holder.stdout is not None
            line = self._holder.stdout.readline()
            if line.strip() != "ready":
                self._holder.kill()
                _, err = self._holder.communicate(timeout=10)
                raise BedError(f"entering {self.root} failed: {line}{err}")
            self._pid1 = self._find_pid1()
        except BaseException:
            self.close()
            raise
        return self

    def _find_pid1(self) -> int:
        assert self._holder is not None
        # unshare --fork: PID 1 of the new namespace is unshare's only child.
        for _ in range(100):
            with contextlib.suppress(OSError):
                kids = pathlib.Path(
                    f"/proc/{self._holder.pid}/task/{self._holder.pid}/children"
                ).read_text().split()
                if kids:
                    return int(kids[0])
            time.sleep(0.02)
        raise BedError("the session's PID 1 did not appear")

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Kill PID 1 of the session: the kernel kills every process of its PID namespace."""
        if self._pid1:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid1, signal.SIGKILL)
            self._pid1 = 0
        if self._holder is not None:
            with contextlib.suppress(ProcessLookupError):
                self._holder.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._holder.communicate(timeout=10)
            self._holder = None

    @property
    def pid1(self) -> int:
        return self._pid1

    def argv(self, *cmd: str, user: bool = False) -> list[str]:
        """A command line (for the machine) running `cmd` inside the session."""
        if not self._pid1:
            raise BedError("the session is closed")
        net = self.netns or f"/proc/{self._pid1}/ns/net"
        enter = ["nsenter", f"--net={net}", f"--mount=/proc/{self._pid1}/ns/mnt",
                 f"--pid=/proc/{self._pid1}/ns/pid"]
        if user:
            enter += ["setpriv", f"--reuid={USER_UID}", f"--regid={USER_UID}", "--init-groups"]
        return enter + list(cmd)

    def env(self, user: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
        home = f"/home/{USER}" if user else "/root"
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": home, "LANG": "C.UTF-8"}
        if user:
            env |= {"USER": USER, "LOGNAME": USER, "XDG_RUNTIME_DIR": f"/run/user/{USER_UID}",
                    # cgroup v1 is what this VM has: the warning is noise on every call.
                    "PODMAN_IGNORE_CGROUPSV1_WARNING": "1"}
        return env | (extra or {})

    def run(self, *cmd: str, user: bool = False, env: dict[str, str] | None = None,
            timeout: float = 120, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            self.argv(*cmd, user=user), capture_output=True, text=True, timeout=timeout,
            env=self.env(user, env), input=input,
            stdin=subprocess.DEVNULL if input is None else None,
        )
        if check and r.returncode != 0:
            raise BedError(f"{shlex.join(cmd)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r

    def run_user(self, *cmd: str, **kw: object) -> subprocess.CompletedProcess[str]:
        """`cmd` as the root's unprivileged test user (the way users run Podman)."""
        return self.run(*cmd, user=True, **kw)  # type: ignore[arg-type]

    def popen_user(self, *cmd: str, env: dict[str, str] | None = None,
                   **kw: object) -> subprocess.Popen[str]:
        return subprocess.Popen(  # type: ignore[call-overload]
            self.argv(*cmd, user=True), env=self.env(True, env), text=True, **kw
        )
