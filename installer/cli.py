"""``airgap-install``: install and run a signed bundle on an isolated host."""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable

import click

from .archive import VerificationError, verify_archive
from .archive.reader import ArchiveFormatError
from .signing import KeyFileError
from .trust import trusted_keys

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (VerificationError, ArchiveFormatError, KeyFileError)


def friendly_errors(command: Callable) -> Callable:
    """Turn the tool's own errors into a clear message and exit 1; never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except EXPECTED_ERRORS as exc:
            click.echo(f"airgap-install: error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("airgap-install: interrupted", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="airgap-compose", prog_name="airgap-install")
def main() -> None:
    """Install a signed compose bundle on a host with no network, and run it.

    The engine is the one DOCKER_HOST names (default: the local socket).
    """


def pubkey_option(command: Callable) -> Callable:
    return click.option(
        "--pubkey", "-p", "pubkeys", multiple=True, type=click.Path(exists=True, path_type=Path),
        help="Trusted public key (PEM) or folder of keys; repeatable. Default: the keys in /etc/airgap-install/trusted-keys.",
    )(command)


@main.command("verify")
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@pubkey_option
@friendly_errors
def verify_command(archive: Path, pubkeys: tuple[Path, ...]) -> None:
    """Check the archive's signature and every member's sha256; change nothing."""
    keys = trusted_keys(pubkeys)
    try:
        verified = verify_archive(archive, keys)
    except VerificationError as exc:
        click.echo(f"airgap-install: verify FAILED: {archive}", err=True)
        for problem in exc.problems:
            click.echo(f"  - {problem}", err=True)
        sys.exit(1)
    header = verified.header
    click.echo(f"OK: {header.name} {header.version}: signed by {verified.signer}; {len(header.members)} members checked")


if __name__ == "__main__":  # pragma: no cover
    main()
