"""The site registry for real: push into a registry with TLS (a CA the test made) and basic auth answering as
aiharbor.msxf.local inside the no-network namespace, then hosts install from it with the air-gapped engine.

skopeo (Debian's) is the independent checker of what the registry holds; the registry's own access log
says what was sent."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from installer.archive import read_header
from tests.harness import SOURCE_DIR
from tests.test_install_engine import ROOT
from tests.test_upgrade_engine import build, source_tree

HOST = "aiharbor.msxf.local"
UPLOAD_PATH = "/blobs/uploads/"
SITE: dict = {}


def in_namespace(harness, *argv: str, stdin: str | None = None, check: bool = True, env: dict | None = None,
                 timeout: float = 600) -> subprocess.CompletedProcess:
    extra = [f"{k}={v}" for k, v in (env or {}).items()]
    command = ["nsenter", f"--net=/var/run/netns/{harness.netns}", "env", f"DOCKER_HOST={harness.target_docker_host}",
               *extra, *argv]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, input=stdin)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def airgap_install(harness, registry, *args: str, check: bool = True, password: str | None = None,
                   record: Path | None = None) -> subprocess.CompletedProcess:
    """airgap-install inside the namespace, with the robot account (password on stdin) unless told otherwise."""
    creds = ["--username", registry.username, "--password-stdin"]
    env = {"AIRGAP_INSTALL_CACHE": str(record)} if record else None
    return in_namespace(harness, sys.executable, "-m", "installer.cli", *args, *creds,
                        stdin=(password if password is not None else registry.password) + "\n", check=check, env=env)


def skopeo_manifest(harness, registry, reference: str) -> dict:
    """The manifest skopeo reads for ``reference`` (an independent client, trusting the engine's certs.d)."""
    result = in_namespace(harness, "skopeo", "inspect", "--raw", "--creds", f"{registry.username}:{registry.password}",
                          f"docker://{reference}")
    return json.loads(result.stdout)


def registry_references(header) -> dict[str, list[str]]:
    """Image ID → every registry name the push must create for it (the release's registry is the site's)."""
    prefix = f"{HOST}/aihpc/"
    result = {}
    for image in header.images:
        names = []
        for target in image.targets:
            names.append(target if target.startswith(prefix) else prefix + target)
        result[image.id] = sorted(set(names))
    return result


def _bytes_written(pid: int) -> int:
    """Bytes the process has written so far (sockets included): how far its uploads have got."""
    try:
        io = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return 0
    return int(next(line.split()[1] for line in io.splitlines() if line.startswith("wchar:")))


def stored_blobs(registry) -> set[str]:
    """Digests of the layers and configs the registry stores (manifests, which it stores as blobs too, left out)."""
    root = registry.storage / "docker/registry/v2/blobs/sha256"
    found = set()
    for data in root.glob("*/*/data") if root.exists() else []:
        with open(data, "rb") as handle:
            if b'"schemaVersion"' not in handle.read(64):
                found.add(data.parent.name)
    return found


@pytest.fixture(scope="module")
def releases(harness, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("registry-releases")
    subprocess.run([sys.executable, "-m", "bundler.cli", "keygen", "-o", str(folder / "release.key")], check=True,
                   capture_output=True)
    changed = source_tree(folder, "src-v0.3.6", asset_bytes=24_000_000)
    return {"pubkey": folder / "release.pub", "folder": folder,
            "v0.3.5": build(harness, folder, "v0.3.5", SOURCE_DIR),
            "v0.3.6": build(harness, folder, "v0.3.6", changed)}


@pytest.fixture(scope="module")
def pushed(harness, site_registry, releases, tmp_path_factory) -> dict:
    """v0.3.5 pushed once into an empty site registry."""
    site_registry.wipe()
    record = tmp_path_factory.mktemp("push-record")
    target = harness.target_client()
    images_before = sorted(i.id for i in target.images.list(all=True))
    since = site_registry.log_size()
    result = airgap_install(harness, site_registry, "push", str(releases["v0.3.5"]), "--pubkey", str(releases["pubkey"]),
                            record=record)
    images_after = sorted(i.id for i in target.images.list(all=True))
    return {"result": result, "requests": site_registry.requests(since), "record": record,
            "engine_untouched": images_before == images_after}


def test_push_stores_every_name_each_pointing_at_its_signed_image(harness, site_registry, releases, pushed) -> None:
    header, _, _ = read_header(releases["v0.3.5"])
    references = registry_references(header)
    assert any(name.endswith("/ai-infra-singleuser:v0.3.5") for names in references.values() for name in names)
    for image_id, names in references.items():
        for name in names:
            manifest = skopeo_manifest(harness, site_registry, name)
            assert manifest["config"]["digest"] == image_id, name
            assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
            assert all(layer["mediaType"].endswith("tar.gzip") for layer in manifest["layers"])
    assert pushed["engine_untouched"], "push must not go through the engine (no docker load)"
    uploads = [r for r in pushed["requests"] if r.method == "PATCH"]
    assert uploads, "layers were streamed with PATCH uploads"


def test_push_again_sends_nothing(harness, site_registry, releases, pushed) -> None:
    since = site_registry.log_size()
    result = airgap_install(harness, site_registry, "push", str(releases["v0.3.5"]), "--pubkey", str(releases["pubkey"]),
                            "--ca-file", str(site_registry.ca_file), record=pushed["record"])
    sent = [r for r in site_registry.requests(since) if r.method in ("PATCH", "PUT", "POST", "DELETE")]
    assert sent == []
    assert "nothing sent" in result.stderr


def test_a_wrong_password_is_refused_naming_the_account_and_nothing_is_sent(harness, site_registry, releases, pushed) -> None:
    since = site_registry.log_size()
    result = airgap_install(harness, site_registry, "push", str(releases["v0.3.6"]), "--pubkey", str(releases["pubkey"]),
                            password="not-the-password", check=False)
    assert result.returncode != 0
    assert f"refused the credentials of '{site_registry.username}'" in result.stderr
    assert "Traceback" not in result.stderr
    assert [r for r in site_registry.requests(since) if r.method in ("PATCH", "PUT", "POST")] == []


def _another_ca(path: Path) -> Path:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import datetime

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "some other CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_an_untrusted_certificate_is_explained(harness, site_registry, releases, pushed, tmp_path) -> None:
    other_ca = _another_ca(tmp_path / "other-ca.crt")
    result = airgap_install(harness, site_registry, "push", str(releases["v0.3.5"]), "--pubkey", str(releases["pubkey"]),
                            "--ca-file", str(other_ca), check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "cannot verify the certificate of aiharbor.msxf.local" in result.stderr and "--ca-file" in result.stderr


def test_a_host_installs_from_the_registry_with_a_release_only_archive_and_ends_healthy(
        harness, site_registry, releases, pushed, target_engine, tmp_path) -> None:
    harness.reset_target()
    release_only = tmp_path / "aimatrix-v0.3.5.release.tar.zst"
    in_namespace(harness, sys.executable, "-m", "installer.cli", "export-release", str(releases["v0.3.5"]),
                 "--pubkey", str(releases["pubkey"]), "-o", str(release_only))
    assert release_only.stat().st_size < releases["v0.3.5"].stat().st_size / 5
    header, _, _ = read_header(release_only)
    # without --from-registry the release-only archive is refused, saying how to use it
    prefix = tmp_path / "site"
    refused = in_namespace(harness, sys.executable, "-m", "installer.cli", "install", str(release_only), "--pubkey",
                           str(releases["pubkey"]), "--prefix", str(prefix), check=False)
    assert refused.returncode != 0 and "--from-registry" in refused.stderr
    preflight = airgap_install(harness, site_registry, "preflight", str(release_only), "--pubkey",
                               str(releases["pubkey"]), "--prefix", str(prefix), "--from-registry")
    assert "site registry" in preflight.stderr
    since = site_registry.log_size()
    result = airgap_install(harness, site_registry, "install", str(release_only), "--pubkey", str(releases["pubkey"]),
                            "--prefix", str(prefix), "--timeout", "180", "--from-registry")
    assert "pulled from the site registry" in result.stderr
    for image in header.images:
        for name in image.targets:  # every name the stack uses, the local-only runtime name included
            assert target_engine.images.get(name).id == image.id, name
    pulled_blobs = [r for r in site_registry.requests(since) if r.method == "GET" and "/blobs/" in r.path]
    assert pulled_blobs, "the engine took the layers from the registry"
    status = in_namespace(harness, sys.executable, "-m", "installer.cli", "status", "--prefix", str(prefix), "--json")
    assert json.loads(status.stdout)["healthy"] is True
    answer = in_namespace(harness, "wget", "-q", "-O", "-", "http://127.0.0.1:8080/health")
    assert answer.stdout.strip()
    SITE["prefix"] = prefix  # the upgrade test continues this site


def test_preflight_refuses_a_release_the_registry_does_not_hold(harness, site_registry, releases, pushed, tmp_path) -> None:
    result = airgap_install(harness, site_registry, "preflight", str(releases["v0.3.6"]), "--pubkey",
                            str(releases["pubkey"]), "--prefix", str(tmp_path / "p"), "--from-registry", check=False)
    assert result.returncode == 2, result.stderr
    assert "aiharbor.msxf.local/aihpc lacks 17 of the release's 17 name(s): postgres:v0.3.6" in result.stderr
    assert "airgap-install push" in result.stderr


def test_an_upgrade_from_the_registry_pulls_only_the_changed_images(harness, site_registry, releases, pushed,
                                                                   target_engine) -> None:
    prefix = SITE.get("prefix")
    if prefix is None:
        pytest.fail("the install-from-registry test must run first")
    airgap_install(harness, site_registry, "push", str(releases["v0.3.6"]), "--pubkey", str(releases["pubkey"]),
                   record=pushed["record"])
    old, _, _ = read_header(releases["v0.3.5"])
    new, _, _ = read_header(releases["v0.3.6"])
    old_ids = {image.id for image in old.images}
    changed = {name.split("/", 2)[2].split(":")[0] for image in new.images if image.id not in old_ids
               for name in registry_references(new)[image.id]}
    assert changed and len(changed) < len(new.images)
    since = site_registry.log_size()
    result = airgap_install(harness, site_registry, "upgrade", str(releases["v0.3.6"]), "--pubkey",
                            str(releases["pubkey"]), "--prefix", str(prefix), "--timeout", "180", "--from-registry")
    configs = {image.id for image in new.images}  # preflight's engine check reads one config: not a pull
    pulled = {r.path.split("/v2/aihpc/", 1)[1].split("/")[0] for r in site_registry.requests(since)
              if r.method == "GET" and "/blobs/" in r.path and r.path.rsplit("/", 1)[1] not in configs}
    assert pulled and pulled <= changed, (pulled, changed)
    for image in new.images:
        for name in image.targets:
            assert target_engine.images.get(name).id == image.id
    status = in_namespace(harness, sys.executable, "-m", "installer.cli", "status", "--prefix", str(prefix), "--json")
    state = json.loads(status.stdout)
    assert state["healthy"] is True and state["version"] == "v0.3.6", result.stderr
    in_namespace(harness, sys.executable, "-m", "installer.cli", "down", "--prefix", str(prefix))


def test_a_push_killed_mid_blob_resumes_sending_only_what_is_missing(harness, site_registry, releases, tmp_path) -> None:
    tree = source_tree(tmp_path, "src-big")
    (tree / "src/backend/www/assets").mkdir(parents=True, exist_ok=True)
    (tree / "src/backend/www/assets/model.bin").write_bytes(os.urandom(40_000_000))  # one large blob, incompressible
    archive = build(harness, releases["folder"], "v0.3.8", tree)
    site_registry.wipe()
    record = tmp_path / "record"
    throttle = ["nsenter", f"--net=/var/run/netns/{harness.netns}", "tc", "qdisc"]
    # A slow link (24 Mbit/s) so the large blob is still on its way when the push is killed; the bucket holds
    # more than loopback's 64 KB packets (a smaller one drops them all and stalls the connection).
    subprocess.run(throttle + ["add", "dev", "lo", "root", "tbf", "rate", "24mbit", "burst", "1mb", "latency", "1s"],
                   check=True)
    try:
        command = ["nsenter", f"--net=/var/run/netns/{harness.netns}", "env", f"AIRGAP_INSTALL_CACHE={record}",
                   sys.executable, "-m", "installer.cli", "push", str(archive), "--pubkey",
                   str(releases["pubkey"]), "--jobs", "2", "--username", site_registry.username, "--password-stdin"]
        push = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        assert push.stdin is not None
        push.stdin.write(site_registry.password.encode() + b"\n")
        push.stdin.close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and push.poll() is None:
            if _bytes_written(push.pid) > 8_000_000 and len(stored_blobs(site_registry)) > 3:
                break  # the large blob (sent first) is on its way while the other upload completed others
            time.sleep(0.05)
        assert push.poll() is None, "the push ended before it could be interrupted"
        push.send_signal(signal.SIGKILL)
        push.wait()
    finally:
        subprocess.run(throttle + ["del", "dev", "lo", "root"], check=False)
    before = stored_blobs(site_registry)
    assert before, "some blobs were complete before the kill"
    since = site_registry.log_size()
    result = airgap_install(harness, site_registry, "push", str(archive), "--pubkey", str(releases["pubkey"]),
                            "--jobs", "1", record=record)
    after = stored_blobs(site_registry)
    opened = [r for r in site_registry.requests(since) if r.method == "POST" and r.path.endswith(UPLOAD_PATH)
              and r.status == 202]
    assert len(opened) == len(after - before), (len(opened), len(after - before), result.stderr)
    header, _, _ = read_header(archive)
    for image_id, names in registry_references(header).items():
        assert skopeo_manifest(harness, site_registry, names[0])["config"]["digest"] == image_id


def test_uncompressed_layers_pull_on_docker_20_10_and_zstd_layers_are_the_archives_own_frames(
        harness, site_registry, releases, pushed, target_engine) -> None:
    header, _, _ = read_header(releases["v0.3.5"])
    backend = next(image for image in header.images if any("ai-infra-backend:" in t for t in image.targets))
    for encoding in ("none", "zstd"):
        airgap_install(harness, site_registry, "push", str(releases["v0.3.5"]), "--pubkey", str(releases["pubkey"]),
                       "--registry", f"{HOST}/{encoding}", "--layer-compression", encoding)
    plain = skopeo_manifest(harness, site_registry, f"{HOST}/none/ai-infra-backend:v0.3.5")
    assert [layer["digest"] for layer in plain["layers"]] == backend.diff_ids  # the layer tars as they are
    frames = {m.path.split("/")[1]: m.frames_sha256 for m in header.members if m.path.endswith("/layer.tar")}
    zstd = skopeo_manifest(harness, site_registry, f"{HOST}/zstd/ai-infra-backend:v0.3.5")
    assert all(layer["mediaType"].endswith("+zstd") for layer in zstd["layers"])
    assert [layer["digest"] for layer in zstd["layers"]] == \
        ["sha256:" + frames[d.split(":")[1]] for d in backend.diff_ids]  # sent as stored: no compression work
    # the air-gapped Docker 20.10 engine pulls the uncompressed (OCI) image as the signed image
    name = f"{HOST}/none/ai-infra-backend:v0.3.5"
    target_engine.api.pull(name, auth_config=site_registry.auth_config())
    try:
        assert target_engine.images.get(name).id == backend.id
    finally:
        target_engine.images.remove(name)


def test_a_plain_http_registry_needs_insecure_registry(harness, releases, tmp_path) -> None:
    """The harness's loopback registry (the docker.io mirror) speaks plain HTTP."""
    push = [sys.executable, "-m", "installer.cli", "push", str(releases["v0.3.5"]), "--pubkey", str(releases["pubkey"]),
            "--registry", f"{harness.registry}/plain{uuid.uuid4().hex[:8]}"]  # that registry keeps what it gets
    env = {"AIRGAP_INSTALL_CACHE": str(tmp_path)}
    refused = subprocess.run(push, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env})
    assert refused.returncode != 0 and "--insecure-registry" in refused.stderr and "Traceback" not in refused.stderr
    accepted = subprocess.run(push + ["--insecure-registry"], capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, **env})
    assert accepted.returncode == 0, accepted.stderr
    assert "17 name(s) stored" in accepted.stderr
