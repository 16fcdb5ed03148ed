"""Run the site's compose CLI: v2 (``docker compose``) preferred, v1 (``docker-compose``) accepted.

Every call names the project, the project folder, the compose file and the
site environment file explicitly, and never pulls or builds.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .childenv import child_environment


class ComposeError(Exception):
    """The compose CLI is missing or a compose command failed."""


@dataclass(frozen=True)
class ComposeCli:
    """A compose CLI: the argv prefix to run it and its major version."""

    argv: tuple[str, ...]
    version: str

    @property
    def major(self) -> int:
        """2 for the Go rewrite, 1 for the python docker-compose."""
        return 2 if self.version.lstrip("v").startswith("2") else 1

    def describe(self) -> str:
        """``docker compose v2.40.3`` / ``docker-compose 1.29.2``."""
        return f"{' '.join(self.argv)} {self.version}"


def find_compose(preference: Optional[str] = None) -> ComposeCli:
    """Find a compose CLI. ``preference`` ("v1"/"v2", or env AIRGAP_COMPOSE) forces one."""
    preference = preference or os.environ.get("AIRGAP_COMPOSE")
    candidates: list[tuple[str, ...]] = []
    docker = shutil.which("docker")
    if docker and preference != "v1":
        candidates.append((docker, "compose"))
    standalone = shutil.which("docker-compose")
    if standalone and preference != "v2":
        candidates.append((standalone,))
    for argv in candidates:
        version = _version(argv)
        if version is None:
            continue
        cli = ComposeCli(argv=argv, version=version)
        if preference == "v2" and cli.major != 2 or preference == "v1" and cli.major != 1:
            continue
        return cli
    wanted = {"v1": "docker-compose (v1)", "v2": "the docker compose plugin (v2)"}.get(preference or "", "docker compose (v2) or docker-compose (v1)")
    raise ComposeError(f"no compose CLI found: install {wanted} on this host")


def _version(argv: Sequence[str]) -> Optional[str]:
    try:
        result = subprocess.run([*argv, "version", "--short"], capture_output=True, text=True, timeout=30,
                                env=child_environment(), stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = result.stdout.strip()
    return text if result.returncode == 0 and text else None


@dataclass
class ComposeProject:
    """One compose project on this host: CLI, name, folder, compose file and environment file."""

    cli: ComposeCli
    name: str
    directory: Path
    env_file: Path

    @property
    def compose_file(self) -> Path:
        """The release's rendered compose config."""
        return self.directory / "docker-compose.yml"

    def argv(self, *args: str) -> list[str]:
        """The full command line for ``compose ARGS``."""
        return [*self.cli.argv, "-p", self.name, "--project-directory", str(self.directory),
                "-f", str(self.compose_file), "--env-file", str(self.env_file), *args]

    def run(self, *args: str, timeout: Optional[float] = None, capture: bool = True) -> subprocess.CompletedProcess:
        """Run ``compose ARGS``; ComposeError with its output if it fails."""
        try:
            result = subprocess.run(self.argv(*args), capture_output=capture, text=True, timeout=timeout,
                                    cwd=self.directory, stdin=subprocess.DEVNULL, env=child_environment())
        except subprocess.TimeoutExpired:
            raise ComposeError(f"compose {' '.join(args)} did not finish within {timeout:.0f}s") from None
        if result.returncode != 0:
            output = ((result.stderr or "") + (result.stdout or "")).strip() if capture else ""
            raise ComposeError(f"compose {' '.join(args)} failed (exit {result.returncode}): {output[-2000:]}")
        return result

    def up(self, timeout: Optional[float] = None, services: Sequence[str] = ()) -> None:
        """Create/start the stack without pulling or building."""
        args = ["up", "-d", "--no-build", "--remove-orphans"]
        if self.cli.major == 2:
            args += ["--pull", "never"]
        self.run(*args, *services, timeout=timeout)

    def down(self, remove_volumes: bool = False, timeout: Optional[float] = None) -> None:
        """Stop and remove the stack's containers and networks (volumes only when asked)."""
        self.run("down", "--remove-orphans", *(["--volumes"] if remove_volumes else []), timeout=timeout)

    def restart(self, services: Sequence[str] = (), timeout: Optional[float] = None) -> None:
        """Restart services in place; a restart never pulls."""
        self.run("restart", *services, timeout=timeout)

    def logs_argv(self, service: str, tail: Optional[int], follow: bool) -> list[str]:
        """The command line that shows a service's logs."""
        args = ["logs", "--no-color"]
        if tail is not None:
            args += ["--tail", str(tail)]
        if follow:
            args.append("--follow")
        return self.argv(*args, service)
