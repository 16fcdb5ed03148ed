"""The lockfile: what `resolve` found, so that a later build pulls exactly the same images."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .plan import Plan

LOCK_VERSION = 1


class LockfileError(ValueError):
    """The lockfile is unreadable or belongs to another manifest."""


@dataclass
class LockedImage:
    """A pinned upstream image: its registry digest and image ID (either may be unknown)."""

    digest: Optional[str]
    image_id: Optional[str]


@dataclass
class Lockfile:
    """Pins for every dependency and build base, and the IDs of the last source builds."""

    manifest: str
    manifest_sha256: str
    platform: str
    images: dict[str, LockedImage] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    release: Optional[dict] = None

    def to_json(self) -> str:
        """Deterministic JSON text."""
        data = {
            "lockfile": LOCK_VERSION,
            "manifest": self.manifest,
            "manifest_sha256": self.manifest_sha256,
            "platform": self.platform,
            "images": {ref: {"digest": i.digest, "image_id": i.image_id} for ref, i in sorted(self.images.items())},
            "sources": dict(sorted(self.sources.items())),
        }
        if self.release:
            data["release"] = self.release
        return json.dumps(data, indent=2) + "\n"


def default_lock_path(manifest_path: Path) -> Path:
    """``manifests/aimatrix.yaml`` → ``manifests/aimatrix.lock.json``."""
    return manifest_path.with_name(manifest_path.stem + ".lock.json")


def manifest_digest(manifest_path: Path) -> str:
    """sha256 of the manifest file's bytes."""
    return hashlib.sha256(Path(manifest_path).read_bytes()).hexdigest()


def lock_from_plan(plan: Plan) -> Lockfile:
    """A lockfile holding what the plan knows (digests and IDs filled in by resolve/build)."""
    lock = Lockfile(
        manifest=plan.manifest.path.name,
        manifest_sha256=manifest_digest(plan.manifest.path),
        platform=plan.platform,
    )
    for entry in plan.of_kind("dependency", "build-base"):
        lock.images[entry.upstream] = LockedImage(digest=entry.digest, image_id=entry.image_id)
    for entry in plan.of_kind("source"):
        if entry.image_id and entry.service:
            lock.sources[entry.service] = entry.image_id
    return lock


def read_lock(path: Path) -> Lockfile:
    """Read a lockfile; LockfileError with the reason if it is unusable."""
    try:
        data = json.loads(Path(path).read_text())
        if data.get("lockfile") != LOCK_VERSION:
            raise LockfileError(f"{path}: lockfile version {data.get('lockfile')!r}, expected {LOCK_VERSION}")
        return Lockfile(
            manifest=str(data["manifest"]),
            manifest_sha256=str(data["manifest_sha256"]),
            platform=str(data["platform"]),
            images={ref: LockedImage(digest=v.get("digest"), image_id=v.get("image_id")) for ref, v in data["images"].items()},
            sources={str(k): str(v) for k, v in data.get("sources", {}).items()},
            release=data.get("release"),
        )
    except FileNotFoundError:
        raise LockfileError(f"{path}: no such lockfile") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LockfileError(f"{path}: not a valid lockfile ({exc}); delete it and run 'airgap-bundle resolve' again") from None


def write_lock(lock: Lockfile, path: Path) -> None:
    """Write the lockfile atomically."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(lock.to_json())
    temporary.replace(path)
