"""Stand-in images: build them on the build engine, publish them under the registry's mirror path.

Every image is described by a docker.io reference and the bytes it is made
from ("inputs"). The harness state remembers, per reference, the sha256 of
those inputs and the image ID; an image is rebuilt and pushed only when the
registry lacks it or its inputs changed, so a warm ``up`` does no builds.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import docker
from docker.errors import ImageNotFound

from .procs import HarnessError
from .registry import Registry

IMAGES_DIR = Path(__file__).resolve().parents[1] / "standin" / "images"
BUSYBOX = Path("/bin/busybox")
# docker.io-style reference of the shared busybox base (kept on the build engine
# and in the registry, so a purged engine gets the very same base layers back).
BASE_REF = "harness/busybox-base:1"
# Fixed mtime for files put into build contexts: identical bytes, identical layers.
_MTIME = 1_700_000_000

# name in a build context -> (content, file mode)
Files = Mapping[str, tuple[bytes, int]]


@dataclass(frozen=True)
class Standin:
    """One upstream image replaced by a busybox stand-in."""

    ref: str
    ports: tuple[int, ...]
    paths: tuple[str, ...] = ()

    @property
    def server(self) -> bool:
        """True when the real image runs a server (so the stand-in serves HTTP)."""
        return bool(self.ports)


def load_standins() -> list[Standin]:
    """The stand-ins listed in tests/standin/images/standins.json."""
    table = json.loads((IMAGES_DIR / "standins.json").read_text())
    return [Standin(row["ref"], tuple(row["ports"]), tuple(row.get("paths", ())))
            for row in table["images"]]


def render_dockerfile(standin: Standin, base: str) -> str:
    """Dockerfile.template filled in for ``standin`` built FROM ``base``."""
    extra = "".join(f" \\\n && mkdir -p /www/{posixpath.dirname(path)} && echo ok > /www/{path}"
                    for path in standin.paths)
    ports = " ".join(str(p) for p in standin.ports)
    if standin.server:
        tail = (f"EXPOSE {ports}\n"
                'ENTRYPOINT ["standin-entrypoint"]\n'
                'CMD ["standin-serve"]')
    else:
        tail = 'CMD ["sh"]'
    text = (IMAGES_DIR / "Dockerfile.template").read_text()
    for key, value in {"BASE": base, "REF": standin.ref, "PORTS": ports,
                       "EXTRA": extra, "TAIL": tail}.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def rootfs_files() -> dict[str, tuple[bytes, int]]:
    """tests/standin/images/rootfs as build-context files (``rootfs/...``)."""
    top = IMAGES_DIR / "rootfs"
    files = {}
    for path in sorted(p for p in top.rglob("*") if p.is_file()):
        mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
        files[f"rootfs/{path.relative_to(top)}"] = (path.read_bytes(), mode)
    return files


def base_files() -> dict[str, tuple[bytes, int]]:
    """Build context of the busybox base image."""
    return {"Dockerfile": ((IMAGES_DIR / "Dockerfile.base").read_bytes(), 0o644),
            "busybox": (BUSYBOX.read_bytes(), 0o755)}


def standin_files(standin: Standin, base: str) -> dict[str, tuple[bytes, int]]:
    """Build context of one stand-in image."""
    return {"Dockerfile": (render_dockerfile(standin, base).encode(), 0o644), **rootfs_files()}


def tar_bytes(files: Files) -> bytes:
    """An uncompressed tar of ``files``, with fixed owners and mtimes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, _MTIME
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def inputs_digest(files: Files, *extra: str) -> str:
    """sha256 over a build context and extra strings (e.g. the base image ID)."""
    h = hashlib.sha256(tar_bytes(files))
    for item in extra:
        h.update(item.encode())
    return h.hexdigest()


class Publisher:
    """Makes images on the build engine and publishes them to the registry mirror.

    ``state`` maps a docker.io reference to ``{"inputs": sha256, "id": image ID}``
    of what the registry holds; it is updated in place.
    """

    def __init__(self, client: docker.DockerClient, registry: Registry,
                 state: dict[str, dict[str, str]]) -> None:
        self.client = client
        self.registry = registry
        self.state = state

    def publish(self, ref: str, inputs: str, make: Callable[[str], str],
                keep_local: bool = False) -> tuple[str, bool]:
        """Ensure the registry holds ``ref`` made from ``inputs``.

        ``make(mirror_ref)`` creates the image locally under ``mirror_ref`` and
        returns its ID. Unless ``keep_local``, local tags are removed after the
        push so that a pull of ``ref`` goes through the mirror.
        Returns (image ID, whether it was made now).
        """
        entry = self.state.get(ref)
        if entry and entry.get("inputs") == inputs and self.registry.has(ref):
            return entry["id"], False
        mirror = self.registry.mirror_ref(ref)
        image_id = make(mirror)
        self.push(mirror)
        if not keep_local:
            self.drop_local(mirror, ref)
        self.state[ref] = {"inputs": inputs, "id": image_id}
        return image_id, True

    def build(self, files: Files, tag: str) -> str:
        """Build a context of ``files`` with the legacy builder; return the image ID."""
        image, _ = self.client.images.build(
            fileobj=io.BytesIO(tar_bytes(files)), custom_context=True,
            tag=tag, rm=True, forcerm=True, pull=False)
        return image.id

    def push(self, mirror_ref: str) -> None:
        """Push ``mirror_ref`` (registry/name:tag) to the registry."""
        repo, tag = mirror_ref.rsplit(":", 1)
        for line in self.client.api.push(repo, tag, stream=True, decode=True):
            if "error" in line:
                raise HarnessError(f"push of {mirror_ref} failed: {line['error']}")

    def drop_local(self, *refs: str) -> None:
        """Remove these tags from the build engine (absent ones are fine)."""
        for ref in refs:
            try:
                self.client.images.remove(ref, force=True)
            except ImageNotFound:
                pass

    def ensure_local(self, mirror_ref: str) -> str:
        """ID of ``mirror_ref`` on the build engine, pulling it from the registry if needed."""
        try:
            return self.client.images.get(mirror_ref).id
        except ImageNotFound:
            repo, tag = mirror_ref.rsplit(":", 1)
            return self.client.images.pull(repo, tag=tag).id

    def ensure_base(self) -> str:
        """Build/publish the busybox base once; return its local mirror ref's image ID."""
        if not BUSYBOX.exists():
            raise HarnessError(f"{BUSYBOX} missing: run scripts/setup.sh (busybox-static)")
        files = base_files()
        self.publish(BASE_REF, inputs_digest(files),
                     lambda tag: self.build(files, tag), keep_local=True)
        return self.ensure_local(self.registry.mirror_ref(BASE_REF))

    def ensure_standin(self, standin: Standin, base_id: str) -> tuple[str, bool]:
        """Build/publish one stand-in FROM the base; return (image ID, built now)."""
        files = standin_files(standin, self.registry.mirror_ref(BASE_REF))
        return self.publish(standin.ref, inputs_digest(files, base_id),
                            lambda tag: self.build(files, tag))

    def verify_mirror_pull(self, ref: str) -> None:
        """Pull docker.io ``ref`` through the mirror and check it is our stand-in."""
        repo, tag = ref.rsplit(":", 1)
        pulled = self.client.images.pull(repo, tag=tag)
        expected = self.state[ref]["id"]
        self.drop_local(ref)
        if pulled.id != expected:
            raise HarnessError(f"pull of {ref} gave {pulled.id}, expected stand-in {expected}")
