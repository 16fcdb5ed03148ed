"""The member cache: frames kept by content digest, checked before reuse."""
from __future__ import annotations

import hashlib
from pathlib import Path

import zstandard

from bundler.cache import MemberCache
from installer.archive.writer import DataFrame


def _archive_with_frame(tmp_path: Path, data: bytes) -> tuple[Path, DataFrame]:
    frame = zstandard.ZstdCompressor(level=3).compress(data)
    archive = tmp_path / "a.partial"
    archive.write_bytes(b"x" * 100 + frame + b"y" * 10)
    return archive, DataFrame(archive, 100, len(frame), hashlib.sha256(frame).hexdigest())


def test_store_lookup_and_reuse_across_instances(tmp_path: Path) -> None:
    archive, frame = _archive_with_frame(tmp_path, b"layer" * 1000)
    cache = MemberCache(tmp_path / "c", level=3)
    cache.store("ab" * 32, 5000, frame)
    cache.remember_path("0123/layer.tar", "ab" * 32)
    cache.save()
    again = MemberCache(tmp_path / "c", level=3)
    entry = again.lookup("ab" * 32)
    assert entry is not None and entry.size == 5000
    assert zstandard.ZstdDecompressor().decompress(entry.path.read_bytes()) == b"layer" * 1000
    assert again.check(["ab" * 32]) and again.digest_of_path("0123/layer.tar") == "ab" * 32
    assert MemberCache(tmp_path / "c", level=1).lookup("ab" * 32) is None  # frames are per level


def test_a_damaged_entry_is_dropped_not_reused(tmp_path: Path) -> None:
    archive, frame = _archive_with_frame(tmp_path, b"config" * 100)
    cache = MemberCache(tmp_path / "c", level=3)
    cache.store("cd" * 32, 600, frame)
    frame = cache.lookup("cd" * 32).path
    data = bytearray(frame.read_bytes())
    data[len(data) // 2] ^= 0xFF
    frame.write_bytes(bytes(data))
    assert cache.check(["cd" * 32]) is False
    assert cache.lookup("cd" * 32) is None
