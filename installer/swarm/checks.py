"""Preflight for a Swarm install: a manager here, nodes that take tasks, the docker CLI, IPVS, the data node."""
from __future__ import annotations

import re
import subprocess
from typing import Optional

import docker

from ..archive import BundleHeader
from ..childenv import child_environment
from ..errors import InstallError
from ..preflight import Check
from .cluster import SwarmError, data_node, kernel_has_ipvs, manager_node_id, nodes
from .runner import SwarmSettings, data_label, docker_cli

MIN_CLI = (19, 3)  # compose file format 3.8 in 'docker stack deploy'


def resolve_endpoint_mode(choice: str) -> str:
    """``auto`` → ``dnsrr`` when this kernel has no IPVS (no VIPs, no ingress mesh), else ``vip``."""
    if choice == "auto":
        return "vip" if kernel_has_ipvs() else "dnsrr"
    return choice


def swarm_checks(header: BundleHeader, client: Optional[docker.DockerClient], settings: SwarmSettings) -> list[Check]:
    """Every check a Swarm install needs before anything changes."""
    checks: list[Check] = []
    if client is None:
        return checks
    try:
        here = manager_node_id(client)
    except SwarmError as exc:
        return [Check("swarm", False, str(exc), exc.fix)]
    members = sorted(nodes(client), key=lambda node: node.hostname)
    ready = [node for node in members if node.ready]
    checks.append(Check("swarm", True, f"this engine is a manager of a Swarm of {len(members)} node(s)"))
    checks.append(Check("swarm nodes", bool(ready),
                        f"{len(ready)} of {len(members)} take tasks: {', '.join(n.hostname for n in ready) or 'none'}",
                        "bring the nodes up ('docker node ls'); drained nodes run nothing"))
    checks.append(_cli_check())
    ipvs = kernel_has_ipvs()
    mode = settings.endpoint_mode
    if mode == "dnsrr":
        detail = ("no IPVS in this kernel: " if not ipvs else "") + \
            "services use endpoint_mode dnsrr (DNS round robin) and publish their ports in host mode on the " \
            "nodes that run them (no ingress routing mesh)"
        checks.append(Check("swarm networking", True, detail))
    else:
        checks.append(Check("swarm networking", ipvs, "services get virtual IPs and the ingress routing mesh"
                            if ipvs else "--swarm-endpoint-mode vip needs IPVS, which this kernel lacks",
                            "use --swarm-endpoint-mode dnsrr (or auto)"))
    label = data_label(header.spec.project)
    try:
        holder = data_node(client, label)
    except SwarmError as exc:
        checks.append(Check("swarm data node", False, str(exc), exc.fix))
    else:
        this = next((n.hostname for n in members if n.id == here), here[:12])
        if holder is None:
            checks.append(Check("swarm data node", True, f"{this} (this node) will hold the stack's volumes "
                                                          f"(node label {label}=true)"))
        else:
            checks.append(Check("swarm data node", holder.id == here,
                                f"{holder.hostname} holds the stack's volumes (node label {label}=true)",
                                f"run the install on {holder.hostname}"))
    return checks


def _cli_check() -> Check:
    try:
        cli = docker_cli()
    except InstallError as exc:
        return Check("docker CLI", False, str(exc), "install Debian's docker.io (it brings the docker CLI)")
    try:
        result = subprocess.run([cli, "version", "--format", "{{.Client.Version}}"], capture_output=True, text=True,
                                timeout=30, env=child_environment(), stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("docker CLI", False, f"{cli} does not run: {exc}", "reinstall the docker CLI")
    version = result.stdout.strip() or "unknown"
    if result.returncode != 0:
        return Check("docker CLI", False, f"{cli} does not run", "check it: " + (result.stderr.strip()[:200] or cli))
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    return Check("docker CLI", numbers >= MIN_CLI, f"{cli} {version} ('docker stack deploy')",
                 f"the stack file is compose format 3.8, which the docker CLI reads from "
                 f"{MIN_CLI[0]}.{MIN_CLI[1]:02d} on: upgrade docker.io on this manager")
