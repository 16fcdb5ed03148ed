"""The stack as a Docker Swarm stack: deploy in dependency stages, wait until every task is healthy.

A :class:`~installer.runners.StackRunner`. ``bring_up`` converts the release's
compose config into a stack file (:mod:`installer.swarm.stackfile`), labels the
data node, and runs ``docker stack deploy`` once per dependency stage, waiting
after each until its services' tasks run healthy and its one-shot jobs completed
(Swarm has no ``depends_on``). The site's choices live in ``PREFIX/swarm.json``;
the images each release runs, pinned by manifest digest, in
``releases/<version>/swarm-images.json``, so a rollback needs nothing but the
registry that still holds them.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import docker
import yaml

from .. import engine as engine_ops
from ..archive import BundleHeader
from ..childenv import child_environment
from ..errors import InstallError, Say
from ..health import ServiceState
from ..hostpaths import SITE_OVERRIDE, HostPathError, write_site_override
from ..site import read_env, write_env_files
from .cluster import SwarmError, broken, data_node, label_node, manager_node_id, stack_states
from .stackfile import StackFileError, StackPlan, SwarmLayout, convert

if TYPE_CHECKING:
    from ..registry.pull import RegistryImages

SETTINGS_FILE = "swarm.json"
IMAGES_FILE = "swarm-images.json"
STACK_FILE = "docker-stack.yml"
ENDPOINT_MODES = ("auto", "dnsrr", "vip")


@dataclass
class SwarmSettings:
    """The site's Swarm choices, kept in PREFIX/swarm.json across upgrades."""

    endpoint_mode: str = "dnsrr"
    every_node: list[str] = field(default_factory=list)

    def layout(self, project: str) -> SwarmLayout:
        """The stack file's layout for ``project``."""
        return SwarmLayout(data_label=data_label(project), endpoint_mode=self.endpoint_mode,
                           every_node=tuple(self.every_node))


def data_label(project: str) -> str:
    """The node label that marks where ``project``'s volumes live: ``airgap.PROJECT.data``."""
    return f"airgap.{re.sub(r'[^a-z0-9-]', '-', project.lower())}.data"


def read_settings(prefix: Path) -> Optional[SwarmSettings]:
    """The site's Swarm settings, or None when the site runs compose on one host."""
    path = prefix / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return SwarmSettings(endpoint_mode=str(data.get("endpoint_mode", "dnsrr")),
                             every_node=[str(s) for s in data.get("every_node") or []])
    except (OSError, ValueError, AttributeError) as exc:
        raise InstallError(f"{path} is unreadable ({exc}); remove it to run the stack with compose again") from None


def write_settings(prefix: Path, settings: SwarmSettings) -> None:
    """Keep the Swarm settings in PREFIX/swarm.json."""
    prefix.mkdir(parents=True, exist_ok=True)
    temporary = prefix / f".{SETTINGS_FILE}.tmp"
    temporary.write_text(json.dumps(asdict(settings), indent=2) + "\n")
    temporary.replace(prefix / SETTINGS_FILE)


def docker_cli() -> str:
    """The docker CLI (``docker stack`` is client-side): $AIRGAP_INSTALL_DOCKER_CLI, else ``docker`` on PATH."""
    explicit = os.environ.get("AIRGAP_INSTALL_DOCKER_CLI")
    found = explicit or shutil.which("docker")
    if not found or not os.access(found, os.X_OK):
        raise InstallError("the docker CLI is not installed on this host; 'docker stack deploy' needs it "
                           "(Debian's docker.io package has it)")
    return found


def read_images(release: Path) -> Optional[dict[str, str]]:
    """The release's pinned images (name -> host/repository@digest), if it was deployed to a Swarm before."""
    path = release / IMAGES_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


class SwarmRunner:
    """The stack as a Swarm stack deployed from this manager; images from the site registry."""

    def __init__(self, client: docker.DockerClient, env_file: Path, settings: SwarmSettings, *,
                 pinned_images: Optional[Callable[[BundleHeader], dict[str, str]]] = None,
                 registry_auth: Optional[tuple[str, str, str]] = None):
        self.client, self.env_file, self.settings = client, env_file, settings
        self.pinned_images = pinned_images
        self.registry_auth = registry_auth  # (host, username, password) handed to the nodes with the deploy

    # -- bring up --------------------------------------------------------------------------------

    def bring_up(self, release: Path, header: BundleHeader, timeout: float, say: Say) -> list[ServiceState]:
        """Deploy the release's stack stage by stage and wait until every service is ready; InstallError if not."""
        try:
            return self._bring_up(release, header, timeout, say)
        except docker.errors.APIError as exc:
            raise InstallError(f"the Swarm refused: {exc.explanation or exc}", exit_code=3) from None

    def _bring_up(self, release: Path, header: BundleHeader, timeout: float, say: Say) -> list[ServiceState]:
        stack = header.spec.project
        plan = self.plan(release, header, deploy_id=uuid.uuid4().hex[:12])
        for note in plan.notes:
            say(f"  swarm: {note}")
        self.ensure_data_node(header, plan, say)
        say(f"up: Swarm stack {stack}: {len(plan.document['services'])} services in {len(plan.stages)} stage(s); "
            f"on every node: {', '.join(plan.global_services) or 'none'}; on the data node: "
            f"{', '.join(plan.pinned) or 'none'}")
        deadline = time.monotonic() + timeout
        since = datetime.now(timezone.utc)
        for index, stage in enumerate(plan.stages):
            final = index == len(plan.stages) - 1
            self.replace_changed_modes(stack, plan.up_to(index), say)
            self.deploy(release, stack, plan.up_to(index), prune=final)
            self.wait(stack, stage, plan.oneshot, deadline, since, say, timeout)
        states = stack_states(self.client, stack, header.spec.services, plan.oneshot)
        say(f"healthy: {sum(1 for s in states if not s.oneshot)} service(s) up, "
            f"{sum(1 for s in states if s.oneshot)} one-shot(s) done")
        return states

    def plan(self, release: Path, header: BundleHeader, deploy_id: str = "") -> StackPlan:
        """The stack plan of a release folder, with the site's values and its pinned images."""
        values = read_env(self.env_file)
        write_env_files(release, header.spec.env_files, values)
        try:
            write_site_override(release, header, values, engine_ops.docker_host())
        except HostPathError as exc:
            raise InstallError(f"{exc}; nothing was started", [exc.fix]) from None
        images = read_images(release)
        if images is None:
            if self.pinned_images is None:
                raise InstallError(f"{release.name} was never deployed to the Swarm and its images' registry "
                                   "digests are unknown here; install its archive with --swarm --from-registry")
            images = self.pinned_images(header)
            (release / IMAGES_FILE).write_text(json.dumps(images, indent=2, sort_keys=True) + "\n")
        override_path = release / SITE_OVERRIDE
        try:
            compose = yaml.safe_load((release / "docker-compose.yml").read_text())
            override = yaml.safe_load(override_path.read_text()) if override_path.is_file() else None
            return convert(compose, release=release, values=values, images=images, oneshot=set(header.spec.oneshot),
                           layout=self.settings.layout(header.spec.project), override=override, deploy_id=deploy_id)
        except StackFileError as exc:
            raise InstallError(f"the stack cannot run on a Swarm: {exc}; nothing was started") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InstallError(f"the stack cannot run on a Swarm: its compose config has an entry this tool cannot "
                               f"convert ({type(exc).__name__}: {exc}); nothing was started") from None
        except (OSError, yaml.YAMLError) as exc:
            raise InstallError(f"cannot read the compose config of {release}: {exc}") from None

    def ensure_data_node(self, header: BundleHeader, plan: StackPlan, say: Say) -> None:
        """Label this node as the data node unless a node already is; refuse when release files are elsewhere."""
        label = data_label(header.spec.project)
        try:
            here = manager_node_id(self.client)
            holder = data_node(self.client, label)
        except SwarmError as exc:
            raise InstallError(str(exc), [exc.fix] if exc.fix else []) from None
        if holder is None:
            label_node(self.client, here, label)
            say(f"  swarm: this node holds the stack's volumes from now on (node label {label}=true)")
        elif holder.id != here and plan.pinned:
            raise InstallError(
                f"the stack's data lives on node {holder.hostname} (label {label}=true), but this install runs on "
                "another node; its volumes and release files would not be there",
                [f"run the install on {holder.hostname}, or move the data and then the label: "
                 f"docker node update --label-rm {label} {holder.hostname}"])

    def replace_changed_modes(self, stack: str, document: dict, say: Say) -> None:
        """Remove a service whose mode (global / replicated) the new spec changes: Swarm cannot update that."""
        for name, service in document["services"].items():
            try:
                existing = self.client.api.inspect_service(f"{stack}_{name}")
            except docker.errors.NotFound:
                continue
            now_global = "Global" in (existing["Spec"].get("Mode") or {})
            if now_global != (service["deploy"].get("mode") == "global"):
                say(f"  swarm: {name} changes between one task on every node and replicas; Swarm cannot update "
                    "that, so the service is removed and created again")
                self.client.api.remove_service(existing["ID"])
                deadline = time.monotonic() + 120
                while self.client.api.tasks(filters={"service": existing["ID"]}) and time.monotonic() < deadline:
                    time.sleep(0.5)

    def deploy(self, release: Path, stack: str, document: dict, prune: bool) -> None:
        """``docker stack deploy`` of ``document`` (written to the release folder, 0600: it holds site values)."""
        path = release / STACK_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("# Written by airgap-install at every Swarm deploy from docker-compose.yml and the site's "
                         "values (0600).\n")
            yaml.safe_dump(document, handle, sort_keys=False, default_flow_style=False)
        args = ["stack", "deploy", "--compose-file", str(path), "--resolve-image", "never"]
        auth = self.registry_auth or stored_auth(document)
        if auth is not None:  # without credentials, the ones the services hold are kept
            args.append("--with-registry-auth")
        if prune:
            args.append("--prune")
        run_docker([*args, stack], cwd=release, auth=auth, timeout=300)

    def wait(self, stack: str, services: Sequence[str], oneshot: Sequence[str], deadline: float, since: datetime,
             say: Say, timeout: float) -> None:
        """Poll until ``services`` are ready; InstallError naming what is not (and why) at a failure or the deadline."""
        seen: dict[str, str] = {}
        while True:
            states = stack_states(self.client, stack, services, oneshot, since)
            for state in states:
                summary = _summary(state)
                if seen.get(state.service) != summary:
                    say(f"  {state.service}: {summary}")
                    seen[state.service] = summary
            if all(state.ready for state in states):
                return
            failing = [state for state in states if broken(state)]
            if failing or time.monotonic() >= deadline:
                reason = "failing: " + ", ".join(s.service for s in failing) if failing else \
                    f"not healthy within {timeout:.0f}s"
                raise InstallError(f"the Swarm stack did not become healthy ({reason})",
                                   [self._detail(stack, s) for s in states if not s.ready], exit_code=3)
            time.sleep(1.0)

    def _detail(self, stack: str, state: ServiceState) -> str:
        detail = f"{state.service}: {_summary(state)}"
        if state.last_health_output:
            detail += f"; Swarm says: {state.last_health_output[-300:]}"
        logs = service_logs(stack, state.service, 10)
        if logs:
            detail += "\n      last log lines:\n      " + logs.replace("\n", "\n      ")
        return detail

    # -- day 2 -------------------------------------------------------------------------------------

    def states(self, header: BundleHeader) -> list[ServiceState]:
        """Every service's state now."""
        try:
            return stack_states(self.client, header.spec.project, header.spec.services, header.spec.oneshot)
        except docker.errors.APIError as exc:
            raise InstallError(f"the Swarm did not answer: {exc.explanation or exc}") from None

    def restart(self, header: BundleHeader, services: Sequence[str], timeout: float, say: Say) -> None:
        """Replace the tasks of the named services (all long-running ones when none named), then wait."""
        stack = header.spec.project
        names = list(services) or [s for s in header.spec.services if s not in header.spec.oneshot]
        for name in names:
            run_docker(["service", "update", "--force", "--detach", f"{stack}_{name}"], auth=None, timeout=120)
        self.wait(stack, names, header.spec.oneshot, time.monotonic() + timeout, datetime.now(timezone.utc), say,
                  timeout)

    def down(self, header: BundleHeader, timeout: float = 300) -> None:
        """``docker stack rm`` and wait until its services, containers and networks are gone (volumes stay)."""
        stack = header.spec.project
        run_docker(["stack", "rm", stack], auth=None, timeout=120)
        label = f"com.docker.stack.namespace={stack}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = (self.client.api.services(filters={"label": label}) or
                    self.client.api.containers(all=True, filters={"label": label}) or
                    self.client.api.networks(filters={"label": label}))
            if not left:
                return
            time.sleep(0.5)
        raise InstallError(f"the Swarm stack {stack} was removed but parts of it are still there after {timeout:.0f}s",
                           ["see 'docker stack ps " + stack + "' and 'docker network ls'"])


def run_docker(args: Sequence[str], *, auth: Optional[tuple[str, str, str]], timeout: float,
               cwd: Optional[Path] = None, capture: bool = True) -> subprocess.CompletedProcess:
    """Run the docker CLI; with ``auth`` it gets a private config holding only those credentials."""
    env = child_environment()
    with tempfile.TemporaryDirectory(prefix="airgap-docker-config-") as config:
        if auth is not None:
            host, username, password = auth
            token = base64.b64encode(f"{username}:{password}".encode()).decode()
            path = Path(config) / "config.json"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump({"auths": {host: {"auth": token}}}, handle)
            env["DOCKER_CONFIG"] = config
        try:
            result = subprocess.run([docker_cli(), *args], capture_output=capture, text=True, timeout=timeout,
                                    cwd=cwd, env=env, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise InstallError(f"docker {' '.join(args[:2])} did not finish within {timeout:.0f}s") from None
    if result.returncode != 0:
        output = ((result.stderr or "") + (result.stdout or "")).strip() if capture else ""
        raise InstallError(f"docker {' '.join(args[:2])} failed (exit {result.returncode}): {output[-1500:]}")
    return result


def service_logs(stack: str, service: str, lines: int) -> str:
    """The last ``lines`` log lines of a service's tasks (every node), or ''."""
    try:
        result = run_docker(["service", "logs", "--no-trunc", "--tail", str(lines), f"{stack}_{service}"],
                            auth=None, timeout=30)
    except InstallError:
        return ""
    return (result.stdout + result.stderr).strip()


def logs_argv(stack: str, service: str, tail: Optional[int], follow: bool) -> list[str]:
    """The command line that shows a Swarm service's logs from every node."""
    args = [docker_cli(), "service", "logs", "--timestamps"]
    if tail is not None:
        args += ["--tail", str(tail)]
    if follow:
        args.append("--follow")
    return [*args, f"{stack}_{service}"]


def _summary(state: ServiceState) -> str:
    text = state.summary() if state.oneshot else (state.health or state.state)
    if not state.oneshot and state.state not in ("running", "missing") and state.health:
        text = state.state
    return text + (f" on {state.container}" if state.container else "")


def stack_volumes(release: Optional[Path], stack: str) -> list[str]:
    """The engine names of the named volumes a release declares, as a Swarm stack names them."""
    try:
        compose = yaml.safe_load((release / "docker-compose.yml").read_text()) if release else {}
    except (OSError, yaml.YAMLError):
        return []
    volumes = (compose or {}).get("volumes") or {}
    return [str((spec or {}).get("name") or f"{stack}_{name}") for name, spec in volumes.items()
            if not (spec or {}).get("external")]


def remove_volumes(client: docker.DockerClient, names: list[str]) -> list[str]:
    """Remove the named volumes this engine has; the names removed."""
    removed = []
    for name in names:
        try:
            client.volumes.get(name).remove()
            removed.append(name)
        except docker.errors.NotFound:
            continue
        except docker.errors.APIError as exc:
            raise InstallError(f"cannot delete volume {name}: {exc.explanation or exc}") from None
    return removed


def stored_auth(document: dict) -> Optional[tuple[str, str, str]]:
    """(host, username, password) that 'docker login' stored for the registry of the stack's images, if any."""
    from ..registry.client import docker_credentials

    hosts = {str(service.get("image", "")).split("/", 1)[0] for service in document.get("services", {}).values()}
    for host in sorted(hosts):
        credentials = docker_credentials(host) if "." in host or ":" in host else None
        if credentials is not None:
            return host, credentials.username, credentials.password
    return None


def registry_pins(images: "RegistryImages") -> Callable[[BundleHeader], dict[str, str]]:
    """Each name the release uses -> its registry manifest by digest, from the site registry's answers."""
    from ..registry.push import release_registry
    from ..registry.reference import site_reference

    def pinned(header: BundleHeader) -> dict[str, str]:
        found = images.survey(header)
        registry = images.registry.registry
        own = release_registry(header)
        result, lacking = {}, []
        for image in header.images:
            for name in image.targets:
                reference = str(site_reference(name, registry, own))
                if reference in found.pinned:
                    result[name] = found.pinned[reference]
                else:
                    lacking.append(reference)
        if lacking:
            raise InstallError(f"the site registry lacks {len(lacking)} of the release's names; push the release "
                               "first ('airgap-install push ARCHIVE')", lacking[:10])
        return result

    return pinned


def registry_auth(images: "RegistryImages") -> Optional[tuple[str, str, str]]:
    """(host, username, password) the nodes pull with, when credentials were given or stored by docker login."""
    credentials = images.registry.credentials
    return (images.registry.registry.host, credentials.username, credentials.password) if credentials else None
