"""Check a bundle: the header's signature first, then every member's size and sha256."""
from __future__ import annotations

import hashlib
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..signing import find_signer, fingerprint
from .header import BundleHeader, HeaderError, MemberRecord
from .layout import IMAGES_MANIFEST, config_path, layer_path
from .parts import PartsError, check_parts, find_index
from .reader import (
    ArchiveFormatError,
    ArchiveHandle,
    ArchiveSource,
    FramedArchiveReader,
    FramedMember,
    MemberLocation,
    SignedHeader,
    member_blocks,
    member_frames,
)

ProgressCallback = Callable[[int], None]


class VerificationError(Exception):
    """The bundle failed a check; ``problems`` lists each failure found."""

    def __init__(self, message: str, problems: Optional[list[str]] = None):
        super().__init__(message)
        self.problems = problems or [message]


@dataclass
class VerifiedBundle:
    """The only handle to an archive after its signature checked out (unless waived).

    It holds the archive open (``handle``) and the signed header's bytes; every
    later read (members, images, ``release/`` files, the stored header) goes
    through it, never through the path again. ``members_checked`` is set once
    every member's size and sha256 matched the signed header: nothing may reach
    the engine or the install directory before that.
    """

    path: Path
    header: BundleHeader
    signer: Optional[str]
    signature_checked: bool
    warnings: list[str] = field(default_factory=list)
    header_bytes: bytes = b""
    handle: Optional[ArchiveHandle] = None
    members_checked: bool = False
    signature: Optional[bytes] = None
    locations: dict[str, MemberLocation] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)

    def reader(self) -> FramedArchiveReader:
        """A reader of the held archive (not of whatever the path names now)."""
        if self.handle is None:
            raise VerificationError(f"{self.path}: the archive is no longer held open")
        return FramedArchiveReader(self.handle)

    def require_checked(self) -> None:
        """Raise unless every member's digest has checked out."""
        if not self.members_checked:
            raise VerificationError(f"{self.path}: the archive's members were not verified yet")

    def check_members(self, progress: Optional[ProgressCallback] = None,
                      may_lack: Callable[[str], bool] = lambda name: False) -> "VerifiedBundle":
        """Stream every member of the held archive and check its size and sha256 against the signed header.

        A member the header lists but the archive lacks is a failure unless
        ``may_lack(name)`` (a release-only archive lacks ``images/``). Where
        each verified member's frames lie is kept (``locations``), so later
        readers can read members side by side.
        """
        problems = _structure_problems(self.header)
        expected = {member.path: member for member in self.header.members}
        seen: set[str] = set()
        extra = 0
        frames_sizes: dict[str, int] = {}
        locations: dict[str, MemberLocation] = {}
        try:
            with self.reader() as reader:
                for member in _remember_locations(reader.members(), frames_sizes, locations):
                    record = expected.get(member.name)
                    if record is None or member.name in seen:
                        extra += 1
                        if extra <= MAX_REPORTED:
                            problems.append(f"member {member.name!r} " + ("appears twice" if record else
                                                                          "is not listed in the signed header"))
                        if extra > MAX_EXTRA_MEMBERS:
                            problems.append(f"more than {MAX_EXTRA_MEMBERS} members the signed header does not list; "
                                            "stopped reading")
                            break
                        continue
                    seen.add(member.name)
                    if member.size != record.size:
                        problems.append(f"member {member.name!r}: size {member.size}, the signed header says {record.size}")
                        continue
                    if not _digest_matches(member, record, progress, frames_sizes):
                        problems.append(f"member {member.name!r}: sha256 mismatch (content altered or damaged)")
        except ArchiveFormatError as exc:
            problems.append(str(exc))
        if extra > MAX_REPORTED:
            problems.append(f"{extra - MAX_REPORTED} more members not listed in the signed header")
        missing = [name for name in expected if name not in seen and not may_lack(name)]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            problems.append(f"{len(missing)} member(s) listed in the signed header are missing: {shown}")
        if problems:
            raise VerificationError(f"{self.path}: verification failed: " + "; ".join(problems[:MAX_REPORTED * 2]),
                                    problems[:MAX_REPORTED * 2])
        self.members_checked = True
        self.locations, self.held = locations, seen
        return self

    def present(self, name: str) -> bool:
        """True when the verified archive holds member ``name`` (a release-only archive lacks its images)."""
        self.require_checked()
        return name in self.held

    def blocks(self, name: str) -> Iterator[bytes]:
        """A verified member's content, read from the held archive (side by side with other members' readers).

        Its frames are hashed again as they are read; a mismatch raises after the last block.
        """
        self.require_checked()
        record = self.header.member(name)
        if record is None:
            raise VerificationError(f"{self.path}: {name!r} is not a member of this release")
        location = self.locations.get(name)
        if location is not None and self.handle is not None:
            yield from member_blocks(self.handle, location, record.size, record.frames_sha256)
            return
        with self.reader() as reader:  # not framed on its own: walk to it
            for member in reader.members():
                if member.name == name:
                    yield from member.chunks()
                    return
        raise VerificationError(f"{self.path}: member {name!r} is not in the archive")

    def frames(self, name: str) -> Optional[tuple[int, Iterator[bytes]]]:
        """A verified member's compressed frames as they are, with their total size (None if not framed on its own).

        Their sha256 is the signed ``frames_sha256``: the bytes are a zstd stream of the member.
        """
        self.require_checked()
        location = self.locations.get(name)
        if location is None or self.handle is None:
            return None
        handle = self.handle

        def raw() -> Iterator[bytes]:
            for frame in member_frames(handle, location):
                yield b"".join(frame.parts)
        return location.frames_size, raw()

    def close(self) -> None:
        """Release the archive."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def __enter__(self) -> "VerifiedBundle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


MAX_REPORTED = 20  # problems named one by one
MAX_EXTRA_MEMBERS = 1000  # members the header does not list before reading stops


def _read_signed_header(source: ArchiveSource) -> SignedHeader:
    """``bundle.json`` and its signature as raw bytes; VerificationError if the archive cannot be read."""
    try:
        with FramedArchiveReader(source) as reader:
            return reader.read_signed_header()
    except ArchiveFormatError as exc:
        raise VerificationError(str(exc)) from None


def read_header(path: ArchiveSource) -> tuple[BundleHeader, bytes, Optional[bytes]]:
    """Read the header without checking it: (parsed header, raw bytes, signature). For ``inspect`` only."""
    signed = _read_signed_header(path)
    try:
        return BundleHeader.from_bytes(signed.header), signed.header, signed.signature
    except HeaderError as exc:
        raise VerificationError(f"{getattr(path, 'path', path)}: {exc}") from None


def open_signed(
    path: Path, keys: Sequence[Ed25519PublicKey], *, allow_untrusted: bool = False
) -> VerifiedBundle:
    """Hold the archive open and check its header's signature (a few kilobytes read); members are not checked yet.

    With ``allow_untrusted`` an unsigned or unknown-signer bundle is accepted
    (the caller must say so loudly); the signer is then None.
    """
    path = Path(path)
    try:
        handle = ArchiveHandle(path)
    except ArchiveFormatError as exc:
        raise VerificationError(str(exc)) from None
    try:
        signed = _read_signed_header(handle)
        signer = _check_signature(path, signed, keys, allow_untrusted)
        try:
            header = BundleHeader.from_bytes(signed.header)
            header.spec  # the release spec's types and bounds, checked before anyone reads it
        except HeaderError as exc:
            raise VerificationError(f"{path}: {exc}") from None
    except BaseException:
        handle.close()
        raise
    warnings = [] if signer else ["signature NOT checked: the bundle was accepted without a trusted signature"]
    return VerifiedBundle(path=path, header=header, signer=fingerprint(signer) if signer else None,
                          signature_checked=signer is not None, warnings=warnings, header_bytes=signed.header,
                          handle=handle, signature=signed.signature)


def _check_signature(path: Path, signed: SignedHeader, keys: Sequence[Ed25519PublicKey],
                     allow_untrusted: bool) -> Optional[Ed25519PublicKey]:
    if signed.signature is None:
        if not allow_untrusted:
            raise VerificationError(
                f"{path}: the bundle is unsigned (no bundle.json.sig after bundle.json); refusing it"
            )
        return None
    signer = find_signer(signed.header, signed.signature, keys)
    if signer is None and not allow_untrusted:
        if not keys:
            raise VerificationError(f"{path}: no trusted public key was given; pass --pubkey FILE")
        claimed = _claimed_signer(signed.header)
        tried = ", ".join(fingerprint(k) for k in keys)
        raise VerificationError(
            f"{path}: bad signature: bundle.json is not signed by any trusted key "
            f"(trusted: {tried}; the header names {claimed}). The bundle was altered, or signed with another key."
        )
    return signer


def verify_archive(
    path: Path,
    keys: Sequence[Ed25519PublicKey],
    *,
    allow_untrusted: bool = False,
    progress: Optional[ProgressCallback] = None,
) -> VerifiedBundle:
    """Check the signature, then stream every member and check its size and sha256; return the held bundle.

    Raises VerificationError naming every member that failed; nothing is
    written anywhere. Close the result (or use it as a context manager).
    """
    path = Path(path)
    try:
        index = find_index(path)
        if index is not None:
            check_parts(index, digests=True)
    except PartsError as exc:
        raise VerificationError(f"{path}: {exc}") from None
    bundle = open_signed(path, keys, allow_untrusted=allow_untrusted)
    try:
        return bundle.check_members(progress)
    except BaseException:
        bundle.close()
        raise


def _remember_locations(members: Iterator[FramedMember], frames_sizes: dict[str, int],
                        locations: dict[str, MemberLocation]) -> Iterator[FramedMember]:
    """Pass members through; once each is done with, note where its frames lay (when checked by its frames)."""
    previous: Optional[FramedMember] = None
    for member in members:
        _note(previous, frames_sizes, locations)
        previous = member
        yield member
    _note(previous, frames_sizes, locations)


def _note(member: Optional[FramedMember], frames_sizes: dict[str, int], locations: dict[str, MemberLocation]) -> None:
    if member is None or member.name not in frames_sizes or member.data_offset is None or member.data_end is None:
        return
    locations.setdefault(member.name, MemberLocation(member.data_offset, member.data_end - member.data_offset,
                                                     frames_sizes[member.name]))


def _digest_matches(member: FramedMember, record: MemberRecord, progress: Optional[ProgressCallback],
                    frames_sizes: Optional[dict[str, int]] = None) -> bool:
    """Check the member's compressed frames against the signed header when it lists them (no decompressing);
    else its decompressed content."""
    if member.framed and record.frames_sha256:
        digest = hashlib.sha256()
        total = 0
        for part in member.compressed_chunks(on_content=progress):
            digest.update(part)
            total += len(part)
        if frames_sizes is not None:
            frames_sizes[member.name] = total
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
