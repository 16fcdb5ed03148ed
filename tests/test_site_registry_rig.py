"""Real checks of the site registry rig (aiharbor.msxf.local, the site's Harbor stand-in).

TLS verified against the rig's own CA, basic auth for the robot account,
the access log, the host configuration, and the air-gapped target engine
logging in, pushing and pulling. Requests to the registry are made from
inside the ``airgap`` namespace (``in_netns``): it listens nowhere else.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import tarfile
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

import docker
import pytest
import requests
from docker.errors import APIError, ImageNotFound

from tests.harness import Harness, SiteRegistry
from tests.harness.net import NETNS_DIR, in_netns, tcp_status
from tests.harness.siteregistry import HOSTS_LINE, Request

REPO = "aiharbor.msxf.local/aihpc/rigcheck"
TAG = "1"


def get(site: SiteRegistry, path: str, auth: Optional[tuple[str, str]] = None,
        verify: object = None) -> requests.Response:
    """GET https://aiharbor.msxf.local``path`` from inside the namespace (CA: the rig's).

    Proxy variables of the environment are ignored: nothing leaves the namespace.
    """
    url = f"https://{site.host}{path}"
    verify = str(site.ca_file) if verify is None else verify

    def fetch() -> requests.Response:
        with requests.Session() as session:
            session.trust_env = False
            return session.get(url, auth=auth, verify=verify, timeout=10)

    return in_netns(site.netns, fetch)


def logged(site: SiteRegistry, since: int, expected: list[Request],
           timeout: float = 5) -> list[Request]:
    """The requests logged since ``since``, once all of ``expected`` are there (fails otherwise)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = site.requests(since)
        answered = {r[:3] for r in seen}  # (method, path, status): from whichever client
        if all(r[:3] in answered for r in expected) or time.monotonic() > deadline:
            missing = [r for r in expected if r[:3] not in answered]
            assert not missing, f"not in the log: {missing}; logged: {seen}"
            return seen
        time.sleep(0.1)


# -- the registry itself ----------------------------------------------------

def test_ensure_is_idempotent(site_registry: SiteRegistry) -> None:
    assert site_registry.ensure() == "running"
    assert site_registry.pid() is not None


def test_v2_wants_the_robot_credentials_over_tls(site_registry: SiteRegistry) -> None:
    anonymous = get(site_registry, "/v2/")
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Basic realm="aiharbor.msxf.local"'

    robot = (site_registry.username, site_registry.password)
    assert robot[0] == "robot$aihpc+ci"
    answer = get(site_registry, "/v2/", auth=robot)
    assert answer.status_code == 200
    assert answer.headers["Docker-Distribution-Api-Version"] == "registry/2.0"

    assert get(site_registry, "/v2/", auth=(robot[0], robot[1] + "x")).status_code == 401
    assert get(site_registry, "/v2/", auth=("robot", robot[1])).status_code == 401


def test_certificate_is_the_rigs_own(site_registry: SiteRegistry) -> None:
    # Not trusted by the public CA bundle: only the rig's CA vouches for it.
    with pytest.raises(requests.exceptions.SSLError):
        get(site_registry, "/v2/", verify=True)
    # Valid for 127.0.0.1 too (an IP SAN).
    tls = ssl.create_default_context(cafile=str(site_registry.ca_file))
    by_address = partial(tcp_status, "127.0.0.1:443", "/v2/", tls=tls)
    assert in_netns(site_registry.netns, by_address) == 401


def test_listens_only_inside_the_namespace(site_registry: SiteRegistry) -> None:
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", 443), timeout=2).close()


def test_log_names_every_request(site_registry: SiteRegistry) -> None:
    since = site_registry.log_size()
    get(site_registry, "/v2/")
    get(site_registry, "/v2/_catalog?n=5", auth=(site_registry.username, site_registry.password))
    seen = logged(site_registry, since, [Request("GET", "/v2/", 401),
                                         Request("GET", "/v2/_catalog", 200)])
    assert [r[:3] for r in seen] == [("GET", "/v2/", 401), ("GET", "/v2/_catalog", 200)]
    assert {r.client for r in seen} == {"127.0.0.1"}  # asked from inside the namespace, over its loopback


def test_host_is_configured_like_a_site_admin_would(site_registry: SiteRegistry) -> None:
    assert Path("/etc/hosts").read_text().splitlines().count(HOSTS_LINE) == 1
    assert socket.gethostbyname(site_registry.host) == "127.0.0.1"
    installed = Path("/etc/docker/certs.d/aiharbor.msxf.local/ca.crt")
    assert installed.read_bytes() == site_registry.ca_file.read_bytes()
    assert site_registry.password_file.stat().st_mode & 0o777 == 0o600


def test_host_config_is_undone_exactly(site_registry: SiteRegistry, tmp_path: Path) -> None:
    """install/remove on scratch copies of /etc/hosts and certs.d: nothing else changes."""
    hosts, certs_d = tmp_path / "hosts", tmp_path / "certs.d"
    original = "127.0.0.1 localhost\n::1 localhost  # keep\n"
    hosts.write_text(original)
    (certs_d / "other.example").mkdir(parents=True)
    scratch = SiteRegistry(tmp_path / "root", hosts_file=hosts, certs_d=certs_d)
    scratch.ca_file.parent.mkdir(parents=True)
    shutil.copy(site_registry.ca_file, scratch.ca_file)

    scratch.install_host_config()
    scratch.install_host_config()
    assert hosts.read_text() == original + HOSTS_LINE + "\n"
    assert (certs_d / "aiharbor.msxf.local" / "ca.crt").read_bytes() == scratch.ca_file.read_bytes()

    scratch.remove_host_config()
    assert hosts.read_text() == original
    assert sorted(p.name for p in certs_d.iterdir()) == ["other.example"]


# -- the air-gapped target engine as its client ------------------------------

class Pushed(NamedTuple):
    """The image the target engine built and pushed, and what the push said."""

    image_id: str
    digest: str
    log: list[Request]


@pytest.fixture(scope="module")
def target(harness: Harness) -> Iterator[docker.DockerClient]:
    """A client of the target engine of its own (login state stays here)."""
    client = docker.DockerClient(base_url=harness.target_docker_host, timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="module")
def pushed(site_registry: SiteRegistry, target: docker.DockerClient) -> Iterator[Pushed]:
    """A tiny FROM-scratch image with unique content, built on the target engine and pushed."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (("Dockerfile", b"FROM scratch\nCOPY rigcheck.txt /\n"),
                           ("rigcheck.txt", f"{uuid.uuid4()}\n".encode())):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    context.seek(0)
    image, _ = target.images.build(fileobj=context, custom_context=True, tag=f"{REPO}:{TAG}",
                                   labels={"airgap-harness": "site-registry-rig"}, rm=True)
    try:
        since = site_registry.log_size()
        lines = list(target.api.push(REPO, tag=TAG, auth_config=site_registry.auth_config(),
                                     stream=True, decode=True))
        errors = [line for line in lines if "error" in line or "errorDetail" in line]
        assert not errors, errors
        digest = next(line["aux"]["Digest"] for line in lines if "Digest" in line.get("aux", {}))
        log = logged(site_registry, since, [Request("PUT", f"/v2/aihpc/rigcheck/manifests/{TAG}",
                                                    201)])
        yield Pushed(image.id, digest, log)
    finally:
        with contextlib.suppress(ImageNotFound):  # its tag, or the pulled-back copy
            target.images.remove(image.id, force=True)


def test_target_engine_logs_in(site_registry: SiteRegistry, target: docker.DockerClient) -> None:
    answer = target.login(site_registry.username, site_registry.password,
                          registry=site_registry.host, reauth=True)
    assert answer["Status"] == "Login Succeeded"
    with pytest.raises(APIError, match="unauthorized|401"):
        target.login(site_registry.username, "wrong", registry=site_registry.host, reauth=True)


def test_target_engine_pushes(pushed: Pushed) -> None:
    paths = {(r.method, r.path) for r in pushed.log if r.status < 400}
    assert any(m == "PUT" and p.startswith("/v2/aihpc/rigcheck/blobs/uploads/") for m, p in paths)
    assert ("PUT", f"/v2/aihpc/rigcheck/manifests/{TAG}") in paths
    assert pushed.digest.startswith("sha256:")


def test_target_engine_pulls_it_back(site_registry: SiteRegistry, target: docker.DockerClient,
                                     pushed: Pushed) -> None:
    target.images.remove(f"{REPO}:{TAG}", force=True)
    with pytest.raises(ImageNotFound):
        target.images.get(pushed.image_id)
    with pytest.raises(APIError, match="unauthorized|no basic auth credentials"):
        target.images.pull(REPO, tag=TAG,
                           auth_config={"username": site_registry.username, "password": "wrong"})

    since = site_registry.log_size()
    image = target.images.pull(REPO, tag=TAG, auth_config=site_registry.auth_config())
    assert image.id == pushed.image_id
    assert f"{REPO}@{pushed.digest}" in image.attrs["RepoDigests"]
    # dockerd resolves the tag with HEAD, then fetches the manifest by digest
    logged(site_registry, since, [Request("HEAD", f"/v2/aihpc/rigcheck/manifests/{TAG}", 200),
                                  Request("GET", f"/v2/aihpc/rigcheck/manifests/{pushed.digest}",
                                          200)])


def test_skopeo_sees_the_pushed_image(site_registry: SiteRegistry, pushed: Pushed) -> None:
    """An independent client, trusting the CA through /etc/docker/certs.d like dockerd does."""
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo not installed (scripts/setup.sh installs it)")
    creds = f"{site_registry.username}:{site_registry.password}"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    proc = subprocess.run(["nsenter", f"--net={NETNS_DIR / site_registry.netns}", "skopeo",
                           "inspect", "--creds", creds, f"docker://{REPO}:{TAG}"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["Digest"] == pushed.digest


def test_wipe_empties_it(site_registry: SiteRegistry, pushed: Pushed) -> None:
    robot = (site_registry.username, site_registry.password)
    assert "aihpc/rigcheck" in get(site_registry, "/v2/_catalog", auth=robot).json()["repositories"]
    site_registry.wipe()
    assert get(site_registry, "/v2/_catalog", auth=robot).json()["repositories"] == []
    assert site_registry.ensure() == "running"
    assert (site_registry.username, site_registry.password) == robot
