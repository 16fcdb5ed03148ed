"""A two-node Docker Swarm for tests: two engines in two network namespaces joined by a veth pair.

``SwarmRig(root).ensure()`` makes the network namespaces ``node1`` and
``node2`` (loopback and one veth pair, 10.77.0.1/24 and 10.77.0.2/24; no
route anywhere else), starts one dockerd in each (its own data-root,
exec-root, socket and pidfile under ROOT/swarm; entered with nsenter, and
with a UTS namespace of its own so the Swarm names the nodes ``node1`` and
``node2``), forms a Swarm (node1 the manager, node2 a worker, both labelled
``airgap.node=NAME``) and starts the site registry on node1
(``aiharbor.msxf.local``, the same CA and robot account as the harness's
site registry, listening on 0.0.0.0:443 inside node1). A small TCP
forwarder on 127.0.0.1:443 inside node2 carries node2's connections to
10.77.0.1:443, so the hosts line ``127.0.0.1 aiharbor.msxf.local`` reaches
the registry from both nodes.

Swarm here: the ingress routing mesh and the VIP endpoint mode need IPVS,
which this kernel lacks; services publish ports with ``mode: host`` and use
``endpoint_mode: dnsrr``.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import docker
from docker.errors import APIError

from .engine import Engine, delete_netns, ensure_netns, netns_exists
from .net import NETNS_DIR, in_netns, tcp_status
from .procs import (HarnessError, file_lock, pid_alive, read_pid, run, spawn, stop_pid,
                    wait_until)
from .siteregistry import HOST, PROBE_AGENT, SiteRegistry

NODES = ("node1", "node2")
MANAGER = "node1"
ADDRS = {"node1": "10.77.0.1", "node2": "10.77.0.2"}
PREFIX_LEN = 24
LINK = "swarm0"  # the veth end's name in each namespace
SWARM_PORT = 2377
# Overlay networks get /24s from here (Swarm's default, 10.0.0.0/8, holds the veth's subnet).
ADDR_POOL = "10.78.0.0/16"
LABEL = "airgap.node"
# dockerd of a node: no iptables (the namespaces are ours; nothing is NATed anywhere) and no
# default bridge (Swarm makes docker_gwbridge itself; host-mode ports go through docker-proxy).
DOCKERD_FLAGS = ("--iptables=false", "--bridge=none")
REGISTRY_LISTEN = "0.0.0.0:443"  # inside node1
REGISTRY_PORT = 443
FORWARDER = Path(__file__).with_name("tcpforward.py")


class NodeEngine(Engine):
    """A node's dockerd: in the node's network namespace, with a UTS namespace whose hostname is
    the node's name (the Swarm's node list shows it; ``{{.Node.Hostname}}`` in a service gives it).
    """

    def __init__(self, state: Path, name: str) -> None:
        super().__init__(state, name, flags=DOCKERD_FLAGS)

    def argv(self) -> list[str]:
        return ["nsenter", f"--net={NETNS_DIR / self.name}", "unshare", "--uts", "--",
                "sh", "-c", 'hostname "$0" && exec "$@"', self.name, *super().argv()]


class SwarmRig:
    """The two-node Swarm and its site registry; state under ROOT/swarm.

    Not started by ``Harness.up()``; ``Harness.down()`` stops it.
    ``log`` receives short progress lines (default: discarded).
    """

    def __init__(self, root: Path, log: Optional[Callable[[str], None]] = None) -> None:
        self.root = Path(root)
        self.state = self.root / "swarm"
        self._log = log or (lambda line: None)
        self.nodes = {name: NodeEngine(self.state, name) for name in NODES}
        # The site's registry on node1: its own storage, the harness's site-registry keys (one CA,
        # one robot account, one host configuration for every stand-in of the site's Harbor).
        self.site_registry = SiteRegistry(self.root, netns=MANAGER, addr=REGISTRY_LISTEN,
                                          state=self.state / "site-registry",
                                          keys=self.root / "site-registry")

    # -- addresses and clients ---------------------------------------------

    def docker_host(self, node: str) -> str:
        """DOCKER_HOST of ``node``'s engine."""
        return self.nodes[node].docker_host

    def client(self, node: str, timeout: int = 120) -> docker.DockerClient:
        """Docker SDK client of ``node``'s engine."""
        return self.nodes[node].client(timeout=timeout)

    def run_in(self, node: str, argv: Sequence[str], env: Optional[Mapping[str, str]] = None,
               input: Optional[str] = None, timeout: float = 120,
               check: bool = True) -> subprocess.CompletedProcess:
        """Run ``argv`` inside ``node``'s network namespace (nsenter), output captured as text.

        ``env`` is added to ours. With ``check`` a non-zero exit raises HarnessError.
        """
        cmd = ["nsenter", f"--net={NETNS_DIR / node}", *argv]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
        if check and proc.returncode != 0:
            raise HarnessError(f"in {node}: {' '.join(argv)} failed ({proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()}")
        return proc

    def registry_answers(self, node: str) -> bool:
        """True when https://aiharbor.msxf.local/v2/ answers 401 (TLS checked) inside ``node``."""
        ca = self.site_registry.ca_file
        if not ca.exists() or not netns_exists(node):
            return False
        tls = ssl.create_default_context(cafile=str(ca))
        probe = lambda: tcp_status(f"{HOST}:{REGISTRY_PORT}", "/v2/",  # noqa: E731
                                   headers={"User-Agent": PROBE_AGENT}, tls=tls)
        return in_netns(node, probe) == 401

    # -- lifecycle ---------------------------------------------------------

    def ensure(self) -> str:
        """Make or reuse everything; return "running" when all was up already, else "started"."""
        t0 = time.monotonic()
        with self._locked():
            changed = self._ensure_network()
            started = [node for node in self.nodes.values() if node.start() == "started"]
            for node in self.nodes.values():
                node.wait_ready()
            for node in started:
                self._log(f"{node.name} engine: started ({node.docker_host})")
            changed = self._ensure_swarm() or changed or bool(started)
            registry = self.site_registry.ensure()
            self._log(f"site registry on {MANAGER}: {registry}")
            changed = self._ensure_forwarders() or changed or registry == "started"
        self._log(f"swarm rig {'up' if changed else 'running'} in {time.monotonic() - t0:.1f}s")
        return "started" if changed else "running"

    def stop(self) -> bool:
        """Leave the Swarm, stop the engines, the registry and forwarders, delete the namespaces.

        The host configuration of the site registry (hosts line, CA) is removed
        too unless the harness's own site registry still runs. Keeps the data.
        Returns True when anything was running.
        """
        if not self.state.exists():
            return False  # never started
        with self._locked():
            stopped = False
            for name in NODES[1:]:
                stopped = stop_pid(read_pid(self._forwarder_pidfile(name)), FORWARDER.name,
                                   timeout=5) or stopped
            stopped = self.site_registry.stop() or stopped
            for name in reversed(NODES):  # workers first
                node = self.nodes[name]
                if node.healthy():
                    self._leave(node)
                stopped = node.stop() or stopped
            for name in NODES:
                if netns_exists(name):
                    delete_netns(name)
                    stopped = True
            if SiteRegistry(self.root).pid() is None:
                self.site_registry.remove_host_config()
        return stopped

    # -- the network -------------------------------------------------------

    def _ensure_network(self) -> bool:
        """Namespaces, the veth pair, addresses; True when anything was made."""
        changed = False
        for name, node in self.nodes.items():
            if not netns_exists(name):
                node.stop()  # a dockerd left in a namespace that is gone
                changed = True
            ensure_netns(name)
        if not all(_has_link(name) for name in NODES):
            for name in NODES:
                run(["ip", "-n", name, "link", "del", LINK], check=False)
            run(["ip", "-n", NODES[0], "link", "add", LINK, "type", "veth",
                 "peer", "name", LINK, "netns", NODES[1]])
            changed = True
        for name in NODES:
            run(["ip", "-n", name, "addr", "replace", f"{ADDRS[name]}/{PREFIX_LEN}", "dev", LINK])
            run(["ip", "-n", name, "link", "set", LINK, "up"])
        if changed:
            self._log(f"netns {', '.join(NODES)}: veth {LINK} "
                      + ", ".join(f"{ADDRS[n]}/{PREFIX_LEN}" for n in NODES))
        return changed

    # -- the Swarm ---------------------------------------------------------

    def _ensure_swarm(self) -> bool:
        """Form the Swarm unless formed (both nodes ready and labelled); True when formed now."""
        clients = {name: self.client(name) for name in NODES}
        try:
            if self._formed(clients):
                return False
            t0 = time.monotonic()
            self._form(clients)
            self._log(f"swarm: formed in {time.monotonic() - t0:.1f}s "
                      f"(manager {MANAGER} {ADDRS[MANAGER]}:{SWARM_PORT})")
            return True
        finally:
            for client in clients.values():
                client.close()

    @staticmethod
    def _formed(clients: Mapping[str, docker.DockerClient]) -> bool:
        info = {name: client.info().get("Swarm", {}) for name, client in clients.items()}
        if any(i.get("LocalNodeState") != "active" for i in info.values()):
            return False
        if not info[MANAGER].get("ControlAvailable"):
            return False
        nodes = {node.id: node.attrs for node in clients[MANAGER].nodes.list()}
        if len(nodes) != len(NODES):
            return False
        for name in NODES:
            attrs = nodes.get(info[name].get("NodeID"))
            if (attrs is None or attrs["Status"]["State"] != "ready"
                    or attrs["Spec"].get("Labels", {}).get(LABEL) != name):
                return False
        return True

    def _form(self, clients: Mapping[str, docker.DockerClient]) -> None:
        """A new Swarm: every node leaves whatever it was in; node1 inits, the others join."""
        for name in reversed(NODES):
            self._leave(self.nodes[name], clients[name])
        manager = clients[MANAGER]
        manager.swarm.init(advertise_addr=ADDRS[MANAGER],
                           listen_addr=f"{ADDRS[MANAGER]}:{SWARM_PORT}",
                           default_addr_pool=[ADDR_POOL], subnet_size=24)
        manager.swarm.reload()
        token = manager.swarm.attrs["JoinTokens"]["Worker"]
        for name in NODES:
            if name != MANAGER:
                clients[name].swarm.join(remote_addrs=[f"{ADDRS[MANAGER]}:{SWARM_PORT}"],
                                         join_token=token, advertise_addr=ADDRS[name],
                                         listen_addr=f"{ADDRS[name]}:{SWARM_PORT}")
        ids = {name: clients[name].info()["Swarm"]["NodeID"] for name in NODES}

        def all_ready() -> bool:
            states = {n.id: n.attrs["Status"]["State"] for n in manager.nodes.list()}
            return all(states.get(node_id) == "ready" for node_id in ids.values())

        wait_until(all_ready, 60, f"swarm nodes {', '.join(NODES)} to be ready",
                   log=self.nodes[MANAGER].log)
        for name, node_id in ids.items():
            node = manager.nodes.get(node_id)
            spec = node.attrs["Spec"]
            spec.setdefault("Labels", {})[LABEL] = name
            node.update(spec)

    @staticmethod
    def _leave(node: Engine, client: Optional[docker.DockerClient] = None) -> None:
        """Make ``node`` leave its Swarm (forced) if it is in one."""
        own = client is None
        client = client or node.client(timeout=60)
        try:
            if client.info().get("Swarm", {}).get("LocalNodeState", "inactive") != "inactive":
                with contextlib.suppress(APIError):
                    client.swarm.leave(force=True)
        finally:
            if own:
                client.close()

    # -- the forwarders ----------------------------------------------------

    def _forwarder_pidfile(self, node: str) -> Path:
        return self.state / "run" / f"forward-{node}.pid"

    def _ensure_forwarders(self) -> bool:
        """127.0.0.1:443 -> node1's registry inside every other node; True when one was started."""
        changed = False
        for name in NODES:
            if name == MANAGER:
                continue
            pidfile = self._forwarder_pidfile(name)
            if pid_alive(read_pid(pidfile), FORWARDER.name) and self.registry_answers(name):
                continue
            stop_pid(read_pid(pidfile), FORWARDER.name, timeout=5)
            log = pidfile.with_suffix(".log")
            listen = f"127.0.0.1:{REGISTRY_PORT}"
            target = f"{ADDRS[MANAGER]}:{REGISTRY_PORT}"
            proc = spawn(["nsenter", f"--net={NETNS_DIR / name}", sys.executable, "-I",
                          str(FORWARDER), listen, target], log, pidfile)
            wait_until(lambda: self.registry_answers(name), 30,  # noqa: B023 (called at once)
                       f"site registry through {listen} -> {target} in netns {name}",
                       alive=lambda: proc.poll() is None, log=log)  # noqa: B023
            self._log(f"{name}: {HOST} reaches {MANAGER} ({listen} -> {target})")
            changed = True
        return changed

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        """Serialise ensure / stop of concurrent users (a file lock under ROOT/swarm)."""
        return file_lock(self.state / "lock")


def _has_link(netns: str) -> bool:
    return run(["ip", "-n", netns, "link", "show", LINK], check=False).returncode == 0
