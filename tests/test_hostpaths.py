"""Host paths the stack bind-mounts, without an engine: preflight's check, the Docker socket's mapping, the override."""
from __future__ import annotations

import os
import pwd
import socket
import subprocess
from pathlib import Path
from typing import Iterator, Optional

import pytest
import yaml

from installer.archive import BundleHeader
from installer.childenv import child_environment
from installer.compose import ComposeCli, ComposeError, ComposeProject, find_compose
from installer.hostpaths import SITE_OVERRIDE, HostPathError, check_mount, engine_socket, host_mounts, site_override, \
    write_site_override
from installer.preflight import host_path_checks, run_preflight


def header(*mounts: dict) -> BundleHeader:
    return BundleHeader(name="demo", version="v1", tool_version="t", platform="linux/amd64", created="", signer="",
                        images=[], members=[], release={"project": "demo", "host_mounts": list(mounts)})


def mount(service: str, source: str, target: str = "", read_only: bool = False) -> dict:
    return {"service": service, "source": source, "target": target or source, "read_only": read_only}


@pytest.fixture()
def engine_sock(tmp_path: Path) -> Iterator[Path]:
    """A real unix socket standing for the engine's (a short path: sun_path holds 108 bytes)."""
    path = Path(f"/tmp/airgap-hostpaths-{os.getpid()}.docker.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    yield path
    listener.close()
    path.unlink()


def test_a_missing_path_fails_naming_the_service_and_the_path_and_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "present").mkdir()
    checks = host_path_checks(header(mount("worker", "/nonexistent/x"), mount("web", str(tmp_path / "present"))), {}, "")
    missing, present = checks
    assert not missing.ok and missing.name == "host path /nonexistent/x (worker)"
    assert missing.detail == "worker bind-mounts /nonexistent/x, which does not exist on this host"
    assert "create /nonexistent/x" in missing.fix and "overlay" in missing.fix
    assert present.ok and present.detail.endswith(": directory")


def test_preflight_lists_the_host_path_failure_with_the_other_checks(tmp_path: Path) -> None:
    report = run_preflight(header(mount("worker", "/nonexistent/x")), None, tmp_path / "prefix", {})
    assert "host path /nonexistent/x (worker)" in [check.name for check in report.failures()]


def test_a_regular_file_where_the_engine_socket_should_be_fails(tmp_path: Path) -> None:
    fake = tmp_path / "docker.sock"
    fake.write_text("not a socket")
    [check] = host_path_checks(header(mount("jupyterhub", "/var/run/docker.sock", read_only=True)), {}, f"unix://{fake}")
    assert not check.ok
    assert check.detail == f"jupyterhub mounts the Docker socket /var/run/docker.sock (here {fake}), which is a file, not a socket"
    assert "DOCKER_HOST" in check.fix


def test_an_empty_folder_at_the_socket_path_is_named_as_a_leftover(tmp_path: Path) -> None:
    (tmp_path / "docker.sock").mkdir()
    with pytest.raises(HostPathError, match="is a directory, not a socket") as failure:
        check_mount(host_mounts(header(mount("hub", "/run/docker.sock")), {})[0], f"unix://{tmp_path}/docker.sock")
    assert "remove it" in failure.value.fix


def test_the_socket_mount_passes_and_is_mapped_to_the_engine_in_use(engine_sock: Path) -> None:
    release = header(mount("jupyterhub", "/var/run/docker.sock", read_only=True), mount("jupyterhub", "/etc/hostname"),
                     mount("agent", "/run/docker.sock", "/var/run/docker.sock"))
    [hub, hostname, agent] = host_path_checks(release, {}, f"unix://{engine_sock}")
    assert hub.ok and agent.ok and hostname.ok, (hub, agent, hostname)
    assert site_override(host_mounts(release, {}), f"unix://{engine_sock}") == {"services": {
        "jupyterhub": {"volumes": [{"type": "bind", "source": str(engine_sock), "target": "/var/run/docker.sock", "read_only": True}]},
        "agent": {"volumes": [{"type": "bind", "source": str(engine_sock), "target": "/var/run/docker.sock", "read_only": False}]},
    }}


def test_no_override_when_the_engine_is_on_the_default_socket() -> None:
    mounts = host_mounts(header(mount("jupyterhub", "/var/run/docker.sock", read_only=True)), {})
    assert site_override(mounts, "") == {}
    assert site_override(mounts, "unix:///var/run/docker.sock") == {}
    assert engine_socket("unix:///run/user/1000/docker.sock") == "/run/user/1000/docker.sock"


@pytest.mark.parametrize("docker_host", ["tcp://10.0.0.5:2376", "ssh://ops@engine"])
def test_a_remote_engine_fails_the_socket_mount_clearly(docker_host: str) -> None:
    [check] = host_path_checks(header(mount("jupyterhub", "/var/run/docker.sock", read_only=True)), {}, docker_host)
    assert not check.ok
    assert check.detail == (f"jupyterhub mounts the Docker socket /var/run/docker.sock, but DOCKER_HOST={docker_host} is not "
                            "a unix socket: a container cannot be handed a remote engine's socket")
    assert "unix://" in check.fix
    # a mount of anything else does not care where the engine is
    assert host_path_checks(header(mount("web", "/etc/hostname")), {}, docker_host)[0].ok


def test_home_is_expanded_for_the_installing_user_and_another_users_home_refused(tmp_path: Path) -> None:
    home = pwd.getpwuid(os.geteuid()).pw_dir
    [mine, theirs] = host_path_checks(header(mount("notes", "~/.", "/notes"), mount("notes", "~bob/data", "/data")), {}, "")
    assert mine.ok and f"(here {home}/.)" in mine.detail
    assert not theirs.ok and "only ~ (the installing user's home) is expanded" in theirs.detail
    assert site_override(host_mounts(header(mount("notes", "~/.", "/notes")), {}), "") == {
        "services": {"notes": {"volumes": [{"type": "bind", "source": f"{home}/.", "target": "/notes", "read_only": False}]}}}


def test_site_values_are_filled_into_the_paths(tmp_path: Path) -> None:
    [check] = host_path_checks(header(mount("web", "${DATA_ROOT}/missing", "/data")), {"DATA_ROOT": str(tmp_path)}, "")
    assert not check.ok and f"{tmp_path}/missing" in check.detail


def test_the_override_is_written_when_needed_removed_when_not_and_compose_is_given_it(tmp_path: Path, engine_sock: Path) -> None:
    release = header(mount("jupyterhub", "/var/run/docker.sock", read_only=True))
    project = ComposeProject(ComposeCli(argv=("docker", "compose"), version="v2.40.3"), "demo", tmp_path, tmp_path / "site.env")
    assert project.compose_files == [tmp_path / "docker-compose.yml"]
    written = write_site_override(tmp_path, release, {}, f"unix://{engine_sock}")
    assert written == tmp_path / SITE_OVERRIDE
    assert yaml.safe_load(written.read_text())["services"]["jupyterhub"]["volumes"][0]["source"] == str(engine_sock)
    argv = project.argv("ps")
    assert argv[argv.index(str(tmp_path / "docker-compose.yml")) + 1:][:2] == ["-f", str(written)]
    before = written.stat().st_mtime_ns
    assert write_site_override(tmp_path, release, {}, f"unix://{engine_sock}") == written
    assert written.stat().st_mtime_ns == before  # unchanged: not rewritten
    with pytest.raises(HostPathError, match="not a unix socket"):
        write_site_override(tmp_path, release, {}, "tcp://10.0.0.5:2376")
    assert written.exists()  # a refused mapping writes nothing
    assert write_site_override(tmp_path, header(), {}, f"unix://{engine_sock}") is None
    assert not written.exists() and project.compose_files == [tmp_path / "docker-compose.yml"]


def find_compose_or_none(version: str) -> Optional[ComposeCli]:
    try:
        return find_compose(version)
    except ComposeError:
        return None


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_compose_merges_the_override_by_container_path(tmp_path: Path, engine_sock: Path, version: str) -> None:
    """Both compose CLIs replace the application's socket mount with the override's, keeping every other mount."""
    cli = find_compose_or_none(version)
    if cli is None:
        message = f"compose {version} is not installed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump({"services": {"jupyterhub": {
        "image": "hub:v1",
        "volumes": ["hub_data:/srv/data", "/var/run/docker.sock:/var/run/docker.sock:ro", "./config.py:/srv/config.py:ro"],
    }}, "volumes": {"hub_data": {}}}))
    (tmp_path / "site.env").write_text("")
    write_site_override(tmp_path, header(mount("jupyterhub", "/var/run/docker.sock", read_only=True)), {}, f"unix://{engine_sock}")
    project = ComposeProject(cli, "demo", tmp_path, tmp_path / "site.env")
    result = subprocess.run(project.argv("config"), capture_output=True, text=True, cwd=tmp_path, env=child_environment(),
                            timeout=60)
    assert result.returncode == 0, result.stderr
    volumes = yaml.safe_load(result.stdout)["services"]["jupyterhub"]["volumes"]
    by_target = {}
    for entry in volumes:
        if isinstance(entry, str):  # v1 prints short syntax where it can
            source, target, *mode = entry.split(":")
            entry = {"source": source, "target": target, "read_only": mode == ["ro"]}
        by_target[entry["target"]] = entry
    assert sorted(by_target) == ["/srv/config.py", "/srv/data", "/var/run/docker.sock"]
    assert by_target["/var/run/docker.sock"]["source"] == str(engine_sock)
    assert by_target["/var/run/docker.sock"]["read_only"] is True
