"""Names, constants and zstd framing shared by the archive writer and reader.

The archive is a POSIX tar compressed with zstd. Every tar header is its own
zstd frame and every member's data is a run of its own frames (one per
``DATA_BLOCK`` bytes, compressed independently and in parallel), so a
member's compressed bytes stand alone: a reader can stop after the signed
header, check or step over a member's frames without decompressing them, and
a writer can reserve room for a header, stream data behind it and fill the
header in afterwards. Reserved room that is not used is a zstd *skippable
frame*, which every zstd decoder (``zstd -d``, ``tar --zstd``,
python-zstandard) passes over.
"""
from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import re
import struct

FORMAT = "airgap-bundle/1"
HEADER_NAME = "bundle.json"
SIGNATURE_NAME = "bundle.json.sig"
IMAGES_DIR = "images"
IMAGES_MANIFEST = f"{IMAGES_DIR}/manifest.json"
RELEASE_DIR = "release"

BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
SKIPPABLE_MAGIC = 0x184D2A50
SKIPPABLE_OVERHEAD = 8
MEMBER_HEADER_SLOT = 2048
CHUNK = 1 << 20
DATA_BLOCK = 8 << 20  # member data is compressed as independent frames of about this size

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def padding_for(size: int) -> bytes:
    """Zero bytes that round a member's data up to a whole tar block."""
    return b"\0" * (-size % BLOCK)


def skippable_frame(total_size: int) -> bytes:
    """A zstd skippable frame of exactly ``total_size`` bytes (at least 8)."""
    if total_size < SKIPPABLE_OVERHEAD:
        raise ValueError("a skippable frame needs at least 8 bytes")
    return struct.pack("<II", SKIPPABLE_MAGIC, total_size - SKIPPABLE_OVERHEAD) + b"\0" * (total_size - SKIPPABLE_OVERHEAD)


def digest_hex(digest: str) -> str:
    """``sha256:<hex>`` or ``<hex>`` → ``<hex>``; anything else is a ValueError."""
    value = digest.split(":", 1)[1] if digest.startswith("sha256:") else digest
    if not _HEX64.match(value):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return value


def layer_path(diff_id: str) -> str:
    """Archive path of the layer tar whose sha256 is ``diff_id``."""
    return f"{IMAGES_DIR}/{digest_hex(diff_id)}/layer.tar"


def config_path(image_id: str) -> str:
    """Archive path of the image config whose sha256 is ``image_id``."""
    return f"{IMAGES_DIR}/{digest_hex(image_id)}.json"


def release_path(relative: str) -> str:
    """Archive path of a release file (compose config, shipped files)."""
    return f"{RELEASE_DIR}/{check_member_name(relative)}"


def check_member_name(name: str) -> str:
    """Return ``name`` if it is a safe relative POSIX path, else raise ValueError.

    Safe: not empty, not absolute, no ``..`` or ``.`` components, no empty
    components, no backslashes or control characters.
    """
    if not name or name.startswith("/") or "\\" in name or any(ord(c) < 32 for c in name):
        raise ValueError(f"unsafe member name {name!r}")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"unsafe member name {name!r}")
    if posixpath.normpath(name) != name:
        raise ValueError(f"unsafe member name {name!r}")
    return name


def sha256_file(path) -> str:
    """sha256 (hex) of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def copy_range(source: int, target: int, offset: int, length: int, target_offset: int) -> None:
    """Copy ``length`` bytes at ``offset`` of file descriptor ``source`` to ``target_offset`` of ``target``.

    Inside the kernel where the file system allows it, else through a buffer.
    """
    copied = 0
    try:
        while copied < length:
            step = os.copy_file_range(source, target, length - copied, offset + copied, target_offset + copied)
            if step == 0:
                raise OSError(f"copying {length} bytes: the source ends after {copied}")
            copied += step
        return
    except OSError as exc:
        if copied or exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    while copied < length:
        chunk = os.pread(source, min(CHUNK, length - copied), offset + copied)
        if not chunk:
            raise OSError(f"copying {length} bytes: the source ends after {copied}")
        copied += os.pwrite(target, chunk, target_offset + copied)
