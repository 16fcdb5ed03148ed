"""Derive the production compose config from the application's own compose file.

Every key the application wrote reaches the site as written. Only these change:

- ``image:`` becomes the site name of the image (a dependency, a source build,
  an alias); an image the release lacks is refused, naming service and file;
- ``build:`` (and ``pull_policy``) are dropped: a site never builds or pulls;
- ``${VAR}`` references stay as written and become site variables, their
  defaults from the env file or the compose default; secret-looking ones become
  secrets generated on the host, never shipped;
- the manifest's overlay (compose merge rules) is applied first.

Files the services bind-mount from the source tree are shipped beside the
config; folders they write to are kept outside the release on the site, so an
upgrade never loses them. ``env_file:`` entries are the site's settings file.
The YAML is dumped by a YAML library and parsed back to prove it round-trips.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Optional

from .application import Application
from .composefile import (ComposeFileError, ComposeLoader, EnvEntry, InterpolationError, dump_yaml, read_env_file,
                          references, strings_in)
from .manifest import SecretSpec, SiteVariable
from .plan import Plan

import yaml

SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|CRYPT_KEY|ACCESS_KEY|PRIVATE_KEY|API_KEY|_KEY$)", re.I)
PLACEHOLDER = re.compile(r"^(change[-_ ]?me|changeme|TEMPLATE_[A-Z0-9_]*|<[^>]*>|xxx+)$", re.I)
_HEX = re.compile(r"^[0-9a-f]{16,256}$")
MAX_SHIPPED_BYTES = 256 << 20


class ComposeError(ValueError):
    """The application's compose definition cannot be made into a production config; says where and why."""


@dataclass
class RenderedCompose:
    """The production compose config and what the installer needs to know about it.

    ``files`` are shipped (release-relative POSIX paths, their sources in
    ``file_sources``); ``env_files`` maps each ``env_file:`` path to the
    variables the installer writes into it, with the site's values (the keys
    of the application's own file there); ``state_dirs`` are bind-mounted
    folders kept outside the release (seeded from the shipped copy on first install).
    """

    text: str
    services: list[str]
    oneshot: list[str]
    healthchecked: list[str]
    ports: list[dict[str, str]]
    files: list[str]
    host_mounts: list[dict[str, Any]]
    variables_used: list[str] = field(default_factory=list)
    file_sources: dict[str, Path] = field(default_factory=dict)
    env_files: dict[str, list[str]] = field(default_factory=dict)
    state_dirs: list[str] = field(default_factory=list)
    variables: dict[str, SiteVariable] = field(default_factory=dict)
    secrets: dict[str, SecretSpec] = field(default_factory=dict)
    changes: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    profiles: dict[str, list[str]] = field(default_factory=dict)


def render_compose(plan: Plan, app: Application) -> RenderedCompose:
    """Derive the site's compose config from ``app`` for ``plan``; ComposeError listing every problem."""
    return _Deriver(plan, app).derive()


class _Deriver:
    def __init__(self, plan: Plan, app: Application):
        self.plan, self.app = plan, app
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.env: dict[str, EnvEntry] = dict(app.env)
        self.shipped_bytes = 0
        self.result = RenderedCompose(text="", services=[], oneshot=[], healthchecked=[], ports=[], files=[], host_mounts=[])

    def derive(self) -> RenderedCompose:
        app, result = self.app, self.result
        document = app.document  # x-* extension blocks stay as written: compose ignores them, and so does the site
        services = document.get("services") or {}
        self._overlay_changes()
        for name, service in services.items():
            self._service(name, service)
        self._check_plan_covers(services)
        self._variables(document)
        if self.problems:
            raise ComposeError("; ".join(self.problems))
        header = (f"# {self.plan.manifest.name} {self.plan.tag}: production compose config derived by airgap-bundle from\n"
                  f"# {app.compose_path.name}. Values in ${{...}} come from the site's environment file.\n")
        result.text = header + dump_yaml(document)
        if yaml.load(result.text, Loader=ComposeLoader) != document:
            raise ComposeError(f"{app.compose_path}: the derived config does not read back as written")
        active = [n for n, s in services.items() if not s.get("profiles")]
        result.services = active
        result.profiles = {n: list(s["profiles"]) for n, s in services.items() if s.get("profiles")}
        result.oneshot = [n for n in active if _is_oneshot(n, services)]
        result.healthchecked = [n for n in active if isinstance(services[n].get("healthcheck"), dict)
                                and not services[n]["healthcheck"].get("disable")]
        result.files = sorted(result.file_sources)
        result.warnings = self.warnings
        return result

    # -- per service ----------------------------------------------------------------------------

    def _service(self, name: str, service: dict[str, Any]) -> None:
        app, plan = self.app, self.plan
        changes = self.result.changes.setdefault(name, [])
        original_image = service.get("image")
        build = service.pop("build", None)
        if build is not None:
            entry = plan.source_for(name)
            if entry is None:  # cannot happen: every build: is a source
                self.problems.append(f"{app.where(name, 'build')}: no source build planned")
                return
            service["image"] = entry.target
            changes.append(f"build: dropped (built from {entry.upstream})")
            changes.append(f"image: {original_image or '(none)'} -> {entry.target}")
        elif original_image is None:
            self.problems.append(f"{app.where(name)}: has neither image: nor build:")
            return
        else:
            try:
                reference = app.image_of(name)
            except ComposeFileError as exc:
                self.problems.append(str(exc))
                return
            target = plan.site_image(reference or "")
            if target is None:
                self.problems.append(
                    f"{app.where(name, 'image')}: {reference!r} is not in the release: list it under the manifest's "
                    "dependencies (or aliases), or leave the service out with the overlay")
                return
            service["image"] = target
            changes.append(f"image: {original_image} -> {target}")
        if "pull_policy" in service:
            changes.append(f"pull_policy: {service.pop('pull_policy')} dropped (a site never pulls)")
        self._env_files(name, service, changes)
        self._volumes(name, service, changes)
        for spec in service.get("ports") or []:
            self.result.ports.append({"service": name, "spec": _port_text(spec)})
        self._literal_secrets(name, service.get("environment"))

    def _env_files(self, name: str, service: dict[str, Any], changes: list[str]) -> None:
        entries = service.get("env_file")
        if entries is None:
            return
        for entry in entries if isinstance(entries, list) else [entries]:
            path = entry.get("path") if isinstance(entry, dict) else entry
            relative = self._relative(name, "env_file", str(path))
            if relative is None:
                continue
            if relative not in self.result.env_files:
                keys = self._env_file_keys(name, relative)
                if keys is None:
                    continue
                self.result.env_files[relative] = keys
            changes.append(f"env_file {path}: written on the site with its {len(self.result.env_files[relative])} "
                           "variables' site values (secrets generated there)")

    def _env_file_keys(self, service: str, relative: str) -> Optional[list[str]]:
        """The variables an env_file holds: the declared env file's for its site copy, else the file's own."""
        path = self.app.project_dir / relative
        declared = self.app.env_path
        if declared is not None and (path.resolve() == declared.resolve() or _is_instance_of(path, declared)):
            return list(self.app.env)  # e.g. .env.prod made from .env.prod.example; a local copy may hold real secrets
        if not path.is_file():
            if declared is None:
                self.problems.append(f"{self.app.where(service, 'env_file')}: {relative} does not exist in --source and the "
                                     "manifest names no compose.env_file to make it from")
                return None
            self.warnings.append(f"{self.app.where(service, 'env_file')}: {relative} is not in --source; the site writes it "
                                 f"with the variables of {declared.name}")
            return list(self.app.env)
        try:
            entries = read_env_file(path)
        except ComposeFileError as exc:
            self.problems.append(f"{self.app.where(service, 'env_file')}: {exc}")
            return None
        for name, entry in entries.items():
            self.env.setdefault(name, entry)
        return list(entries)

    def _volumes(self, name: str, service: dict[str, Any], changes: list[str]) -> None:
        for source, target, read_only in _bind_sources(service.get("volumes") or []):
            if source.startswith(("/", "~")):
                self.result.host_mounts.append({"service": name, "source": source, "target": target, "read_only": read_only})
                changes.append(f"bind {source}: a path of the site's host, checked by preflight")
                continue
            relative = self._relative(name, "volumes", source)
            if relative is None:
                continue
            path = self.app.project_dir / relative
            if path.is_file():
                self._ship(relative, path)
                changes.append(f"bind {source}: shipped with the release")
            elif path.is_dir():
                for file in sorted(p for p in path.rglob("*") if p.is_file()):
                    self._ship(PurePosixPath(relative, file.relative_to(path).as_posix()).as_posix(), file)
                if read_only:
                    changes.append(f"bind {source}: shipped with the release (read-only)")
                else:
                    self._state_dir(relative)
                    changes.append(f"bind {source}: a site data folder kept across releases (seeded from the source tree)")
            elif PurePosixPath(relative).suffix:
                self.problems.append(
                    f"{self.app.where(name, 'volumes')}: bind-mounted {source} does not exist in --source "
                    f"{self.app.source_dir}: the engine would mount an empty folder in its place; add the file or drop "
                    "the mount in the overlay")
            else:
                self._state_dir(relative)
                changes.append(f"bind {source}: a site data folder kept across releases (created empty)")

    def _state_dir(self, relative: str) -> None:
        if relative not in self.result.state_dirs:
            self.result.state_dirs.append(relative)

    def _ship(self, relative: str, path: Path) -> None:
        if relative not in self.result.file_sources:
            self.shipped_bytes += path.stat().st_size
        self.result.file_sources[relative] = path
        if self.shipped_bytes > MAX_SHIPPED_BYTES:
            self.problems.append(f"bind-mounted files add up to more than {MAX_SHIPPED_BYTES >> 20} MiB "
                                 f"(at {relative}); ship data in an image or a volume instead")

    def _relative(self, name: str, key: str, path: str) -> Optional[str]:
        """``path`` (relative to the compose file) as a clean POSIX path inside the project, or None (problem noted)."""
        if "$" in path:
            self.problems.append(f"{self.app.where(name, key)}: {path!r}: variables in host paths are not supported")
            return None
        candidate = PurePosixPath(path)
        parts = [part for part in candidate.parts if part not in (".", "")]
        if candidate.is_absolute() or ".." in parts or not parts:
            self.problems.append(f"{self.app.where(name, key)}: {path!r} points outside the compose file's folder; "
                                 "a release can only carry files from inside it")
            return None
        return PurePosixPath(*parts).as_posix()

    def _literal_secrets(self, name: str, environment: Any) -> None:
        for key, value in _pairs(environment):
            if value and SECRET_NAME.search(key) and not references(str(value)) and "$$" not in str(value):
                self.warnings.append(f"{self.app.where(name, 'environment')}.{key}: a secret-looking value is written "
                                     "in the compose file itself; it is shipped as written (make it ${" + key + "} to "
                                     "have it generated on the site)")

    # -- whole release --------------------------------------------------------------------------

    def _overlay_changes(self) -> None:
        original = self.app.original.get("services") or {}
        derived = self.app.document.get("services") or {}
        for name in original:
            if name not in derived:
                self.result.changes.setdefault(name, []).append("overlay: service left out")
        for name, service in derived.items():
            changes = self.result.changes.setdefault(name, [])
            before = original.get(name)
            if before is None:
                changes.append("overlay: service added")
                continue
            for key in sorted(set(before) | set(service), key=lambda k: (k not in before, str(k))):
                if key not in service:
                    changes.append(f"overlay: {key} removed")
                elif key not in before:
                    changes.append(f"overlay: {key} added: {_short(service[key])}")
                elif before[key] != service[key]:
                    changes.append(f"overlay: {key}: {_short(before[key])} -> {_short(service[key])}")

    def _check_plan_covers(self, services: dict[str, Any]) -> None:
        """Every manifest source must be a compose service or named by a runtime/alias; else it is dead weight."""
        used = {entry.of for entry in self.plan.of_kind("alias", "runtime")}
        for entry in self.plan.of_kind("source"):
            if entry.service not in services and entry.service not in used:
                self.warnings.append(f"{self.plan.manifest.path}: {entry.key}: {entry.service} is not a service of "
                                     f"{self.app.compose_path.name}; its image is shipped but nothing starts it")

    def _variables(self, document: dict[str, Any]) -> None:
        manifest, app = self.plan.manifest, self.app
        found: dict[str, list] = {}
        for text in strings_in(document):
            try:
                for reference in references(text):
                    found.setdefault(reference.name, []).append(reference)
            except InterpolationError as exc:
                self.problems.append(f"{app.compose_path}: {exc}")
        self.result.variables_used = sorted(found)
        names = list(self.env) + [n for n in found if n not in self.env]
        names += [n for n in list(manifest.variables) + list(manifest.secrets) if n not in names]
        for name in names:
            entry = self.env.get(name)
            refs = found.get(name, [])
            if name in manifest.secrets:
                self.result.secrets[name] = manifest.secrets[name]
            elif name not in manifest.variables and secret_like(name, entry):
                self.result.secrets[name] = secret_spec(name, entry)
            else:
                self.result.variables[name] = _variable(name, entry, refs, manifest.variables.get(name))
        for endpoint in manifest.endpoints:
            for reference in references(endpoint["url"]):
                if reference.name not in self.result.variables:
                    self.problems.append(f"{manifest.path}: endpoints: ${{{reference.name}}} in {endpoint['url']} is not a "
                                         "site variable (secrets never appear in URLs)")


def _is_instance_of(path: Path, template: Path) -> bool:
    """``.env.prod`` is the site's instance of ``.env.prod.example`` (or .sample, .template, .dist)."""
    return path.parent.resolve() == template.parent.resolve() and any(
        template.name == path.name + suffix for suffix in (".example", ".sample", ".template", ".dist", "-example"))


def secret_like(name: str, entry: Optional[EnvEntry]) -> bool:
    """A site setting generated on the site: built from no other value, and a secret-looking name or a placeholder."""
    if entry is not None and entry.expands:
        return False  # filled in from other values on the site
    value = entry.value if entry is not None else None
    if value is not None and PLACEHOLDER.match(value):
        return True
    return bool(SECRET_NAME.search(name)) and value != ""


def secret_spec(name: str, entry: Optional[EnvEntry]) -> SecretSpec:
    """Length and alphabet of a generated secret: like a hex example value, else 32 letters and digits."""
    value = entry.value if entry is not None else ""
    if _HEX.match(value):
        return SecretSpec(name, max(8, min(256, len(value))), "hex")
    return SecretSpec(name, 32, "alnum")


def _variable(name: str, entry: Optional[EnvEntry], refs: list, declared: Optional[SiteVariable]) -> SiteVariable:
    template = entry.value if entry is not None and entry.expands else None
    default: Optional[str] = None
    if declared is not None and declared.default is not None:
        default = declared.default
    elif entry is not None and not entry.expands:
        default = entry.value
    else:
        default = next((r.default for r in refs if r.default is not None and "$" not in r.default), None)
    required = default is None and template is None and any(r.required for r in refs)
    return SiteVariable(name=name, default=default if default is not None else "",
                        pattern=declared.pattern if declared else None,
                        description=declared.description if declared else "",
                        template=None if declared is not None and declared.default is not None else template,
                        required=required)


def _is_oneshot(name: str, services: dict[str, Any]) -> bool:
    """A service others wait on to complete, or one written never to restart: the installer waits for its exit 0."""
    if str(services[name].get("restart", "")).lower() in ("no", "false"):
        return True
    for other in services.values():
        depends = other.get("depends_on")
        if isinstance(depends, dict) and isinstance(depends.get(name), dict) \
                and depends[name].get("condition") == "service_completed_successfully":
            return True
    return False


def _bind_sources(volumes: Any) -> Iterator[tuple[str, str, bool]]:
    """(host source, container target, read-only) of each bind mount; named volumes are skipped."""
    for entry in volumes if isinstance(volumes, list) else []:
        if isinstance(entry, str):
            parts = entry.split(":")
            source = parts[0]
            if len(parts) >= 2 and source.startswith((".", "/", "~")):
                yield source, parts[1], len(parts) >= 3 and "ro" in parts[2].split(",")
        elif isinstance(entry, dict) and entry.get("type") == "bind" and isinstance(entry.get("source"), str):
            yield entry["source"], str(entry.get("target", "")), bool(entry.get("read_only"))


def _pairs(environment: Any) -> list[tuple[str, Any]]:
    if isinstance(environment, dict):
        return [(str(k), v) for k, v in environment.items()]
    if isinstance(environment, list):
        return [(str(item).partition("=")[0], str(item).partition("=")[2] or None) for item in environment]
    return []


def _port_text(spec: Any) -> str:
    if isinstance(spec, dict):
        published = spec.get("published")
        target = spec.get("target")
        protocol = spec.get("protocol")
        text = f"{published}:{target}" if published is not None else str(target)
        return f"{text}/{protocol}" if protocol else text
    return str(spec)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True, width=4096).strip()
    return text if len(text) <= 120 else text[:117] + "..."
