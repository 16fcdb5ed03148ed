"""Upgrades against real engines: v0.3.5 → v0.3.6 (only the backend source changed), deltas,
automatic and manual rollback, downgrade protection, split volumes, and crash safety."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zstandard

from installer.archive import FramedArchiveReader, read_header
from installer.engine import chain_ids
from tests.harness import SOURCE_DIR
from tests.test_install_engine import PROJECT, REGISTRY, airgap_install, engine_snapshot, tree_snapshot

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "manifests" / "aimatrix.yaml"
ROW_FILE = "/var/lib/postgresql/data/rows.txt"


def stdlib_text(size: int) -> bytes:
    """Real text (Python's own standard library sources), not random bytes."""
    chunks, total = [], 0
    for path in sorted(Path(os.__file__).parent.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= size:
            break
    return b"".join(chunks)[:size]


def source_tree(tmp: Path, name: str, *, asset_bytes: int = 0, broken_health: bool = False) -> Path:
    """A copy of the stand-in source with the backend changed."""
    tree = tmp / name
    shutil.copytree(SOURCE_DIR, tree)
    if asset_bytes:
        (tree / "src/backend/www/assets").mkdir(parents=True, exist_ok=True)
        (tree / "src/backend/www/assets/app.js").write_bytes(stdlib_text(asset_bytes))
    if broken_health:
        (tree / "src/backend/www/api/health").unlink()
    return tree


def build(harness, folder: Path, tag: str, source: Path, *extra: str, out: Path = None) -> Path:
    env = dict(os.environ, DOCKER_HOST=harness.build_docker_host)
    out = out or folder / tag
    result = subprocess.run(
        [sys.executable, "-m", "bundler.cli", "build", str(MANIFEST), "--registry", REGISTRY, "--tag", tag, "--source", str(source),
         "--key", str(folder / "release.key"), "-o", str(out), "--lock", str(out / "lock.json"), "--no-kit", *extra],
        env=env, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def releases(harness, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("releases")
    subprocess.run([sys.executable, "-m", "bundler.cli", "keygen", "-o", str(folder / "release.key")], check=True, capture_output=True)
    v035 = build(harness, folder, "v0.3.5", SOURCE_DIR)
    changed = source_tree(folder, "src-v0.3.6", asset_bytes=8_000_000)
    result = {
        "pubkey": folder / "release.pub",
        "v0.3.5": v035,
        "v0.3.6": build(harness, folder, "v0.3.6", changed),
        "v0.3.7-broken": build(harness, folder, "v0.3.7", source_tree(folder, "src-v0.3.7", broken_health=True)),
    }
    result["delta"] = build(harness, folder, "v0.3.6", changed, "--since", str(v035), out=folder / "delta")
    result["split"] = build(harness, folder, "v0.3.6", changed, "--split", "1M", out=folder / "split")
    return result


def install(harness, archive: Path, prefix: Path, pubkey: Path, *extra: str, command: str = "install", check: bool = True):
    return airgap_install(harness, command, str(archive), "--pubkey", str(pubkey), "--prefix", str(prefix), "--timeout", "120",
                          *extra, check=check)


def status(harness, prefix: Path) -> dict:
    return json.loads(airgap_install(harness, "status", "--prefix", str(prefix), "--json", check=False).stdout)


def in_service(target_engine, service: str, command: str) -> tuple[int, str]:
    """Run a shell command in the running container of a compose service: (exit code, output)."""
    container = target_engine.containers.list(filters={"label": [f"com.docker.compose.service={service}"]})[0]
    exit_code, output = container.exec_run(["sh", "-c", command])
    return exit_code, output.decode()


def write_row(target_engine, text: str) -> None:
    """Stand-in for a database row: a line appended to a file in the postgres data volume."""
    assert in_service(target_engine, "postgres", f"echo {text} >> {ROW_FILE}")[0] == 0


def rows(target_engine) -> str:
    exit_code, output = in_service(target_engine, "postgres", f"cat {ROW_FILE}")
    return output if exit_code == 0 else ""


def write_output(target_engine, text: str) -> None:
    """A file the backend writes into its bind-mounted output folder (./src/backend/outputs)."""
    assert in_service(target_engine, "backend", f"echo {text} > /app/outputs/{text}.txt")[0] == 0


def outputs(target_engine) -> str:
    return in_service(target_engine, "backend", "ls /app/outputs")[1]


def layer_members(archive: Path) -> dict[str, bytes]:
    with FramedArchiveReader(archive) as reader:
        return {m.name: m.read_all() for m in reader.members() if m.name.endswith("/layer.tar")}


def test_delta_holds_only_the_changed_layers_and_is_their_compressed_size(releases) -> None:
    base, _, _ = read_header(releases["v0.3.5"])
    full, _, _ = read_header(releases["v0.3.6"])
    delta, _, _ = read_header(releases["delta"])
    base_chains = {c for image in base.images for c in chain_ids(image.diff_ids)}
    new_layers = {d for image in full.images for d, c in zip(image.diff_ids, chain_ids(image.diff_ids)) if c not in base_chains}
    shipped = layer_members(releases["delta"])
    assert {name.split("/")[1] for name in shipped} == {d[7:] for d in new_layers}
    assert delta.base == {"name": "aimatrix", "version": "v0.3.5"}
    compressed = sum(len(zstandard.ZstdCompressor(level=3).compress(data)) for data in shipped.values())
    size = releases["delta"].stat().st_size
    assert abs(size - compressed) <= 0.05 * compressed, (size, compressed)
    assert size < 0.8 * releases["v0.3.6"].stat().st_size


def test_upgrade_with_the_delta_loads_only_those_layers_keeps_data_and_rolls_back(harness, releases, target_engine, tmp_path) -> None:
    harness.reset_target()
    prefix = tmp_path / "site"
    install(harness, releases["v0.3.5"], prefix, releases["pubkey"])
    write_row(target_engine, "row-written-on-v0.3.5")
    write_output(target_engine, "report-of-v0.3.5")
    before = {i.id for i in target_engine.images.list(all=True)}
    upgraded = install(harness, releases["delta"], prefix, releases["pubkey"], command="upgrade")
    delta_layers = len(layer_members(releases["delta"]))
    assert f"{delta_layers} layer(s)" in upgraded.stderr
    after = {i.id for i in target_engine.images.list(all=True)}
    delta, _, _ = read_header(releases["delta"])
    assert after - before == {i.id for i in delta.images} - before
    state = status(harness, prefix)
    assert state["healthy"] and state["version"] == "v0.3.6"
    assert "row-written-on-v0.3.5" in rows(target_engine)
    assert "report-of-v0.3.5" in outputs(target_engine)  # the bind-mounted output folder outlives the release
    write_row(target_engine, "row-written-on-v0.3.6")

    refused = install(harness, releases["v0.3.5"], prefix, releases["pubkey"], check=False)
    assert refused.returncode == 1 and "refusing to downgrade aimatrix from v0.3.6 to v0.3.5" in refused.stderr

    airgap_install(harness, "rollback", "--prefix", str(prefix))
    state = status(harness, prefix)
    assert state["healthy"] and state["version"] == "v0.3.5"
    assert os.readlink(prefix / "current") == "releases/v0.3.5"
    assert "row-written-on-v0.3.5" in rows(target_engine) and "row-written-on-v0.3.6" in rows(target_engine)


def test_unhealthy_upgrade_rolls_back_automatically(harness, releases, target_engine, tmp_path) -> None:
    harness.reset_target()
    prefix = tmp_path / "site"
    install(harness, releases["v0.3.5"], prefix, releases["pubkey"])
    write_row(target_engine, "kept-through-a-failed-upgrade")
    failed = airgap_install(harness, "upgrade", str(releases["v0.3.7-broken"]), "--pubkey", str(releases["pubkey"]),
                            "--prefix", str(prefix), "--timeout", "25", check=False)
    assert failed.returncode == 3, failed.stderr
    assert "ROLLBACK: v0.3.7 did not become healthy; switching back to v0.3.5" in failed.stderr
    assert "rolled back automatically to v0.3.5, which is healthy" in failed.stderr
    assert "backend:" in failed.stderr
    state = status(harness, prefix)
    assert state["healthy"] and state["version"] == "v0.3.5"
    assert "kept-through-a-failed-upgrade" in rows(target_engine)


def test_delta_is_refused_on_a_host_without_its_base(harness, releases, target_engine, tmp_path) -> None:
    harness.reset_target()
    prefix = tmp_path / "site"
    before_engine, before_tree = engine_snapshot(target_engine), tree_snapshot(prefix)
    result = install(harness, releases["delta"], prefix, releases["pubkey"], check=False)
    assert result.returncode == 1
    assert "delta built against aimatrix v0.3.5" in result.stderr and "install v0.3.5 first" in result.stderr
    assert engine_snapshot(target_engine) == before_engine and tree_snapshot(prefix) == before_tree


def test_split_archive_installs_from_its_folder_and_a_missing_part_is_named(harness, releases, tmp_path) -> None:
    first_part = releases["split"]
    assert first_part.name == "aimatrix-v0.3.6.tar.zst.part001"
    parts = sorted(first_part.parent.glob("aimatrix-v0.3.6.tar.zst.part[0-9]*"))
    assert len(parts) >= 3 and all(p.stat().st_size <= 1024 * 1024 for p in parts)
    assert airgap_install(harness, "verify", str(first_part.parent), "--pubkey", str(releases["pubkey"])).returncode == 0
    copy = tmp_path / "usb"
    shutil.copytree(first_part.parent, copy)
    (copy / parts[1].name).unlink()
    result = install(harness, copy / first_part.name, tmp_path / "site", releases["pubkey"], check=False)
    assert result.returncode == 1
    assert f"part 2 of {len(parts)} ({parts[1].name}) is missing" in result.stderr
    assert not (tmp_path / "site").exists()


def _start_install(harness, archive: Path, prefix: Path, pubkey: Path, env: dict) -> subprocess.Popen:
    command = ["nsenter", f"--net=/var/run/netns/{harness.netns}", "env", f"DOCKER_HOST={harness.target_docker_host}",
               *[f"{k}={v}" for k, v in env.items()], sys.executable, "-m", "installer.cli", "install", str(archive),
               "--pubkey", str(pubkey), "--prefix", str(prefix), "--timeout", "120"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)


def _kill_when(process: subprocess.Popen, condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the install ended before the kill point: {process.stderr.read()}"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_sigkill_during_load_then_rerun_ends_healthy(harness, releases, target_engine, tmp_path) -> None:
    harness.reset_target()
    prefix = tmp_path / "site"
    process = _start_install(harness, releases["v0.3.6"], prefix, releases["pubkey"], {"AIRGAP_TEST_LOAD_DELAY": "0.5"})
    _kill_when(process, lambda: _load_in_progress(process))
    assert not (prefix / "current").exists()
    install(harness, releases["v0.3.6"], prefix, releases["pubkey"])
    assert status(harness, prefix)["healthy"]


def _load_in_progress(process: subprocess.Popen) -> bool:
    """True once the installer announced the load (its stderr is read line by line)."""
    line = process.stderr.readline()
    if "load:" in line:
        time.sleep(2)  # well inside the stretched load
        return True
    return False


def test_sigkill_during_up_then_rerun_ends_healthy(harness, releases, target_engine, tmp_path) -> None:
    harness.reset_target()
    prefix = tmp_path / "site"
    process = _start_install(harness, releases["v0.3.5"], prefix, releases["pubkey"], {})

    def some_containers_started() -> bool:
        # the low-level list: the high-level one inspects each container, racing compose as it recreates them
        containers = target_engine.api.containers(all=True, filters={"label": f"com.docker.compose.project={PROJECT}"})
        return 0 < len(containers)

    _kill_when(process, some_containers_started)
    assert not status(harness, prefix).get("healthy")
    install(harness, releases["v0.3.5"], prefix, releases["pubkey"])
    assert status(harness, prefix)["healthy"]


def test_two_installs_on_one_prefix_do_not_interleave(harness, releases, tmp_path) -> None:
    harness.reset_target()
    prefix = tmp_path / "site"
    first = _start_install(harness, releases["v0.3.5"], prefix, releases["pubkey"], {"AIRGAP_TEST_LOAD_DELAY": "0.2"})
    time.sleep(1.5)
    second = _start_install(harness, releases["v0.3.5"], prefix, releases["pubkey"], {})
    _, second_err = second.communicate(timeout=600)
    first_out, first_err = first.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 0, (first_err, second_err)
    assert "waiting: another airgap-install" in second_err
    assert "nothing to load" in second_err  # it ran after the first had loaded everything
    assert status(harness, prefix)["healthy"]
