"""The signed bundle header (``bundle.json``): what a bundle holds, member by member.

The header is the only thing the signature covers directly; every other
member is covered by the sha256 and size the header records for it, and by
the sha256 of its compressed frames (``frames_sha256``), which lets a
verifier check a member without decompressing it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from .layout import FORMAT, check_member_name, digest_hex


if TYPE_CHECKING:  # pragma: no cover
    from .release import ReleaseSpec


class HeaderError(ValueError):
    """``bundle.json`` is malformed: names the key and what was expected."""


@dataclass(frozen=True)
class MemberRecord:
    """One archive member: its path, sha256 (hex) and size in bytes, and the sha256 of its compressed data frames."""

    path: str
    sha256: str
    size: int
    frames_sha256: Optional[str] = None


@dataclass
class ImageRecord:
    """One image in the docker-archive part.

    ``id`` is the image ID (sha256 of its config), ``diff_ids`` its layers in
    order, ``targets`` every name it is tagged with on the site, ``sources``
    where each name came from (kind and upstream reference).
    """

    id: str
    diff_ids: list[str]
    targets: list[str]
    platform: str
    size: int = 0
    sources: list[dict[str, str]] = field(default_factory=list)


@dataclass
class BundleHeader:
    """Everything a reader needs before it reads the images."""

    name: str
    version: str
    tool_version: str
    platform: str
    created: str
    signer: str
    images: list[ImageRecord]
    members: list[MemberRecord]
    release: dict[str, Any] = field(default_factory=dict)
    base: Optional[dict[str, Any]] = None
    format: str = FORMAT

    def to_bytes(self) -> bytes:
        """Serialize deterministically (sorted keys, compact, UTF-8)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> "BundleHeader":
        """Parse and validate ``bundle.json``; raise HeaderError naming the bad key."""
        try:
            raw = json.loads(data.decode("utf-8"))
        except ValueError as exc:  # not UTF-8, not JSON, or a number too long to convert
            raise HeaderError(f"bundle.json is not valid JSON ({exc})") from None
        except RecursionError:
            raise HeaderError("bundle.json is nested too deeply to be a bundle header") from None
        if not isinstance(raw, dict):
            raise HeaderError("bundle.json: expected a JSON object at the top level")
        if raw.get("format") != FORMAT:
            raise HeaderError(f"bundle.json: format is {raw.get('format')!r}, this tool reads {FORMAT!r}")
        header = cls(
            name=_str(raw, "name"),
            version=_str(raw, "version"),
            tool_version=_str(raw, "tool_version"),
            platform=_str(raw, "platform"),
            created=_str(raw, "created"),
            signer=_str(raw, "signer"),
            images=[_image(item, i) for i, item in enumerate(_list(raw, "images"))],
            members=[_member(item, i) for i, item in enumerate(_list(raw, "members"))],
            release=_dict(raw, "release"),
            base=raw.get("base") if isinstance(raw.get("base"), dict) else None,
        )
        seen: set[str] = set()
        for member in header.members:
            if member.path in seen:
                raise HeaderError(f"bundle.json: member {member.path!r} is listed twice")
            seen.add(member.path)
        return header

    @property
    def spec(self) -> "ReleaseSpec":
        """The release spec, typed and bounded (HeaderError if the header's ``release`` is malformed)."""
        from .release import ReleaseSpec

        cached = self.__dict__.get("_spec")
        if cached is None:
            cached = ReleaseSpec.from_dict(self.release, self.name)
            self.__dict__["_spec"] = cached
        return cached

    def member(self, path: str) -> Optional[MemberRecord]:
        """The record of the member at ``path``, if any."""
        for member in self.members:
            if member.path == path:
                return member
        return None

    def total_size(self) -> int:
        """Uncompressed size of every member."""
        return sum(member.size for member in self.members)


def _str(raw: dict, key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise HeaderError(f"bundle.json: key {key!r}: expected a string, got {type(value).__name__}")
    return value


def _list(raw: dict, key: str) -> list:
    value = raw.get(key)
    if not isinstance(value, list):
        raise HeaderError(f"bundle.json: key {key!r}: expected a list, got {type(value).__name__}")
    return value


def _dict(raw: dict, key: str) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise HeaderError(f"bundle.json: key {key!r}: expected an object, got {type(value).__name__}")
    return value


def _member(item: Any, index: int) -> MemberRecord:
    where = f"members[{index}]"
    if not isinstance(item, dict):
        raise HeaderError(f"bundle.json: {where}: expected an object")
    path, sha, size, frames = item.get("path"), item.get("sha256"), item.get("size"), item.get("frames_sha256")
    try:
        check_member_name(path if isinstance(path, str) else "")
        digest_hex(sha if isinstance(sha, str) else "")
        if frames is not None:
            digest_hex(frames if isinstance(frames, str) else "")
    except ValueError as exc:
        raise HeaderError(f"bundle.json: {where}: {exc}") from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise HeaderError(f"bundle.json: {where}.size: expected a non-negative integer")
    return MemberRecord(path=path, sha256=sha, size=size, frames_sha256=frames)


def _image(item: Any, index: int) -> ImageRecord:
    where = f"images[{index}]"
    if not isinstance(item, dict):
        raise HeaderError(f"bundle.json: {where}: expected an object")
    try:
        image_id = item["id"]
        digest_hex(image_id)
        diff_ids = list(item["diff_ids"])
        for diff_id in diff_ids:
            digest_hex(diff_id)
        targets = [str(t) for t in item["targets"]]
        platform = str(item["platform"])
    except (KeyError, TypeError, ValueError) as exc:
        raise HeaderError(f"bundle.json: {where}: {exc}") from None
    return ImageRecord(
        id=image_id,
        diff_ids=diff_ids,
        targets=targets,
        platform=platform,
        size=int(item.get("size", 0)),
        sources=list(item.get("sources", [])),
    )
