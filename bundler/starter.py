"""A starter release manifest for any compose application (``airgap-bundle init``, ``build --compose``).

It only names and classifies what the application's files hold: images to
ship as dependencies, services built from source, variables the site sets,
and secrets the site generates. Defaults and build details stay in the
application's own files and are read from there at every build.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import yaml

from .application import DEFAULT_ENV_FILE
from .compose import SECRET_NAME, secret_like, secret_spec
from .composefile import ComposeFileError, EnvEntry, InterpolationError, interpolate, load_yaml, read_env_file, references, strings_in
from .manifest import API_VERSION, ReleaseManifest, manifest_from_data
from .refs import ReferenceError_, normalise, parse_ref

_BUNDLE_NAME = re.compile(r"[^a-z0-9_.-]+")


def bundle_name_for(compose_path: Path) -> str:
    """The compose project name compose itself would pick: the folder's name, lower-cased."""
    name = _BUNDLE_NAME.sub("", Path(compose_path).resolve().parent.name.lower()).strip("._-")
    return name or "app"


def starter_manifest(compose_path: Path, *, source_dir: Optional[Path] = None, name: Optional[str] = None,
                     version: str = "v0.1.0", registry: str = "", env_file: Optional[Path] = None) -> dict[str, Any]:
    """The manifest (as data) for the compose file at ``compose_path``; ComposeFileError if it is unusable."""
    compose_path = Path(compose_path).resolve()
    root = Path(source_dir).resolve() if source_dir else compose_path.parent
    if root != compose_path.parent and root not in compose_path.parents:
        raise ComposeFileError(f"{compose_path}: not inside --source {root}")
    document = load_yaml(compose_path)
    services = document.get("services") if isinstance(document, dict) else None
    if not isinstance(services, dict) or not services:
        raise ComposeFileError(f"{compose_path}: no `services:` mapping; is this a compose file?")
    if env_file is None and (compose_path.parent / DEFAULT_ENV_FILE).is_file():
        env_file = compose_path.parent / DEFAULT_ENV_FILE
    env: dict[str, EnvEntry] = read_env_file(env_file) if env_file else {}
    defaults = {e.name: e.value for e in env.values() if not e.expands}

    dependencies: list[str] = []
    seen: set[str] = set()
    sources: dict[str, dict] = {}
    for service, definition in services.items():
        if not isinstance(definition, dict):
            raise ComposeFileError(f"{compose_path}: services.{service}: expected a mapping")
        if definition.get("build") is not None:
            sources[service] = {}
            continue
        image = definition.get("image")
        if image is None:
            raise ComposeFileError(f"{compose_path}: services.{service}: has neither image: nor build:")
        try:
            reference = interpolate(str(image), defaults)
            canonical = normalise(reference)
        except (InterpolationError, ReferenceError_) as exc:
            raise ComposeFileError(f"{compose_path}: services.{service}.image: {exc}") from None
        if canonical not in seen:
            seen.add(canonical)
            dependencies.append(reference if parse_ref(reference).tag or parse_ref(reference).digest else f"{reference}:latest")

    referenced: list[str] = []
    at_site = {**document, "services": {n: {k: v for k, v in d.items() if k not in ("image", "build")}
                                        for n, d in services.items()}}
    for text in strings_in(at_site):  # image: and build: are settled at build time, never on the site
        for reference in references(text):
            if reference.name not in referenced:
                referenced.append(reference.name)
    variables: dict[str, dict] = {}
    secrets: dict[str, dict] = {}
    for variable in list(env) + [n for n in referenced if n not in env]:
        entry = env.get(variable)
        if secret_like(variable, entry):
            spec = secret_spec(variable, entry)
            secrets[variable] = {"length": spec.length, "alphabet": spec.alphabet}
        else:
            variables[variable] = {}
    name = name or bundle_name_for(compose_path)
    compose: dict[str, Any] = {"file": compose_path.relative_to(root).as_posix()}
    if env_file is not None:
        env_path = Path(env_file).resolve()
        if root != env_path.parent and root not in env_path.parents:
            raise ComposeFileError(f"{env_file}: not inside --source {root}")
        compose["env_file"] = env_path.relative_to(root).as_posix()
    return {
        "apiVersion": API_VERSION,
        "bundle": {"name": name, "version": version, "project": name},
        "naming": {"registry": registry} if registry else {},
        "dependencies": dependencies,
        "sources": sources,
        "compose": compose,
        "site": {"variables": variables, "secrets": secrets},
    }


def manifest_for_compose(compose_path: Path, *, source_dir: Optional[Path], name: Optional[str], version: str,
                         registry: str) -> ReleaseManifest:
    """``build --compose``: the starter manifest, checked, with the compose file standing in for the manifest file."""
    data = starter_manifest(compose_path, source_dir=source_dir, name=name, version=version, registry=registry)
    return manifest_from_data(data, Path(compose_path).resolve())


def manifest_text(data: dict[str, Any], compose_path: Path) -> str:
    """The starter manifest as commented YAML for ``init``."""

    def block(key: str) -> str:
        return yaml.safe_dump({key: data[key]}, sort_keys=False, default_flow_style=False, width=4096) if data.get(key) \
            else f"{key}: {{}}\n"

    sections = [
        f"# Release manifest written by `airgap-bundle init` from {compose_path.name}.\n"
        "# The compose file stays the truth: images, builds, volumes and defaults are read from it\n"
        "# (and its env file) at every build. This file says only what the compose file cannot.\n",
        f"apiVersion: {data['apiVersion']}\n",
        "\n# The release: its name (archive NAME-VERSION.tar.zst), version and compose project name on the site.\n" + block("bundle"),
        "\n# Site names: REGISTRY/NAME:TAG (NAME = the image repository's last part).\n" + block("naming"),
        "\n# Images the compose file runs as they are, pulled and shipped (add any the stack starts at run time).\n"
        + block("dependencies"),
        "\n# Services built from the source tree; context, dockerfile, target and args come from their build:\n"
        "# sections. Override any of them here, e.g.  api: {args: {VERSION: \"{tag}\"}}\n" + block("sources"),
        "\n# Where the application's compose file and env file are, inside --source.\n"
        "# Add `overlay: FILE` (beside this manifest) for what production changes, by compose's merge rules.\n"
        + block("compose"),
        "\n# Site settings. Variables take their defaults from the env file (or the compose default); give\n"
        "# `pattern:` or `description:` to guard and explain them. Secrets are generated on the site,\n"
        f"# never shipped (found by their names, like {SECRET_NAME.pattern}, or placeholder values).\n"
        + yaml.safe_dump({"site": data["site"]}, sort_keys=False, default_flow_style=False, width=4096),
    ]
    return "".join(sections)
