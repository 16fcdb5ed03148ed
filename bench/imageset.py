"""A realistic image set for benchmarks, made from this machine's own binaries and text.

Shape (sizes at scale 1.0, about 2.2 GB of unique layers, 12 images), like a
stack built on a few base images:

    4 os layers       100 MB   each shared by the 3 images of its group (a static busybox in each)
    4 runtime layers  150 MB   each shared by the 3 images of its group (like python / jvm / node)
    12 app layers     100 MB   one per image

Layers are deterministic tars (fixed owners and times), so the same scale
always gives the same image IDs, and they are streamed straight into the
engine's load: nothing is written to disk on the way.
"""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import docker

SOURCES = [Path("/usr/lib"), Path("/usr/share"), Path("/usr/bin"), Path("/root/.pyenv"), Path("/root/.rustup")]
BUSYBOX = Path("/bin/busybox")
MB = 1_000_000
OS_MB, GROUP_MB, APP_MB = 100, 150, 100
GROUPS, IMAGES_PER_GROUP = 4, 3
LABEL = "airgap.bench"


@dataclass(frozen=True)
class LayerSpec:
    """A layer: its name and the real files (with the byte budget) it holds."""

    name: str
    files: tuple[Path, ...]
    extra: bytes = b""


@dataclass(frozen=True)
class BenchImage:
    """One benchmark image: its reference and layer names, bottom first."""

    ref: str
    layers: tuple[str, ...]


def _file_pool() -> Iterator[Path]:
    for root in SOURCES:
        if not root.is_dir():
            continue
        for directory, folders, files in os.walk(root):
            folders.sort()
            for name in sorted(files):
                path = Path(directory) / name
                try:
                    if path.is_file() and not path.is_symlink() and 4096 <= path.stat().st_size <= 64 * MB:
                        yield path
                except OSError:
                    continue


def plan_layers(scale: float, changed_app: Optional[int] = None) -> tuple[dict[str, LayerSpec], list[BenchImage]]:
    """Assign real files to layers by size budget; ``changed_app`` gives that app layer new content."""
    pool = _file_pool()
    budgets = [(f"os{g}", OS_MB) for g in range(GROUPS)] + [(f"group{g}", GROUP_MB) for g in range(GROUPS)] + \
              [(f"app{i}", APP_MB) for i in range(GROUPS * IMAGES_PER_GROUP)]
    layers: dict[str, LayerSpec] = {}
    for name, megabytes in budgets:
        budget, chosen = int(megabytes * MB * scale), []
        for path in pool:
            chosen.append(path)
            budget -= path.stat().st_size
            if budget <= 0:
                break
        extra = b"release: next\n" * 4096 if name == f"app{changed_app}" else b""
        layers[name] = LayerSpec(name, tuple(chosen), extra)
    images = [
        BenchImage(f"bench/app{i}:latest", (f"os{i // IMAGES_PER_GROUP}", f"group{i // IMAGES_PER_GROUP}", f"app{i}"))
        for i in range(GROUPS * IMAGES_PER_GROUP)
    ]
    return layers, images


def _info(name: str, size: int, mode: int = 0o644, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.type, info.linkname = size, mode, 1_600_000_000, kind, link
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _layer_stream(spec: LayerSpec) -> tuple[str, Iterator[bytes]]:
    """(sha256 hex, chunks) of the layer tar; the digest is computed by a first pass over the same bytes."""
    digest = hashlib.sha256()
    for chunk in _layer_chunks(spec):
        digest.update(chunk)
    return digest.hexdigest(), _layer_chunks(spec)


def _layer_chunks(spec: LayerSpec) -> Iterator[bytes]:
    prefix = f"opt/{spec.name}"
    if spec.name.startswith("os"):
        data = BUSYBOX.read_bytes()
        yield _info("bin/busybox", len(data), 0o755).tobuf(tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % 512)
        yield _info("bin/sh", 0, 0o777, tarfile.SYMTYPE, "busybox").tobuf(tarfile.GNU_FORMAT)
        page = b"<html><body>bench</body></html>\n"
        yield _info("www/index.html", len(page)).tobuf(tarfile.GNU_FORMAT) + page + b"\0" * (-len(page) % 512)
    if spec.extra:
        yield _info(f"{prefix}/RELEASE", len(spec.extra)).tobuf(tarfile.GNU_FORMAT) + spec.extra + b"\0" * (-len(spec.extra) % 512)
    for index, path in enumerate(spec.files):
        data = path.read_bytes()
        name = f"{prefix}/{index:05d}-{path.name}"[:200]
        yield _info(name, len(data)).tobuf(tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % 512)
    yield b"\0" * 1024


def _config(image: BenchImage, diff_ids: list[str]) -> bytes:
    return json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2020-09-13T12:26:40Z",
        "config": {"Cmd": ["/bin/busybox", "httpd", "-f", "-p", "8000", "-h", "/www"], "Labels": {LABEL: image.ref},
                   "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
        "history": [{"created": "2020-09-13T12:26:40Z", "created_by": f"bench layer {n}"} for n in image.layers],
    }, sort_keys=True).encode()


def ensure_images(client: docker.DockerClient, scale: float, changed_app: Optional[int] = None,
                  tag_suffix: str = "latest", say=print) -> list[str]:
    """Load the image set into the engine unless it is already there; return the references."""
    layers, images = plan_layers(scale, changed_app)
    digests: dict[str, str] = {}
    for name, spec in layers.items():
        digests[name], _ = _layer_stream(spec)
    refs = []
    archive_images, needed_layers = [], set()
    for image in images:
        ref = image.ref.replace(":latest", f":{tag_suffix}")
        refs.append(ref)
        config = _config(image, [digests[n] for n in image.layers])
        image_id = "sha256:" + hashlib.sha256(config).hexdigest()
        try:
            client.api.inspect_image(image_id)
            client.api.tag(image_id, *ref.rsplit(":", 1), force=True)
            continue
        except docker.errors.ImageNotFound:
            pass
        archive_images.append((ref, image, config))
        needed_layers.update(image.layers)
    if archive_images:
        say(f"loading {len(archive_images)} image(s), {len(needed_layers)} layer(s) at scale {scale}")
        for event in client.api.load_image(_docker_archive(archive_images, layers, digests, needed_layers)):
            if "error" in event:
                raise RuntimeError(event["error"])
    return refs


def _docker_archive(images, layers: dict[str, LayerSpec], digests: dict[str, str], needed: set[str]) -> Iterator[bytes]:
    manifest = []
    for ref, image, config in images:
        config_name = hashlib.sha256(config).hexdigest() + ".json"
        manifest.append({"Config": config_name, "RepoTags": [ref], "Layers": [f"{digests[n]}/layer.tar" for n in image.layers]})
        yield _info(config_name, len(config)).tobuf(tarfile.GNU_FORMAT) + config + b"\0" * (-len(config) % 512)
    for name in sorted(needed):
        size = sum(len(c) for c in _layer_chunks(layers[name]))
        yield _info(f"{digests[name]}/layer.tar", size).tobuf(tarfile.GNU_FORMAT)
        yield from _layer_chunks(layers[name])
        yield b"\0" * (-size % 512)
    data = json.dumps(manifest).encode()
    yield _info("manifest.json", len(data)).tobuf(tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % 512)
    yield b"\0" * 1024


def write_manifest(folder: Path, refs: list[str], version: str) -> Path:
    """A release manifest and the compose file of the bench stack (one service per image); --source is ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench").mkdir(exist_ok=True)
    services = "".join(
        f"  app{i}:\n    image: {ref}\n    healthcheck:\n"
        f"      test: [\"CMD\", \"/bin/busybox\", \"wget\", \"-q\", \"-O\", \"/dev/null\", \"http://127.0.0.1:8000/\"]\n"
        f"      interval: 1s\n      retries: 60\n"
        for i, ref in enumerate(refs)
    )
    (folder / "bench" / "compose.yml").write_text("services:\n" + services)
    deps = "".join(f"  - ref: {ref}\n    name: app{i}\n" for i, ref in enumerate(refs))
    path = folder / "bench.yaml"
    path.write_text(
        "apiVersion: airgap/v1\n"
        f"bundle: {{name: bench, version: {version}, project: bench}}\n"
        "naming: {registry: site.local/bench}\n"
        f"dependencies:\n{deps}"
        "compose: {file: bench/compose.yml}\n"
    )
    return path


def layer_bytes(scale: float) -> tuple[int, int]:
    """(unique layer bytes, bytes summed per image) of the set, from the file sizes."""
    layers, images = plan_layers(scale)
    sizes = {n: sum(p.stat().st_size for p in spec.files) for n, spec in layers.items()}
    return sum(sizes.values()), sum(sizes[n] for image in images for n in image.layers)


