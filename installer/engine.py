"""The target host's Docker engine: what it holds, and loading/tagging images into it."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


class EngineError(Exception):
    """The engine is unreachable or refused an operation; the message says what to do."""


@dataclass(frozen=True)
class EngineFacts:
    """What preflight needs to know about the engine."""

    version: str
    api_version: str
    platform: str
    data_root: str
    storage_driver: str
    needs_every_blob: bool


def docker_host() -> str:
    """The engine address in use (DOCKER_HOST or the default socket)."""
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


def connect(timeout: int = 900) -> docker.DockerClient:
    """A client for the engine, checked to answer."""
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except DockerException as exc:
        raise EngineError(
            f"cannot reach the Docker engine at {docker_host()} ({exc}). Start dockerd, or set DOCKER_HOST to its socket."
        ) from None
    return client


def info_platform(info: dict) -> str:
    """The engine's own platform as ``os/arch`` (``linux/amd64``) from its ``info``."""
    arch = _ARCH.get(info.get("Architecture", ""), info.get("Architecture", "unknown"))
    return f"{info.get('OSType', 'linux')}/{arch}"


def engine_facts(client: docker.DockerClient) -> EngineFacts:
    """Version, platform, data root and image store of the engine."""
    info = client.info()
    version = client.version()
    driver = info.get("Driver", "")
    driver_status = {str(k): str(v) for k, v in (info.get("DriverStatus") or [])}
    # The containerd image store keeps compressed blobs and wants every one of them in a load.
    containerd_store = "containerd" in driver_status.get("driver-type", "") or driver.startswith("io.containerd")
    return EngineFacts(
        version=str(version.get("Version", "unknown")),
        api_version=str(version.get("ApiVersion", "unknown")),
        platform=info_platform(info),
        data_root=str(info.get("DockerRootDir", "/var/lib/docker")),
        storage_driver=driver,
        needs_every_blob=containerd_store,
    )


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The chain ID of each layer prefix: how the engine names a stack of layers."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if not chains:
            chains.append(diff_id)
        else:
            chains.append("sha256:" + hashlib.sha256(f"{chains[-1]} {diff_id}".encode()).hexdigest())
    return chains


@dataclass
class EngineInventory:
    """The images the engine holds (by ID) and the layer chains they stand on."""

    image_ids: set[str]
    chains: set[str]
    tags: dict[str, str]


def inventory(client: docker.DockerClient) -> EngineInventory:
    """List every image and the layer chains present."""
    image_ids: set[str] = set()
    chains: set[str] = set()
    tags: dict[str, str] = {}
    try:
        summaries = client.api.images(all=True)
    except APIError as exc:
        raise EngineError(f"cannot list images: {exc.explanation or exc}") from None
    for summary in summaries:
        image_id = summary["Id"]
        image_ids.add(image_id)
        for tag in summary.get("RepoTags") or []:
            if tag != "<none>:<none>":
                tags[tag] = image_id
        try:
            attrs = client.api.inspect_image(image_id)
        except (ImageNotFound, NotFound):
            continue
        chains.update(chain_ids(list(attrs.get("RootFS", {}).get("Layers") or [])))
    return EngineInventory(image_ids=image_ids, chains=chains, tags=tags)


def load(client: docker.DockerClient, tar_stream: Iterable[bytes]) -> list[str]:
    """Stream a docker-archive into the engine's load; return the names it reported loaded."""
    loaded: list[str] = []
    try:
        for event in client.api.load_image(_Chunks(tar_stream)):
            if "error" in event:
                raise EngineError(f"the engine refused the images: {event['error']}")
            text = event.get("stream", "")
            if text.startswith("Loaded image"):
                loaded.append(text.split(":", 1)[1].strip())
    except APIError as exc:
        raise EngineError(f"the engine refused the images: {exc.explanation or exc}") from None
    return loaded


class _Chunks:
    """Wrap a generator so requests sends it as a chunked body (and never buffers it)."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._chunks)


def image_id_of(client: docker.DockerClient, name: str) -> Optional[str]:
    """The image ID ``name`` points at, or None."""
    try:
        return client.api.inspect_image(name)["Id"]
    except (ImageNotFound, NotFound):
        return None
    except APIError as exc:
        raise EngineError(f"cannot inspect {name}: {exc.explanation or exc}") from None


def tag(client: docker.DockerClient, image_id: str, name: str) -> None:
    """Point ``name`` (``repository:tag``) at ``image_id``."""
    repository, _, tag_text = name.rpartition(":")
    if not repository or "/" in tag_text:
        repository, tag_text = name, "latest"
    try:
        client.api.tag(image_id, repository, tag_text, force=True)
    except APIError as exc:
        raise EngineError(f"cannot tag {image_id[:19]} as {name}: {exc.explanation or exc}") from None
