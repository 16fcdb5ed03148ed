"""Deriving the site's compose config from an application's own compose file (no engine needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest
import yaml

from bundler.build import plan_release
from bundler.compose import ComposeError
from bundler.composefile import ComposeFileError, ComposeLoader
from bundler.manifest import manifest_from_data
from bundler.starter import starter_manifest

COMPOSE = """\
x-defaults: &defaults
  restart: unless-stopped
  env_file:
    - .env.site
services:
  db:
    <<: *defaults
    image: postgres:${PG_TAG:-15-alpine}
    environment:
      POSTGRES_PASSWORD: ${DB_PASSWORD}
      POSTGRES_USER: ${DB_USER:-app}
    volumes:
      - dbdata:/var/lib/postgresql/data
    healthcheck:
      test: ["CMD-SHELL", "pg_isready -U $${POSTGRES_USER}"]
  migrate:
    build:
      context: ./svc
      target: migrate
      args:
        VERSION: ${APP_VERSION:-dev}
    image: shop/api-migrate:${APP_VERSION:-dev}
    restart: "no"
    depends_on:
      db: {condition: service_healthy}
  api:
    <<: *defaults
    build: ./svc
    image: shop/api:${APP_VERSION:-dev}
    command: ["serve", "--log", "${LOG_LEVEL:?set LOG_LEVEL}"]
    environment:
      - DATABASE_URL=${DATABASE_URL}
      - TOKEN=${API_TOKEN}
    ports:
      - "${API_PORT:-8000}:8000"
    volumes:
      - ./conf/api.ini:/etc/api.ini:ro
      - ./uploads:/srv/uploads
    depends_on:
      migrate: {condition: service_completed_successfully}
  debug:
    image: busybox:1.36
    profiles: [debug]
volumes:
  dbdata:
    name: shop-db
"""

ENV = """\
APP_VERSION=1.4.0
DB_USER=shop
DB_PASSWORD=CHANGE_ME
API_TOKEN=0123456789abcdef0123456789abcdef
DATABASE_URL=postgresql://${DB_USER}:${DB_PASSWORD}@db/shop
LOG_LEVEL=info
EMPTY_TOKEN=
"""


def make_app(tmp_path: Path, compose: str = COMPOSE, overlay: Optional[str] = None) -> Path:
    source = tmp_path / "shop"
    (source / "svc").mkdir(parents=True)
    (source / "svc" / "Dockerfile").write_text("FROM scratch\n")
    (source / "conf").mkdir()
    (source / "conf" / "api.ini").write_text("[api]\n")
    (source / "uploads").mkdir()
    (source / "uploads" / ".keep").write_text("")
    (source / "compose.yaml").write_text(compose)
    (source / ".env").write_text(ENV)
    if overlay is not None:
        (tmp_path / "prod.yml").write_text(overlay)
    return source


def derive(tmp_path: Path, source: Path, edit=None, overlay: bool = False):
    data = starter_manifest(source / "compose.yaml", name="shop", version="v2", registry="harbor.lab/shop")
    if overlay:
        data["compose"]["overlay"] = "prod.yml"
    if edit:
        edit(data)
    manifest = manifest_from_data(data, tmp_path / "shop.yaml")
    return plan_release(manifest, source, registry=None, tag=None, platform="linux/amd64", with_build_bases=False)


def test_only_images_build_and_pulls_change(tmp_path: Path) -> None:
    release = derive(tmp_path, make_app(tmp_path))
    derived = yaml.load(release.compose.text, Loader=ComposeLoader)
    original = release.app.original
    services = derived["services"]
    assert services["db"]["image"] == "harbor.lab/shop/postgres:v2"
    assert services["api"]["image"] == "harbor.lab/shop/api:v2"
    assert services["migrate"]["image"] == "harbor.lab/shop/api-migrate:v2"
    for name, service in services.items():
        assert "build" not in service
        before = dict(original["services"][name])
        before.pop("build", None)
        before.pop("image")
        after = dict(service)
        after.pop("image")
        assert after == before, name  # every other key exactly as the application wrote it (merges resolved)
    assert services["db"]["restart"] == "unless-stopped" and services["db"]["env_file"] == [".env.site"]
    assert derived["volumes"] == {"dbdata": {"name": "shop-db"}}
    assert derived["x-defaults"] == original["x-defaults"]  # extension blocks stay as written


def test_site_settings_come_from_the_env_file_and_compose_defaults(tmp_path: Path) -> None:
    compose = derive(tmp_path, make_app(tmp_path)).compose
    assert set(compose.secrets) == {"DB_PASSWORD", "API_TOKEN"}
    assert compose.secrets["API_TOKEN"].alphabet == "hex" and compose.secrets["API_TOKEN"].length == 32
    variables = compose.variables
    assert variables["DB_USER"].default == "shop" and variables["API_PORT"].default == "8000"
    assert variables["DATABASE_URL"].template == "postgresql://${DB_USER}:${DB_PASSWORD}@db/shop"
    assert variables["EMPTY_TOKEN"].default == ""  # an empty token stays the site's to set, never invented
    assert "PG_TAG" not in variables  # it only picks the image, at build time
    assert "CHANGE_ME" not in compose.text and "0123456789abcdef" not in compose.text


def test_required_variable_without_default_is_marked(tmp_path: Path) -> None:
    source = make_app(tmp_path)
    (source / ".env").write_text(ENV.replace("LOG_LEVEL=info\n", ""))
    assert derive(tmp_path, source).compose.variables["LOG_LEVEL"].required


def test_files_are_shipped_and_writable_folders_kept_on_the_site(tmp_path: Path) -> None:
    compose = derive(tmp_path, make_app(tmp_path)).compose
    assert compose.files == ["conf/api.ini", "uploads/.keep"]
    assert compose.state_dirs == ["uploads"]
    assert compose.env_files == {".env.site": ["APP_VERSION", "DB_USER", "DB_PASSWORD", "API_TOKEN", "DATABASE_URL", "LOG_LEVEL",
                                              "EMPTY_TOKEN"]}  # not in the tree: the site writes it from .env
    assert compose.services == ["db", "migrate", "api"] and compose.profiles == {"debug": ["debug"]}
    assert compose.oneshot == ["migrate"] and compose.healthchecked == ["db"]
    assert compose.ports == [{"service": "api", "spec": "${API_PORT:-8000}:8000"}]


def test_a_service_whose_image_is_not_in_the_release_is_refused_by_name(tmp_path: Path) -> None:
    source = make_app(tmp_path)
    text = COMPOSE.replace("volumes:\n  dbdata:", "  cache:\n    image: redis:7-alpine\nvolumes:\n  dbdata:")
    (source / "compose.yaml").write_text(text)

    def forget_redis(data):
        data["dependencies"] = [d for d in data["dependencies"] if not d.startswith("redis")]

    with pytest.raises(ComposeError, match=r"compose\.yaml: services\.cache\.image: 'redis:7-alpine' is not in the release"):
        derive(tmp_path, source, forget_redis)


def test_missing_bind_mounted_file_and_escaping_paths_are_refused(tmp_path: Path) -> None:
    source = make_app(tmp_path)
    (source / "conf" / "api.ini").unlink()
    with pytest.raises(ComposeError, match=r"services\.api\.volumes: bind-mounted ./conf/api.ini does not exist"):
        derive(tmp_path, source)
    (source / "compose.yaml").write_text(COMPOSE.replace("./conf/api.ini", "../outside.ini"))
    with pytest.raises(ComposeError, match="points outside the compose file's folder"):
        derive(tmp_path, source)


def test_overlay_changes_are_merged_and_explained(tmp_path: Path) -> None:
    overlay = ("services:\n  api:\n    ports: !override\n      - \"${API_PORT:-9000}:8000\"\n"
               "    deploy: {resources: {limits: {memory: 512M}}}\n  debug: !reset\n")
    release = derive(tmp_path, make_app(tmp_path, overlay=overlay), overlay=True)
    derived = yaml.load(release.compose.text, Loader=ComposeLoader)
    assert derived["services"]["api"]["ports"] == ["${API_PORT:-9000}:8000"]
    assert derived["services"]["api"]["deploy"] == {"resources": {"limits": {"memory": "512M"}}}
    assert "debug" not in derived["services"]
    changes = release.compose.changes
    assert "overlay: service left out" in changes["debug"]
    assert any(c.startswith("overlay: ports:") for c in changes["api"])
    assert any(c.startswith("overlay: deploy added") for c in changes["api"])
    assert "build: dropped (built from svc/Dockerfile)" in changes["api"]


def test_sources_come_from_build_sections_with_manifest_overrides(tmp_path: Path) -> None:
    def override(data):
        data["sources"]["api"] = {"args": {"EXTRA": "1"}, "name": "shop-api"}

    release = derive(tmp_path, make_app(tmp_path), override)
    specs = {s.service: s for s in release.manifest.sources}
    assert specs["migrate"].context == "svc" and specs["migrate"].dockerfile == "svc/Dockerfile"
    assert specs["migrate"].target == "migrate" and specs["migrate"].args == {"VERSION": "1.4.0"}
    assert specs["api"].args == {"EXTRA": "1"} and specs["api"].image == "shop/api"
    assert release.plan.source_for("api").target == "harbor.lab/shop/shop-api:v2"


def test_overlay_service_without_image_is_refused(tmp_path: Path) -> None:
    source = make_app(tmp_path, overlay="services:\n  ghost:\n    command: [x]\n")
    with pytest.raises(ComposeFileError, match=r"services\.ghost: not a service of compose\.yaml"):
        derive(tmp_path, source, overlay=True)
