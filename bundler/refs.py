"""Docker image references: parse, normalise and format them."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"sha256:[0-9a-f]{64}"
_REFERENCE = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)
_TAG_ONLY = re.compile(rf"^{_TAG}$")


class ReferenceError_(ValueError):
    """Not a valid image reference."""


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference. ``domain`` is None for Docker Hub short names."""

    domain: Optional[str]
    path: str
    tag: Optional[str]
    digest: Optional[str]

    @property
    def name(self) -> str:
        """The last path component: ``osixia/openldap`` → ``openldap``."""
        return self.path.rsplit("/", 1)[-1]

    @property
    def repository(self) -> str:
        """Domain and path, without tag or digest, as the user wrote it."""
        return f"{self.domain}/{self.path}" if self.domain else self.path

    def with_tag(self) -> str:
        """``repository:tag`` (tag ``latest`` when none was given)."""
        return f"{self.repository}:{self.tag or 'latest'}"

    def pinned(self, digest: str) -> str:
        """``repository@digest``: the reference a lockfile pulls by."""
        return f"{self.repository}@{digest}"

    def __str__(self) -> str:
        text = self.repository
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_ref(text: str) -> ImageRef:
    """Parse ``text`` as an image reference; raise ReferenceError_ with the reason."""
    if not isinstance(text, str) or not text:
        raise ReferenceError_("expected an image reference like 'postgres:15-alpine'")
    match = _REFERENCE.match(text)
    if not match:
        raise ReferenceError_(f"{text!r} is not a valid image reference (lower-case repository, optional :tag)")
    domain = match.group("domain")
    path = match.group("path")
    # "localhost" or anything with a dot or port is a registry host; otherwise it was a path part.
    if domain and not ("." in domain or ":" in domain or domain == "localhost"):
        path = f"{domain}/{path}"
        domain = None
        if not re.fullmatch(rf"{_COMPONENT}(?:/{_COMPONENT})*", path):
            raise ReferenceError_(f"{text!r} is not a valid image reference")
    return ImageRef(domain=domain, path=path, tag=match.group("tag"), digest=match.group("digest"))


def normalise(text: str) -> str:
    """The engine's canonical ``repository:tag`` for a reference (``latest`` filled in)."""
    return parse_ref(text).with_tag()


def check_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid image tag, else raise ReferenceError_."""
    if not isinstance(tag, str) or not _TAG_ONLY.match(tag):
        raise ReferenceError_(f"{tag!r} is not a valid image tag (letters, digits, '_', '.', '-'; at most 128)")
    return tag


def check_registry(registry: str) -> str:
    """Return ``registry`` (``host[:port][/path]``) if valid, else raise ReferenceError_."""
    try:
        ref = parse_ref(f"{registry}/x:t")
    except ReferenceError_:
        raise ReferenceError_(f"{registry!r} is not a valid registry prefix like 'aiharbor.msxf.local/aihpc'") from None
    if ref.domain is None and "/" not in registry and registry != "":
        # a bare word is accepted as a path prefix on Docker Hub, e.g. 'myorg'
        return registry
    return registry.rstrip("/")
