"""A sequential tar reader with exact reads, over any ``read(n)`` source.

Unlike ``tarfile``'s stream mode it never reads past the entry it is on
(errors are attributed to the right entry) and moves data in large chunks
(no 10 KiB record reads), which matters at gigabytes per run. It
understands ustar, GNU long names and PAX headers; what to accept is the
caller's policy.
"""
from __future__ import annotations

import tarfile
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from .layout import BLOCK, CHUNK, padding_for


# Bounds on what a tar stream may ask to be read before its data: extended (PAX) headers and GNU
# long names are read whole, so a forged size must not make the reader buffer gigabytes.
MAX_META_SIZE = 64 << 10
MAX_META_HEADERS = 8


class TarStreamError(Exception):
    """The stream is not a well-formed tar; the message says where it broke."""


@dataclass
class TarEntry:
    """One entry: name, size, tar type and link target; data is read through the stream."""

    name: str
    size: int
    type: bytes
    linkname: str

    @property
    def is_file(self) -> bool:
        """A regular file."""
        return self.type in (tarfile.REGTYPE, tarfile.AREGTYPE)


class TarStream:
    """Iterate over the entries of a tar read from ``read``; read each entry's data in chunks."""

    def __init__(self, read: Callable[[int], bytes], on_error: Optional[Callable[[Exception, str], Exception]] = None):
        self._read = read
        self._on_error = on_error
        self._current: Optional[TarEntry] = None
        self._remaining = 0
        self.bytes_read = 0

    def next_entry(self, previous: str = "the start") -> Optional[TarEntry]:
        """The next entry (the rest of the current one is skipped), or None at the end-of-archive marker."""
        if self._current is not None:
            for _ in self.chunks():
                pass
            self.read_exact(len(padding_for(self._current.size)), self._current.name)
            self._current = None
        where = f"the entry after {previous!r}"
        pax: dict[str, str] = {}
        long_name: Optional[str] = None
        for _ in range(MAX_META_HEADERS + 1):
            block = self.read_exact(BLOCK, where, allow_eof=True)
            if not block:
                raise TarStreamError(f"the stream is truncated: it ends after {previous!r} with no end-of-archive marker")
            if block == b"\0" * BLOCK:
                return None
            try:
                info = tarfile.TarInfo.frombuf(block, encoding="utf-8", errors="surrogateescape")
            except tarfile.HeaderError as exc:
                raise TarStreamError(f"damaged tar header in {where} ({exc})") from None
            if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK) \
                    and not 0 <= info.size <= MAX_META_SIZE:
                raise TarStreamError(f"an extended tar header of {info.size} bytes in {where} "
                                     f"(at most {MAX_META_SIZE} are accepted)")
            if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE):
                pax.update(self._pax_records(info.size, where))
                continue
            if info.type == tarfile.GNUTYPE_LONGNAME:
                long_name = self.read_exact(info.size + len(padding_for(info.size)), where)[: info.size].rstrip(b"\0").decode(
                    "utf-8", "surrogateescape")
                continue
            if info.type == tarfile.GNUTYPE_LONGLINK:
                self.read_exact(info.size + len(padding_for(info.size)), where)
                continue
            break
        else:
            raise TarStreamError(f"more than {MAX_META_HEADERS} extended tar headers in a row in {where}")
        name = pax.get("path", long_name or info.name)
        try:
            size = int(pax["size"]) if "size" in pax else info.size
        except ValueError:
            raise TarStreamError(f"damaged PAX header in {where} (size {pax['size'][:20]!r})") from None
        if not 0 <= size < 1 << 62:
            raise TarStreamError(f"an entry size of {size} in {where}")
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
            size = 0  # links, folders and devices carry no data
        self._current = TarEntry(name=name, size=size, type=info.type, linkname=pax.get("linkpath", info.linkname))
        self._remaining = size
        return self._current

    def entries(self) -> Iterator[TarEntry]:
        """Every entry up to the end-of-archive marker."""
        previous = "the start"
        while True:
            entry = self.next_entry(previous)
            if entry is None:
                return
            yield entry
            previous = entry.name

    def chunks(self, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """The current entry's remaining data, in chunks of at most ``chunk_size`` (as the source hands them over)."""
        name = self._current.name if self._current else "?"
        while self._remaining:
            chunk = self._read_some(min(chunk_size, self._remaining), name)
            self._remaining -= len(chunk)
            self.bytes_read += len(chunk)
            yield chunk

    def forget_current(self) -> None:
        """The caller took the current entry's data and padding from the source itself: go on from there."""
        self._current = None
        self._remaining = 0

    def read_exact(self, size: int, where: str, allow_eof: bool = False) -> bytes:
        """Exactly ``size`` bytes (b"" at a clean end when ``allow_eof``); TarStreamError if cut short."""
        parts: list[bytes] = []
        wanted = size
        while wanted:
            chunk = self._read_some(wanted, where, allow_eof=allow_eof and wanted == size)
            if not chunk:
                return b""
            parts.append(chunk)
            wanted -= len(chunk)
        self.bytes_read += size
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_some(self, size: int, where: str, allow_eof: bool = False) -> bytes:
        """Between 1 and ``size`` bytes (b"" at the end only when ``allow_eof``)."""
        try:
            chunk = self._read(size)
        except Exception as exc:  # noqa: BLE001 - the source decides what it raises; the caller maps it
            if self._on_error is not None:
                raise self._on_error(exc, where) from None
            raise
        if not chunk and not allow_eof:
            raise TarStreamError(f"the stream is truncated inside {where}")
        return chunk

    def _pax_records(self, size: int, where: str) -> dict[str, str]:
        data = self.read_exact(size + len(padding_for(size)), where)[:size]
        records: dict[str, str] = {}
        position = 0
        while position < len(data):
            try:
                length_text, _ = data[position:position + 24].split(b" ", 1)
                length = int(length_text)
                if length <= len(length_text) + 1 or position + length > len(data):
                    raise ValueError("record length")
                record = data[position + len(length_text) + 1 : position + length - 1].decode("utf-8", "surrogateescape")
                key, value = record.split("=", 1)
            except ValueError:
                raise TarStreamError(f"damaged PAX header in {where}") from None
            records[key] = value
            position += length
        return records
