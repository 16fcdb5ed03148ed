"""Checks run before anything changes: engine, compose CLI, disk, ports, platform, host paths.

Every check runs (one failure does not hide the next) and each failure says
what to do about it.
"""
from __future__ import annotations

import errno
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import docker

from .archive import BundleHeader
from .compose import ComposeCli, ComposeError, find_compose
from .engine import EngineError, EngineFacts, EngineInventory, docker_host, engine_facts, inventory
from .health import PROJECT_LABEL

STACK_LABEL = "com.docker.stack.namespace"  # a Swarm stack's containers (the stack is named like the project)
from .hostpaths import HostPathError, check_mount, host_mounts
from .loader import LoadPlan, plan_load
from .site import fill_template

MIN_API = (1, 40)
DISK_MARGIN = 256 * 1024 * 1024


@dataclass
class Check:
    """One preflight check: its name, whether it passed, what was seen and what to do."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class PreflightReport:
    """All checks, and what later steps reuse (engine facts, inventory, load plan, compose CLI)."""

    checks: list[Check]
    facts: Optional[EngineFacts] = None
    inventory: Optional[EngineInventory] = None
    load_plan: Optional[LoadPlan] = None
    compose: Optional[ComposeCli] = None
    registry: Optional[Any] = None  # the RegistryImages destination, when images come from the site registry
    swarm: Optional[Any] = None  # the SwarmSettings in force, when the stack runs on a Swarm

    def add(self, name: str, ok: bool, detail: str, fix: str = "") -> None:
        """Record one more check."""
        self.checks.append(Check(name, ok, detail, fix))

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return all(check.ok for check in self.checks)

    def failures(self) -> list[Check]:
        """The checks that failed."""
        return [check for check in self.checks if not check.ok]


def run_preflight(
    header: BundleHeader,
    client: Optional[docker.DockerClient],
    prefix: Path,
    site_values: dict[str, str],
    *,
    compose_preference: Optional[str] = None,
    compose_needed: bool = True,
) -> PreflightReport:
    """Run every check for installing ``header`` under ``prefix`` (a Swarm stack needs no compose CLI)."""
    report = PreflightReport(checks=[])
    checks = report.checks
    if client is None:
        checks.append(Check("engine", False, "the Docker engine does not answer", "start dockerd, or set DOCKER_HOST"))
    else:
        try:
            report.facts = engine_facts(client)
            report.inventory = inventory(client)
        except (EngineError, docker.errors.APIError) as exc:
            checks.append(Check("engine", False, str(exc), "check that dockerd is healthy"))
    facts = report.facts
    if facts is not None:
        api = tuple(int(p) for p in re.findall(r"\d+", facts.api_version)[:2]) or (0, 0)
        checks.append(Check(
            "engine", api >= MIN_API, f"Docker {facts.version} (API {facts.api_version}, {facts.storage_driver})",
            "upgrade the engine to Docker 20.10 or newer",
        ))
        checks.append(Check(
            "platform", facts.platform == header.platform, f"host {facts.platform}, bundle {header.platform}",
            f"use a bundle built with --platform {facts.platform}",
        ))
    try:
        report.compose = find_compose(compose_preference)
        checks.append(Check("compose", True, report.compose.describe()))
    except ComposeError as exc:
        if compose_needed:
            checks.append(Check("compose", False, str(exc), "install the docker compose plugin (v2) or docker-compose (v1)"))
    if report.inventory is not None and facts is not None:
        report.load_plan = plan_load(header, report.inventory, send_every_layer=facts.needs_every_blob)
        checks.append(_disk_check("engine disk", Path(facts.data_root), 2 * report.load_plan.layer_bytes))
    release_bytes = sum(m.size for m in header.members if m.path.startswith("release/"))
    checks.append(_disk_check("prefix disk", prefix, release_bytes + 64 * 1024))
    project = header.spec.project
    checks.extend(_port_checks(header, client, project, site_values))
    checks.extend(host_path_checks(header, site_values, docker_host()))
    return report


def host_path_checks(header: BundleHeader, values: dict[str, str], engine_address: str) -> list[Check]:
    """One check per host path the stack bind-mounts (a Docker socket: the socket of the engine at ``engine_address``)."""
    checks = []
    for mount in host_mounts(header, values):
        name = f"host path {mount.source} ({mount.service})"
        try:
            checks.append(Check(name, True, check_mount(mount, engine_address)))
        except HostPathError as exc:
            checks.append(Check(name, False, str(exc), exc.fix))
    return checks


def _disk_check(name: str, path: Path, needed: int) -> Check:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
    except OSError as exc:
        return Check(name, False, f"cannot read free space of {path}: {exc.strerror}", "check the path")
    wanted = needed + (DISK_MARGIN if name == "engine disk" else 0)
    detail = f"{_mb(free)} free in {existing}, {_mb(wanted)} needed"
    return Check(name, free >= wanted, detail, f"free at least {_mb(wanted - free)} in {existing}")


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def published_ports(header: BundleHeader, values: dict[str, str]) -> list[tuple[str, int, str]]:
    """(service, host port, protocol) of every published port, variables filled in."""
    result = []
    for entry in header.spec.ports:
        spec = fill_template(entry.spec, values)
        protocol = "udp" if spec.endswith("/udp") else "tcp"
        parts = spec.split("/")[0].split(":")
        if len(parts) < 2:
            continue  # container port only: the engine picks a free host port
        host_port = parts[-2]
        if host_port.isdigit():
            result.append((entry.service, int(host_port), protocol))
    return result


def _port_checks(header: BundleHeader, client, project: str, values: dict[str, str]) -> list[Check]:
    ours, others = port_holders(client, project)
    checks = []
    for service, port, protocol in published_ports(header, values):
        name = f"port {port}/{protocol} ({service})"
        if port in ours:
            checks.append(Check(name, True, "held by this stack"))
        elif port in others:
            checks.append(Check(name, False, f"in use by container {others[port]}",
                                "stop that container, or choose another port with --set"))
        elif not _port_free(port, protocol):
            checks.append(Check(name, False, "in use by a process on this host",
                                f"find it with 'ss -ltnp sport = :{port}' and stop it, or choose another port with --set"))
        else:
            checks.append(Check(name, True, "free"))
    return checks


def port_holders(client, project: str) -> tuple[set[int], dict[int, str]]:
    """Host ports held by containers: (those of ``project``, in any state; those of others, by container name).

    A container of the project that is created, restarting or exited (an install
    killed during ``up`` leaves such) may still hold its ports in the engine; it is
    the stack's own, and a rerun takes it over. Its published ports are read from
    its configuration, since the engine reports ports only for running containers.
    """
    ours: set[int] = set()
    others: dict[int, str] = {}
    if client is None:
        return ours, others
    try:
        for container in client.api.containers(all=True):
            labels = container.get("Labels") or {}
            name = "/".join(container.get("Names") or ["?"]).lstrip("/")
            if labels.get(PROJECT_LABEL) == project or labels.get(STACK_LABEL) == project:
                ours.update(_configured_ports(client, container["Id"]))
                continue
            for port in container.get("Ports") or []:
                if port.get("PublicPort"):
                    others[port["PublicPort"]] = name
    except docker.errors.APIError:
        pass
    return ours, others


def _configured_ports(client, container_id: str) -> set[int]:
    try:
        bindings = (client.api.inspect_container(container_id).get("HostConfig") or {}).get("PortBindings") or {}
    except docker.errors.APIError:
        return set()
    return {int(b["HostPort"]) for entries in bindings.values() for b in entries or [] if str(b.get("HostPort", "")).isdigit()}


def _port_free(port: int, protocol: str) -> bool:
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as exc:
            return exc.errno != errno.EADDRINUSE
    return True
