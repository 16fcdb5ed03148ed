"""Service state of a compose project, read from the engine, and waiting until it is healthy."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import docker

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


@dataclass
class ServiceState:
    """One service: its container's state, health and whether that counts as ready."""

    service: str
    container: Optional[str]
    state: str
    health: Optional[str]
    exit_code: Optional[int]
    ready: bool
    oneshot: bool
    image: Optional[str] = None
    ports: str = ""
    last_health_output: str = ""

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return asdict(self)

    def summary(self) -> str:
        """``healthy`` / ``exited (0)`` / ``running`` / ``missing`` ..."""
        if self.container is None:
            return "missing"
        if self.state == "exited":
            return f"exited ({self.exit_code})"
        return self.health or self.state


def service_states(client: docker.DockerClient, project: str, services: Sequence[str], oneshot: Sequence[str]) -> list[ServiceState]:
    """The state of every service of ``project`` (``missing`` when it has no container)."""
    containers = client.api.containers(all=True, filters={"label": f"{PROJECT_LABEL}={project}"})
    by_service: dict[str, dict] = {}
    for summary in containers:
        service = summary["Labels"].get(SERVICE_LABEL, "")
        previous = by_service.get(service)
        if previous is None or summary.get("Created", 0) > previous.get("Created", 0):
            by_service[service] = summary
    states = []
    for service in services:
        summary = by_service.get(service)
        if summary is None:
            states.append(ServiceState(service, None, "missing", None, None, False, service in oneshot))
            continue
        attrs = client.api.inspect_container(summary["Id"])
        state = attrs["State"]
        health = state.get("Health") or {}
        log = health.get("Log") or []
        status = state.get("Status", "unknown")
        exit_code = state.get("ExitCode") if status == "exited" else None
        is_oneshot = service in oneshot
        if is_oneshot:
            ready = status == "exited" and exit_code == 0
        elif health:
            ready = status == "running" and health.get("Status") == "healthy"
        else:
            ready = status == "running"
        ports = ", ".join(
            f"{binding.get('HostIp') or '0.0.0.0'}:{binding['HostPort']}->{port}"
            for port, bindings in (attrs.get("NetworkSettings", {}).get("Ports") or {}).items()
            for binding in (bindings or [])
        )
        states.append(ServiceState(
            service=service, container=attrs["Name"].lstrip("/"), state=status, health=health.get("Status"),
            exit_code=exit_code, ready=ready, oneshot=is_oneshot, image=attrs["Config"].get("Image"), ports=ports,
            last_health_output=(log[-1].get("Output", "").strip() if log else ""),
        ))
    return states


def wait_until_ready(
    client: docker.DockerClient,
    project: str,
    services: Sequence[str],
    oneshot: Sequence[str],
    timeout: float,
    on_change: Optional[Callable[[ServiceState], None]] = None,
    interval: float = 1.0,
) -> tuple[bool, list[ServiceState]]:
    """Poll until every service is ready (or a one-shot failed); return (ok, last states)."""
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while True:
        states = service_states(client, project, services, oneshot)
        for state in states:
            if on_change and seen.get(state.service) != state.summary():
                on_change(state)
            seen[state.service] = state.summary()
        if all(state.ready for state in states):
            return True, states
        failed_oneshot = [s for s in states if s.oneshot and s.state == "exited" and s.exit_code != 0]
        if failed_oneshot or time.monotonic() >= deadline:
            return False, states
        time.sleep(interval)


def last_log_lines(client: docker.DockerClient, container: str, lines: int = 20) -> str:
    """The container's last ``lines`` log lines (stdout and stderr)."""
    try:
        return client.api.logs(container, tail=lines, stdout=True, stderr=True).decode(errors="replace").rstrip()
    except docker.errors.APIError:
        return "(no logs available)"
