"""Run the site's compose CLI: the host's v2 plugin preferred, then the kit's own v2, then the host's v1.

Every call names the project, the project folder, the compose file and the
site environment file explicitly, and never pulls or builds.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .childenv import child_environment
from .hostpaths import SITE_OVERRIDE


class ComposeError(Exception):
    """The compose CLI is missing or a compose command failed."""


@dataclass(frozen=True)
class ComposeCli:
    """A compose CLI: the argv prefix to run it, its version, and which one it is (``source``)."""

    argv: tuple[str, ...]
    version: str
    source: str = ""
    reason: str = ""

    @property
    def major(self) -> int:
        """2 for the Go rewrite, 1 for the python docker-compose."""
        return 2 if self.version.lstrip("v").startswith("2") else 1

    def describe(self) -> str:
        """``docker compose v2.40.3 (the host's compose plugin)``, and why it was chosen when others were passed over."""
        text = f"{' '.join(self.argv)} {self.version}" + (f" ({self.source})" if self.source else "")
        return text + (f"; {self.reason}" if self.reason else "")


PREFERENCES = ("v1", "v2", "bundled")
HOST_PLUGIN, KIT, HOST_STANDALONE = "the host's compose plugin", "the kit's compose v2", "the host's docker-compose"


def bundled_compose() -> Optional[Path]:
    """The compose v2 binary the offline kit installed beside this tool (PREFIX/libexec/docker-compose), if any."""
    explicit = os.environ.get("AIRGAP_INSTALL_COMPOSE")
    if explicit:
        return Path(explicit)
    if getattr(sys, "frozen", False):  # the one-file executable: PREFIX/bin/airgap-install
        prefix = Path(sys.executable).resolve().parent.parent
    else:  # PREFIX/lib/installer/compose.py
        prefix = Path(__file__).resolve().parents[2]
    candidate = prefix / "libexec" / "docker-compose"
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def find_compose(preference: Optional[str] = None) -> ComposeCli:
    """Find a compose CLI: the host's v2 plugin, else the kit's v2, else the host's v1 ``docker-compose``.

    ``preference`` ("v1", "v2", "bundled", or env AIRGAP_COMPOSE) forces a kind.
    """
    preference = preference or os.environ.get("AIRGAP_COMPOSE")
    if preference and preference not in PREFERENCES:
        raise ComposeError(f"--compose {preference}: expected one of {', '.join(PREFERENCES)}")
    candidates: list[tuple[str, tuple[str, ...]]] = []
    docker = shutil.which("docker")
    if docker and preference in (None, "v2"):
        candidates.append((HOST_PLUGIN, (docker, "compose")))
    kit = bundled_compose()
    if kit is not None and preference in (None, "v2", "bundled"):
        candidates.append((KIT, (str(kit),)))
    standalone = shutil.which("docker-compose")
    if standalone and preference in (None, "v1"):
        candidates.append((HOST_STANDALONE, (standalone,)))
    passed: list[str] = []
    for source, argv in candidates:
        version = _version(argv)
        if version is None:
            passed.append({HOST_PLUGIN: "the host has no compose v2 plugin", KIT: f"{source} at {argv[0]} does not run"}.get(
                source, "the host's docker-compose does not run"))
            continue
        cli = ComposeCli(argv=argv, version=version, source=source)
        if preference == "v2" and cli.major != 2 or preference == "v1" and cli.major != 1:
            passed.append(f"{source} is {version}")
            continue
        reason = ", ".join(passed) if passed else ""
        if preference:
            reason = f"--compose {preference}" + (f"; {reason}" if reason else "")
        return ComposeCli(argv=argv, version=version, source=source, reason=reason)
    wanted = {"v1": "docker-compose (v1)", "v2": "the docker compose plugin (v2)",
              "bundled": "the kit's compose (install airgap-install from a kit that carries compose/)"}.get(
        preference or "", "docker compose (v2) or docker-compose (v1), or install airgap-install from its kit, "
        "which brings compose v2")
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

    @property
    def compose_files(self) -> list[Path]:
        """The compose config, then the site's override of host paths when the host needed one."""
        override = self.directory / SITE_OVERRIDE
        return [self.compose_file] + ([override] if override.is_file() else [])

    def argv(self, *args: str) -> list[str]:
        """The full command line for ``compose ARGS``."""
        files = [part for path in self.compose_files for part in ("-f", str(path))]
        return [*self.cli.argv, "-p", self.name, "--project-directory", str(self.directory),
                *files, "--env-file", str(self.env_file), *args]

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
