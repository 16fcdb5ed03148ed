"""Write a bundle archive in one streaming pass.

The writer needs a seekable output file: it reserves room at the front for
the signed header (which lists every member's sha256 and size, known only at
the end) and, for members whose name depends on their content, room for the
tar header in front of their data. Everything is written to ``PATH.partial``
and renamed into place by :meth:`ArchiveWriter.finish`; on any failure the
partial file is removed, so a failed build never leaves a half archive behind.

Member data is cut into blocks of about ``DATA_BLOCK`` bytes, each compressed
as its own zstd frame on a pool of threads and written in order as the
frames come back. The caller is never held up at a member's end: the next
member's blocks go to the pool while the last ones of the previous member are
still being compressed, so every core stays busy across member boundaries.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import zstandard

from .header import MemberRecord
from .layout import (
    BLOCK,
    CHUNK,
    DATA_BLOCK,
    END_OF_ARCHIVE,
    HEADER_NAME,
    MEMBER_HEADER_SLOT,
    SIGNATURE_NAME,
    SKIPPABLE_OVERHEAD,
    check_member_name,
    copy_range,
    padding_for,
    skippable_frame,
)

MAX_THREADS = 8
FLUSH_EVERY = 256 << 20  # bytes written between background flushes to disk


class ArchiveWriteError(Exception):
    """The archive could not be written as asked."""


@dataclass(frozen=True)
class DataFrame:
    """Where a member's compressed data lies (file, offset, length), and the sha256 of those compressed bytes."""

    path: Path
    offset: int
    length: int
    sha256: str


DataWritten = Callable[[MemberRecord, DataFrame], None]


@dataclass
class PendingMember:
    """A member already streamed whose name and sha256 are given later (:meth:`ArchiveWriter.name_later`)."""

    label: str
    size: int
    index: int
    slot: list[int]
    frame: Optional[DataFrame] = None


def tar_header(name: str, size: int, mtime: int = 0) -> bytes:
    """The tar header block(s) of a regular file ``name`` of ``size`` bytes."""
    info = tarfile.TarInfo(check_member_name(name))
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


class _OrderedOutput:
    """Writes queued pieces to the file in queue order, each as soon as it and all before it are ready.

    A piece is bytes, a future of bytes (a block being compressed), or a
    callable run in its turn (to mark an offset, patch a slot, report a
    member). Whoever queues blocks only while more than ``limit``
    compressions are under way, which bounds memory.
    """

    def __init__(self, file, limit: int):
        self.file = file
        self.limit = limit
        self._queue: deque[Union[bytes, Future, Callable[[], None]]] = deque()
        self._in_flight = 0
        self.hashing: Optional["hashlib._Hash"] = None  # while set, written bytes are also hashed into it

    def put(self, piece: Union[bytes, Future, Callable[[], None]]) -> None:
        """Queue a piece and write whatever is ready."""
        self._queue.append(piece)
        if isinstance(piece, Future):
            self._in_flight += 1
        self._write_ready(wait=False)

    def drain(self) -> None:
        """Write everything queued, waiting for compressions still under way."""
        self._write_ready(wait=True)

    def cancel(self) -> None:
        """Drop everything queued (after a failure)."""
        for piece in self._queue:
            if isinstance(piece, Future):
                piece.cancel()
        self._queue.clear()
        self._in_flight = 0

    def _write_ready(self, wait: bool) -> None:
        while self._queue:
            head = self._queue[0]
            if isinstance(head, Future):
                if not head.done() and not wait and self._in_flight <= self.limit:
                    return
                data = head.result()
                self._in_flight -= 1
                self._write(data)
            elif isinstance(head, bytes):
                self._write(head)
            else:
                head()
            self._queue.popleft()

    def _write(self, data: bytes) -> None:
        if self.hashing is not None:
            self.hashing.update(data)
        view = memoryview(data)
        while view:
            view = view[self.file.write(view):]


class ArchiveWriter:
    """Stream members into ``PATH`` (a ``.tar.zst``), then seal it with a signed header.

    Use as a context manager; call :meth:`finish` with the header bytes and
    their signature once every member is added.
    """

    def __init__(
        self, path: Path, *, header_reserve: int, level: int = 3, threads: int = -1, mtime: int = 0,
        on_data_written: Optional[DataWritten] = None,
    ):
        """``threads``: compression threads (-1: one per core, at most 8).

        ``on_data_written(record, frame)`` is called for each streamed member
        once its compressed data is in the partial file (e.g. to copy it into a
        cache).
        """
        self.path = Path(path)
        self.partial_path = self.path.with_name(self.path.name + ".partial")
        self.header_reserve = header_reserve
        self.mtime = mtime
        self.level = level
        self._members: list[MemberRecord] = []
        self._names: set[str] = set()
        self._on_data_written = on_data_written
        self._small_compressor = zstandard.ZstdCompressor(level=level, write_checksum=False)
        workers = min(os.cpu_count() or 1, MAX_THREADS) if threads < 1 else threads
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zstd")
        self._compressors = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.partial_path, "wb", buffering=0)
        self._out = _OrderedOutput(self._file, limit=workers + 2)
        self._out.put(skippable_frame(header_reserve))
        self._flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flush")
        self._flushing: Optional[Future] = None
        self._flushed_to = 0
        self._finished = False

    @property
    def members(self) -> list[MemberRecord]:
        """Every member added so far, with the sha256 of its compressed data (waits for it to be written)."""
        self._out.drain()
        return list(self._members)

    # -- context management -------------------------------------------------
    def __enter__(self) -> "ArchiveWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._finished:
            self.abort()

    def abort(self) -> None:
        """Stop compressing, close and delete the partial file."""
        self._out.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._flusher.shutdown(wait=True)
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
        self._out.put(self._small_compressor.compress(tar_header(name, size, self.mtime)))
        data_start = self._start_data()
        sha256 = self._queue_data(size, chunks, name)
        record = self._record(name, sha256, size)
        self._end_data(data_start)
        return record

    def add_precompressed(self, name: str, size: int, sha256: str, frames: Path, frames_sha256: str) -> MemberRecord:
        """Add a member whose data frames were compressed earlier (a cache entry), copying them as they are.

        The caller vouches that ``frames`` (whose own sha256 is ``frames_sha256``)
        decompress to ``size`` bytes (plus tar padding) with this ``sha256``;
        readers check it like any member.
        """
        self._claim(name)
        self._out.put(self._small_compressor.compress(tar_header(name, size, self.mtime)))
        self._out.put(lambda: self._copy_in(frames))
        return self._record(name, sha256, size, frames_sha256)

    def add_frames(self, name: str, size: int, sha256: str, frames: Iterable[bytes], frames_sha256: str) -> MemberRecord:
        """Add a member from another archive's data frames, copied as they are (their sha256 is checked here)."""
        self._claim(name)
        self._out.put(self._small_compressor.compress(tar_header(name, size, self.mtime)))
        digest = hashlib.sha256()
        for chunk in frames:
            digest.update(chunk)
            self._out.put(chunk)
        if digest.hexdigest() != frames_sha256:
            raise ArchiveWriteError(f"{name}: the frames copied do not match their recorded sha256")
        return self._record(name, sha256, size, frames_sha256)

    def add_stream_named_by_digest(
        self, size: int, chunks: Iterable[bytes], name_for: Callable[[str], Optional[str]], label: str
    ) -> Optional[MemberRecord]:
        """Add a member whose name is chosen from its sha256 after it has streamed.

        ``name_for(sha256_hex)`` returns the member's name, or None to drop the
        member (the file is cut back to where it began). ``label`` names the
        source in error messages.
        """
        slot = self._reserve_header_slot()
        data_start = self._start_data()
        sha256 = self._queue_data(size, chunks, label)
        name = name_for(sha256)
        if name is None:
            self._out.put(lambda: self._cut_back(slot[0]))
            return None
        self._claim(name)
        header = self._header_for_slot(name, size)
        record = self._record(name, sha256, size)
        self._out.put(lambda: os.pwrite(self._file.fileno(), header, slot[0]))
        self._end_data(data_start)
        return record

    def add_stream_named_later(self, size: int, chunks: Iterable[bytes], label: str) -> PendingMember:
        """Add a member whose name and sha256 the caller learns only after it has streamed.

        Its data is not hashed here: the caller names it with :meth:`name_later`
        and vouches for the sha256 it gives (an engine export that checked
        each layer against its diffID as it produced it). Readers check the
        member's frames like any other. ``label`` names the source in errors.
        """
        slot = self._reserve_header_slot()
        data_start = self._start_data()
        self._queue_data(size, chunks, label, hash_content=False)
        pending = PendingMember(label=label, size=size, index=len(self._members), slot=slot)
        self._record(f"(not named yet: {label})", "", size)
        self._end_data(data_start, pending)
        return pending

    def name_later(self, pending: PendingMember, name: str, sha256: str) -> MemberRecord:
        """Give a member added by :meth:`add_stream_named_later` its name and the sha256 of its content."""
        if self._members[pending.index].sha256:
            raise ArchiveWriteError(f"{pending.label} was named twice")
        self._claim(name)
        header = self._header_for_slot(name, pending.size)
        self._members[pending.index] = replace(self._members[pending.index], path=name, sha256=sha256)

        def write_name() -> None:  # runs once the member's data is in the file (and its frames are reported)
            os.pwrite(self._file.fileno(), header, pending.slot[0])
            if self._on_data_written is not None and pending.frame is not None:
                self._on_data_written(self._members[pending.index], pending.frame)
        self._out.put(write_name)
        return self._members[pending.index]

    # -- sealing --------------------------------------------------------------
    def finish(self, header: bytes, signature: bytes) -> Path:
        """Write the signed header into its reserved room and move the archive into place."""
        unnamed = [m.path for m in self._members if not m.sha256]
        if unnamed:
            raise ArchiveWriteError(f"{len(unnamed)} member(s) were streamed but never named: {unnamed[0]}")
        self._out.put(self._small_compressor.compress(END_OF_ARCHIVE))
        self._out.drain()
        self._pool.shutdown(wait=True)
        front = self._small_compressor.compress(
            tar_header(HEADER_NAME, len(header), self.mtime) + header + padding_for(len(header))
            + tar_header(SIGNATURE_NAME, len(signature), self.mtime) + signature + padding_for(len(signature))
        )
        room = self.header_reserve - len(front)
        if room < SKIPPABLE_OVERHEAD and room != 0:
            raise ArchiveWriteError(
                f"the signed header needs {len(front)} bytes but only {self.header_reserve} were reserved"
            )
        os.pwrite(self._file.fileno(), front + (skippable_frame(room) if room else b""), 0)
        self._flusher.shutdown(wait=True)
        if self._flushing is not None:
            self._flushing.result()  # a write error found by a background flush
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

    def _record(self, name: str, sha256: str, size: int, frames_sha256: Optional[str] = None) -> MemberRecord:
        record = MemberRecord(path=name, sha256=sha256, size=size, frames_sha256=frames_sha256)
        self._members.append(record)
        return record

    def _compress_block(self, data: bytes) -> bytes:
        compressor = getattr(self._compressors, "zstd", None)
        if compressor is None:
            compressor = self._compressors.zstd = zstandard.ZstdCompressor(level=self.level, write_checksum=False)
        return compressor.compress(data)

    def _queue_data(self, size: int, chunks: Iterable[bytes], label: str, hash_content: bool = True) -> str:
        """Queue ``size`` bytes plus tar padding for compression, block by block; return their sha256 (or "")."""
        digest = hashlib.sha256() if hash_content else None
        block: list[bytes] = []
        in_block = written = 0
        for chunk in chunks:
            if not chunk:
                continue
            written += len(chunk)
            if written > size:
                raise ArchiveWriteError(f"{label}: more data than the {size} bytes announced")
            if digest is not None:
                digest.update(chunk)
            block.append(chunk)
            in_block += len(chunk)
            if in_block >= DATA_BLOCK:
                self._out.put(self._pool.submit(self._compress_block, b"".join(block)))
                block, in_block = [], 0
        if written != size:
            raise ArchiveWriteError(f"{label}: got {written} bytes, {size} were announced")
        block.append(padding_for(size))
        if in_block or len(block[-1]):
            self._out.put(self._pool.submit(self._compress_block, b"".join(block)))
        return digest.hexdigest() if digest is not None else ""

    def _reserve_header_slot(self) -> list[int]:
        """Queue room for a tar header written once the member's name is known; the list gets the room's offset."""
        slot: list[int] = []
        self._out.put(lambda: slot.append(self._file.tell()))
        self._out.put(skippable_frame(MEMBER_HEADER_SLOT))
        return slot

    def _header_for_slot(self, name: str, size: int) -> bytes:
        """The compressed tar header of ``name``, padded with a skippable frame to fill its reserved room exactly."""
        header_frame = self._small_compressor.compress(tar_header(name, size, self.mtime))
        if len(header_frame) > MEMBER_HEADER_SLOT - SKIPPABLE_OVERHEAD:
            raise ArchiveWriteError(f"tar header of {name!r} does not fit its reserved slot")
        return header_frame + skippable_frame(MEMBER_HEADER_SLOT - len(header_frame))

    def _start_data(self) -> list[int]:
        """Queue a mark of where the next member's data begins (filled in when reached); its bytes are hashed from there."""
        start: list[int] = []

        def mark() -> None:
            start.append(self._file.tell())
            self._out.hashing = hashlib.sha256()
        self._out.put(mark)
        return start

    def _end_data(self, start: list[int], pending: Optional[PendingMember] = None) -> None:
        """Queue the report of the member last recorded: its frames' sha256, then the data-written hook."""
        index = len(self._members) - 1

        def report() -> None:
            hashing, self._out.hashing = self._out.hashing, None
            written = self._members[index] = replace(self._members[index], frames_sha256=hashing.hexdigest())
            frame = DataFrame(self.partial_path, start[0], self._file.tell() - start[0], written.frames_sha256)
            if pending is not None:
                pending.frame = frame  # reported once it is named
            elif self._on_data_written is not None:
                self._on_data_written(written, frame)
            self._flush_in_background()
        self._out.put(report)

    def _flush_in_background(self) -> None:
        """Every FLUSH_EVERY bytes, start writing what is done to disk, so the fsync in finish() has little left."""
        position = self._file.tell()
        if position - self._flushed_to >= FLUSH_EVERY and (self._flushing is None or self._flushing.done()):
            if self._flushing is not None:
                self._flushing.result()
            self._flushing = self._flusher.submit(os.fdatasync, self._file.fileno())
            self._flushed_to = position

    def _cut_back(self, offset: int) -> None:
        self._out.hashing = None
        self._file.seek(offset)
        self._file.truncate()

    def _copy_in(self, frame: Path) -> None:
        target = self._file.tell()
        length = os.stat(frame).st_size
        with open(frame, "rb") as source:
            copy_range(source.fileno(), self._file.fileno(), 0, length, target)
        self._file.seek(target + length)
        self._flush_in_background()


__all__ = ["ArchiveWriter", "ArchiveWriteError", "DataFrame", "PendingMember", "tar_header", "BLOCK"]
