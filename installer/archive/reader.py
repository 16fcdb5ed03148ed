"""Read a bundle archive as a stream, member by member, with exact reads.

The reader parses the tar itself (ustar headers, PAX extended headers) so it
never reads past the member it is on: a decoding error is attributed to the
member whose bytes were being read, and only regular files with safe names
are accepted.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

import zstandard

from .layout import CHUNK, HEADER_NAME, SIGNATURE_NAME, check_member_name
from .tarstream import TarStream, TarStreamError
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

    def __init__(self, tar: TarStream, name: str, size: int, path: Path):
        self.name = name
        self.size = size
        self._tar = tar
        self._path = path

    def chunks(self, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """Yield the member's bytes in chunks of at most ``chunk_size``."""
        try:
            yield from self._tar.chunks(chunk_size)
        except TarStreamError as exc:
            raise ArchiveFormatError(f"{self._path}: {str(exc).replace('the stream', 'the archive')}") from None

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
        self._tar = TarStream(self._stream.read, on_error=self._decode_error)
        self._header: Optional[SignedHeader] = None
        self._pending: Optional[MemberStream] = None

    def __enter__(self) -> "ArchiveReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _decode_error(self, exc: Exception, where: str) -> Exception:
        if isinstance(exc, zstandard.ZstdError):
            return ArchiveFormatError(f"{self.path}: corrupt compressed data in {where} (zstd: {exc})")
        return exc

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
        try:
            entry = self._tar.next_entry(previous)
        except TarStreamError as exc:
            raise ArchiveFormatError(f"{self.path}: {str(exc).replace('the stream', 'the archive')}") from None
        if entry is None:
            return None
        if not entry.is_file:
            raise ArchiveFormatError(f"{self.path}: member {entry.name!r} is not a regular file; bundles hold only files")
        try:
            check_member_name(entry.name)
        except ValueError as exc:
            raise ArchiveFormatError(f"{self.path}: {exc}") from None
        return MemberStream(self._tar, entry.name, entry.size, self.path)

    @property
    def bytes_read(self) -> int:
        """Uncompressed bytes read so far."""
        return self._tar.bytes_read
