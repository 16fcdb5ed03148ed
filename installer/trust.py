"""Which public keys the installer trusts: the ones given, else the system's trusted-keys folder.

The folder and every key in it must be owned by root (or the running user) and writable by
no one else; otherwise anyone who could write there could make the installer trust their key.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .signing import KEY_SUFFIXES, KeyFileError, load_public_keys

SYSTEM_TRUST_DIR = Path(os.environ.get("AIRGAP_TRUSTED_KEYS", "/etc/airgap-install/trusted-keys"))


def trusted_keys(given: Sequence[Path]) -> list[Ed25519PublicKey]:
    """Keys from ``--pubkey`` if any were given, else every ``*.pub``/``*.pem`` in the system folder."""
    if given:
        return load_public_keys(given)
    if SYSTEM_TRUST_DIR.is_dir():
        check_trust_folder(SYSTEM_TRUST_DIR)
        return load_public_keys([SYSTEM_TRUST_DIR])
    return []


def check_trust_folder(folder: Path) -> None:
    """KeyFileError unless the folder and each key in it are root's (or ours) and writable by no one else."""
    _check_trust_path(folder, "folder")
    for child in sorted(folder.iterdir()):
        if child.suffix in KEY_SUFFIXES and child.is_file():
            _check_trust_path(child, "key")


def _check_trust_path(path: Path, kind: str) -> None:
    info = path.stat()
    owners = {0, os.geteuid()}
    if info.st_uid not in owners:
        raise KeyFileError(f"trusted {kind} {path} is owned by uid {info.st_uid}, not by root: anyone who owns it can "
                           f"make this installer trust a key; fix it with: chown root:root {path}")
    if info.st_mode & 0o022:
        raise KeyFileError(f"trusted {kind} {path} is writable by {'others' if info.st_mode & 0o002 else 'its group'} "
                           f"(mode {stat.S_IMODE(info.st_mode):04o}): anyone who can write it can make this installer "
                           f"trust a key; fix it with: chmod go-w {path}")
