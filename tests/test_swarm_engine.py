"""install --swarm for real: the stand-in AI-Infra Matrix as a Swarm stack on the two-node rig.

Two engines in the network namespaces node1 (manager) and node2 (worker), joined by a
veth pair and nothing else, form a Swarm; the site registry runs on node1 and answers to
both as aiharbor.msxf.local. The installer runs on node1 with Debian's docker CLI (20.10),
takes a release pushed to the registry, and every check is made from the engines and from
inside the namespaces: tasks on both nodes, /health on each node's own address, what each
node pulled (the registry's access log names the client: node2 comes from 10.77.0.2), a
task killed on node2 replaced, a broken release rolled back.
"""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from installer.archive import read_header
from tests.harness import SOURCE_DIR
from tests.harness.procs import wait_until
from tests.harness.swarm import ADDRS, NODES
from tests.test_install_engine import ROOT
from tests.test_swarm_rig import http_get
from tests.test_upgrade_engine import build, source_tree

STACK = "ai-infra-matrix"
DATA_LABEL = f"airgap.{STACK}.data"
DOCKER_CLI = "/usr/bin/docker"  # Debian's docker.io CLI: what a site has
SITE: dict = {}


def on_node1(rig, *argv: str, stdin: str | None = None, check: bool = True,
             node: str = "node1") -> subprocess.CompletedProcess:
    """Run ``argv`` in ``node``'s namespace against its engine, as an operator logged in there would."""
    env = {"DOCKER_HOST": rig.docker_host(node), "AIRGAP_INSTALL_DOCKER_CLI": DOCKER_CLI}
    command = ["nsenter", f"--net=/var/run/netns/{node}", "env", *[f"{k}={v}" for k, v in env.items()], *argv]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT, input=stdin)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def airgap_install(rig, *args: str, check: bool = True, node: str = "node1") -> subprocess.CompletedProcess:
    """airgap-install on ``node`` with the robot account (password on stdin)."""
    registry = rig.site_registry
    return on_node1(rig, sys.executable, "-m", "installer.cli", *args, "--username", registry.username,
                    "--password-stdin", stdin=registry.password + "\n", check=check, node=node)


def day2(rig, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return on_node1(rig, sys.executable, "-m", "installer.cli", *args, "--prefix", str(SITE["prefix"]), check=check)


def running_tasks(manager: docker.DockerClient) -> dict[str, dict[str, list[dict]]]:
    """service -> node hostname -> the stack's running tasks there."""
    hostnames = {n.id: n.attrs["Description"]["Hostname"] for n in manager.nodes.list()}
    services = {s["ID"]: s["Spec"]["Name"].split("_", 1)[1]
                for s in manager.api.services(filters={"label": f"com.docker.stack.namespace={STACK}"})}
    found: dict[str, dict[str, list[dict]]] = {}
    for task in manager.api.tasks(filters={"desired-state": "running"}):
        if task["ServiceID"] in services and task["Status"]["State"] == "running":
            found.setdefault(services[task["ServiceID"]], {}).setdefault(hostnames[task["NodeID"]], []).append(task)
    return found


def changed_repositories(old_archive: Path, new_archive: Path) -> set[str]:
    """Registry repositories (below aihpc/) of the images that differ between two releases."""
    old, _, _ = read_header(old_archive)
    new, _, _ = read_header(new_archive)
    old_ids = {image.id for image in old.images}
    return {name.rsplit("/", 1)[-1].split(":")[0] for image in new.images if image.id not in old_ids
            for name in image.targets}


def pulled_by(requests, client: str, configs: set[str]) -> set[str]:
    """Repositories whose layers ``client`` fetched (image configs, which preflight reads, left out)."""
    return {r.path.split("/v2/aihpc/", 1)[1].split("/blobs/")[0] for r in requests
            if r.client == client and r.method == "GET" and "/blobs/" in r.path
            and r.path.rsplit("/", 1)[1] not in configs}


def clean_nodes(rig, clients: dict[str, docker.DockerClient]) -> None:
    """No stack, no images of the release, no volumes of it and no data label on either node."""
    manager = clients["node1"]
    on_node1(rig, DOCKER_CLI, "stack", "rm", STACK, check=False)
    wait_until(lambda: not manager.api.services(filters={"label": f"com.docker.stack.namespace={STACK}"}) and
               not any(c.api.containers(all=True, filters={"label": f"com.docker.stack.namespace={STACK}"})
                       for c in clients.values()), 120, "the stack removed")
    wait_until(lambda: not manager.api.networks(names=["ai-infra-network"]), 60, "the stack's network removed")
    for client in clients.values():
        for image in client.images.list():
            names = image.tags + image.attrs.get("RepoDigests", [])
            if any("/aihpc/" in name or name.startswith("ai-infra-") for name in names):
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(image.id, force=True)
        for volume in client.volumes.list():
            if volume.name.startswith("ai-infra-"):
                with contextlib.suppress(docker.errors.APIError):
                    volume.remove(force=True)
    for node in manager.nodes.list():
        labels = dict(node.attrs["Spec"].get("Labels") or {})
        if labels.pop(DATA_LABEL, None) is not None:
            node.update({**node.attrs["Spec"], "Labels": labels})


@pytest.fixture(scope="module")
def clients(swarm_rig):
    made = {node: swarm_rig.client(node) for node in NODES}
    yield made
    for client in made.values():
        client.close()


@pytest.fixture(scope="module")
def releases(harness, swarm_rig, clients, tmp_path_factory) -> dict:
    """v0.3.5, v0.3.6 (frontend and backend changed) and v0.3.7 (backend health broken), all pushed."""
    folder = tmp_path_factory.mktemp("swarm-releases")
    subprocess.run([sys.executable, "-m", "bundler.cli", "keygen", "-o", str(folder / "release.key")], check=True,
                   capture_output=True)
    changed = source_tree(folder, "src-v0.3.6", asset_bytes=3_000_000)
    (changed / "src/frontend/public/release.txt").write_text("v0.3.6 of the frontend\n")
    broken = source_tree(folder, "src-v0.3.7", broken_health=True)
    (broken / "src/frontend/public/release.txt").write_text("v0.3.6 of the frontend\n")
    built = {"pubkey": folder / "release.pub",
             "v0.3.5": build(harness, folder, "v0.3.5", SOURCE_DIR),
             "v0.3.6": build(harness, folder, "v0.3.6", changed),
             "v0.3.7": build(harness, folder, "v0.3.7", broken)}
    swarm_rig.site_registry.wipe()
    for version in ("v0.3.5", "v0.3.6", "v0.3.7"):
        airgap_install(swarm_rig, "push", str(built[version]), "--pubkey", str(built["pubkey"]))
    clean_nodes(swarm_rig, clients)
    yield built
    clean_nodes(swarm_rig, clients)


def test_preflight_checks_the_swarm_and_says_there_is_no_ipvs(swarm_rig, releases, tmp_path) -> None:
    args = ["preflight", str(releases["v0.3.5"]), "--pubkey", str(releases["pubkey"]), "--prefix", str(tmp_path / "p"),
            "--from-registry", "--swarm"]
    result = airgap_install(swarm_rig, *args)
    assert "ok   swarm: this engine is a manager of a Swarm of 2 node(s)" in result.stderr
    assert "ok   swarm nodes: 2 of 2 take tasks: node1, node2" in result.stderr
    assert "no IPVS in this kernel" in result.stderr and "dnsrr" in result.stderr
    assert f"node1 (this node) will hold the stack's volumes (node label {DATA_LABEL}=true)" in result.stderr
    worker = airgap_install(swarm_rig, *args, check=False, node="node2")
    assert worker.returncode == 2 and "FAIL swarm: this Docker engine is a Swarm worker" in worker.stderr, worker.stderr
    without_registry = on_node1(swarm_rig, sys.executable, "-m", "installer.cli", "install", str(releases["v0.3.5"]),
                                "--pubkey", str(releases["pubkey"]), "--prefix", str(tmp_path / "p"), "--swarm",
                                check=False)
    assert without_registry.returncode != 0 and "--from-registry" in without_registry.stderr
    assert "Traceback" not in without_registry.stderr and not (tmp_path / "p" / "current").exists()


def test_install_runs_the_stack_on_both_nodes_and_health_answers_on_each(swarm_rig, releases, clients,
                                                                        tmp_path_factory) -> None:
    prefix = tmp_path_factory.mktemp("swarm-site") / "aimatrix"
    since = swarm_rig.site_registry.log_size()
    result = airgap_install(swarm_rig, "install", str(releases["v0.3.5"]), "--pubkey", str(releases["pubkey"]),
                            "--prefix", str(prefix), "--from-registry", "--swarm", "--swarm-every-node", "nginx",
                            "--timeout", "300")
    SITE["prefix"] = prefix
    assert "healthy: 14 service(s) up, 2 one-shot(s) done" in result.stderr, result.stderr
    status = json.loads(day2(swarm_rig, "status", "--json").stdout)
    assert status["healthy"] is True and status["runner"] == "swarm"
    tasks = running_tasks(clients["node1"])
    for service in ("nginx", "frontend", "gitea-debug"):  # one task on every node
        assert sorted(tasks[service]) == ["node1", "node2"], (service, tasks.get(service))
    for service in ("postgres", "redis", "gitea", "backend", "jupyterhub"):  # stateful: on the data node only
        assert sorted(tasks[service]) == ["node1"], (service, tasks.get(service))
    node1 = clients["node1"].nodes.get(clients["node1"].info()["Swarm"]["NodeID"])
    assert node1.attrs["Spec"]["Labels"].get(DATA_LABEL) == "true"
    for node in NODES:  # nginx's published port, on each node's own address, asked from inside that node
        answer = http_get(node, ADDRS[node], 8080, "/health")
        assert answer is not None and answer[0] == 200, (node, answer)
    # no compose here: every container of the stack is a Swarm task
    for client in clients.values():
        containers = client.api.containers(filters={"label": f"com.docker.stack.namespace={STACK}"})
        assert containers and not client.api.containers(filters={"label": "com.docker.compose.project"})
    pulled_on_node2 = {r.path for r in swarm_rig.site_registry.requests(since)
                       if r.client == ADDRS["node2"] and "/manifests/sha256:" in r.path}
    assert pulled_on_node2, "node2 pulled its tasks' images from the site registry, by digest"


def test_a_task_killed_on_a_node_is_replaced_by_swarm(swarm_rig, releases, clients) -> None:
    if "prefix" not in SITE:
        pytest.fail("the install test must run first")
    node2 = clients["node2"]
    (task,) = running_tasks(clients["node1"])["frontend"]["node2"]
    killed = task["Status"]["ContainerStatus"]["ContainerID"]
    node2.api.kill(killed)

    def replaced() -> bool:
        now = running_tasks(clients["node1"]).get("frontend", {}).get("node2", [])
        return len(now) == 1 and now[0]["Status"]["ContainerStatus"]["ContainerID"] != killed

    wait_until(replaced, 120, "a new frontend task running healthy on node2")
    wait_until(lambda: day2(swarm_rig, "status", check=False).returncode == 0, 60, "the stack healthy again")


def test_an_upgrade_pulls_only_the_changed_images_on_each_node(swarm_rig, releases, clients) -> None:
    if "prefix" not in SITE:
        pytest.fail("the install test must run first")
    changed = changed_repositories(releases["v0.3.5"], releases["v0.3.6"])
    assert {"ai-infra-frontend", "ai-infra-backend"} <= changed and len(changed) < 10, changed
    before = running_tasks(clients["node1"])
    since = swarm_rig.site_registry.log_size()
    airgap_install(swarm_rig, "upgrade", str(releases["v0.3.6"]), "--pubkey", str(releases["pubkey"]),
                   "--prefix", str(SITE["prefix"]), "--from-registry", "--timeout", "300")
    header, _, _ = read_header(releases["v0.3.6"])
    configs = {image.id for image in header.images}
    requests = swarm_rig.site_registry.requests(since)
    node1, node2 = pulled_by(requests, "127.0.0.1", configs), pulled_by(requests, ADDRS["node2"], configs)
    assert node1 and node1 <= changed, (node1, changed)
    assert "ai-infra-frontend" in node2 and node2 <= changed, (node2, changed)  # frontend runs on node2 too
    after = running_tasks(clients["node1"])
    for service in ("postgres", "redis", "minio"):  # unchanged image, unchanged spec: the same task goes on
        assert [t["ID"] for t in after[service]["node1"]] == [t["ID"] for t in before[service]["node1"]], service
    status = json.loads(day2(swarm_rig, "status", "--json").stdout)
    assert status["healthy"] is True and status["version"] == "v0.3.6"
    frontend = next(image.id for image in header.images if any("ai-infra-frontend:" in t for t in image.targets))
    for node in NODES:  # each node runs the new frontend image (the signed image ID)
        (task,) = after["frontend"][node]
        container = clients[node].api.inspect_container(task["Status"]["ContainerStatus"]["ContainerID"])
        assert container["Image"] == frontend, node


def test_a_broken_release_is_rolled_back_to_the_last_healthy_one(swarm_rig, releases, clients) -> None:
    if "prefix" not in SITE:
        pytest.fail("the install test must run first")
    result = airgap_install(swarm_rig, "upgrade", str(releases["v0.3.7"]), "--pubkey", str(releases["pubkey"]),
                            "--prefix", str(SITE["prefix"]), "--from-registry", "--timeout", "240", check=False)
    assert result.returncode == 3, result.stderr
    assert "ROLLBACK: v0.3.7 did not become healthy; switching back to v0.3.6" in result.stderr
    assert "rolled back automatically to v0.3.6, which is healthy" in result.stderr
    assert "backend" in result.stderr and "Traceback" not in result.stderr
    status = json.loads(day2(swarm_rig, "status", "--json").stdout)
    assert status["healthy"] is True and status["version"] == "v0.3.6"
    pinned = json.loads((SITE["prefix"] / "releases/v0.3.6/swarm-images.json").read_text())
    backend = clients["node1"].api.inspect_service(f"{STACK}_backend")
    assert backend["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == \
        pinned["aiharbor.msxf.local/aihpc/ai-infra-backend:v0.3.6"]


def test_logs_restart_rollback_and_down(swarm_rig, releases, clients) -> None:
    if "prefix" not in SITE:
        pytest.fail("the install test must run first")
    logs = day2(swarm_rig, "logs", "nginx", "--tail", "5")
    assert "@node1" in logs.stdout + logs.stderr and "@node2" in logs.stdout + logs.stderr
    (before,) = running_tasks(clients["node1"])["frontend"]["node2"]
    day2(swarm_rig, "restart", "frontend", "--timeout", "180")
    (after,) = running_tasks(clients["node1"])["frontend"]["node2"]
    assert after["ID"] != before["ID"]
    rolled = day2(swarm_rig, "rollback", "--timeout", "300")
    assert "rolled back to v0.3.5" in rolled.stderr
    assert json.loads(day2(swarm_rig, "status", "--json").stdout)["version"] == "v0.3.5"
    day2(swarm_rig, "down")
    manager = clients["node1"]
    assert not manager.api.services(filters={"label": f"com.docker.stack.namespace={STACK}"})
    assert clients["node1"].volumes.get("ai-infra-postgres-data")  # data kept
    assert day2(swarm_rig, "status", check=False).returncode == 1


def test_a_one_host_site_moves_to_the_swarm_keeping_its_data(swarm_rig, releases, clients, tmp_path) -> None:
    prefix = tmp_path / "aimatrix"
    common = [str(releases["v0.3.5"]), "--pubkey", str(releases["pubkey"]), "--prefix", str(prefix),
              "--from-registry", "--timeout", "300"]
    airgap_install(swarm_rig, "install", *common)  # compose on node1, images from the registry
    node1 = clients["node1"]
    (postgres,) = node1.containers.list(filters={"label": "com.docker.compose.service=postgres"})
    assert postgres.exec_run(["sh", "-c", "echo kept > /var/lib/postgresql/data/marker"]).exit_code == 0
    refused = airgap_install(swarm_rig, "install", *common, "--swarm", check=False)
    assert refused.returncode != 0 and "stop it first with 'airgap-install down'" in refused.stderr, refused.stderr
    on_node1(swarm_rig, sys.executable, "-m", "installer.cli", "down", "--prefix", str(prefix))
    airgap_install(swarm_rig, "install", *common, "--swarm")
    (task,) = running_tasks(node1)["postgres"]["node1"]
    container = node1.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
    assert container.exec_run(["cat", "/var/lib/postgresql/data/marker"]).output.decode().strip() == "kept"
    on_node1(swarm_rig, sys.executable, "-m", "installer.cli", "down", "--prefix", str(prefix))
