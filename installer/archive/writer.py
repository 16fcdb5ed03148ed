"""Write a bundle archive in one streaming pass.

The writer needs a seekable output file: it reserves room at the front for
the signed header (which lists every member's sha256 and size, known only at
the end) and, for members whose name depends on their content, room for the
tar header in front of their data. Everything is written to ``PATH.partial``
and renamed into place by :meth:`ArchiveWriter.finish`; on any failure the
partial file is removed, so a failed build never leaves a half archive behind.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Optional

import zstandard

from .header import MemberRecord
from .layout import (
    BLOCK,
    CHUNK,
    END_OF_ARCHIVE,
    HEADER_NAME,
    MEMBER_HEADER_SLOT,
    SIGNATURE_NAME,
    SKIPPABLE_OVERHEAD,
    check_member_name,
    padding_for,
    skippable_frame,
)


class ArchiveWriteError(Exception):
    """The archive could not be written as asked."""


def tar_header(name: str, size: int, mtime: int = 0) -> bytes:
    """The tar header block(s) of a regular file ``name`` of ``size`` bytes."""
    info = tarfile.TarInfo(check_member_name(name))
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


class ArchiveWriter:
    """Stream members into ``PATH`` (a ``.tar.zst``), then seal it with a signed header.

    Use as a context manager; call :meth:`finish` with the header bytes and
    their signature once every member is added.
    """

    def __init__(self, path: Path, *, header_reserve: int, level: int = 3, threads: int = -1, mtime: int = 0):
        self.path = Path(path)
        self.partial_path = self.path.with_name(self.path.name + ".partial")
        self.header_reserve = header_reserve
        self.mtime = mtime
        self.members: list[MemberRecord] = []
        self._names: set[str] = set()
        # Multi-threaded, with 4 MiB jobs: the default job size (a multiple of the window) costs
        # about twice the memory for no gain in speed or ratio at these levels.
        self._compressor = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters.from_level(
            level, threads=threads, job_size=4 << 20, write_checksum=0))
        self._small_compressor = zstandard.ZstdCompressor(level=level, write_checksum=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO = open(self.partial_path, "wb")
        self._file.write(skippable_frame(header_reserve))
        self._finished = False
        self.last_data_span: tuple[int, int] = (0, 0)

    # -- context management -------------------------------------------------
    def __enter__(self) -> "ArchiveWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._finished:
            self.abort()

    def abort(self) -> None:
        """Close and delete the partial file."""
        try:
            self._file.close()
        finally:
            self.partial_path.unlink(missing_ok=True)
            self._finished = True

    # -- adding members -----------------------------------------------------
    def add_bytes(self, name: str, data: bytes) -> MemberRecord:
        """Add a member whose bytes are in memory."""
        return self.add_stream(name, len(data), [data])

    def add_file(self, name: str, source: Path) -> MemberRecord:
        """Add a member read from a file on disk."""
        size = os.stat(source).st_size
        with open(source, "rb") as handle:
            return self.add_stream(name, size, iter(lambda: handle.read(CHUNK), b""))

    def add_stream(self, name: str, size: int, chunks: Iterable[bytes]) -> MemberRecord:
        """Add a member of ``size`` bytes from ``chunks``, compressing as it streams."""
        self._claim(name)
        self._write_frame(self._small_compressor, tar_header(name, size, self.mtime))
        sha256 = self._write_data(size, chunks, name)
        return self._record(name, sha256, size)

    def add_precompressed(self, name: str, size: int, sha256: str, frame: Path) -> MemberRecord:
        """Add a member whose data frame was compressed earlier (a cache entry), copying it as is.

        The caller vouches that ``frame`` decompresses to ``size`` bytes (plus
        tar padding) with this ``sha256``; readers check it like any member.
        """
        self._claim(name)
        self._write_frame(self._small_compressor, tar_header(name, size, self.mtime))
        start = self._file.tell()
        with open(frame, "rb") as source:
            for chunk in iter(lambda: source.read(CHUNK), b""):
                self._file.write(chunk)
        self.last_data_span = (start, self._file.tell() - start)
        return self._record(name, sha256, size)

    def add_stream_named_by_digest(
        self, size: int, chunks: Iterable[bytes], name_for: Callable[[str], Optional[str]], label: str
    ) -> Optional[MemberRecord]:
        """Add a member whose name is chosen from its sha256 after it has streamed.

        ``name_for(sha256_hex)`` returns the member's name, or None to drop the
        member (the file is cut back to where it began). ``label`` names the
        source in error messages.
        """
        start = self._file.tell()
        self._file.write(skippable_frame(MEMBER_HEADER_SLOT))
        sha256 = self._write_data(size, chunks, label)
        name = name_for(sha256)
        if name is None:
            self._file.seek(start)
            self._file.truncate()
            return None
        self._claim(name)
        end = self._file.tell()
        header_frame = self._small_compressor.compress(tar_header(name, size, self.mtime))
        if len(header_frame) > MEMBER_HEADER_SLOT - SKIPPABLE_OVERHEAD:
            raise ArchiveWriteError(f"tar header of {name!r} does not fit its reserved slot")
        self._file.seek(start)
        self._file.write(header_frame + skippable_frame(MEMBER_HEADER_SLOT - len(header_frame)))
        self._file.seek(end)
        return self._record(name, sha256, size)

    # -- sealing --------------------------------------------------------------
    def flush(self) -> None:
        """Push written bytes to the file (so a frame can be read back, e.g. into a cache)."""
        self._file.flush()

    def finish(self, header: bytes, signature: bytes) -> Path:
        """Write the signed header into its reserved room and move the archive into place."""
        self._file.write(self._small_compressor.compress(END_OF_ARCHIVE))
        front = self._small_compressor.compress(
            tar_header(HEADER_NAME, len(header), self.mtime) + header + padding_for(len(header))
            + tar_header(SIGNATURE_NAME, len(signature), self.mtime) + signature + padding_for(len(signature))
        )
        room = self.header_reserve - len(front)
        if room < SKIPPABLE_OVERHEAD and room != 0:
            raise ArchiveWriteError(
                f"the signed header needs {len(front)} bytes but only {self.header_reserve} were reserved"
            )
        self._file.seek(0)
        self._file.write(front + (skippable_frame(room) if room else b""))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.partial_path, self.path)
        self._finished = True
        return self.path

    # -- internals ------------------------------------------------------------
    def _claim(self, name: str) -> None:
        check_member_name(name)
        if name in self._names or name in (HEADER_NAME, SIGNATURE_NAME):
            raise ArchiveWriteError(f"member {name!r} added twice")
        self._names.add(name)

    def _record(self, name: str, sha256: str, size: int) -> MemberRecord:
        record = MemberRecord(path=name, sha256=sha256, size=size)
        self.members.append(record)
        return record

    def _write_frame(self, compressor: zstandard.ZstdCompressor, data: bytes) -> None:
        self._file.write(compressor.compress(data))

    def _write_data(self, size: int, chunks: Iterable[bytes], label: str) -> str:
        """Compress ``size`` bytes plus tar padding as one frame; return their sha256."""
        digest = hashlib.sha256()
        start = self._file.tell()
        stream = self._compressor.compressobj(size=size + len(padding_for(size)))
        written = 0
        for chunk in chunks:
            if not chunk:
                continue
            written += len(chunk)
            if written > size:
                raise ArchiveWriteError(f"{label}: more data than the {size} bytes announced")
            digest.update(chunk)
            self._file.write(stream.compress(chunk))
        if written != size:
            raise ArchiveWriteError(f"{label}: got {written} bytes, {size} were announced")
        self._file.write(stream.compress(padding_for(size)))
        self._file.write(stream.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))
        self.last_data_span = (start, self._file.tell() - start)
        return digest.hexdigest()


__all__ = ["ArchiveWriter", "ArchiveWriteError", "tar_header", "BLOCK"]
