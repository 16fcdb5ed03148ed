"""What every ``airgap-install`` command shares: progress lines, error reporting, the --pubkey option."""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, Sequence

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import engine as engine_ops
from .archive import VerificationError
from .archive.reader import ArchiveFormatError
from .compose import ComposeError
from .errors import InstallError
from .lock import LockError
from .signing import KeyFileError
from .site import SiteError
from .trust import SYSTEM_TRUST_DIR, trusted_keys

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    VerificationError, ArchiveFormatError, KeyFileError, SiteError, ComposeError, engine_ops.EngineError, LockError,
)


def say(text: str) -> None:
    """Progress line on stderr (stdout is kept for results)."""
    click.echo(text, err=True)


def friendly_errors(command: Callable) -> Callable:
    """Turn the tool's own errors into a clear message and a non-zero exit; never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except InstallError as exc:
            click.echo(f"airgap-install: error: {exc}", err=True)
            for detail in exc.details:
                click.echo(f"  - {detail}", err=True)
            sys.exit(exc.exit_code)
        except EXPECTED_ERRORS as exc:
            click.echo(f"airgap-install: error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("airgap-install: interrupted", err=True)
            sys.exit(130)

    return wrapper


def keys_to_trust(pubkeys: Sequence[Path], allow_untrusted: bool = False) -> list[Ed25519PublicKey]:
    """The keys --pubkey names (or the system's trusted keys); none at all is refused unless the signature is waived."""
    keys = trusted_keys(pubkeys)
    if not keys and not allow_untrusted:
        raise InstallError(f"no trusted public key: pass --pubkey FILE, or put the release key in {SYSTEM_TRUST_DIR}")
    return keys


def pubkey_option(command: Callable) -> Callable:
    return click.option(
        "--pubkey", "-p", "pubkeys", multiple=True, type=click.Path(exists=True, path_type=Path),
        help=f"Trusted public key (PEM) or folder of keys; repeatable. Default: the keys in {SYSTEM_TRUST_DIR}.",
    )(command)


