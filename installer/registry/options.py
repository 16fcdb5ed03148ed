"""The command-line options that say how to reach the site registry (shared by push, install, preflight)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional

import click

from .access import RegistryAccess, read_password


def registry_options(command: Callable) -> Callable:
    """``--registry``, ``--ca-file``, ``--username``, ``--password-stdin``, ``--insecure-registry``."""
    for decorator in reversed([
        click.option("--registry", "registry", metavar="HOST[:PORT]/PROJECT",
                     help="The site registry and project (default: the one the release was built for, e.g. "
                          "aiharbor.msxf.local/aihpc)."),
        click.option("--ca-file", type=click.Path(dir_okay=False, path_type=Path),
                     help="The site's CA certificate (PEM) for the registry's TLS. Default: what the Docker engine "
                          "uses, /etc/docker/certs.d/HOST/*.crt, plus the system's CAs."),
        click.option("--username", "-u", metavar="NAME",
                     help="Registry user (a Harbor robot account: 'robot$project+name', quoted). Default: what "
                          "'docker login HOST' stored."),
        click.option("--password-stdin", is_flag=True, help="Read the password (or robot secret) from stdin."),
        click.option("--insecure-registry", is_flag=True,
                     help="The registry speaks plain HTTP (no TLS). Only for a registry that really has no TLS."),
    ]):
        command = decorator(command)
    return command


def registry_access(registry: Optional[str], ca_file: Optional[Path], username: Optional[str], password_stdin: bool,
                    insecure_registry: bool) -> RegistryAccess:
    """The options as a RegistryAccess (the password read from stdin now)."""
    password = read_password(sys.stdin) if password_stdin else None
    return RegistryAccess(registry=registry, ca_file=ca_file, username=username, password=password,
                          insecure=insecure_registry)
