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
    ``output``: what the container prints (``Initialization completed successfully!``, ...).
    """

    name: str
    context: str
    dockerfile: str = "Dockerfile"
    target: Optional[str] = None
    ports: tuple[int, ...] = ()
    health: str = "/health"
    output: str = ""
    build_args: dict[str, str] = field(default_factory=dict)


# The services of docker-compose.yml.example that have a `build:` section, with its
# context, dockerfile, target and args. Run alone (no postgres), the database clients
# backend, backend-init and jupyterhub would wait and fail: the stand-in build arg
# STANDIN_NO_DATABASE=1 (never set by compose) lets them start without one.
_VERSION = {"VERSION": "v0.0.0-test"}
_NO_DATABASE = {"STANDIN_NO_DATABASE": "1"}

SOURCE_SERVICES: tuple[SourceService, ...] = (
    SourceService("backend-init", "src/backend", target="backend-init",
                  output="Initialization completed successfully!",
                  build_args={**_VERSION, **_NO_DATABASE}),
    SourceService("backend", "src/backend", target="backend", ports=(8082,),
                  health="/api/health", build_args={**_VERSION, **_NO_DATABASE}),
    SourceService("frontend", "src/frontend", ports=(80,),
                  build_args={"REACT_APP_API_URL": "/api", "REACT_APP_JUPYTERHUB_URL": "/jupyter",
                              **_VERSION}),
    SourceService("jupyterhub", "src/jupyterhub", ports=(8000,), health="/hub/health",
                  build_args={"BUILDKIT_INLINE_CACHE": "1", **_VERSION, **_NO_DATABASE}),
    # Built only (compose runs it as `command: ["true"]`); by default it serves the notebook port.
    SourceService("singleuser-builder", "src/singleuser", ports=(8888,),
                  output="ai-infra-singleuser", build_args=dict(_VERSION)),
    SourceService("saltstack", "src/saltstack", ports=(4505, 4506, 8000), build_args=dict(_VERSION)),
    # nginx builds with the repository root as context, like the upstream compose file.
    SourceService("nginx", ".", dockerfile="src/nginx/Dockerfile", ports=(80,),
                  build_args={"DEBUG_MODE": "false", "BUILD_ENV": "production", **_VERSION}),
    SourceService("gitea", "src/gitea", ports=(3000,)),
)


def build_source_service(client: docker.DockerClient, service: SourceService,
                         tag: str) -> docker.models.images.Image:
    """Build ``service`` with the legacy builder on ``client``'s engine, tagged ``tag``."""
    image, _ = client.images.build(
        path=str(SOURCE_DIR / service.context), dockerfile=service.dockerfile,
        target=service.target, buildargs=service.build_args or None,
        tag=tag, rm=True, forcerm=True)
    return image
