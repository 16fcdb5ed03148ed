"""Load into the engine only what it lacks, streamed straight from the archive.

The archive's images part is re-emitted as a docker-archive holding the
manifest, the configs of the missing images and only the layers whose chain
the engine does not already have (``docker load`` skips a layer whose chain is
present without opening its file). Nothing is extracted to disk on the way,
and the members not sent are stepped over without being decompressed.
Engines whose image store needs every blob (containerd) get every layer.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, TypeVar

from .archive import (
    IMAGES_DIR,
    FramedArchiveReader,
    BundleHeader,
    ImageRecord,
    VerificationError,
    config_path,
    layer_path,
)
from .archive.reader import ArchiveSource
from .archive.layout import DATA_BLOCK, END_OF_ARCHIVE, padding_for
from .archive.writer import tar_header
from .engine import EngineInventory, chain_ids

T = TypeVar("T")


@dataclass
class LoadPlan:
    """What to send to the engine: images to load, and which of their layers to include."""

    images: list[ImageRecord] = field(default_factory=list)
    layers: set[str] = field(default_factory=set)
    present_images: list[ImageRecord] = field(default_factory=list)
    layer_bytes: int = 0

    @property
    def empty(self) -> bool:
        """True when the engine already has every image."""
        return not self.images


def plan_load(header: BundleHeader, engine: EngineInventory, *, send_every_layer: bool = False) -> LoadPlan:
    """Decide which images and layers the engine lacks."""
    plan = LoadPlan()
    sizes = {member.path: member.size for member in header.members}
    for image in header.images:
        if image.id in engine.image_ids:
            plan.present_images.append(image)
            continue
        plan.images.append(image)
        for diff_id, chain in zip(image.diff_ids, chain_ids(image.diff_ids)):
            if send_every_layer or chain not in engine.chains:
                plan.layers.add(layer_path(diff_id))
    plan.layer_bytes = sum(sizes.get(path, 0) for path in plan.layers)
    return plan


def missing_members_in_archive(header: BundleHeader, plan: LoadPlan) -> list[str]:
    """Configs and layers the load needs that the archive does not carry (a delta built against another base)."""
    names = {member.path for member in header.members}
    needed = {config_path(image.id) for image in plan.images} | plan.layers
    return sorted(path for path in needed if path not in names)


def docker_archive_stream(
    archive: ArchiveSource, header: BundleHeader, plan: LoadPlan, progress: Optional[Callable[[int], None]] = None
) -> Iterator[bytes]:
    """Yield a docker-archive tar of ``plan`` read from ``archive`` (the installer gives the verified, held archive).

    The held archive cannot be swapped, but its bytes are re-checked where it is
    cheap, in case the medium serves other bytes on a second read: each config (small) is
    read whole and compared with the signed header before any of it is sent,
    and the engine itself checks every layer against the diffIDs of that
    verified config (``docker load`` refuses a layer that does not match).
    """
    wanted = {config_path(image.id) for image in plan.images} | plan.layers
    expected = {member.path: member.sha256 for member in header.members}
    manifest = json.dumps([
        {
            "Config": config_path(image.id).split("/", 1)[1],
            "RepoTags": image.targets,
            "Layers": [layer_path(d).split("/", 1)[1] for d in image.diff_ids],
        }
        for image in plan.images
    ]).encode()
    yield tar_header("manifest.json", len(manifest)) + manifest + padding_for(len(manifest))
    # Fault-injection hook for the crash-safety tests: stretch the load so a kill lands inside it.
    delay = float(os.environ.get("AIRGAP_TEST_LOAD_DELAY", "0") or 0)
    with FramedArchiveReader(archive) as reader:
        for member in reader.members():
            if member.name not in wanted:
                continue
            if delay:
                time.sleep(delay)
            inner = member.name[len(IMAGES_DIR) + 1:]
            if member.name.endswith(".json"):
                config = member.read_all()
                if hashlib.sha256(config).hexdigest() != expected[member.name]:
                    raise VerificationError(f"{member.name} changed after verification; load aborted")
                yield tar_header(inner, member.size) + config + padding_for(member.size)
            else:
                yield tar_header(inner, member.size)
                for chunk in member.chunks(chunk_size=2 * DATA_BLOCK):  # whole frames, handed on uncopied
                    yield chunk
                    if progress:
                        progress(len(chunk))
                yield padding_for(member.size)
            wanted.discard(member.name)
    if wanted:
        raise VerificationError(f"{len(wanted)} member(s) to load are missing from the archive: {', '.join(sorted(wanted)[:3])}")
    yield END_OF_ARCHIVE


def read_ahead(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Yield ``items`` while a thread already produces the next ``depth`` of them.

    The archive is decompressed while the engine reads what came before, as
    ``zstd -dc | docker load`` does with two processes (zstd releases the GIL).
    An error in the producer is raised here; closing this generator stops it.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(kind: str, value: object) -> bool:
        while not stop.is_set():
            try:
                ready.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not hand_over("item", item):
                    return
            hand_over("end", None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            hand_over("error", exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    producer = threading.Thread(target=produce, name="read-ahead", daemon=True)
    producer.start()
    try:
        while True:
            kind, value = ready.get()
            if kind == "end":
                return
            if kind == "error":
                raise value  # type: ignore[misc]
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        producer.join()
