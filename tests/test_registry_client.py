"""The registry client's pieces without an engine: names, the gzip encoding, and Harbor's bearer-token
answers (a small fake of Harbor's token service and registry front, answering as Harbor does)."""
from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import parse_qs, urlparse

import pytest

from installer.registry.blobs import BlockCompressor, gzip_member
from installer.registry.client import Connection, Credentials, RegistryClient, RegistryError
from installer.registry.reference import Reference, ReferenceError, Registry, site_reference

ROBOT, SECRET = "robot$aihpc+ci", "s3cret-Robot"


# -- names -------------------------------------------------------------------
def test_release_names_keep_their_path_below_the_chosen_registry() -> None:
    own = Registry.parse("aiharbor.msxf.local/aihpc")
    lab = Registry.parse("harbor.lab:8443/aimatrix")
    assert site_reference("aiharbor.msxf.local/aihpc/postgres:v0.3.5", own, own) == \
        Reference("aiharbor.msxf.local", "aihpc/postgres", "v0.3.5")
    assert str(site_reference("aiharbor.msxf.local/aihpc/postgres:v0.3.5", lab, own)) == "harbor.lab:8443/aimatrix/postgres:v0.3.5"
    # a local-only runtime name goes below the registry as it is
    assert str(site_reference("ai-infra-singleuser:v0.3.5", own, own)) == "aiharbor.msxf.local/aihpc/ai-infra-singleuser:v0.3.5"
    # a name under another registry keeps its path
    assert str(site_reference("quay.io/org/tool:1", own, own)) == "aiharbor.msxf.local/aihpc/org/tool:1"


@pytest.mark.parametrize("text", ["https://harbor/aihpc", "harbor/AIHPC", "", "har bor/x"])
def test_a_bad_registry_address_is_refused_with_what_to_give(text: str) -> None:
    with pytest.raises(ReferenceError, match="HOST|project|host"):
        Registry.parse(text)


def test_a_name_without_a_tag_or_with_a_digest_is_refused() -> None:
    own = Registry.parse("aiharbor.msxf.local/aihpc")
    with pytest.raises(ReferenceError, match="no tag"):
        site_reference("aiharbor.msxf.local/aihpc/postgres", own, own)
    with pytest.raises(ReferenceError, match="digest"):
        site_reference("postgres@sha256:" + "a" * 64, own, own)


# -- gzip on the wire ----------------------------------------------------------
def _blocks() -> list[bytes]:
    text = b"".join(b"line %d of a layer tar\n" % i for i in range(300_000))
    return [text[:3_000_000], os.urandom(1_000_000), text[3_000_000:]]


def test_block_gzip_is_one_valid_gzip_stream_and_deterministic() -> None:
    blocks = _blocks()
    compressor = BlockCompressor(level=1, workers=2)
    try:
        first = b"".join(compressor.gzip(iter(blocks)))
        second = b"".join(compressor.gzip(iter(blocks)))
    finally:
        compressor.close()
    assert gzip.decompress(first) == b"".join(blocks)
    assert hashlib.sha256(first).digest() == hashlib.sha256(second).digest()
    assert first[:2] == b"\x1f\x8b" and len(first) < len(b"".join(blocks))
    assert gzip.decompress(gzip_member(b"", 1)) == b""


def test_an_abandoned_gzip_stream_frees_its_slots() -> None:
    compressor = BlockCompressor(level=1, workers=1)
    try:
        for _ in range(10):  # more abandoned streams than slots: would hang if slots leaked
            stream = compressor.gzip(iter([b"x" * 100_000] * 8))
            next(stream)
            stream.close()
        assert gzip.decompress(b"".join(compressor.gzip(iter([b"ok"])))) == b"ok"
    finally:
        compressor.close()


def test_many_gzip_streams_sharing_one_small_pool_all_finish() -> None:
    """Four uploads at once, each with more blocks than the pool has slots (this deadlocked once)."""
    compressor = BlockCompressor(level=1, workers=2)
    results: dict[int, bytes] = {}

    def stream(number: int) -> None:
        blocks = [bytes([number]) * 300_000 for _ in range(12)]
        results[number] = b"".join(compressor.gzip(iter(blocks)))

    threads = [threading.Thread(target=stream, args=(n,), daemon=True) for n in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads), "the streams wait on one another"
        assert all(gzip.decompress(results[n]) == bytes([n]) * 3_600_000 for n in range(4))
    finally:
        compressor.close()


# -- a fake of Harbor's front: token service + registry ------------------------
class FakeHarbor:
    """Harbor's answers: a bearer challenge, a token service taking basic auth (robot names have '$'),
    tokens granting only repositories of existing projects, 401 for the rest, Harbor's 404 bodies."""

    def __init__(self, projects: set[str]):
        self.projects = projects
        self.tokens: dict[str, set[str]] = {}
        self.token_users: list[str] = []
        self.fail_next: list[int] = []
        self.token_delay = 0.0
        self.requests: list[tuple[str, str]] = []
        harbor = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: dict | None = None, headers: dict | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                harbor.requests.append((self.command, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                url = urlparse(self.path)
                if url.path == "/service/token":
                    return harbor.token(self, parse_qs(url.query))
                if harbor.fail_next:
                    return self._send(harbor.fail_next.pop(0), {"errors": [{"code": "UNKNOWN", "message": "busy"}]})
                return harbor.registry(self, url.path)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def challenge(self, scope: str = "") -> dict:
        extra = f',scope="{scope}"' if scope else ""
        return {"WWW-Authenticate": f'Bearer realm="http://{self.host}/service/token",service="harbor-registry"{extra}'}

    def token(self, handler, query: dict) -> None:
        time.sleep(self.token_delay)
        auth = handler.headers.get("Authorization", "")
        user, _, password = base64.b64decode(auth.split(" ", 1)[1]).decode().partition(":") if auth else ("", "", "")
        self.token_users.append(user)
        if auth and (user, password) != (ROBOT, SECRET):
            return handler._send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]})
        granted = set()
        for scope in query.get("scope", []):
            _, repository, _ = scope.split(":")
            if repository.split("/", 1)[0] in self.projects and auth:
                granted.add(repository)
        token = f"token-{len(self.tokens)}"
        self.tokens[token] = granted
        handler._send(200, {"token": token})

    def registry(self, handler, path: str) -> None:
        auth = handler.headers.get("Authorization", "")
        token = auth.split(" ", 1)[1] if auth.startswith("Bearer ") else None
        if path == "/v2/":
            return handler._send(200, {}) if token in self.tokens else handler._send(401, {}, self.challenge())
        repository = path[len("/v2/"):].split("/manifests/")[0].split("/blobs/")[0]
        if token not in self.tokens or repository not in self.tokens[token]:
            return handler._send(401, {"errors": [{"code": "UNAUTHORIZED", "message":
                                                   f"unauthorized to access repository: {repository}, action: push: "
                                                   "unauthorized to access repository"}]},
                                 self.challenge(f"repository:{repository}:pull,push"))
        if "/manifests/" in path and handler.command == "GET":
            return handler._send(404, {"errors": [{"code": "NOT_FOUND", "message": f"artifact {repository} not found"}]})
        handler._send(201, None, {"Docker-Content-Digest": "sha256:" + "0" * 64})

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def harbor() -> Iterator[FakeHarbor]:
    fake = FakeHarbor({"aihpc"})
    yield fake
    fake.close()


def _client(harbor: FakeHarbor, credentials: Credentials | None) -> RegistryClient:
    return RegistryClient(Registry.parse(f"{harbor.host}/aihpc"), credentials, Connection(insecure=True, attempts=3))


def test_bearer_tokens_are_fetched_with_the_robot_account_and_an_absent_artifact_is_absent(harbor) -> None:
    client = _client(harbor, Credentials(ROBOT, SECRET))
    client.ping()
    assert client.get_manifest("aihpc/postgres", "v0.3.5") is None
    assert client.put_manifest("aihpc/postgres", "v0.3.5", b"{}", "application/vnd.docker.distribution.manifest.v2+json")
    assert ROBOT in harbor.token_users  # the '$' survived


def test_a_missing_project_says_so_and_what_to_do(harbor) -> None:
    client = _client(harbor, Credentials(ROBOT, SECRET))
    with pytest.raises(RegistryError, match=r"project nope does not exist .*create the project in Harbor.*--registry"):
        client.put_manifest("nope/postgres", "v0.3.5", b"{}", "application/vnd.docker.distribution.manifest.v2+json")


def test_a_wrong_password_is_named_with_the_account(harbor) -> None:
    client = _client(harbor, Credentials(ROBOT, "wrong"))
    with pytest.raises(RegistryError, match=r"refused the credentials of 'robot\$aihpc\+ci'"):
        client.get_manifest("aihpc/postgres", "v0.3.5")


def test_no_credentials_asks_for_them(harbor) -> None:
    client = _client(harbor, None)
    with pytest.raises(RegistryError, match="--username"):
        client.put_manifest("aihpc/postgres", "v0.3.5", b"{}", "application/vnd.docker.distribution.manifest.v2+json")


def test_a_transient_error_is_retried_and_a_persistent_one_reported(harbor) -> None:
    client = _client(harbor, Credentials(ROBOT, SECRET))
    client.ping()
    harbor.fail_next = [503]
    assert client.get_manifest("aihpc/postgres", "v0.3.5") is None
    harbor.fail_next = [503] * 5
    with pytest.raises(RegistryError, match="503"):
        client.get_manifest("aihpc/postgres", "v0.3.5")


def test_an_unreachable_registry_and_a_plain_http_one_are_explained() -> None:
    client = RegistryClient(Registry.parse("127.0.0.1:9/aihpc"), None, Connection(attempts=1, timeout=2))
    with pytest.raises(RegistryError, match="cannot reach the registry"):
        client.ping()
    fake = FakeHarbor({"aihpc"})
    try:
        tls_client = RegistryClient(Registry.parse(f"{fake.host}/aihpc"), None, Connection(attempts=1, timeout=5))
        with pytest.raises(RegistryError, match="does not speak TLS.*--insecure-registry"):
            tls_client.ping()
    finally:
        fake.close()


# -- the command line's registry options -----------------------------------------
def _header(registry: str = ""):
    from installer.archive import BundleHeader

    return BundleHeader(name="aimatrix", version="v0.3.5", tool_version="t", platform="linux/amd64", created="",
                        signer="", images=[], members=[], release={"project": "ai-infra-matrix", "registry": registry})


def test_the_registry_comes_from_the_signed_release_unless_given() -> None:
    from installer.errors import InstallError
    from installer.registry.access import RegistryAccess

    assert str(RegistryAccess().target(_header("aiharbor.msxf.local/aihpc"))) == "aiharbor.msxf.local/aihpc"
    assert str(RegistryAccess(registry="harbor.lab:8443/x").target(_header("aiharbor.msxf.local/aihpc"))) == \
        "harbor.lab:8443/x"
    with pytest.raises(InstallError, match="built without a registry.*--registry"):
        RegistryAccess().target(_header(""))
    with pytest.raises(InstallError, match="without https://"):
        RegistryAccess(registry="https://harbor.lab/x").target(_header(""))


def test_a_password_only_on_stdin_and_never_empty() -> None:
    import io

    from installer.errors import InstallError
    from installer.registry.access import RegistryAccess, read_password

    with pytest.raises(InstallError, match="--password-stdin"):
        RegistryAccess(username=ROBOT).credentials("aiharbor.msxf.local")
    with pytest.raises(InstallError, match="needs --username"):
        RegistryAccess(password="x").credentials("aiharbor.msxf.local")
    assert read_password(io.StringIO("s3cret$x\n")) == "s3cret$x"
    with pytest.raises(InstallError, match="empty"):
        read_password(io.StringIO("\n"))
    assert RegistryAccess(username=ROBOT, password="p").credentials("h") == Credentials(ROBOT, "p")


def test_uploads_side_by_side_share_one_answered_challenge(harbor) -> None:
    """Eight requests refused at once for want of a token: one fetches it, the others use it (a race lost
    here once failed a push with 'grants no access')."""
    client = _client(harbor, Credentials(ROBOT, SECRET))
    harbor.token_delay = 0.3  # every request is refused before the first token arrives
    errors: list[Exception] = []
    start = threading.Barrier(8)

    def store(number: int) -> None:
        start.wait()
        try:
            client.put_manifest("aihpc/postgres", f"t{number}", b"{}", "application/vnd.docker.distribution.manifest.v2+json")
        except Exception as exc:  # collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=store, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
