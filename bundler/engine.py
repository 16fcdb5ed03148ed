"""The connected machine's Docker engine: pull, build, tag, inspect and save images.

Everything goes through the docker SDK, honouring DOCKER_HOST. Errors come
back as EngineError with a message that says what to do.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import docker
from docker.errors import APIError, BuildError, DockerException, ImageNotFound, NotFound

from installer.archive.tarstream import TarStream, TarStreamError
from installer.engine import EngineError, connect, info_platform  # noqa: F401 - connect: re-exported, one for both tools

from .refs import parse_ref

ProgressEvent = Callable[[dict], None]


@dataclass(frozen=True)
class ImageFacts:
    """What the engine knows about one image."""

    id: str
    diff_ids: list[str]
    size: int
    platform: str
    repo_digests: list[str]
    tags: list[str]


def host_platform(client: docker.DockerClient) -> str:
    """The engine's own platform as ``os/arch`` (``linux/amd64``)."""
    return info_platform(client.info())


def image_platform(attrs: dict) -> str:
    """``os/arch[/variant]`` of an image from its inspect data."""
    platform = f"{attrs.get('Os', 'linux')}/{attrs.get('Architecture', 'unknown')}"
    if attrs.get("Variant"):
        platform += f"/{attrs['Variant']}"
    return platform


def platform_matches(actual: str, wanted: str) -> bool:
    """True when an image of ``actual`` runs as ``wanted`` (variant ignored if not asked)."""
    actual_parts, wanted_parts = actual.split("/"), wanted.split("/")
    return actual_parts[: len(wanted_parts)] == wanted_parts[: len(actual_parts)] and actual_parts[:2] == wanted_parts[:2]


def inspect(client: docker.DockerClient, reference: str) -> ImageFacts:
    """Inspect an image by reference or ID; EngineError if the engine lacks it."""
    try:
        attrs = client.api.inspect_image(reference)
    except (ImageNotFound, NotFound):
        raise EngineError(f"the engine has no image {reference}") from None
    except APIError as exc:
        raise EngineError(f"cannot inspect {reference}: {exc.explanation or exc}") from None
    return ImageFacts(
        id=attrs["Id"],
        diff_ids=list(attrs.get("RootFS", {}).get("Layers") or []),
        size=int(attrs.get("Size") or 0),
        platform=image_platform(attrs),
        repo_digests=list(attrs.get("RepoDigests") or []),
        tags=list(attrs.get("RepoTags") or []),
    )


def find_local(client: docker.DockerClient, reference: str) -> Optional[ImageFacts]:
    """Inspect ``reference`` if the engine has it, else None."""
    try:
        return inspect(client, reference)
    except EngineError:
        return None


def remote_digest(client: docker.DockerClient, reference: str) -> Optional[str]:
    """The registry's manifest digest for ``reference``, or None if the registry cannot be asked."""
    try:
        return client.api.inspect_distribution(reference)["Descriptor"]["digest"]
    except (APIError, DockerException, KeyError):
        return None


def pull(client: docker.DockerClient, reference: str, platform: str, on_event: Optional[ProgressEvent] = None) -> ImageFacts:
    """Pull ``reference`` for ``platform``; refuse an image of another platform."""
    ref = parse_ref(reference)
    repository = ref.repository
    tag = ref.digest or ref.tag or "latest"
    try:
        for event in client.api.pull(repository, tag=tag, platform=platform, stream=True, decode=True):
            if "error" in event:
                raise EngineError(f"pulling {reference} failed: {event['error']}")
            if on_event:
                on_event(event)
    except APIError as exc:
        raise EngineError(
            f"pulling {reference} failed: {exc.explanation or exc}. Check the name, the network or registry mirror, "
            f"and that the image exists for {platform}."
        ) from None
    facts = inspect(client, reference)
    if not platform_matches(facts.platform, platform):
        raise EngineError(
            f"{reference} was pulled as {facts.platform}, but the bundle is for {platform}: the upstream image does not "
            f"exist for {platform}. Pick another tag or build with --platform {facts.platform}."
        )
    return facts


def build(
    client: docker.DockerClient,
    *,
    context: Path,
    dockerfile: str,
    tag: str,
    target: Optional[str],
    args: dict[str, str],
    platform: Optional[str],
    on_event: Optional[ProgressEvent] = None,
) -> str:
    """Build an image with the legacy builder; return its image ID."""
    image_id: Optional[str] = None
    log: list[str] = []
    if platform and platform == host_platform(client):
        platform = None  # the legacy builder may try to pull bases when a platform is named
    try:
        stream = client.api.build(
            path=str(context), dockerfile=dockerfile, tag=tag, target=target, buildargs=args,
            platform=platform, rm=True, forcerm=True, pull=False, decode=True,
        )
        for event in stream:
            if "stream" in event:
                log.append(event["stream"])
            if "aux" in event and "ID" in event.get("aux", {}):
                image_id = event["aux"]["ID"]
            if "error" in event:
                tail = "".join(log[-15:]).rstrip()
                raise EngineError(f"building {tag} failed: {event['error'].strip()}\n{tail}")
            if on_event:
                on_event(event)
    except (APIError, BuildError, TypeError) as exc:
        raise EngineError(f"building {tag} failed: {getattr(exc, 'explanation', None) or exc}") from None
    if image_id is None:
        image_id = inspect(client, tag).id
    return image_id


def tag(client: docker.DockerClient, image_id: str, target: str) -> None:
    """Tag ``image_id`` as ``target`` (``repository:tag``)."""
    ref = parse_ref(target)
    try:
        client.api.tag(image_id, ref.repository, ref.tag or "latest", force=True)
    except APIError as exc:
        raise EngineError(f"cannot tag {image_id[:19]} as {target}: {exc.explanation or exc}") from None


@dataclass
class SavedFile:
    """One regular file of the engine's save stream."""

    name: str
    size: int
    chunks: Iterator[bytes]


def open_save(client: docker.DockerClient, image_ids: Iterable[str]):
    """Ask the engine to export images; returns the response once the engine starts sending.

    (Docker 20.10 writes the whole export to a temporary folder before the
    first byte, so this call blocks for most of the engine's work.)
    """
    ids = list(dict.fromkeys(image_ids))
    try:
        response = client.api._get(client.api._url("/images/get"), params={"names": ids}, stream=True)
        client.api._raise_for_status(response)
    except APIError as exc:
        raise EngineError(f"the engine refused to export the images: {exc.explanation or exc}") from None
    response.raw.decode_content = True
    return response


def saved_files(response, chunk_size: int = 1 << 20) -> Iterator[SavedFile]:
    """The regular files of an export response (links to layers already sent are skipped)."""
    stream = TarStream(response.raw.read)
    try:
        for entry in stream.entries():
            if entry.is_file:
                yield SavedFile(entry.name, entry.size, stream.chunks(chunk_size))
    except TarStreamError as exc:
        raise EngineError(f"the engine's export stream broke off: {exc}") from None
    finally:
        response.close()

