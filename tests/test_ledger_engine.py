"""A second, unrelated compose application (tests/apps/ledger: compose.yaml + .env, anchors and merge
keys, every interpolation style, a one-shot migration, a profile-only service) bundled with `init` +
`build` and with `build --compose`, and installed on the air-gapped engine: the bundler is not tied to
AI-Infra Matrix."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path, PurePosixPath

import pytest
import yaml
import zstandard

from tests.test_install_engine import airgap_install, in_namespace

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "tests" / "apps" / "ledger"
NAME = "ledger"                     # init and --compose take the compose file's folder name
PROJECT = "ledger"                  # the installer's compose project is the bundle name
REGISTRY = "harbor.lab/ledger"
VERSION = "v1.4.2"
DEFAULT_WEB_PORT = 8090
SECRETS = ("DB_PASSWORD", "API_SECRET_KEY")
RUNNING = {"db", "cache", "api", "worker", "web"}   # adminer is in profile "debug": never started
ONESHOT = "migrate"


def read_env(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file (comments and blank lines skipped)."""
    return dict(line.split("=", 1) for line in path.read_text().splitlines()
                if "=" in line and not line.lstrip().startswith("#"))


DEV_ENV = read_env(APP / ".env")    # the development values compose would interpolate


def airgap_bundle(*args: str, docker_host: str | None = None) -> subprocess.CompletedProcess:
    """Run airgap-bundle on the connected side (the BUILD engine when ``docker_host`` is given)."""
    env = dict(os.environ)
    if docker_host:
        env["DOCKER_HOST"] = docker_host
    result = subprocess.run([sys.executable, "-m", "bundler.cli", *args], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=900)
    if result.returncode != 0:
        raise AssertionError(f"airgap-bundle {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def http_get_in_namespace(harness, url: str, check: bool = True) -> subprocess.CompletedProcess:
    """GET ``url`` from inside the namespace (no proxy), printing the body."""
    code = ("import sys, urllib.request\n"
            "opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))\n"
            "sys.stdout.write(opener.open(sys.argv[1], timeout=5).read().decode())\n")
    return in_namespace(harness, sys.executable, "-c", code, url, check=check, timeout=60)


def free_port_in_namespace(harness, avoid: set[int]) -> int:
    """A TCP port nothing listens on inside the namespace."""
    code = ("import socket, sys\n"
            "avoid = {int(p) for p in sys.argv[1:]}\n"
            "for port in range(18090, 18190):\n"
            "    if port in avoid: continue\n"
            "    s = socket.socket()\n"
            "    try:\n"
            "        s.bind(('0.0.0.0', port))\n"
            "    except OSError:\n"
            "        continue\n"
            "    finally:\n"
            "        s.close()\n"
            "    print(port); break\n")
    out = in_namespace(harness, sys.executable, "-c", code, *map(str, avoid)).stdout.strip()
    assert out, "no free port in the namespace"
    return int(out)


def names(section) -> set[str]:
    """The names a manifest section lists: a mapping's keys, or a list of refs (strings or {ref: ...})."""
    if isinstance(section, dict):
        return set(section)
    return {item["ref"] if isinstance(item, dict) else item for item in section or ()}


def archive_bytes_and_members(archive: Path) -> tuple[bytes, list[str]]:
    with open(archive, "rb") as handle:
        data = zstandard.ZstdDecompressor().stream_reader(handle, read_across_frames=True).read()
    return data, tarfile.open(fileobj=io.BytesIO(data)).getnames()


def project_containers(target_engine) -> dict:
    """Service name -> container of the ledger project on the target engine (running or not)."""
    found = target_engine.containers.list(all=True, filters={"label": f"com.docker.compose.project={PROJECT}"})
    return {c.labels["com.docker.compose.service"]: c for c in found}


def assert_stack_healthy(target_engine) -> dict:
    containers = project_containers(target_engine)
    assert set(containers) == RUNNING | {ONESHOT}, sorted(containers)
    migrate = containers[ONESHOT].attrs["State"]
    assert migrate["Status"] == "exited" and migrate["ExitCode"] == 0, migrate
    for name in RUNNING:
        state = containers[name].attrs["State"]
        assert state["Status"] == "running", (name, state["Status"])
        assert state.get("Health", {}).get("Status") == "healthy", (name, state.get("Health"))
    return containers


def assert_site_secrets_are_fresh(prefix: Path, archive_data: bytes) -> dict[str, str]:
    """The site's secrets exist, are not the .env development values and are nowhere in the archive."""
    site = read_env(prefix / "site.env")
    assert oct((prefix / "site.env").stat().st_mode & 0o777) == "0o600"
    for key in SECRETS:
        value = site.get(key, "")
        assert len(value) >= 12, f"{key} missing or weak in site.env"
        assert value != DEV_ENV[key], f"{key} is the .env development value"
        assert value.encode() not in archive_data, f"{key}'s site value is in the archive"
    return site


def assert_no_env_file_and_no_dev_secrets(archive_data: bytes, members: list[str]) -> None:
    assert not [m for m in members if PurePosixPath(m).name == ".env"], members
    for key in SECRETS:
        assert DEV_ENV[key].encode() not in archive_data, f"the .env value of {key} is in the archive"


# -- fixtures ----------------------------------------------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Path:
    """A copy of the application (its folder is named ledger): nothing writes into the repository."""
    dest = tmp_path_factory.mktemp("app") / NAME
    shutil.copytree(APP, dest, symlinks=True)
    return dest


@pytest.fixture(scope="module")
def key(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("keys")
    airgap_bundle("keygen", "-o", str(folder / "release.key"))
    return {"private": folder / "release.key", "public": folder / "release.pub"}


@pytest.fixture(scope="module")
def initialised(app, tmp_path_factory) -> dict:
    """`init` on the compose file: a starter manifest outside the application's folder."""
    manifest = tmp_path_factory.mktemp("manifest") / "ledger.yaml"
    result = airgap_bundle("init", str(app / "compose.yaml"), "--registry", REGISTRY, "--version", VERSION, "-o", str(manifest))
    return {"manifest": manifest, "output": result.stdout + result.stderr}


@pytest.fixture(scope="module")
def active_prefixes(harness):
    """Prefixes whose stack may be up; every one is taken down (with its data volumes) at the end."""
    prefixes: list[Path] = []
    yield prefixes
    failures = []
    for prefix in reversed(prefixes):
        if not (prefix / "current").exists():  # the install failed before writing a release
            continue
        result = airgap_install(harness, "down", "--prefix", str(prefix), "--remove-data-volumes", check=False)
        if result.returncode != 0:
            failures.append(f"{prefix}: {result.stderr.strip()}")
    assert not failures, "cleanup failed:\n" + "\n".join(failures)


@pytest.fixture(scope="module")
def manifest_release(harness, initialised, app, key, tmp_path_factory) -> dict:
    """init's manifest, built on the BUILD engine."""
    out = tmp_path_factory.mktemp("release-manifest")
    result = airgap_bundle("build", str(initialised["manifest"]), "--source", str(app), "--key", str(key["private"]),
                           "-o", str(out), "--lock", str(out / "lock.json"), "--no-kit", docker_host=harness.build_docker_host)
    archive = out / f"{NAME}-{VERSION}.tar.zst"
    assert archive.is_file(), f"no {archive.name} in {sorted(p.name for p in out.iterdir())}\n{result.stderr}"
    return {"archive": archive, "output": result.stdout + result.stderr}


@pytest.fixture(scope="module")
def installed(harness, manifest_release, key, active_prefixes, tmp_path_factory) -> dict:
    """The manifest release installed on the emptied air-gapped engine, with every default."""
    harness.reset_target()
    prefix = tmp_path_factory.mktemp("site-manifest") / NAME
    active_prefixes.append(prefix)
    result = airgap_install(harness, "install", str(manifest_release["archive"]), "--pubkey", str(key["public"]),
                            "--prefix", str(prefix), "--timeout", "180")
    return {"prefix": prefix, "stdout": result.stdout, "stderr": result.stderr}


@pytest.fixture(scope="module")
def compose_release(harness, app, key, tmp_path_factory) -> dict:
    """The same application bundled straight from its compose file, without a manifest."""
    out = tmp_path_factory.mktemp("release-compose")
    result = airgap_bundle("build", "--compose", str(app / "compose.yaml"), "--name", NAME, "--tag", VERSION,
                           "--registry", REGISTRY, "--key", str(key["private"]), "-o", str(out),
                           "--lock", str(out / "lock.json"), "--no-kit", docker_host=harness.build_docker_host)
    archive = out / f"{NAME}-{VERSION}.tar.zst"
    assert archive.is_file(), f"no {archive.name} in {sorted(p.name for p in out.iterdir())}\n{result.stderr}"
    return {"archive": archive, "output": result.stdout + result.stderr}


@pytest.fixture(scope="module")
def installed_from_compose(harness, compose_release, key, active_prefixes, tmp_path_factory) -> dict:
    """The --compose release installed under a second prefix with another web port.

    The compose project is the bundle name either way, so every earlier install is taken down
    (data volumes too) first.
    """
    earlier = list(active_prefixes)
    for prefix in earlier:
        airgap_install(harness, "down", "--prefix", str(prefix), "--remove-data-volumes")
        active_prefixes.remove(prefix)
    port = free_port_in_namespace(harness, avoid={DEFAULT_WEB_PORT})
    prefix = tmp_path_factory.mktemp("site-compose") / NAME
    active_prefixes.append(prefix)
    result = airgap_install(harness, "install", str(compose_release["archive"]), "--pubkey", str(key["public"]),
                            "--prefix", str(prefix), "--timeout", "180", "--set", f"WEB_PORT={port}")
    return {"prefix": prefix, "port": port, "earlier": earlier, "stdout": result.stdout, "stderr": result.stderr}


# -- tests -------------------------------------------------------------------


def test_init_finds_dependencies_sources_variables_and_secrets(initialised) -> None:
    text = initialised["manifest"].read_text()
    data = yaml.safe_load(text)
    assert data["bundle"]["name"] == NAME
    # image: lines (adminer's nginx is the web's nginx); build bases (FROM lines) are not dependencies
    assert names(data["dependencies"]) == {"postgres:15-alpine", "redis:7-alpine", "nginx:1.27-alpine"}
    assert names(data["sources"]) == {"api", "migrate", "worker"}
    site = data["site"]
    assert {"DB_PASSWORD", "API_SECRET_KEY"} <= names(site["secrets"])
    variables = names(site["variables"])
    assert "WEB_PORT" in variables
    assert not variables & set(SECRETS), "a secret must not also be a plain variable"
    for key in SECRETS:
        assert DEV_ENV[key] not in text, f"the .env development value of {key} is in the manifest"
    for word in ("postgres:15-alpine", "nginx:1.27-alpine", "DB_PASSWORD", "API_SECRET_KEY"):
        assert word in initialised["output"], f"init did not say it found {word}"


def test_init_build_install_is_healthy_and_keeps_secrets_on_the_site(harness, installed, manifest_release,
                                                                      target_engine) -> None:
    assert f"healthy: {len(RUNNING)} service(s) up, 1 one-shot(s) done" in installed["stderr"]
    containers = assert_stack_healthy(target_engine)
    # the published web port answers inside the namespace
    assert http_get_in_namespace(harness, f"http://127.0.0.1:{DEFAULT_WEB_PORT}/health").stdout.strip() == "ok"
    # migrate wrote the schema marker into the shared volume; the api serves it
    assert containers["api"].exec_run(["cat", "/www/api/schema"]).output.decode().strip() == "7"
    # the bind-mounted file was shipped and mounted
    mounted = containers["web"].exec_run(["cat", "/etc/nginx/conf.d/site.conf"])
    assert mounted.exit_code == 0 and mounted.output == (APP / "web" / "site.conf").read_bytes()
    # $$ survived as a literal $: the container's shell expanded it
    hostname = containers["worker"].attrs["Config"]["Hostname"]
    assert f"worker {hostname}: queue ledger-jobs" in containers["worker"].logs().decode()

    archive_data, members = archive_bytes_and_members(manifest_release["archive"])
    assert_no_env_file_and_no_dev_secrets(archive_data, members)
    site = assert_site_secrets_are_fresh(installed["prefix"], archive_data)
    # the containers got the site's secrets and the .env's plain values
    api_env = set(containers["api"].attrs["Config"]["Env"])
    assert {f"DB_PASSWORD={site['DB_PASSWORD']}", f"API_SECRET_KEY={site['API_SECRET_KEY']}",
            f"DB_NAME={DEV_ENV['DB_NAME']}", "LEDGER_CURRENCY=EUR"} <= api_env
    assert f"POSTGRES_PASSWORD={site['DB_PASSWORD']}" in containers["db"].attrs["Config"]["Env"]


def test_build_from_the_compose_file_alone_installs_too(harness, installed_from_compose, compose_release,
                                                        target_engine) -> None:
    port = installed_from_compose["port"]
    assert f"healthy: {len(RUNNING)} service(s) up, 1 one-shot(s) done" in installed_from_compose["stderr"]
    containers = assert_stack_healthy(target_engine)
    assert containers["api"].exec_run(["cat", "/www/api/schema"]).output.decode().strip() == "7"
    assert http_get_in_namespace(harness, f"http://127.0.0.1:{port}/health").stdout.strip() == "ok"
    assert http_get_in_namespace(harness, f"http://127.0.0.1:{DEFAULT_WEB_PORT}/health", check=False).returncode != 0

    prefix = installed_from_compose["prefix"]
    assert read_env(prefix / "site.env")["WEB_PORT"] == str(port)
    archive_data, members = archive_bytes_and_members(compose_release["archive"])
    assert_no_env_file_and_no_dev_secrets(archive_data, members)
    site = assert_site_secrets_are_fresh(prefix, archive_data)
    for earlier in installed_from_compose["earlier"]:
        before = read_env(earlier / "site.env")
        for key in SECRETS:
            assert site[key] != before[key], f"{key} was reused from {earlier}"
