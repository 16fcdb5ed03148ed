"""Which public keys the installer trusts: the ones given, else the system's trusted-keys folder."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .signing import load_public_keys

SYSTEM_TRUST_DIR = Path(os.environ.get("AIRGAP_TRUSTED_KEYS", "/etc/airgap-install/trusted-keys"))


def trusted_keys(given: Sequence[Path]) -> list[Ed25519PublicKey]:
    """Keys from ``--pubkey`` if any were given, else every ``*.pub``/``*.pem`` in the system folder."""
    if given:
        return load_public_keys(given)
    if SYSTEM_TRUST_DIR.is_dir():
        return load_public_keys([SYSTEM_TRUST_DIR])
    return []
