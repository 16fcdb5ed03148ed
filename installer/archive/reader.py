"""Read a bundle archive as a stream, member by member, with exact reads.

The reader parses the tar itself (ustar headers, PAX extended headers) so it
never reads past the member it is on: a decoding error is attributed to the
member whose bytes were being read, and only regular files with safe names
are accepted.
"""
from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

import zstandard

from .layout import BLOCK, CHUNK, HEADER_NAME, SIGNATURE_NAME, check_member_name, padding_for
from .parts import PartsError, PartsReader, find_index


class ArchiveFormatError(Exception):
    """The archive is not a readable bundle; the message names where it broke."""


@dataclass
class SignedHeader:
    """The raw bytes of ``bundle.json`` and of its signature."""

    header: bytes
    signature: Optional[bytes]


class MemberStream:
    """One member being read: its name and size, and its bytes as chunks."""

    def __init__(self, reader: "ArchiveReader", name: str, size: int):
        self.name = name
        self.size = size
        self._reader = reader
        self._remaining = size

    def chunks(self, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """Yield the member's bytes in chunks of at most ``chunk_size``."""
        while self._remaining:
            chunk = self._reader._read_exact(min(chunk_size, self._remaining), self.name)
            self._remaining -= len(chunk)
            yield chunk

    def read_all(self, limit: int = 64 << 20) -> bytes:
        """Read the whole member into memory (only for small members)."""
        if self.size > limit:
            raise ArchiveFormatError(f"member {self.name!r} is {self.size} bytes, too large to read into memory")
        return b"".join(self.chunks())

    def skip(self) -> None:
        """Discard what is left of the member."""
        for _ in self.chunks():
            pass


class ArchiveReader:
    """Iterate over the members of a ``.tar.zst`` bundle.

    ``read_signed_header()`` reads only the first two members; ``members()``
    yields every member after them. Open one reader per pass.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            index = find_index(self.path)
            self._file: BinaryIO = PartsReader(index) if index else open(self.path, "rb")  # type: ignore[assignment]
        except PartsError as exc:
            raise ArchiveFormatError(str(exc)) from None
        except IsADirectoryError:
            raise ArchiveFormatError(f"{self.path}: a folder, but it holds no split archive") from None
        except FileNotFoundError:
            raise ArchiveFormatError(f"{self.path}: no such file") from None
        except OSError as exc:
            raise ArchiveFormatError(f"{self.path}: cannot open ({exc.strerror})") from None
        self._stream = zstandard.ZstdDecompressor().stream_reader(self._file, read_across_frames=True, read_size=CHUNK)
        self._header: Optional[SignedHeader] = None
        self._current: Optional[MemberStream] = None
        self._pending: Optional[MemberStream] = None
        self.bytes_read = 0

    def __enter__(self) -> "ArchiveReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the file."""
        self._stream.close()
        self._file.close()

    def read_signed_header(self) -> SignedHeader:
        """Return ``bundle.json`` and its signature: the archive's first two members.

        ``signature`` is None when the archive is unsigned.
        """
        if self._header is None:
            first = self._next_member("the start of the archive")
            if first is None or first.name != HEADER_NAME:
                raise ArchiveFormatError(
                    f"{self.path}: the first member is {first.name if first else 'missing'!r}, expected {HEADER_NAME!r}"
                    " (not a bundle made by airgap-bundle, or damaged)"
                )
            header = first.read_all(limit=16 << 20)
            second = self._next_member(HEADER_NAME)
            if second is not None and second.name == SIGNATURE_NAME:
                self._header = SignedHeader(header=header, signature=second.read_all(limit=4096))
            else:
                self._pending = second
                self._header = SignedHeader(header=header, signature=None)
        return self._header

    def members(self) -> Iterator[MemberStream]:
        """Yield every member after the signed header, in archive order.

        A member not read to its end is skipped when the next one is asked for.
        """
        signed = self.read_signed_header()
        previous = SIGNATURE_NAME if signed.signature is not None else HEADER_NAME
        if self._pending is not None:
            member, self._pending = self._pending, None
            yield member
            previous = member.name
        while True:
            member = self._next_member(previous)
            if member is None:
                return
            yield member
            previous = member.name

    # -- tar parsing ------------------------------------------------------------
    def _next_member(self, previous: str) -> Optional[MemberStream]:
        if self._current is not None:
            self._current.skip()
            self._read_exact(len(padding_for(self._current.size)), self._current.name)
            self._current = None
        where = f"the member after {previous!r}"
        pax: dict[str, str] = {}
        while True:
            block = self._read_exact(BLOCK, where, allow_eof=True)
            if not block:
                raise ArchiveFormatError(f"{self.path}: the archive is truncated: it ends after {previous!r} with no end-of-archive marker")
            if block == b"\0" * BLOCK:
                return None
            try:
                info = tarfile.TarInfo.frombuf(block, encoding="utf-8", errors="strict")
            except tarfile.HeaderError as exc:
                raise ArchiveFormatError(f"{self.path}: damaged tar header in {where} ({exc})") from None
            if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE):
                pax.update(self._read_pax(info.size, where))
                continue
            break
        name = pax.get("path", info.name)
        size = int(pax["size"]) if "size" in pax else info.size
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise ArchiveFormatError(f"{self.path}: member {name!r} is not a regular file; bundles hold only files")
        try:
            check_member_name(name)
        except ValueError as exc:
            raise ArchiveFormatError(f"{self.path}: {exc}") from None
        self._current = MemberStream(self, name, size)
        return self._current

    def _read_pax(self, size: int, where: str) -> dict[str, str]:
        data = self._read_exact(size + len(padding_for(size)), where)[:size]
        records: dict[str, str] = {}
        position = 0
        while position < len(data):
            try:
                length_text, _ = data[position:].split(b" ", 1)
                length = int(length_text)
                record = data[position + len(length_text) + 1 : position + length - 1].decode("utf-8")
                key, value = record.split("=", 1)
            except ValueError:
                raise ArchiveFormatError(f"{self.path}: damaged PAX header in {where}") from None
            records[key] = value
            position += length
        return records

    def _read_exact(self, size: int, where: str, allow_eof: bool = False) -> bytes:
        parts: list[bytes] = []
        wanted = size
        while wanted:
            try:
                chunk = self._stream.read(wanted)
            except zstandard.ZstdError as exc:
                raise ArchiveFormatError(f"{self.path}: corrupt compressed data in {where} (zstd: {exc})") from None
            if not chunk:
                if allow_eof and wanted == size:
                    return b""
                raise ArchiveFormatError(f"{self.path}: the archive is truncated inside {where}")
            parts.append(chunk)
            wanted -= len(chunk)
        self.bytes_read += size
        return b"".join(parts)
