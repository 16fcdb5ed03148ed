"""``airgap-install push`` and ``export-release``: the site registry's half of the command line."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from .cli_common import friendly_errors, keys_to_trust, pubkey_option, say
from .registry.blobs import DEFAULT_ENCODING, DEFAULT_GZIP_LEVEL, ENCODINGS
from .registry.options import registry_access, registry_options
from .registry.push import PushSettings, describe, push_archive
from .release_only import export_release


@click.command("push")
@click.argument("archive", type=click.Path(path_type=Path))
@pubkey_option
@registry_options
@click.option("--layer-compression", type=click.Choice(ENCODINGS), default=DEFAULT_ENCODING, show_default=True,
              help="How layers travel and are stored: gzip (every engine pulls it, Docker 20.10 included), none "
                   "(the layer tars as they are: no compression work, more bytes), zstd (the archive's own frames "
                   "as they are: no compression work; needs Docker 23+ or containerd to pull).")
@click.option("--gzip-level", type=click.IntRange(0, 9), default=DEFAULT_GZIP_LEVEL, show_default=True,
              help="gzip level (lower is faster). Layers are compressed with Intel's ISA-L, whose levels are 0-3 "
                   "(a higher level takes 3); level 1 is about zlib's level 1 in size at several times its speed.")
@click.option("--jobs", "-j", type=click.IntRange(1, 32), default=4, show_default=True, help="Blobs uploaded at once.")
@click.option("--insecure-skip-signature", "allow_untrusted", is_flag=True,
              help="DANGER: accept an unsigned archive or one signed by an unknown key (digests are still checked).")
@friendly_errors
def push_command(archive: Path, pubkeys, layer_compression: str, gzip_level: int, jobs: int, allow_untrusted: bool,
                 **registry_flags) -> None:
    """Push every image of a verified release into the site registry (Harbor), straight from the archive.

    \b
      airgap-install push aimatrix-v0.3.5.tar.zst --pubkey release.pub \\
          --username 'robot$aihpc+ci' --password-stdin < robot.secret
    Every name the stack uses goes to the registry (aliases and runtime names such as
    ai-infra-singleuser:v0.3.5 included), under the release's registry or --registry.
    Nothing goes through 'docker load' and nothing is copied to disk. Names the registry
    already holds are left alone; layers it holds are not sent again; an interrupted push
    run again sends only what is missing. Then install any host with
    'airgap-install install --from-registry'.
    """
    keys = keys_to_trust(pubkeys, allow_untrusted)
    if allow_untrusted:
        say("WARNING: --insecure-skip-signature: the archive's origin will NOT be checked")
    access = registry_access(**registry_flags)
    result = push_archive(archive, keys, access, PushSettings(encoding=layer_compression, gzip_level=gzip_level,
                                                              jobs=jobs), say,
                          allow_untrusted=allow_untrusted)
    say(f"push done: {describe(result)}")


@click.command("export-release")
@click.argument("archive", type=click.Path(path_type=Path))
@pubkey_option
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Where to write it (default: NAME-VERSION.release.tar.zst beside the archive).")
@friendly_errors
def export_release_command(archive: Path, pubkeys, output: Optional[Path]) -> None:
    """Write the release without its images: a small archive for hosts that install --from-registry.

    The signed header and its signature are copied as they are (the release stays signed by
    its builder; no key is needed here), with the release files; the images stay in the site
    registry ('airgap-install push').
    """
    written = export_release(archive, keys_to_trust(pubkeys), output, say)
    click.echo(str(written))
