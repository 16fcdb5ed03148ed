"""Walk a zstd stream frame by frame without decompressing it.

Where each frame ends is written in the frame and block headers (RFC 8878),
so a reader can step over compressed data, hash it as it is, or decompress
only the frames it needs. The archive's member data is framed on its own
(see ``layout``), which is what lets a verifier check a member's compressed
bytes against the signed header instead of decompressing them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Iterator, Optional

import zstandard

ZSTD_MAGIC = 0xFD2FB528
SKIPPABLE_MAGIC_MASK, SKIPPABLE_MAGIC_BASE = 0xFFFFFFF0, 0x184D2A50
_READ_AHEAD = 1 << 20


class FrameError(Exception):
    """The compressed stream is damaged or cut short; the message says how."""


@dataclass
class Frame:
    """One frame: skippable or not, the content size its header states (None when unstated), and its bytes.

    ``parts`` yields the frame's raw bytes in pieces and must be read to the
    end before the next frame is asked for.
    """

    skippable: bool
    content_size: Optional[int]
    parts: Iterator[bytes]

    def read(self, limit: int) -> bytes:
        """All of the frame's raw bytes, refusing a frame larger than ``limit``."""
        collected, total = [], 0
        for part in self.parts:
            total += len(part)
            if total > limit:
                raise FrameError(f"corrupt compressed data: a frame larger than {limit} bytes where a small one belongs")
            collected.append(part)
        return b"".join(collected)

    def skip(self) -> None:
        """Step over the rest of the frame."""
        for _ in self.parts:
            pass


class FrameWalker:
    """The frames of the zstd stream read from ``source``, one after the other."""

    def __init__(self, source: BinaryIO):
        self._source = source
        self._buffer = b""
        self._position = 0
        self._consumed = 0  # bytes read from the source so far

    @property
    def offset(self) -> int:
        """Where the next frame (or the rest of the current one) starts, counted from the source's start."""
        return self._consumed - (len(self._buffer) - self._position)

    def frames(self) -> Iterator[Frame]:
        """Every frame to the end of the stream."""
        while True:
            magic_bytes = self._read_exact(4, allow_end=True)
            if not magic_bytes:
                return
            magic = int.from_bytes(magic_bytes, "little")
            if magic & SKIPPABLE_MAGIC_MASK == SKIPPABLE_MAGIC_BASE:
                length_bytes = self._read_exact(4)
                yield Frame(True, None, self._skippable_parts(magic_bytes + length_bytes, int.from_bytes(length_bytes, "little")))
            elif magic == ZSTD_MAGIC:
                header, content_size, has_checksum = self._frame_header(magic_bytes)
                yield Frame(False, content_size, self._frame_parts(header, has_checksum))
            else:
                raise FrameError("corrupt compressed data: not a zstd frame where one should begin")

    def _frame_header(self, magic_bytes: bytes) -> tuple[bytes, Optional[int], bool]:
        descriptor = self._read_exact(1)[0]
        if descriptor & 0x08:
            raise FrameError("corrupt compressed data: a zstd frame header has its reserved bit set")
        single_segment = bool(descriptor & 0x20)
        window_size = 0 if single_segment else 1
        dictionary_size = (0, 1, 2, 4)[descriptor & 0x03]
        content_field = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
        rest = self._read_exact(window_size + dictionary_size + content_field)
        content_size = None
        if content_field:
            content_size = int.from_bytes(rest[window_size + dictionary_size:], "little") + (256 if content_field == 2 else 0)
        return magic_bytes + bytes([descriptor]) + rest, content_size, bool(descriptor & 0x04)

    def _frame_parts(self, header: bytes, has_checksum: bool) -> Iterator[bytes]:
        yield header
        while True:
            head = self._read_exact(3)
            value = int.from_bytes(head, "little")
            kind, size = (value >> 1) & 0x03, value >> 3
            if kind == 3:
                raise FrameError("corrupt compressed data: a zstd block of the reserved type")
            yield head
            yield self._read_exact(1 if kind == 1 else size)
            if value & 0x01:
                break
        if has_checksum:
            yield self._read_exact(4)

    def _skippable_parts(self, header: bytes, length: int) -> Iterator[bytes]:
        yield header
        while length:
            step = min(length, _READ_AHEAD)
            yield self._read_exact(step)
            length -= step

    def _read_exact(self, size: int, allow_end: bool = False) -> bytes:
        if self._position + size <= len(self._buffer):
            data = self._buffer[self._position:self._position + size]
            self._position += size
            return data
        parts = [self._buffer[self._position:]]
        have = len(parts[0])
        while have < size:
            chunk = self._source.read(max(size - have, _READ_AHEAD))
            self._consumed += len(chunk)
            if not chunk:
                if allow_end and have == 0:
                    self._buffer, self._position = b"", 0
                    return b""
                raise FrameError("the archive is truncated: it ends inside a compressed frame")
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        self._buffer, self._position = data, size
        return data[:size]


def decompress_frame(frame: Frame, limit: int) -> bytes:
    """The content of a frame of at most ``limit`` bytes (compressed and decompressed)."""
    if frame.content_size is not None and frame.content_size > limit:
        raise FrameError(f"corrupt compressed data: a frame of {frame.content_size} bytes where at most {limit} fit")
    return decompress_raw(frame.read(limit + (1 << 16)), limit)


def decompress_raw(raw: bytes, limit: int) -> bytes:
    """The content of one whole frame's raw bytes, at most ``limit`` bytes."""
    try:
        return zstandard.ZstdDecompressor().decompress(raw, max_output_size=limit)
    except zstandard.ZstdError as exc:
        raise FrameError(f"corrupt compressed data (zstd: {exc})") from None


def decompress_stream(frame: Frame, piece: int = 1 << 20) -> Iterator[bytes]:
    """The content of a frame of any size, in pieces, decompressed as its bytes arrive."""
    decompressor = zstandard.ZstdDecompressor().decompressobj(write_size=piece)
    try:
        for part in frame.parts:
            output = decompressor.decompress(part)
            if output:
                yield output
    except zstandard.ZstdError as exc:
        raise FrameError(f"corrupt compressed data (zstd: {exc})") from None
    if not decompressor.eof:
        raise FrameError("corrupt compressed data: a zstd frame ends early")
