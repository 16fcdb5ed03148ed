"""A content-addressed cache of compressed archive members, kept between builds.

Each member's data is one zstd frame in the archive, so a frame compressed by
an earlier build can be copied into the next archive as it is. The cache keeps
those frames by the sha256 of their content (a layer's diffID, a config's image
ID), per compression level, and remembers which path of the engine's save
stream held which layer, so a later save can be matched without hashing.

    ROOT/level-3/<sha256>.zst     the member's frames (data and tar padding)
    ROOT/level-3/<sha256>.meta    the member's size and the frame's own sha256 (checked before reuse)
    ROOT/save-paths.json          "<v1 id>/layer.tar" -> sha256 (legacy save streams)

Delete the folder at any time: the next build just compresses again.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from installer.archive.layout import copy_range, sha256_file
from installer.archive.writer import DataFrame

DEFAULT_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "airgap-bundle" / "members"


@dataclass(frozen=True)
class CachedFrame:
    """A cached member: its size, the file holding its compressed frames and their sha256."""

    size: int
    path: Path
    frames_sha256: str


class MemberCache:
    """Frames by content digest for one compression level, and save-path → digest hints."""

    def __init__(self, root: Path, level: int):
        self.root = Path(root)
        self.folder = self.root / f"level-{level}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._paths_file = self.root / "save-paths.json"
        try:
            self._paths: dict[str, str] = json.loads(self._paths_file.read_text())
        except (OSError, ValueError):
            self._paths = {}
        self._dirty = False

    @classmethod
    def from_env(cls, level: int, root: Optional[Path] = None) -> "MemberCache":
        """The cache at ``root``, $AIRGAP_BUNDLE_CACHE, or the user's cache folder."""
        return cls(root or Path(os.environ.get("AIRGAP_BUNDLE_CACHE", DEFAULT_ROOT)), level)

    def lookup(self, digest_hex: str) -> Optional[CachedFrame]:
        """The cached frame of the member with this sha256, if any."""
        frame, meta = self.folder / f"{digest_hex}.zst", self.folder / f"{digest_hex}.meta"
        try:
            facts = json.loads(meta.read_text())
            return CachedFrame(size=int(facts["size"]), path=frame, frames_sha256=str(facts["frame_sha256"])) \
                if frame.is_file() else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def has(self, digests: list[str]) -> bool:
        """True when every digest has a frame."""
        return all(self.lookup(d) is not None for d in digests)

    def check(self, digests: list[str]) -> bool:
        """True when every digest has a frame whose bytes are intact; a damaged entry is removed."""
        for digest in digests:
            entry = self.lookup(digest)
            if entry is None:
                return False
            try:
                actual = sha256_file(entry.path)
            except OSError:
                actual = "unreadable"
            if actual != entry.frames_sha256:
                self.forget(digest)
                return False
        return True

    def forget(self, digest_hex: str) -> None:
        """Drop one entry."""
        for suffix in (".zst", ".meta"):
            (self.folder / f"{digest_hex}{suffix}").unlink(missing_ok=True)

    def store(self, digest_hex: str, size: int, frame: DataFrame) -> None:
        """Copy a member's frames, just written to an archive, into the cache (atomically, inside the kernel)."""
        if self.lookup(digest_hex) is not None:
            return
        temporary = self.folder / f".{digest_hex}.{os.getpid()}.tmp"
        with open(frame.path, "rb") as source, open(temporary, "wb") as target:
            copy_range(source.fileno(), target.fileno(), frame.offset, frame.length, 0)
        (self.folder / f"{digest_hex}.meta").write_text(json.dumps({"size": size, "frame_sha256": frame.sha256}))
        os.replace(temporary, self.folder / f"{digest_hex}.zst")

    def digest_of_path(self, save_path: str) -> Optional[str]:
        """The layer a save-stream path held in an earlier build."""
        return self._paths.get(save_path)

    def remember_path(self, save_path: str, digest_hex: str) -> None:
        """Note which layer a save-stream path held (legacy ``<v1 id>/layer.tar`` names are stable per chain)."""
        if save_path.endswith("/layer.tar") and self._paths.get(save_path) != digest_hex:
            self._paths[save_path] = digest_hex
            self._dirty = True

    def save(self) -> None:
        """Write the path hints."""
        if self._dirty:
            temporary = self._paths_file.with_suffix(".tmp")
            temporary.write_text(json.dumps(self._paths, sort_keys=True))
            os.replace(temporary, self._paths_file)
            self._dirty = False

    def clear(self) -> None:
        """Remove everything."""
        shutil.rmtree(self.root, ignore_errors=True)

