"""The stand-in application source tree (tests/standin/source) and how each service builds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import docker

SOURCE_DIR = Path(__file__).resolve().parents[1] / "standin" / "source"


@dataclass(frozen=True)
class SourceService:
    """One image built from the source tree, as a compose ``build:`` section would.

    ``context`` is relative to SOURCE_DIR, ``dockerfile`` relative to ``context``.
    ``ports``/``health``: where the running container answers ``ok`` over HTTP.
    ``output``: what a container without a server prints (``init done``, ...).
    """

    name: str
    context: str
    dockerfile: str = "Dockerfile"
    target: Optional[str] = None
    ports: tuple[int, ...] = ()
    health: str = "/health"
    output: str = ""
    build_args: dict[str, str] = field(default_factory=dict)


SOURCE_SERVICES: tuple[SourceService, ...] = (
    SourceService("backend", "src/backend", target="backend", ports=(8082,),
                  health="/api/health", build_args={"VERSION": "v0.0.0-test"}),
    SourceService("backend-init", "src/backend", target="backend-init",
                  output="init done", build_args={"VERSION": "v0.0.0-test"}),
    SourceService("frontend", "src/frontend", ports=(80,)),
    SourceService("jupyterhub", "src/jupyterhub", ports=(8000,), health="/hub/health"),
    SourceService("saltstack", "src/saltstack", ports=(8000, 4505, 4506)),
    SourceService("gitea", "src/gitea", ports=(3000,)),
    SourceService("singleuser", "src/singleuser", output="singleuser"),
    # nginx builds with the repository root as context, like the upstream compose file.
    SourceService("nginx", ".", dockerfile="src/nginx/Dockerfile", ports=(80,)),
)


def build_source_service(client: docker.DockerClient, service: SourceService,
                         tag: str) -> docker.models.images.Image:
    """Build ``service`` with the legacy builder on ``client``'s engine, tagged ``tag``."""
    image, _ = client.images.build(
        path=str(SOURCE_DIR / service.context), dockerfile=service.dockerfile,
        target=service.target, buildargs=service.build_args or None,
        tag=tag, rm=True, forcerm=True)
    return image
