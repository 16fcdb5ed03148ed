"""Command-line options of a Swarm install (``--swarm``), turned into the site's Swarm settings."""
from __future__ import annotations

from typing import Callable, Optional

import click

from .errors import InstallError
from .swarm.checks import resolve_endpoint_mode
from .swarm.runner import ENDPOINT_MODES, SwarmSettings


def swarm_options(command: Callable) -> Callable:
    """--swarm, --swarm-endpoint-mode, --swarm-every-node."""
    for decorator in reversed([
        click.option("--swarm", is_flag=True,
                     help="Run the stack as a Docker Swarm stack, deployed from this manager to every node "
                          "(needs --from-registry: each node pulls from the site registry). Kept for upgrades."),
        click.option("--swarm-endpoint-mode", type=click.Choice(ENDPOINT_MODES), default="auto", show_default=True,
                     help="How services are reached: dnsrr (DNS round robin, ports published on the nodes running "
                          "them; for kernels without IPVS) or vip (virtual IPs and the ingress mesh; needs IPVS). "
                          "auto picks by this kernel."),
        click.option("--swarm-every-node", "swarm_every_node", multiple=True, metavar="SERVICE",
                     help="Run SERVICE on every node although it mounts a volume (each node gets its own, e.g. "
                          "logs); repeatable. Services that mount nothing run on every node anyway."),
    ]):
        command = decorator(command)
    return command


def swarm_settings_from(swarm: bool, endpoint_mode: str, every_node: tuple[str, ...]) -> Optional[SwarmSettings]:
    """The settings --swarm asks for, or None; Swarm flags without --swarm are refused."""
    if not swarm:
        given = (["--swarm-endpoint-mode"] if endpoint_mode != "auto" else []) + \
            (["--swarm-every-node"] if every_node else [])
        if given:
            raise InstallError(f"{', '.join(given)} only apply with --swarm")
        return None
    services = [name for entry in every_node for name in entry.split(",") if name]
    return SwarmSettings(endpoint_mode=resolve_endpoint_mode(endpoint_mode), every_node=services)
