"""Harbor's way of letting clients in, with a real registry: docker-registry 2.8 in token mode behind a token
service that grants only repositories of projects that exist (what Harbor's core does), over TLS.

No engine is needed: the push reads a small signed archive and talks to the registry directly.
"""
from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlparse

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tests.harness.siteregistry import _make_tls
from tests.test_archive import keypair, write_bundle  # noqa: F401  (keypair is a fixture)

ROOT = Path(__file__).resolve().parent.parent
ROBOT, SECRET = "robot$aihpc+ci", "Robot-Secret-1"
SERVICE, ISSUER = "harbor-registry", "harbor-token-issuer"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TokenService:
    """Harbor core's token endpoint: basic auth in, a signed JWT out granting only what exists and is allowed."""

    def __init__(self, folder: Path, server_cert: Path, server_key: Path, projects: set[str]):
        self.projects = projects
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token signer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                     .not_valid_after(now + datetime.timedelta(days=1)).sign(self.key, hashes.SHA256()))
        self.bundle = folder / "token-signer.crt"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                status, body = service.answer(self.headers.get("Authorization", ""), parse_qs(urlparse(self.path).query))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(server_cert), str(server_key))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.realm = f"https://127.0.0.1:{self.server.server_address[1]}/service/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, authorization: str, query: dict) -> tuple[int, dict]:
        user = ""
        if authorization.startswith("Basic "):
            user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            if (user, password) != (ROBOT, SECRET):
                return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
        access = []
        for scope in query.get("scope", []):
            kind, repository, actions = scope.split(":")
            if kind == "repository" and user and repository.split("/", 1)[0] in self.projects:
                access.append({"type": kind, "name": repository, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]}
        claims = {"iss": ISSUER, "sub": user, "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
                  "jti": str(uuid.uuid4()), "access": access}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        token = f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
        return 200, {"token": token, "expires_in": 300}

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def harbor_like(tmp_path: Path) -> Iterator[dict]:
    """docker-registry in token mode + the token service, TLS from a CA made here, on loopback ports."""
    if shutil.which("docker-registry") is None:
        message = "docker-registry is not installed (scripts/setup.sh installs it)"
        pytest.fail(message) if os.environ.get("CI", "").lower() == "true" else pytest.skip(message)
    ca, ca_key, cert, key = (tmp_path / n for n in ("ca.crt", "ca.key", "server.crt", "server.key"))
    _make_tls(ca, ca_key, cert, key)
    tokens = TokenService(tmp_path, cert, key, projects={"aihpc"})
    port = _free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n"
        f"  filesystem:\n    rootdirectory: {tmp_path / 'storage'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: test\n  tls:\n    certificate: {cert}\n    key: {key}\n"
        f"auth:\n  token:\n    realm: {tokens.realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n"
        f"    rootcertbundle: {tokens.bundle}\n")
    log = open(tmp_path / "registry.log", "w")
    registry = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    try:
        yield {"registry": f"127.0.0.1:{port}", "ca": ca, "log": tmp_path / "registry.log"}
    finally:
        registry.terminate()
        registry.wait(timeout=30)
        log.close()
        tokens.close()


def _push(archive: Path, pubkey: Path, registry: str, ca: Path, password: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "installer.cli", "push", str(archive), "--pubkey", str(pubkey), "--registry", registry,
         "--ca-file", str(ca), "--username", ROBOT, "--password-stdin"],
        input=password + "\n", capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "AIRGAP_INSTALL_CACHE": str(tmp_path / "record")})


def test_a_harbor_like_registry_takes_the_push_through_bearer_tokens_and_explains_refusals(
        harbor_like: dict, keypair, tmp_path: Path) -> None:  # noqa: F811
    private, _, pubkey = keypair
    archive = tmp_path / "demo-v1.tar.zst"
    write_bundle(archive, private)
    registry, ca = harbor_like["registry"], harbor_like["ca"]

    pushed = _push(archive, pubkey, f"{registry}/aihpc", ca, SECRET, tmp_path)
    assert pushed.returncode == 0, pushed.stderr
    assert "1 name(s) stored" in pushed.stderr
    again = _push(archive, pubkey, f"{registry}/aihpc", ca, SECRET, tmp_path)
    assert again.returncode == 0 and "nothing sent" in again.stderr, again.stderr

    missing = _push(archive, pubkey, f"{registry}/nope", ca, SECRET, tmp_path)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "project nope does not exist" in missing.stderr and "--registry" in missing.stderr, missing.stderr

    wrong = _push(archive, pubkey, f"{registry}/aihpc", ca, "wrong-secret", tmp_path)
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    assert f"refused the credentials of '{ROBOT}'" in wrong.stderr, wrong.stderr
