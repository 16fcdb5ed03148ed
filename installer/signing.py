"""Ed25519 keys and signatures for bundle headers.

Keys are PEM files: the private key PKCS#8 (written mode 0600), the public key
SubjectPublicKeyInfo. A key's fingerprint is ``ed25519:`` followed by the first
16 bytes of the SHA-256 of its raw 32-byte public key, in hex.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)


KEY_SUFFIXES = (".pub", ".pem")  # the files of a folder of keys that are read as keys


class KeyFileError(Exception):
    """A key file is missing, unreadable or not an Ed25519 key."""


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """Return the short, stable fingerprint of a public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:32]


def generate_keypair(private_path: Path, public_path: Optional[Path] = None, *, overwrite: bool = False) -> tuple[Path, Path, str]:
    """Write a new Ed25519 key pair; return (private path, public path, fingerprint).

    The private key file is created with mode 0600 before any byte is written,
    so the secret is never readable by others, even briefly. Both files are
    created new (never written through a symlink, even a dangling one); with
    ``overwrite`` an existing regular file is removed first, a symlink refused.
    """
    private_path = Path(private_path)
    public_path = Path(public_path) if public_path else private_path.with_suffix(".pub")
    for path in (private_path, public_path):
        if path.is_symlink():
            raise KeyFileError(f"{path} is a symlink; refusing to write a key through it (remove it, or choose another path)")
        if path.exists() and not overwrite:
            raise KeyFileError(f"{path} already exists; refusing to overwrite a key (pass --force to replace it)")
        if path.exists() and not path.is_file():
            raise KeyFileError(f"{path} exists and is not a regular file; refusing to replace it")
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new_file(private_path, pem, 0o600, overwrite)
    _write_new_file(public_path, public_pem, 0o644, overwrite)
    return private_path, public_path, fingerprint(key.public_key())


def _write_new_file(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Create ``path`` with ``mode`` and write ``data``; nothing that exists there (a symlink above all) is followed."""
    if overwrite and path.exists() and not path.is_symlink():
        path.unlink()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except FileExistsError:
        raise KeyFileError(f"{path} exists (or appeared, or is a symlink); refusing to write a key there") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create the key file ({exc.strerror})") from None
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load an Ed25519 private key from a PEM file, with a clear error."""
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a PEM private key ({exc}); create one with 'airgap-bundle keygen'") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: the key is not an Ed25519 key; create one with 'airgap-bundle keygen'")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load an Ed25519 public key (or derive it from a private key file)."""
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise KeyFileError(f"{path}: not a PEM public key") from None
        key = private.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: the key is not an Ed25519 public key")
    return key


def load_public_keys(paths: Iterable[Path]) -> list[Ed25519PublicKey]:
    """Load every public key in ``paths`` (files, or folders of ``*.pub``/``*.pem``)."""
    keys: list[Ed25519PublicKey] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if child.suffix in KEY_SUFFIXES and child.is_file():
                    keys.append(load_public_key(child))
        else:
            keys.append(load_public_key(path))
    return keys


def sign(private_key: Ed25519PrivateKey, message: bytes) -> bytes:
    """Sign ``message``; return the 64-byte signature."""
    return private_key.sign(message)


def find_signer(message: bytes, signature: bytes, keys: Sequence[Ed25519PublicKey]) -> Optional[Ed25519PublicKey]:
    """Return the key among ``keys`` whose signature over ``message`` checks, else None."""
    for key in keys:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return key
    return None


def _read_key_file(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file ({exc.strerror})") from None
