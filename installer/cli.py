"""``airgap-install``: install and run a signed bundle on an isolated host."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

import click

from . import engine as engine_ops
from .archive import VerificationError, verify_archive
from .compose import ComposeProject, find_compose
from .health import service_states, wait_until_ready
from .install import InstallError, InstallOptions, install, open_for_install, prefix_lock, preflight, rollback
from .runners import prepare_host_paths
from .childenv import child_environment
from .site import ENV_FILE, active_release, parse_sets, read_env, read_release_header
from .trust import trusted_keys
from .registry.access import RegistryAccess
from .cli_common import friendly_errors, keys_to_trust, pubkey_option, say
from .cli_registry import export_release_command, push_command
from .registry.options import registry_access, registry_options
from .cli_swarm import swarm_options, swarm_settings_from
from .swarm.runner import SwarmRunner, SwarmSettings, logs_argv, read_settings, remove_volumes, stack_volumes

@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="airgap-compose", prog_name="airgap-install")
def main() -> None:
    """Install a signed compose bundle on a host with no network, and run it.

    \b
    First install, then day-2:
      airgap-install preflight aimatrix-v0.3.5.tar.zst
      airgap-install install   aimatrix-v0.3.5.tar.zst --pubkey release.pub
      airgap-install status
      airgap-install logs backend --tail 50
      airgap-install restart backend
      airgap-install down

    \b
    Many hosts, one site registry (Harbor):
      airgap-install push aimatrix-v0.3.5.tar.zst --pubkey release.pub -u 'robot$aihpc+ci' --password-stdin
      airgap-install export-release aimatrix-v0.3.5.tar.zst --pubkey release.pub
      airgap-install install aimatrix-v0.3.5.release.tar.zst --pubkey release.pub --from-registry -u ... --password-stdin

    \b
    A Docker Swarm (run on a manager; every node pulls from the site registry):
      airgap-install install aimatrix-v0.3.5.release.tar.zst --pubkey release.pub --from-registry --swarm \\
          --swarm-every-node nginx -u ... --password-stdin
      airgap-install status | logs SERVICE | restart | upgrade ... | rollback | down    (they follow the Swarm)

    The engine is the one DOCKER_HOST names (default: the local socket). Images
    come from the archive, or with --from-registry from the site registry (pulled
    by digest, checked against the signed image IDs); compose never pulls.
    """


def prefix_option(command: Callable) -> Callable:
    return click.option(
        "--prefix", type=click.Path(file_okay=False, path_type=Path),
        help="Install directory (default: /opt/<bundle name>; for day-2 commands, the one installed there, "
             "or $AIRGAP_INSTALL_PREFIX).",
    )(command)


def compose_option(command: Callable) -> Callable:
    return click.option("--compose", "compose_preference", type=click.Choice(["v1", "v2", "bundled"]),
                        help="Force a compose CLI: v1 (the host's docker-compose), v2 (a v2 plugin or the kit's), or "
                             "bundled (the kit's own v2). Default: the host's v2 plugin, else the kit's v2, else the "
                             "host's docker-compose v1; preflight says which and why.")(command)


def install_options(command: Callable) -> Callable:
    for decorator in reversed([
        click.argument("archive", type=click.Path(path_type=Path)),
        pubkey_option,
        prefix_option,
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Set a site variable (or secret); repeatable."),
        click.option("--timeout", type=float, default=600, show_default=True, help="Seconds to wait for the stack to be healthy."),
        click.option("--allow-downgrade", is_flag=True, help="Install a release older than the active one (compared by signed version)."),
        click.option("--replace-same-version", is_flag=True,
                     help="Install a different archive of a version already installed, replacing that release."),
        click.option("--insecure-skip-signature", "allow_untrusted", is_flag=True,
                     help="DANGER: accept an unsigned archive or one signed by an unknown key (digests are still checked)."),
        compose_option,
        from_registry_option,
        registry_options,
        swarm_options,
    ]):
        command = decorator(command)
    return command


def from_registry_option(command: Callable) -> Callable:
    return click.option("--from-registry", is_flag=True,
                        help="Take the images from the site registry (pushed there with 'airgap-install push') instead "
                             "of the archive; a release-only archive ('airgap-install export-release') is enough. "
                             "See the registry options below.")(command)


def _access(from_registry: bool, registry_flags: dict) -> Optional[RegistryAccess]:
    given = [f"--{k.replace('_', '-')}" for k, v in registry_flags.items() if v]
    if not from_registry:
        if given:
            raise InstallError(f"{', '.join(given)} only apply with --from-registry")
        return None
    return registry_access(**registry_flags)


def _run_install(archive: Path, pubkeys, prefix, sets, timeout, allow_downgrade, replace_same_version, allow_untrusted,
                 compose_preference, require_existing: bool, from_registry: bool = False,
                 registry_flags: Optional[dict] = None, swarm: Optional[SwarmSettings] = None) -> None:
    if allow_untrusted:
        say("WARNING: --insecure-skip-signature: the archive's origin will NOT be checked")
    options = InstallOptions(archive=archive, keys=keys_to_trust(pubkeys, allow_untrusted), prefix=prefix,
                             sets=parse_sets(sets), timeout=timeout,
                             allow_untrusted=allow_untrusted, compose_preference=compose_preference,
                             allow_downgrade=allow_downgrade, require_existing=require_existing,
                             replace_same_version=replace_same_version,
                             from_registry=_access(from_registry, registry_flags or {}), swarm=swarm)
    result = install(options, say)
    what = (f"{len(result.loaded_images)} image(s) pulled from the site registry" if options.from_registry else
            f"{len(result.loaded_images)} image name(s) loaded, {result.loaded_layer_bytes / 1e6:.1f} MB of layers")
    say(f"installed {result.release.name} in {result.prefix} in {result.seconds:.1f}s ({what})")
    say("timings: " + " ".join(f"{phase}={seconds:.2f}s" for phase, seconds in result.timings.items()))
    for name, url in result.endpoints:
        click.echo(f"{name}: {url}")


@main.command("install")
@install_options
@friendly_errors
def install_command(archive: Path, pubkeys, prefix: Optional[Path], sets, timeout: float, allow_downgrade: bool,
                    replace_same_version: bool, allow_untrusted: bool, compose_preference: Optional[str],
                    from_registry: bool, swarm: bool, swarm_endpoint_mode: str, swarm_every_node: tuple[str, ...],
                    **registry_flags) -> None:
    """Check the host, verify the archive, load what is missing, write the site config, start, wait until healthy.

    \b
    In order, stopping at the first failure:
      1. preflight: engine, compose CLI, disk, published ports, platform, host paths (nothing changes)
      2. verify: signature, then every member's sha256 (nothing changes)
      3. load only the images and layers the engine lacks, streamed from the archive
         (--from-registry: pull by digest only the images the engine lacks from the site registry)
      4. tag every name the stack uses (aliases, runtime names) from the loaded image IDs
      5. write PREFIX/releases/<version>, PREFIX/current and PREFIX/site.env (0600, secrets generated here)
      6. compose up without pulling; wait for health checks and one-shot services; print the endpoints
         (--swarm: docker stack deploy stage by stage from this manager, waiting for every node's tasks)
    Installing the same archive again changes nothing; another archive of a version already installed is
    refused without --replace-same-version. Installing a newer release is an upgrade (see 'upgrade');
    an older one is refused without --allow-downgrade (versions compared by SemVer precedence).
    """
    _run_install(archive, pubkeys, prefix, sets, timeout, allow_downgrade, replace_same_version, allow_untrusted,
                 compose_preference, False, from_registry, registry_flags,
                 swarm_settings_from(swarm, swarm_endpoint_mode, swarm_every_node))


@main.command("upgrade")
@install_options
@friendly_errors
def upgrade_command(archive: Path, pubkeys, prefix: Optional[Path], sets, timeout: float, allow_downgrade: bool,
                    replace_same_version: bool, allow_untrusted: bool, compose_preference: Optional[str],
                    from_registry: bool, swarm: bool, swarm_endpoint_mode: str, swarm_every_node: tuple[str, ...],
                    **registry_flags) -> None:
    """Move an installed site to a newer release (a full or a delta archive); roll back if it fails.

    Same steps as 'install', on a host that has a release: only missing layers are loaded, the
    active release is switched atomically, compose recreates what changed, and if the new
    release does not become healthy the previous one is switched back and brought up, and
    the command says so (exit 3). Data volumes are kept throughout.
    """
    _run_install(archive, pubkeys, prefix, sets, timeout, allow_downgrade, replace_same_version, allow_untrusted,
                 compose_preference, True, from_registry, registry_flags,
                 swarm_settings_from(swarm, swarm_endpoint_mode, swarm_every_node))


@main.command("rollback")
@prefix_option
@click.option("--timeout", type=float, default=600, show_default=True, help="Seconds to wait for the stack to be healthy.")
@compose_option
@friendly_errors
def rollback_command(prefix: Optional[Path], timeout: float, compose_preference: Optional[str]) -> None:
    """Go back one release (the one active before this one) and wait until it is healthy. Data volumes are kept."""
    prefix = prefix or _default_prefix()
    target = rollback(prefix, compose_preference, timeout, say)
    say(f"rolled back to {target.name}; it is healthy")


@main.command("preflight")
@click.argument("archive", type=click.Path(path_type=Path))
@pubkey_option
@prefix_option
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Site variable as install would use it.")
@compose_option
@click.option("--insecure-skip-signature", "allow_untrusted", is_flag=True,
              help="Read an unsigned or unknown-signer archive's header anyway (its checks then prove nothing).")
@from_registry_option
@registry_options
@swarm_options
@friendly_errors
def preflight_command(archive: Path, pubkeys, prefix: Optional[Path], sets, compose_preference, allow_untrusted,
                      from_registry: bool, swarm: bool, swarm_endpoint_mode: str, swarm_every_node: tuple[str, ...],
                      **registry_flags) -> None:
    """Run the install's host checks alone; list every failed check and what to do. Changes nothing.

    The archive's signature is checked first (a few kilobytes read): the checks
    read only a header its trusted signer wrote. With --from-registry it also
    checks the site registry holds every name of the release, each by the signed
    image's digest, and that the engine can pull from it.
    """
    options = InstallOptions(archive=archive, keys=keys_to_trust(pubkeys, allow_untrusted), prefix=prefix,
                             sets=parse_sets(sets), compose_preference=compose_preference,
                             allow_untrusted=allow_untrusted, from_registry=_access(from_registry, registry_flags),
                             swarm=swarm_settings_from(swarm, swarm_endpoint_mode, swarm_every_node))
    with open_for_install(options, say) as bundle:
        say(f"preflight: {archive}")
        preflight(options, say, bundle)
    say("preflight passed")


@main.command("verify")
@click.argument("archive", type=click.Path(path_type=Path))
@pubkey_option
@friendly_errors
def verify_command(archive: Path, pubkeys: tuple[Path, ...]) -> None:
    """Check the archive's signature and every member's sha256; change nothing."""
    keys = trusted_keys(pubkeys)
    try:
        with verify_archive(archive, keys) as verified:
            header = verified.header
    except VerificationError as exc:
        click.echo(f"airgap-install: verify FAILED: {archive}", err=True)
        for problem in exc.problems:
            click.echo(f"  - {problem}", err=True)
        sys.exit(1)
    click.echo(f"OK: {header.name} {header.version}: signed by {verified.signer}; {len(header.members)} members checked")


def _installed(prefix: Optional[Path], compose_preference: Optional[str] = None):
    prefix = prefix or _default_prefix()
    release = active_release(prefix)
    if release is None:
        raise InstallError(f"nothing is installed in {prefix} (no {prefix}/current); run 'airgap-install install' first")
    header = read_release_header(release)
    if read_settings(prefix) is not None:  # a Swarm site: no compose project
        return prefix, header, None
    project = ComposeProject(find_compose(compose_preference), header.spec.project, release, prefix / ENV_FILE)
    return prefix, header, project


def _swarm_runner(prefix: Path) -> SwarmRunner:
    settings = read_settings(prefix)
    assert settings is not None
    return SwarmRunner(engine_ops.connect(), prefix / ENV_FILE, settings)


def _default_prefix() -> Path:
    if os.environ.get("AIRGAP_INSTALL_PREFIX"):
        return Path(os.environ["AIRGAP_INSTALL_PREFIX"])
    found = sorted(p.parent for p in Path("/opt").glob("*/current") if p.is_symlink())
    if len(found) == 1:
        return found[0]
    if not found:
        raise InstallError("no installation found under /opt; pass --prefix")
    raise InstallError(f"several installations under /opt ({', '.join(map(str, found))}); pass --prefix")


@main.command("status")
@prefix_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@compose_option
@friendly_errors
def status_command(prefix: Optional[Path], as_json: bool, compose_preference) -> None:
    """Show the active release and each service's state and health. Exit 1 if any service is not ready."""
    prefix, header, project = _installed(prefix, compose_preference)
    if project is None:
        states, kind = _swarm_runner(prefix).states(header), "Swarm stack"
    else:
        client = engine_ops.connect()
        states, kind = service_states(client, project.name, header.spec.services, header.spec.oneshot), "project"
    healthy = all(s.ready for s in states)
    name = header.spec.project
    if as_json:
        click.echo(json.dumps({"bundle": header.name, "version": header.version, "prefix": str(prefix),
                               "project": name, "runner": "swarm" if project is None else "compose",
                               "healthy": healthy, "services": [s.to_dict() for s in states]}, indent=2))
    else:
        click.echo(f"{header.name} {header.version} in {prefix} ({kind} {name}): {'healthy' if healthy else 'NOT healthy'}")
        width = max(len(s.service) for s in states) if states else 10
        for s in states:
            where = f"on {s.container}" if project is None and s.container else ""
            click.echo(f"  {s.service:<{width}}  {'ok ' if s.ready else 'BAD'}  {_shown(s, project is None):<14}  "
                       + (f"{where:<18}  " if project is None else "") + s.ports)
    sys.exit(0 if healthy else 1)


@main.command("logs")
@click.argument("service")
@prefix_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines.")
@click.option("--tail", "-n", type=click.IntRange(min=0), default=None, help="Only the last N lines.")
@compose_option
@friendly_errors
def logs_command(service: str, prefix: Optional[Path], follow: bool, tail: Optional[int], compose_preference) -> None:
    """Show a service's logs."""
    _, header, project = _installed(prefix, compose_preference)
    services = header.spec.services
    if service not in services:
        raise InstallError(f"no service {service!r} in {header.name} {header.version} (services: {', '.join(services)})")
    if project is None:  # every node's tasks, through the manager
        argv, cwd = logs_argv(header.spec.project, service, tail, follow), None
    else:
        argv, cwd = project.logs_argv(service, tail, follow), project.directory
    result = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, env=child_environment())
    sys.exit(result.returncode)


@main.command("down")
@prefix_option
@click.option("--remove-data-volumes", is_flag=True, help="Also DELETE the stack's data volumes (databases, repositories). Irreversible.")
@compose_option
@friendly_errors
def down_command(prefix: Optional[Path], remove_data_volumes: bool, compose_preference) -> None:
    """Stop and remove the stack's containers. Data volumes are kept unless asked."""
    prefix, header, project = _installed(prefix, compose_preference)
    with prefix_lock(prefix):
        if project is None:
            _swarm_runner(prefix).down(header)
            if remove_data_volumes:
                removed = remove_volumes(engine_ops.connect(), stack_volumes(active_release(prefix), header.spec.project))
                say(f"deleted {len(removed)} volume(s) on this node: {', '.join(removed) or 'none'} (volumes on "
                    "other nodes, of services run on every node, are theirs to remove)")
        else:
            project.down(remove_volumes=remove_data_volumes, timeout=600)
    say(f"{header.spec.project} is down" + ("; data volumes DELETED" if remove_data_volumes else "; data volumes kept"))


@main.command("restart")
@click.argument("services", nargs=-1)
@prefix_option
@click.option("--timeout", type=float, default=300, show_default=True, help="Seconds to wait for health afterwards.")
@compose_option
@friendly_errors
def restart_command(services: tuple[str, ...], prefix: Optional[Path], timeout: float, compose_preference) -> None:
    """Restart the stack (or the named services) and wait until healthy. Never pulls.

    A stopped stack (after 'down') is started again from the images on this host.
    """
    prefix, header, project = _installed(prefix, compose_preference)
    known = header.spec.services
    unknown = [s for s in services if s not in known]
    if unknown:
        raise InstallError(f"no service {unknown[0]!r} in {header.name} {header.version} (services: {', '.join(known)})")
    if project is None:
        runner = _swarm_runner(prefix)
        with prefix_lock(prefix):
            if any(s.container is None and s.state == "missing" for s in runner.states(header)):
                runner.bring_up(active_release(prefix) or prefix, header, timeout, say)  # after 'down'
            else:
                runner.restart(header, services, timeout, say)
        say(f"{header.spec.project} restarted and healthy")
        return
    client = engine_ops.connect()
    missing = [t for image in header.images for t in image.targets if engine_ops.image_id_of(client, t) is None]
    if missing:
        raise InstallError("images the stack needs are missing on this host (restart never pulls); "
                           "re-run 'airgap-install install ARCHIVE'", missing)
    with prefix_lock(prefix):
        states = service_states(client, project.name, known, header.spec.oneshot)
        if any(s.container is None for s in states if not s.oneshot):
            prepare_host_paths(project, header, read_env(project.env_file))
            project.up(timeout=timeout)
        else:
            project.restart(services, timeout=timeout)
        ok, states = wait_until_ready(client, project.name, known, header.spec.oneshot, timeout,
                                      on_change=lambda s: say(f"  {s.service}: {s.summary()}"))
    if not ok:
        raise InstallError("not healthy after restart", [f"{s.service}: {s.summary()} {s.last_health_output}" for s in states if not s.ready], 3)
    say(f"{project.name} restarted and healthy")


def _shown(state, swarm: bool) -> str:
    if not swarm or state.oneshot:
        return state.summary()
    return state.health if state.ready and state.health else state.state


main.add_command(push_command)
main.add_command(export_release_command)

if __name__ == "__main__":  # pragma: no cover
    main()
