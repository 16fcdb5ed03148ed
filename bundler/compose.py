"""Render the production compose config from the release's jinja2 template, then check it.

The rendered file is what the site runs: every image is a site name from the
plan, no service has a ``build:`` section, every ``${VAR}`` is a declared site
variable or secret, no secret is written in as a literal, and every file a
service bind-mounts from the release is shipped. The YAML is dumped by a YAML
library (never edited as text) and parsed back to prove it round-trips.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import jinja2
import yaml

from .plan import Plan

FILES_DIR = "files"
_REFERENCE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<modifier>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
_SECRETISH = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|CRYPT_KEY|ACCESS_KEY|PRIVATE_KEY)", re.I)


class ComposeError(ValueError):
    """The template or its rendered result is not a valid production config."""


@dataclass
class RenderedCompose:
    """The production compose config and what the installer needs to know about it."""

    text: str
    services: list[str]
    oneshot: list[str]
    healthchecked: list[str]
    ports: list[dict[str, str]]
    files: list[str]
    host_mounts: list[str]
    variables_used: list[str] = field(default_factory=list)


def render_compose(plan: Plan) -> RenderedCompose:
    """Render the plan's compose template and check the result; raise ComposeError."""
    manifest = plan.manifest
    template_path = manifest.compose_template
    text = _render_template(plan, template_path)
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ComposeError(f"{template_path}: the rendered template is not valid YAML (rendered{where}: {getattr(exc, 'problem', exc)})") from None
    if not isinstance(document, dict) or not isinstance(document.get("services"), dict) or not document["services"]:
        raise ComposeError(f"{template_path}: the rendered config has no `services:` mapping")
    document = {key: value for key, value in document.items() if not str(key).startswith("x-")}
    image_map = plan.image_map()
    files_dir = manifest.compose_files
    shipped = _shipped_files(files_dir) if files_dir else set()
    problems: list[str] = []
    files: set[str] = set()
    host_mounts: list[str] = []
    ports: list[dict[str, str]] = []
    for name, service in document["services"].items():
        where = f"service {name!r}"
        if not isinstance(service, dict):
            problems.append(f"{where}: expected a mapping")
            continue
        service.pop("build", None)
        image = service.get("image")
        if not isinstance(image, str):
            problems.append(f"{where}: has no `image:` (a production config cannot build)")
        elif image not in image_map:
            problems.append(f"{where}: image {image!r} is not in the release; add it to the manifest or fix the template")
        else:
            service["image"] = image_map[image]
        service.pop("pull_policy", None)
        problems.extend(_check_secrets_not_inlined(where, service.get("environment"), manifest.secrets))
        for mount in _bind_sources(service.get("volumes") or []):
            problem = _check_bind_source(where, mount, shipped, files, host_mounts)
            if problem:
                problems.append(problem)
        for spec in service.get("ports") or []:
            ports.append({"service": name, "spec": str(spec)})
    used = sorted(set(_variables(document)))
    declared = set(manifest.variables) | set(manifest.secrets)
    undeclared = [v for v in used if v not in declared]
    if undeclared:
        problems.append(
            "the config uses ${VAR} references that are neither site variables nor secrets in the manifest: "
            + ", ".join(undeclared)
        )
    if problems:
        raise ComposeError(f"{template_path}: " + "; ".join(problems))
    header = (
        f"# {manifest.name} {plan.tag}: production compose config, rendered by airgap-bundle\n"
        f"# from {template_path.name}. Values in ${{...}} come from the site's environment file.\n"
    )
    rendered = header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=4096, allow_unicode=True)
    if yaml.safe_load(rendered) != document:
        raise ComposeError(f"{template_path}: the rendered config does not read back as written")
    services = document["services"]
    return RenderedCompose(
        text=rendered,
        services=list(services),
        oneshot=[n for n, s in services.items() if str(s.get("restart", "")).lower() in ("no", "false")],
        healthchecked=[n for n, s in services.items() if isinstance(s.get("healthcheck"), dict) and not s["healthcheck"].get("disable")],
        ports=ports,
        files=sorted(files),
        host_mounts=host_mounts,
        variables_used=used,
    )


def _render_template(plan: Plan, template_path: Path) -> str:
    manifest = plan.manifest
    image_map = plan.image_map()

    def image(reference: str) -> str:
        if reference not in image_map:
            raise ComposeError(f"{template_path}: image({reference!r}) is not in the release")
        return image_map[reference]

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_path.parent)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    context = {
        "name": manifest.name,
        "tag": plan.tag,
        "version": plan.tag,
        "registry": plan.registry,
        "project": manifest.project,
        "image": image,
        "variables": {name: var.default for name, var in manifest.variables.items()},
        "secrets": sorted(manifest.secrets),
    }
    try:
        return environment.get_template(template_path.name).render(context)
    except jinja2.TemplateSyntaxError as exc:
        raise ComposeError(f"{template_path}: line {exc.lineno}: template syntax error: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        line = _template_line(exc)
        raise ComposeError(f"{template_path}:{line} undefined template variable: {exc.message}") from None


def _template_line(exc: BaseException) -> str:
    tb = exc.__traceback__
    line = ""
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(".j2"):
            line = f" line {tb.tb_lineno}:"
        tb = tb.tb_next
    return line


def _shipped_files(files_dir: Path) -> set[str]:
    return {
        PurePosixPath(FILES_DIR, path.relative_to(files_dir).as_posix()).as_posix()
        for path in files_dir.rglob("*")
        if path.is_file()
    }


def _bind_sources(volumes: list) -> Iterator[str]:
    """Host-side sources of bind mounts (named volumes are skipped)."""
    for entry in volumes:
        if isinstance(entry, str):
            source = entry.split(":", 1)[0]
            if source.startswith((".", "/", "~")):
                yield source
        elif isinstance(entry, dict) and entry.get("type") == "bind" and isinstance(entry.get("source"), str):
            yield entry["source"]


def _check_bind_source(where: str, source: str, shipped: set[str], files: set[str], host_mounts: list[str]) -> str:
    if source.startswith(("/", "~")):
        host_mounts.append(f"{where}: {source}")
        return ""
    relative = PurePosixPath(source)
    if ".." in relative.parts:
        return f"{where}: bind mount {source!r} points outside the release folder"
    path = relative.as_posix()
    if not path.startswith(f"{FILES_DIR}/"):
        return f"{where}: bind mount {source!r} must come from ./{FILES_DIR}/ (the files shipped with the release)"
    if path not in shipped:
        return f"{where}: bind mount {source!r} is not shipped: add it to the manifest's compose.files folder"
    files.add(path)
    return ""


def _check_secrets_not_inlined(where: str, environment: Any, secrets: dict) -> list[str]:
    if isinstance(environment, list):
        pairs = [tuple(item.split("=", 1)) if "=" in item else (item, None) for item in environment if isinstance(item, str)]
    elif isinstance(environment, dict):
        pairs = list(environment.items())
    else:
        return []
    problems = []
    for key, value in pairs:
        if not (key in secrets or _SECRETISH.search(str(key))):
            continue
        text = "" if value is None else str(value)
        references = [m.group("braced") or m.group("plain") for m in _REFERENCE.finditer(text)]
        if not references or not all(ref in secrets for ref in references) or _REFERENCE.sub("", text).strip():
            problems.append(
                f"{where}: environment {key} must reference a generated secret as ${{NAME}} "
                f"(a secret declared under site.secrets), not a literal or a variable"
            )
    return problems


def _variables(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _variables(key)
            yield from _variables(value)
    elif isinstance(node, list):
        for item in node:
            yield from _variables(item)
    elif isinstance(node, str):
        for match in _REFERENCE.finditer(node.replace("$$", "")):
            yield match.group("braced") or match.group("plain")
