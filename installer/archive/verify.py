"""Check a bundle: the header's signature first, then every member's size and sha256."""
from __future__ import annotations

import hashlib
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..signing import find_signer, fingerprint
from .header import BundleHeader, HeaderError, MemberRecord
from .layout import IMAGES_MANIFEST, config_path, layer_path
from .parts import PartsError, check_parts, find_index
from .reader import ArchiveFormatError, FramedArchiveReader, FramedMember, SignedHeader

ProgressCallback = Callable[[int], None]


class VerificationError(Exception):
    """The bundle failed a check; ``problems`` lists each failure found."""

    def __init__(self, message: str, problems: Optional[list[str]] = None):
        super().__init__(message)
        self.problems = problems or [message]


@dataclass
class VerifiedBundle:
    """A bundle whose signature (unless waived) and digests all checked out."""

    path: Path
    header: BundleHeader
    signer: Optional[str]
    signature_checked: bool
    warnings: list[str] = field(default_factory=list)


def _read_signed_header(path: Path) -> SignedHeader:
    """``bundle.json`` and its signature as raw bytes; VerificationError if the archive cannot be read."""
    try:
        with FramedArchiveReader(path) as reader:
            return reader.read_signed_header()
    except ArchiveFormatError as exc:
        raise VerificationError(str(exc)) from None


def read_header(path: Path) -> tuple[BundleHeader, bytes, Optional[bytes]]:
    """Read the header without checking it: (parsed header, raw bytes, signature)."""
    signed = _read_signed_header(path)
    try:
        return BundleHeader.from_bytes(signed.header), signed.header, signed.signature
    except HeaderError as exc:
        raise VerificationError(f"{path}: {exc}") from None


def check_signature(
    path: Path, keys: Sequence[Ed25519PublicKey], *, allow_untrusted: bool = False
) -> tuple[BundleHeader, Optional[str]]:
    """Check the header's signature against ``keys``; return (header, signer fingerprint).

    With ``allow_untrusted`` an unsigned or unknown-signer bundle is accepted
    (the caller must say so loudly); the signer is then None.
    """
    signed = _read_signed_header(path)
    if signed.signature is None:
        if not allow_untrusted:
            raise VerificationError(
                f"{path}: the bundle is unsigned (no bundle.json.sig after bundle.json); refusing it"
            )
        signer = None
    else:
        signer = find_signer(signed.header, signed.signature, keys)
    if signer is None and signed.signature is not None and not allow_untrusted:
        if not keys:
            raise VerificationError(f"{path}: no trusted public key was given; pass --pubkey FILE")
        claimed = _claimed_signer(signed.header)
        tried = ", ".join(fingerprint(k) for k in keys)
        raise VerificationError(
            f"{path}: bad signature: bundle.json is not signed by any trusted key "
            f"(trusted: {tried}; the header names {claimed}). The bundle was altered, or signed with another key."
        )
    try:
        header = BundleHeader.from_bytes(signed.header)
    except HeaderError as exc:
        raise VerificationError(f"{path}: {exc}") from None
    return header, fingerprint(signer) if signer else None


def verify_archive(
    path: Path,
    keys: Sequence[Ed25519PublicKey],
    *,
    allow_untrusted: bool = False,
    progress: Optional[ProgressCallback] = None,
) -> VerifiedBundle:
    """Check the signature, then stream every member and check its size and sha256.

    Raises VerificationError naming every member that failed; nothing is
    written anywhere.
    """
    path = Path(path)
    try:
        index = find_index(path)
        if index is not None:
            check_parts(index, digests=True)
    except PartsError as exc:
        raise VerificationError(f"{path}: {exc}") from None
    header, signer = check_signature(path, keys, allow_untrusted=allow_untrusted)
    problems = _structure_problems(header)
    expected = {member.path: member for member in header.members}
    seen: set[str] = set()
    try:
        with FramedArchiveReader(path) as reader:
            for member in reader.members():
                record = expected.get(member.name)
                if record is None:
                    problems.append(f"member {member.name!r} is not listed in the signed header")
                    continue
                if member.name in seen:
                    problems.append(f"member {member.name!r} appears twice")
                seen.add(member.name)
                if member.size != record.size:
                    problems.append(f"member {member.name!r}: size {member.size}, the signed header says {record.size}")
                    continue
                if not _digest_matches(member, record, progress):
                    problems.append(f"member {member.name!r}: sha256 mismatch (content altered or damaged)")
    except ArchiveFormatError as exc:
        problems.append(str(exc))
    missing = [name for name in expected if name not in seen]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        problems.append(f"{len(missing)} member(s) listed in the signed header are missing: {shown}")
    if problems:
        raise VerificationError(f"{path}: verification failed: " + "; ".join(problems), problems)
    warnings = [] if signer else ["signature NOT checked: the bundle was accepted without a trusted signature"]
    return VerifiedBundle(path=path, header=header, signer=signer, signature_checked=signer is not None, warnings=warnings)


def _digest_matches(member: FramedMember, record: MemberRecord, progress: Optional[ProgressCallback]) -> bool:
    """Check the member's compressed frames against the signed header when it lists them (no decompressing);
    else its decompressed content."""
    if member.framed and record.frames_sha256:
        digest = hashlib.sha256()
        for part in member.compressed_chunks(on_content=progress):
            digest.update(part)
        return digest.hexdigest() == record.frames_sha256
    background = BackgroundDigest()
    for chunk in member.chunks():
        background.update(chunk)
        if progress:
            progress(len(chunk))
    return background.hexdigest() == record.sha256


class BackgroundDigest:
    """sha256 computed on another thread, so hashing overlaps with decompression (both release the GIL)."""

    def __init__(self, depth: int = 8):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._digest = hashlib.sha256()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            chunk = self._queue.get()
            if chunk is None:
                return
            self._digest.update(chunk)

    def update(self, chunk: bytes) -> None:
        """Queue ``chunk`` (blocks when ``depth`` chunks wait, bounding memory)."""
        self._queue.put(chunk)

    def hexdigest(self) -> str:
        """Wait for the queued chunks and return the digest."""
        self._queue.put(None)
        self._thread.join()
        return self._digest.hexdigest()


def _structure_problems(header: BundleHeader) -> list[str]:
    """Every image's config and layers, and the images manifest, must be members."""
    names = {member.path for member in header.members}
    problems = []
    if header.images and IMAGES_MANIFEST not in names:
        problems.append(f"the signed header lists images but no {IMAGES_MANIFEST}")
    for image in header.images:
        needed = [config_path(image.id)] + [layer_path(d) for d in image.diff_ids]
        absent = [n for n in needed if n not in names]
        if absent and header.base is None:
            problems.append(f"image {image.id[:19]} ({', '.join(image.targets)}): members not listed: {', '.join(absent)}")
    return problems


def _claimed_signer(header_bytes: bytes) -> str:
    try:
        return repr(BundleHeader.from_bytes(header_bytes).signer)
    except HeaderError:
        return "no readable signer"
