"""The Harness: registry mirror + build engine + air-gapped target engine + stand-in images."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import docker
from docker.errors import APIError, NotFound

from .engine import Engine, delete_netns, ensure_netns, netns_exists
from .foreign import foreign_archive
from .images import Publisher, Standin, load_standins
from .procs import HarnessError, file_lock, run
from .registry import ADDR, Registry
from .siteregistry import SiteRegistry
from .swarm import SwarmRig

DEFAULT_ROOT = Path("/var/lib/airgap-harness")
NETNS = "airgap"
# Pulled through the mirror once on a cold `up` to prove the mirror works.
MIRROR_CHECK_REF = "postgres:15-alpine"
# Published on `up`: an image whose config says linux/arm64.
FOREIGN_REF = "foreign-arm64:latest"
_PREDEFINED_NETWORKS = {"bridge", "host", "none"}
# The build engine falls back to the real docker.io when the mirror lacks an
# image: send that through a dead loopback proxy so it fails at once and
# nothing leaves the machine (the mirror itself is reached directly).
_NO_UPSTREAM = {
    "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost",
}


@dataclass(frozen=True)
class ComponentStatus:
    """One line of ``status``."""

    name: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.name:<14} {'up' if self.ok else 'DOWN':<5} {self.detail}"


class Harness:
    """Real engines for tests, all state under ``root``.

    ``root`` defaults to $AIRGAP_HARNESS_ROOT, else /var/lib/airgap-harness.
    ``log`` receives short progress lines (default: discarded).
    """

    def __init__(self, root: Optional[os.PathLike] = None,
                 log: Optional[Callable[[str], None]] = None) -> None:
        self.root = Path(root or os.environ.get("AIRGAP_HARNESS_ROOT") or DEFAULT_ROOT)
        self.netns = NETNS
        self._log = log or (lambda line: None)
        self.registry_server = Registry(self.root)
        self.build_engine = Engine(self.root, "build",
                                   flags=["--registry-mirror", f"http://{ADDR}"], env=_NO_UPSTREAM)
        self.target_engine = Engine(self.root, "target",
                                    flags=["--iptables=false", "--bridge=none"], netns=NETNS)
        # The site's Harbor stand-in: started on demand (fixture ``site_registry``), not by up().
        self.site_registry = SiteRegistry(self.root, netns=NETNS)
        # The two-node Swarm (netns node1 / node2) with its own site registry: on demand
        # (fixture ``swarm_rig``, or ``python -m tests.harness swarm``), not by up().
        self.swarm = SwarmRig(self.root, log=self._log)
        self.state_file = self.root / "state.json"

    # -- addresses ---------------------------------------------------------

    @property
    def registry(self) -> str:
        """host:port of the loopback registry (docker.io mirror of the build engine)."""
        return self.registry_server.addr

    @property
    def build_docker_host(self) -> str:
        """DOCKER_HOST of the build engine (the connected machine)."""
        return self.build_engine.docker_host

    @property
    def target_docker_host(self) -> str:
        """DOCKER_HOST of the target engine (the air-gapped host)."""
        return self.target_engine.docker_host

    def env(self) -> dict[str, str]:
        """Environment variables naming the harness' endpoints."""
        return {
            "BUILD_DOCKER_HOST": self.build_docker_host,
            "TARGET_DOCKER_HOST": self.target_docker_host,
            "HARNESS_REGISTRY": self.registry,
            "HARNESS_NETNS": self.netns,
        }

    def build_client(self) -> docker.DockerClient:
        """Docker SDK client of the build engine."""
        return self.build_engine.client()

    def target_client(self) -> docker.DockerClient:
        """Docker SDK client of the target engine."""
        return self.target_engine.client()

    def standins(self) -> list[Standin]:
        """The upstream references served by stand-ins through the mirror."""
        return load_standins()

    # -- lifecycle ---------------------------------------------------------

    def up(self) -> "Harness":
        """Start (or reuse) every component and publish the stand-in images. Idempotent."""
        t0 = time.monotonic()
        with self._locked():
            self._step("registry", self.registry_server.ensure)
            self._step(f"netns {self.netns}", lambda: ensure_netns(self.netns))
            engines = (self.build_engine, self.target_engine)
            started = [e for e in engines if self._step(f"{e.name} engine", e.start) == "started"]
            for engine in engines:
                engine.wait_ready()
            for engine in started:
                self._log(f"{engine.name} engine: ready ({engine.docker_host})")
            self._publish_images()
        self._log(f"harness up in {time.monotonic() - t0:.1f}s")
        return self

    def down(self, purge: bool = False) -> None:
        """Stop the Swarm rig, the engines and registries; undo the site registry's host config.

        With ``purge`` also delete all state.
        """
        with self._locked():
            for name, stop in (("swarm rig", self.swarm.stop),
                               ("site registry", self.site_registry.stop),
                               ("target engine", self.target_engine.stop),
                               ("build engine", self.build_engine.stop),
                               ("registry", self.registry_server.stop)):
                self._log(f"{name}: {'stopped' if stop() else 'not running'}")
            self.site_registry.remove_host_config()
            if purge:
                self._purge()

    def status(self) -> list[ComponentStatus]:
        """One status per component (registry, netns, engines, stand-ins)."""
        reg = self.registry_server
        rows = [ComponentStatus("registry", reg.healthy(), f"{reg.addr} pid={reg.pid()}"),
                ComponentStatus("netns", netns_exists(self.netns), self.netns)]
        for engine in (self.build_engine, self.target_engine):
            rows.append(ComponentStatus(f"{engine.name} engine", engine.healthy(),
                                        f"{engine.docker_host} pid={engine.pid()}"))
        refs = [s.ref for s in self.standins()] + [FOREIGN_REF]
        present = sum(reg.has(ref) for ref in refs) if rows[0].ok else 0
        rows.append(ComponentStatus("stand-ins", present == len(refs),
                                    f"{present}/{len(refs)} in the registry"))
        return rows

    def reset_target(self) -> None:
        """Remove every container, image, network and volume from the target engine."""
        client = self.target_client()
        try:
            if client.info().get("Swarm", {}).get("LocalNodeState") == "active":
                client.swarm.leave(force=True)
            for container in client.containers.list(all=True):
                container.remove(force=True, v=True)
            for network in client.networks.list():
                if network.name not in _PREDEFINED_NETWORKS:
                    network.remove()
            for volume in client.volumes.list():
                volume.remove(force=True)
            self._remove_all_images(client)
        finally:
            client.close()

    @staticmethod
    def _remove_all_images(client: docker.DockerClient) -> None:
        for _ in range(5):
            images = client.images.list(all=True)
            if not images:
                return
            for image in images:
                with contextlib.suppress(NotFound, APIError):
                    client.images.remove(image.id, force=True)
        raise HarnessError(f"target engine still has images: {client.images.list(all=True)}")

    # -- images ------------------------------------------------------------

    def push_foreign_platform_image(self, ref: str = "foreign/arm-only:latest",
                                    architecture: str = "arm64") -> str:
        """Publish a tiny image whose config claims linux/``architecture`` under docker.io ``ref``.

        Afterwards ``docker pull REF`` on the build engine goes through the
        mirror. Returns the mirror reference (registry/name:tag).
        """
        with self._locked(), self._publisher() as (publisher, _):
            self._publish_foreign(publisher, ref, architecture)
        return self.registry_server.mirror_ref(ref)

    def _publish_foreign(self, publisher: Publisher, ref: str, architecture: str) -> bool:
        """Publish a foreign-platform image under ``ref``; True when pushed now."""
        archive = foreign_archive(self.registry_server.mirror_ref(ref), architecture)
        inputs = hashlib.sha256(archive).hexdigest()
        return publisher.publish(ref, inputs, lambda tag: publisher.client.images.load(archive)[0].id)[1]

    def _publish_images(self) -> None:
        """Publish the base, every stand-in and the foreign image; verify the mirror once."""
        with self._publisher() as (publisher, state):
            base_id = publisher.ensure_base()
            built = [s.ref for s in self.standins() if publisher.ensure_standin(s, base_id)[1]]
            if self._publish_foreign(publisher, FOREIGN_REF, "arm64"):
                built.append(FOREIGN_REF)
            self._log(f"stand-ins: {len(built)} built and pushed"
                      + (f" ({', '.join(built)})" if built else ", all already in the registry"))
            if built or not state.get("mirror_verified"):
                publisher.verify_mirror_pull(MIRROR_CHECK_REF)
                state["mirror_verified"] = True
                self._log(f"mirror: pull of {MIRROR_CHECK_REF} through {self.registry} works")

    # -- helpers -----------------------------------------------------------

    def _step(self, name: str, action: Callable[[], str]) -> str:
        result = action()
        self._log(f"{name}: {result}")
        return result

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        """Serialise up/down of concurrent harness users (a file lock under ROOT/run)."""
        return file_lock(self.root / "run" / "harness.lock")

    @contextlib.contextmanager
    def _publisher(self) -> Iterator[tuple[Publisher, dict]]:
        """A Publisher on the build engine over the saved state, and that state."""
        client = self.build_client()
        try:
            with self._state() as state:
                yield Publisher(client, self.registry_server, state.setdefault("images", {})), state
        finally:
            client.close()

    @contextlib.contextmanager
    def _state(self) -> Iterator[dict]:
        """The published-images state (ROOT/state.json), saved on exit even after an error."""
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            state = {}
        try:
            yield state
        finally:
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
            tmp.replace(self.state_file)

    def _purge(self) -> None:
        if len(self.root.resolve().parts) < 3:
            raise HarnessError(f"refusing to purge {self.root}: too close to /")
        for mount in _mounts_under(self.root):
            run(["umount", "-l", mount], check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        delete_netns(self.netns)
        self._log(f"purged {self.root} and netns {self.netns}")


def _mounts_under(root: Path) -> list[str]:
    """Mount points below ``root``, deepest first."""
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mounts") as fh:
        points = [line.split()[1] for line in fh]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def push_foreign_platform_image(ref: str = "foreign/arm-only:latest", architecture: str = "arm64",
                                harness: Optional[Harness] = None) -> str:
    """Module-level form of :meth:`Harness.push_foreign_platform_image` (harness must be up)."""
    return (harness or Harness()).push_foreign_platform_image(ref, architecture)


def stderr_log(line: str) -> None:
    """A ``log`` for Harness that prints progress lines to stderr."""
    print(f"harness: {line}", file=sys.stderr, flush=True)
