"""Host paths the stack bind-mounts: checked before anything changes, the Docker socket mapped to the engine's.

The signed header's ``release.host_mounts`` lists every bind mount of an absolute
(or ``~``) host path. A missing bind source is created by the engine as an empty
folder; at ``/var/run/docker.sock`` that folder later stops ``dockerd`` from starting
("can't create unix socket /var/run/docker.sock: is a directory"). So each source
must exist with the expected type, and a mount of the Docker socket is pointed at
the socket of the engine the stack is installed to (DOCKER_HOST, default
``/var/run/docker.sock``). The mapping is a compose override written into the
release folder at every bring-up (``docker-compose.site.yml``; not part of the
signed release): compose merges ``volumes`` by container target path, v1 and v2 alike.
"""
from __future__ import annotations

import os
import pwd
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from .archive import BundleHeader
from .archive.release import HostMount
from .site import fill_template

SITE_OVERRIDE = "docker-compose.site.yml"
DEFAULT_ENGINE_SOCKET = "/var/run/docker.sock"
_OVERRIDE_NOTE = ("# Written by airgap-install at every bring-up (not part of the signed release): host paths as\n"
                  "# this host resolves them; a mount of the Docker socket gets the socket of the engine in use.\n")


class HostPathError(Exception):
    """A host path the stack mounts is unusable here; ``fix`` says what to do."""

    def __init__(self, message: str, fix: str):
        super().__init__(message)
        self.fix = fix


def host_mounts(header: BundleHeader, values: Mapping[str, str]) -> list[HostMount]:
    """The release's host bind mounts, with the site's values filled in where a path names ``${VAR}``."""
    return [
        replace(entry, source=fill_template(entry.source, dict(values)), target=fill_template(entry.target, dict(values)))
        for entry in header.spec.host_mounts  # older headers' "service: path" strings are left out by the spec
    ]


def is_docker_socket(source: str) -> bool:
    """True for a mount of a Docker engine's socket (``/var/run/docker.sock``, ``/run/docker.sock``, ``*docker.sock``)."""
    return source.rstrip("/").endswith("docker.sock")


def engine_socket(docker_host: str) -> str:
    """The path of the engine's unix socket from a DOCKER_HOST value; HostPathError when it is not ``unix://``."""
    if not docker_host:
        return DEFAULT_ENGINE_SOCKET
    if not docker_host.startswith("unix://"):
        raise HostPathError(
            f"DOCKER_HOST={docker_host} is not a unix socket: a container cannot be handed a remote engine's socket",
            "run the installer on the engine's own host with DOCKER_HOST=unix:///PATH/docker.sock (or unset for "
            f"{DEFAULT_ENGINE_SOCKET}), or drop the mount in the release's overlay",
        )
    return os.path.abspath(docker_host[len("unix://"):])


def host_source(mount: HostMount, docker_host: str) -> str:
    """The path on this host that ``mount`` binds: the engine's socket for a Docker socket, ``~`` expanded.

    ``~`` is the home of the user the installer runs as (root's, as installs run), the
    one compose would use; ``~user`` is refused.
    """
    if is_docker_socket(mount.source):
        try:
            return engine_socket(docker_host)
        except HostPathError as exc:
            raise HostPathError(f"{mount.service} mounts the Docker socket {mount.source}, but {exc}", exc.fix) from None
    if mount.source == "~" or mount.source.startswith("~/"):
        return pwd.getpwuid(os.geteuid()).pw_dir + mount.source[1:]
    if mount.source.startswith("~"):
        raise HostPathError(f"{mount.service} bind-mounts {mount.source}: only ~ (the installing user's home) is "
                            "expanded here", f"write the path out in full in the release's overlay for {mount.service}")
    return mount.source


def check_mount(mount: HostMount, docker_host: str) -> str:
    """Check that ``mount``'s host path exists with the expected type; say what it is, or raise HostPathError."""
    path = host_source(mount, docker_host)
    shown = mount.source if path == mount.source else f"{mount.source} (here {path})"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise HostPathError(f"{mount.service} bind-mounts {shown}, which cannot be read: {exc.strerror}",
                            f"make {path} readable by the installing user") from None
    if is_docker_socket(mount.source):
        if mode is not None and stat.S_ISSOCK(mode):
            return f"{mount.service} mounts {shown}: the engine's socket"
        seen = "does not exist" if mode is None else f"is a {_kind(mode)}, not a socket"
        raise HostPathError(
            f"{mount.service} mounts the Docker socket {shown}, which {seen}",
            f"start the engine on {path}, or set DOCKER_HOST=unix:///PATH to the socket of the engine in use"
            + (" (an empty folder there is what an engine listening elsewhere left behind: remove it)"
               if mode is not None and stat.S_ISDIR(mode) else ""),
        )
    if mode is None:
        raise HostPathError(f"{mount.service} bind-mounts {shown}, which does not exist on this host",
                            f"create {path} (mkdir -p for a folder), or change the release's overlay so that "
                            f"{mount.service} does not mount it")
    return f"{mount.service} mounts {shown}: {_kind(mode)}"


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    return "socket" if stat.S_ISSOCK(mode) else "special file"


def site_override(mounts: list[HostMount], docker_host: str) -> dict[str, Any]:
    """The compose override that binds each mount whose host path differs from the written one ({} when none does)."""
    services: dict[str, Any] = {}
    for mount in mounts:
        path = host_source(mount, docker_host)
        if path == mount.source:
            continue
        volumes = services.setdefault(mount.service, {"volumes": []})["volumes"]
        volumes.append({"type": "bind", "source": path, "target": mount.target, "read_only": mount.read_only})
    return {"services": services} if services else {}


def write_site_override(release: Path, header: BundleHeader, values: Mapping[str, str], docker_host: str) -> Optional[Path]:
    """Check every host mount, then write (or remove) ``release/docker-compose.site.yml``; the file, if one is needed.

    Raises HostPathError for the first unusable mount, before anything is written. An
    unchanged file is left as it is.
    """
    mounts = host_mounts(header, values)
    for mount in mounts:
        check_mount(mount, docker_host)
    path = release / SITE_OVERRIDE
    document = site_override(mounts, docker_host)
    if not document:
        if path.exists():
            path.unlink()
        return None
    text = _OVERRIDE_NOTE + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
    if not path.is_file() or path.read_text() != text:
        temporary = path.with_name(f".{path.name}.new")
        temporary.write_text(text)
        os.replace(temporary, path)
    return path
