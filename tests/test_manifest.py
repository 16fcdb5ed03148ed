"""The release manifest, the naming plan and the compose renderer (no engine needed)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from bundler.cli import main
from bundler.compose import ComposeError, render_compose
from bundler.manifest import ManifestError, load_manifest
from bundler.plan import NamingCollision, make_plan

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "manifests" / "aimatrix.yaml"
REGISTRY = "aiharbor.msxf.local/aihpc"


def copy_manifest(tmp_path: Path, edit=None, template_edit=None) -> Path:
    """A private copy of the real manifest (and its folder), optionally edited."""
    shutil.copytree(ROOT / "manifests" / "aimatrix", tmp_path / "aimatrix")
    raw = yaml.safe_load(MANIFEST.read_text())
    if edit:
        edit(raw)
    path = tmp_path / "aimatrix.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    if template_edit:
        template = tmp_path / "aimatrix" / "docker-compose.yml.j2"
        template.write_text(template_edit(template.read_text()))
    return path


def test_real_manifest_plans_every_image_with_site_names() -> None:
    plan = make_plan(load_manifest(MANIFEST), registry=REGISTRY, tag="v0.3.5")
    targets = {e.upstream: e.target for e in plan.of_kind("dependency")}
    assert targets["postgres:15-alpine"] == f"{REGISTRY}/postgres:v0.3.5"
    assert targets["osixia/openldap:stable"] == f"{REGISTRY}/openldap:v0.3.5"
    sources = {e.service: e.target for e in plan.of_kind("source")}
    assert set(sources) == {"backend", "backend-init", "frontend", "jupyterhub", "saltstack", "gitea", "singleuser", "nginx"}
    assert sources["backend-init"] == f"{REGISTRY}/ai-infra-backend-init:v0.3.5"
    assert [e.target for e in plan.of_kind("runtime")] == ["ai-infra-singleuser:v0.3.5"]
    assert {e.target for e in plan.of_kind("alias")} == {f"{REGISTRY}/ai-infra-k8s-proxy:v0.3.5", f"{REGISTRY}/ai-infra-gitea-debug:v0.3.5"}
    assert not plan.of_kind("build-base")
    with_bases = make_plan(load_manifest(MANIFEST), registry=REGISTRY, tag="v0.3.5", with_build_bases=True)
    assert f"{REGISTRY}/nginx-perl:v0.3.5" in {e.target for e in with_bases.of_kind("build-base")}


def test_registry_and_tag_come_from_the_command_line() -> None:
    plan = make_plan(load_manifest(MANIFEST), registry="127.0.0.1:5000/site", tag="v9")
    assert {e.target for e in plan.of_kind("dependency")} >= {"127.0.0.1:5000/site/redis:v9"}


def test_collision_is_refused_naming_both_images(tmp_path: Path) -> None:
    def drop_override(raw):
        raw["build_bases"][0] = {"ref": "nginx:stable-alpine-perl"}

    manifest = load_manifest(copy_manifest(tmp_path, drop_override))
    with pytest.raises(NamingCollision) as failure:
        make_plan(manifest, registry=REGISTRY, tag="v0.3.5")
    message = str(failure.value)
    assert "nginx:1.27-alpine" in message and "nginx:stable-alpine-perl" in message
    assert f"{REGISTRY}/nginx:v0.3.5" in message


def test_collision_via_explicit_name_is_refused(tmp_path: Path) -> None:
    def rename(raw):
        raw["dependencies"][1] = {"ref": "redis:7-alpine", "name": "postgres"}

    with pytest.raises(NamingCollision, match="postgres:15-alpine.*redis:7-alpine"):
        make_plan(load_manifest(copy_manifest(tmp_path, rename)), registry=REGISTRY, tag="v1")


@pytest.mark.parametrize(
    "edit, key, expected",
    [
        (lambda r: r.pop("bundle"), "bundle", "required key is missing"),
        (lambda r: r["dependencies"].append({"ref": 42}), "dependencies[8].ref", "expected an image reference"),
        (lambda r: r["dependencies"].append({"ref": "Postgres:UPPER"}), "dependencies[8].ref", "not a valid image reference"),
        (lambda r: r.__setitem__("dependancies", []), "dependancies", "unknown key"),
        (lambda r: r["sources"]["backend"].pop("dockerfile"), "sources.backend.dockerfile", "required key is missing"),
        (lambda r: r["sources"]["backend"].__setitem__("context", "../outside"), "sources.backend.context", "inside the source tree"),
        (lambda r: r["site"]["variables"]["HTTP_PORT"].__setitem__("default", "eighty"), "site.variables.HTTP_PORT.default", "does not match"),
        (lambda r: r["site"]["secrets"]["JWT_SECRET"].__setitem__("length", 3), "site.secrets.JWT_SECRET.length", "integer from 8 to 256"),
        (lambda r: r["aliases"].append({"name": "x", "of": "nothing:here"}), "aliases[2].of", "neither a listed image"),
        (lambda r: r["compose"].__setitem__("template", "../../etc/passwd"), "compose.template", "expected a path inside"),
        (lambda r: r.__setitem__("apiVersion", "v0"), "apiVersion", "expected 'airgap/v1'"),
    ],
)
def test_malformed_manifest_names_file_key_and_expectation(tmp_path: Path, edit, key: str, expected: str) -> None:
    path = copy_manifest(tmp_path, edit)
    with pytest.raises(ManifestError) as failure:
        make_plan(load_manifest(path), registry=REGISTRY, tag="v1")
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
    result = CliRunner().invoke(main, ["resolve", str(MANIFEST), "--offline", "--registry", REGISTRY, "--tag", "v0.3.5"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].split()[:3] == ["KIND", "UPSTREAM", "TARGET"]
    assert len(lines) == 1 + 19
    assert any(line.split()[:1] == ["runtime"] and "ai-infra-singleuser:v0.3.5" in line for line in lines)


# --- compose rendering -------------------------------------------------------------------------

def render(tmp_path: Path, template_edit=None, edit=None):
    manifest = load_manifest(copy_manifest(tmp_path, edit, template_edit))
    return render_compose(make_plan(manifest, registry=REGISTRY, tag="v0.3.5"))


def test_rendered_compose_uses_site_names_and_has_no_build(tmp_path: Path) -> None:
    rendered = render(tmp_path)
    document = yaml.safe_load(rendered.text)
    images = {name: service["image"] for name, service in document["services"].items()}
    assert images["postgres"] == f"{REGISTRY}/postgres:v0.3.5"
    assert images["backend-init"] == f"{REGISTRY}/ai-infra-backend-init:v0.3.5"
    assert images["k8s-proxy"] == f"{REGISTRY}/ai-infra-k8s-proxy:v0.3.5"
    assert all(image.startswith(REGISTRY + "/") for image in images.values())
    assert not any("build" in service for service in document["services"].values())
    assert document["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == "${POSTGRES_PASSWORD}"
    assert rendered.oneshot == ["backend-init"]
    assert "nginx" in rendered.healthchecked and "files/nginx/site.conf" in rendered.files
    assert len(document["services"]) == 15


def test_values_with_commas_and_equals_survive(tmp_path: Path) -> None:
    rendered = render(tmp_path, template_edit=lambda t: t.replace(
        "LDAP_ORGANISATION: AI Infrastructure", 'LDAP_ORGANISATION: "o=AI Infrastructure,dc=ai-infra,dc=com"'))
    document = yaml.safe_load(rendered.text)
    assert document["services"]["openldap"]["environment"]["LDAP_ORGANISATION"] == "o=AI Infrastructure,dc=ai-infra,dc=com"


def test_undefined_template_variable_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r"undefined template variable: 'no_such_thing' is undefined"):
        render(tmp_path, template_edit=lambda t: t.replace("image: postgres:15-alpine", "image: {{ no_such_thing }}"))


def test_image_not_in_the_release_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match=r"service 'redis': image 'redis:6' is not in the release"):
        render(tmp_path, template_edit=lambda t: t.replace("image: redis:7-alpine", "image: redis:6"))


def test_inlined_secret_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match="environment POSTGRES_PASSWORD must reference a generated secret"):
        render(tmp_path, template_edit=lambda t: t.replace("POSTGRES_PASSWORD: ${POSTGRES_PASSWORD}", "POSTGRES_PASSWORD: admin123", 1))


def test_undeclared_variable_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match="neither site variables nor secrets.*NOT_DECLARED"):
        render(tmp_path, template_edit=lambda t: t.replace("TZ: ${TZ}", "TZ: ${NOT_DECLARED}"))


def test_bind_mount_must_be_shipped_and_inside(tmp_path: Path) -> None:
    with pytest.raises(ComposeError, match="is not shipped"):
        render(tmp_path, template_edit=lambda t: t.replace("files/nginx/site.conf", "files/nginx/missing.conf"))
    with pytest.raises(ComposeError, match="outside the release folder"):
        render(tmp_path / "b", template_edit=lambda t: t.replace("./files/nginx/site.conf", "../etc/site.conf"))


def test_compose_cli_accepts_the_rendered_config(tmp_path: Path) -> None:
    """The real compose CLI parses the result with a site environment file."""
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.fail("docker-compose is not installed: run scripts/setup.sh")
    rendered = render(tmp_path)
    manifest = load_manifest(tmp_path / "aimatrix.yaml")
    site = tmp_path / "site"
    shutil.copytree(tmp_path / "aimatrix" / "files", site / "files")
    (site / "docker-compose.yml").write_text(rendered.text)
    env = {name: var.default for name, var in manifest.variables.items()}
    env.update({name: "s3cret-" + name.lower() for name in manifest.secrets})
    (site / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    result = subprocess.run([compose, "config"], cwd=site, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["services"]["openldap"]["environment"]["LDAP_BASE_DN"] == "dc=ai-infra,dc=com"
    assert config["services"]["nginx"]["ports"][0]["published"] in (8080, "8080")
