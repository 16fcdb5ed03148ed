"""The release's compose config, converted into a Docker Swarm stack file (``docker stack deploy -c``).

The input is the derived compose config of the release folder (and the site's
host-path override), read as compose reads it; the output is what Swarm needs:

- ``version: "3.8"`` (the newest that Docker 20.10's ``docker stack deploy`` reads);
- the site's values filled in here (``docker stack deploy`` reads no ``.env``), ``$``
  escaped again so the CLI's own interpolation leaves them alone;
- every image pinned to the registry manifest the release was pushed as
  (``host/repository@sha256:...``): a service whose image did not change keeps
  the exact same spec across releases, so Swarm neither restarts nor pulls it;
- keys Swarm ignores or rejects dropped, each said (``container_name``,
  ``depends_on``, ``restart``, ``pull_policy``, ``profiles``, ``privileged``...); the
  ``depends_on`` graph becomes deploy stages instead, and ``restart`` a restart policy;
- one-shot jobs (``restart: "no"``): one replica on the data node, never restarted, run again at each deploy;
- a service that mounts anything (a named volume or a host path) is stateful: one
  replica, pinned to the data node (a node label), so its volumes stay put; every
  other service runs one task on every node (``mode: global``), unless the
  application's compose config sets ``deploy.mode``/``replicas`` itself;
- published ports in long syntax with ``mode: host`` and ``endpoint_mode: dnsrr``
  when the kernel has no IPVS (no VIP, no ingress mesh), else ``vip``/``ingress``;
- bridge networks become attachable overlay networks.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from ..interpolation import InterpolationError, interpolate

STACK_VERSION = "3.8"

# Service keys of the compose file format 3.8 that Swarm honours, carried as they are.
CARRIED = frozenset({
    "image", "command", "entrypoint", "environment", "env_file", "healthcheck", "hostname", "domainname",
    "init", "labels", "logging", "networks", "ports", "secrets", "configs", "stop_grace_period",
    "stop_signal", "sysctls", "tmpfs", "tty", "stdin_open", "ulimits", "user", "volumes", "working_dir",
    "read_only", "dns", "dns_search", "extra_hosts", "cap_add", "cap_drop", "isolation",
    "credential_spec", "deploy",
})
# Keys the conversion reads and replaces.
CONVERTED = frozenset({"restart", "depends_on", "mem_limit", "mem_reservation", "cpus", "expose"})

DROPPED_WHY = {
    "container_name": "Swarm names each task itself",
    "pull_policy": "the nodes pull by digest from the site registry",
    "privileged": "Swarm services cannot run privileged",
    "devices": "Swarm services cannot map devices",
    "build": "the images are built already",
}
RESTART = {"always": "any", "unless-stopped": "any", "on-failure": "on-failure", "no": "none"}
UPDATE_CONFIG = {"parallelism": 1, "order": "stop-first", "failure_action": "pause", "monitor": "5s"}
_PORT_PART = re.compile(r"^(\d+(-\d+)?)?$")


class StackFileError(ValueError):
    """The compose config cannot run as a Swarm stack; the message says what to change."""


@dataclass(frozen=True)
class SwarmLayout:
    """The site's choices for the stack: where data lives, how services are reached, what runs everywhere."""

    data_label: str                     # node label (key) of the node holding the data: node.labels.KEY == true
    endpoint_mode: str = "dnsrr"        # dnsrr (no IPVS) or vip
    every_node: tuple[str, ...] = ()    # stateful services the site runs on every node anyway (volumes per node)


@dataclass
class StackPlan:
    """The stack file, the order to deploy it in, and what the conversion did."""

    document: dict[str, Any]
    stages: list[list[str]]             # services in deploy order: each stage waits for the ones before
    oneshot: list[str]
    pinned: list[str]                   # services that run on the data node only
    global_services: list[str]          # services with one task on every node
    notes: list[str] = field(default_factory=list)

    def up_to(self, stage: int) -> dict[str, Any]:
        """The stack file holding only the services of stages 0..``stage``."""
        wanted = {name for names in self.stages[: stage + 1] for name in names}
        document = dict(self.document)
        document["services"] = {name: spec for name, spec in self.document["services"].items() if name in wanted}
        return document


def convert(compose: Mapping[str, Any], *, release: Path, values: Mapping[str, str], images: Mapping[str, str],
            oneshot: set[str], layout: SwarmLayout, override: Optional[Mapping[str, Any]] = None,
            deploy_id: str = "") -> StackPlan:
    """Convert the release's compose config (and the site override) into a Swarm stack plan.

    ``deploy_id`` (one per bring-up) labels the one-shot jobs' containers, so every deploy runs
    them once again, as every ``compose up`` does.
    """
    try:
        resolved = _interpolate(dict(compose), values)
        site = _interpolate(dict(override or {}), values)
    except InterpolationError as exc:
        raise StackFileError(f"the compose config cannot be filled in with the site's values: {exc}") from None
    services = resolved.get("services") or {}
    if not isinstance(services, dict) or not services:
        raise StackFileError("the compose config has no services")
    unknown = [name for name in layout.every_node if name not in services]
    if unknown:
        raise StackFileError(f"--swarm-every-node {unknown[0]}: no such service (services: {', '.join(services)})")
    notes: list[str] = []
    profiled = [name for name, spec in services.items() if (spec or {}).get("profiles")]
    if profiled:
        notes.append(f"{', '.join(profiled)} left out: in a compose profile (compose starts them only when asked)")
        services = {name: spec for name, spec in services.items() if name not in profiled}
    dropped: dict[str, list[str]] = {}
    converted: dict[str, Any] = {}
    pinned, global_services = [], []
    for name, spec in services.items():
        spec = dict(spec or {})
        for volume in ((site.get("services") or {}).get(name) or {}).get("volumes") or []:
            spec["volumes"] = _merge_volume(spec.get("volumes") or [], volume)
        service, placement = _service(name, spec, release=release, images=images, oneshot=name in oneshot,
                                      layout=layout, notes=notes)
        if name in oneshot and deploy_id:
            service["labels"] = {**_as_mapping(service.get("labels")), "airgap.deploy": deploy_id}
        for key in sorted(key for key in spec if key not in CARRIED and key not in CONVERTED and not key.startswith("x-")):
            dropped.setdefault(key, []).append(name)
        converted[name] = service
        (pinned if placement == "pinned" else global_services if placement == "global" else []).append(name)
    for key, names in dropped.items():
        notes.append(f"{key} dropped ({'all services' if len(names) == len(services) else ', '.join(names)}): "
                     f"{DROPPED_WHY.get(key, 'Swarm has no such setting')}")
    document: dict[str, Any] = {"version": STACK_VERSION, "services": converted}
    volumes = resolved.get("volumes")
    if volumes:
        document["volumes"] = volumes
    networks = _networks(resolved.get("networks") or {}, notes)
    if networks:
        document["networks"] = networks
    for section in ("secrets", "configs"):
        if resolved.get(section):
            document[section] = {key: _versioned_file(key, entry, release) for key, entry in resolved[section].items()}
    stages = deploy_stages({name: _dependencies(spec) for name, spec in services.items()})
    return StackPlan(document=_escape(document), stages=stages, oneshot=[n for n in services if n in oneshot],
                     pinned=pinned, global_services=global_services, notes=notes)


def deploy_stages(dependencies: Mapping[str, list[str]]) -> list[list[str]]:
    """Services grouped so that each one's dependencies are in earlier groups (compose's start order)."""
    level: dict[str, int] = {}

    def depth(name: str, path: tuple[str, ...]) -> int:
        if name in path:
            raise StackFileError(f"depends_on forms a cycle: {' -> '.join(path + (name,))}")
        if name not in level:
            level[name] = 1 + max((depth(dep, path + (name,)) for dep in dependencies.get(name, [])
                                   if dep in dependencies), default=-1)
        return level[name]

    for name in dependencies:
        depth(name, ())
    stages: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for name in dependencies:
        stages[level[name]].append(name)
    return stages


def parse_port(entry: Any, mode: str) -> list[dict[str, Any]]:
    """A compose port (short or long syntax) as Swarm's long syntax with ``mode``; a range becomes one per port."""
    if isinstance(entry, dict):
        if "target" not in entry or not str(entry["target"]).isdigit():
            raise StackFileError(f"the published port {entry!r} has no container port (target)")
        published = str(entry.get("published") or "")
        if published and not _PORT_PART.match(published):
            raise StackFileError(f"cannot read the published port {entry!r}")
        hosts = _port_range(published) if published else [None]
        if len(hosts) != 1:
            raise StackFileError(f"the published port {entry!r}: a range for one container port")
        port = {"target": int(entry["target"]), **({"published": hosts[0]} if published else {})}
        if entry.get("protocol"):
            port["protocol"] = entry["protocol"]
        port["mode"] = mode
        return [port]
    text, _, protocol = str(entry).strip().partition("/")
    parts = text.rsplit(":", 2)
    if not all(_PORT_PART.match(part) for part in parts[-2:]) or not parts[-1]:
        raise StackFileError(f"cannot read the published port {entry!r}")
    targets = _port_range(parts[-1])
    published = _port_range(parts[-2]) if len(parts) > 1 and parts[-2] else []
    if published and len(published) != len(targets):
        raise StackFileError(f"port {entry!r}: the host and container ranges differ in length")
    protocol = protocol or "tcp"
    ports = []
    for index, target in enumerate(targets):
        port: dict[str, Any] = {"target": target, "protocol": protocol, "mode": mode}
        if published:
            port["published"] = published[index]
        ports.append(port)
    return ports


# -- one service ---------------------------------------------------------------------------------

def _service(name: str, spec: dict[str, Any], *, release: Path, images: Mapping[str, str], oneshot: bool,
             layout: SwarmLayout, notes: list[str]) -> tuple[dict[str, Any], str]:
    image = spec.get("image")
    if not image or image not in images:
        raise StackFileError(f"service {name}: its image {image!r} is not one of the release's images in the registry")
    if "network_mode" in spec:
        raise StackFileError(f"service {name}: network_mode {spec['network_mode']!r} cannot run in a Swarm stack")
    service = {key: value for key, value in spec.items() if key in CARRIED or key.startswith("x-")}
    service["image"] = images[image]
    if "volumes" in service:
        service["volumes"] = [_absolute_volume(entry, release) for entry in service["volumes"]]
    if "env_file" in service:
        files = service["env_file"] if isinstance(service["env_file"], list) else [service["env_file"]]
        service["env_file"] = [_inside_release(str(entry.get("path", "")) if isinstance(entry, dict) else str(entry),
                                               release, f"service {name}: env_file") for entry in files]
    healthcheck = service.get("healthcheck")
    if isinstance(healthcheck, dict) and "start_interval" in healthcheck:
        service["healthcheck"] = {k: v for k, v in healthcheck.items() if k != "start_interval"}
    aliases = [str(spec[key]) for key in ("container_name",) if spec.get(key)]
    if aliases:  # compose resolves a container_name on its networks; Swarm only service names
        service["networks"] = _with_aliases(service.get("networks"), aliases)
    if isinstance(service.get("networks"), dict):
        service["networks"] = {net: ({k: v for k, v in (opts or {}).items() if k in ("aliases", "ipv4_address",
                                                                                      "ipv6_address")} or None)
                               for net, opts in service["networks"].items()}
    deploy = dict(service.get("deploy") or {})
    app_chose_mode = "mode" in deploy or "replicas" in deploy
    mounts = bool(service.get("volumes"))
    if oneshot:  # on the data node, which has every image already: a re-run never pulls
        placement = "pinned"
        deploy.update(mode="replicated", replicas=1, restart_policy={"condition": "none"})
    else:
        deploy.setdefault("restart_policy", restart_policy(spec.get("restart")))
        deploy.setdefault("update_config", dict(UPDATE_CONFIG))
        if app_chose_mode:
            placement = "pinned" if mounts else "app"
        elif name in layout.every_node:
            relative = [v for v in spec.get("volumes") or [] if _is_release_path(v)]
            if relative:
                raise StackFileError(f"--swarm-every-node {name}: it mounts files of the release folder "
                                     f"({_source(relative[0])}), which exists on this node only")
            placement = "global"
            deploy["mode"] = "global"
        elif mounts:
            placement = "pinned"
            deploy.update(mode="replicated", replicas=1)
        else:
            placement = "global"
            deploy["mode"] = "global"
    if placement == "pinned":
        constraints = list((deploy.get("placement") or {}).get("constraints") or [])
        constraints.append(f"node.labels.{layout.data_label} == true")
        deploy["placement"] = {**(deploy.get("placement") or {}), "constraints": constraints}
    _resources(spec, deploy)
    ports = spec.get("ports") or []
    if ports:
        mode = "host" if layout.endpoint_mode == "dnsrr" else "ingress"
        service["ports"] = [port for entry in ports for port in parse_port(entry, mode)]
        bound = [str(entry) for entry in ports if _host_ip(entry)]
        if bound:
            notes.append(f"{name}: {', '.join(bound)}: Swarm cannot bind a port to one address; published on "
                         "every address of the nodes that run it")
        if layout.endpoint_mode == "dnsrr":
            for port in service["ports"]:
                if "published" not in port:
                    raise StackFileError(f"service {name}: port {port['target']} has no host port; with "
                                         "endpoint_mode dnsrr (no IPVS) every published port needs one")
    deploy["endpoint_mode"] = layout.endpoint_mode
    service["deploy"] = deploy
    return service, placement


def _resources(spec: Mapping[str, Any], deploy: dict[str, Any]) -> None:
    """mem_limit/cpus/mem_reservation into deploy.resources; values as the 3.8 schema's strings; GPUs left out."""
    limits = {key: spec[source] for key, source in (("memory", "mem_limit"), ("cpus", "cpus")) if source in spec}
    reservations = {"memory": spec["mem_reservation"]} if "mem_reservation" in spec else {}
    resources = dict(deploy.get("resources") or {})
    merged = {"limits": {**limits, **(resources.get("limits") or {})},
              "reservations": {**reservations, **(resources.get("reservations") or {})}}
    for kind, values in merged.items():
        kept = {key: str(value) for key, value in values.items() if key in ("cpus", "memory")}
        if kind == "reservations" and "generic_resources" in values:
            kept["generic_resources"] = values["generic_resources"]
        if kept:
            resources[kind] = kept
        else:
            resources.pop(kind, None)
    if resources:
        deploy["resources"] = resources


def restart_policy(restart: Any) -> dict[str, Any]:
    """compose's ``restart`` as a Swarm restart policy; none given means ``any`` (Swarm's point is healing)."""
    text = str(restart or "always")
    if text.startswith("on-failure"):
        _, _, attempts = text.partition(":")
        return {"condition": "on-failure", **({"max_attempts": int(attempts)} if attempts.isdigit() else {})}
    return {"condition": RESTART.get(text, "any")}


def _dependencies(spec: Mapping[str, Any]) -> list[str]:
    depends = (spec or {}).get("depends_on") or []
    return list(depends) if isinstance(depends, (list, dict)) else []


def _networks(networks: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    result = {}
    for name, spec in networks.items():
        spec = dict(spec or {})
        ipam = spec.get("ipam")
        if isinstance(ipam, dict) and ipam.get("config"):
            subnets = [{"subnet": entry["subnet"]} for entry in ipam["config"] if isinstance(entry, dict) and "subnet" in entry]
            if any(set(entry) - {"subnet"} for entry in ipam["config"] if isinstance(entry, dict)):
                notes.append(f"network {name}: only the subnets of its IP address plan are kept (Swarm assigns the rest)")
            spec["ipam"] = {**ipam, "config": subnets}
        if not spec.get("external") and spec.get("driver", "bridge") == "bridge":
            if spec.pop("driver_opts", None):
                notes.append(f"network {name}: bridge driver options dropped (it is an overlay network here)")
            spec["driver"] = "overlay"
            spec["attachable"] = True  # containers started beside the stack (jupyterhub's) can join it
        result[name] = spec
    return result


# -- volumes and paths ---------------------------------------------------------------------------

def _source(entry: Any) -> str:
    if isinstance(entry, dict):
        return str(entry.get("source", ""))
    parts = str(entry).split(":")
    return parts[0] if len(parts) > 1 else ""


def _target(entry: Any) -> str:
    if isinstance(entry, dict):
        return str(entry.get("target", ""))
    parts = str(entry).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _is_release_path(entry: Any) -> bool:
    return _source(entry).startswith((".", "~")) if _source(entry) else False


def _absolute_volume(entry: Any, release: Path) -> Any:
    """A relative bind source made absolute against the release folder (as compose resolves it)."""
    source = _source(entry)
    if not source.startswith("."):
        return entry
    absolute = str((release / source).resolve(strict=False)) if source != "." else str(release)
    if isinstance(entry, dict):
        return {**entry, "source": absolute}
    return ":".join([absolute, *str(entry).split(":")[1:]])


def _merge_volume(volumes: list[Any], replacement: Any) -> list[Any]:
    """The site override's volume replaces the entry with the same target (compose's merge rule)."""
    target = _target(replacement)
    return [entry for entry in volumes if _target(entry) != target] + [replacement]


def _inside_release(path: str, release: Path, what: str) -> str:
    """A file the stack file names, absolute, and refused when it would lie outside the release folder."""
    absolute = (release / path) if not path.startswith("/") else Path(path)
    normal = Path(*[part for part in absolute.parts if part not in ("", ".")])
    if ".." in normal.parts or Path(release) not in normal.parents:
        raise StackFileError(f"{what} {path!r} is outside the release folder")
    return str(normal)


def _versioned_file(key: str, entry: Any, release: Path) -> Any:
    """A file secret/config named after a hash of its content: Swarm never changes one in place."""
    if not (isinstance(entry, dict) and isinstance(entry.get("file"), str)):
        return entry
    path = _inside_release(entry["file"], release, f"{key}: file")
    try:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    except OSError:
        return {**entry, "file": path}
    return {**entry, "file": path, "name": f"{entry.get('name') or key}-{digest}"}


def _host_ip(entry: Any) -> bool:
    if isinstance(entry, dict):
        return bool(entry.get("host_ip"))
    return len(str(entry).split("/")[0].rsplit(":", 2)) == 3


def _as_mapping(labels: Any) -> dict[str, str]:
    if isinstance(labels, dict):
        return {str(k): str(v) for k, v in labels.items()}
    return dict(str(item).split("=", 1) if "=" in str(item) else (str(item), "") for item in labels or [])


def _with_aliases(networks: Any, aliases: list[str]) -> dict[str, Any]:
    """The service's networks (list or mapping form; none: the default network), each with ``aliases`` added."""
    if not networks:
        networks = ["default"]
    mapping = {name: None for name in networks} if isinstance(networks, list) else dict(networks)
    result = {}
    for name, options in mapping.items():
        options = dict(options or {})
        options["aliases"] = list(dict.fromkeys([*(options.get("aliases") or []), *aliases]))
        result[name] = options
    return result


def _port_range(text: str) -> list[int]:
    if "-" in text:
        low, high = (int(part) for part in text.split("-", 1))
        if high < low:
            raise StackFileError(f"port range {text} runs backwards")
        return list(range(low, high + 1))
    return [int(text)]


# -- values ----------------------------------------------------------------------------------------

def _interpolate(node: Any, values: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, values)
    if isinstance(node, dict):
        return {key: _interpolate(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolate(value, values) for value in node]
    return node


def _escape(node: Any) -> Any:
    """Every ``$`` doubled: the values are final, the CLI must not interpolate them again."""
    if isinstance(node, str):
        return node.replace("$", "$$")
    if isinstance(node, dict):
        return {key: _escape(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_escape(value) for value in node]
    return node
