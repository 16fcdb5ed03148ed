"""What the Swarm says: this engine's role, the nodes, the data node's label, IPVS, and each service's tasks."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

import docker

from ..health import ServiceState

from ..preflight import STACK_LABEL
# Tasks of the service's current spec that failed since the deploy before it counts as broken
# (Swarm keeps replacing them; waiting out the whole timeout would only repeat the failure).
FAILURES_BEFORE_GIVING_UP = 3


class SwarmError(Exception):
    """This engine cannot run the stack as a Swarm stack; ``fix`` says what to do."""

    def __init__(self, message: str, fix: str = ""):
        super().__init__(message)
        self.fix = fix


@dataclass(frozen=True)
class Node:
    """One Swarm node: its ID, hostname, role, whether it takes tasks, and its labels."""

    id: str
    hostname: str
    role: str
    ready: bool
    labels: dict[str, str]


def manager_node_id(client: docker.DockerClient) -> str:
    """This engine's node ID; SwarmError unless it is an active Swarm manager."""
    swarm = client.info().get("Swarm") or {}
    state = swarm.get("LocalNodeState", "inactive")
    if state != "active":
        raise SwarmError(f"this Docker engine is not part of a Swarm (state: {state})",
                         "run 'docker swarm init' here (and 'docker swarm join' on the other nodes), "
                         "or run the install on a Swarm manager")
    if not swarm.get("ControlAvailable"):
        raise SwarmError("this Docker engine is a Swarm worker; a stack is deployed from a manager",
                         "run the install on a manager node ('docker node ls' there lists the nodes)")
    return str(swarm["NodeID"])


def nodes(client: docker.DockerClient) -> list[Node]:
    """Every node of the Swarm; ``ready`` when it is up and takes tasks (availability active)."""
    found = []
    for attrs in client.api.nodes():
        spec, status = attrs.get("Spec") or {}, attrs.get("Status") or {}
        found.append(Node(id=attrs["ID"], hostname=(attrs.get("Description") or {}).get("Hostname", attrs["ID"][:12]),
                          role=spec.get("Role", "worker"),
                          ready=status.get("State") == "ready" and spec.get("Availability", "active") == "active",
                          labels=dict(spec.get("Labels") or {})))
    return found


def data_node(client: docker.DockerClient, label: str) -> Optional[Node]:
    """The node carrying ``label=true``; SwarmError when several do."""
    holders = [node for node in nodes(client) if node.labels.get(label) == "true"]
    if len(holders) > 1:
        raise SwarmError(f"{len(holders)} nodes carry the data label {label}=true "
                         f"({', '.join(n.hostname for n in holders)}); the stack's volumes live on one",
                         f"keep it on the node holding the data: docker node update --label-rm {label} NODE")
    return holders[0] if holders else None


def label_node(client: docker.DockerClient, node_id: str, label: str) -> None:
    """Put ``label=true`` on the node (its other labels kept)."""
    attrs = client.api.inspect_node(node_id)
    spec = dict(attrs["Spec"])
    spec["Labels"] = {**(spec.get("Labels") or {}), label: "true"}
    client.api.update_node(node_id, attrs["Version"]["Index"], spec)


def kernel_has_ipvs(proc: Path = Path("/proc"), sys: Path = Path("/sys"), modules: Path = Path("/lib/modules")) -> bool:
    """True when this kernel has IPVS (loaded, built in, or a module to load): Swarm's VIPs and ingress mesh need it."""
    if (proc / "net/ip_vs").exists() or (sys / "module/ip_vs").exists():
        return True
    try:
        release = (proc / "sys/kernel/osrelease").read_text().strip()
    except OSError:
        return False
    for listing in ("modules.builtin", "modules.dep"):
        try:
            if re.search(r"(^|/)ip_vs\.ko", (modules / release / listing).read_text(), re.MULTILINE):
                return True
        except OSError:
            continue
    return False


def stack_states(client: docker.DockerClient, stack: str, services: Sequence[str], oneshot: Sequence[str],
                 since: Optional[datetime] = None) -> list[ServiceState]:
    """The state of every service of the stack, read from its service spec and its tasks."""
    hostnames = {node.id: node.hostname for node in nodes(client)}
    existing = {s["Spec"]["Name"]: s for s in client.api.services(filters={"label": f"{STACK_LABEL}={stack}"})}
    tasks_by_service: dict[str, list[dict]] = {}
    for task in client.api.tasks(filters={"label": f"{STACK_LABEL}={stack}"}):
        tasks_by_service.setdefault(task["ServiceID"], []).append(task)
    return [_state(name, existing.get(f"{stack}_{name}"), tasks_by_service, hostnames, name in oneshot, since)
            for name in services]


def _state(name: str, service: Optional[dict], tasks_by_service: dict[str, list[dict]], hostnames: dict[str, str],
           oneshot: bool, since: Optional[datetime]) -> ServiceState:
    if service is None:
        return ServiceState(name, None, "missing", None, None, False, oneshot)
    spec = service["Spec"]
    image = spec["TaskTemplate"]["ContainerSpec"]["Image"]
    tasks = sorted(tasks_by_service.get(service["ID"], []), key=lambda t: t.get("CreatedAt", ""))
    current = [t for t in tasks if _same_spec(t["Spec"], spec["TaskTemplate"])]
    update = (service.get("UpdateStatus") or {}).get("State")
    has_health = bool(spec["TaskTemplate"]["ContainerSpec"].get("Healthcheck", {}).get("Test")) and \
        spec["TaskTemplate"]["ContainerSpec"]["Healthcheck"]["Test"] != ["NONE"]
    ports = ", ".join(sorted({f"{hostnames.get(t.get('NodeID', ''), '?')}:{p.get('PublishedPort')}->{p.get('TargetPort')}"
                              for t in current if t["DesiredState"] == "running"
                              for p in (t.get("Status", {}).get("PortStatus", {}).get("Ports") or [])}))
    failed = [t for t in current if t["Status"]["State"] in ("failed", "rejected")
              and (since is None or _time(t.get("CreatedAt")) >= since)]
    last_error = _task_error(failed[-1]) if failed else ""
    status_of_update = service.get("UpdateStatus") or {}
    rolled_back_now = update == "rollback_completed" and since is not None and \
        _time(status_of_update.get("CompletedAt")) >= since
    if update in ("rollback_started", "rollback_paused") or rolled_back_now:
        # Swarm went back to the previous spec by itself (the application's failure_action: rollback)
        return ServiceState(name, None, "update rolled back by Swarm", None, None, False, oneshot, image,
                            last_health_output=status_of_update.get("Message", "") or last_error)
    if oneshot:
        latest = current[-1] if current else None
        state = latest["Status"]["State"] if latest else "pending"
        exit_code = ((latest or {}).get("Status", {}).get("ContainerStatus") or {}).get("ExitCode")
        where = hostnames.get((latest or {}).get("NodeID", ""), "")
        if state == "complete":
            return ServiceState(name, where, "exited", None, 0, True, True, image)
        if state in ("failed", "rejected"):
            return ServiceState(name, where, "exited", None, exit_code if exit_code else 1, False, True, image,
                                last_health_output=_task_error(latest))
        return ServiceState(name, where or None, state, None, None, False, True, image)
    wanted = [t for t in current if t["DesiredState"] == "running"]
    running = [t for t in wanted if t["Status"]["State"] == "running"]
    mode = spec.get("Mode") or {}
    desired = mode["Replicated"].get("Replicas", 1) if "Replicated" in mode else len(wanted)
    where = ",".join(sorted(hostnames.get(t.get("NodeID", ""), "?") for t in running)) or None
    ready = bool(running) and len(running) >= desired and len(running) == len(wanted) and \
        update not in ("updating", "rollback_started", "paused", "rollback_paused")
    if update in ("paused", "rollback_paused"):
        status = f"update {update}"
        last_error = (service.get("UpdateStatus") or {}).get("Message", "") or last_error
    elif len(failed) >= FAILURES_BEFORE_GIVING_UP:
        status = f"failing ({len(failed)} tasks failed)"
    elif ready:
        status = "running"
    else:
        status = "starting" if wanted else "pending"
    health = ("healthy" if ready else "starting") if has_health else None
    return ServiceState(name, where, status, health, None, ready, False, image,
                        ports=ports, last_health_output=last_error)


def broken(state: ServiceState) -> bool:
    """True for a service Swarm will not bring up by itself: a failed one-shot, a paused update, tasks failing again and again."""
    if state.oneshot:
        return state.state == "exited" and state.exit_code != 0
    return state.state.startswith(("update paused", "failing", "update rolled back"))


def _same_spec(task_spec: dict, template: dict) -> bool:
    """True when a task was made from the service's current spec (the engine adds ``Runtime`` to each task's copy)."""
    strip = lambda spec: {key: value for key, value in spec.items() if key != "Runtime"}  # noqa: E731
    return strip(task_spec) == strip(template)


def _task_error(task: dict) -> str:
    status = task.get("Status") or {}
    code = (status.get("ContainerStatus") or {}).get("ExitCode")
    text = status.get("Err") or status.get("Message") or status.get("State", "")
    return f"{text} (exit code {code})" if code else text


def _time(text: Optional[str]) -> datetime:
    """Swarm's RFC 3339 time with nanoseconds, as an aware datetime."""
    if not text:
        return datetime.min.replace(tzinfo=timezone.utc)
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?", text)
    if not match:
        return datetime.min.replace(tzinfo=timezone.utc)
    fraction = (match.group(2) or "0")[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{match.group(1)}.{fraction}+00:00")
