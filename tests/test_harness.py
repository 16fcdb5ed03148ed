"""Real-engine tests of the test harness itself: mirror, air gap, stand-ins, source tree."""

from __future__ import annotations

import time
from typing import Callable, Iterator

import docker
import pytest
from docker.errors import APIError, ImageNotFound
from docker.models.containers import Container

from tests.harness import (BASE_REF, FOREIGN_REF, SOURCE_SERVICES, Harness, SourceService,
                           build_source_service, push_foreign_platform_image)

RunContainer = Callable[..., Container]


@pytest.fixture
def run_container(build_engine: docker.DockerClient) -> Iterator[RunContainer]:
    """Start detached containers on the build engine; remove them afterwards."""
    started: list[Container] = []

    def run(image: str, **kwargs) -> Container:
        container = build_engine.containers.run(image, detach=True, **kwargs)
        started.append(container)
        return container

    yield run
    for container in started:
        container.remove(force=True)


def http_get(container: Container, port: int, path: str = "/health", timeout: float = 10) -> str:
    """Body of http://127.0.0.1:PORT/PATH fetched inside ``container`` (retried until it answers)."""
    deadline = time.monotonic() + timeout
    while True:
        code, out = container.exec_run(["wget", "-q", "-O", "-", f"http://127.0.0.1:{port}{path}"])
        if code == 0:
            return out.decode()
        container.reload()
        if container.status != "running" or time.monotonic() > deadline:
            pytest.fail(f"{container.image.tags} :{port}{path} did not answer "
                        f"(status {container.status}): {container.logs().decode()[-500:]}")
        time.sleep(0.2)


def fresh_pull(client: docker.DockerClient, ref: str) -> docker.models.images.Image:
    """Pull docker.io ``ref`` after removing any local copy, so it really comes from the mirror."""
    try:
        client.images.remove(ref, force=True)
    except ImageNotFound:
        pass
    repo, tag = ref.rsplit(":", 1)
    return client.images.pull(repo, tag=tag)


def test_status_reports_every_component_up(harness: Harness) -> None:
    rows = harness.status()
    assert [row.name for row in rows] == [
        "registry", "netns", "build engine", "target engine", "stand-ins"]
    assert all(row.ok for row in rows), "\n".join(map(str, rows))


def test_build_engine_pulls_standins_through_the_mirror(
        harness: Harness, build_engine: docker.DockerClient) -> None:
    base = build_engine.images.get(harness.registry_server.mirror_ref(BASE_REF))
    base_layers = base.attrs["RootFS"]["Layers"]
    ids = set()
    for standin in harness.standins():
        image = fresh_pull(build_engine, standin.ref)
        assert image.labels["airgap.harness.standin"] == standin.ref
        layers = image.attrs["RootFS"]["Layers"]
        assert layers[:len(base_layers)] == base_layers, f"{standin.ref} lacks the busybox base"
        assert len(layers) > len(base_layers)
        ids.add(image.id)
    assert len(ids) == len(harness.standins()), "every stand-in needs its own image ID"


def test_target_engine_cannot_pull(target_engine: docker.DockerClient) -> None:
    t0 = time.monotonic()
    with pytest.raises(APIError):
        target_engine.images.pull("postgres", tag="15-alpine")
    assert time.monotonic() - t0 < 10, "an air-gapped pull must fail fast"


def test_server_standins_serve_their_ports_and_shims(
        harness: Harness, build_engine: docker.DockerClient, run_container: RunContainer) -> None:
    postgres = run_container("postgres:15-alpine")
    assert http_get(postgres, 5432) == "ok\n"
    assert postgres.exec_run(["pg_isready", "-U", "postgres"]).exit_code == 0
    assert postgres.exec_run(["curl", "-fsS", "http://127.0.0.1:5432/health"]).output == b"ok\n"
    assert postgres.exec_run(["curl", "-f", "http://127.0.0.1:5432/nope"]).exit_code != 0
    assert postgres.exec_run(["curl", "-fsS", "http://127.0.0.1:1/"]).exit_code != 0

    redis = run_container("redis:7-alpine", command=["redis-server", "--appendonly", "yes"])
    http_get(redis, 6379)
    assert redis.exec_run(["redis-cli", "ping"]).output == b"PONG\n"
    assert redis.exec_run(["redis-cli", "-p", "1", "ping"]).exit_code == 1
    assert redis.exec_run(["pg_isready"]).exit_code != 0

    minio = run_container("minio/minio:latest", command=["server", "/data", "--console-address", ":9001"])
    assert http_get(minio, 9000, "/minio/health/live") == "ok\n"
    assert http_get(minio, 9001) == "ok\n"

    moved = run_container("nginx:1.27-alpine", environment={"STANDIN_PORTS": "8081 8082"})
    assert http_get(moved, 8081) == http_get(moved, 8082) == "ok\n"
    assert "nginx:1.27-alpine" in http_get(moved, 8081, "/index.html")


def test_build_base_standins_default_to_a_shell(build_engine: docker.DockerClient) -> None:
    out = build_engine.containers.run("golang:1.25-alpine", ["sh", "-c", "cat /etc/standin-ref"],
                                      remove=True)
    assert out == b"golang:1.25-alpine\n"


@pytest.mark.parametrize("service", SOURCE_SERVICES, ids=lambda s: s.name)
def test_source_service_builds_and_runs(
        service: SourceService, build_engine: docker.DockerClient, run_container: RunContainer) -> None:
    image = build_source_service(build_engine, service, f"harness-test/{service.name}:latest")
    container = run_container(image.id)
    for port in service.ports:
        assert http_get(container, port, service.health) == "ok\n"
    if service.output:
        deadline = time.monotonic() + 10
        while service.output not in container.logs().decode() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert service.output in container.logs().decode()
    if service.name == "backend-init":
        assert container.wait(timeout=10)["StatusCode"] == 0


def test_source_images_are_distinct(build_engine: docker.DockerClient) -> None:
    ids = {build_engine.images.get(f"harness-test/{s.name}:latest").id for s in SOURCE_SERVICES}
    assert len(ids) == len(SOURCE_SERVICES)


def test_foreign_platform_images_pull_with_their_architecture(
        harness: Harness, build_engine: docker.DockerClient) -> None:
    assert fresh_pull(build_engine, FOREIGN_REF).attrs["Architecture"] == "arm64"
    mirror = push_foreign_platform_image("foreign/arm-only:latest", "arm64", harness=harness)
    assert mirror == f"{harness.registry}/foreign/arm-only:latest"
    image = fresh_pull(build_engine, "foreign/arm-only:latest")
    assert (image.attrs["Os"], image.attrs["Architecture"]) == ("linux", "arm64")


def test_reset_target_empties_the_target(
        harness: Harness, build_engine: docker.DockerClient, target_engine: docker.DockerClient) -> None:
    base = harness.registry_server.mirror_ref(BASE_REF)
    target_engine.images.load(b"".join(build_engine.images.get(base).save(named=True)))
    target_engine.volumes.create("harness-test-volume")
    network = target_engine.networks.create("harness-test-net", driver="bridge")
    container = target_engine.containers.run(base, ["sleep", "60"], detach=True,
                                             network=network.name)
    assert container.status in ("created", "running")

    harness.reset_target()

    assert target_engine.containers.list(all=True) == []
    assert target_engine.images.list(all=True) == []
    assert target_engine.volumes.list() == []
    assert {n.name for n in target_engine.networks.list()} <= {"host", "none", "bridge"}
