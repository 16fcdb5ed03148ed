"""The application as its own files define it: compose file, env file, build sections, overlay.

The manifest only names these files (``compose.file``, ``compose.env_file``
inside ``--source``; ``compose.overlay`` beside the manifest). Everything the
site runs is derived from them here and in :mod:`bundler.compose`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .composefile import (ComposeFileError, EnvEntry, InterpolationError, fresh_copy, interpolate, load_yaml,
                          merge_compose, read_env_file)
from .manifest import ReleaseManifest, SourceSpec
from .refs import ReferenceError_, parse_ref

DEFAULT_ENV_FILE = ".env"


@dataclass
class Application:
    """The application's compose definition, read from ``--source``.

    ``original`` is the compose file as compose reads it (anchors and merges
    resolved); ``document`` is that with the manifest's overlay applied;
    ``env`` holds the env file's entries, the defaults for ``${VAR}``.
    """

    source_dir: Path
    compose_path: Path
    env_path: Optional[Path]
    original: dict[str, Any]
    document: dict[str, Any]
    env: dict[str, EnvEntry] = field(default_factory=dict)
    _defaults: Optional[dict[str, str]] = field(default=None, init=False, repr=False, compare=False)

    @property
    def project_dir(self) -> Path:
        """The folder compose resolves relative paths against: the compose file's own."""
        return self.compose_path.parent

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        """The services after the overlay."""
        return self.document["services"]

    def env_defaults(self) -> dict[str, str]:
        """Env file values, references among them filled in (as compose v2 reads a .env file); computed once."""
        if self._defaults is None:
            values: dict[str, str] = {}
            for entry in self.env.values():
                try:
                    values[entry.name] = interpolate(entry.value, values) if entry.expands else entry.value
                except InterpolationError:
                    values[entry.name] = entry.value
            self._defaults = values
        return dict(self._defaults)

    def image_of(self, service: str) -> Optional[str]:
        """The service's ``image:`` with the env file's values filled in (None if it has none)."""
        image = self.services[service].get("image")
        if image is None:
            return None
        try:
            return interpolate(str(image), self.env_defaults())
        except InterpolationError as exc:
            raise ComposeFileError(f"{self.compose_path}: services.{service}.image: {exc}") from None

    def where(self, service: str, key: str = "") -> str:
        """``FILE: services.NAME.KEY`` for messages."""
        return f"{self.compose_path}: services.{service}" + (f".{key}" if key else "")


def load_application(manifest: ReleaseManifest, source_dir: Path) -> Application:
    """Read the compose file, env file and overlay the manifest names; ComposeFileError if one is unusable."""
    root = Path(source_dir).resolve()
    if not root.is_dir():
        raise ComposeFileError(f"--source {source_dir}: not a folder; point it at a checkout of the application")
    compose_path = _inside(root, manifest.compose_file, "compose.file", manifest)
    original = load_yaml(compose_path)
    if not isinstance(original, dict) or not isinstance(original.get("services"), dict) or not original["services"]:
        raise ComposeFileError(f"{compose_path}: no `services:` mapping; is this a compose file?")
    for name, service in original["services"].items():
        if not isinstance(service, dict):
            raise ComposeFileError(f"{compose_path}: services.{name}: expected a mapping")
    document = fresh_copy(original)
    if manifest.compose_overlay is not None:
        overlay = load_yaml(manifest.compose_overlay, overlay=True, what="overlay")
        if not isinstance(overlay, dict):
            raise ComposeFileError(f"{manifest.compose_overlay}: expected a mapping like the compose file's (services: ...)")
        unknown = sorted(set(overlay.get("services") or {}) - set(original["services"]))
        for name in unknown:
            if not isinstance((overlay.get("services") or {}).get(name), dict) or "image" not in overlay["services"][name]:
                raise ComposeFileError(f"{manifest.compose_overlay}: services.{name}: not a service of {compose_path.name} "
                                       "(a new service in the overlay needs its own image:)")
        document = merge_compose(document, overlay)
    env_path: Optional[Path] = None
    if manifest.compose_env_file:
        env_path = _inside(root, manifest.compose_env_file, "compose.env_file", manifest)
    elif (compose_path.parent / DEFAULT_ENV_FILE).is_file():
        env_path = compose_path.parent / DEFAULT_ENV_FILE
    env = read_env_file(env_path) if env_path else {}
    return Application(source_dir=root, compose_path=compose_path, env_path=env_path, original=original,
                       document=document, env=env)


def _inside(root: Path, relative: str, key: str, manifest: ReleaseManifest) -> Path:
    candidate = (root / relative).resolve()
    if root != candidate and root not in candidate.parents:
        raise ComposeFileError(f"{manifest.path}: {key}: {relative!r} points outside --source {root}")
    if not candidate.is_file():
        raise ComposeFileError(f"{manifest.path}: {key}: {relative} does not exist in --source {root}")
    return candidate


def source_specs(manifest: ReleaseManifest, app: Application) -> list[SourceSpec]:
    """One build per service with ``build:``, the manifest's ``sources`` overriding what they say.

    A ``sources`` entry that is not a compose service is a build of its own
    (it must give context and dockerfile).
    """
    specs = []
    defaults = app.env_defaults()
    for service, definition in app.services.items():
        build = definition.get("build")
        override = manifest.source_overrides.get(service)
        if build is None and override is None:
            continue
        specs.append(_spec(manifest, app, service, build, override or {}, defaults))
    for service, override in manifest.source_overrides.items():
        if service not in app.services:
            specs.append(_spec(manifest, app, service, None, override, defaults))
    return specs


def _spec(manifest: ReleaseManifest, app: Application, service: str, build: Any, override: dict[str, Any],
          defaults: dict[str, str]) -> SourceSpec:
    key = f"sources.{service}"
    where = app.where(service, "build")
    if isinstance(build, str):
        build = {"context": build}
    if build is not None and not isinstance(build, dict):
        raise ComposeFileError(f"{where}: expected a path or a mapping")
    build = build or {}
    if not build and not {"context", "dockerfile"} <= set(override):
        raise ComposeFileError(f"{manifest.path}: {key}: {service} has no build: in {app.compose_path.name}; "
                               "give context and dockerfile")

    def filled(value: Any, field_name: str) -> str:
        try:
            return interpolate(str(value), defaults)
        except InterpolationError as exc:
            raise ComposeFileError(f"{where}.{field_name}: {exc}") from None

    project = app.project_dir
    if "context" in override:
        context = (app.source_dir / override["context"]).resolve()
    else:
        context = (project / filled(build.get("context", "."), "context")).resolve()
    if "dockerfile" in override:
        dockerfile = (app.source_dir / override["dockerfile"]).resolve()
    else:
        dockerfile = (context / filled(build.get("dockerfile", "Dockerfile"), "dockerfile")).resolve()
    for path, what in ((context, "context"), (dockerfile, "dockerfile")):
        if path != app.source_dir and app.source_dir not in path.parents:
            raise ComposeFileError(f"{where}.{what}: {path} is outside --source {app.source_dir}")
    args: dict[str, str] = {}
    raw_args = build.get("args") or {}
    if isinstance(raw_args, list):
        raw_args = dict(str(item).partition("=")[::2] for item in raw_args)
    for name, value in raw_args.items():
        if value is not None:
            args[str(name)] = filled(value, f"args.{name}")
    args.update(override.get("args", {}))
    target = override.get("target") or (filled(build["target"], "target") if build.get("target") else None)
    image = override.get("image") or _image_repository(app, service, manifest.project)
    return SourceSpec(service=service, image=image, context=context.relative_to(app.source_dir).as_posix() or ".",
                      dockerfile=dockerfile.relative_to(app.source_dir).as_posix(), target=target, args=args,
                      name=override.get("name"), key=key if service in manifest.source_overrides else app.where(service))


def _image_repository(app: Application, service: str, project: str) -> str:
    """The local name compose gives a built image: its ``image:`` without tag, else PROJECT-SERVICE."""
    image = app.image_of(service) if service in app.services else None
    if image:
        try:
            return parse_ref(image).repository
        except ReferenceError_ as exc:
            raise ComposeFileError(f"{app.where(service, 'image')}: {exc}") from None
    return f"{project}-{service}"
