"""How a release's stack runs: the seam between the install core and a stack runner.

Today's runner is compose on this host (:class:`ComposeRunner`: ``compose up``
with no pulls, then waiting until every service is healthy and every one-shot
exited 0). The next one, a Swarm stack, is one more class with the same method.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Protocol

import docker

from . import engine as engine_ops
from .archive import BundleHeader
from .compose import ComposeCli, ComposeError, ComposeProject
from .errors import InstallError, Say
from .health import ServiceState, last_log_lines, wait_until_ready
from .hostpaths import HostPathError, write_site_override
from .site import read_env, write_env_files


class StackRunner(Protocol):
    """How the stack of a release folder runs on the site."""

    def bring_up(self, release: Path, header: BundleHeader, timeout: float, say: Say) -> list[ServiceState]:
        """Start (or update) the stack of ``release`` and wait until it is ready; InstallError naming what is not."""


class ComposeRunner:
    """The stack as a compose project on this host's engine."""

    def __init__(self, client: docker.DockerClient, cli: ComposeCli, env_file: Path):
        self.client, self.cli, self.env_file = client, cli, env_file

    def project(self, release: Path, header: BundleHeader) -> ComposeProject:
        """The compose project of a release folder."""
        return ComposeProject(self.cli, header.spec.project, release, self.env_file)

    def bring_up(self, release: Path, header: BundleHeader, timeout: float, say: Say) -> list[ServiceState]:
        """compose up (no pulls), then wait until every service is ready."""
        return bring_up(self.client, self.project(release, header), header, timeout, say)


def bring_up(client: docker.DockerClient, project: ComposeProject, header: BundleHeader, timeout: float, say: Say) -> list[ServiceState]:
    """compose up (no pulls), then wait until every service is ready; InstallError naming what is not."""
    services = header.spec.services
    oneshot = header.spec.oneshot
    values = read_env(project.env_file)
    write_env_files(project.directory, header.spec.env_files, values)
    prepare_host_paths(project, header, values)
    say(f"up: {project.name} with {project.cli.describe()} ({len(services)} services)")
    up_error: Optional[str] = None
    try:
        project.up(timeout=timeout)
    except ComposeError as exc:
        up_error = str(exc)
    ok, states = wait_until_ready(
        client, project.name, services, oneshot, timeout=5 if up_error else timeout,
        on_change=lambda s: say(f"  {s.service}: {s.summary()}"),
    )
    if ok:
        say(f"healthy: {sum(1 for s in states if not s.oneshot)} service(s) up, {sum(1 for s in states if s.oneshot)} one-shot(s) done")
        return states
    details = []
    for state in states:
        if state.ready:
            continue
        detail = f"{state.service}: {state.summary()}"
        if state.last_health_output:
            detail += f"; last health check said: {state.last_health_output[-300:]}"
        if state.container:
            detail += "\n      last log lines:\n      " + last_log_lines(client, state.container, 10).replace("\n", "\n      ")
        details.append(detail)
    reason = f"compose up failed: {up_error}" if up_error else f"not healthy within {timeout:.0f}s"
    raise InstallError(f"the stack did not become healthy ({reason})", details, exit_code=3)


def prepare_host_paths(project: ComposeProject, header: BundleHeader, values: dict[str, str]) -> None:
    """Before any compose up: check the host paths the stack mounts and write the site's override for this engine."""
    try:
        write_site_override(project.directory, header, values, engine_ops.docker_host())
    except HostPathError as exc:
        raise InstallError(f"{exc}; nothing was started", [exc.fix]) from None
