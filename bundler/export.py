"""Write the release into one signed archive, streaming images from the engine.

The engine's save stream goes straight into the compressed archive, and
nothing of the images is copied to disk first. Each layer is stored under its
diffID and each config under its image ID. Where an export's layers are all
new to the archive, they go in unhashed and are named from the export's own
manifest.json (the engine checked each against its diffID as it exported it);
otherwise each layer is hashed as it passes and a layer already stored, or
one a delta leaves out, is dropped. Either way the archive holds every shared
layer once.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import docker
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from installer import __version__ as tool_version
from installer.archive import (
    IMAGES_DIR,
    IMAGES_MANIFEST,
    ArchiveWriter,
    BundleHeader,
    ImageRecord,
    MemberRecord,
    config_path,
    digest_hex,
    layer_path,
    release_path,
)
from installer.archive.writer import DataFrame, PendingMember
from installer.engine import chain_ids
from installer.signing import fingerprint, sign

from .compose import RenderedCompose
from .manifest import SiteVariable
from .cache import MemberCache
from .engine import EngineError, ImageFacts, SavedFile, open_save, saved_files
from .plan import Plan
from .progress import Reporter

COMPOSE_FILE = "docker-compose.yml"
SAVES_AHEAD = 2  # engine exports under way at once
_MAX_EXPORT_MANIFEST = 64 << 20  # an export's manifest.json is read into memory only up to this size
_CONFIG_NAME = re.compile(r"^(?:blobs/sha256/)?([0-9a-f]{64})(?:\.json)?$")


@dataclass
class BundleImages:
    """The distinct images of a release: facts per image ID and the plan entries naming it."""

    facts: dict[str, ImageFacts]
    records: list[ImageRecord]


def collect_images(plan: Plan, facts_by_id: dict[str, ImageFacts]) -> BundleImages:
    """Group the plan's entries by image ID into one record per image with all its names."""
    records: dict[str, ImageRecord] = {}
    for entry in plan.entries:
        if entry.image_id is None:
            raise EngineError(f"internal: {entry.target} has no image ID yet")
        facts = facts_by_id[entry.image_id]
        record = records.setdefault(
            entry.image_id,
            ImageRecord(id=entry.image_id, diff_ids=list(facts.diff_ids), targets=[], platform=facts.platform, size=facts.size),
        )
        if entry.target not in record.targets:
            record.targets.append(entry.target)
        record.sources.append({"kind": entry.kind, "upstream": entry.upstream, "target": entry.target, "key": entry.key})
    return BundleImages(facts=facts_by_id, records=list(records.values()))


def docker_load_manifest(records: list[ImageRecord]) -> bytes:
    """``images/manifest.json``: what ``docker load`` reads, paths relative to ``images/``."""
    entries = [
        {
            "Config": config_path(r.id).split("/", 1)[1],
            "RepoTags": r.targets,
            "Layers": [layer_path(d).split("/", 1)[1] for d in r.diff_ids],
        }
        for r in records
    ]
    return json.dumps(entries, indent=1).encode() + b"\n"


@dataclass
class BaseRelease:
    """The release a delta archive is built against: what the site already holds."""

    name: str
    version: str
    image_ids: set[str]
    chains: set[str]

    @classmethod
    def from_images(cls, name: str, version: str, images: list[tuple[str, list[str]]]) -> "BaseRelease":
        """From (image ID, diffIDs) pairs."""
        chains = {chain for _, diff_ids in images for chain in chain_ids(diff_ids)}
        return cls(name=name, version=version, image_ids={image_id for image_id, _ in images}, chains=chains)


@dataclass
class ArchiveContent:
    """What goes into the archive: images whose config is shipped and the layer diffIDs shipped."""

    images: list[ImageRecord]
    layers: set[str]


def choose_content(images: BundleImages, base: Optional[BaseRelease]) -> ArchiveContent:
    """Everything for a full archive; for a delta, only images and layer chains the base lacks."""
    if base is None:
        return ArchiveContent(images=list(images.records), layers={d for r in images.records for d in r.diff_ids})
    shipped = [r for r in images.records if r.id not in base.image_ids]
    layers = {d for r in shipped for d, chain in zip(r.diff_ids, chain_ids(r.diff_ids)) if chain not in base.chains}
    return ArchiveContent(images=shipped, layers=layers)


def write_bundle(
    *,
    client: docker.DockerClient,
    plan: Plan,
    images: BundleImages,
    compose: RenderedCompose,
    private_key: Ed25519PrivateKey,
    output: Path,
    reporter: Reporter,
    level: int = 3,
    base: Optional[BaseRelease] = None,
    cache: Optional[MemberCache] = None,
    meanwhile: Callable[[], None] = lambda: None,
) -> Path:
    """Stream everything into ``output`` and sign it; return the archive path.

    With ``base``, the archive is a delta: it leaves out the images and layer
    chains the base release has, and says so in its header. ``meanwhile`` is
    run once, while the engine prepares its first export (at once when nothing
    is exported): work such as tagging that the archive does not wait for.
    """
    manifest = plan.manifest
    content = choose_content(images, base)
    release_files = [(release_path(COMPOSE_FILE), len(compose.text.encode()))] + [
        (release_path(f), compose.file_sources[f].stat().st_size) for f in compose.files
    ]

    def make_header(members: list[MemberRecord]) -> BundleHeader:
        return BundleHeader(
            name=manifest.name, version=plan.tag, tool_version=tool_version, platform=plan.platform,
            created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            signer=fingerprint(private_key.public_key()), images=images.records, members=members,
            release=release_info(plan, compose),
            base={"name": base.name, "version": base.version} if base else None,
        )

    provisional = make_header(_provisional_members(content, release_files))
    reserve = header_room(provisional.to_bytes(), level)
    keep = None if cache is None else lambda record, frame: _keep_in_cache(cache, record, frame)
    with ArchiveWriter(output, header_reserve=reserve, level=level, on_data_written=keep) as writer:
        writer.add_bytes(IMAGES_MANIFEST, docker_load_manifest(content.images))
        if content.images:
            with reporter.task("save + compress images", total=len(content.images) + len(content.layers)) as task:
                _ImageStreamer(client, writer, cache, task).run(content.images, content.layers, meanwhile)
            if cache is not None:
                cache.save()
        else:
            meanwhile()
        writer.add_bytes(release_path(COMPOSE_FILE), compose.text.encode())
        for relative in compose.files:
            writer.add_file(release_path(relative), compose.file_sources[relative])
        data = make_header(list(writer.members)).to_bytes()
        return writer.finish(data, sign(private_key, data))


def _provisional_members(content: ArchiveContent, release_files: list[tuple[str, int]]) -> list[MemberRecord]:
    """Members as they will be, with stand-in digests of the same entropy and maximal sizes."""
    def fake(path: str) -> MemberRecord:
        stand_in = hashlib.sha256(path.encode()).hexdigest()
        return MemberRecord(path=path, sha256=stand_in, size=10**13, frames_sha256=stand_in[::-1])

    paths = [IMAGES_MANIFEST] + [config_path(r.id) for r in content.images] + [layer_path(d) for d in sorted(content.layers)]
    return [fake(p) for p in paths] + [fake(p) for p, _ in release_files]


def header_room(provisional_header: bytes, level: int) -> int:
    """Bytes to reserve for the signed header: its compressed size with a margin."""
    compressed = len(zstandard.ZstdCompressor(level=level).compress(provisional_header + b"\0" * 2048))
    return compressed + compressed // 4 + 4096


def release_info(plan: Plan, compose: RenderedCompose) -> dict:
    """What the installer needs besides images: compose facts, site variables, secrets, the plan."""
    manifest = plan.manifest
    return {
        "project": manifest.project,
        "registry": plan.registry,
        "tag": plan.tag,
        "compose_file": release_path(COMPOSE_FILE),
        "services": compose.services,
        "oneshot": compose.oneshot,
        "healthchecked": compose.healthchecked,
        "ports": compose.ports,
        "files": [release_path(f) for f in compose.files],
        "env_files": compose.env_files,
        "state_dirs": compose.state_dirs,
        "profiles": compose.profiles,
        "changes": compose.changes,
        "host_mounts": compose.host_mounts,
        "variables": {n: _variable_info(v) for n, v in compose.variables.items()},
        "secrets": {n: {"length": s.length, "alphabet": s.alphabet} for n, s in compose.secrets.items()},
        "endpoints": manifest.endpoints,
        "plan": [
            {"kind": e.kind, "upstream": e.upstream, "target": e.target, "image_id": e.image_id, "digest": e.digest}
            for e in plan.entries
        ],
    }


def _variable_info(variable: SiteVariable) -> dict:
    info: dict = {"default": variable.default or "", "pattern": variable.pattern, "description": variable.description}
    if variable.template:
        info["template"] = variable.template
    if variable.required:
        info["required"] = True
    return info


class _ImageStreamer:
    """Moves image configs and layers into the archive: from the cache when it has them, else from the engine's save."""

    def __init__(self, client: docker.DockerClient, writer: ArchiveWriter, cache: Optional[MemberCache], task):
        self.client, self.writer, self.cache, self.task = client, writer, cache, task
        self.written: set[str] = set()
        self.path_digests: dict[str, str] = {}

    def run(self, records: list[ImageRecord], layers: set[str], meanwhile: Callable[[], None]) -> None:
        """Write each record's config and the wanted ``layers``; save from the engine only what the cache lacks.

        ``meanwhile`` runs once the first exports are asked for (or at once if there are none).
        """
        configs = {digest_hex(r.id) for r in records}
        wanted = configs | {digest_hex(d) for d in layers}
        every_layer = {digest_hex(d) for r in records for d in r.diff_ids}
        to_save = []
        for record in records:
            needed = [digest_hex(record.id)] + [digest_hex(d) for d in record.diff_ids if digest_hex(d) in wanted]
            if self.cache is not None and self.cache.check(needed):
                for digest in needed:
                    self._from_cache(digest, config=digest in configs)
            else:
                to_save.append(record)
        batches = batches_by_base(to_save)
        with ThreadPoolExecutor(max_workers=SAVES_AHEAD) as engine:
            # The engine (Docker 20.10) writes a whole export out before its first byte, on one core:
            # keeping two exports under way uses the second core from the start, and the next ones
            # are ready by the time a batch has streamed in.
            pending = deque(engine.submit(open_save, self.client, [r.id for r in b]) for b in batches[:SAVES_AHEAD])
            queued = len(pending)
            try:
                meanwhile()
                for batch in batches:
                    response = pending.popleft().result()
                    if queued < len(batches):
                        pending.append(engine.submit(open_save, self.client, [r.id for r in batches[queued]]))
                        queued += 1
                    self._stream_export(batch, response, wanted, configs, every_layer)
            finally:
                for future in pending:
                    future.add_done_callback(lambda done: done.exception() or done.result().close())
        missing = wanted - self.written
        if missing:
            raise EngineError(
                f"the engine's export lacked {len(missing)} layer(s) or config(s); "
                "the images may have changed during the build: run the build again"
            )

    def _from_cache(self, digest: str, config: bool) -> None:
        if digest in self.written:
            return
        cached = self.cache.lookup(digest)
        name = config_path(digest) if config else layer_path(digest)
        self.writer.add_precompressed(name, cached.size, digest, cached.path, cached.frames_sha256)
        self.task.add_bytes(cached.size)
        self.written.add(digest)

    def _stream_export(self, batch: list[ImageRecord], response, wanted: set[str], configs: set[str],
                       every_layer: set[str]) -> None:
        """Take one export's files into the archive.

        An export holds each of its layers once as a file. When every layer of
        the batch is wanted and none is written yet, each layer file of
        unknown path is a distinct wanted layer: it goes in without being
        hashed, and is named from the export's manifest.json once the export
        has streamed. (The engine checks every layer against its diffID as it
        exports it, and the site's engine checks again as it loads.) Otherwise
        layers are hashed as they stream and named by their digest, so that
        duplicates and layers a delta leaves out can be dropped.
        """
        layers = {digest_hex(d) for record in batch for d in record.diff_ids}
        engine_names_layers = layers <= wanted and not layers & self.written
        unnamed: dict[str, PendingMember] = {}
        export_manifest: Optional[bytes] = None
        for saved in saved_files(response):
            self.task.step(len(self.written), len(wanted), "layers+configs")
            if not engine_names_layers:
                self._take(saved, wanted, configs, every_layer)
            elif saved.name == "manifest.json" and saved.size <= _MAX_EXPORT_MANIFEST:
                export_manifest = b"".join(saved.chunks)
            elif saved.name.endswith("/layer.tar") and self._known_digest(saved.name) is None:
                unnamed[saved.name] = self.writer.add_stream_named_later(
                    saved.size, _counting(saved.chunks, self.task.add_bytes), saved.name)
            else:
                self._take(saved, wanted, configs, every_layer)
        if unnamed:
            if export_manifest is None:
                raise EngineError("the engine's export has no manifest.json saying which layer is which; "
                                  "is the engine a Docker release? Run the build again")
            paths = layer_paths_in_export(export_manifest, batch)
            for save_path, member in unnamed.items():
                digest = paths.get(save_path)
                if digest is None:
                    raise EngineError(f"the engine's export does not say which layer {save_path} holds: export corrupted")
                if digest in self.written:
                    raise EngineError(f"the engine exported layer sha256:{digest[:12]} twice: export corrupted")
                self.writer.name_later(member, layer_path(digest), digest)
                self._note_written(save_path, digest)

    def _known_digest(self, save_path: str) -> Optional[str]:
        """The digest a save path holds when its name says so, or this or an earlier build saw it."""
        match = _CONFIG_NAME.match(save_path)
        return match.group(1) if match else self.path_digests.get(save_path) or (
            self.cache.digest_of_path(save_path) if self.cache else None)

    def _note_written(self, save_path: str, digest: str) -> None:
        self.written.add(digest)
        self.path_digests[save_path] = digest
        if self.cache is not None:
            self.cache.remember_path(save_path, digest)

    def _take(self, saved: SavedFile, wanted: set[str], configs: set[str], every_layer: set[str]) -> None:
        known = self._known_digest(saved.name)
        if known is not None and (known in self.written or known not in wanted):
            _drain(saved.chunks)  # a layer already written, or one this archive leaves out
            return
        if known is not None and self.cache is not None and self.cache.check([known]):
            _drain(saved.chunks)  # identified by its save path: copy the earlier compressed frame
            self._from_cache(known, config=known in configs)
            return
        counted = _counting(saved.chunks, self.task.add_bytes)
        if known is not None:
            record = self.writer.add_stream(config_path(known) if known in configs else layer_path(known), saved.size, counted)
            _expect(record.sha256, known, saved.name)
        elif saved.name.endswith("/layer.tar"):
            record = self.writer.add_stream_named_by_digest(
                saved.size, counted, lambda sha: self._layer_name(saved.name, sha, wanted, every_layer), saved.name)
            if record is None:
                return
        else:
            _drain(counted)
            return
        self._note_written(saved.name, record.sha256)

    def _layer_name(self, save_path: str, sha: str, wanted: set[str], every_layer: set[str]) -> Optional[str]:
        if sha not in every_layer:
            raise EngineError(f"the engine exported a layer (sha256:{sha[:12]}) that none of the images lists")
        self.path_digests[save_path] = sha
        if self.cache is not None:
            self.cache.remember_path(save_path, sha)
        return None if sha in self.written or sha not in wanted else layer_path(sha)


def layer_paths_in_export(export_manifest: bytes, records: list[ImageRecord]) -> dict[str, str]:
    """Save path of each layer file → its sha256 (hex), from an export's manifest.json and the images' diffIDs."""
    by_config = {digest_hex(r.id): r for r in records}
    unreadable = EngineError("the engine's export has a manifest.json this tool cannot read: run the build again")
    try:
        entries = json.loads(export_manifest)
        paths: dict[str, str] = {}
        for entry in entries:
            match = _CONFIG_NAME.match(entry["Config"])
            record = by_config.get(match.group(1)) if match else None
            if record is None or len(entry["Layers"]) != len(record.diff_ids):
                raise unreadable
            for save_path, diff_id in zip(entry["Layers"], record.diff_ids):
                if paths.setdefault(save_path, digest_hex(diff_id)) != digest_hex(diff_id):
                    raise unreadable
    except (ValueError, KeyError, TypeError):
        raise unreadable from None
    return paths


def _keep_in_cache(cache: MemberCache, record: MemberRecord, frame: DataFrame) -> None:
    """Copy a layer's or config's frames, just written, into the cache."""
    if record.path.startswith(f"{IMAGES_DIR}/") and record.path != IMAGES_MANIFEST:
        cache.store(digest_hex(record.sha256), record.size, frame)


def batches_by_base(records: list[ImageRecord]) -> list[list[ImageRecord]]:
    """Images grouped by their bottom layer, smallest group first.

    Groups share no layer chain, so saving them apart costs the engine nothing
    extra; the smallest goes first because nothing can be compressed before
    the engine has written out the first one.
    """
    groups: dict[str, list[ImageRecord]] = {}
    for record in records:
        groups.setdefault(record.diff_ids[0] if record.diff_ids else record.id, []).append(record)
    return sorted(groups.values(), key=lambda group: sum(r.size or 0 for r in group))


def _drain(chunks) -> None:
    for _ in chunks:
        pass


def _counting(chunks, advance):
    for chunk in chunks:
        advance(len(chunk))
        yield chunk


def _expect(actual: str, expected: str, name: str) -> None:
    if actual != expected:
        raise EngineError(f"the engine exported {name} with sha256 {actual[:12]}, expected {expected[:12]}: export corrupted")
