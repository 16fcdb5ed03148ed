"""What the command line says about the site registry, turned into a connected client."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..archive import BundleHeader
from ..errors import InstallError
from .client import Connection, Credentials, RegistryClient, RegistryError, docker_credentials, engine_trust
from .reference import ReferenceError, Registry

MAX_PASSWORD = 4096


@dataclass
class RegistryAccess:
    """``--registry``, ``--ca-file``, ``--username``/``--password-stdin``, ``--insecure-registry`` as given."""

    registry: Optional[str] = None
    ca_file: Optional[Path] = None
    username: Optional[str] = None
    password: Optional[str] = None
    insecure: bool = False

    def target(self, header: BundleHeader) -> Registry:
        """The registry to use: ``--registry``, else the one the release's names were made for."""
        text = self.registry or header.spec.registry
        if not text:
            raise InstallError(f"{header.name} {header.version} was built without a registry (local names only); "
                               "pass --registry HOST[:PORT]/PROJECT")
        try:
            return Registry.parse(text)
        except ReferenceError as exc:
            raise InstallError(str(exc)) from None

    def credentials(self, host: str) -> Optional[Credentials]:
        """The credentials given, else those ``docker login HOST`` stored, else none."""
        if self.username is not None:
            if self.password is None:
                raise InstallError("--username needs the password on stdin: add --password-stdin "
                                   "(a password on the command line would show in the process list)")
            return Credentials(self.username, self.password)
        if self.password is not None:
            raise InstallError("--password-stdin needs --username")
        return docker_credentials(host)

    def connect(self, header: BundleHeader) -> RegistryClient:
        """A client of the registry (not contacted yet)."""
        registry = self.target(header)
        if self.ca_file is not None:
            if not self.ca_file.is_file():
                raise InstallError(f"--ca-file {self.ca_file}: no such file")
            cas, client_cert = [self.ca_file], engine_trust(registry.host)[1]
        else:
            cas, client_cert = engine_trust(registry.host)
        try:
            return RegistryClient(registry, self.credentials(registry.host),
                                  Connection(ca_files=cas, client_cert=client_cert, insecure=self.insecure))
        except RegistryError as exc:
            raise InstallError(str(exc)) from None


def read_password(stream) -> str:
    """The password from stdin: the first line, without its line end (bounded)."""
    text = stream.read(MAX_PASSWORD + 1)
    if len(text) > MAX_PASSWORD:
        raise InstallError(f"--password-stdin: more than {MAX_PASSWORD} characters on stdin")
    line = text.split("\n", 1)[0].rstrip("\r")
    if not line:
        raise InstallError("--password-stdin: stdin was empty")
    return line
