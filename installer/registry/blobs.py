"""How a layer goes on the wire: as it is, gzip (what every engine pulls), or the archive's own zstd frames.

A layer in the archive is the uncompressed layer tar (its sha256 is the
layer's diffID), stored as independent zstd frames of a few MB each.

- ``gzip``: each frame's content becomes one gzip member, compressed on every
  core at once; the members, one after another, are one valid gzip stream
  (RFC 1952), which Docker 20.10, containerd and Harbor read. The output is
  deterministic, so a blob pushed before is found again by its digest.
- ``none``: the layer tar itself; its digest is the diffID, known in advance.
- ``zstd``: the archive's frames as they are (no compression work; their
  digest is the signed ``frames_sha256``); engines from Docker 23 pull it.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import struct
import threading
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

try:  # Intel's ISA-L deflate (python-isal): the same gzip at several times zlib's speed
    from isal import isal_zlib
except ImportError:  # pragma: no cover - a dependency, but a host without it still pushes, slower
    isal_zlib = None

ENCODINGS = ("gzip", "none", "zstd")
DEFAULT_ENCODING = "gzip"
DEFAULT_GZIP_LEVEL = 1
ISAL_MAX_LEVEL = 3  # ISA-L's levels are 0-3; a higher --gzip-level takes its 3

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_GZIP_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = {"none": "application/vnd.oci.image.layer.v1.tar", "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
             "gzip": "application/vnd.oci.image.layer.v1.tar+gzip"}

_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, mtime 0, unknown OS: deterministic


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def large_buffers_off_the_heap() -> None:
    """Have glibc give every buffer of 1 MB or more a mapping of its own, returned to the system when freed.

    By default glibc raises that threshold after the first large free, and the
    8 MB blocks that uploads pass around then stay in per-thread heaps that
    never shrink: about 70 MB more peak memory on a push with four uploads.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def manifest_types(encoding: str) -> tuple[str, str, str]:
    """(manifest, config, layer) media types for an encoding: Docker's schema 2 for gzip, OCI for the others."""
    if encoding == "gzip":
        return DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_GZIP_LAYER
    return OCI_MANIFEST, OCI_CONFIG, OCI_LAYER[encoding]


def gzip_member(block: bytes, level: int) -> bytes:
    """One complete gzip member holding ``block`` (ISA-L's deflate where installed: about 5x zlib's speed)."""
    if isal_zlib is not None:
        compressor = isal_zlib.compressobj(min(level, ISAL_MAX_LEVEL), isal_zlib.DEFLATED, -15)
        crc = isal_zlib.crc32(block)
    else:
        compressor = zlib.compressobj(level, zlib.DEFLATED, -15, 9)
        crc = zlib.crc32(block)
    body = compressor.compress(block) + compressor.flush()
    return _GZIP_HEADER + body + struct.pack("<II", crc, len(block) & 0xFFFFFFFF)


def gzip_implementation(level: int) -> str:
    """Which deflate makes the gzip layers, and at what level (part of the key of remembered digests)."""
    return f"isal{min(level, ISAL_MAX_LEVEL)}" if isal_zlib is not None else f"zlib{level}"


class BlockCompressor:
    """A pool compressing blocks on every core, with a bound on blocks in flight across all streams (memory)."""

    def __init__(self, level: int = DEFAULT_GZIP_LEVEL, workers: int = 0):
        self.level = level
        self.workers = workers or max(1, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="gzip")
        self._slots = threading.BoundedSemaphore(self.workers + 1)

    def gzip(self, blocks: Iterator[bytes]) -> Iterator[bytes]:
        """The gzip stream of ``blocks``, in order, compressed in parallel (a few blocks ahead)."""
        pending: deque[Future] = deque()
        source = iter(blocks)
        try:
            while True:
                while pending and (pending[0].done() or len(pending) > self.workers):
                    yield self._take(pending)
                # Wait for a slot only holding none: a stream that holds slots frees its own first (its
                # blocks always finish), so streams sharing the pool never wait on one another in a circle.
                # The next block is read only once it has a slot: blocks waiting for one hold no memory.
                while not self._slots.acquire(blocking=not pending):
                    yield self._take(pending)
                block = next(source, None)
                if block is None:
                    self._slots.release()
                    break
                pending.append(self._pool.submit(gzip_member, block, self.level))
            while pending:
                yield self._take(pending)
        finally:
            while pending:
                pending.popleft().cancel() or None
                self._slots.release()

    def _take(self, pending: deque) -> bytes:
        future = pending.popleft()
        try:
            return future.result()
        finally:
            self._slots.release()

    def close(self) -> None:
        """Stop the workers."""
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class Hashed:
    """A stream passed through while its sha256 and length are taken."""

    chunks: Iterator[bytes]

    def __post_init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.done = False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.sha256.update(chunk)
            self.size += len(chunk)
            yield chunk
        self.done = True

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of what passed (only meaningful once the stream ended)."""
        return "sha256:" + self.sha256.hexdigest()
