"""The derived config against what the compose CLI itself makes of the application's files.

For AI-Infra Matrix (the stand-in of the upstream tree, with and without the
production overlay) and the unrelated ledger app, with compose v1 and v2:
``config`` of the original files (plus the overlay, merged by compose itself)
and ``config`` of the derived release, both read with the same site
environment file, must be equal once images are mapped to their site names,
``build:`` is dropped and both project folders read as one. Any key the
derivation lost, changed or invented shows up as a difference.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml

from bundler.build import Release, plan_release
from bundler.manifest import load_manifest, manifest_from_data
from bundler.starter import starter_manifest
from installer.site import fill_template, write_env_files
from tests.harness import SOURCE_DIR

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "manifests" / "aimatrix.yaml"
LEDGER = ROOT / "tests" / "apps" / "ledger"
REGISTRY = "aiharbor.msxf.local/aihpc"


def compose_cli(version: str) -> list[str]:
    """The compose CLI of that major version; fail (never skip) when it is missing."""
    argv = ["docker", "compose"] if version == "v2" else ["docker-compose"]
    try:
        result = subprocess.run([*argv, "version", "--short"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        result = None
    if result is None or result.returncode != 0 or not result.stdout.strip().lstrip("v").startswith(version[1]):
        pytest.fail(f"compose {version} is not installed: run scripts/setup.sh")
    return argv


def site_env(release: Release) -> dict[str, str]:
    """What an installer would write: defaults, templates filled in, fresh secrets."""
    values = {name: variable.default or "" for name, variable in release.compose.variables.items() if not variable.template}
    values.update({name: secrets.token_hex(12) for name in release.compose.secrets})
    for name, variable in release.compose.variables.items():
        if variable.template:
            values[name] = fill_template(variable.template, values)
    return values


def run_config(argv: list[str], folder: Path, files: list[Path], env_file: Path) -> dict[str, Any]:
    command = [*argv, "-p", "check", "--project-directory", str(folder)]
    for file in files:
        command += ["-f", str(file)]
    command += ["--env-file", str(env_file), "config"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    result = subprocess.run(command, capture_output=True, text=True, cwd=folder, env=clean, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def write_release(release: Release, folder: Path, values: dict[str, str]) -> Path:
    """The release folder as the installer lays it out: config, shipped files, env files with site values."""
    folder.mkdir(parents=True)
    (folder / "docker-compose.yml").write_text(release.compose.text)
    for relative, source in release.compose.file_sources.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / relative)
    write_env_files(folder, release.compose.env_files, values)
    return folder / "docker-compose.yml"


def normalised(config: dict[str, Any], folder: Path, images: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Folder paths made relative, ``build:`` dropped and images mapped (``images``: service -> site name)."""
    text = yaml.safe_dump(config).replace(str(folder), "<project>")
    config = yaml.safe_load(text)
    config.pop("name", None)
    for name, service in config.get("services", {}).items():
        service.pop("build", None)
        service.pop("pull_policy", None)
        if images is not None:
            service["image"] = images[name]
    return config


def compare(tmp_path: Path, release: Release, version: str, overlay: Optional[Path]) -> None:
    argv = compose_cli(version)
    values = site_env(release)
    env_file = tmp_path / "site.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    source = tmp_path / "source"
    shutil.copytree(release.app.source_dir, source, symlinks=True)
    compose_file = source / release.app.compose_path.relative_to(release.app.source_dir)
    for relative, keys in release.compose.env_files.items():
        if not (compose_file.parent / relative).exists():  # .env.prod: what build.sh makes from .env.prod.example
            (compose_file.parent / relative).write_text("".join(f"{k}={values[k]}\n" for k in keys))
    original = run_config(argv, compose_file.parent, [compose_file] + ([overlay] if overlay else []), env_file)
    release_dir = tmp_path / "release"
    derived = run_config(argv, release_dir, [write_release(release, release_dir, values)], env_file)
    images = {name: service["image"] for name, service in derived["services"].items()}
    assert set(images) == set(original["services"])
    assert normalised(derived, release_dir) == normalised(original, compose_file.parent, images)
    for name, image in images.items():
        assert image.startswith(REGISTRY + "/") or image.startswith("harbor.lab/"), (name, image)


def aimatrix(tmp_path: Path, overlay: bool) -> Release:
    raw = yaml.safe_load(MANIFEST.read_text())
    if not overlay:
        raw["compose"].pop("overlay")
        raw["aliases"] = []
        for name in ("JUPYTERHUB_HOST_PORT", "GITEA_HOST_PORT", "GITEA_DEBUG_PORT"):
            raw["site"]["variables"].pop(name)
        raw["endpoints"] = [e for e in raw["endpoints"] if "HOST_PORT" not in e["url"]]
    manifest = manifest_from_data(raw, MANIFEST)
    return plan_release(manifest, SOURCE_DIR, registry=REGISTRY, tag="v0.3.5", platform="linux/amd64", with_build_bases=False)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_aimatrix_derived_config_is_the_applications_own(tmp_path: Path, version: str) -> None:
    compare(tmp_path, aimatrix(tmp_path, overlay=False), version, overlay=None)


def test_aimatrix_overlay_merges_as_compose_v2_merges(tmp_path: Path) -> None:
    """compose v2 merges the overlay itself (v1 knows no !override); the derived config must equal its result."""
    compare(tmp_path, aimatrix(tmp_path, overlay=True), "v2", overlay=ROOT / "manifests" / "aimatrix" / "production.yml")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_ledger_derived_config_is_the_applications_own(tmp_path: Path, version: str) -> None:
    data = starter_manifest(LEDGER / "compose.yaml", name="ledger", version="v1.4.2", registry="harbor.lab/ledger")
    release = plan_release(manifest_from_data(data, LEDGER / "compose.yaml"), LEDGER, registry=None, tag=None,
                           platform="linux/amd64", with_build_bases=False)
    compare(tmp_path, release, version, overlay=None)


def test_the_real_manifest_loads() -> None:
    assert load_manifest(MANIFEST).compose_file == "docker-compose.yml.example"
