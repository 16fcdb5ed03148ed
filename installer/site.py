"""The site's install directory (PREFIX): releases, the active-release pointer, the environment file.

    PREFIX/releases/<version>/   docker-compose.yml, files/, bundle.json (the signed header)
    PREFIX/current -> releases/<version>
    PREFIX/previous -> releases/<older version>   (after an upgrade)
    PREFIX/site.env              variables and secrets (mode 0600), kept across installs; each
                                 env_file: of the compose config is written from it (0600)
    PREFIX/data/<path>           folders the stack bind-mounts read-write, kept across releases
    PREFIX/history               versions activated, oldest first; rollback pops the last
    PREFIX/last-healthy          the version last seen healthy (where a failed upgrade returns)

Every write goes to a temporary name first and is renamed into place.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets as secret_source
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from .archive import HEADER_NAME, RELEASE_DIR, BundleHeader, FramedArchiveReader
from .archive.reader import ArchiveSource

ENV_FILE = "site.env"
DATA = "data"
RELEASES = "releases"
CURRENT = "current"
PREVIOUS = "previous"
HISTORY = "history"
LAST_HEALTHY = "last-healthy"
ALPHABETS = {
    "alnum": "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
    "hex": "0123456789abcdef",
}
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f$'\"`\\#]")
_SAFE_VERSION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class SiteError(ValueError):
    """A site setting is wrong, or the install directory is unusable."""


@dataclass
class SiteEnv:
    """The site's variables and secrets, and which secrets were generated just now."""

    values: dict[str, str]
    generated: list[str]
    changed: bool


def default_prefix(header: BundleHeader) -> Path:
    """``/opt/<bundle name>``."""
    return Path("/opt") / header.name


def parse_sets(items: Iterable[str]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` → dict; SiteError naming a malformed item."""
    result: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key):  # the value is never shown: it may be a secret
            given = f"--set {key!r}=..." if sep else "a --set without '='"
            raise SiteError(f"{given}: expected KEY=VALUE with an upper-case KEY, e.g. --set HTTP_PORT=8081")
        result[key] = value
    return result


def read_env(path: Path, warn: Optional[Callable[[str], None]] = None, *, fix_mode: bool = True) -> dict[str, str]:
    """Read a KEY=VALUE file (blank lines and # comments ignored; lines end at ``\\n`` only).

    The file holds secrets: one readable by others (restored from a backup at 0644, say)
    is made 0600 again at once, saying so through ``warn`` (default: stderr). Checks that
    must change nothing (preflight, before the archive is verified) pass ``fix_mode=False``.
    """
    values: dict[str, str] = {}
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return values
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SiteError(f"{path} is a symlink; the site's secrets must be in a plain file there, not a symlink "
                            "(replace the link with the file it points to)") from None
        raise SiteError(f"{path}: cannot read it ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        _make_private(handle.fileno(), path, warn, fix=fix_mode)
        data = handle.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SiteError(f"{path}: not UTF-8 text; fix or remove it") from None
    for number, line in enumerate(text.split("\n"), 1):
        line = line[:-1] if line.endswith("\r") else line
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise SiteError(f"{path}: line {number} is not KEY=VALUE; fix or remove it")
        values[key.strip()] = value
    return values


def _make_private(fd: int, path: Path, warn: Optional[Callable[[str], None]], fix: bool = True) -> None:
    """Mode 0600 on the open file, warning when it was wider; SiteError if it is not a plain file or cannot be.

    Without ``fix`` (a check that must change nothing) a wider mode is only warned about.
    """
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise SiteError(f"{path}: not a plain file; it must be the site's KEY=VALUE file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077 == 0:
        return
    if not fix:
        (warn or _warn_on_stderr)(f"WARNING: {path} holds the site's secrets and is mode {mode:04o}, readable by "
                                  f"others; the install makes it 0600 (or run: chmod 600 {path})")
        return
    try:
        os.fchmod(fd, 0o600)
    except OSError as exc:
        raise SiteError(f"{path} holds the site's secrets and is readable by others (mode {mode:04o}), and it cannot "
                        f"be made private ({exc.strerror}); run: chmod 600 {path}") from None
    (warn or _warn_on_stderr)(f"WARNING: {path} holds the site's secrets and was mode {mode:04o}; it is 0600 again")


def _warn_on_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def resolve_env(header: BundleHeader, existing: dict[str, str], sets: dict[str, str]) -> SiteEnv:
    """Merge defaults, what the site already has and ``--set``; generate missing secrets.

    Secrets already in the site file are kept (a re-install never rotates
    them); ``--set`` may override a variable or a secret; every value is checked.
    """
    variables = header.spec.variables
    secret_specs = header.spec.secrets
    known = set(variables) | set(secret_specs)
    unknown = sorted(set(sets) - known)
    if unknown:
        raise SiteError(f"--set {unknown[0]}: not a variable of {header.name} (known: {', '.join(sorted(known))})")
    values: dict[str, str] = {}
    templates = {}
    for name, spec in variables.items():
        if spec.template and name not in sets:
            templates[name] = spec.template
            continue
        values[name] = sets.get(name, existing.get(name, spec.default))
        if spec.required and not values[name]:
            raise SiteError(f"{name}: {header.name} needs a value for it; give one with --set {name}=VALUE")
        _check_value(name, values[name], spec.pattern, show=not spec.template)
    generated = []
    for name, spec in secret_specs.items():
        if name in sets:
            values[name] = sets[name]
        elif existing.get(name):
            values[name] = existing[name]
        else:
            alphabet = ALPHABETS.get(spec.alphabet, ALPHABETS["alnum"])
            values[name] = "".join(secret_source.choice(alphabet) for _ in range(spec.length))
            generated.append(name)
        _check_value(name, values[name], None)
    for name, template in templates.items():  # e.g. DATABASE_URL from the user, password and host above
        values[name] = fill_template(template, values)
        _check_value(name, values[name], variables[name].pattern)
    ordered = {name: values[name] for name in list(variables) + list(secret_specs) if name in values}
    for name, value in existing.items():
        if name not in ordered:  # kept from an earlier release
            _check_value(name, value, None, fix=f"fix or remove its line in {ENV_FILE}")
            ordered[name] = value
    return SiteEnv(values=ordered, generated=generated, changed=ordered != existing)


_TEMPLATE_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def fill_template(template: str, values: dict[str, str]) -> str:
    """``postgresql://${POSTGRES_USER}:...`` with the site's values (``${X:-d}`` takes d when X is empty)."""

    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(3)
        value = values.get(name, "")
        return value if value or match.group(2) is None else match.group(2)

    return _TEMPLATE_REFERENCE.sub(replace, template.replace("$$", "\0")).replace("\0", "$")


def _check_value(name: str, value: str, pattern: Optional[str], *, show: bool = False, fix: str = "") -> None:
    """SiteError naming ``name`` if the value cannot go into the environment file, or misses ``pattern``.

    Only printable characters pass (no line separator of any kind: the file is read back
    line by line). The value itself is shown only with ``show`` (a plain variable's, on a
    pattern mismatch), never a secret's or a value built from others.
    """
    fix = fix or f"give another value with --set {name}=VALUE"
    if _FORBIDDEN.search(value) or not value.isprintable():
        raise SiteError(f"{name}: the value contains a character the environment file cannot hold safely "
                        f"($, quotes, backslash, #, or a control, line-breaking or other non-printable character); {fix}")
    if pattern and not re.fullmatch(pattern, value):
        shown = repr(value) if show else "the value"
        raise SiteError(f"{name}: {shown} does not match the pattern {pattern!r}; {fix}")


def write_env(path: Path, env: SiteEnv, header: BundleHeader) -> None:
    """Write the environment file atomically with mode 0600 (every value checked: one line each)."""
    for key, value in env.values.items():
        _check_value(key, value, None)
    lines = [f"# {header.name} site settings; secrets were generated on this host. Keep this file private.\n"]
    lines += [f"{key}={value}\n" for key, value in env.values.items()]
    _atomic_write(path, "".join(lines).encode(), mode=0o600)


def release_dir(prefix: Path, version: str) -> Path:
    """``PREFIX/releases/<version>``."""
    if not _SAFE_VERSION.match(version):
        raise SiteError(f"bundle version {version!r} is not usable as a folder name")
    return prefix / RELEASES / version


def write_release(prefix: Path, archive: ArchiveSource, header: BundleHeader, header_bytes: bytes) -> Path:
    """Unpack the release files (compose config, shipped files, the signed header) into their folder.

    ``archive`` is the verified archive, held open; each file is checked against
    the signed header's sha256 as it is written, a member met twice or not listed
    is refused, and the folder is staged beside the final one and renamed into
    place only when complete, so a folder under ``releases/`` is always whole and genuine.
    An identical existing folder is kept.
    """
    target = release_dir(prefix, header.version)
    if target.is_dir() and (target / HEADER_NAME).is_file() and (target / HEADER_NAME).read_bytes() == header_bytes:
        return target
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    expected = {m.path: m for m in header.members if m.path.startswith(RELEASE_DIR + "/")}
    written: set[str] = set()
    with FramedArchiveReader(archive) as reader:  # steps over the images without decompressing them
        for member in reader.members():
            if not member.name.startswith(RELEASE_DIR + "/"):
                continue
            record = expected.get(member.name)
            if record is None or member.name in written:
                shutil.rmtree(staging, ignore_errors=True)
                raise SiteError(f"release member {member.name!r} is " + ("duplicated" if record else "not in the signed header")
                                + "; the archive changed after verification, nothing was installed")
            relative = Path(member.name[len(RELEASE_DIR) + 1:])
            destination = (staging / relative).resolve()
            if staging.resolve() not in destination.parents:
                raise SiteError(f"release member {member.name!r} points outside the release folder")
            destination.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with open(destination, "wb") as handle:
                for chunk in member.chunks():
                    digest.update(chunk)
                    handle.write(chunk)
            if digest.hexdigest() != record.sha256:
                shutil.rmtree(staging, ignore_errors=True)
                raise SiteError(f"release member {member.name!r} does not match the signed header; the archive changed "
                                "after verification, nothing was installed")
            written.add(member.name)
            if relative.suffix == ".sh":
                destination.chmod(0o755)
    missing = sorted(set(expected) - written)
    if missing:
        shutil.rmtree(staging, ignore_errors=True)
        raise SiteError(f"release member(s) missing from the archive: {', '.join(missing[:3])}; nothing was installed")
    (staging / HEADER_NAME).write_bytes(header_bytes)
    _link_site_paths(prefix, staging, header)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


def _inside(folder: Path, relative: str) -> Path:
    """``folder/relative``, refused if it would leave ``folder``."""
    where = folder / relative
    if Path(relative).is_absolute() or ".." in Path(relative).parts or folder.resolve() not in where.parent.resolve().parents \
            and where.parent.resolve() != folder.resolve():
        raise SiteError(f"release path {relative!r} points outside {folder}")
    return where


def _link_site_paths(prefix: Path, staging: Path, header: BundleHeader) -> None:
    """Point the compose config's read-write folders at PREFIX/data, where they outlive releases.

    A data folder is seeded from the release's copy the first time; after that the
    site's own content is kept, whatever later releases ship.
    """
    for relative in header.spec.state_dirs:
        where = _inside(staging, relative)
        target = _inside(prefix / DATA, relative)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            if where.is_dir() and not where.is_symlink():
                shutil.copytree(where, target, symlinks=False)
            else:
                target.mkdir()
        if where.is_dir() and not where.is_symlink():
            shutil.rmtree(where)
        elif where.is_symlink() or where.exists():
            where.unlink()
        where.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target.resolve(), where)


def write_env_files(release: Path, env_files: dict[str, list[str]], values: dict[str, str]) -> None:
    """Write each ``env_file:`` of the compose config with the site's values of its variables (mode 0600)."""
    for relative, keys in env_files.items():
        bad = [key for key in keys if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key)]
        if bad:
            raise SiteError(f"env file {relative!r}: {bad[0]!r} is not a variable name")
        where = _inside(release, relative)
        where.parent.mkdir(parents=True, exist_ok=True)
        if where.is_symlink():
            where.unlink()
        _atomic_write(where, "".join(f"{key}={values.get(key, '')}\n" for key in keys).encode(), mode=0o600)


def active_release(prefix: Path) -> Optional[Path]:
    """The folder ``PREFIX/current`` points at, if any."""
    link = prefix / CURRENT
    return link.resolve() if link.is_symlink() and link.resolve().is_dir() else None


def switch_current(prefix: Path, release: Path) -> Optional[Path]:
    """Point ``current`` at ``release`` atomically; keep the old one as ``previous``. Return the old one."""
    old = active_release(prefix)
    if old == release.resolve():
        return old
    if old is not None:
        _atomic_symlink(prefix / PREVIOUS, os.path.relpath(old, prefix))
    _atomic_symlink(prefix / CURRENT, os.path.relpath(release, prefix))
    return old


def read_history(prefix: Path) -> list[str]:
    """Versions activated on this site, oldest first."""
    path = prefix / HISTORY
    return [line.strip() for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def write_history(prefix: Path, versions: list[str]) -> None:
    """Replace the history atomically."""
    _atomic_write(prefix / HISTORY, "".join(f"{v}\n" for v in versions).encode(), mode=0o644)


def activate(prefix: Path, release: Path) -> Optional[Path]:
    """Make ``release`` the active one and record it in the history; return the one it replaced."""
    old = switch_current(prefix, release)
    history = read_history(prefix)
    if not history or history[-1] != release.name:
        write_history(prefix, history + [release.name])
    return old


def rollback_target(prefix: Path) -> Optional[Path]:
    """The release before the active one in the history, if its folder is still there."""
    history = read_history(prefix)
    current = active_release(prefix)
    if current is None:
        return None
    while history and history[-1] == current.name:
        history = history[:-1]
    for version in reversed(history):
        candidate = prefix / RELEASES / version
        if candidate.is_dir() and candidate.name != current.name:
            return candidate
    return None


def step_back(prefix: Path, target: Path) -> None:
    """Activate ``target`` and drop every history entry after it (a rollback)."""
    history = read_history(prefix)
    while history and history[-1] != target.name:
        history.pop()
    switch_current(prefix, target)
    write_history(prefix, history or [target.name])


def mark_healthy(prefix: Path, release: Path) -> None:
    """Record ``release`` as the last one seen healthy (the automatic rollback goes back to it)."""
    path = prefix / LAST_HEALTHY
    if not path.exists() or path.read_text().strip() != release.name:
        _atomic_write(path, f"{release.name}\n".encode(), mode=0o644)


def last_healthy(prefix: Path) -> Optional[Path]:
    """The release folder last seen healthy, if it still exists."""
    path = prefix / LAST_HEALTHY
    if not path.exists():
        return None
    candidate = prefix / RELEASES / path.read_text().strip()
    return candidate if candidate.is_dir() else None


def read_release_header(release: Path) -> BundleHeader:
    """The signed header kept in a release folder."""
    return BundleHeader.from_bytes((release / HEADER_NAME).read_bytes())


def _atomic_symlink(link: Path, target: str) -> None:
    temporary = link.with_name(f".{link.name}.new")
    if temporary.is_symlink() or temporary.exists():
        temporary.unlink()
    os.symlink(target, temporary)
    os.replace(temporary, link)


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
