"""The release manifest: load a YAML file and check it against its schema.

Every error names the file, the key (``sources.backend.dockerfile``) and what
was expected, so a user can fix the manifest without reading this code.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .refs import ImageRef, ReferenceError_, check_registry, check_tag, parse_ref

API_VERSION = "airgap/v1"
DEFAULT_PATTERN = "{registry}/{name}:{tag}"
PLACEHOLDERS = ("registry", "name", "tag", "version")
_VAR_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_BUNDLE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
SECRET_ALPHABETS = {
    "alnum": "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
    "hex": "0123456789abcdef",
}


class ManifestError(ValueError):
    """The manifest is malformed; the message names file, key and expectation."""

    def __init__(self, path: Path, key: str, message: str):
        self.path, self.key = path, key
        super().__init__(f"{path}: {key}: {message}" if key else f"{path}: {message}")


@dataclass(frozen=True)
class ImageSpec:
    """A dependency or build-base image from upstream."""

    ref: ImageRef
    kind: str
    name: Optional[str]
    target: Optional[str]
    key: str


@dataclass(frozen=True)
class SourceSpec:
    """An image built from the application's source tree (a compose ``build:``, with the manifest's overrides)."""

    service: str
    image: str
    context: str
    dockerfile: str
    target: Optional[str]
    args: dict[str, str]
    name: Optional[str]
    key: str


@dataclass(frozen=True)
class AliasSpec:
    """Another image reused under a name of its own (``of`` is a ref or a source service)."""

    name: str
    of: str
    key: str


@dataclass(frozen=True)
class RuntimeSpec:
    """A name the stack uses at run time, as is (no registry prefix)."""

    name: str
    of: str
    key: str


@dataclass(frozen=True)
class SiteVariable:
    """A site setting; ``pattern`` (a regex) guards the value.

    ``default`` None means "take it from the application's files"; a
    ``template`` (``postgresql://${POSTGRES_USER}:...``) is filled in on the
    site from the other values; ``required`` values must be given there.
    """

    name: str
    default: Optional[str]
    pattern: Optional[str]
    description: str = ""
    template: Optional[str] = None
    required: bool = False


@dataclass(frozen=True)
class SecretSpec:
    """A secret generated on the site at install time."""

    name: str
    length: int
    alphabet: str


@dataclass
class ReleaseManifest:
    """A checked release manifest."""

    path: Path
    name: str
    version: str
    project: str
    registry: str
    pattern: str
    dependencies: list[ImageSpec]
    build_bases: list[ImageSpec]
    sources: list[SourceSpec]
    aliases: list[AliasSpec]
    runtime: list[RuntimeSpec]
    compose_file: str
    compose_env_file: Optional[str] = None
    compose_overlay: Optional[Path] = None
    source_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    variables: dict[str, SiteVariable] = field(default_factory=dict)
    secrets: dict[str, SecretSpec] = field(default_factory=dict)
    endpoints: list[dict[str, str]] = field(default_factory=list)

    def render_value(self, text: str, key: str, *, tag: str, registry: str) -> str:
        """Fill ``{tag}``, ``{version}`` and ``{registry}`` into a manifest string."""
        return fill_placeholders(text, {"tag": tag, "version": tag, "registry": registry}, self.path, key)


def fill_placeholders(text: str, values: dict[str, str], path: Path, key: str) -> str:
    """Replace ``{word}`` placeholders; an unknown word is a ManifestError."""

    def replace(match: re.Match) -> str:
        word = match.group(1)
        if word not in values:
            raise ManifestError(path, key, f"unknown placeholder {{{word}}} (known: {', '.join('{%s}' % k for k in values)})")
        return values[word]

    return re.sub(r"\{([a-z_]+)\}", replace, text)


def load_manifest(path: Path) -> ReleaseManifest:
    """Read and check the manifest at ``path``; raise ManifestError on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(path, "", "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(path, "", f"cannot read it ({exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ManifestError(path, "", f"not valid YAML: {where}{getattr(exc, 'problem', exc)}") from None
    return _Checker(path).manifest(raw)


def manifest_from_data(raw: Any, path: Path) -> ReleaseManifest:
    """Check a manifest made in memory (``build --compose``); ``path`` names it in errors and anchors relative paths."""
    return _Checker(Path(path)).manifest(raw)


class _Checker:
    """Walks the raw YAML and builds the typed manifest, failing on the first problem."""

    TOP_KEYS = ("apiVersion", "bundle", "naming", "dependencies", "build_bases", "sources", "aliases", "runtime", "compose",
                "site", "endpoints")

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, message: str) -> ManifestError:
        return ManifestError(self.path, key, message)

    def mapping(self, value: Any, key: str, known: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
        if not isinstance(value, dict):
            raise self.fail(key or "top level", f"expected a mapping, got {_kind(value)}")
        for name in value:
            if name not in known:
                raise self.fail(_join(key, str(name)), f"unknown key (expected one of: {', '.join(known)})")
        for name in required:
            if name not in value:
                raise self.fail(_join(key, name), "required key is missing")
        return value

    def string(self, value: Any, key: str, what: str = "a string") -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.fail(key, f"expected {what}, got {_kind(value)}")
        return str(value)

    def listing(self, value: Any, key: str) -> list:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list, got {_kind(value)}")
        return value

    def image_ref(self, value: Any, key: str) -> ImageRef:
        if not isinstance(value, str):
            raise self.fail(key, f"expected an image reference like 'postgres:15-alpine', got {_kind(value)}")
        text = value
        try:
            return parse_ref(text)
        except ReferenceError_ as exc:
            raise self.fail(key, str(exc)) from None

    def manifest(self, raw: Any) -> ReleaseManifest:
        raw = self.mapping(raw, "", self.TOP_KEYS, ("apiVersion", "bundle", "compose"))
        if raw["apiVersion"] != API_VERSION:
            raise self.fail("apiVersion", f"expected {API_VERSION!r}, got {raw['apiVersion']!r}")
        bundle = self.mapping(raw["bundle"], "bundle", ("name", "version", "project"), ("name", "version"))
        name = self.string(bundle["name"], "bundle.name")
        if not _BUNDLE_NAME.match(name):
            raise self.fail("bundle.name", f"expected lower-case letters, digits, '.', '_' or '-', got {name!r}")
        version = self.string(bundle["version"], "bundle.version")
        try:
            check_tag(version)
        except ReferenceError_ as exc:
            raise self.fail("bundle.version", str(exc)) from None
        project = self.string(bundle.get("project", name), "bundle.project")
        if not _SERVICE_NAME.match(project):
            raise self.fail("bundle.project", f"expected a compose project name (lower-case), got {project!r}")
        naming = self.mapping(raw.get("naming", {}), "naming", ("registry", "pattern"))
        registry = self.string(naming.get("registry", ""), "naming.registry")
        if registry:
            try:
                check_registry(registry)
            except ReferenceError_ as exc:
                raise self.fail("naming.registry", str(exc)) from None
        pattern = self.string(naming.get("pattern", DEFAULT_PATTERN), "naming.pattern")
        if "{name}" not in pattern:
            raise self.fail("naming.pattern", "expected a pattern containing {name}, like '{registry}/{name}:{tag}'")
        compose = self.mapping(raw["compose"], "compose", ("file", "env_file", "overlay"), ("file",))
        compose_file = self.source_path(compose["file"], "compose.file")
        env_file = self.source_path(compose["env_file"], "compose.env_file") if compose.get("env_file") else None
        overlay = self.relative_file(compose["overlay"], "compose.overlay", must_be_dir=False) if compose.get("overlay") else None
        manifest = ReleaseManifest(
            path=self.path,
            name=name,
            version=version,
            project=project,
            registry=registry,
            pattern=pattern,
            dependencies=self.images(raw.get("dependencies"), "dependencies", "dependency"),
            build_bases=self.images(raw.get("build_bases"), "build_bases", "build-base"),
            sources=[],
            aliases=self.references(raw.get("aliases"), "aliases", AliasSpec),
            runtime=self.references(raw.get("runtime"), "runtime", RuntimeSpec),
            compose_file=compose_file,
            compose_env_file=env_file,
            compose_overlay=overlay,
            source_overrides=self.sources(raw.get("sources")),
        )
        self.site(raw.get("site", {}), manifest)
        manifest.endpoints = self.endpoints(raw.get("endpoints"), manifest)
        return manifest

    def endpoints(self, value: Any, manifest: ReleaseManifest) -> list[dict[str, str]]:
        result = []
        declared = set(manifest.variables)
        for index, item in enumerate(self.listing(value, "endpoints")):
            where = f"endpoints[{index}]"
            item = self.mapping(item, where, ("name", "url"), ("name", "url"))
            url = self.string(item["url"], f"{where}.url")
            for variable in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", url):
                if variable not in declared:
                    raise self.fail(f"{where}.url", f"${{{variable}}} is not a site variable (secrets never appear in URLs)")
            result.append({"name": self.string(item["name"], f"{where}.name"), "url": url})
        return result

    def relative_file(self, value: Any, key: str, *, must_be_dir: bool) -> Path:
        text = self.string(value, key, "a path relative to the manifest")
        candidate = (self.path.parent / text).resolve()
        base = self.path.parent.resolve()
        if Path(text).is_absolute() or base not in candidate.parents:
            raise self.fail(key, f"expected a path inside {base}, got {text!r}")
        if must_be_dir and not candidate.is_dir():
            raise self.fail(key, f"expected a folder, {candidate} is not one")
        if not must_be_dir and not candidate.is_file():
            raise self.fail(key, f"expected a file, {candidate} does not exist")
        return candidate

    def images(self, value: Any, key: str, kind: str) -> list[ImageSpec]:
        specs = []
        for index, item in enumerate(self.listing(value, key)):
            where = f"{key}[{index}]"
            if isinstance(item, str):
                item = {"ref": item}
            item = self.mapping(item, where, ("ref", "name", "target"), ("ref",))
            ref = self.image_ref(item["ref"], f"{where}.ref")
            name = self.string(item["name"], f"{where}.name") if "name" in item else None
            target = self.string(item["target"], f"{where}.target") if "target" in item else None
            if name is not None and not re.fullmatch(r"[a-z0-9]+(?:[._-][a-z0-9]+)*", name):
                raise self.fail(f"{where}.name", f"expected a lower-case image name, got {name!r}")
            specs.append(ImageSpec(ref=ref, kind=kind, name=name, target=target, key=where))
        return specs

    def sources(self, value: Any) -> dict[str, dict[str, Any]]:
        """Per-service overrides of what the compose file's ``build:`` says (or a whole build of its own)."""
        if value is None:
            return {}
        value = self.mapping(value, "sources", tuple(value) if isinstance(value, dict) else ())
        overrides: dict[str, dict[str, Any]] = {}
        for service, item in value.items():
            where = f"sources.{service}"
            if not isinstance(service, str) or not _SERVICE_NAME.match(service):
                raise self.fail(where, "expected a lower-case service name")
            item = self.mapping(item or {}, where, ("context", "dockerfile", "target", "args", "image", "name"))
            override: dict[str, Any] = {}
            for key in ("context", "dockerfile"):
                if key in item:
                    override[key] = self.source_path(item[key], f"{where}.{key}")
            for key in ("target", "image", "name"):
                if item.get(key) is not None:
                    override[key] = self.string(item[key], f"{where}.{key}")
            if "args" in item:
                args = self.mapping(item.get("args") or {}, f"{where}.args", tuple(item.get("args") or {}))
                override["args"] = {str(k): self.string(v, f"{where}.args.{k}") for k, v in args.items()}
            overrides[service] = override
        return overrides

    def source_path(self, value: Any, key: str) -> str:
        text = self.string(value, key, "a path relative to the source tree")
        parts = Path(text).parts
        if Path(text).is_absolute() or ".." in parts:
            raise self.fail(key, f"expected a path inside the source tree, got {text!r}")
        return text

    def references(self, value: Any, key: str, cls: type) -> list:
        specs = []
        for index, item in enumerate(self.listing(value, key)):
            where = f"{key}[{index}]"
            item = self.mapping(item, where, ("name", "of"), ("name", "of"))
            specs.append(cls(name=self.string(item["name"], f"{where}.name"), of=self.string(item["of"], f"{where}.of"), key=where))
        return specs

    def site(self, value: Any, manifest: ReleaseManifest) -> None:
        value = self.mapping(value or {}, "site", ("variables", "secrets"))
        variables = self.mapping(value.get("variables") or {}, "site.variables", tuple(value.get("variables") or {}))
        for name, item in variables.items():
            where = f"site.variables.{name}"
            if not _VAR_NAME.match(str(name)):
                raise self.fail(where, "expected an upper-case variable name like LDAP_BASE_DN")
            item = self.mapping(item or {}, where, ("default", "pattern", "description"))
            default = self.string(item["default"], f"{where}.default") if item.get("default") is not None else None
            pattern = self.string(item["pattern"], f"{where}.pattern") if "pattern" in item else None
            if pattern is not None:
                try:
                    compiled = re.compile(pattern)
                except re.error as exc:
                    raise self.fail(f"{where}.pattern", f"not a valid regular expression ({exc})") from None
                if default is not None and not compiled.fullmatch(default):
                    raise self.fail(f"{where}.default", f"{default!r} does not match its own pattern {pattern!r}")
            manifest.variables[name] = SiteVariable(name, default, pattern, self.string(item.get("description", ""), f"{where}.description"))
        secrets = self.mapping(value.get("secrets") or {}, "site.secrets", tuple(value.get("secrets") or {}))
        for name, item in secrets.items():
            where = f"site.secrets.{name}"
            if not _VAR_NAME.match(str(name)):
                raise self.fail(where, "expected an upper-case variable name like POSTGRES_PASSWORD")
            if name in manifest.variables:
                raise self.fail(where, "is both a variable and a secret")
            item = self.mapping(item or {}, where, ("length", "alphabet"))
            length = item.get("length", 32)
            if not isinstance(length, int) or isinstance(length, bool) or not 8 <= length <= 256:
                raise self.fail(f"{where}.length", f"expected an integer from 8 to 256, got {length!r}")
            alphabet = self.string(item.get("alphabet", "alnum"), f"{where}.alphabet")
            if alphabet not in SECRET_ALPHABETS:
                raise self.fail(f"{where}.alphabet", f"expected one of {', '.join(SECRET_ALPHABETS)}, got {alphabet!r}")
            manifest.secrets[name] = SecretSpec(name, length, alphabet)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(type(value), type(value).__name__)
