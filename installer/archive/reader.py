"""Read a bundle archive member by member, frame by frame.

The reader parses the tar itself (ustar headers, PAX extended headers) so it
never reads past the member it is on: a decoding error is attributed to the
member whose bytes were being read, and only regular files with safe names are
accepted. It reads the signed header at the front without touching the rest,
and walks the archive frame by frame: it can hand over a member's compressed
frames as they are (to check them against the signed header) or step over
them, without decompressing; contents are still available, decompressed frame
by frame.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Optional, Union

from .frames import Frame, FrameError, FrameWalker, decompress_frame, decompress_raw, decompress_stream
from .layout import CHUNK, DATA_BLOCK, HEADER_NAME, SIGNATURE_NAME, check_member_name, padding_for
from .tarstream import TarEntry, TarStream, TarStreamError
from .parts import PartsError, PartsReader, check_parts, find_index


class ArchiveFormatError(Exception):
    """The archive is not a readable bundle; the message names where it broke."""


@dataclass
class SignedHeader:
    """The raw bytes of ``bundle.json`` and of its signature."""

    header: bytes
    signature: Optional[bytes]


def _next_file(tar: TarStream, previous: str, path: Path) -> Optional[TarEntry]:
    """The next tar entry, which must be a regular file with a safe name; None at the end."""
    try:
        entry = tar.next_entry(previous)
    except TarStreamError as exc:
        raise ArchiveFormatError(f"{path}: {str(exc).replace('the stream', 'the archive')}") from None
    if entry is None:
        return None
    if not entry.is_file:
        raise ArchiveFormatError(f"{path}: member {entry.name!r} is not a regular file; bundles hold only files")
    try:
        check_member_name(entry.name)
    except ValueError as exc:
        raise ArchiveFormatError(f"{path}: {exc}") from None
    return entry


class _HeldFile:
    """A read-only view of an open file descriptor with its own position (reads with pread)."""

    def __init__(self, fd: int):
        self._fd, self._at = fd, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = max(os.fstat(self._fd).st_size - self._at, 0)
        data = os.pread(self._fd, size, self._at)
        self._at += len(data)
        return data

    def seek(self, offset: int) -> None:
        self._at = offset

    def close(self) -> None:
        """Nothing to release: the descriptor belongs to the handle."""


class _Chained:
    """Several held files read as one (the parts of a split archive, in order)."""

    def __init__(self, files: list[_HeldFile]):
        self._files, self._index = files, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        while self._index < len(self._files) and (size < 0 or len(out) < size):
            chunk = self._files[self._index].read(-1 if size < 0 else size - len(out))
            if not chunk:
                self._index += 1
                continue
            out += chunk
        return bytes(out)

    def seek(self, offset: int) -> None:
        for index, file in enumerate(self._files):
            size = os.fstat(file._fd).st_size
            if offset < size or index == len(self._files) - 1:
                self._index = index
                file.seek(offset)
                for later in self._files[index + 1:]:
                    later.seek(0)
                return
            offset -= size

    def close(self) -> None:
        """Nothing to release: the descriptors belong to the handle."""


class _Window:
    """``length`` bytes of a held file from ``offset`` (what one member's frames occupy)."""

    def __init__(self, file: Union[_HeldFile, _Chained], offset: int, length: int):
        file.seek(offset)
        self._file, self._left = file, length

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        data = self._file.read(size) if size else b""
        self._left -= len(data)
        return data

    def close(self) -> None:
        """Nothing to release."""


@dataclass(frozen=True)
class MemberLocation:
    """Where a framed member's data frames lie in the held archive: byte range, and their compressed size."""

    offset: int
    length: int
    frames_size: int


class ArchiveHandle:
    """An archive held open: its file (or every part of a split one) is opened once, here.

    Every later read goes to those same open files, whatever then happens to the
    path: a file renamed over it, or replaced on removable media, is never read.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            index = find_index(self.path)
            files = [index.with_name(p.name) for p in check_parts(index, digests=False)] if index else [self.path]
        except PartsError as exc:
            raise ArchiveFormatError(str(exc)) from None
        self.split = index is not None
        self._fds: list[int] = []
        try:
            for file in files:
                self._fds.append(os.open(file, os.O_RDONLY | os.O_CLOEXEC))
        except IsADirectoryError:
            self.close()
            raise ArchiveFormatError(f"{self.path}: a folder, but it holds no split archive") from None
        except FileNotFoundError:
            self.close()
            raise ArchiveFormatError(f"{self.path}: no such file") from None
        except OSError as exc:
            self.close()
            raise ArchiveFormatError(f"{self.path}: cannot open ({exc.strerror})") from None

    def open(self) -> BinaryIO:
        """A fresh reader from the start of the held bytes (readers do not disturb one another)."""
        if not self._fds:
            raise ArchiveFormatError(f"{self.path}: the archive handle is closed")
        files = [_HeldFile(fd) for fd in self._fds]
        return (files[0] if len(files) == 1 else _Chained(files))  # type: ignore[return-value]

    def open_window(self, location: "MemberLocation") -> BinaryIO:
        """A reader of one member's frames (readers of different members run side by side)."""
        return _Window(self.open(), location.offset, location.length)  # type: ignore[arg-type, return-value]

    def size(self) -> int:
        """Compressed bytes held, all parts together."""
        return sum(os.fstat(fd).st_size for fd in self._fds)

    def close(self) -> None:
        """Release the files."""
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __enter__(self) -> "ArchiveHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


ArchiveSource = Union[Path, str, ArchiveHandle]


def _open_archive(path: ArchiveSource) -> BinaryIO:
    """The archive's compressed bytes: the held handle, the file, or its parts read as one."""
    if isinstance(path, ArchiveHandle):
        return path.open()
    path = Path(path)
    try:
        index = find_index(path)
        return PartsReader(index) if index else open(path, "rb")  # type: ignore[return-value]
    except PartsError as exc:
        raise ArchiveFormatError(str(exc)) from None
    except IsADirectoryError:
        raise ArchiveFormatError(f"{path}: a folder, but it holds no split archive") from None
    except FileNotFoundError:
        raise ArchiveFormatError(f"{path}: no such file") from None
    except OSError as exc:
        raise ArchiveFormatError(f"{path}: cannot open ({exc.strerror})") from None


WHOLE_FRAME_LIMIT = 4 * DATA_BLOCK  # frames up to this content size are decompressed in one call


class FramedMember:
    """A member met by :class:`FramedArchiveReader`: name, size, and its data compressed or not.

    ``framed`` says whether its data sits in frames of its own (as the
    writer puts it); only then can :meth:`compressed_chunks` hand them over.
    Read a member one way, to its end, or not at all (it is then stepped over).
    """

    def __init__(self, reader: "FramedArchiveReader", name: str, size: int, framed: bool):
        self.name = name
        self.size = size
        self.framed = framed
        self._reader = reader
        self.started = self.finished = False
        self.data_offset: Optional[int] = None  # where its frames begin in the compressed stream (framed only)
        self.data_end: Optional[int] = None

    def compressed_chunks(self, on_content: Optional[Callable[[int], None]] = None) -> Iterator[bytes]:
        """The raw bytes of the member's data frames; ``on_content(n)`` after each frame of n content bytes."""
        if not self.framed:
            raise ArchiveFormatError(f"{self._reader.path}: member {self.name!r}: its data is not in frames of its own")
        self.started = True
        for frame in self._reader._data_frames(self):
            yield from self._reader._framing_errors(frame.parts, self.name)
            if on_content:
                on_content(frame.content_size or 0)
        self.finished = True

    def chunks(self, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """The member's content, decompressed."""
        self.started = True
        if not self.framed:
            yield from self._reader._plain_chunks(chunk_size)
            self.finished = True
            return
        left = self.size
        for frame in self._reader._data_frames(self):
            small = frame.content_size is not None and frame.content_size <= WHOLE_FRAME_LIMIT
            pieces = [decompress_frame(frame, WHOLE_FRAME_LIMIT)] if small else decompress_stream(frame, chunk_size)
            for piece in self._reader._framing_errors(pieces, self.name):
                for start in range(0, min(len(piece), left), chunk_size):
                    yield piece[start:min(start + chunk_size, left)]
                left -= min(len(piece), left)
        self.finished = True

    def read_all(self, limit: int = 64 << 20) -> bytes:
        """Read the whole member into memory (only for small members)."""
        if self.size > limit:
            raise ArchiveFormatError(f"member {self.name!r} is {self.size} bytes, too large to read into memory")
        return b"".join(self.chunks())

    def skip(self) -> None:
        """Step over the member's data (without decompressing it when it is framed)."""
        if self.started:
            return
        for _ in self.compressed_chunks() if self.framed else self.chunks():
            pass


class FramedArchiveReader:
    """Iterate over a bundle's members frame by frame; see the module docstring.

    ``read_signed_header()`` reads only the first two members; ``members()``
    yields every member after them, and a member not read is stepped over
    when the next one is asked for. Open one reader per pass.
    """

    def __init__(self, source: ArchiveSource):
        self.path = source.path if isinstance(source, ArchiveHandle) else Path(source)
        self._file = _open_archive(source)
        self._walker = FrameWalker(self._file)
        self._frames = self._walker.frames()
        self._plain = b""
        self._plain_at = 0
        self._streaming: Optional[Iterator[bytes]] = None
        self._tar = TarStream(self._read_plain, on_error=self._decode_error)
        self._signed: Optional[SignedHeader] = None
        self._after_header: Optional[FramedMember] = None  # the first member of an unsigned archive

    def __enter__(self) -> "FramedArchiveReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the file."""
        self._file.close()

    def read_signed_header(self) -> SignedHeader:
        """Return ``bundle.json`` and its signature: the archive's first two members.

        ``signature`` is None when the archive is unsigned.
        """
        if self._signed is None:
            first = self._next_member("the start of the archive")
            if first is None or first.name != HEADER_NAME:
                raise ArchiveFormatError(
                    f"{self.path}: the first member is {first.name if first else 'missing'!r}, expected {HEADER_NAME!r}"
                    " (not a bundle made by airgap-bundle, or damaged)"
                )
            header = first.read_all(limit=16 << 20)
            self._done_with(first)
            second = self._next_member(HEADER_NAME)
            if second is not None and second.name == SIGNATURE_NAME:
                self._signed = SignedHeader(header=header, signature=second.read_all(limit=4096))
                self._done_with(second)
            else:
                self._after_header = second
                self._signed = SignedHeader(header=header, signature=None)
        return self._signed

    def members(self) -> Iterator[FramedMember]:
        """Every member after ``bundle.json`` and its signature, in archive order."""
        signed = self.read_signed_header()
        previous = SIGNATURE_NAME if signed.signature is not None else HEADER_NAME
        member, self._after_header = self._after_header, None
        while True:
            member = member or self._next_member(previous)
            if member is None:
                return
            yield member
            self._done_with(member)
            previous, member = member.name, None

    @property
    def bytes_read(self) -> int:
        """Uncompressed tar bytes read so far."""
        return self._tar.bytes_read

    # -- internals ------------------------------------------------------------
    def _next_member(self, previous: str) -> Optional[FramedMember]:
        entry = _next_file(self._tar, previous, self.path)
        if entry is None:
            return None
        member = FramedMember(self, entry.name, entry.size, framed=self._at_frame_end())
        if member.framed:
            member.data_offset = self._walker.offset
        return member

    def _done_with(self, member: FramedMember) -> None:
        """Step over what is left of ``member`` and go on after it."""
        member.skip()
        if member.started and not member.finished:
            raise RuntimeError(f"member {member.name!r} was read only in part; read members to their end or not at all")
        if member.framed:
            member.data_end = self._walker.offset
            self._tar.forget_current()

    def _at_frame_end(self) -> bool:
        return self._plain_at >= len(self._plain) and self._streaming is None

    def _read_plain(self, size: int) -> bytes:
        while self._plain_at >= len(self._plain):
            if self._streaming is not None:
                self._plain, self._plain_at = next(self._streaming, b""), 0
                if not self._plain:
                    self._streaming = None
                continue
            frame = next(self._frames, None)
            if frame is None:
                return b""
            if frame.skippable:
                frame.skip()
            elif frame.content_size is not None and frame.content_size <= WHOLE_FRAME_LIMIT:
                self._plain, self._plain_at = decompress_frame(frame, WHOLE_FRAME_LIMIT), 0
            else:
                self._streaming = decompress_stream(frame)
        if self._plain_at == 0 and len(self._plain) <= size:
            data, self._plain = self._plain, b""
            return data
        data = self._plain[self._plain_at:self._plain_at + size]
        self._plain_at += len(data)
        return data

    def _plain_chunks(self, chunk_size: int) -> Iterator[bytes]:
        try:
            yield from self._tar.chunks(chunk_size)
        except TarStreamError as exc:
            raise ArchiveFormatError(f"{self.path}: {str(exc).replace('the stream', 'the archive')}") from None

    def _data_frames(self, member: FramedMember) -> Iterator[Frame]:
        """The frames holding the member's data and tar padding (each to be read before the next is asked for)."""
        needed = member.size + len(padding_for(member.size))
        got = 0
        while got < needed:
            try:
                frame: Optional[Frame] = next(self._frames, None)
            except FrameError as exc:
                raise ArchiveFormatError(f"{self.path}: {exc}, in {member.name!r}") from None
            if frame is None:
                raise ArchiveFormatError(f"{self.path}: the archive is truncated inside {member.name!r}")
            if frame.skippable:
                for _ in self._framing_errors(frame.parts, member.name):
                    pass
                continue
            if frame.content_size is None or got + frame.content_size > needed:
                raise ArchiveFormatError(
                    f"{self.path}: member {member.name!r}: its compressed frames do not end where its data ends "
                    "(altered, or not written by airgap-bundle)")
            got += frame.content_size
            yield frame

    def _framing_errors(self, items: Iterable, where: str) -> Iterator:
        try:
            yield from items
        except FrameError as exc:
            raise ArchiveFormatError(f"{self.path}: {exc}, in {where!r}") from None

    def _decode_error(self, exc: Exception, where: str) -> Exception:
        if isinstance(exc, FrameError):
            return ArchiveFormatError(f"{self.path}: {exc}, in {where}")
        return exc


def member_frames(handle: ArchiveHandle, location: MemberLocation) -> Iterator[Frame]:
    """The data frames of one framed member, read from its window of the held archive (skippable frames left out).

    Each frame's ``parts`` must be read before the next frame is asked for.
    """
    walker = FrameWalker(handle.open_window(location))
    try:
        for frame in walker.frames():
            if frame.skippable:
                frame.skip()
                continue
            yield frame
    except FrameError as exc:
        raise ArchiveFormatError(f"{handle.path}: {exc}") from None


def member_blocks(handle: ArchiveHandle, location: MemberLocation, size: int,
                  frames_sha256: Optional[str] = None) -> Iterator[bytes]:
    """One framed member's content, decompressed frame by frame (blocks of up to ``DATA_BLOCK`` bytes), tar padding cut.

    With ``frames_sha256`` the frames read are hashed as they go and a
    mismatch raises ArchiveFormatError after the last block (a consumer
    commits nothing before the stream ends): the bytes read now are the bytes
    verified, for a third of the cost of hashing the content again.
    """
    left = size
    digest = hashlib.sha256() if frames_sha256 else None
    for frame in member_frames(handle, location):
        try:
            raw = frame.read(WHOLE_FRAME_LIMIT + (1 << 16))
            if digest is not None:
                digest.update(raw)
            block = decompress_raw(raw, WHOLE_FRAME_LIMIT)
        except FrameError as exc:
            raise ArchiveFormatError(f"{handle.path}: {exc}") from None
        if left <= 0:
            continue
        yield block[:left] if len(block) > left else block
        left -= min(len(block), left)
    if left:
        raise ArchiveFormatError(f"{handle.path}: a member's frames end {left} bytes short of its size")
    if digest is not None and digest.hexdigest() != frames_sha256:
        raise ArchiveFormatError(f"{handle.path}: a member's frames changed since they were verified")
