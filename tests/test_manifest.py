"""The release manifest, the naming plan and the compose renderer (no engine needed)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from bundler.build import plan_release
from bundler.cli import main
from bundler.compose import ComposeError
from bundler.manifest import ManifestError, load_manifest
from bundler.plan import NamingCollision
from tests.harness import SOURCE_DIR

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "manifests" / "aimatrix.yaml"
REGISTRY = "aiharbor.msxf.local/aihpc"


def copy_manifest(tmp_path: Path, edit=None) -> Path:
    """A private copy of the real manifest (and its folder), optionally edited."""
    shutil.copytree(ROOT / "manifests" / "aimatrix", tmp_path / "aimatrix")
    raw = yaml.safe_load(MANIFEST.read_text())
    if edit:
        edit(raw)
    path = tmp_path / "aimatrix.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def plan_of(path: Path = MANIFEST, source: Path = SOURCE_DIR, **options):
    """Plan the release of the stand-in source tree (sources from its compose file's build: sections)."""
    manifest = load_manifest(path)
    options = {"registry": REGISTRY, "tag": "v0.3.5", **options}
    return plan_release(manifest, source, platform="linux/amd64", with_build_bases=options.pop("with_build_bases", False),
                        **options).plan


def test_real_manifest_plans_every_image_with_site_names() -> None:
    plan = plan_of()
    targets = {e.upstream: e.target for e in plan.of_kind("dependency")}
    assert targets["postgres:15-alpine"] == f"{REGISTRY}/postgres:v0.3.5"
    assert targets["osixia/openldap:stable"] == f"{REGISTRY}/openldap:v0.3.5"
    sources = {e.service: e.target for e in plan.of_kind("source")}
    assert set(sources) == {"backend", "backend-init", "frontend", "jupyterhub", "saltstack", "gitea", "singleuser-builder", "nginx"}
    assert sources["backend-init"] == f"{REGISTRY}/ai-infra-backend-init:v0.3.5"
    assert sources["singleuser-builder"] == f"{REGISTRY}/ai-infra-singleuser:v0.3.5"
    assert [e.target for e in plan.of_kind("runtime")] == ["ai-infra-singleuser:v0.3.5"]
    assert {e.target for e in plan.of_kind("alias")} == {f"{REGISTRY}/ai-infra-gitea-debug:v0.3.5"}
    assert not plan.of_kind("build-base")
    with_bases = plan_of(with_build_bases=True)
    assert f"{REGISTRY}/nginx-perl:v0.3.5" in {e.target for e in with_bases.of_kind("build-base")}


def test_registry_and_tag_come_from_the_command_line() -> None:
    plan = plan_of(registry="127.0.0.1:5000/site", tag="v9")
    assert {e.target for e in plan.of_kind("dependency")} >= {"127.0.0.1:5000/site/redis:v9"}


def test_collision_is_refused_naming_both_images(tmp_path: Path) -> None:
    def drop_override(raw):
        raw["build_bases"][0] = {"ref": "nginx:stable-alpine-perl"}

    with pytest.raises(NamingCollision) as failure:
        plan_of(copy_manifest(tmp_path, drop_override), with_build_bases=True)
    message = str(failure.value)
    assert "nginx:1.27-alpine" in message and "nginx:stable-alpine-perl" in message
    assert f"{REGISTRY}/nginx:v0.3.5" in message


def test_collision_via_explicit_name_is_refused(tmp_path: Path) -> None:
    def rename(raw):
        raw["dependencies"][1] = {"ref": "redis:7-alpine", "name": "postgres"}

    with pytest.raises(NamingCollision, match="postgres:15-alpine.*redis:7-alpine"):
        plan_of(copy_manifest(tmp_path, rename), tag="v1")


@pytest.mark.parametrize(
    "edit, key, expected",
    [
        (lambda r: r.pop("bundle"), "bundle", "required key is missing"),
        (lambda r: r["dependencies"].append({"ref": 42}), "dependencies[8].ref", "expected an image reference"),
        (lambda r: r["dependencies"].append({"ref": "Postgres:UPPER"}), "dependencies[8].ref", "not a valid image reference"),
        (lambda r: r.__setitem__("dependancies", []), "dependancies", "unknown key"),
        (lambda r: r.__setitem__("sources", {"backend": {"context": "../outside"}}), "sources.backend.context", "inside the source tree"),
        (lambda r: r["site"]["variables"]["GITEA_HOST_PORT"].__setitem__("default", "eighty"), "site.variables.GITEA_HOST_PORT.default", "does not match"),
        (lambda r: r["site"]["secrets"]["JWT_SECRET"].__setitem__("length", 3), "site.secrets.JWT_SECRET.length", "integer from 8 to 256"),
        (lambda r: r["aliases"].append({"name": "x", "of": "nothing:here"}), "aliases[1].of", "neither a listed image"),
        (lambda r: r["compose"].__setitem__("overlay", "../../etc/passwd"), "compose.overlay", "expected a path inside"),
        (lambda r: r["compose"].__setitem__("file", "/etc/compose.yml"), "compose.file", "inside the source tree"),
        (lambda r: r["compose"].pop("file"), "compose.file", "required key is missing"),
        (lambda r: r.__setitem__("apiVersion", "v0"), "apiVersion", "expected 'airgap/v1'"),
    ],
)
def test_malformed_manifest_names_file_key_and_expectation(tmp_path: Path, edit, key: str, expected: str) -> None:
    path = copy_manifest(tmp_path, edit)
    with pytest.raises(ManifestError) as failure:
        plan_of(path, tag="v1")
    message = str(failure.value)
    assert str(path) in message and key in message and expected in message


def test_cli_reports_a_malformed_manifest_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("apiVersion: airgap/v1\nbundle: [oops\n")
    result = CliRunner().invoke(main, ["resolve", str(path), "--offline"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert f"{path}: not valid YAML: line" in result.output


def test_cli_resolve_offline_prints_one_row_per_image() -> None:
    result = CliRunner().invoke(main, ["resolve", str(MANIFEST), "--source", str(SOURCE_DIR), "--offline",
                                                       "--registry", REGISTRY, "--tag", "v0.3.5"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["KIND", "UPSTREAM", "TARGET"]
    assert len(lines) == 1 + 8 + 8 + 1 + 1  # dependencies, sources, alias, runtime
    assert any(line.split()[:1] == ["runtime"] and "ai-infra-singleuser:v0.3.5" in line for line in lines)


# --- the derived compose config ---------------------------------------------------------------

def derived(tmp_path: Path, edit=None, source: Path = SOURCE_DIR):
    return plan_release(load_manifest(copy_manifest(tmp_path, edit)), source, registry=REGISTRY, tag="v0.3.5",
                        platform="linux/amd64", with_build_bases=False).compose


def test_derived_config_uses_site_names_and_has_no_build(tmp_path: Path) -> None:
    compose = derived(tmp_path)
    document = yaml.safe_load(compose.text)
    images = {name: service["image"] for name, service in document["services"].items()}
    assert images["postgres"] == f"{REGISTRY}/postgres:v0.3.5"
    assert images["backend-init"] == f"{REGISTRY}/ai-infra-backend-init:v0.3.5"
    assert images["k8s-proxy"] == f"{REGISTRY}/tcp-proxy:v0.3.5"
    assert images["gitea-debug"] == f"{REGISTRY}/ai-infra-gitea-debug:v0.3.5"  # added by the production overlay
    assert all(image.startswith(REGISTRY + "/") for image in images.values())
    assert not any("build" in service for service in document["services"].values())
    assert document["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == "${POSTGRES_PASSWORD}"
    assert set(compose.oneshot) == {"backend-init", "singleuser-builder"}
    assert "nginx" in compose.healthchecked and "src/jupyterhub/jupyterhub_config.py" in compose.files
    assert len(document["services"]) == 16
    assert "POSTGRES_PASSWORD" in compose.secrets and "JUPYTERHUB_CRYPT_KEY" in compose.secrets
    assert compose.secrets["JUPYTERHUB_CRYPT_KEY"].alphabet == "hex"


def test_a_service_the_application_adds_is_refused_by_name(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(SOURCE_DIR, source)
    compose = source / "docker-compose.yml.example"
    compose.write_text(compose.read_text().replace("\nvolumes:\n", "\n  vector:\n    image: timberio/vector:0.40.0-alpine\n\nvolumes:\n", 1))
    with pytest.raises(ComposeError, match=r"docker-compose\.yml\.example: services\.vector\.image: 'timberio/vector:0\.40\.0-alpine' is not in the release"):
        derived(tmp_path / "m", source=source)
    result = CliRunner().invoke(main, ["resolve", str(MANIFEST), "--source", str(source), "--offline"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{compose}: services.vector.image: 'timberio/vector:0.40.0-alpine' is not in the release" in result.output


def test_cli_explain_shows_what_changed_per_service() -> None:
    result = CliRunner().invoke(main, ["resolve", str(MANIFEST), "--source", str(SOURCE_DIR), "--offline", "--explain",
                                                       "--json"])
    assert result.exit_code == 0, result.output
    explained = json.loads(result.stdout)
    assert any(c.startswith("overlay: ports:") for c in explained["services"]["nginx"])
    assert "overlay: service added" in explained["services"]["gitea-debug"]
    assert any(c.startswith("build: dropped") for c in explained["services"]["backend"])
    assert "POSTGRES_PASSWORD" in explained["secrets"] and "NGINX_PORT" in explained["variables"]
