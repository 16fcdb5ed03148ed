"""Real checks of the two-node Swarm rig (tests/harness/swarm.py).

Two engines in network namespaces ``node1`` and ``node2``, joined by a veth
pair (10.77.0.1, 10.77.0.2), form a Swarm; the site registry runs on node1
and answers to both as aiharbor.msxf.local. A busybox image pushed there is
deployed with ``docker stack deploy --with-registry-auth`` as two replicas,
one a node (``max_replicas_per_node: 1``), ``endpoint_mode: dnsrr`` and a
host-mode port (no IPVS here: no VIP, no ingress mesh). Every request is
made from inside the namespaces.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import re
import subprocess
import time
from typing import Callable, Iterator, NamedTuple, Optional

import docker
import pytest
import requests
from docker.errors import ImageNotFound, NotFound

from tests.harness import SwarmRig
from tests.harness.images import base_files, tar_bytes
from tests.harness.net import in_netns
from tests.harness.procs import wait_until
from tests.harness.swarm import ADDRS, LABEL, LINK, NODES

REPO = "aiharbor.msxf.local/aihpc/swarm-rigcheck"
TAG = "1"
STACK = "rigcheck"
SERVICE = f"{STACK}_web"
PORT = 18080
STACK_LABEL = f"com.docker.stack.namespace={STACK}"

Clients = dict[str, docker.DockerClient]


class Deployed(NamedTuple):
    """The deployed stack: the image's digest and where the registry log stood before the deploy."""

    digest: str
    log_offset: int


def http_get(node: str, host: str, port: int, path: str = "/") -> Optional[tuple[int, str]]:
    """(status, body) of http://HOST:PORT/PATH asked from inside ``node``; None if unreachable."""
    def fetch() -> Optional[tuple[int, str]]:
        conn = http.client.HTTPConnection(host, port, timeout=3)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    return in_netns(node, fetch)


def running_tasks(manager: docker.DockerClient) -> dict[str, list[dict]]:
    """The service's running tasks by node hostname."""
    hostnames = {n.id: n.attrs["Description"]["Hostname"] for n in manager.nodes.list()}
    found: dict[str, list[dict]] = {}
    for task in manager.services.get(SERVICE).tasks(filters={"desired-state": "running"}):
        if task["Status"]["State"] == "running":
            found.setdefault(hostnames[task["NodeID"]], []).append(task)
    return found


def container_id(task: dict) -> str:
    return task["Status"]["ContainerStatus"]["ContainerID"]


def wait_one_healthy_task_per_node(clients: Clients, timeout: float = 90,
                                   exclude: frozenset[str] = frozenset()) -> dict[str, dict]:
    """Wait until every node runs exactly one task of the service, its container healthy.

    Containers in ``exclude`` do not count. Returns the task of each node.
    """
    result: dict[str, dict] = {}

    def ready() -> bool:
        tasks = running_tasks(clients["node1"])
        if sorted(tasks) != sorted(NODES) or any(len(t) != 1 for t in tasks.values()):
            return False
        for node, (task,) in tasks.items():
            if container_id(task) in exclude:
                return False
            try:
                state = clients[node].containers.get(container_id(task)).attrs["State"]
            except NotFound:
                return False
            if state.get("Health", {}).get("Status") != "healthy":
                return False
            result[node] = task
        return True

    wait_until(ready, timeout, f"one healthy task of {SERVICE} on each of {NODES}")
    return result


def stack_file(image: str) -> dict:
    """The stack: two replicas, one a node, dnsrr, a host-mode port; each answers with its node."""
    serve = ('mkdir -p /www && echo "$$AIRGAP_NODE" > /www/index.html '
             '&& exec httpd -f -p 8080 -h /www')
    return {
        "version": "3.8",
        "services": {"web": {
            "image": image,
            "command": ["sh", "-c", serve],
            "environment": {"AIRGAP_NODE": "{{.Node.Hostname}}"},
            "stop_grace_period": "1s",  # httpd as PID 1 ignores SIGTERM
            "ports": [{"target": 8080, "published": PORT, "protocol": "tcp", "mode": "host"}],
            "healthcheck": {"test": ["CMD", "wget", "-q", "-O", "/dev/null",
                                     "http://127.0.0.1:8080/"],
                            "interval": "1s", "timeout": "3s", "retries": 3},
            "deploy": {
                "replicas": 2,
                "endpoint_mode": "dnsrr",
                "placement": {"max_replicas_per_node": 1,
                              "preferences": [{"spread": f"node.labels.{LABEL}"}]},
                "restart_policy": {"condition": "any", "delay": "1s"},
            },
        }},
    }


@pytest.fixture(scope="module")
def clients(swarm_rig: SwarmRig) -> Iterator[Clients]:
    made = {node: swarm_rig.client(node) for node in NODES}
    yield made
    for client in made.values():
        client.close()


@pytest.fixture(scope="module")
def docker_cli(swarm_rig: SwarmRig, tmp_path_factory) -> Callable[..., str]:
    """Runs the docker CLI against node1 inside node1, with a DOCKER_CONFIG of its own."""
    env = {"DOCKER_HOST": swarm_rig.docker_host("node1"),
           "DOCKER_CONFIG": str(tmp_path_factory.mktemp("docker-config"))}

    def docker_(*args: str, stdin: Optional[str] = None, check: bool = True) -> str:
        return swarm_rig.run_in("node1", ["docker", *args], env=env, input=stdin,
                                check=check).stdout

    return docker_


@pytest.fixture(scope="module")
def image_digest(swarm_rig: SwarmRig, clients: Clients) -> str:
    """A FROM-scratch busybox image built on node1 and pushed to the site registry; its digest.

    The local copies are removed from both nodes, so a deploy pulls it on each.
    """
    _remove_stack(clients)
    node1 = clients["node1"]
    node1.images.build(fileobj=io.BytesIO(tar_bytes(base_files())), custom_context=True,
                       tag=f"{REPO}:{TAG}", rm=True, forcerm=True, pull=False)
    lines = list(node1.api.push(REPO, tag=TAG, auth_config=swarm_rig.site_registry.auth_config(),
                                stream=True, decode=True))
    errors = [line for line in lines if "error" in line or "errorDetail" in line]
    assert not errors, errors
    digest = next(line["aux"]["Digest"] for line in lines if "Digest" in line.get("aux", {}))
    for client in clients.values():  # by tag (node1's build) or by digest (earlier deploys)
        for local in client.images.list():
            if any(ref.startswith(f"{REPO}:") or ref.startswith(f"{REPO}@")
                   for ref in local.tags + local.attrs.get("RepoDigests", [])):
                with contextlib.suppress(ImageNotFound):
                    client.images.remove(local.id, force=True)
    return digest


@pytest.fixture(scope="module")
def stack(swarm_rig: SwarmRig, clients: Clients, image_digest: str,
          docker_cli: Callable[..., str], tmp_path_factory) -> Iterator[Deployed]:
    """The stack deployed from the site registry, both tasks healthy; removed afterwards."""
    site = swarm_rig.site_registry
    docker_cli("login", site.host, "-u", site.username, "--password-stdin",
               stdin=site.password + "\n")
    compose = tmp_path_factory.mktemp("stack") / "stack.yml"  # JSON is YAML
    compose.write_text(json.dumps(stack_file(f"{REPO}:{TAG}"), indent=1))
    since = site.log_size()
    t0 = time.monotonic()
    docker_cli("stack", "deploy", "--with-registry-auth", "-c", str(compose), STACK)
    try:
        wait_one_healthy_task_per_node(clients)
        print(f"\nstack deployed, one healthy task on each node in {time.monotonic() - t0:.1f}s")
        yield Deployed(image_digest, since)
    finally:
        docker_cli("stack", "rm", STACK, check=False)
        _remove_stack(clients)


def _remove_stack(clients: Clients, timeout: float = 60) -> None:
    """Remove the stack (if any) and wait until its services, containers and networks are gone."""
    manager = clients["node1"]
    for service in manager.services.list(filters={"label": STACK_LABEL}):
        service.remove()

    def gone() -> bool:
        if manager.services.list(filters={"label": STACK_LABEL}):
            return False
        for client in clients.values():
            if client.containers.list(all=True, filters={"label": STACK_LABEL}):
                return False
        return not manager.networks.list(filters={"label": STACK_LABEL})

    wait_until(gone, timeout, f"stack {STACK} to be removed")


# -- the rig ------------------------------------------------------------------

def test_ensure_is_idempotent(swarm_rig: SwarmRig) -> None:
    assert swarm_rig.ensure() == "running"


def test_nodes_have_addresses_only_inside_and_no_route_out(swarm_rig: SwarmRig) -> None:
    for node in NODES:
        link = swarm_rig.run_in(node, ["ip", "-o", "-4", "addr", "show", "dev", LINK]).stdout
        assert re.findall(r"inet (\S+)", link) == [f"{ADDRS[node]}/24"]
        assert swarm_rig.run_in(node, ["ip", "-4", "route", "show", "default"]).stdout == ""
        assert swarm_rig.run_in(node, ["ip", "-6", "route", "show", "default"]).stdout == ""
    here = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert LINK not in here and "10.77.0." not in here  # the caller's namespace


def test_both_nodes_are_ready(swarm_rig: SwarmRig, clients: Clients,
                              docker_cli: Callable[..., str]) -> None:
    listed = docker_cli("node", "ls", "--format",
                        "{{.Hostname}} {{.Status}} {{.Availability}} {{.ManagerStatus}}")
    assert sorted(line.strip() for line in listed.splitlines()) == [
        "node1 Ready Active Leader", "node2 Ready Active"]
    nodes = {n.attrs["Description"]["Hostname"]: n.attrs for n in clients["node1"].nodes.list()}
    for name in NODES:
        assert nodes[name]["Spec"]["Labels"][LABEL] == name
        assert nodes[name]["Status"]["Addr"] == ADDRS[name]
    assert nodes["node1"]["ManagerStatus"]["Addr"] == f"{ADDRS['node1']}:2377"
    assert nodes["node2"]["Spec"]["Role"] == "worker"


def test_site_registry_runs_on_node1_and_answers_to_both(swarm_rig: SwarmRig) -> None:
    site = swarm_rig.site_registry
    assert site.netns == "node1" and site.pid() is not None
    robot = (site.username, site.password)
    for node in NODES:
        def ask(auth: Optional[tuple[str, str]]) -> int:
            with requests.Session() as session:
                session.trust_env = False
                return session.get(f"https://{site.host}/v2/", auth=auth, verify=str(site.ca_file),
                                   timeout=10).status_code
        assert in_netns(node, lambda: ask(None)) == 401, node
        assert in_netns(node, lambda: ask(robot)) == 200, node


# -- a stack from the site registry --------------------------------------------

def test_stack_runs_one_task_on_each_node(stack: Deployed, clients: Clients) -> None:
    tasks = running_tasks(clients["node1"])
    assert sorted(tasks) == ["node1", "node2"]
    assert [len(t) for t in tasks.values()] == [1, 1]
    spec = clients["node1"].services.get(SERVICE).attrs["Spec"]
    assert spec["EndpointSpec"]["Mode"] == "dnsrr"
    assert spec["EndpointSpec"]["Ports"][0]["PublishMode"] == "host"


def test_each_node_pulled_the_image_from_the_registry(swarm_rig: SwarmRig, stack: Deployed,
                                                      clients: Clients) -> None:
    for client in clients.values():  # Swarm pulls by digest (no tag)
        assert f"{REPO}@{stack.digest}" in client.images.get(f"{REPO}@{stack.digest}").attrs[
            "RepoDigests"]
    # Blobs fetched by node1's engine (loopback there) and node2's (through its forwarder).
    with open(swarm_rig.site_registry.log, "rb") as fh:
        fh.seek(stack.log_offset)
        text = fh.read().decode(errors="replace")
    pulled_by = set(re.findall(r'^(\S+) \S+ \S+ \[[^\]]*\] "GET /v2/aihpc/swarm-rigcheck/blobs/'
                               r'sha256:[0-9a-f]+ HTTP/[0-9.]+" 200 ', text, re.M))
    assert pulled_by == {"127.0.0.1", ADDRS["node2"]}


def test_published_port_answers_on_each_node(stack: Deployed) -> None:
    for asker in NODES:
        for node in NODES:
            assert http_get(asker, ADDRS[node], PORT) == (200, f"{node}\n"), (asker, node)


def test_tasks_reach_each_other_by_name_over_the_overlay(stack: Deployed,
                                                         clients: Clients) -> None:
    (task,) = running_tasks(clients["node1"])["node1"]
    container = clients["node1"].containers.get(container_id(task))
    # dnsrr: the name is both tasks' overlay addresses (no virtual IP); ask each of them. The other
    # node's task reaches this node's DNS through the Swarm's gossip, which may take a few seconds.
    answer: dict[str, object] = {}

    def both_named() -> bool:
        code, out = container.exec_run(["nslookup", "tasks.web"])
        answer.update(code=code, out=out.decode(errors="replace"))
        answer["addresses"] = re.findall(r"Name:\s+tasks\.web\s+Address:\s+(\S+)", answer["out"])
        return code == 0 and len(answer["addresses"]) == 2

    try:
        wait_until(both_named, 60, "both tasks' addresses under tasks.web")
    except Exception:
        pytest.fail(f"tasks.web does not name both tasks after 60 s: {answer}")
    addresses = answer["addresses"]
    answers = set()
    for address in addresses:
        code, out = container.exec_run(["wget", "-q", "-O", "-", f"http://{address}:8080/"])
        assert code == 0, (address, out)
        answers.add(out.decode().strip())
    assert answers == set(NODES)


def test_killed_task_is_replaced(stack: Deployed, clients: Clients) -> None:
    (old,) = running_tasks(clients["node1"])["node2"]
    clients["node2"].containers.get(container_id(old)).kill()
    t0 = time.monotonic()
    tasks = wait_one_healthy_task_per_node(clients, exclude=frozenset({container_id(old)}))
    print(f"\nkilled task on node2 replaced in {time.monotonic() - t0:.1f}s")
    assert tasks["node2"]["ID"] != old["ID"]
    assert http_get("node1", ADDRS["node2"], PORT) == (200, "node2\n")
