"""``airgap-bundle``: turn a release manifest into one signed archive for air-gapped sites."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Callable, Optional

import click

from installer.archive import ArchiveWriteError, VerificationError, read_header, verify_archive
from installer.archive.parts import parse_size, read_index, split_archive
from installer.archive.reader import ArchiveFormatError
from installer.signing import KeyFileError, generate_keypair, load_public_keys

from .build import BuildError, BuildRequest, Release, build, open_manifest, resolve, source_root
from .compose import ComposeError
from .composefile import ComposeFileError
from .starter import manifest_text, starter_manifest
from .engine import EngineError, connect
from .kit import KitError, build_kit
from .lockfile import LockfileError, default_lock_path, lock_from_plan, write_lock
from .manifest import ManifestError
from .plan import NamingCollision
from .progress import Reporter
from .refs import ReferenceError_

EXPECTED_ERRORS = (
    ManifestError, NamingCollision, ComposeError, ComposeFileError, EngineError, BuildError, KeyFileError, LockfileError,
    VerificationError, ArchiveWriteError, ArchiveFormatError, ReferenceError_, KitError,
)


def friendly_errors(command: Callable) -> Callable:
    """Turn the tool's own errors into one clear line and exit 1; never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except EXPECTED_ERRORS as exc:
            click.echo(f"airgap-bundle: error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("airgap-bundle: interrupted; no partial archive was left behind", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="airgap-compose", prog_name="airgap-bundle")
def main() -> None:
    """Bundle a docker-compose release for air-gapped sites.

    \b
    Typical use, on a connected machine with Docker:
      airgap-bundle keygen -o keys/release.key
      airgap-bundle resolve manifests/aimatrix.yaml --registry aiharbor.msxf.local/aihpc --tag v0.3.5
      airgap-bundle build   manifests/aimatrix.yaml --registry aiharbor.msxf.local/aihpc --tag v0.3.5 \\
                            --source ~/src/ai-infra-matrix --key keys/release.key -o dist
      airgap-bundle verify  dist/aimatrix-v0.3.5.tar.zst --pubkey keys/release.pub

    The engine is the one DOCKER_HOST names (default: the local socket).
    """


def _plan_options(command: Callable) -> Callable:
    for decorator in reversed([
        click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path), required=False),
        click.option("--compose", "compose_file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Bundle this compose file without a manifest (as 'init' would write one); instead of MANIFEST."),
        click.option("--name", help="With --compose: the release name (default: the compose file's folder name)."),
        click.option("--source", "-s", "source_dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Checkout of the application: holds the compose file the manifest names and every build "
                          "context (default: the current folder; with --compose, the compose file's folder)."),
        click.option("--registry", "-r", help="Site registry prefix (default: the manifest's naming.registry), e.g. aiharbor.msxf.local/aihpc."),
        click.option("--tag", "-t", help="Release tag given to every site image (default: the manifest's bundle.version)."),
        click.option("--platform", help="Target platform os/arch (default: the engine's own), e.g. linux/amd64."),
        click.option("--with-build-bases", is_flag=True, help="Also ship the images source builds start FROM (for sites that rebuild)."),
        click.option("--lock", "lock_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="Lockfile path (default: MANIFEST with .lock.json)."),
    ]):
        command = decorator(command)
    return command


@main.command("resolve")
@_plan_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--offline", is_flag=True, help="Do not ask the engine or registry; print names only, write no lockfile.")
@click.option("--explain", is_flag=True, help="Show what the overlay and the rewrite change per service, and the site settings.")
@friendly_errors
def resolve_command(manifest: Optional[Path], compose_file, name, source_dir, registry, tag, platform, with_build_bases,
                    lock_path, as_json, offline, explain) -> None:
    """Print the plan: one row per image (kind, upstream, site name, digest/ID); write the lockfile.

    The plan comes from the application's compose file (named by the manifest,
    inside --source): every service's image must be a dependency, a source
    build (its build: section), an alias or a runtime name, else it is refused.
    Digests come from the registry (through the engine) and image IDs from the
    engine when it already holds an image. The lockfile pins dependency images
    by digest so that a later build pulls exactly the same bytes.

    --explain shows, per service, what the overlay and the rewrite change
    against the application's compose file, and the site's variables and secrets.
    """
    spec = open_manifest(manifest, compose_file, source_dir, name=name, tag=tag, registry=registry)
    client = None if offline else connect()
    release = resolve(spec, source_root(spec, compose_file, source_dir), client=client, registry=registry, tag=tag,
                      platform=platform, with_build_bases=with_build_bases)
    plan = release.plan
    if explain:
        _print_explain(release, as_json)
        return
    rows = [
        {"kind": e.kind, "upstream": e.upstream, "target": e.target, "digest": e.digest, "image_id": e.image_id}
        for e in plan.entries
    ]
    if as_json:
        click.echo(json.dumps({"bundle": plan.manifest.name, "tag": plan.tag, "platform": plan.platform, "images": rows}, indent=2))
    else:
        widths = [max(len(r[k] or "-") for r in rows + [{"kind": "KIND", "upstream": "UPSTREAM", "target": "TARGET"}]) for k in ("kind", "upstream", "target")]
        click.echo(f"{'KIND':<{widths[0]}}  {'UPSTREAM':<{widths[1]}}  {'TARGET':<{widths[2]}}  DIGEST / IMAGE ID")
        for r in rows:
            known = r["digest"] or (r["image_id"] and f"id {r['image_id']}") or "(not yet known)"
            click.echo(f"{r['kind']:<{widths[0]}}  {r['upstream']:<{widths[1]}}  {r['target']:<{widths[2]}}  {known}")
    for warning in release.compose.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not offline:
        path = lock_path or default_lock_path(manifest or spec.path)
        write_lock(lock_from_plan(plan), path)
        click.echo(f"lockfile written: {path}", err=True)


def _print_explain(release: Release, as_json: bool) -> None:
    compose = release.compose
    variables = {n: {"default": v.default, **({"template": v.template} if v.template else {}),
                     **({"required": True} if v.required else {})} for n, v in compose.variables.items()}
    secrets = {n: {"length": s.length, "alphabet": s.alphabet} for n, s in compose.secrets.items()}
    if as_json:
        click.echo(json.dumps({"compose_file": str(release.app.compose_path), "services": compose.changes,
                               "variables": variables, "secrets": secrets, "shipped_files": compose.files,
                               "state_dirs": compose.state_dirs, "env_files": compose.env_files,
                               "warnings": compose.warnings}, indent=2))
        return
    click.echo(f"from {release.app.compose_path}" + (f" with overlay {release.manifest.compose_overlay}"
                                                      if release.manifest.compose_overlay else ""))
    for service, changes in compose.changes.items():
        profile = compose.profiles.get(service)
        click.echo(f"\n{service}" + (f"  (profiles: {', '.join(profile)}; not started by default)" if profile else ""))
        for change in changes or ["(as written)"]:
            click.echo(f"  {change}")
    click.echo(f"\nsite variables ({len(variables)}): " + ", ".join(
        f"{n}={v['default']!r}" if "template" not in v else f"{n}=<from {v['template']}>" for n, v in variables.items()))
    click.echo(f"site secrets, generated on the host ({len(secrets)}): " + ", ".join(secrets))
    if compose.files:
        click.echo(f"shipped files ({len(compose.files)}): " + ", ".join(compose.files))
    for warning in compose.warnings:
        click.echo(f"warning: {warning}")


@main.command("build")
@_plan_options
@click.option("--key", "-k", "key_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Ed25519 private key (PEM) that signs the archive (and the kit's SHA256SUMS); see 'airgap-bundle keygen'.")
@click.option("--output", "-o", "output_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("dist"), show_default=True,
              help="Folder for NAME-TAG.tar.zst.")
@click.option("--no-lock", is_flag=True, help="Ignore the lockfile's pins and pull the newest upstream images.")
@click.option("--no-pull", is_flag=True, help="Use the dependency images the engine already has (checked for platform and lock); never pull.")
@click.option("--level", type=click.IntRange(1, 19), default=3, show_default=True, help="zstd compression level.")
@click.option("--since", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a delta against a previous release: its archive, or the lockfile its build wrote. "
                   "The delta leaves out every layer that release has; the site must have it installed.")
@click.option("--split", "split_size", metavar="SIZE",
              help="Write the archive as parts of at most SIZE (e.g. 700M, 4G) with a sha256 index, for removable media.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Cache of compressed layers reused by the next build (default: $AIRGAP_BUNDLE_CACHE or "
                   "~/.cache/airgap-bundle/members). Safe to delete.")
@click.option("--no-cache", is_flag=True, help="Compress everything afresh and keep nothing for the next build.")
@click.option("--kit/--no-kit", default=True, show_default=True,
              help="Also write the offline installer kit (airgap-install-kit-VERSION/) beside the archive.")
@click.option("--plain", is_flag=True, help="Plain progress lines even on a terminal.")
@friendly_errors
def build_command(manifest: Optional[Path], compose_file, name, source_dir, registry, tag, platform, with_build_bases, lock_path,
                  key_path, output_dir,
                  no_lock, no_pull, level, since, split_size, cache_dir, no_cache, kit, plain) -> None:
    """Pull, build, retag, derive the compose config and write one signed archive.

    \b
      airgap-bundle build manifests/aimatrix.yaml --source ~/src/ai-infra-matrix --key keys/release.key
      airgap-bundle build --compose ~/src/app/compose.yaml --tag v1.2.0 --registry harbor.lab/app --key keys/release.key

    Dependency images are pulled (by digest when the lockfile pins them) for
    --platform; a pulled image of another platform is refused. Services with a
    build: section in the application's compose file are built from --source
    with its context, dockerfile, target and args (the manifest's sources may
    override them). Every image is tagged with its site name, the production
    compose config is derived from the application's compose file (images
    rewritten, build: dropped, ${VAR} kept as site variables, the overlay
    applied), and the images are streamed from the engine straight into
    OUTPUT/NAME-TAG.tar.zst, signed with --key.

    \b
    Also written unless asked not to: the offline installer kit (--no-kit).
    For an upgrade over a slow link: --since PREVIOUS writes a delta holding
    only the layers the previous release lacks; --split 700M cuts the archive
    into parts for removable media (install from the first part or the folder).
    """
    part_size = None
    if split_size:
        try:
            part_size = parse_size(split_size)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--split") from None
    reporter = Reporter(force_plain=plain)
    request = BuildRequest(
        manifest_path=manifest, compose_file=compose_file, name=name, source_dir=source_dir, key_path=key_path,
        output_dir=output_dir, registry=registry,
        tag=tag, platform=platform, with_build_bases=with_build_bases, lock_path=lock_path, use_lock=not no_lock, level=level,
        since=since, pull=not no_pull, use_cache=not no_cache, cache_dir=cache_dir,
    )
    archive = build(request, reporter)
    if part_size:
        index = split_archive(archive, part_size)
        parts = read_index(index)
        reporter.line(f"split into {len(parts)} part(s) of at most {split_size}; index {index}")
        archive = index.with_name(parts[0].name)
    if kit:
        reporter.line(f"offline installer kit: {build_kit(output_dir, key_path=key_path, reporter=reporter)}")
    click.echo(str(archive))


@main.command("init")
@click.argument("compose_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--output", "-o", "output", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the manifest (default: NAME.yaml in the current folder).")
@click.option("--name", help="Release name (default: the compose file's folder name, as compose names projects).")
@click.option("--version", "version", default="v0.1.0", show_default=True, help="Release version (the default --tag).")
@click.option("--registry", "-r", default="", help="Site registry prefix, e.g. aiharbor.msxf.local/aihpc.")
@click.option("--source", "-s", "source_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Checkout root the compose file lives in (default: the compose file's folder).")
@click.option("--env-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Env file with the defaults of ${VAR} (default: .env beside the compose file, if any).")
@click.option("--force", is_flag=True, help="Replace an existing manifest.")
@friendly_errors
def init_command(compose_file: Path, output: Optional[Path], name: Optional[str], version: str, registry: str,
                 source_dir: Optional[Path], env_file: Optional[Path], force: bool) -> None:
    """Write a starter release manifest for any compose application.

    \b
      airgap-bundle init ~/src/app/compose.yaml --registry harbor.lab/app --version v1.0.0 -o manifests/app.yaml
      airgap-bundle resolve manifests/app.yaml --source ~/src/app --explain
      airgap-bundle build   manifests/app.yaml --source ~/src/app --key keys/release.key

    Dependencies come from the services' image: lines, sources from their
    build: sections, site variables from ${VAR} references and the env file,
    secrets from secret-looking names (PASSWORD, TOKEN, SECRET, *_KEY) or
    placeholder values (CHANGE_ME). Nothing the compose file defines is copied:
    it is read again at every build. Edit the result to add patterns,
    descriptions, endpoints or an overlay.
    """
    data = starter_manifest(compose_file, source_dir=source_dir, name=name, version=version, registry=registry,
                            env_file=env_file)
    path = output or Path(f"{data['bundle']['name']}.yaml")
    if path.exists() and not force:
        raise BuildError(f"{path} exists; pass --force to replace it, or -o another path")
    from .manifest import manifest_from_data
    manifest_from_data(data, path.resolve())  # what init writes must load
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(manifest_text(data, compose_file))
    source = (source_dir or Path(compose_file).parent)
    click.echo(f"wrote {path}: {len(data['dependencies'])} dependencies ({', '.join(data['dependencies']) or 'none'}), "
               f"{len(data['sources'])} built from source ({', '.join(data['sources']) or 'none'}), "
               f"{len(data['site']['variables'])} site variables, {len(data['site']['secrets'])} secrets "
               f"({', '.join(data['site']['secrets']) or 'none'})")
    click.echo(f"next: airgap-bundle resolve {path} --source {source} --explain")


@main.command("keygen")
@click.option("--output", "-o", "private_path", type=click.Path(dir_okay=False, path_type=Path), default=Path("keys/release.key"),
              show_default=True, help="Private key file (mode 0600); the public key goes beside it as .pub.")
@click.option("--force", is_flag=True, help="Replace existing key files.")
@friendly_errors
def keygen_command(private_path: Path, force: bool) -> None:
    """Create an Ed25519 signing key pair (PEM).

    Keep the private key on the build machine; copy the .pub file to each
    site (airgap-install --pubkey, or its trusted-keys folder).
    """
    private, public, fp = generate_keypair(private_path, overwrite=force)
    click.echo(f"private key: {private} (mode 0600, keep it secret)")
    click.echo(f"public key:  {public} (give this to sites)")
    click.echo(f"fingerprint: {fp}")


@main.command("inspect")
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the whole signed header as JSON.")
@friendly_errors
def inspect_command(archive: Path, as_json: bool) -> None:
    """Show what an archive holds: images, sizes, services, what changed per service, signer. Reads only its header.

    Nothing is verified here (see 'verify'): the signer shown is the one the
    header claims.
    """
    header, raw, signature = read_header(archive)
    if as_json:
        data = json.loads(raw)
        data["signed"] = signature is not None
        data["archive_size"] = archive.stat().st_size
        click.echo(json.dumps(data, indent=2))
        return
    release = header.release
    click.echo(f"bundle:    {header.name} {header.version} ({header.platform})")
    click.echo(f"created:   {header.created} by airgap-bundle {header.tool_version}")
    click.echo(f"signer:    {header.signer if signature else 'UNSIGNED'} (claimed; run 'verify' to check)")
    click.echo(f"size:      {archive.stat().st_size / 1e6:.1f} MB compressed, {header.total_size() / 1e6:.1f} MB unpacked, "
               f"{len(header.members)} members")
    click.echo(f"images:    {len(header.images)} distinct, {sum(len(i.targets) for i in header.images)} names, "
               f"{len({d for i in header.images for d in i.diff_ids})} layers")
    for image in header.images:
        click.echo(f"  {image.id[7:19]}  {image.size / 1e6:8.1f} MB  {', '.join(image.targets)}")
    if release:
        click.echo(f"services:  {', '.join(release.get('services', []))}")
        ports = ", ".join(f"{p['spec']} ({p['service']})" for p in release.get("ports", []))
        click.echo(f"ports:     {ports or 'none'}")
        click.echo(f"secrets:   {len(release.get('secrets', {}))} generated on the site: {', '.join(release.get('secrets', {}))}")
        changes = release.get("changes") or {}
        if changes:
            click.echo("changes against the application's compose file:")
            for service, items in changes.items():
                click.echo(f"  {service}: " + ("; ".join(items) if items else "as written"))


@main.command("verify")
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--pubkey", "-p", "pubkeys", multiple=True, required=True, type=click.Path(exists=True, path_type=Path),
              help="Trusted public key (PEM), or a folder of them; repeatable.")
@friendly_errors
def verify_command(archive: Path, pubkeys: tuple[Path, ...]) -> None:
    """Check the signature, then every member's size and sha256. Exit 1 naming what failed."""
    keys = load_public_keys(pubkeys)
    try:
        with verify_archive(archive, keys) as verified:
            pass
    except VerificationError as exc:
        click.echo(f"airgap-bundle: verify FAILED: {archive}", err=True)
        for problem in exc.problems:
            click.echo(f"  - {problem}", err=True)
        sys.exit(1)
    header = verified.header
    click.echo(f"OK: {archive}: signed by {verified.signer}; {len(header.members)} members, "
               f"{header.total_size() / 1e6:.1f} MB checked")


@main.command("kit")
@click.option("--output", "-o", "output_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("dist"),
              show_default=True, help="Folder for airgap-install-kit-VERSION/ (a kit of that version there is replaced).")
@click.option("--key", "-k", "key_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The release key (Ed25519 private key, PEM; the one that signs archives): signs the kit's SHA256SUMS. "
                   "Required unless --unsigned.")
@click.option("--unsigned", is_flag=True,
              help="Write the kit without a signature: its install.sh refuses it unless run with "
                   "--insecure-skip-kit-signature.")
@click.option("--python", "python_versions", multiple=True, metavar="X.Y",
              help="CPython version of the site hosts; repeatable. Default: 3.9 3.10 3.11 3.12 3.13.")
@click.option("--platform", "platforms", multiple=True, metavar="TAG",
              help="Wheel platform tag of the site hosts; repeatable. Default: manylinux2014_x86_64 "
                   "(glibc >= 2.17 on x86_64; e.g. manylinux2014_aarch64 for ARM).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where downloaded wheels are kept for the next kit. Default: ~/.cache/airgap-bundle/wheels.")
@click.option("--refresh", is_flag=True, help="Ask the package index for newer releases even when the cache has every wheel.")
@click.option("--no-compose", is_flag=True, help="Leave out compose v2 (hosts must then bring their own compose).")
@click.option("--no-standalone", is_flag=True, help="Leave out the standalone airgap-install (hosts must then have python3).")
@click.option("--plain", is_flag=True, help="Plain progress lines even on a terminal.")
@friendly_errors
def kit_command(output_dir: Path, key_path: Optional[Path], unsigned: bool, python_versions: tuple[str, ...],
                platforms: tuple[str, ...], cache_dir: Optional[Path], refresh: bool, no_compose: bool, no_standalone: bool,
                plain: bool) -> None:
    """Write the offline installer kit that installs airgap-install on an air-gapped host.

    \b
    On this machine (network to the package index, or a warm cache):
      airgap-bundle kit --key keys/release.key -o dist
      airgap-bundle kit --key keys/release.key --python 3.9 --python 3.11 --platform manylinux2014_aarch64
    \b
    On the site (python3 >= 3.9 only: no network, no pip, no venv), as root:
      sh airgap-install-kit-VERSION/install.sh --fingerprint ed25519:... [--prefix /opt/airgap-install]
      airgap-install --help

    The kit is signed with the release key, the one that signs archives:
    SHA256SUMS.sig is the raw 64-byte Ed25519 signature of SHA256SUMS,
    release.pub the key. install.sh checks it before anything else, against
    the fingerprint the site gives (--fingerprint; the key's owner has it from
    'airgap-bundle keygen', and this command prints it), or, on a terminal,
    one the site confirms. Without --key the kit is refused here, unless
    --unsigned; install.sh then refuses it unless --insecure-skip-kit-signature.

    The kit holds wheels/ (this project, every runtime dependency for each
    --python x --platform, and pip itself), compose/ (compose v2, the
    official static x86_64 binary, used on hosts that have no compose v2
    plugin: the host's own plugins are never touched), standalone/ (a
    one-file airgap-install made with PyInstaller, installed on hosts
    without a usable python3; it needs a C library at least as new as this
    machine's), install.sh,
    README.txt, release.pub, SHA256SUMS and SHA256SUMS.sig.
    It is made from this installed copy of airgap-compose (a regular
    pip install is enough; no source checkout needed). install.sh
    runs pip from the kit's own pip wheel with no index, installs into
    PREFIX/lib, writes the command PREFIX/bin/airgap-install and links it
    into /usr/local/bin; running it again replaces the install.

    Wheels are taken from --cache-dir when it has them, so a second kit
    needs no network and takes seconds; the index is asked only for what
    the cache lacks (or for everything with --refresh). Prints the kit's path.
    """
    if key_path is None and not unsigned:
        raise KitError("a kit is signed with the release key, the one that signs archives: pass --key "
                       "keys/release.key (see 'airgap-bundle keygen'), or --unsigned for a kit whose install.sh "
                       "refuses it unless run with --insecure-skip-kit-signature")
    if key_path is not None and unsigned:
        raise KitError("--key and --unsigned: give one of them")
    if unsigned:
        click.echo("airgap-bundle: warning: --unsigned: the kit is not signed; install.sh refuses it unless run with "
                   "--insecure-skip-kit-signature, and nothing proves to the site who made it", err=True)
    kit = build_kit(
        output_dir, key_path=key_path, cache_dir=cache_dir, reporter=Reporter(force_plain=plain), refresh=refresh, with_compose=not no_compose,
        with_standalone=not no_standalone,
        **({"python_versions": python_versions} if python_versions else {}),
        **({"platforms": platforms} if platforms else {}),
    )
    click.echo(str(kit))


if __name__ == "__main__":  # pragma: no cover
    main()
