"""The install: preflight, verify, load what is missing, fill in names, write the site, up, wait.

Nothing reaches the engine or the install directory before the signature
and every digest of the archive have checked out.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import docker
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import engine as engine_ops
from .archive import BundleHeader, VerificationError, VerifiedBundle, open_signed
from .compose import ComposeError, ComposeProject
from .health import ServiceState, last_log_lines, wait_until_ready
from .hostpaths import HostPathError, write_site_override
from .loader import LoadPlan, docker_archive_stream, missing_members_in_archive, read_ahead
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
    write_env_files,
    write_release,
)
from .versions import compare

Say = Callable[[str], None]


class InstallError(Exception):
    """The install stopped; ``details`` lists what failed and what to do."""

    def __init__(self, message: str, details: Sequence[str] = (), exit_code: int = 1):
        super().__init__(message)
        self.details = list(details)
        self.exit_code = exit_code


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
    try:
        bundle = open_signed(options.archive, options.keys, allow_untrusted=options.allow_untrusted)
    except VerificationError as exc:
        raise InstallError(f"verification failed; nothing was changed: {exc}", getattr(exc, "problems", [])) from None
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
    report = run_preflight(header, client, prefix, values, compose_preference=options.compose_preference)
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
            assert report.load_plan is not None and report.compose is not None
            clock.lap("preflight")
            verify_members(bundle, say)
            check_version_order(prefix, header, options)
            refuse_delta_without_base(header, report.load_plan)
            clock.lap("verify")
            client = engine_ops.connect()
            loaded = load_missing(client, bundle, report.load_plan, say)
            tagged = fill_in_names(client, header, say)
            clock.lap("load")
            release, env = write_site(prefix, options, bundle, say)
            fallback = last_healthy(prefix)
            activate(prefix, release)
            clock.lap("site")
            project = ComposeProject(report.compose, header.spec.project, release, prefix / ENV_FILE)
            states = up_or_roll_back(client, prefix, project, header, fallback, options.timeout, say)
            clock.lap("up")
            return InstallResult(prefix=prefix, release=release, loaded_images=loaded,
                                 loaded_layer_bytes=report.load_plan.layer_bytes, tagged=tagged,
                                 generated_secrets=env.generated, states=states,
                                 endpoints=resolve_endpoints(header, env.values), seconds=time.monotonic() - started,
                                 timings=clock.timings)


def verify_members(bundle: VerifiedBundle, say: Say) -> None:
    """Every member's size and sha256 against the signed header, read from the held archive."""
    say("verify: every member's sha256 against the signed header")
    try:
        bundle.check_members()
    except VerificationError as exc:
        raise InstallError(f"verification failed; nothing was changed: {exc}", getattr(exc, "problems", [])) from None
    say(f"  ok: {len(bundle.header.members)} members")


def refuse_delta_without_base(header: BundleHeader, plan: LoadPlan) -> None:
    """A delta whose left-out images or layers the engine lacks is refused before anything changes."""
    absent = missing_members_in_archive(header, plan)
    if absent:
        base = (header.base or {}).get("version", "an earlier release")
        raise InstallError(
            f"this archive is a delta built against {header.name} {base}, and the engine lacks {len(absent)} of the "
            f"images or layers it leaves out; install {base} first (or use the full archive). Nothing was changed.",
            absent[:10],
        )


def load_missing(client: docker.DockerClient, bundle: VerifiedBundle, plan: LoadPlan, say: Say) -> list[str]:
    """Stream what the engine lacks from the held, verified archive into its load; return the names it reported."""
    bundle.require_checked()
    if plan.empty:
        say("load: the engine already has every image; nothing to load")
        return []
    say(f"load: {len(plan.images)} image(s), {len(plan.layers)} layer(s), {plan.layer_bytes / 1e6:.1f} MB "
        f"(the engine has {len(plan.present_images)} image(s) already)")
    try:
        return engine_ops.load(client, read_ahead(docker_archive_stream(bundle.handle, bundle.header, plan)))
    except VerificationError as exc:
        raise InstallError(f"load aborted: {exc}") from None


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


def up_or_roll_back(client: docker.DockerClient, prefix: Path, project: ComposeProject, header: BundleHeader,
                    fallback: Optional[Path], timeout: float, say: Say) -> list[ServiceState]:
    """Bring the release up; if it fails and an earlier release was healthy, return to that one."""
    try:
        states = bring_up(client, project, header, timeout, say)
    except InstallError as failure:
        if fallback is None or fallback.name == project.directory.name:
            raise
        roll_back_after_failure(client, prefix, project, fallback, failure, timeout, say)
        raise  # roll_back_after_failure always raises
    mark_healthy(prefix, project.directory)
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


def roll_back_after_failure(client: docker.DockerClient, prefix: Path, project: ComposeProject, fallback: Path,
                            failure: InstallError, timeout: float, say: Say) -> None:
    """Return to ``fallback`` after a failed upgrade, bring it up, and raise saying what happened."""
    say(f"ROLLBACK: {project.directory.name} did not become healthy; switching back to {fallback.name}")
    old_header = read_release_header(fallback)
    step_back(prefix, fallback)
    old_project = ComposeProject(project.cli, project.name, fallback, project.env_file)
    try:
        bring_up(client, old_project, old_header, timeout, say)
    except InstallError as second:
        raise InstallError(
            f"upgrade to {project.directory.name} failed, and the rollback to {fallback.name} did not become healthy either",
            failure.details + second.details, exit_code=4,
        ) from None
    raise InstallError(
        f"upgrade to {project.directory.name} failed ({failure}); rolled back automatically to {fallback.name}, "
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
        missing = [t for image in header.images for t in image.targets if engine_ops.image_id_of(client, t) is None]
        if missing:
            raise InstallError(f"{target.name}'s images are no longer on this host; install its archive instead", missing)
        say(f"rollback: {current.name} -> {target.name}")
        step_back(prefix, target)
        project = ComposeProject(find_compose(compose_preference), header.spec.project, target,
                                 prefix / ENV_FILE)
        bring_up(client, project, header, timeout, say)
        mark_healthy(prefix, target)
        return target


def fill_in_names(client: docker.DockerClient, header: BundleHeader, say: Say) -> list[str]:
    """Make every name the stack uses point at its image; report any name still missing."""
    tagged = []
    for image in header.images:
        if engine_ops.image_id_of(client, image.id) is None:
            continue
        for name in image.targets:
            if engine_ops.image_id_of(client, name) != image.id:
                engine_ops.tag(client, image.id, name)
                tagged.append(name)
    missing = []
    for image in header.images:
        for source in image.sources or [{"target": t, "kind": "image", "key": "?"} for t in image.targets]:
            if engine_ops.image_id_of(client, source["target"]) != image.id:
                missing.append(f"{source['target']} ({source.get('kind')} from {source.get('key')}, image {image.id[7:19]})")
    if missing:
        raise InstallError("after loading, these names the stack uses are still missing (nothing is pulled):", missing)
    if tagged:
        say(f"names: tagged {len(tagged)} name(s) from loaded image IDs")
    return tagged


def bring_up(client: docker.DockerClient, project: ComposeProject, header: BundleHeader, timeout: float, say: Say) -> list[ServiceState]:
    """compose up (no pulls), then wait until every service is ready; InstallError naming what is not."""
    services = header.spec.services
    oneshot = header.spec.oneshot
    values = read_env(project.env_file)
    write_env_files(project.directory, header.spec.env_files, values)
    prepare_host_paths(project, header, values)
    say(f"up: {project.name} with {project.cli.describe()} ({len(services)} services)")
    up_error: Optional[str] = None
    try:
        project.up(timeout=timeout)
    except ComposeError as exc:
        up_error = str(exc)
    ok, states = wait_until_ready(
        client, project.name, services, oneshot, timeout=5 if up_error else timeout,
        on_change=lambda s: say(f"  {s.service}: {s.summary()}"),
    )
    if ok:
        say(f"healthy: {sum(1 for s in states if not s.oneshot)} service(s) up, {sum(1 for s in states if s.oneshot)} one-shot(s) done")
        return states
    details = []
    for state in states:
        if state.ready:
            continue
        detail = f"{state.service}: {state.summary()}"
        if state.last_health_output:
            detail += f"; last health check said: {state.last_health_output[-300:]}"
        if state.container:
            detail += "\n      last log lines:\n      " + last_log_lines(client, state.container, 10).replace("\n", "\n      ")
        details.append(detail)
    reason = f"compose up failed: {up_error}" if up_error else f"not healthy within {timeout:.0f}s"
    raise InstallError(f"the stack did not become healthy ({reason})", details, exit_code=3)


def prepare_host_paths(project: ComposeProject, header: BundleHeader, values: dict[str, str]) -> None:
    """Before any compose up: check the host paths the stack mounts and write the site's override for this engine."""
    try:
        write_site_override(project.directory, header, values, engine_ops.docker_host())
    except HostPathError as exc:
        raise InstallError(f"{exc}; nothing was started", [exc.fix]) from None


def resolve_endpoints(header: BundleHeader, values: dict[str, str]) -> list[tuple[str, str]]:
    """The release's endpoints with site values filled in."""
    return [(endpoint.name, fill_template(endpoint.url, values)) for endpoint in header.spec.endpoints]
