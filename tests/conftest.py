"""Shared fixtures: the real-engine harness (registry mirror, build engine, air-gapped target)."""

from __future__ import annotations

import os
from typing import Iterator, NoReturn

import docker
import pytest

from tests.harness import Harness, SiteRegistry, SwarmRig


def _harness_unavailable(reason: str) -> NoReturn:
    """Fail under CI (the engines must work there), skip elsewhere."""
    message = f"test harness unavailable: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def harness() -> Iterator[Harness]:
    """The harness, started (or reused) once per session. Stays up afterwards."""
    if os.geteuid() != 0:
        _harness_unavailable("needs root (dockerd, network namespaces)")
    try:
        started: Harness | None = Harness().up()
    except Exception as exc:  # any failure to bring engines up is reported the same way
        started, error = None, f"{type(exc).__name__}: {exc}"
    if started is None:
        _harness_unavailable(error)
    yield started


@pytest.fixture(scope="session")
def site_registry(harness: Harness) -> SiteRegistry:
    """The site's Harbor stand-in (aiharbor.msxf.local:443 in the netns), started once per session.

    Reached by the target engine with the robot account's credentials; it
    keeps what tests push (``wipe()`` to begin empty) and stays up afterwards.
    """
    error: str | None = None
    try:
        harness.site_registry.ensure()
    except Exception as exc:  # reported like the harness itself: fail under CI, else skip
        error = f"site registry: {type(exc).__name__}: {exc}"
    if error is not None:
        _harness_unavailable(error)
    return harness.site_registry


@pytest.fixture(scope="session")
def swarm_rig() -> SwarmRig:
    """The two-node Swarm (netns node1 / node2, site registry on node1), started once per session.

    Independent of the harness's engines (only its root); stays up afterwards
    (``python -m tests.harness down`` stops it).
    """
    if os.geteuid() != 0:
        _harness_unavailable("needs root (dockerd, network namespaces)")
    rig = Harness().swarm
    error: str | None = None
    try:
        rig.ensure()
    except Exception as exc:  # reported like the harness itself: fail under CI, else skip
        error = f"swarm rig: {type(exc).__name__}: {exc}"
    if error is not None:
        _harness_unavailable(error)
    return rig


def _client(docker_host: str) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=docker_host, timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="session")
def build_engine(harness: Harness) -> Iterator[docker.DockerClient]:
    """Docker SDK client of the BUILD engine (connected machine; docker.io via the mirror)."""
    yield from _client(harness.build_docker_host)


@pytest.fixture(scope="session")
def target_engine(harness: Harness) -> Iterator[docker.DockerClient]:
    """Docker SDK client of the TARGET engine (air-gapped host, no network)."""
    yield from _client(harness.target_docker_host)


@pytest.fixture(scope="session", autouse=True)
def _private_bundle_cache(tmp_path_factory) -> Iterator[None]:
    """Every build in the test session shares one member cache of its own, never the user's."""
    previous = os.environ.get("AIRGAP_BUNDLE_CACHE")
    os.environ["AIRGAP_BUNDLE_CACHE"] = str(tmp_path_factory.mktemp("bundle-cache"))
    yield
    if previous is None:
        os.environ.pop("AIRGAP_BUNDLE_CACHE", None)
    else:
        os.environ["AIRGAP_BUNDLE_CACHE"] = previous
