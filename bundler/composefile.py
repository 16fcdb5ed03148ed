"""Reading an application's compose files as compose itself does.

- YAML as compose reads it (1.2 core schema: ``no``/``on`` stay strings, ``22:22``
  is not a base-60 number), anchors and ``<<:`` merge keys resolved, and every
  node a fresh object (so rewriting one service never changes another that
  shared an anchor).
- ``${VAR}`` interpolation with compose's operators (``:-``, ``-``, ``:?``, ``?``,
  ``:+``, ``+``), nested defaults and the ``$$`` escape.
- env files (``KEY=VALUE``, ``export``, quotes, comments).
- overlays merged with compose's own merge rules, ``!reset`` and ``!override``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

MAX_COMPOSE_BYTES = 4 << 20


class ComposeFileError(ValueError):
    """A compose, env or overlay file cannot be read; the message names file and place."""


# -- YAML -----------------------------------------------------------------------------------------

class _Reset:
    """``!reset``: the key is removed from what it is merged onto."""

    def __repr__(self) -> str:
        return "!reset"


RESET = _Reset()


@dataclass
class Override:
    """``!override VALUE``: VALUE replaces what it is merged onto instead of merging."""

    value: Any


class ComposeLoader(yaml.SafeLoader):
    """SafeLoader with the YAML 1.2 core schema (what compose's Go parser uses)."""


ComposeLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int",
                                                                     "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp")]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}
ComposeLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                    list("tTfF"))
ComposeLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                                    list("-+0123456789"))
ComposeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    if text.startswith("0o"):
        return int(text[2:], 8)
    return int(text, 0) if text.startswith("0x") else int(text, 10)


ComposeLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


class OverlayLoader(ComposeLoader):
    """ComposeLoader that also knows compose's ``!reset`` and ``!override`` tags."""


OverlayLoader.add_constructor("!reset", lambda loader, node: RESET)


def _construct_override(loader: yaml.SafeLoader, node: yaml.Node) -> Override:
    if isinstance(node, yaml.MappingNode):
        return Override(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Override(loader.construct_sequence(node, deep=True))
    return Override(loader.construct_scalar(node))


OverlayLoader.add_constructor("!override", _construct_override)


class ComposeDumper(yaml.SafeDumper):
    """SafeDumper that never writes anchors: each service is written out in full."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(document: Any) -> str:
    """Block-style YAML in the document's own key order."""
    return yaml.dump(document, Dumper=ComposeDumper, sort_keys=False, default_flow_style=False, width=4096,
                     allow_unicode=True)


def load_yaml(path: Path, *, overlay: bool = False, what: str = "compose file") -> Any:
    """Read ``path`` as compose does; ComposeFileError naming the file, line and problem."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_COMPOSE_BYTES + 1)
    except FileNotFoundError:
        raise ComposeFileError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise ComposeFileError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    if len(data) > MAX_COMPOSE_BYTES:
        raise ComposeFileError(f"{path}: larger than {MAX_COMPOSE_BYTES >> 20} MiB; not a {what}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ComposeFileError(f"{path}: not UTF-8 text; not a {what}") from None
    try:
        document = yaml.load(text, Loader=OverlayLoader if overlay else ComposeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ComposeFileError(f"{path}: not valid YAML: {where}{getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise ComposeFileError(f"{path}: nested too deeply") from None
    return fresh_copy(document)


def fresh_copy(node: Any, depth: int = 0) -> Any:
    """A copy in which no two places share an object (anchors become independent copies)."""
    if depth > 100:
        raise ComposeFileError("the document is nested more than 100 levels deep")
    if isinstance(node, dict):
        return {key: fresh_copy(value, depth + 1) for key, value in node.items()}
    if isinstance(node, list):
        return [fresh_copy(value, depth + 1) for value in node]
    if isinstance(node, Override):
        return Override(fresh_copy(node.value, depth + 1))
    return node


# -- interpolation: installer/interpolation.py (the installer resolves site values with it too) --

from installer.interpolation import NAME as _NAME  # noqa: E402
from installer.interpolation import InterpolationError, Reference, interpolate, references  # noqa: E402,F401


def strings_in(node: Any) -> Iterator[str]:
    """Every string (keys and values) in a YAML document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from strings_in(key)
            yield from strings_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings_in(item)
    elif isinstance(node, str):
        yield node


# -- env files ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EnvEntry:
    """One ``KEY=VALUE`` of an env file; ``expands`` when the value refers to other variables."""

    name: str
    value: str
    expands: bool
    line: int


def read_env_file(path: Path) -> dict[str, EnvEntry]:
    """Parse an env file as compose does; ComposeFileError naming file and line."""
    path = Path(path)
    try:
        data = path.read_bytes()[: MAX_COMPOSE_BYTES + 1]
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise ComposeFileError(f"{path}: no such env file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ComposeFileError(f"{path}: cannot read the env file ({exc})") from None
    if len(data) > MAX_COMPOSE_BYTES:
        raise ComposeFileError(f"{path}: larger than {MAX_COMPOSE_BYTES >> 20} MiB; not an env file")
    entries: dict[str, EnvEntry] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not _NAME.fullmatch(name):
            raise ComposeFileError(f"{path}: line {number}: expected KEY=VALUE, got {raw.strip()[:60]!r}")
        if not sep:
            continue  # a bare KEY passes the shell's value through; nothing to default
        value = value.strip()
        expands = True
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            expands = value[0] == '"'
            value = value[1:-1]
            if expands:
                value = value.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
        else:
            comment = re.search(r"\s#", value)
            if comment:
                value = value[: comment.start()].rstrip()
        has_reference = expands and bool(references(value)) if "$" in value else False
        entries[name] = EnvEntry(name, value, has_reference, number)
    return entries


# -- compose merge rules --------------------------------------------------------------------------

# Sequences compose appends (keeping unique entries); others are replaced.
_APPENDED = {"ports", "expose", "external_links", "dns", "dns_search", "dns_opt", "tmpfs", "extra_hosts", "cap_add",
             "cap_drop", "security_opt", "group_add", "devices", "volumes_from", "profiles", "env_file", "configs",
             "secrets", "links"}
# Sequences compose merges by a key (mappings of KEY=VALUE, or entries by their target).
_BY_KEY = {"environment", "labels", "annotations", "sysctls"}
_REPLACED = {"command", "entrypoint", "test", "image", "build"}


def merge_compose(base: Any, overlay: Any, path: tuple[str, ...] = ()) -> Any:
    """``overlay`` merged onto ``base`` by compose's rules (``docker compose -f base -f overlay``).

    Mappings merge key by key; ``environment``/``labels`` merge by name whichever
    syntax each side uses; ``volumes`` merge by container path; ``ports``,
    ``expose`` and other lists append what is new; ``command``, ``entrypoint``
    and healthcheck ``test`` are replaced; ``!reset`` removes, ``!override`` replaces.
    """
    if isinstance(overlay, Override):
        return fresh_copy(overlay.value)
    key = path[-1] if path else ""
    if isinstance(base, dict) and isinstance(overlay, dict) and key not in _REPLACED:
        result = dict(base)
        for name, value in overlay.items():
            if value is RESET:
                result.pop(name, None)
            elif name in result:
                result[name] = merge_compose(result[name], value, path + (str(name),))
            else:
                result[name] = _strip_tags(value)
        return result
    in_service = len(path) == 3 and path[0] == "services"
    if in_service and key in _BY_KEY and isinstance(base, (dict, list)) and isinstance(overlay, (dict, list)):
        merged = dict(_as_mapping(base))
        merged.update(_as_mapping(_strip_tags(overlay)))
        return merged
    if in_service and key == "volumes" and isinstance(base, list) and isinstance(overlay, list):
        by_target: dict[str, Any] = {}
        for entry in base + _strip_tags(overlay):
            by_target[_volume_target(entry)] = entry
        return list(by_target.values())
    if in_service and key in _APPENDED and isinstance(base, list) and isinstance(overlay, list):
        result = list(base)
        for entry in _strip_tags(overlay):
            if entry not in result:
                result.append(entry)
        return result
    return _strip_tags(overlay)


def _strip_tags(node: Any) -> Any:
    if isinstance(node, Override):
        return _strip_tags(node.value)
    if isinstance(node, dict):
        return {key: _strip_tags(value) for key, value in node.items() if value is not RESET}
    if isinstance(node, list):
        return [_strip_tags(item) for item in node if item is not RESET]
    return node


def _as_mapping(node: Any) -> dict[str, Any]:
    if isinstance(node, dict):
        return dict(node)
    result: dict[str, Any] = {}
    for item in node:
        name, sep, value = str(item).partition("=")
        result[name] = value if sep else None
    return result


def _volume_target(entry: Any) -> str:
    if isinstance(entry, dict):
        return str(entry.get("target", entry))
    parts = str(entry).split(":")
    return parts[1] if len(parts) >= 2 else parts[0]
