"""A small client of the registry HTTP API (distribution spec v2): ping, blobs, manifests.

It speaks TLS with the site's CA (``--ca-file`` or the engine's
``/etc/docker/certs.d/HOST/``), basic auth and the bearer-token flow Harbor
uses (answering each ``WWW-Authenticate`` challenge), retries transient
failures, and turns every refusal into a :class:`RegistryError` that says what
to do. Blob uploads stream: POST to open a session, PATCH the bytes as they
are produced (chunked), PUT with the digest to commit.
"""
from __future__ import annotations

import hashlib
import json
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional
from urllib.parse import urlencode, urljoin

import requests
from requests.adapters import HTTPAdapter

from .reference import Registry

MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
)
CERTS_D = Path("/etc/docker/certs.d")
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
MAX_MANIFEST = 4 << 20
MAX_ERROR_BODY = 64 << 10


class RegistryError(Exception):
    """The registry refused or could not be reached; the message says what to do."""

    def __init__(self, message: str, *, transient: bool = False, status: Optional[int] = None):
        super().__init__(message)
        self.transient, self.status = transient, status


@dataclass(frozen=True)
class Credentials:
    """A user name and password (or a Harbor robot account's name and secret)."""

    username: str
    password: str = field(repr=False)


@dataclass
class Connection:
    """How to reach the registry: TLS trust, client certificate, plain HTTP, timeouts, retries."""

    ca_files: list[Path] = field(default_factory=list)
    client_cert: Optional[tuple[Path, Path]] = None
    insecure: bool = False
    timeout: float = 60.0
    attempts: int = 4
    pool: int = 16


def engine_trust(host: str) -> tuple[list[Path], Optional[tuple[Path, Path]]]:
    """The CA files and client certificate the Docker engine uses for ``host`` (``/etc/docker/certs.d/HOST/``)."""
    folder = CERTS_D / host
    if not folder.is_dir():
        return [], None
    cas = sorted(p for p in folder.glob("*.crt") if p.is_file())
    certs = sorted(p for p in folder.glob("*.cert") if p.is_file())
    pair = next(((c, c.with_suffix(".key")) for c in certs if c.with_suffix(".key").is_file()), None)
    return cas, pair


def docker_credentials(host: str) -> Optional[Credentials]:
    """The credentials ``docker login HOST`` stored (config.json, credential helpers), if any."""
    try:
        from docker import auth

        found = auth.resolve_authconfig(auth.load_config(), registry=host) or {}
    except Exception:  # a broken or absent docker config is the same as none here
        return None
    username, password = found.get("username") or found.get("Username"), found.get("password") or found.get("Password")
    return Credentials(username, password) if username and password else None


class _TrustAdapter(HTTPAdapter):
    """An HTTPS adapter with our own SSL context (system CAs plus the site's)."""

    def __init__(self, context: ssl.SSLContext, pool: int):
        self._context = context
        super().__init__(pool_connections=pool, pool_maxsize=pool, max_retries=0)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["ssl_context"] = self._context
        return super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, *args, **kwargs):
        kwargs["ssl_context"] = self._context
        return super().proxy_manager_for(*args, **kwargs)


def _ssl_context(connection: Connection) -> ssl.SSLContext:
    context = ssl.create_default_context()
    for ca in connection.ca_files:
        try:
            context.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise RegistryError(f"cannot read the CA file {ca}: {exc}") from None
    if connection.client_cert:
        cert, key = connection.client_cert
        try:
            context.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise RegistryError(f"cannot read the client certificate {cert}: {exc}") from None
    return context


_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class _Auth:
    """Answers the registry's challenges: basic credentials, or bearer tokens fetched per scope."""

    def __init__(self, session: requests.Session, credentials: Optional[Credentials], timeout: float):
        self.session, self.credentials, self.timeout = session, credentials, timeout
        self.scheme: Optional[str] = None  # "basic" or "bearer" once challenged
        self.lock = threading.Lock()
        self.bearer: dict[str, str] = {}
        self.tokens: dict[str, str] = {}

    def headers(self, scope: str) -> dict[str, str]:
        if self.scheme == "basic" and self.credentials:
            return {"Authorization": requests.auth._basic_auth_str(self.credentials.username, self.credentials.password)}
        token = self.tokens.get(scope)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def answer(self, challenge: str, scope: str, host: str, sent: dict[str, str]) -> bool:
        """Prepare to answer ``challenge`` for ``scope``; False when there is nothing new to try.

        Uploads run side by side: ``sent`` is what the refused request carried, so a
        token another thread fetched meanwhile is tried before giving up.
        """
        with self.lock:
            if self.headers(scope) != sent:
                return True
            return self._answer(challenge, scope, host)

    def _answer(self, challenge: str, scope: str, host: str) -> bool:
        kind = challenge.split(" ", 1)[0].lower()
        if kind == "basic":
            if self.scheme == "basic" or not self.credentials:
                return False
            self.scheme = "basic"
            return True
        if kind != "bearer":
            return False
        params = dict(_CHALLENGE_PARAM.findall(challenge))
        realm = params.get("realm")
        if not realm or scope in self.tokens:
            return False
        self.scheme = "bearer"
        query = [("service", params.get("service", host))]
        wanted = params.get("scope") or scope
        query += [("scope", part) for part in wanted.split(" ") if part]
        try:
            response = self.session.get(f"{realm}?{urlencode(query)}", timeout=self.timeout,
                                        auth=(self.credentials.username, self.credentials.password)
                                        if self.credentials else None)
        except requests.RequestException as exc:
            raise RegistryError(f"cannot reach the registry's token service {realm}: {exc}", transient=True) from None
        if response.status_code in (401, 403):
            raise _credentials_refused(host, self.credentials, response.status_code)
        if response.status_code != 200:
            raise RegistryError(f"the registry's token service {realm} answered {response.status_code}",
                                transient=response.status_code in TRANSIENT_STATUS)
        try:
            body = json.loads(response.content[:MAX_ERROR_BODY])
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"the registry's token service {realm} gave no token")
        self.tokens[scope] = token
        return True


def _credentials_refused(host: str, credentials: Optional[Credentials], status: int) -> RegistryError:
    if credentials is None:
        return RegistryError(f"{host} asks for credentials ({status}): pass --username NAME and the password on "
                             f"stdin with --password-stdin, or run 'docker login {host}' first", status=status)
    return RegistryError(f"{host} refused the credentials of {credentials.username!r} ({status} unauthorized): check "
                         "the name and password (a Harbor robot account is named like 'robot$project+name'; quote "
                         "it in the shell so the '$' stays)", status=status)


class RegistryClient:
    """One registry, reached over HTTPS (or plain HTTP when insecure), with credentials answered on challenge."""

    def __init__(self, registry: Registry, credentials: Optional[Credentials] = None,
                 connection: Optional[Connection] = None):
        self.registry = registry
        self.host = registry.host
        self.connection = connection or Connection()
        self.base = f"{'http' if self.connection.insecure else 'https'}://{self.host}"
        self.session = requests.Session()
        self.session.trust_env = False  # an air-gapped host's proxy settings must not send site traffic elsewhere
        if not self.connection.insecure:
            self.session.mount("https://", _TrustAdapter(_ssl_context(self.connection), self.connection.pool))
        else:
            self.session.mount("http://", HTTPAdapter(pool_connections=self.connection.pool,
                                                      pool_maxsize=self.connection.pool, max_retries=0))
        self.auth = _Auth(self.session, credentials, self.connection.timeout)
        self.credentials = credentials

    def close(self) -> None:
        """Close the connections."""
        self.session.close()

    # -- requests ---------------------------------------------------------
    def request(self, method: str, url: str, scope: str, *, what: str, data: Optional[bytes | Iterable[bytes]] = None,
                headers: Optional[dict[str, str]] = None, ok: tuple[int, ...] = (200,),
                allow: tuple[int, ...] = (), stream: bool = False, once: bool = False) -> requests.Response:
        """Send one request, answering auth challenges and retrying transient failures (unless ``once``).

        ``ok`` statuses return; ``allow`` statuses return too (the caller reads them, e.g. 404 = absent);
        anything else is a RegistryError explaining ``what`` failed.
        """
        url = urljoin(self.base + "/", url.lstrip("/")) if not url.startswith(("http://", "https://")) else url
        attempts = 1 if once else self.connection.attempts
        last: Optional[RegistryError] = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(min(0.5 * 2 ** attempt, 8.0))
            try:
                response = self._send(method, url, scope, data, headers, stream)
            except RegistryError as exc:
                if not exc.transient:
                    raise
                last = exc
                continue
            if response.status_code in ok or response.status_code in allow:
                return response
            error = self._refusal(response, what, scope)
            response.close()
            if not error.transient:
                raise error
            last = error
        assert last is not None
        raise last

    def _send(self, method: str, url: str, scope: str, data, headers, stream: bool) -> requests.Response:
        for _ in range(4):  # at most: no auth, the challenge answered (basic, or a token), and one race lost
            sent = self.auth.headers(scope)
            merged = {**(headers or {}), **sent}
            try:
                response = self.session.request(method, url, data=data, headers=merged, stream=stream,
                                                timeout=(min(self.connection.timeout, 30.0), self.connection.timeout),
                                                allow_redirects=True)
            except requests.exceptions.SSLError as exc:
                raise RegistryError(_tls_advice(self.host, exc)) from None
            except requests.exceptions.ConnectionError as exc:
                raise RegistryError(f"cannot reach the registry at {self.base}: {_reason(exc)}. Check the name "
                                    f"resolves on this host and the registry runs", transient=True) from None
            except requests.exceptions.Timeout:
                raise RegistryError(f"the registry at {self.base} did not answer within "
                                    f"{self.connection.timeout:.0f} s", transient=True) from None
            except requests.RequestException as exc:
                raise RegistryError(f"talking to {self.base}: {_reason(exc)}", transient=True) from None
            challenge = response.headers.get("WWW-Authenticate", "")
            if response.status_code == 401 and challenge and not _replayable(data):
                response.close()
                raise RegistryError("the registry asked for credentials in the middle of an upload", transient=True)
            if response.status_code == 401 and challenge and (
                    self.auth.headers(scope) != sent  # another upload answered the challenge meanwhile: use that
                    or self.auth.answer(challenge, scope, self.host, sent)):
                response.close()
                continue
            return response
        return response

    def _refusal(self, response: requests.Response, what: str, scope: str) -> RegistryError:
        status = response.status_code
        codes, messages = _errors(response)
        said = f" (the registry says: {'; '.join(messages)[:300]})" if messages else ""
        if status == 401 and self.auth.scheme == "bearer" and scope in self.auth.tokens and self.credentials:
            # The token service accepted who we are, but the token grants no access to this repository:
            # Harbor answers so for a project that does not exist as for one the account may not use.
            project = _project(scope) or self.registry.project
            who = repr(self.credentials.username)
            return RegistryError(f"{what}: the registry accepted {who} but grants no access to {project}/... "
                                 f"({status}{said}): project {project} does not exist on the registry {self.host}, or "
                                 "the account lacks permission in it; create the project in Harbor (and give the "
                                 "account push/pull there), or pass --registry HOST/PROJECT", status=status)
        if status == 401:
            return _credentials_refused(self.host, self.credentials, status)
        if status == 403:
            who = repr(self.credentials.username) if self.credentials else "an anonymous client"
            return RegistryError(f"{what}: {who} is not allowed ({status} denied{said}): give the account the needed "
                                 f"permission on project {_project(scope) or self.registry.project!r} in Harbor",
                                 status=status)
        if status == 404 and ("NAME_UNKNOWN" in codes or "NOT_FOUND" in codes or
                              any("project" in m.lower() for m in messages)):
            project = _project(scope) or self.registry.project
            return RegistryError(f"{what}: project {project} does not exist on the registry {self.host}{said}; "
                                 "create it in Harbor or pass --registry HOST/PROJECT", status=status)
        if status == 413:
            return RegistryError(f"{what}: the registry (or a proxy in front of it) refused the request as too "
                                 f"large ({status}); raise its body size limit (nginx: client_max_body_size 0)",
                                 status=status)
        if status == 405 and "UNSUPPORTED" in codes:
            return RegistryError(f"{what}: the registry does not allow this ({status}){said}; is it read-only?",
                                 status=status)
        return RegistryError(f"{what}: the registry answered {status}{said}",
                             transient=status in TRANSIENT_STATUS, status=status)

    # -- API --------------------------------------------------------------
    def ping(self) -> None:
        """Check the registry speaks the v2 API and accepts our credentials (RegistryError otherwise)."""
        response = self.request("GET", "/v2/", "", what=f"{self.host}: API check", ok=(200,), allow=(401, 404))
        status = response.status_code
        response.close()
        if status == 404:
            raise RegistryError(f"{self.base}/v2/ answered 404: this is not a Docker registry (or not its address)")
        if status == 401 and (self.credentials or self.auth.scheme is None):
            # Harbor answers 401 on /v2/ with a bearer challenge until a token with some scope is held: that is fine.
            if self.auth.scheme != "bearer":
                raise _credentials_refused(self.host, self.credentials, status)

    def blob_exists(self, repository: str, digest: str) -> bool:
        """True when ``repository`` holds the blob ``digest``."""
        response = self.request("HEAD", f"/v2/{repository}/blobs/{digest}", _scope(repository, "pull"),
                                what=f"checking blob {digest[:19]} in {repository}", allow=(404,))
        response.close()
        return response.status_code == 200

    def mount_blob(self, repository: str, digest: str, source: str) -> tuple[bool, Optional[str]]:
        """Link blob ``digest`` from ``source`` into ``repository`` without sending it.

        Returns (True, None) when linked; else (False, the upload session the registry opened instead,
        which the caller uses to send the blob, as the distribution spec has it).
        """
        response = self.request(
            "POST", f"/v2/{repository}/blobs/uploads/?{urlencode({'mount': digest, 'from': source})}",
            f"{_scope(repository, 'pull,push')} {_scope(source, 'pull')}",
            what=f"linking blob {digest[:19]} into {repository}", ok=(201, 202))
        mounted = response.status_code == 201
        location = response.headers.get("Location")
        response.close()
        return mounted, (None if mounted or not location else urljoin(self.base + "/", location))

    def open_upload(self, repository: str) -> str:
        """Open an upload session in ``repository``; its URL."""
        what = f"uploading a blob to {repository}"
        opened = self.request("POST", f"/v2/{repository}/blobs/uploads/", _scope(repository, "pull,push"), what=what,
                              ok=(202,))
        location = opened.headers.get("Location")
        opened.close()
        if not location:
            raise RegistryError(f"{what}: the registry opened an upload without a Location")
        return urljoin(self.base + "/", location)

    def upload_blob(self, repository: str, chunks: Iterator[bytes], digest_of: Callable[[], str],
                    location: Optional[str] = None) -> str:
        """Stream a blob into ``repository`` (one attempt, in session ``location`` or a new one); ``digest_of()``
        after the stream ends gives its digest.

        Returns the digest the registry stored. A failure leaves no blob behind
        (the registry drops an upload that is never committed).
        """
        scope = _scope(repository, "pull,push")
        what = f"uploading a blob to {repository}"
        location = location or self.open_upload(repository)
        try:
            sent = self.request("PATCH", location, scope, what=what, data=_pieces(chunks), once=True, ok=(202, 204),
                                headers={"Content-Type": "application/octet-stream"})
            location = urljoin(self.base + "/", sent.headers.get("Location") or location)
            sent.close()
            digest = digest_of()
            separator = "&" if "?" in location else "?"
            committed = self.request("PUT", f"{location}{separator}{urlencode({'digest': digest})}", scope, what=what,
                                     data=b"", ok=(201, 204), once=True, headers={"Content-Length": "0"})
            committed.close()
        except BaseException:
            self.cancel_upload(location, repository)
            raise
        return digest

    def put_blob(self, repository: str, data: bytes, digest: str, location: Optional[str] = None) -> None:
        """Upload a small blob (an image config) in one request (in session ``location`` or a new one)."""
        scope = _scope(repository, "pull,push")
        what = f"uploading blob {digest[:19]} to {repository}"
        location = location or self.open_upload(repository)
        separator = "&" if "?" in location else "?"
        self.request("PUT", f"{location}{separator}{urlencode({'digest': digest})}", scope, what=what, data=data,
                     ok=(201, 204), headers={"Content-Type": "application/octet-stream"}).close()

    def get_manifest(self, repository: str, reference: str) -> Optional[tuple[str, bytes, str]]:
        """(media type, bytes, digest) of a manifest, or None when the registry does not have it."""
        response = self.request("GET", f"/v2/{repository}/manifests/{reference}", _scope(repository, "pull"),
                                what=f"reading {repository}:{reference}", allow=(404,), stream=True,
                                headers={"Accept": ", ".join(MANIFEST_TYPES)})
        try:
            if response.status_code == 404:
                codes, messages = _errors(response)
                if any("project" in m.lower() for m in messages):  # Harbor: "project aihpc not found"
                    project = repository.split("/", 1)[0]
                    raise RegistryError(f"project {project} does not exist on the registry {self.host} (the registry "
                                        f"says: {'; '.join(messages)[:200]}); create it in Harbor or pass "
                                        "--registry HOST/PROJECT", status=404)
                return None  # MANIFEST_UNKNOWN, NAME_UNKNOWN, Harbor's "artifact ... not found"
            body = response.raw.read(MAX_MANIFEST + 1, decode_content=True)
        finally:
            response.close()
        if len(body) > MAX_MANIFEST:
            raise RegistryError(f"{repository}:{reference}: the manifest is larger than {MAX_MANIFEST} bytes")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        return response.headers.get("Content-Type", "").split(";")[0].strip(), body, digest

    def put_manifest(self, repository: str, tag: str, body: bytes, media_type: str) -> str:
        """Store a manifest under ``tag``; returns its digest."""
        response = self.request("PUT", f"/v2/{repository}/manifests/{tag}", _scope(repository, "pull,push"),
                                what=f"storing {self.host}/{repository}:{tag}", data=body, ok=(200, 201),
                                headers={"Content-Type": media_type})
        digest = response.headers.get("Docker-Content-Digest", "")
        response.close()
        return digest

    def cancel_upload(self, location: str, repository: str) -> None:
        """Drop an upload session (best effort: the registry forgets abandoned ones by itself)."""
        try:
            self.session.delete(urljoin(self.base + "/", location),
                                headers=self.auth.headers(_scope(repository, "pull,push")), timeout=10).close()
        except requests.RequestException:
            pass  # the registry forgets abandoned uploads by itself


SEND_PIECE = 1 << 20


def _pieces(chunks: Iterator[bytes]) -> Iterator[memoryview]:
    """Chunks cut into views of at most 1 MB: the HTTP layer copies each piece it frames, not a whole block."""
    for chunk in chunks:
        view = memoryview(chunk)
        for start in range(0, len(view), SEND_PIECE):
            yield view[start:start + SEND_PIECE]


def _scope(repository: str, actions: str) -> str:
    return f"repository:{repository}:{actions}"


def _project(scope: str) -> str:
    first = scope.split(" ", 1)[0]
    parts = first.split(":")
    return parts[1].split("/", 1)[0] if len(parts) >= 3 else ""


def _replayable(data) -> bool:
    return data is None or isinstance(data, (bytes, bytearray))


def _errors(response: requests.Response) -> tuple[set[str], list[str]]:
    """The codes and messages of a registry error body ({"errors": [{"code", "message"}]})."""
    try:
        raw = response.raw.read(MAX_ERROR_BODY, decode_content=True) if response.raw is not None else b""
    except Exception:
        raw = b""
    if not raw and response._content not in (False, None):  # already read
        raw = response._content[:MAX_ERROR_BODY]
    try:
        items = json.loads(raw).get("errors") or []
    except (ValueError, AttributeError):
        return set(), []
    codes, messages = set(), []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            codes.add(str(item.get("code", "")))
            message = "".join(c for c in str(item.get("message", ""))[:200] if c.isprintable())
            if message:
                messages.append(message)
    return codes, messages


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "No route to host", "Network is unreachable",
                   "Temporary failure in name resolution", "timed out", "Connection reset"):
        if marker in text:
            return marker.lower()
    return text[:200]


def _tls_advice(host: str, exc: Exception) -> str:
    text = str(exc)
    if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
        return (f"{host} does not speak TLS on this port (plain HTTP?): pass --insecure-registry only if the "
                "registry really is plain HTTP")
    return (f"cannot verify the certificate of {host} ({_reason(exc)}): pass --ca-file with the site's CA, or put "
            f"it in {CERTS_D / host / 'ca.crt'} (where the Docker engine looks for it too)")
