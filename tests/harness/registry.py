"""The loopback registry (``docker-registry serve``), a docker.io mirror for the build engine."""

from __future__ import annotations

import shutil
from pathlib import Path

from .net import tcp_status
from .procs import HarnessError, pid_alive, read_pid, spawn, stop_pid, wait_until

ADDR = "127.0.0.1:5000"
PROGRAM = "docker-registry"

_MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
])


def split_ref(ref: str) -> tuple[str, str]:
    """``"postgres:15-alpine"`` -> ``("library/postgres", "15-alpine")``.

    Docker Hub naming: a one-part name is an official image under
    ``library/``; the tag defaults to ``latest``. Digests are not supported.
    """
    ref = ref.removeprefix("docker.io/")
    if ":" in ref.rsplit("/", 1)[-1]:
        name, tag = ref.rsplit(":", 1)
    else:
        name, tag = ref, "latest"
    if "/" not in name:
        name = f"library/{name}"
    return name, tag


class Registry:
    """A ``docker-registry`` on 127.0.0.1:5000 storing under ROOT/registry."""

    def __init__(self, root: Path) -> None:
        self.addr = ADDR
        self.storage = root / "registry"
        self.run_dir = root / "run" / "registry"
        self.config = self.run_dir / "config.yml"
        self.pidfile = self.run_dir / "registry.pid"
        self.log = self.run_dir / "registry.log"

    def mirror_ref(self, ref: str) -> str:
        """Where a docker.io ``ref`` lives in this registry (its mirror path)."""
        name, tag = split_ref(ref)
        return f"{self.addr}/{name}:{tag}"

    def pid(self) -> int | None:
        """Pid of our registry process when it runs, else None."""
        pid = read_pid(self.pidfile)
        return pid if pid_alive(pid, PROGRAM) else None

    def healthy(self) -> bool:
        """True when the registry API answers on 127.0.0.1:5000."""
        return tcp_status(self.addr, "/v2/") == 200

    def has(self, ref: str) -> bool:
        """True when the registry holds a manifest for docker.io ``ref``."""
        name, tag = split_ref(ref)
        status = tcp_status(self.addr, f"/v2/{name}/manifests/{tag}", method="HEAD",
                            headers={"Accept": _MANIFEST_TYPES})
        return status == 200

    def ensure(self) -> str:
        """Start the registry unless it already answers; return what was done."""
        if self.healthy():
            return "running" if self.pid() else "running (not started by the harness)"
        if shutil.which(PROGRAM) is None:
            raise HarnessError(f"{PROGRAM} not found: run scripts/setup.sh")
        self._write_config()
        proc = spawn([PROGRAM, "serve", str(self.config)], self.log, self.pidfile)
        wait_until(self.healthy, 30, f"registry on {self.addr}",
                   alive=lambda: proc.poll() is None, log=self.log)
        return "started"

    def stop(self) -> bool:
        """Stop our registry process; True when one was running."""
        return stop_pid(read_pid(self.pidfile), PROGRAM, timeout=10)

    def _write_config(self) -> None:
        self.storage.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {self.storage}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.addr}\n"
        )
