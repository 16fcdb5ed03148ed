"""Docker engines (dockerd) of the harness and the network namespace of the target."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Mapping, Optional, Sequence

import docker

from .net import NETNS_DIR, unix_status
from .procs import HarnessError, pid_alive, read_pid, run, spawn, stop_pid, wait_until

DOCKERD = "dockerd"


class Engine:
    """One dockerd with its own socket, data-root, exec-root and pidfile under ROOT.

    ``flags``: extra dockerd flags (mirror, networking); ``env``: extra
    environment of dockerd; ``netns``: run it inside that network namespace
    (via nsenter).
    """

    def __init__(self, root: Path, name: str, flags: Sequence[str] = (),
                 env: Optional[Mapping[str, str]] = None, netns: Optional[str] = None) -> None:
        self.name = name
        self.flags = list(flags)
        self.env = dict(env or {})
        self.netns = netns
        self.data_root = root / name
        self.run_dir = root / "run" / name
        self.exec_root = self.run_dir / "exec"
        self.socket = self.run_dir / "docker.sock"
        self.pidfile = self.run_dir / "dockerd.pid"
        self.log = self.run_dir / "dockerd.log"
        self.config = self.run_dir / "daemon.json"
        self._proc: Optional[subprocess.Popen] = None

    @property
    def docker_host(self) -> str:
        """The DOCKER_HOST value for this engine."""
        return f"unix://{self.socket}"

    def pid(self) -> Optional[int]:
        """Pid of this engine's dockerd when it runs, else None."""
        pid = read_pid(self.pidfile)
        return pid if pid_alive(pid, DOCKERD) else None

    def healthy(self) -> bool:
        """True when the engine answers /_ping on its socket."""
        return unix_status(self.socket) == 200

    def argv(self) -> list[str]:
        """The command line that starts this engine."""
        cmd = [
            shutil.which(DOCKERD) or DOCKERD,
            "--config-file", str(self.config),
            "-H", self.docker_host,
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(self.pidfile),
            "--shutdown-timeout", "5",
            *self.flags,
        ]
        if self.netns:
            cmd = ["nsenter", f"--net={NETNS_DIR / self.netns}", *cmd]
        return cmd

    def start(self) -> str:
        """Start dockerd unless it runs; do not wait. Returns what was done."""
        if self.pid() is not None:
            return "running"
        if shutil.which(DOCKERD) is None:
            raise HarnessError("dockerd not found: run scripts/setup.sh")
        for path in (self.data_root, self.exec_root):
            path.mkdir(parents=True, exist_ok=True)
        # Our own (empty) config file: ignore the host's /etc/docker/daemon.json.
        self.config.write_text(json.dumps({}) + "\n")
        self.socket.unlink(missing_ok=True)
        self.pidfile.unlink(missing_ok=True)
        self._proc = spawn(self.argv(), self.log, env=self.env)
        return "started"

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until the engine answers; fail early if the dockerd we started exits."""
        proc = self._proc
        alive = (lambda: proc.poll() is None) if proc else (lambda: self.pid() is not None)
        wait_until(self.healthy, timeout, f"{self.name} engine on {self.socket}",
                   alive=alive, log=self.log)

    def stop(self) -> bool:
        """Stop dockerd (its containers stop too); True when one was running."""
        return stop_pid(read_pid(self.pidfile), DOCKERD, timeout=40)

    def client(self, timeout: int = 120) -> docker.DockerClient:
        """A docker SDK client bound to this engine."""
        return docker.DockerClient(base_url=self.docker_host, timeout=timeout)


def ensure_netns(name: str) -> str:
    """Create network namespace ``name`` with only loopback up; return what was done."""
    created = not (NETNS_DIR / name).exists()
    if created:
        run(["ip", "netns", "add", name])
    run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"])
    return "created" if created else "present"


def netns_exists(name: str) -> bool:
    """True when network namespace ``name`` exists."""
    return (NETNS_DIR / name).exists()


def delete_netns(name: str) -> None:
    """Delete network namespace ``name`` if present."""
    if netns_exists(name):
        run(["ip", "netns", "delete", name])
