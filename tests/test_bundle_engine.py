"""The bundler against real engines: build the AI-Infra Matrix archive from the stand-in stack,
load it into an empty air-gapped daemon, and break it every way verify must catch."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

import pytest
import yaml
import zstandard

from installer.archive import read_header
from tests.harness import FOREIGN_REF, SOURCE_DIR

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "manifests" / "aimatrix.yaml"
REGISTRY = "aiharbor.msxf.local/aihpc"
TAG = "v0.3.5"
BUNDLE = [sys.executable, "-m", "bundler.cli"]


def bundle(*args: str, docker_host: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run airgap-bundle as a user would, against ``docker_host``."""
    env = dict(os.environ, DOCKER_HOST=docker_host)
    result = subprocess.run(BUNDLE + list(args), capture_output=True, text=True, env=env, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"airgap-bundle {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    bundle("keygen", "-o", str(folder / "release.key"), docker_host="unix:///nonexistent")
    bundle("keygen", "-o", str(folder / "other.key"), docker_host="unix:///nonexistent")
    return {"private": folder / "release.key", "public": folder / "release.pub", "other_public": folder / "other.pub"}


@pytest.fixture(scope="module")
def built(harness, build_engine, keys, tmp_path_factory) -> dict:
    """The v0.3.5 archive built from the stand-in source, pulls going through the mirror."""
    for image in build_engine.images.list():
        for tag in image.tags:
            if not tag.startswith(("127.0.0.1:5000/harness/", "harness-test/")):
                build_engine.images.remove(tag, noprune=True)
    out = tmp_path_factory.mktemp("dist")
    lock = out / "aimatrix.lock.json"
    result = bundle(
        "build", str(MANIFEST), "--registry", REGISTRY, "--tag", TAG, "--source", str(SOURCE_DIR),
        "--key", str(keys["private"]), "-o", str(out), "--lock", str(lock), docker_host=harness.build_docker_host,
    )
    archive = out / f"aimatrix-{TAG}.tar.zst"
    assert result.stdout.strip().endswith(str(archive))
    header, _, _ = read_header(archive)
    return {"archive": archive, "lock": lock, "header": header, "out": out, "stderr": result.stderr}


def test_build_writes_the_named_archive_and_a_lockfile(built) -> None:
    archive, header = built["archive"], built["header"]
    assert archive.name == "aimatrix-v0.3.5.tar.zst" and archive.stat().st_size > 0
    assert not list(built["out"].glob("*.partial"))
    kit = built["out"] / "airgap-install-kit-0.1.0"
    assert (kit / "install.sh").is_file() and list((kit / "wheels").glob("airgap_compose-*.whl"))
    assert header.name == "aimatrix" and header.version == TAG and header.platform == "linux/amd64"
    lock = json.loads(built["lock"].read_text())
    assert set(lock["images"]) == {"postgres:15-alpine", "redis:7-alpine", "osixia/openldap:stable", "osixia/phpldapadmin:stable",
                                   "tecnativa/tcp-proxy:latest", "redislabs/redisinsight:latest", "minio/minio:latest", "nginx:1.27-alpine"}


def test_dependencies_were_pulled_from_the_registry(built, harness) -> None:
    """The lockfile digests are the registry's own manifest digests: the images came through the mirror."""
    lock = json.loads(built["lock"].read_text())
    for reference, pinned in lock["images"].items():
        repository, tag = reference.rsplit(":", 1)
        path = repository if "/" in repository else f"library/{repository}"
        request = urllib.request.Request(
            f"http://{harness.registry}/v2/{path}/manifests/{tag}", method="HEAD",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert pinned["digest"] == response.headers["Docker-Content-Digest"], reference


def test_every_site_name_comes_back_in_an_empty_airgapped_daemon(built, harness, target_engine, tmp_path) -> None:
    harness.reset_target()
    assert target_engine.images.list() == []
    subprocess.run(["tar", "--zstd", "-xf", str(built["archive"]), "-C", str(tmp_path)], check=True)
    images_tar = subprocess.Popen(["tar", "-C", str(tmp_path / "images"), "-cf", "-", "."], stdout=subprocess.PIPE)
    events = list(target_engine.api.load_image(images_tar.stdout.read()))
    images_tar.wait()
    assert not [e for e in events if "error" in e], events
    expected = {target: image.id for image in built["header"].images for target in image.targets}
    assert "ai-infra-singleuser:v0.3.5" in expected
    assert len(expected) == 18  # 8 dependencies, 8 source builds, 1 alias, 1 runtime name
    present = {tag: image.id for image in target_engine.images.list() for tag in image.tags}
    assert present == expected
    # each shared layer is in the archive once
    layer_members = [m.path for m in built["header"].members if m.path.endswith("/layer.tar")]
    assert len(layer_members) == len(set(layer_members)) == len({d for i in built["header"].images for d in i.diff_ids})


def test_the_archive_carries_the_derived_compose_config(built, tmp_path) -> None:
    subprocess.run(["tar", "--zstd", "-xf", str(built["archive"]), "-C", str(tmp_path), "release"], check=True)
    compose = yaml.safe_load((tmp_path / "release" / "docker-compose.yml").read_text())
    site_names = {t for image in built["header"].images for t in image.targets}
    assert {service["image"] for service in compose["services"].values()} <= site_names
    shipped = (tmp_path / "release" / "src" / "jupyterhub" / "jupyterhub_config.py").read_bytes()
    assert shipped == (SOURCE_DIR / "src" / "jupyterhub" / "jupyterhub_config.py").read_bytes()
    assert "${POSTGRES_PASSWORD}" in (tmp_path / "release" / "docker-compose.yml").read_text()
    # no env file travels: the site writes .env.prod from its own settings, secrets generated there
    assert not list((tmp_path / "release").rglob(".env*"))


def test_verify_passes_and_inspect_shows_the_signer(built, keys, harness) -> None:
    result = bundle("verify", str(built["archive"]), "--pubkey", str(keys["public"]), docker_host=harness.build_docker_host)
    assert result.stdout.startswith("OK: ")
    shown = bundle("inspect", str(built["archive"]), docker_host=harness.build_docker_host).stdout
    assert built["header"].signer in shown and "ai-infra-singleuser:v0.3.5" in shown
    assert "gitea-debug: overlay: service added" in shown  # what the overlay and the rewrite changed, per service
    data = json.loads(bundle("inspect", str(built["archive"]), "--json", docker_host=harness.build_docker_host).stdout)
    assert data["signed"] is True and len(data["images"]) == len(built["header"].images)


def _tar_bytes(archive: Path) -> bytes:
    with open(archive, "rb") as handle:
        return zstandard.ZstdDecompressor().stream_reader(handle, read_across_frames=True).read()


def _repack(tar_bytes: bytes, target: Path) -> Path:
    target.write_bytes(zstandard.ZstdCompressor(level=1).compress(tar_bytes))
    return target


def _member_kinds(header) -> dict[str, str]:
    members = [m.path for m in header.members]
    return {
        "header": "bundle.json",
        "signature": "bundle.json.sig",
        "docker manifest": "images/manifest.json",
        "config": next(p for p in members if p.startswith("images/") and p.endswith(".json") and p != "images/manifest.json"),
        "layer": max((m for m in header.members if m.path.endswith("layer.tar")), key=lambda m: m.size).path,
        "compose": "release/docker-compose.yml",
    }


@pytest.mark.parametrize("kind", ["header", "signature", "docker manifest", "config", "layer", "compose"])
def test_one_flipped_byte_in_any_member_fails_verify_naming_the_cause(built, keys, harness, tmp_path, kind) -> None:
    member = _member_kinds(built["header"])[kind]
    data = bytearray(_tar_bytes(built["archive"]))
    info = next(i for i in tarfile.open(fileobj=io.BytesIO(bytes(data))).getmembers() if i.name == member)
    data[info.offset_data + info.size // 2] ^= 0x20
    tampered = _repack(bytes(data), tmp_path / "tampered.tar.zst")
    result = bundle("verify", str(tampered), "--pubkey", str(keys["public"]), docker_host=harness.build_docker_host, check=False)
    assert result.returncode == 1
    expected = "bad signature" if kind in ("header", "signature") else f"member {member!r}: sha256 mismatch"
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_truncated_archive_fails_verify(built, keys, harness, tmp_path) -> None:
    data = built["archive"].read_bytes()
    cut = tmp_path / "cut.tar.zst"
    cut.write_bytes(data[: len(data) * 2 // 3])
    result = bundle("verify", str(cut), "--pubkey", str(keys["public"]), docker_host=harness.build_docker_host, check=False)
    assert result.returncode == 1 and "truncated" in result.stderr


def test_wrong_key_fails_verify(built, keys, harness) -> None:
    result = bundle("verify", str(built["archive"]), "--pubkey", str(keys["other_public"]), docker_host=harness.build_docker_host, check=False)
    assert result.returncode == 1 and "bad signature" in result.stderr and "not signed by any trusted key" in result.stderr


def test_unsigned_archive_fails_verify(built, keys, harness, tmp_path) -> None:
    source = tarfile.open(fileobj=io.BytesIO(_tar_bytes(built["archive"])))
    stripped = io.BytesIO()
    with tarfile.open(fileobj=stripped, mode="w", format=tarfile.PAX_FORMAT) as out:
        for info in source.getmembers():
            if info.name != "bundle.json.sig":
                out.addfile(info, source.extractfile(info))
    unsigned = _repack(stripped.getvalue(), tmp_path / "unsigned.tar.zst")
    result = bundle("verify", str(unsigned), "--pubkey", str(keys["public"]), docker_host=harness.build_docker_host, check=False)
    assert result.returncode == 1 and "unsigned" in result.stderr


def test_rebuild_from_the_lockfile_pulls_the_same_images(built, keys, harness, tmp_path) -> None:
    out = tmp_path / "again"
    shutil.copy(built["lock"], tmp_path / "lock.json")
    bundle("build", str(MANIFEST), "--registry", REGISTRY, "--tag", TAG, "--source", str(SOURCE_DIR), "--key", str(keys["private"]),
           "-o", str(out), "--lock", str(tmp_path / "lock.json"), "--no-kit", docker_host=harness.build_docker_host)
    first, _, _ = read_header(built["archive"])
    second, _, _ = read_header(out / f"aimatrix-{TAG}.tar.zst")
    dependency_ids = lambda header: {t: i.id for i in header.images for t in i.targets if "ai-infra-" not in t}  # noqa: E731
    assert dependency_ids(first) == dependency_ids(second)
    assert json.loads((tmp_path / "lock.json").read_text())["images"] == json.loads(built["lock"].read_text())["images"]


def test_resolve_prints_digests_once_known(built, harness, tmp_path) -> None:
    result = bundle("resolve", str(MANIFEST), "--source", str(SOURCE_DIR), "--registry", REGISTRY, "--tag", TAG, "--json",
                    "--lock", str(tmp_path / "l.json"),
                    docker_host=harness.build_docker_host)
    rows = json.loads(result.stdout)["images"]
    dependencies = [r for r in rows if r["kind"] == "dependency"]
    assert dependencies and all(r["digest"] and r["digest"].startswith("sha256:") for r in dependencies)
    assert {r["kind"] for r in rows} == {"dependency", "source", "alias", "runtime"}


def _manifest_copy(tmp_path: Path, edit) -> Path:
    shutil.copytree(ROOT / "manifests" / "aimatrix", tmp_path / "aimatrix")
    raw = yaml.safe_load(MANIFEST.read_text())
    edit(raw)
    path = tmp_path / "aimatrix.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_image_of_another_platform_is_refused(keys, harness, tmp_path) -> None:
    path = _manifest_copy(tmp_path, lambda raw: raw["dependencies"].append({"ref": FOREIGN_REF}))
    out = tmp_path / "out"
    result = bundle("build", str(path), "--tag", TAG, "--source", str(SOURCE_DIR), "--key", str(keys["private"]), "-o", str(out), "--no-kit",
                    "--lock", str(tmp_path / "l.json"), docker_host=harness.build_docker_host, check=False)
    assert result.returncode == 1
    assert f"{FOREIGN_REF} was pulled as linux/arm64, but the bundle is for linux/amd64" in result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_naming_collision_stops_the_build_naming_both(keys, harness, tmp_path) -> None:
    path = _manifest_copy(tmp_path, lambda raw: raw["dependencies"].append({"ref": "redis:6-alpine"}))
    result = bundle("build", str(path), "--registry", REGISTRY, "--tag", TAG, "--source", str(SOURCE_DIR), "--key", str(keys["private"]),
                    "-o", str(tmp_path / "out"), docker_host=harness.build_docker_host, check=False)
    assert result.returncode == 1
    assert "naming collision" in result.stderr and "redis:7-alpine" in result.stderr and "redis:6-alpine" in result.stderr
    assert f"{REGISTRY}/redis:{TAG}" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_malformed_manifest_stops_the_build_with_a_clear_error(keys, harness, tmp_path) -> None:
    path = _manifest_copy(tmp_path, lambda raw: raw.__setitem__("sources", {"backend": {"target": ["not", "a", "string"]}}))
    result = bundle("build", str(path), "--source", str(SOURCE_DIR), "--key", str(keys["private"]), "-o", str(tmp_path / "out"),
                    docker_host=harness.build_docker_host, check=False)
    assert result.returncode == 1
    assert f"{path}: sources.backend.target: expected a string, got a list" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_engine_is_a_clear_error(keys, tmp_path) -> None:
    result = bundle("build", str(MANIFEST), "--source", str(SOURCE_DIR), "--key", str(keys["private"]), "-o", str(tmp_path),
                    docker_host="unix:///nonexistent/docker.sock", check=False)
    assert result.returncode == 1 and "cannot reach the Docker engine at unix:///nonexistent/docker.sock" in result.stderr


def test_no_pull_uses_the_engines_images_and_names_a_missing_one(built, keys, harness, build_engine, tmp_path) -> None:
    out = tmp_path / "local"
    bundle("build", str(MANIFEST), "--registry", REGISTRY, "--tag", TAG, "--source", str(SOURCE_DIR), "--key", str(keys["private"]),
           "-o", str(out), "--lock", str(tmp_path / "l.json"), "--no-kit", "--no-pull", docker_host=harness.build_docker_host)
    local, _, _ = read_header(out / f"aimatrix-{TAG}.tar.zst")
    assert {i.id for i in local.images} == {i.id for i in built["header"].images}
    build_engine.images.remove("minio/minio:latest", noprune=True)
    result = bundle("build", str(MANIFEST), "--source", str(SOURCE_DIR), "--key", str(keys["private"]), "-o", str(out),
                    "--lock", str(tmp_path / "l2.json"), "--no-kit", "--no-pull", docker_host=harness.build_docker_host, check=False)
    assert result.returncode == 1 and "minio/minio:latest: not on the engine, and --no-pull forbids pulling it" in result.stderr


def test_warm_cache_rebuild_writes_the_same_members_without_the_engine(built, keys, harness, tmp_path) -> None:
    cache = tmp_path / "cache"
    outs = []
    for run in ("cold", "warm"):
        out = tmp_path / run
        result = bundle("build", str(MANIFEST), "--registry", REGISTRY, "--tag", TAG, "--source", str(SOURCE_DIR),
                        "--key", str(keys["private"]), "-o", str(out), "--lock", str(tmp_path / f"{run}.json"), "--no-kit",
                        "--cache-dir", str(cache), "--plain", docker_host=harness.build_docker_host)
        outs.append(out / f"aimatrix-{TAG}.tar.zst")
        if run == "warm":
            assert "save + compress images ... done" in result.stderr
    cold, _, _ = read_header(outs[0])
    warm, _, _ = read_header(outs[1])
    assert {(m.path, m.sha256, m.size) for m in cold.members} == {(m.path, m.sha256, m.size) for m in warm.members}
    bundle("verify", str(outs[1]), "--pubkey", str(keys["public"]), docker_host=harness.build_docker_host)
    assert any(cache.rglob("*.zst"))


def _layer_tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_600_000_000
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _load_layered_images(client, images: dict[str, list[bytes]]) -> None:
    """Load images made of exactly these layer tars (bottom first) into ``client``'s engine."""
    files: dict[str, bytes] = {}
    manifest = []
    for ref, layers in images.items():
        digests = [hashlib.sha256(layer).hexdigest() for layer in layers]
        files.update({f"{digest}/layer.tar": layer for digest, layer in zip(digests, layers)})
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": {"test": ref}},
                             "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in digests]}}).encode()
        config_name = hashlib.sha256(config).hexdigest() + ".json"
        files[config_name] = config
        manifest.append({"Config": config_name, "RepoTags": [ref], "Layers": [f"{d}/layer.tar" for d in digests]})
    files["manifest.json"] = json.dumps(manifest).encode()
    client.images.load(_layer_tar(files))


def test_a_layer_shared_by_images_on_different_bases_is_archived_once_under_its_digest(
        keys, harness, build_engine, target_engine, tmp_path) -> None:
    from bench.imageset import write_manifest
    from installer.archive import FramedArchiveReader, layer_path

    shared = _layer_tar({"app/shared.txt": b"the same layer on two bases\n" * 5000})
    images = {
        "shared-test/one:latest": [_layer_tar({"base/one.txt": b"base one\n" * 4000}), shared],
        "shared-test/two:latest": [_layer_tar({"base/two.txt": b"base two\n" * 9000}), shared],
        "shared-test/three:latest": [_layer_tar({"base/one.txt": b"base one\n" * 4000}),
                                     _layer_tar({"app/three.txt": b"three\n" * 100})],
    }
    _load_layered_images(build_engine, images)
    manifest = write_manifest(tmp_path / "m", list(images), "v1")
    out = tmp_path / "out"
    bundle("build", str(manifest), "--source", str(manifest.parent), "--no-pull", "--no-kit", "--plain", "--key", str(keys["private"]), "-o", str(out),
           "--lock", str(tmp_path / "lock.json"), "--cache-dir", str(tmp_path / "cache"),
           docker_host=harness.build_docker_host)
    archive = out / "bench-v1.tar.zst"
    header, _, _ = read_header(archive)
    layers = [m for m in header.members if m.path.endswith("/layer.tar")]
    assert len(layers) == len({m.path for m in layers}) == 4  # two bases, the shared layer once, three's own
    with FramedArchiveReader(archive) as reader:
        for member in reader.members():
            if member.name.endswith("/layer.tar"):
                assert member.name == layer_path(hashlib.sha256(b"".join(member.chunks())).hexdigest())
    harness.reset_target()
    with FramedArchiveReader(archive) as reader:
        contents = {m.name: b"".join(m.chunks()) for m in reader.members() if m.name.startswith("images/")}
    target_engine.images.load(_layer_tar({name.split("/", 1)[1]: data for name, data in contents.items()}))
    present = {tag: image.id for image in target_engine.images.list() for tag in image.tags}
    assert present == {target: image.id for image in header.images for target in image.targets}
    assert len(present) == 3
