"""Image names as a registry sees them, and where a release's names live in the site registry.

A release names its images for the site registry it was built for
(``aiharbor.msxf.local/aihpc/postgres:v0.3.5``) plus a few local-only names
the stack uses as they are (``ai-infra-singleuser:v0.3.5``). Pushing maps
every name to a repository of the chosen registry: names under the release's
registry keep their path below it, local-only names go under it as they are.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

# The distribution spec's grammar (distribution/reference), with a host that may carry a port.
_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]{1,5})?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
HOST = re.compile(rf"^{_HOST}$")
REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
MAX_NAME = 255


class ReferenceError(ValueError):
    """A name or registry address is not valid; the message says which and why."""


@dataclass(frozen=True)
class Registry:
    """A registry host and the path inside it where a release goes (``aiharbor.msxf.local``, ``aihpc``)."""

    host: str
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> "Registry":
        """``HOST[:PORT][/PROJECT[/...]]`` → Registry; ReferenceError when malformed."""
        text = text.strip().rstrip("/")
        for scheme in ("https://", "http://"):
            if text.startswith(scheme):
                raise ReferenceError(f"--registry {text!r}: give HOST[:PORT]/PROJECT without {scheme} "
                                     "(plain HTTP is --insecure-registry)")
        host, _, path = text.partition("/")
        if not host or not HOST.match(host):
            raise ReferenceError(f"registry {text!r}: {host!r} is not a host name (HOST[:PORT]/PROJECT expected)")
        if path and not REPOSITORY.match(path):
            raise ReferenceError(f"registry {text!r}: {path!r} is not a project path (lower case letters, digits, "
                                 "'.', '_', '-' and '/')")
        return cls(host=host, path=path)

    @property
    def project(self) -> str:
        """The first path component (Harbor's project), or '' when the release goes to the registry's root."""
        return self.path.split("/", 1)[0]

    def __str__(self) -> str:
        return f"{self.host}/{self.path}" if self.path else self.host


@dataclass(frozen=True)
class Reference:
    """One image name in a registry: ``host/repository:tag``."""

    host: str
    repository: str
    tag: str

    def __str__(self) -> str:
        return f"{self.host}/{self.repository}:{self.tag}"

    def with_digest(self, digest: str) -> str:
        """``host/repository@sha256:...``: the immutable name of one manifest."""
        return f"{self.host}/{self.repository}@{digest}"


def has_host(name: str) -> bool:
    """True when ``name``'s first component is a registry host (has '.', ':' or is 'localhost'), as docker reads names."""
    first, slash, _ = name.partition("/")
    return bool(slash) and ("." in first or ":" in first or first == "localhost")


def split_tag(name: str) -> tuple[str, str]:
    """``path:tag`` → (path, tag); a name without a tag is refused (a release always tags its names)."""
    if "@" in name:
        raise ReferenceError(f"{name!r}: a name with a digest cannot be pushed as a tag")
    path, colon, tag = name.rpartition(":")
    if not colon or "/" in tag:
        raise ReferenceError(f"{name!r} has no tag")
    return path, tag


def site_reference(name: str, registry: Registry, release_registry: Optional[Registry]) -> Reference:
    """Where the release name ``name`` goes in ``registry``.

    Under the release's own registry: the same path below ``registry`` (only the
    host and project change). A local-only name (no host): below ``registry`` as
    it is. Under some other registry: its path below ``registry``.
    """
    if len(name) > MAX_NAME:
        raise ReferenceError(f"{name[:60]!r}...: longer than {MAX_NAME} characters")
    path, tag = split_tag(name)
    prefix = f"{release_registry}/" if release_registry else None
    if prefix and f"{path}/".startswith(prefix) and path != str(release_registry):
        rest = path[len(prefix):]
    elif has_host(path):
        rest = path.split("/", 1)[1]
    else:
        rest = path
    repository = f"{registry.path}/{rest}" if registry.path else rest
    if not REPOSITORY.match(repository):
        raise ReferenceError(f"{name!r}: {repository!r} is not a valid repository name in a registry")
    if not TAG.match(tag):
        raise ReferenceError(f"{name!r}: {tag!r} is not a valid tag")
    return Reference(host=registry.host, repository=repository, tag=tag)
