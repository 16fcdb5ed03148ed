"""A release-only archive: the signed header, its signature and the release files, without the images.

Hosts that take their images from the site registry need only this. The
header and signature are copied byte for byte (the builder's signature still
covers everything), and each release file's frames are copied as they are, so
the signed sha256 of its frames still matches. Readers accept the missing
``images/`` members only when told the images come from a registry.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .archive import RELEASE_DIR, ArchiveWriter, VerificationError, verify_archive
from .archive.writer import ArchiveWriteError
from .errors import InstallError, Say


def release_only_name(name: str, version: str) -> str:
    """``NAME-VERSION.release.tar.zst``."""
    return f"{name}-{version}.release.tar.zst"


def export_release(archive: Path, keys: list, output: Optional[Path], say: Say) -> Path:
    """Verify ``archive`` fully, then write its release-only copy to ``output``; return the path written."""
    try:
        bundle = verify_archive(archive, keys)
    except VerificationError as exc:
        raise InstallError(f"verification failed; nothing was written: {exc}", getattr(exc, "problems", [])) from None
    with bundle:
        header = bundle.header
        target = output or Path(archive).with_name(release_only_name(header.name, header.version))
        if target.is_dir():
            target = target / release_only_name(header.name, header.version)
        if target.resolve() == Path(archive).resolve():
            raise InstallError(f"{target}: would overwrite the archive it is read from; pass another --output")
        if bundle.signature is None:
            raise InstallError(f"{archive} is unsigned; a release-only archive keeps the builder's signature")
        needed = len(bundle.header_bytes) + len(bundle.signature) + 4096  # the header's tar blocks, uncompressed
        try:
            with ArchiveWriter(target, header_reserve=needed) as writer:
                kept = 0
                for record in header.members:
                    if not record.path.startswith(RELEASE_DIR + "/"):
                        continue
                    framed = bundle.frames(record.path)
                    if framed is None or not record.frames_sha256:
                        writer.add_stream(record.path, record.size, bundle.blocks(record.path))
                    else:
                        writer.add_frames(record.path, record.size, record.sha256, framed[1], record.frames_sha256)
                    kept += 1
                writer.finish(bundle.header_bytes, bundle.signature)
        except (ArchiveWriteError, OSError) as exc:
            raise InstallError(f"writing {target}: {exc}") from None
    say(f"release-only archive: {target} ({kept} release file(s), {target.stat().st_size / 1e3:.0f} kB; "
        f"signed by {bundle.signer})")
    return target
