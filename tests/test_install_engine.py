"""The installer against a real air-gapped engine: a daemon in a network namespace with only
loopback, the installer itself run inside that namespace, the archive built from the stand-in stack."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zstandard

from installer.archive import read_header
from installer.signing import fingerprint, load_public_key
from tests.harness import SOURCE_DIR

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "manifests" / "aimatrix.yaml"
REGISTRY = "aiharbor.msxf.local/aihpc"
TAG = "v0.3.5"
PROJECT = "ai-infra-matrix"


def in_namespace(harness, *argv: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a command inside the air-gapped namespace, talking to the target engine."""
    command = ["nsenter", f"--net=/var/run/netns/{harness.netns}", "env", f"DOCKER_HOST={harness.target_docker_host}", *argv]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def airgap_install(harness, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return in_namespace(harness, sys.executable, "-m", "installer.cli", *args, check=check)


@pytest.fixture(scope="module")
def release(harness, tmp_path_factory) -> dict:
    """The v0.3.5 archive of the stand-in stack and its key."""
    folder = tmp_path_factory.mktemp("release")
    env = dict(os.environ, DOCKER_HOST=harness.build_docker_host)
    bundle = [sys.executable, "-m", "bundler.cli"]
    subprocess.run(bundle + ["keygen", "-o", str(folder / "release.key")], check=True, env=env, capture_output=True)
    subprocess.run(bundle + ["build", str(MANIFEST), "--registry", REGISTRY, "--tag", TAG, "--source", str(SOURCE_DIR),
                             "--key", str(folder / "release.key"), "-o", str(folder), "--lock", str(folder / "lock.json")],
                   check=True, env=env, capture_output=True, cwd=ROOT)
    kits = list(folder.glob("airgap-install-kit-*"))
    assert len(kits) == 1
    return {"archive": folder / f"aimatrix-{TAG}.tar.zst", "pubkey": folder / "release.pub", "folder": folder, "kit": kits[0]}


def engine_snapshot(client) -> dict:
    """Everything an install could change in the engine."""
    return {
        "images": sorted((i.id, tuple(sorted(i.tags))) for i in client.images.list(all=True)),
        "containers": sorted((c.name, c.status) for c in client.containers.list(all=True)),
        "volumes": sorted(v.name for v in client.volumes.list()),
        "networks": sorted(n.name for n in client.networks.list()),
    }


def tree_snapshot(path: Path) -> dict:
    """Every file, link and folder under ``path`` with content hash and mode (or None if absent)."""
    if not path.exists():
        return {"absent": True}
    result = {}
    for item in sorted(path.rglob("*")):
        stat = item.lstat()
        if item.is_symlink():
            result[str(item)] = ("link", os.readlink(item))
        elif item.is_file():
            result[str(item)] = ("file", oct(stat.st_mode), hashlib.sha256(item.read_bytes()).hexdigest())
        else:
            result[str(item)] = ("dir", oct(stat.st_mode))
    return result


DEFAULT_SOCKET = Path("/var/run/docker.sock")


def default_socket_state() -> object:
    """What is at the host's default engine socket: None, or (mode, inode) of what is there."""
    if not os.path.lexists(DEFAULT_SOCKET):
        return None
    stat = DEFAULT_SOCKET.lstat()
    return (stat.st_mode, stat.st_ino)


def clear_default_socket_leftover() -> None:
    """Remove the empty folder an older run left at the default socket (a stack that mounted the
    socket, started on an engine listening elsewhere): the install must be shown to leave nothing."""
    if DEFAULT_SOCKET.is_dir() and not DEFAULT_SOCKET.is_symlink():
        assert not any(DEFAULT_SOCKET.iterdir()), f"{DEFAULT_SOCKET} is a folder with content; look at it and remove it"
        DEFAULT_SOCKET.rmdir()


@pytest.fixture(scope="module")
def installed(harness, release, tmp_path_factory) -> dict:
    """On an empty air-gapped engine, with no network: the kit installs airgap-install, which installs v0.3.5 (compose v2)."""
    harness.reset_target()
    clear_default_socket_leftover()
    socket_before = default_socket_state()
    site = tmp_path_factory.mktemp("site")
    in_namespace(harness, "sh", str(release["kit"] / "install.sh"), "--fingerprint",
                 fingerprint(load_public_key(release["pubkey"])), "--prefix", str(site / "tool"), "--no-link")
    tool = site / "tool" / "bin" / "airgap-install"
    prefix = site / "aimatrix"
    result = in_namespace(harness, str(tool), "install", str(release["archive"]), "--pubkey", str(release["pubkey"]),
                          "--prefix", str(prefix), "--timeout", "180", "--compose", "v2")
    return {"prefix": prefix, "stdout": result.stdout, "stderr": result.stderr, "tool": tool,
            "default_socket": (socket_before, default_socket_state())}


def test_fresh_install_is_healthy_and_answers_inside_the_namespace(harness, installed, target_engine) -> None:
    assert "healthy: 14 service(s) up, 2 one-shot(s) done" in installed["stderr"]
    default_route = in_namespace(harness, "ip", "-4", "route", "show", "default").stdout
    assert default_route.strip() == "", "the namespace must have no route out"
    assert "airgap-install, version" in in_namespace(harness, str(installed["tool"]), "--version").stdout
    assert "main entry: http://localhost:8080" in installed["stdout"]
    containers = {c.labels["com.docker.compose.service"]: c for c in target_engine.containers.list(all=True,
                  filters={"label": f"com.docker.compose.project={PROJECT}"})}
    assert len(containers) == 16  # the application's 15 services and the overlay's gitea-debug
    for oneshot in ("backend-init", "singleuser-builder"):
        state = containers[oneshot].attrs["State"]
        assert state["Status"] == "exited" and state["ExitCode"] == 0, oneshot
    # backend started only after backend-init had migrated the database (it refuses an uninitialised schema)
    init_finished = containers["backend-init"].attrs["State"]["FinishedAt"]
    assert containers["backend"].attrs["State"]["StartedAt"] > init_finished
    assert "database schema is not initialised" not in containers["backend"].logs().decode()
    for name, container in containers.items():
        if name in ("backend-init", "singleuser-builder"):
            continue
        state = container.attrs["State"]
        assert state["Status"] == "running", name
        if "Health" in state:
            assert state["Health"]["Status"] == "healthy", name
    answer = in_namespace(harness, "wget", "-qO-", "http://127.0.0.1:8080/health").stdout
    assert answer.strip() == "ok"
    # and the host outside the namespace cannot reach it: the target is isolated
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", 8080), timeout=2).close()


def test_the_docker_socket_mount_gets_the_target_engines_socket_and_nothing_is_left_at_the_default(
        harness, release, installed, target_engine) -> None:
    before, after = installed["default_socket"]
    if before is None:
        assert after is None and not os.path.lexists(DEFAULT_SOCKET), "the install left something at the host's default socket"
    else:  # an engine of this host listens there: the install must not have touched it
        assert after == before
    engine_socket = harness.target_docker_host[len("unix://"):]
    override = installed["prefix"] / "releases" / TAG / "docker-compose.site.yml"
    assert engine_socket in override.read_text()
    [hub] = target_engine.containers.list(filters={"label": [f"com.docker.compose.project={PROJECT}",
                                                             "com.docker.compose.service=jupyterhub"]})
    [socket_mount] = [m for m in hub.attrs["Mounts"] if m["Destination"] == "/var/run/docker.sock"]
    assert socket_mount["Type"] == "bind" and socket_mount["Source"] == engine_socket and socket_mount["RW"] is False
    assert hub.exec_run(["test", "-S", "/var/run/docker.sock"]).exit_code == 0
    # the preflight of the same archive lists the mapping as passed
    preflight = airgap_install(harness, "preflight", str(release["archive"]), "--pubkey", str(release["pubkey"]), "--prefix", str(installed["prefix"]))
    assert (f"ok   host path /var/run/docker.sock (jupyterhub): jupyterhub mounts /var/run/docker.sock "
            f"(here {engine_socket}): the engine's socket") in preflight.stderr


def _archive_with_host_mount(folder: Path, source: str) -> tuple[Path, Path]:
    """A small signed archive (no images) whose service ``worker`` bind-mounts ``source`` from the host."""
    from installer.archive import ArchiveWriter, BundleHeader
    from installer.signing import fingerprint, generate_keypair, load_private_key, sign

    private_path, public_path, _ = generate_keypair(folder / "mounts.key")
    private = load_private_key(private_path)
    archive = folder / "mounts-v1.tar.zst"
    compose = f"services:\n  worker:\n    image: mounts/worker:v1\n    volumes:\n      - {source}:/data\n".encode()
    with ArchiveWriter(archive, header_reserve=64 * 1024) as writer:
        writer.add_bytes("release/docker-compose.yml", compose)
        header = BundleHeader(
            name="mounts", version="v1", tool_version="test", platform="linux/amd64", created="1970-01-01T00:00:00Z",
            signer=fingerprint(private.public_key()), images=[], members=list(writer.members),
            release={"project": "mounts", "services": ["worker"],
                     "host_mounts": [{"service": "worker", "source": source, "target": "/data", "read_only": False}]},
        )
        data = header.to_bytes()
        writer.finish(data, sign(private, data))
    return archive, public_path


def test_a_missing_bind_mount_source_is_refused_by_preflight_with_nothing_changed(harness, target_engine, tmp_path) -> None:
    archive, pubkey = _archive_with_host_mount(tmp_path, "/nonexistent/x")
    prefix = tmp_path / "site"
    before_engine = engine_snapshot(target_engine)
    result = airgap_install(harness, "install", str(archive), "--pubkey", str(pubkey), "--prefix", str(prefix), check=False)
    assert result.returncode == 2, result.stderr
    assert ("FAIL host path /nonexistent/x (worker): worker bind-mounts /nonexistent/x, which does not exist on this host"
            in result.stderr)
    assert "preflight failed: 1 check(s) did not pass; nothing was changed" in result.stderr
    assert "create /nonexistent/x" in result.stderr
    assert engine_snapshot(target_engine) == before_engine
    assert not prefix.exists() and not os.path.lexists("/nonexistent")


def test_a_remote_engine_cannot_be_handed_to_a_container(harness, release, tmp_path) -> None:
    result = in_namespace(harness, "env", "DOCKER_HOST=tcp://127.0.0.1:2375", sys.executable, "-m", "installer.cli",
                          "preflight", str(release["archive"]), "--pubkey", str(release["pubkey"]), "--prefix", str(tmp_path / "site"), check=False)
    assert result.returncode == 2
    assert ("FAIL host path /var/run/docker.sock (jupyterhub): jupyterhub mounts the Docker socket /var/run/docker.sock, "
            "but DOCKER_HOST=tcp://127.0.0.1:2375 is not a unix socket: a container cannot be handed a remote engine's "
            "socket") in result.stderr


def test_site_config_layout_and_modes(installed) -> None:
    prefix = installed["prefix"]
    assert os.readlink(prefix / "current") == "releases/v0.3.5"
    assert (prefix / "releases" / TAG / "docker-compose.yml").is_file()
    release = prefix / "releases" / TAG
    assert (release / "src" / "jupyterhub" / "jupyterhub_config.py").is_file()  # bind-mounted file, shipped
    assert oct((prefix / "site.env").stat().st_mode & 0o777) == "0o600"
    env = dict(line.split("=", 1) for line in (prefix / "site.env").read_text().splitlines() if "=" in line and not line.startswith("#"))
    assert env["LDAP_BASE_DN"] == "dc=example,dc=org"  # the application's own default, from .env.prod.example
    assert len(env["POSTGRES_PASSWORD"]) == 24 and len(env["JUPYTERHUB_CRYPT_KEY"]) == 64
    assert env["DATABASE_URL"] == (f"postgresql://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}@{env['POSTGRES_HOST']}:"
                                   f"{env['POSTGRES_PORT']}/{env['POSTGRES_DB']}")  # filled in on the site
    # the services' env_file, written on the site with the variables of .env.prod.example and no other
    prod = dict(line.split("=", 1) for line in (release / ".env.prod").read_text().splitlines())
    assert oct((release / ".env.prod").stat().st_mode & 0o777) == "0o600"
    assert prod["POSTGRES_PASSWORD"] == env["POSTGRES_PASSWORD"] and "GITEA_HOST_PORT" not in prod
    # folders the stack writes to live outside the release, so an upgrade keeps them
    assert os.readlink(release / "src" / "backend" / "outputs") == str(prefix / "data" / "src" / "backend" / "outputs")
    assert (prefix / "data" / "shared" / "sso" / "ai-infra-sso.js").is_file()


def test_every_name_the_stack_uses_exists(installed, target_engine) -> None:
    tags = {tag for image in target_engine.images.list() for tag in image.tags}
    assert "ai-infra-singleuser:v0.3.5" in tags
    assert f"{REGISTRY}/ai-infra-gitea-debug:{TAG}" in tags and f"{REGISTRY}/tcp-proxy:{TAG}" in tags


def test_status_json_and_logs(harness, installed) -> None:
    status = airgap_install(harness, "status", "--prefix", str(installed["prefix"]), "--json")
    data = json.loads(status.stdout)
    assert data["healthy"] is True and data["version"] == TAG and len(data["services"]) == 16
    logs = airgap_install(harness, "logs", "backend-init", "--prefix", str(installed["prefix"]), "--tail", "5")
    assert "init done" in logs.stdout
    unknown = airgap_install(harness, "logs", "no-such-service", "--prefix", str(installed["prefix"]), check=False)
    assert unknown.returncode == 1 and "no service 'no-such-service'" in unknown.stderr


def test_second_install_of_the_same_archive_loads_nothing_and_changes_nothing(harness, installed, release, target_engine) -> None:
    before_engine = engine_snapshot(target_engine)
    before_tree = tree_snapshot(installed["prefix"])
    started = time.monotonic()
    result = airgap_install(harness, "install", str(release["archive"]), "--pubkey", str(release["pubkey"]),
                            "--prefix", str(installed["prefix"]), "--compose", "v2")
    assert "nothing to load" in result.stderr
    assert engine_snapshot(target_engine) == before_engine
    assert tree_snapshot(installed["prefix"]) == before_tree
    assert time.monotonic() - started < 60  # "seconds", with a wide margin for a loaded CI machine


def test_restart_does_not_pull(harness, installed, target_engine) -> None:
    since = int(time.time()) - 1
    airgap_install(harness, "restart", "backend", "--prefix", str(installed["prefix"]))
    until = int(time.time()) + 1
    events = list(target_engine.api.events(since=since, until=until, decode=True))
    assert not [e for e in events if e.get("Type") == "image" and e.get("Action") == "pull"]
    restarted = [e for e in events if e.get("Type") == "container" and e.get("Action") == "restart"]
    assert [e["Actor"]["Attributes"]["com.docker.compose.service"] for e in restarted] == ["backend"]


def test_down_keeps_data_volumes_and_restart_brings_the_stack_back(harness, installed, target_engine) -> None:
    airgap_install(harness, "down", "--prefix", str(installed["prefix"]))
    assert not target_engine.containers.list(all=True, filters={"label": f"com.docker.compose.project={PROJECT}"})
    assert "ai-infra-postgres-data" in {v.name for v in target_engine.volumes.list()}
    down_status = airgap_install(harness, "status", "--prefix", str(installed["prefix"]), check=False)
    assert down_status.returncode == 1 and "NOT healthy" in down_status.stdout
    airgap_install(harness, "restart", "--prefix", str(installed["prefix"]))
    assert json.loads(airgap_install(harness, "status", "--prefix", str(installed["prefix"]), "--json").stdout)["healthy"]


def _flip_a_layer_byte(archive: Path, target: Path) -> None:
    import io
    import tarfile

    with open(archive, "rb") as handle:
        data = bytearray(zstandard.ZstdDecompressor().stream_reader(handle, read_across_frames=True).read())
    info = next(i for i in tarfile.open(fileobj=io.BytesIO(bytes(data))).getmembers() if i.name.endswith("layer.tar"))
    data[info.offset_data + 700] ^= 0x01
    target.write_bytes(zstandard.ZstdCompressor().compress(bytes(data)))


def test_tampered_archive_leaves_engine_and_prefix_exactly_as_they_were(harness, release, target_engine, tmp_path) -> None:
    tampered = tmp_path / "aimatrix-v0.3.5.tar.zst"
    _flip_a_layer_byte(release["archive"], tampered)
    for prefix in (tmp_path / "fresh-site", tmp_path / "existing-site"):
        if prefix.name == "existing-site":
            (prefix / "releases").mkdir(parents=True)
            (prefix / "site.env").write_text("TZ=UTC\n")
        before_engine, before_tree = engine_snapshot(target_engine), tree_snapshot(prefix)
        result = airgap_install(harness, "install", str(tampered), "--pubkey", str(release["pubkey"]), "--prefix", str(prefix), check=False)
        assert result.returncode == 1
        assert "verification failed; nothing was changed" in result.stderr and "sha256 mismatch" in result.stderr
        assert engine_snapshot(target_engine) == before_engine
        assert tree_snapshot(prefix) == before_tree


def test_wrong_key_and_unsigned_are_refused_and_the_override_is_loud(harness, release, tmp_path) -> None:
    subprocess.run([sys.executable, "-m", "bundler.cli", "keygen", "-o", str(tmp_path / "other.key")], check=True, capture_output=True)
    wrong = airgap_install(harness, "install", str(release["archive"]), "--pubkey", str(tmp_path / "other.pub"),
                           "--prefix", str(tmp_path / "p"), check=False)
    assert wrong.returncode == 1 and "bad signature" in wrong.stderr and not (tmp_path / "p").exists()
    nokey = airgap_install(harness, "install", str(release["archive"]), "--prefix", str(tmp_path / "p"), check=False)
    assert nokey.returncode == 1 and "no trusted public key" in nokey.stderr


def test_preflight_catches_a_busy_port_and_too_little_disk(harness, release, tmp_path) -> None:
    listener = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{harness.netns}", sys.executable, "-c",
                                 "import socket,time; s=socket.socket(); s.bind(('0.0.0.0', 18080)); s.listen(); time.sleep(60)"])
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(small)], check=True)
    try:
        time.sleep(0.5)
        result = airgap_install(harness, "preflight", str(release["archive"]), "--pubkey", str(release["pubkey"]), "--prefix", str(small / "site"),
                                "--set", "NGINX_PORT=18080", check=False)
    finally:
        listener.kill()
        subprocess.run(["umount", str(small)], check=False)
    assert result.returncode == 2
    assert "FAIL port 18080/tcp (nginx): in use by a process on this host" in result.stderr
    assert "FAIL prefix disk" in result.stderr
    assert "preflight failed: 2 check(s) did not pass; nothing was changed" in result.stderr


def test_bad_site_value_is_refused_with_its_name(harness, release, tmp_path) -> None:
    result = airgap_install(harness, "preflight", str(release["archive"]), "--pubkey", str(release["pubkey"]), "--prefix", str(tmp_path / "s"),
                            "--set", "NGINX_PORT=eighty", check=False)
    assert result.returncode == 1 and "NGINX_PORT: 'eighty' does not match" in result.stderr
    unknown = airgap_install(harness, "preflight", str(release["archive"]), "--pubkey", str(release["pubkey"]), "--prefix", str(tmp_path / "s"),
                             "--set", "NOPE=1", check=False)
    assert unknown.returncode == 1 and "--set NOPE: not a variable of aimatrix" in unknown.stderr


def test_secrets_differ_between_fresh_installs_and_never_appear_in_the_archive(harness, release, tmp_path) -> None:
    with open(release["archive"], "rb") as handle:
        archive_bytes = zstandard.ZstdDecompressor().stream_reader(handle, read_across_frames=True).read()
    secrets = []
    for name in ("one", "two"):
        harness.reset_target()
        prefix = tmp_path / name
        airgap_install(harness, "install", str(release["archive"]), "--pubkey", str(release["pubkey"]), "--prefix", str(prefix),
                       "--compose", "v1", "--timeout", "180")
        env = dict(line.split("=", 1) for line in (prefix / "site.env").read_text().splitlines() if "=" in line and not line.startswith("#"))
        secrets.append({k: env[k] for k in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "JWT_SECRET", "JUPYTERHUB_CRYPT_KEY")})
        airgap_install(harness, "down", "--prefix", str(prefix), "--remove-data-volumes", "--compose", "v1")
    for key in secrets[0]:
        assert secrets[0][key] != secrets[1][key], key
        for values in secrets:
            assert values[key].encode() not in archive_bytes


def test_only_missing_layers_are_sent_when_the_engine_has_some(harness, release, build_engine, target_engine, tmp_path) -> None:
    """The engine holds one stand-in (and so the shared busybox base): the load leaves those layers out."""
    from installer.engine import chain_ids

    harness.reset_target()
    header, _, _ = read_header(release["archive"])
    postgres = next(i for i in header.images if f"{REGISTRY}/postgres:{TAG}" in i.targets)
    saved = b"".join(build_engine.api.get_image(postgres.id))
    list(target_engine.api.load_image(saved))
    present_chains = set(chain_ids(postgres.diff_ids))
    expected_layers = {
        d for image in header.images if image.id != postgres.id
        for d, chain in zip(image.diff_ids, chain_ids(image.diff_ids)) if chain not in present_chains
    }
    result = airgap_install(harness, "install", str(release["archive"]), "--pubkey", str(release["pubkey"]),
                            "--prefix", str(tmp_path / "site"), "--timeout", "180")
    total_layers = len({d for image in header.images for d in image.diff_ids})
    assert f"load: {len(header.images) - 1} image(s), {len(expected_layers)} layer(s)" in result.stderr
    assert len(expected_layers) < total_layers
    assert json.loads(airgap_install(harness, "status", "--prefix", str(tmp_path / "site"), "--json").stdout)["healthy"]
    airgap_install(harness, "down", "--prefix", str(tmp_path / "site"), "--remove-data-volumes")


def test_timeout_names_the_unready_services_with_health_output_and_logs(harness, release, tmp_path) -> None:
    harness.reset_target()
    result = airgap_install(harness, "install", str(release["archive"]), "--pubkey", str(release["pubkey"]),
                            "--prefix", str(tmp_path / "site"), "--timeout", "3", check=False)
    assert result.returncode == 3, result.stderr
    assert "the stack did not become healthy" in result.stderr
    unready = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert unready and "last log lines:" in result.stderr
    assert any(line.startswith("  - nginx: ") for line in unready)
    airgap_install(harness, "down", "--prefix", str(tmp_path / "site"), "--remove-data-volumes")


def _forged_copy(genuine: Path, forged: Path) -> bytes:
    """The genuine archive with a privileged, host-mounting service added to its compose file, re-packed (a forger's
    copy: it would fail verification, so only a reader that reads the path again after verifying could take it)."""
    import io
    import tarfile

    plain = zstandard.ZstdDecompressor().stream_reader(genuine.open("rb"), read_across_frames=True).read()
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(plain)) as source, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as target:
        for member in source:
            data = source.extractfile(member).read()
            if member.name == "release/docker-compose.yml":
                genuine_compose = data
                data += b"  evil:\n    image: aiharbor.msxf.local/aihpc/postgres:v0.3.5\n    privileged: true\n    volumes: ['/:/host']\n"
                member.size = len(data)
            target.addfile(member, io.BytesIO(data))
    forged.write_bytes(zstandard.ZstdCompressor(level=1).compress(out.getvalue()))
    return genuine_compose


def test_an_archive_swapped_after_verification_is_never_read(harness, release, target_engine, tmp_path) -> None:
    """The file is replaced while the images load: the site still ends with the genuine compose file and header."""
    harness.reset_target()
    archive = tmp_path / f"aimatrix-{TAG}.tar.zst"
    shutil.copy(release["archive"], archive)
    forged = tmp_path / "forged.tar.zst"
    genuine_compose = _forged_copy(release["archive"], forged)
    prefix = tmp_path / "site"
    command = ["nsenter", f"--net=/var/run/netns/{harness.netns}", "env", f"DOCKER_HOST={harness.target_docker_host}",
               "AIRGAP_TEST_LOAD_DELAY=0.2", sys.executable, "-m", "installer.cli", "install", str(archive),
               "--pubkey", str(release["pubkey"]), "--prefix", str(prefix), "--timeout", "180"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    seen = []
    for line in process.stderr:
        seen.append(line)
        if line.startswith("load: "):
            forged.replace(archive)  # the swap: after verification, during the load
            break
    stdout, rest = process.communicate(timeout=600)
    output = "".join(seen) + rest
    assert process.returncode == 0, output
    assert not forged.exists() and b"privileged" in zstandard.ZstdDecompressor().stream_reader(
        archive.open("rb"), read_across_frames=True).read()  # the path really holds the forgery now
    installed = prefix / "releases" / TAG
    assert (installed / "docker-compose.yml").read_bytes() == genuine_compose
    assert (installed / "bundle.json").read_bytes() == read_header(release["archive"])[1]
    assert "evil" not in {c.labels.get("com.docker.compose.service") for c in target_engine.containers.list(all=True)}
    airgap_install(harness, "down", "--prefix", str(prefix), "--remove-data-volumes")
