"""Push a verified release's images straight from the archive into the site registry.

No ``docker load``, no temporary copy: each layer is read from its frames in
the held archive, encoded for the wire (see ``blobs``) and streamed into an
upload, several at once. Before anything is read, the registry is asked what
it has: a name whose manifest already points at the image's config is done,
a blob it holds is skipped (HEAD), a blob held in another repository is
linked (cross-repository mount) instead of sent. Digests of encoded layers are
remembered on this machine, so a push cut short and run again sends only
what is missing.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..archive import BundleHeader, ImageRecord, VerificationError, VerifiedBundle, config_path, layer_path
from ..archive.layout import padding_for
from ..archive.reader import ArchiveFormatError
from ..errors import InstallError, Say
from .blobs import (
    DEFAULT_ENCODING,
    DEFAULT_GZIP_LEVEL,
    BlockCompressor,
    Hashed,
    gzip_implementation,
    large_buffers_off_the_heap,
    manifest_types,
)
from .client import RegistryClient, RegistryError
from .reference import Reference, ReferenceError, Registry, site_reference

if TYPE_CHECKING:  # pragma: no cover
    from .access import RegistryAccess

RECORD_NAME = "pushed-layers.json"


@dataclass
class PushSettings:
    """How to push: layer encoding, parallel uploads, where encoded digests are remembered."""

    encoding: str = DEFAULT_ENCODING
    gzip_level: int = DEFAULT_GZIP_LEVEL
    jobs: int = 4
    record_dir: Optional[Path] = None


@dataclass
class PushResult:
    """What a push did."""

    references: list[str] = field(default_factory=list)
    manifests_stored: int = 0
    manifests_present: int = 0
    blobs_sent: int = 0
    bytes_sent: int = 0
    blobs_present: int = 0
    blobs_mounted: int = 0
    seconds: float = 0.0


@dataclass
class ImageTarget:
    """One image and the references it must have in the registry; ``present`` = (repository, manifest) found."""

    image: ImageRecord
    references: list[Reference]
    missing: list[Reference] = field(default_factory=list)
    wrong: dict[str, str] = field(default_factory=dict)  # reference -> the config digest it names instead
    present: Optional[tuple[str, bytes, str]] = None  # repository, manifest bytes, media type
    digests: dict[str, str] = field(default_factory=dict)  # reference -> manifest digest, where it names the image


def release_registry(header: BundleHeader) -> Optional[Registry]:
    """The registry the release's names were made for (from the signed header), if it names one."""
    text = header.spec.registry
    try:
        return Registry.parse(text) if text else None
    except ReferenceError:
        return None


def image_targets(header: BundleHeader, registry: Registry) -> list[ImageTarget]:
    """Every image with the registry references of all the names the stack uses (refused if two clash)."""
    own = release_registry(header)
    targets, owner = [], {}
    for image in header.images:
        references = []
        for name in image.targets:
            try:
                reference = site_reference(name, registry, own)
            except ReferenceError as exc:
                raise InstallError(f"cannot push {name!r}: {exc}") from None
            other = owner.setdefault(str(reference), image.id)
            if other != image.id:
                raise InstallError(f"two images would share {reference} in the registry ({other[7:19]} and "
                                   f"{image.id[7:19]}); pass another --registry")
            if reference not in references:
                references.append(reference)
        targets.append(ImageTarget(image=image, references=references))
    return targets


def survey(client: RegistryClient, targets: list[ImageTarget], jobs: int) -> None:
    """Ask the registry which references already point at each image (by its config digest); fill in ``missing``."""
    pairs = [(target, reference) for target in targets for reference in target.references]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:  # every name asked at once, not image by image
        answers = list(pool.map(lambda pair: client.get_manifest(pair[1].repository, pair[1].tag), pairs))
    for target in targets:
        target.missing, target.wrong = [], {}
    for (target, reference), found in zip(pairs, answers):
        named = config_digest(found[1]) if found is not None else None
        if named == target.image.id:
            target.present = target.present or (reference.repository, found[1], found[0])
            target.digests[str(reference)] = found[2]
            continue
        target.missing.append(reference)
        if found is not None:
            target.wrong[str(reference)] = named or "no single image"


def config_digest(manifest: bytes) -> Optional[str]:
    """The config digest a single-image manifest names, or None."""
    try:
        value = json.loads(manifest).get("config", {}).get("digest")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


class LayerRecord:
    """Digests of encoded layers pushed from this machine (``encoding:level:diffID`` → digest and size)."""

    def __init__(self, folder: Optional[Path]):
        self.path = (folder or _default_record_dir()) / RECORD_NAME
        self._lock = threading.Lock()
        try:
            data = json.loads(self.path.read_text())
            self.entries: dict[str, dict] = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            self.entries = {}

    def get(self, key: str) -> Optional[tuple[str, int]]:
        """(digest, size) remembered for ``key``, if any."""
        item = self.entries.get(key)
        if isinstance(item, dict) and isinstance(item.get("digest"), str) and isinstance(item.get("size"), int):
            return item["digest"], item["size"]
        return None

    def put(self, key: str, digest: str, size: int) -> None:
        """Remember ``key``'s encoded digest and size (written at once, atomically; a failure only costs speed)."""
        with self._lock:
            self.entries[key] = {"digest": digest, "size": size}
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".record-")
                with os.fdopen(fd, "w") as handle:
                    json.dump(self.entries, handle)
                os.replace(temp, self.path)
            except OSError:
                pass  # only an optimisation for the next run


def _default_record_dir() -> Path:
    base = os.environ.get("AIRGAP_INSTALL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "airgap-install")
    return Path(base)


@dataclass
class _Blob:
    """One blob to place in some repositories: a layer (by diffID) or a config (by image ID)."""

    key: str
    member: str
    repositories: list[str]
    digest: Optional[str] = None
    size: Optional[int] = None
    diff_id: Optional[str] = None
    is_config: bool = False


class Pusher:
    """Pushes one verified release into one registry (see the module docstring)."""

    def __init__(self, client: RegistryClient, settings: PushSettings, say: Say):
        self.client, self.settings, self.say = client, settings, say
        self.record = LayerRecord(settings.record_dir)
        self.result = PushResult()
        self._lock = threading.Lock()
        self._compressor: Optional[BlockCompressor] = None

    def push(self, bundle: VerifiedBundle, targets: list[ImageTarget]) -> PushResult:
        """Send what the survey found missing; every reference ends pointing at its image."""
        started = time.monotonic()
        bundle.require_checked()
        todo = [t for t in targets if t.missing]
        self.result.manifests_present = sum(len(t.references) - len(t.missing) for t in targets)
        fresh = [t for t in todo if t.present is None]
        blobs = self._blobs(bundle, fresh)
        try:
            if blobs:
                self._place_blobs(bundle, blobs)
            for target in todo:
                self._store_manifests(target, blobs)
        finally:
            if self._compressor is not None:
                self._compressor.close()
        self.result.seconds = time.monotonic() - started
        return self.result

    # -- blobs ------------------------------------------------------------
    def _layer_key(self, diff_id: str) -> str:
        how = f":{gzip_implementation(self.settings.gzip_level)}" if self.settings.encoding == "gzip" else ""
        return f"{self.settings.encoding}{how}:{diff_id}"

    def _blobs(self, bundle: VerifiedBundle, targets: list[ImageTarget]) -> dict[str, _Blob]:
        blobs: dict[str, _Blob] = {}
        for target in targets:
            repositories = list(dict.fromkeys(r.repository for r in target.missing))
            image = target.image
            items = [(f"config:{image.id}", config_path(image.id), None, True)]
            items += [(self._layer_key(d), layer_path(d), d, False) for d in image.diff_ids]
            for key, member, diff_id, is_config in items:
                if not bundle.present(member):
                    raise InstallError(f"the archive does not hold {member} (a release-only archive?): push needs "
                                       "the full archive")
                blob = blobs.setdefault(key, _Blob(key=key, member=member, repositories=[], diff_id=diff_id,
                                                   is_config=is_config))
                blob.repositories += [r for r in repositories if r not in blob.repositories]
                if blob.digest is None:
                    blob.digest, blob.size = self._known_digest(bundle, blob)
        return blobs

    def _known_digest(self, bundle: VerifiedBundle, blob: _Blob) -> tuple[Optional[str], Optional[int]]:
        record = bundle.header.member(blob.member)
        assert record is not None
        if blob.is_config:
            return "sha256:" + record.sha256, record.size
        encoding = self.settings.encoding
        if encoding == "none":
            return "sha256:" + record.sha256, record.size
        if encoding == "zstd":
            framed = bundle.frames(blob.member)
            if framed is None or not record.frames_sha256 or padding_for(record.size):
                raise InstallError(f"{blob.member} is not stored as frames of its own in this archive; push it with "
                                   "--layer-compression gzip or none")
            return "sha256:" + record.frames_sha256, framed[0]
        remembered = self.record.get(blob.key)
        return remembered if remembered else (None, None)

    def _place_blobs(self, bundle: VerifiedBundle, blobs: dict[str, _Blob]) -> None:
        """Every blob into every repository that needs it: present, linked, or sent (in parallel)."""
        work = sorted(blobs.values(), key=lambda b: -(bundle.header.member(b.member).size))  # type: ignore[union-attr]
        with ThreadPoolExecutor(max_workers=max(1, self.settings.jobs), thread_name_prefix="push") as pool:
            futures = [pool.submit(self._place, bundle, blob) for blob in work]
            try:
                for future in as_completed(futures):
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def _place(self, bundle: VerifiedBundle, blob: _Blob) -> None:
        holders, lacking = [], []
        if blob.digest is not None:
            for repository in blob.repositories:
                (holders if self.client.blob_exists(repository, blob.digest) else lacking).append(repository)
        else:
            lacking = list(blob.repositories)
        with self._lock:
            self.result.blobs_present += len(holders)
        if not lacking:
            return
        if not holders:
            first = lacking.pop(0)
            self._send(bundle, blob, first)
            holders.append(first)
        assert blob.digest is not None
        for repository in lacking:
            if blob.digest is not None and self.client.blob_exists(repository, blob.digest):
                continue
            mounted, session = self.client.mount_blob(repository, blob.digest, holders[0])
            if mounted:
                with self._lock:
                    self.result.blobs_mounted += 1
            else:  # the registry opened an upload instead: send the blob in it
                self._send(bundle, blob, repository, session)

    def _send(self, bundle: VerifiedBundle, blob: _Blob, repository: str, session: Optional[str] = None) -> None:
        """Upload one blob (in ``session`` if the registry opened one), retrying transient failures from its start."""
        attempts = self.client.connection.attempts
        for attempt in range(attempts):
            try:
                sent = self._upload_once(bundle, blob, repository, session)
                break
            except RegistryError as exc:
                if not exc.transient or attempt == attempts - 1:
                    raise
                self.say(f"  retrying {blob.member} after: {exc}")
                session = None
                time.sleep(min(2.0 ** attempt, 8.0))
        with self._lock:
            self.result.blobs_sent += 1
            self.result.bytes_sent += sent

    def _upload_once(self, bundle: VerifiedBundle, blob: _Blob, repository: str, session: Optional[str]) -> int:
        member = bundle.header.member(blob.member)
        assert member is not None
        if blob.is_config:
            data = b"".join(bundle.blocks(blob.member))
            assert blob.digest is not None
            self.client.put_blob(repository, data, blob.digest, session)
            return len(data)
        encoding = self.settings.encoding
        # The frames are re-hashed as they are read (bundle.blocks); the content is hashed again only for a
        # member not stored in frames of its own.
        rehash = encoding != "zstd" and blob.member not in bundle.locations
        content = Hashed(bundle.blocks(blob.member)) if rehash else None
        if encoding == "zstd":
            framed = bundle.frames(blob.member)
            assert framed is not None
            wire = Hashed(framed[1])
        else:
            blocks = iter(content) if content is not None else bundle.blocks(blob.member)
            wire = Hashed(blocks if encoding == "none" else self._gzip().gzip(blocks))

        def digest_of() -> str:
            if content is not None and content.digest != blob.diff_id:
                raise RegistryError(f"{blob.member}: its content does not match the layer's diffID; not committed")
            if blob.digest is not None and wire.digest != blob.digest:
                raise RegistryError(f"{blob.member}: the encoded layer's digest changed ({wire.digest[:19]}, "
                                    f"expected {blob.digest[:19]}); not committed")
            if encoding == "gzip":  # remembered before the commit: a run cut short right after it still knows it
                self.record.put(blob.key, wire.digest, wire.size)
            return wire.digest

        try:
            digest = self.client.upload_blob(repository, iter(wire), digest_of, session)
        except (ArchiveFormatError, VerificationError) as exc:
            raise InstallError(f"reading {blob.member} from the archive: {exc}") from None
        blob.digest, blob.size = digest, wire.size
        return wire.size

    def _gzip(self) -> BlockCompressor:
        with self._lock:
            if self._compressor is None:
                self._compressor = BlockCompressor(self.settings.gzip_level)
            return self._compressor

    # -- manifests ---------------------------------------------------------
    def _store_manifests(self, target: ImageTarget, blobs: dict[str, _Blob]) -> None:
        if target.present is not None:
            source, body, media_type = target.present
            for reference in target.missing:
                if reference.repository != source:
                    self._link_manifest_blobs(body, reference.repository, source)
                self.client.put_manifest(reference.repository, reference.tag, body, media_type)
                self._stored(reference)
            return
        body, media_type = self.manifest(target.image, blobs)
        for reference in target.missing:
            self.client.put_manifest(reference.repository, reference.tag, body, media_type)
            self._stored(reference)

    def _stored(self, reference: Reference) -> None:
        with self._lock:
            self.result.manifests_stored += 1
            self.result.references.append(str(reference))
        self.say(f"  pushed {reference}")

    def _link_manifest_blobs(self, body: bytes, repository: str, source: str) -> None:
        manifest = json.loads(body)
        for descriptor in [manifest.get("config", {})] + list(manifest.get("layers", [])):
            digest = descriptor.get("digest")
            if isinstance(digest, str) and not self.client.blob_exists(repository, digest):
                mounted, session = self.client.mount_blob(repository, digest, source)
                if not mounted:
                    if session:
                        self.client.cancel_upload(session, repository)
                    raise InstallError(f"the registry would not link {digest[:19]} from {source} into {repository}; "
                                       "push the full archive to that name once")

    def manifest(self, image: ImageRecord, blobs: dict[str, _Blob]) -> tuple[bytes, str]:
        """The image's manifest: its config and every layer blob as pushed."""
        manifest_type, config_type, layer_type = manifest_types(self.settings.encoding)
        config = blobs[f"config:{image.id}"]
        layers = []
        for diff_id in image.diff_ids:
            blob = blobs[self._layer_key(diff_id)]
            if blob.digest is None or blob.size is None:
                raise InstallError(f"layer {diff_id[:19]} was not placed in the registry")
            layers.append({"mediaType": layer_type, "size": blob.size, "digest": blob.digest})
        body = {"schemaVersion": 2, "mediaType": manifest_type,
                "config": {"mediaType": config_type, "size": config.size, "digest": config.digest},
                "layers": layers}
        return json.dumps(body, indent=3).encode(), manifest_type


def describe(result: PushResult) -> str:
    """One line saying what the push did."""
    return (f"{result.manifests_stored} name(s) stored, {result.manifests_present} already there; "
            f"{result.blobs_sent} blob(s) sent ({result.bytes_sent / 1e6:.1f} MB), {result.blobs_present} already held, "
            f"{result.blobs_mounted} linked from another repository; {result.seconds:.1f} s")

def push_archive(archive: Path, keys: list, access: "RegistryAccess", settings: PushSettings, say: Say, *,
                 allow_untrusted: bool = False) -> PushResult:
    """Verify the archive, ask the registry what it lacks, and stream only that into it.

    The signature is checked first; the registry is then asked about every
    name (reads only). If anything must be sent, every member's digest is
    checked before the first byte goes out, and blobs are read from the held,
    verified archive.
    """
    from ..install import open_checking_signature  # the install core imports this package

    started = time.monotonic()
    with open_checking_signature(archive, keys, allow_untrusted, say, unchanged="nothing was sent") as bundle:
        header = bundle.header
        client = access.connect(header)
        try:
            targets = image_targets(header, client.registry)
            say(f"registry: {client.base} (project {client.registry.project or '-'}), "
                f"{sum(len(t.references) for t in targets)} name(s) for {len(targets)} image(s)")
            client.ping()
            survey(client, targets, settings.jobs)
            missing = sum(len(t.missing) for t in targets)
            if not missing:
                result = PushResult(manifests_present=sum(len(t.references) for t in targets))
                result.seconds = time.monotonic() - started
                say("the registry holds every name already, each pointing at its image; nothing sent")
                return result
            for target in targets:
                for name, other in target.wrong.items():
                    say(f"  replacing {name}: it names image {other[7:19]}, this release's is {target.image.id[7:19]}")
            say(f"to push: {missing} name(s); verify: every member's sha256 against the signed header")
            try:
                bundle.check_members()
            except VerificationError as exc:
                raise InstallError(f"verification failed; nothing was sent: {exc}",
                                   getattr(exc, "problems", [])) from None
            large_buffers_off_the_heap()
            pusher = Pusher(client, settings, say)
            result = pusher.push(bundle, targets)
        except RegistryError as exc:
            raise InstallError(f"push: {exc}") from None
        finally:
            client.close()
    result.seconds = time.monotonic() - started
    return result
