"""The release spec: what the signed header says the site must run, typed and bounded.

The bundler writes it as the header's ``release`` object; readers get it only
through :func:`ReleaseSpec.from_dict` (``BundleHeader.spec``), which checks
every field's type and bounds (names, pattern lengths, secret lengths, counts),
so no reader handles the raw dictionary or a value no bundler would write.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

from .header import HeaderError

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
SERVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)*$")
MAX_PATTERN = 512
MAX_ITEMS = 4096
MAX_TEXT = 4096
SECRET_LENGTHS = (8, 256)
ALPHABETS = ("alnum", "hex")


@dataclass(frozen=True)
class VariableSpec:
    """A site variable: default, optional pattern, a template built from others, or required."""

    name: str
    default: str = ""
    pattern: Optional[str] = None
    description: str = ""
    template: Optional[str] = None
    required: bool = False


@dataclass(frozen=True)
class SecretSpec:
    """A secret generated on the site."""

    name: str
    length: int = 32
    alphabet: str = "alnum"


@dataclass(frozen=True)
class PortSpec:
    """A published port as the compose config writes it (``${HTTP_PORT:-8080}:80``)."""

    service: str
    spec: str


@dataclass(frozen=True)
class HostMount:
    """A bind mount of an absolute host path."""

    service: str
    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class Endpoint:
    """A URL printed once the stack is healthy."""

    name: str
    url: str


@dataclass(frozen=True)
class ReleaseSpec:
    """Everything the installer needs besides images, read from the signed header."""

    project: str
    registry: str = ""
    services: list[str] = field(default_factory=list)
    oneshot: list[str] = field(default_factory=list)
    healthchecked: list[str] = field(default_factory=list)
    ports: list[PortSpec] = field(default_factory=list)
    env_files: dict[str, list[str]] = field(default_factory=dict)
    state_dirs: list[str] = field(default_factory=list)
    host_mounts: list[HostMount] = field(default_factory=list)
    variables: dict[str, VariableSpec] = field(default_factory=dict)
    secrets: dict[str, SecretSpec] = field(default_factory=dict)
    endpoints: list[Endpoint] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Any, default_project: str) -> "ReleaseSpec":
        """Check and type the header's ``release`` object; HeaderError naming the bad key."""
        raw = _mapping(data, "release")
        project = _text(raw.get("project", default_project), "release.project")
        if not SERVICE.match(project):
            raise HeaderError(f"bundle.json: release.project: {project[:40]!r} is not a compose project name")
        variables = {}
        for name, item in _mapping(raw.get("variables", {}), "release.variables").items():
            where = f"release.variables.{_name(name, 'release.variables')}"
            item = _mapping(item, where)
            pattern = item.get("pattern")
            if pattern is not None:
                pattern = _text(pattern, f"{where}.pattern", MAX_PATTERN)
                try:
                    re.compile(pattern)
                except re.error:
                    raise HeaderError(f"bundle.json: {where}.pattern is not a regular expression") from None
            template = item.get("template")
            variables[name] = VariableSpec(
                name=name, default=_text(item.get("default", ""), f"{where}.default"), pattern=pattern,
                description=_text(item.get("description", ""), f"{where}.description"),
                template=_text(template, f"{where}.template") if template is not None else None,
                required=bool(item.get("required", False)))
        secrets = {}
        for name, item in _mapping(raw.get("secrets", {}), "release.secrets").items():
            where = f"release.secrets.{_name(name, 'release.secrets')}"
            item = _mapping(item, where)
            length = item.get("length", 32)
            if isinstance(length, bool) or not isinstance(length, int) or not SECRET_LENGTHS[0] <= length <= SECRET_LENGTHS[1]:
                raise HeaderError(f"bundle.json: {where}.length: expected {SECRET_LENGTHS[0]} to {SECRET_LENGTHS[1]}")
            alphabet = _text(item.get("alphabet", "alnum"), f"{where}.alphabet")
            if alphabet not in ALPHABETS:
                raise HeaderError(f"bundle.json: {where}.alphabet: expected one of {', '.join(ALPHABETS)}")
            secrets[name] = SecretSpec(name=name, length=length, alphabet=alphabet)
        registry = _text(raw.get("registry", ""), "release.registry", 255)
        if registry and not REGISTRY.match(registry):
            raise HeaderError(f"bundle.json: release.registry: {registry[:60]!r} is not HOST[:PORT][/PATH]")
        return cls(
            project=project,
            registry=registry,
            services=_services(raw.get("services", []), "release.services"),
            oneshot=_services(raw.get("oneshot", []), "release.oneshot"),
            healthchecked=_services(raw.get("healthchecked", []), "release.healthchecked"),
            ports=[PortSpec(service=_text(_mapping(p, "release.ports[]").get("service"), "release.ports[].service"),
                            spec=_text(p.get("spec"), "release.ports[].spec")) for p in _items(raw.get("ports", []), "release.ports")],
            env_files={_text(path, "release.env_files"): [_name(k, f"release.env_files.{path}") for k in _items(keys, "release.env_files")]
                       for path, keys in _mapping(raw.get("env_files", {}), "release.env_files").items()},
            state_dirs=[_text(p, "release.state_dirs[]") for p in _items(raw.get("state_dirs", []), "release.state_dirs")],
            host_mounts=[_mount(m) for m in _items(raw.get("host_mounts", []), "release.host_mounts") if isinstance(m, dict)],
            variables=variables,
            secrets=secrets,
            endpoints=[Endpoint(name=_text(_mapping(e, "release.endpoints[]").get("name"), "release.endpoints[].name"),
                                url=_text(e.get("url"), "release.endpoints[].url"))
                       for e in _items(raw.get("endpoints", []), "release.endpoints")],
        )


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise HeaderError(f"bundle.json: {where}: expected an object")
    if len(value) > MAX_ITEMS:
        raise HeaderError(f"bundle.json: {where}: more than {MAX_ITEMS} entries")
    return value


def _items(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise HeaderError(f"bundle.json: {where}: expected a list")
    if len(value) > MAX_ITEMS:
        raise HeaderError(f"bundle.json: {where}: more than {MAX_ITEMS} entries")
    return value


def _text(value: Any, where: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise HeaderError(f"bundle.json: {where}: expected a string")
    if len(value) > limit:
        raise HeaderError(f"bundle.json: {where}: longer than {limit} characters")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise HeaderError(f"bundle.json: {where}: {str(value)[:40]!r} is not a variable name")
    return value


def _services(value: Any, where: str) -> list[str]:
    names = [_text(item, f"{where}[]", 128) for item in _items(value, where)]
    for name in names:
        if not SERVICE.match(name):
            raise HeaderError(f"bundle.json: {where}: {name[:40]!r} is not a service name")
    return names


def _mount(value: dict) -> HostMount:
    return HostMount(service=_text(value.get("service"), "release.host_mounts[].service"),
                     source=_text(value.get("source"), "release.host_mounts[].source"),
                     target=_text(value.get("target", ""), "release.host_mounts[].target"),
                     read_only=bool(value.get("read_only", False)))
