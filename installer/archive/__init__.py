"""The bundle archive format. This package alone writes and reads it.

A bundle is ``NAME-VERSION.tar.zst``: a tar (unpackable with ``tar --zstd -xf``)
whose first member ``bundle.json`` lists every other member with its sha256
and size, whose second member ``bundle.json.sig`` is the Ed25519 signature of
the first, and whose ``images/`` folder is a docker-archive that ``docker load``
accepts as extracted. See ``layout`` for the physical framing.
"""
from .header import BundleHeader, HeaderError, ImageRecord, MemberRecord
from .layout import (
    FORMAT,
    HEADER_NAME,
    IMAGES_DIR,
    IMAGES_MANIFEST,
    RELEASE_DIR,
    SIGNATURE_NAME,
    config_path,
    digest_hex,
    layer_path,
    release_path,
)
from .reader import ArchiveFormatError, ArchiveHandle, FramedArchiveReader, FramedMember, SignedHeader
from .verify import VerificationError, VerifiedBundle, open_signed, read_header, verify_archive
from .writer import ArchiveWriteError, ArchiveWriter

__all__ = [
    "ArchiveFormatError", "ArchiveHandle", "ArchiveWriteError", "ArchiveWriter", "BundleHeader",
    "FramedArchiveReader", "FramedMember",
    "FORMAT", "HEADER_NAME", "HeaderError", "IMAGES_DIR", "IMAGES_MANIFEST", "ImageRecord",
    "MemberRecord", "RELEASE_DIR", "SIGNATURE_NAME", "SignedHeader",
    "VerificationError", "VerifiedBundle", "config_path", "digest_hex", "open_signed",
    "layer_path", "read_header", "release_path", "verify_archive",
]
