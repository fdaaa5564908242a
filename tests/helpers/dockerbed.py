"""Rootless Docker over RootlessKit's `--net=pasta`, run with one pasta under test.

Used by tests/clients/test_rootless_docker.py. This module owns `Dockerd`:
Debian 13's docker.io started the documented way
(/usr/share/docker.io/contrib/dockerd-rootless.sh, which re-executes itself
under RootlessKit 2.0.2) as the Debian 13 root's test user inside the fake
host (tests/helpers/pastabed.py), pointed at a pasta with the script's
environment variables (ENV below), a busybox image loaded into it, and its
stop (SIGTERM to RootlessKit, as systemd's `docker.service` of the user
does). Each Dockerd has its own runtime directory and data root under the
session's /tmp (a tmpfs of the session), so the machine's Docker, if any,
and Podman's runtime directory are never touched.

It must not start anything at import time, send traffic, or touch processes
it did not start (clean-up kills by PID).
"""

from __future__ import annotations

import contextlib
import pathlib
import re
import shlex
import subprocess
import tempfile
import time

from tests.helpers import pastabed, trixie_root

DOCKERD_ROOTLESS = "/usr/share/docker.io/contrib/dockerd-rootless.sh"
# The root's busybox image (trixie_root.IMAGE, in the test user's Podman
# store), saved by Podman and loaded by Docker: no registry involved.
IMAGE = trixie_root.IMAGE
START_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0


class DockerError(RuntimeError):
    """dockerd did not come up or a docker command failed: the test fails with its log."""


def env_for(executable: str, runtime_dir: str) -> dict[str, str]:
    """What a user sets to run rootless Docker over RootlessKit's pasta with `executable`.

    docs/usage.md documents the same variables. The implicit port driver is
    the one that works with pasta: pasta itself mirrors ports bound in the
    namespace (`--tcp-ports=auto`), no RootlessKit port driver is involved.
    """
    return {
        "XDG_RUNTIME_DIR": runtime_dir,
        "DOCKER_HOST": f"unix://{runtime_dir}/docker.sock",
        "DOCKERD_ROOTLESS_ROOTLESSKIT_NET": "pasta",
        "DOCKERD_ROOTLESS_ROOTLESSKIT_PORT_DRIVER": "implicit",
        "DOCKERD_ROOTLESS_ROOTLESSKIT_FLAGS": f"--pasta-binary={executable}",
    }


def stack_pids(pasta: pastabed.Pasta) -> dict[int, str]:
    """PID -> argv of the processes running this pasta in RootlessKit's 2.0 form.

    RootlessKit 2.0 starts `<exe> --foreground --stderr --ns-ifname=tap0 ...`;
    a script's interpreter (slirpy-pasta is a Python console script) may
    come first. RootlessKit's own command line, which holds
    `--pasta-binary=<exe>`, is not one of them.
    """
    exe = re.escape(pasta.executable)
    # The real pasta re-executes itself as pasta.avx2 where the CPU has AVX2.
    want = re.compile(rf"^(\S*python\S* )?{exe}(\.avx2)? --foreground ")
    r = pasta.bed.session.run("ps", "-eo", "pid=,args=", check=False)
    out = {}
    for line in r.stdout.splitlines():
        pid, _, args = line.strip().partition(" ")
        if want.match(args.strip()):
            out[int(pid)] = args.strip()
    return out


class Dockerd:
    """One rootless dockerd of the test user whose RootlessKit runs `pasta`."""

    def __init__(self, pasta: pastabed.Pasta) -> None:
        self.pasta = pasta
        self.session = pasta.bed.session
        self.base = f"/tmp/dockerbed-{pasta.name}"
        self.runtime_dir = f"{self.base}/run"
        self.data_root = f"{self.base}/data"
        self.env = env_for(pasta.executable, self.runtime_dir)
        self.pid = 0  # RootlessKit's PID in the session's PID namespace
        self._proc: subprocess.Popen[str] | None = None
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            mode="w+", prefix=f"dockerbed-{pasta.name}-", suffix=".log")
        self.returncode: int | None = None

    # -------------------------------------------------------------- commands

    def docker(self, *args: str, check: bool = True, timeout: float = 120,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        r = self.session.run_user("docker", *args, env=self.env, check=False,
                                  timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise DockerError(f"docker {shlex.join(args)} exited {r.returncode}:\n"
                              f"{r.stdout}\n{r.stderr}\n--- dockerd log:\n{self.log()[-4000:]}")
        return r

    def log(self) -> str:
        """What dockerd-rootless.sh, RootlessKit, the stack and dockerd wrote so far."""
        self._log.flush()
        return pathlib.Path(self._log.name).read_text(errors="replace")

    # -------------------------------------------------------------- life cycle

    def start(self) -> None:
        """dockerd-rootless.sh in the background; returns once `docker info` answers."""
        uid = trixie_root.USER_UID
        self.session.run("sh", "-c", f"rm -rf {self.base} && install -d -o {uid} -g {uid} "
                         f"-m 0700 {self.base} {self.runtime_dir} {self.data_root}")
        pidfile = f"{self.base}/rootlesskit.pid"
        # $$ is the shell that exec's the script, which exec's RootlessKit:
        # the PID file names RootlessKit, the process to signal.
        script = f"echo $$ > {pidfile}; exec {DOCKERD_ROOTLESS} --data-root={self.data_root}"
        self._proc = self.session.popen_user(
            "sh", "-c", script, env=self.env, stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                raise DockerError(f"dockerd-rootless.sh exited {self._proc.returncode}:\n"
                                  f"{self.log()[-6000:]}")
            r = self.session.run_user("docker", "info", "--format", "{{.ServerVersion}}",
                                      env=self.env, check=False, timeout=30)
            if r.returncode == 0 and r.stdout.strip():
                break
            if time.monotonic() > deadline:
                raise DockerError(f"dockerd did not answer within {START_TIMEOUT} s:\n"
                                  f"{r.stderr}\n--- dockerd log:\n{self.log()[-6000:]}")
            time.sleep(0.2)
        self.pid = int(self.session.run("cat", pidfile).stdout)

    def load_image(self) -> None:
        """The root's busybox image, from the user's Podman store into Docker's."""
        tar = f"{self.base}/busybox.tar"
        self.session.run_user("podman", "save", "-o", tar, IMAGE, timeout=120)
        self.docker("load", "-i", tar)
        self.session.run("rm", "-f", tar)

    def stop(self) -> int | None:
        """SIGTERM to RootlessKit and wait for it; SIGKILL after STOP_TIMEOUT.

        Returns RootlessKit's exit status (None once already stopped). Any
        stack process still there afterwards is left for the caller to find.
        """
        if self._proc is None:
            return self.returncode
        if self.pid:
            self.session.run("kill", "-TERM", str(self.pid), check=False)
        try:
            self._proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            if self.pid:
                self.session.run("kill", "-KILL", str(self.pid), check=False)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)
        self.returncode = self._proc.returncode
        self._proc = None
        return self.returncode

    def clean_up(self) -> None:
        """After stop(): kill (by PID) what this run left: stack, dockerd, containerd, shims."""
        self.stop()
        uid = str(trixie_root.USER_UID)
        left = set(stack_pids(self.pasta))
        # dockerd, containerd and the shims name this run's data root or runtime dir.
        r = self.session.run("pgrep", "-u", uid, "-f", self.base, check=False)
        left |= {int(p) for p in r.stdout.split()}
        for pid in sorted(left):
            self.session.run("kill", "-KILL", str(pid), check=False)
        self.session.run("rm", "-rf", self.base, check=False)
        self._log.close()
