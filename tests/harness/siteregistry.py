"""The site registry: a stand-in for the customer's Harbor, ``aiharbor.msxf.local`` on 443.

A ``docker-registry`` with TLS (a CA made here) and htpasswd basic auth for a
Harbor-robot-style user, running INSIDE the air-gapped network namespace on
127.0.0.1:443, so only the target engine (and whatever else runs there)
reaches it. The machine is configured the way a site admin would: a hosts
line for the name and the CA under /etc/docker/certs.d/HOST/ca.crt (dockerd
and skopeo read it on each pull; no restart).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import re
import secrets
import shutil
import ssl
import warnings
from pathlib import Path
from typing import NamedTuple, Optional
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .engine import ensure_netns
from .net import NETNS_DIR, in_netns, tcp_status
from .procs import HarnessError, file_lock, pid_alive, read_pid, spawn, stop_pid, wait_until

HOST = "aiharbor.msxf.local"
ADDR = "127.0.0.1:443"
USERNAME = "robot$aihpc+ci"  # Harbor robot accounts look like this, `$` included
PROGRAM = "docker-registry"
HOSTS_FILE = Path("/etc/hosts")
CERTS_D = Path("/etc/docker/certs.d")
HOSTS_LINE = f"127.0.0.1 {HOST}  # airgap-harness site registry"
# The User-Agent of our own readiness probes: requests() leaves them out.
PROBE_AGENT = "airgap-harness-probe"

# One line of the registry's access log (gorilla/handlers' Apache combined format), e.g.
#   127.0.0.1 - - [01/Dec/2026:17:45:12 +0000] "GET /v2/ HTTP/1.1" 401 87 "" "docker/20.10.24 ..."
_ACCESS_LINE = re.compile(r'^(?P<client>\S+) \S+ \S+ \[[^\]]*\] '
                          r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) '
                          r'(?:\d+|-)(?: "(?:[^"\\]|\\.)*" "(?P<agent>(?:[^"\\]|\\.)*)")?')


class Request(NamedTuple):
    """One HTTP request the registry answered; ``path`` is without the query string."""

    method: str
    path: str
    status: int
    client: str = ""  # the address the request came from (in the Swarm rig: 10.77.0.2 is node2)


class SiteRegistry:
    """The site registry's process, credentials, TLS files and host configuration.

    Everything it keeps lives under ROOT/site-registry (or ``state`` and
    ``keys``, see ``__init__``); the only files it touches outside are one
    line of /etc/hosts and
    /etc/docker/certs.d/aiharbor.msxf.local/ (removed by
    :meth:`remove_host_config`).
    """

    host = HOST

    def __init__(self, root: Path, netns: str = "airgap", hosts_file: Path = HOSTS_FILE,
                 certs_d: Path = CERTS_D, addr: str = ADDR, state: Optional[Path] = None,
                 keys: Optional[Path] = None) -> None:
        """``addr``: where it listens inside ``netns``; ``state``: its folder (storage, config,
        log, pidfile; default ROOT/site-registry); ``keys``: the folder of the TLS files, the
        password and the host-configuration record (default ``state``). Registries sharing
        ``keys`` are one site registry to their clients: one CA, one robot account."""
        self.netns = netns
        self.addr = addr
        self.state = Path(state) if state else Path(root) / "site-registry"
        self.keys = Path(keys) if keys else self.state
        self.storage = self.state / "storage"
        self.log = self.state / "registry.log"
        self.config = self.state / "config.yml"
        self.pidfile = self.state / "registry.pid"
        self.ca_file = self.keys / "tls" / "ca.crt"
        self.password_file = self.keys / "password"
        self.htpasswd = self.keys / "htpasswd"
        self._ca_key = self.keys / "tls" / "ca.key"
        self._server_cert = self.keys / "tls" / "server.crt"
        self._server_key = self.keys / "tls" / "server.key"
        self._host_record = self.keys / "host-config.json"
        self._hosts_file = hosts_file
        self._cert_dir = certs_d / HOST

    # -- credentials -------------------------------------------------------

    @property
    def username(self) -> str:
        """The robot account's name (``robot$aihpc+ci``)."""
        return USERNAME

    @property
    def password(self) -> str:
        """The robot account's password (made once, kept 0600 in ROOT/site-registry/password)."""
        return self.password_file.read_text().strip()

    def auth_config(self) -> dict[str, str]:
        """``auth_config`` for the docker SDK's push / pull."""
        return {"username": self.username, "password": self.password}

    # -- lifecycle ---------------------------------------------------------

    def pid(self) -> Optional[int]:
        """Pid of our registry process when it runs, else None."""
        pid = read_pid(self.pidfile)
        return pid if pid_alive(pid, PROGRAM) else None

    def healthy(self) -> bool:
        """True when ``GET /v2/`` answers 401 over TLS (verified by our CA) inside the namespace."""
        if not self.ca_file.exists() or not (NETNS_DIR / self.netns).exists():
            return False
        tls = ssl.create_default_context(cafile=str(self.ca_file))
        agent = {"User-Agent": PROBE_AGENT}
        addr = self.addr.replace("0.0.0.0:", "127.0.0.1:")  # listening everywhere: ask loopback
        return in_netns(self.netns, lambda: tcp_status(addr, "/v2/", headers=agent, tls=tls)) == 401

    def ensure(self) -> str:
        """Start the registry unless it runs; configure the host. Returns "started" or "running"."""
        with self._locked():
            self._prepare()
            if self.pid() is not None and self.healthy():
                return "running"
            self._start()
            return "started"

    def stop(self) -> bool:
        """Stop our registry process; True when one was running."""
        return stop_pid(read_pid(self.pidfile), PROGRAM, timeout=10)

    def wipe(self) -> None:
        """Stop, delete every stored repository and blob, start again (empty)."""
        with self._locked():
            self.stop()
            shutil.rmtree(self.storage, ignore_errors=True)
            self._prepare()
            self._start()

    def _prepare(self) -> None:
        """The namespace, the credentials (made once) and the host configuration."""
        ensure_netns(self.netns)
        self._ensure_credentials()
        self.install_host_config()

    def _start(self) -> None:
        if shutil.which(PROGRAM) is None:
            raise HarnessError(f"{PROGRAM} not found: run scripts/setup.sh")
        self.stop()  # a process that runs but does not answer
        self.storage.mkdir(parents=True, exist_ok=True)
        self._write_config()
        proc = spawn(["nsenter", f"--net={NETNS_DIR / self.netns}", PROGRAM, "serve",
                      str(self.config)], self.log, self.pidfile)
        wait_until(self.healthy, 30, f"site registry on {self.addr} in netns {self.netns}",
                   alive=lambda: proc.poll() is None, log=self.log)

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        """Serialise ensure / wipe of concurrent users (a file lock in the keys folder)."""
        return file_lock(self.keys / "lock")

    # -- the log -----------------------------------------------------------

    def log_size(self) -> int:
        """Current size of the log: pass it to :meth:`requests` as ``since``."""
        try:
            return self.log.stat().st_size
        except FileNotFoundError:
            return 0

    def requests(self, since: int = 0) -> list[Request]:
        """(method, path, status) of every request logged after byte offset ``since``.

        Reads the access-log lines (combined log format) and skips everything
        else (the registry's own logrus lines, our start markers) and our own
        readiness probes. A line still being written (no newline yet) is left
        for the next call.
        """
        try:
            with open(self.log, "rb") as fh:
                fh.seek(since)
                data = fh.read()
        except FileNotFoundError:
            return []
        complete = data[:data.rfind(b"\n") + 1].decode(errors="replace")
        found = []
        for line in complete.splitlines():
            match = _ACCESS_LINE.match(line)
            if match and match["agent"] != PROBE_AGENT:
                found.append(Request(match["method"], urlsplit(match["target"]).path,
                                     int(match["status"]), match["client"]))
        return found

    # -- host configuration ------------------------------------------------

    def install_host_config(self) -> None:
        """Add the hosts line (once) and put our CA in /etc/docker/certs.d/HOST/ca.crt."""
        record = self._read_host_record()
        text = self._hosts_file.read_text() if self._hosts_file.exists() else ""
        if HOSTS_LINE not in text.splitlines():
            with open(self._hosts_file, "a") as fh:
                fh.write(("" if not text or text.endswith("\n") else "\n") + HOSTS_LINE + "\n")
        missing = [d for d in (self._cert_dir.parent, self._cert_dir) if not d.exists()]
        self._cert_dir.mkdir(parents=True, exist_ok=True)
        record["created_dirs"] = sorted({*record.get("created_dirs", []), *map(str, missing)})
        self._host_record.write_text(json.dumps(record) + "\n")
        ca = self.ca_file.read_bytes()
        target = self._cert_dir / "ca.crt"
        if not target.exists() or target.read_bytes() != ca:
            target.write_bytes(ca)

    def remove_host_config(self) -> None:
        """Undo :meth:`install_host_config`: the hosts line, our CA file, the folders it made."""
        if HOSTS_LINE in self._hosts_lines():
            kept = [line for line in self._hosts_lines() if line != HOSTS_LINE]
            # In place, not by rename: /etc/hosts may be a bind mount.
            with open(self._hosts_file, "r+") as fh:
                fh.write("".join(f"{line}\n" for line in kept))
                fh.truncate()
        target = self._cert_dir / "ca.crt"
        ours = self.ca_file.read_bytes() if self.ca_file.exists() else None
        if target.exists() and target.read_bytes() == ours:
            target.unlink()
        created = self._read_host_record().get("created_dirs", [])
        for folder in sorted(created, key=len, reverse=True):
            with contextlib.suppress(OSError):  # gone already, or someone else's files in it
                Path(folder).rmdir()
        self._host_record.unlink(missing_ok=True)

    def _hosts_lines(self) -> list[str]:
        try:
            return self._hosts_file.read_text().splitlines()
        except FileNotFoundError:
            return []

    def _read_host_record(self) -> dict:
        try:
            return json.loads(self._host_record.read_text())
        except (OSError, ValueError):
            return {}

    # -- files -------------------------------------------------------------

    def _ensure_credentials(self) -> None:
        """Make the CA, the server certificate, the password and htpasswd once; keep them."""
        if not (self.ca_file.exists() and self._server_cert.exists() and self._server_key.exists()):
            _make_tls(self.ca_file, self._ca_key, self._server_cert, self._server_key)
        if not (self.password_file.exists() and self.htpasswd.exists()) or \
                f"$2b${BCRYPT_ROUNDS.bit_length() - 1:02d}$" not in self.htpasswd.read_text():
            password = secrets.token_urlsafe(24)
            _write_private(self.password_file, password + "\n")
            _write_private(self.htpasswd, f"{USERNAME}:{_bcrypt(password)}\n")

    def _write_config(self) -> None:
        self.config.write_text(
            "version: 0.1\n"
            "log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {self.storage}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.addr}\n  secret: {secrets.token_hex(16)}\n"
            f"  tls:\n    certificate: {self._server_cert}\n    key: {self._server_key}\n"
            f"auth:\n  htpasswd:\n    realm: {HOST}\n    path: {self.htpasswd}\n"
        )


BCRYPT_ROUNDS = 16


def _bcrypt(password: str) -> str:
    """A bcrypt (``$2b$``) hash of ``password`` for htpasswd (the registry takes no other)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # deprecated since 3.11, gone in 3.13; the C library does the work
    # Cost 4 (16 rounds): the registry checks the hash on every request, and at the default cost 12 that
    # is ~0.25 s each, which would make every push and pull measure bcrypt instead of the transfer.
    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=BCRYPT_ROUNDS))
    if not hashed or not hashed.startswith("$2"):
        raise HarnessError("the C library's crypt(3) made no bcrypt hash")
    return hashed


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600 from the start)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
        fh.write(text)


def _make_tls(ca_cert: Path, ca_key: Path, server_cert: Path, server_key: Path) -> None:
    """A CA, and a server certificate it signs for HOST and 127.0.0.1 (serverAuth)."""
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    ca_private = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "airgap-harness site CA")])
    ca = (x509.CertificateBuilder()
          .subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_private.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_private.public_key()),
                         critical=False)
          .sign(ca_private, hashes.SHA256()))
    private = ec.generate_private_key(ec.SECP256R1())
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
              .issuer_name(ca_name)
              .public_key(private.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=825))
              .add_extension(x509.SubjectAlternativeName([
                  x509.DNSName(HOST), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                  critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                           key_encipherment=False, data_encipherment=False,
                                           key_agreement=False, key_cert_sign=False,
                                           crl_sign=False, encipher_only=False,
                                           decipher_only=False), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                             critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                  ca_private.public_key()), critical=False)
              .sign(ca_private, hashes.SHA256()))
    for key, path in ((ca_private, ca_key), (private, server_key)):
        _write_private(path, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()).decode())
    ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
