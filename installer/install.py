"""The install core: signature, preflight, digests, images to their destination, the site, the stack up.

Nothing reaches the engine or the install directory before the signature
and every digest of the archive have checked out. Where images go is an
:class:`~installer.destinations.ImageDestination` and how the stack runs a
:class:`~installer.runners.StackRunner`: each new kind is one new module.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import docker
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import engine as engine_ops
from .archive import IMAGES_DIR, BundleHeader, VerificationError, VerifiedBundle, open_signed
from .health import ServiceState
from .lock import prefix_lock
from .preflight import PreflightReport, run_preflight
from .site import (
    ENV_FILE,
    SiteEnv,
    SiteError,
    activate,
    active_release,
    last_healthy,
    mark_healthy,
    read_env,
    read_release_header,
    release_dir,
    resolve_env,
    rollback_target,
    step_back,
    write_env,
    fill_template,
    write_release,
)
from .destinations import ImageDestination, LocalEngine
from .registry.access import RegistryAccess
from .registry.pull import RegistryImages
from .errors import InstallError, Say
from .runners import ComposeRunner, StackRunner
from .swarm.checks import swarm_checks
from .swarm.runner import SwarmRunner, SwarmSettings, read_settings, registry_auth, registry_pins, write_settings
from .versions import compare



@dataclass
class InstallOptions:
    """What ``airgap-install install`` was asked to do."""

    archive: Path
    keys: list[Ed25519PublicKey]
    prefix: Optional[Path] = None
    sets: dict[str, str] = field(default_factory=dict)
    timeout: float = 600.0
    allow_untrusted: bool = False
    compose_preference: Optional[str] = None
    allow_downgrade: bool = False
    require_existing: bool = False
    replace_same_version: bool = False
    from_registry: Optional[RegistryAccess] = None
    swarm: Optional[SwarmSettings] = None  # --swarm: the stack as a Swarm stack (images from the site registry)


@dataclass
class InstallResult:
    """What the install did."""

    prefix: Path
    release: Path
    loaded_images: list[str]
    loaded_layer_bytes: int
    tagged: list[str]
    generated_secrets: list[str]
    states: list[ServiceState]
    endpoints: list[tuple[str, str]]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


class PhaseClock:
    """Seconds spent in each phase, for the closing summary and benchmarks."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, phase: str) -> None:
        """Close ``phase`` at now."""
        now = time.monotonic()
        self.timings[phase] = self.timings.get(phase, 0.0) + now - self._last
        self._last = now


def open_for_install(options: InstallOptions, say: Say) -> VerifiedBundle:
    """Hold the archive open and check its signature (a few kilobytes read): nothing reads the header before."""
    return open_checking_signature(options.archive, options.keys, options.allow_untrusted, say)


def open_checking_signature(archive: Path, keys: list[Ed25519PublicKey], allow_untrusted: bool, say: Say, *,
                            unchanged: str = "nothing was changed") -> VerifiedBundle:
    """open_signed, its refusal as an InstallError (``unchanged`` says what was spared), and the signer said."""
    try:
        bundle = open_signed(archive, keys, allow_untrusted=allow_untrusted)
    except VerificationError as exc:
        raise InstallError(f"verification failed; {unchanged}: {exc}", getattr(exc, "problems", [])) from None
    for warning in bundle.warnings:
        say(f"WARNING: {warning}")
    header = bundle.header
    say(f"signature: {header.name} {header.version} signed by {bundle.signer or 'NOBODY (override in force)'}")
    return bundle


def preflight(options: InstallOptions, say: Say, bundle: VerifiedBundle,
              prefix: Optional[Path] = None) -> tuple[Path, PreflightReport, dict[str, str]]:
    """Run every preflight check on the signed header; raise InstallError listing failures."""
    header = bundle.header
    prefix = prefix or options.prefix or Path("/opt") / header.name
    try:
        values = resolve_env(header, read_env(prefix / ENV_FILE, fix_mode=False), options.sets).values
    except SiteError as exc:
        raise InstallError(str(exc)) from None
    try:
        client: Optional[docker.DockerClient] = engine_ops.connect()
    except engine_ops.EngineError:
        client = None
    swarm = swarm_settings(options, prefix, header, client)
    report = run_preflight(header, client, prefix, values, compose_preference=options.compose_preference,
                           compose_needed=swarm is None)
    if swarm is not None:
        report.checks.extend(swarm_checks(header, client, swarm))
    report.swarm = swarm
    if options.from_registry is not None and client is not None:
        report.registry = RegistryImages(client, options.from_registry.connect(header))
        found = report.registry.survey(header)
        report.add("site registry", not found.problems,
                   f"{report.registry.registry.registry} holds all {found.names} name(s), each by the signed image's "
                   "digest, and the engine can pull from it" if not found.problems else "; ".join(found.problems[:5]),
                   "push the release with 'airgap-install push ARCHIVE', and give the engine the site CA "
                   "(/etc/docker/certs.d/HOST/ca.crt) and credentials")
    for check in report.checks:
        say(f"  {'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    if not report.ok:
        raise InstallError(
            f"preflight failed: {len(report.failures())} check(s) did not pass; nothing was changed",
            [f"{c.name}: {c.detail} -> {c.fix}" for c in report.failures()],
            exit_code=2,
        )
    return prefix, report, values


def install(options: InstallOptions, say: Say) -> InstallResult:
    """Run the whole install; raise InstallError (nothing changed before verification passed).

    The archive is opened once: its signature is checked first, then preflight
    reads the signed header, then every member's digest is checked, and every
    later read (images, release files, the stored header) goes through that
    same held archive, never through the path again.
    """
    started = time.monotonic()
    clock = PhaseClock()
    with open_for_install(options, say) as bundle:
        header = bundle.header
        prefix = options.prefix or Path("/opt") / header.name
        with prefix_lock(prefix, say=say):
            clock.lap("lock")
            say(f"preflight: {options.archive}")
            prefix, report, _ = preflight(options, say, bundle, prefix)
            client = engine_ops.connect()
            swarm = report.swarm
            assert report.load_plan is not None and (report.compose is not None or swarm is not None)
            clock.lap("preflight")
            verify_members(bundle, say, release_only=report.registry is not None)
            check_version_order(prefix, header, options)
            destination: ImageDestination = report.registry or LocalEngine(client, report.load_plan)
            destination.check(header)
            clock.lap("verify")
            delivered = destination.deliver(bundle, say)
            clock.lap("load")
            release, env = write_site(prefix, options, bundle, say)
            fallback = last_healthy(prefix)
            runner: StackRunner
            if swarm is not None:
                swarm_runner = SwarmRunner(client, prefix / ENV_FILE, swarm, pinned_images=registry_pins(report.registry),
                                           registry_auth=registry_auth(report.registry))
                swarm_runner.plan(release, header)  # a stack Swarm cannot run is refused before it is activated
                write_settings(prefix, swarm)
                runner = swarm_runner
            else:
                assert report.compose is not None
                runner = ComposeRunner(client, report.compose, prefix / ENV_FILE)
            activate(prefix, release)
            clock.lap("site")
            states = up_or_roll_back(runner, prefix, release, header, fallback, options.timeout, say)
            clock.lap("up")
            return InstallResult(prefix=prefix, release=release, loaded_images=delivered.loaded,
                                 loaded_layer_bytes=delivered.layer_bytes, tagged=delivered.tagged,
                                 generated_secrets=env.generated, states=states,
                                 endpoints=resolve_endpoints(header, env.values), seconds=time.monotonic() - started,
                                 timings=clock.timings)


def swarm_settings(options: InstallOptions, prefix: Path, header: BundleHeader,
                   client: Optional[docker.DockerClient]) -> Optional[SwarmSettings]:
    """The Swarm settings in force: --swarm's, else the site's own (an upgrade of a Swarm site stays one)."""
    kept = read_settings(prefix)
    if options.swarm is None:
        if kept is not None and options.from_registry is None:
            raise InstallError(f"{prefix} runs its stack on a Swarm, whose nodes take the images from the site "
                               "registry: push the release ('airgap-install push ARCHIVE') and pass --from-registry")
        return kept
    running = client is not None and bool(client.api.containers(
        filters={"label": f"com.docker.compose.project={header.spec.project}"}))
    if kept is None and active_release(prefix) is not None and running:
        raise InstallError(f"{prefix} runs its stack with compose on this host; stop it first with 'airgap-install "
                           "down' (its named volumes are kept, and the Swarm stack on this node uses them), then "
                           "install with --swarm")
    if options.from_registry is None:
        raise InstallError("--swarm takes the images from the site registry on every node: push the release "
                           "('airgap-install push ARCHIVE') and add --from-registry")
    return options.swarm


def verify_members(bundle: VerifiedBundle, say: Say, *, release_only: bool = False) -> None:
    """Every member's size and sha256 against the signed header, read from the held archive.

    With ``release_only`` (images come from the site registry) the archive may lack its images.
    """
    say("verify: every member's sha256 against the signed header")
    try:
        bundle.check_members(may_lack=(lambda name: name.startswith(IMAGES_DIR + "/")) if release_only else
                             (lambda name: False))
    except VerificationError as exc:
        hint = []
        if not release_only and all("images/" in p for p in exc.problems if "missing" in p) and \
                any("missing" in p for p in exc.problems):
            hint = ["this archive lacks its images (a release-only archive?): install it with --from-registry"]
        raise InstallError(f"verification failed; nothing was changed: {exc}",
                           hint + getattr(exc, "problems", [])) from None
    held = len(bundle.held)
    say(f"  ok: {held} members" + (" (images come from the site registry)" if held < len(bundle.header.members) else ""))


def write_site(prefix: Path, options: InstallOptions, bundle: VerifiedBundle, say: Say) -> tuple[Path, SiteEnv]:
    """The release folder (from the held, verified archive) and the environment file (secrets generated once)."""
    bundle.require_checked()
    header = bundle.header
    env = resolve_env(header, read_env(prefix / ENV_FILE), options.sets)
    release = write_release(prefix, bundle.handle, header, bundle.header_bytes)
    if env.changed or not (prefix / ENV_FILE).exists():
        write_env(prefix / ENV_FILE, env, header)
    if env.generated:
        say(f"site: generated {len(env.generated)} secret(s) in {prefix / ENV_FILE} (mode 0600)")
    return release, env


def up_or_roll_back(runner: StackRunner, prefix: Path, release: Path, header: BundleHeader,
                    fallback: Optional[Path], timeout: float, say: Say) -> list[ServiceState]:
    """Bring the release up; if it fails and an earlier release was healthy, return to that one."""
    try:
        states = runner.bring_up(release, header, timeout, say)
    except InstallError as failure:
        if fallback is None or fallback.name == release.name:
            raise
        roll_back_after_failure(runner, prefix, release, fallback, failure, timeout, say)
        raise  # roll_back_after_failure always raises
    mark_healthy(prefix, release)
    return states


def check_version_order(prefix: Path, header: BundleHeader, options: InstallOptions) -> None:
    """Refuse a downgrade (by the signed version, SemVer precedence), a bundle of another application,
    and another archive of a version already installed (the same archive again is a re-install)."""
    current = active_release(prefix)
    if current is None:
        if options.require_existing:
            raise InstallError(f"nothing is installed in {prefix}; use 'airgap-install install' for a first install")
        refuse_another_archive_of_the_same_version(prefix, header, None, options)
        return
    active = read_release_header(current)
    if active.name != header.name:
        raise InstallError(f"{prefix} holds {active.name}, this archive is {header.name}; use another --prefix")
    order = compare(header.version, active.version)
    refuse_another_archive_of_the_same_version(prefix, header, current if order == 0 else None, options)
    if options.allow_downgrade or order in (0, 1):
        return
    if order is None:
        raise InstallError(f"cannot tell whether {header.version} is newer than the active {active.version}; "
                           "pass --allow-downgrade to install it anyway")
    raise InstallError(f"refusing to downgrade {header.name} from {active.version} to {header.version} "
                       "(versions from the signed headers); use 'airgap-install rollback', or pass --allow-downgrade")


def refuse_another_archive_of_the_same_version(prefix: Path, header: BundleHeader, active: Optional[Path],
                                               options: InstallOptions) -> None:
    """The same archive again is a re-install; another archive of the same version would replace a release in place.

    Checked against the release folder of this version and, if its version is the same by precedence
    (``v1.0`` and ``v1.0.0``), the active release: their stored signed headers must equal this one.
    """
    if options.replace_same_version:
        return
    try:
        same_folder: Optional[Path] = release_dir(prefix, header.version).resolve()
    except SiteError:
        same_folder = None  # not usable as a folder name; writing the release refuses it
    for release in dict.fromkeys(r for r in (same_folder, active) if r is not None):
        try:
            stored: Optional[BundleHeader] = read_release_header(release)
        except FileNotFoundError:
            continue  # no release of this version here
        except (OSError, ValueError):
            stored = None  # unreadable: not provably the same archive
        if stored != header:
            raise InstallError(
                f"a different archive of the same version is installed: {release} holds another signed header "
                f"than this {header.name} {header.version} archive; pass --replace-same-version to replace it "
                "(or give the new build a new version)")


def roll_back_after_failure(runner: StackRunner, prefix: Path, release: Path, fallback: Path,
                            failure: InstallError, timeout: float, say: Say) -> None:
    """Return to ``fallback`` after a failed upgrade, bring it up, and raise saying what happened."""
    say(f"ROLLBACK: {release.name} did not become healthy; switching back to {fallback.name}")
    old_header = read_release_header(fallback)
    step_back(prefix, fallback)
    try:
        runner.bring_up(fallback, old_header, timeout, say)
    except InstallError as second:
        raise InstallError(
            f"upgrade to {release.name} failed, and the rollback to {fallback.name} did not become healthy either",
            failure.details + second.details, exit_code=4,
        ) from None
    raise InstallError(
        f"upgrade to {release.name} failed ({failure}); rolled back automatically to {fallback.name}, "
        "which is healthy", failure.details, exit_code=3,
    )


def rollback(prefix: Path, compose_preference: Optional[str], timeout: float, say: Say) -> Path:
    """Go back one release: activate the previous one in the history and bring it up healthy."""
    from .compose import find_compose

    with prefix_lock(prefix):
        current = active_release(prefix)
        if current is None:
            raise InstallError(f"nothing is installed in {prefix}")
        target = rollback_target(prefix)
        if target is None:
            raise InstallError(f"no earlier release to roll back to in {prefix} (history: {current.name} only)")
        header = read_release_header(target)
        client = engine_ops.connect()
        swarm = read_settings(prefix)
        runner: StackRunner
        if swarm is not None:  # the nodes pull the release's pinned images from the site registry
            runner = SwarmRunner(client, prefix / ENV_FILE, swarm)
            runner.plan(target, header)  # refused (pins unknown, config unconvertible) before anything switches
        else:
            missing = [t for image in header.images for t in image.targets
                       if engine_ops.image_id_of(client, t) is None]
            if missing:
                raise InstallError(f"{target.name}'s images are no longer on this host; install its archive instead",
                                   missing)
            runner = ComposeRunner(client, find_compose(compose_preference), prefix / ENV_FILE)
        say(f"rollback: {current.name} -> {target.name}")
        step_back(prefix, target)
        runner.bring_up(target, header, timeout, say)
        mark_healthy(prefix, target)
        return target


def resolve_endpoints(header: BundleHeader, values: dict[str, str]) -> list[tuple[str, str]]:
    """The release's endpoints with site values filled in."""
    return [(endpoint.name, fill_template(endpoint.url, values)) for endpoint in header.spec.endpoints]
