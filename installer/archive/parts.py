"""Split volumes: one archive carried as parts no larger than a size (USB sticks, DVDs).

    NAME.tar.zst.part001 ... NAME.tar.zst.partNNN   the archive's bytes, in order
    NAME.tar.zst.parts.json                          index: each part's name, size and sha256

The signed header inside the archive still covers every member; the index
only lets the reader name a part that is missing or damaged in transport.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

from .layout import CHUNK, sha256_file

INDEX_SUFFIX = ".parts.json"
_PART = re.compile(r"^(?P<archive>.+\.tar\.zst)\.part(?P<number>\d{3,})$")


class PartsError(Exception):
    """A part is missing, of the wrong size, or damaged; the message names it."""


@dataclass(frozen=True)
class Part:
    """One part of a split archive."""

    name: str
    size: int
    sha256: str


def parse_size(text: str) -> int:
    """``700M``, ``4.3G``, ``650MiB``, ``123456`` → bytes (K/M/G are powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*", text, re.I)
    if not match:
        raise ValueError(f"{text!r} is not a size like 700M or 4G")
    size = float(match.group(1)) * 1024 ** "BKMGT".index((match.group(2) or "B").upper())
    if size < 1024 * 1024:
        raise ValueError(f"{text!r}: parts must be at least 1M")
    return int(size)


def split_archive(archive: Path, part_size: int) -> Path:
    """Cut ``archive`` into parts in place (never holding two copies); return the index path."""
    archive = Path(archive)
    total = archive.stat().st_size
    count = max(1, -(-total // part_size))
    parts: list[Part] = [None] * count  # type: ignore[list-item]
    with open(archive, "r+b") as source:
        for number in range(count, 1, -1):
            start = (number - 1) * part_size
            name = f"{archive.name}.part{number:03d}"
            parts[number - 1] = _copy_range(source, start, total, archive.with_name(name))
            source.truncate(start)
            total = start
        source.flush()
    first = archive.with_name(f"{archive.name}.part001")
    os.replace(archive, first)
    parts[0] = Part(first.name, first.stat().st_size, sha256_file(first))
    index = archive.with_name(archive.name + INDEX_SUFFIX)
    index.write_text(json.dumps({"archive": archive.name, "parts": [p.__dict__ for p in parts]}, indent=2) + "\n")
    return index


def _copy_range(source: BinaryIO, start: int, end: int, target: Path) -> Part:
    digest = hashlib.sha256()
    source.seek(start)
    remaining = end - start
    with open(target, "wb") as out:
        while remaining:
            chunk = source.read(min(CHUNK, remaining))
            digest.update(chunk)
            out.write(chunk)
            remaining -= len(chunk)
    return Part(target.name, end - start, digest.hexdigest())


def find_index(path: Path) -> Optional[Path]:
    """The index of a split archive given its folder, its index, or any of its parts; None if ``path`` is a whole archive."""
    path = Path(path)
    if path.is_dir():
        indexes = sorted(path.glob(f"*{INDEX_SUFFIX}"))
        if len(indexes) != 1:
            raise PartsError(f"{path}: expected one *{INDEX_SUFFIX} index of a split archive, found {len(indexes)}")
        return indexes[0]
    if path.name.endswith(INDEX_SUFFIX):
        return path
    match = _PART.match(path.name)
    if match:
        return path.with_name(match.group("archive") + INDEX_SUFFIX)
    return None


def read_index(index: Path) -> list[Part]:
    """The parts listed in ``index``."""
    try:
        data = json.loads(Path(index).read_text())
        parts = [Part(str(p["name"]), int(p["size"]), str(p["sha256"])) for p in data["parts"]]
    except FileNotFoundError:
        raise PartsError(f"{index}: the index of the split archive is missing; copy it with the parts") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PartsError(f"{index}: not a readable parts index ({exc})") from None
    for part in parts:
        if "/" in part.name or part.name.startswith("."):
            raise PartsError(f"{index}: part name {part.name!r} is not a plain file name")
    return parts


def check_parts(index: Path, *, digests: bool) -> list[Part]:
    """Every part present with its size (and, with ``digests``, its sha256); PartsError naming the first bad one."""
    parts = read_index(index)
    for number, part in enumerate(parts, 1):
        path = index.with_name(part.name)
        label = f"part {number} of {len(parts)} ({part.name})"
        if not path.is_file():
            raise PartsError(f"{label} is missing from {index.parent}")
        if path.stat().st_size != part.size:
            raise PartsError(f"{label} has {path.stat().st_size} bytes, the index says {part.size}: incomplete or damaged copy")
        if digests and sha256_file(path) != part.sha256:
            raise PartsError(f"{label} is damaged: its sha256 does not match the index")
    return parts


class PartsReader:
    """A read-only file object over the parts of a split archive, in order."""

    def __init__(self, index: Path):
        self._paths = [index.with_name(p.name) for p in check_parts(index, digests=False)]
        self._current: Optional[BinaryIO] = None
        self._position = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        """Read up to ``size`` bytes across part boundaries."""
        out = bytearray()
        while size < 0 or len(out) < size:
            if self._current is None:
                if self._position >= len(self._paths):
                    break
                self._current = open(self._paths[self._position], "rb")
            chunk = self._current.read(CHUNK if size < 0 else size - len(out))
            if not chunk:
                self._current.close()
                self._current = None
                self._position += 1
                continue
            out += chunk
        return bytes(out)

    def close(self) -> None:
        """Close the open part."""
        if self._current is not None:
            self._current.close()
            self._current = None
