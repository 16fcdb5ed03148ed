"""The bundler's two jobs: resolve a manifest into a plan, and build the signed archive."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import docker

from installer.archive import VerificationError, read_header
from installer.signing import load_private_key

from . import engine
from .application import Application, load_application, source_specs
from .cache import MemberCache
from .compose import RenderedCompose, render_compose
from .engine import EngineError, ImageFacts
from .export import BaseRelease, collect_images, write_bundle
from .lockfile import Lockfile, LockfileError, default_lock_path, lock_from_plan, manifest_digest, read_lock, write_lock
from .manifest import ReleaseManifest, load_manifest
from .plan import Plan, PlanEntry, make_plan
from .starter import manifest_for_compose
from .progress import Reporter
from .refs import parse_ref


class BuildError(Exception):
    """A build input is missing or wrong; the message says which and what to do."""


@dataclass
class BuildRequest:
    """Everything ``airgap-bundle build`` was asked to do (``compose_file`` instead of a manifest: ``--compose``)."""

    manifest_path: Optional[Path]
    source_dir: Optional[Path]
    key_path: Path
    output_dir: Path
    registry: Optional[str] = None
    tag: Optional[str] = None
    platform: Optional[str] = None
    with_build_bases: bool = False
    lock_path: Optional[Path] = None
    use_lock: bool = True
    level: int = 3
    since: Optional[Path] = None
    pull: bool = True
    use_cache: bool = True
    cache_dir: Optional[Path] = None
    compose_file: Optional[Path] = None
    name: Optional[str] = None


@dataclass
class Release:
    """A manifest with the application it describes, planned and derived (no engine needed)."""

    manifest: ReleaseManifest
    app: Application
    plan: Plan
    compose: RenderedCompose


def open_manifest(manifest_path: Optional[Path], compose_file: Optional[Path], source_dir: Optional[Path], *,
                  name: Optional[str] = None, tag: Optional[str] = None, registry: Optional[str] = None) -> ReleaseManifest:
    """The release manifest: read from ``manifest_path``, or made from ``compose_file`` (``--compose``)."""
    if (manifest_path is None) == (compose_file is None):
        raise BuildError("give either a MANIFEST or --compose FILE (one of them)")
    if compose_file is not None:
        return manifest_for_compose(compose_file, source_dir=source_dir, name=name, version=tag or "v0.1.0",
                                    registry=registry or "")
    return load_manifest(manifest_path)


def source_root(manifest: ReleaseManifest, compose_file: Optional[Path], source_dir: Optional[Path]) -> Path:
    """--source, or with --compose the compose file's folder, or the current folder."""
    if source_dir is not None:
        return Path(source_dir)
    return Path(compose_file).resolve().parent if compose_file is not None else Path(".")


def plan_release(manifest: ReleaseManifest, source_dir: Path, *, registry: Optional[str], tag: Optional[str],
                 platform: str, with_build_bases: bool) -> Release:
    """Read the application, plan every image and derive the site's compose config."""
    app = load_application(manifest, source_dir)
    manifest.sources = source_specs(manifest, app)
    plan = make_plan(manifest, registry=registry, tag=tag, platform=platform, with_build_bases=with_build_bases)
    return Release(manifest=manifest, app=app, plan=plan, compose=render_compose(plan, app))


def resolve(
    manifest: ReleaseManifest,
    source_dir: Path,
    *,
    client: Optional[docker.DockerClient],
    registry: Optional[str],
    tag: Optional[str],
    platform: Optional[str],
    with_build_bases: bool,
) -> Release:
    """Plan the release and fill in what the engine and registry know (IDs, digests)."""
    if platform is None:
        platform = engine.host_platform(client) if client else "linux/amd64"
    release = plan_release(manifest, source_dir, registry=registry, tag=tag, platform=platform,
                           with_build_bases=with_build_bases)
    plan = release.plan
    if client is None:
        return release
    for entry in plan.of_kind("dependency", "build-base"):
        local = engine.find_local(client, entry.upstream)
        if local and engine.platform_matches(local.platform, platform):
            entry.image_id = local.id
            entry.digest = _repo_digest(local, entry.upstream)
        if entry.digest is None:
            entry.digest = engine.remote_digest(client, entry.upstream)
    for entry in plan.of_kind("source"):
        local = engine.find_local(client, entry.target)
        entry.image_id = local.id if local else None
    _link_reused(plan)
    return release


def build(request: BuildRequest, reporter: Reporter) -> Path:
    """Pull, build, tag, render and write ``OUTPUT/NAME-TAG.tar.zst``; return its path."""
    manifest = open_manifest(request.manifest_path, request.compose_file, request.source_dir, name=request.name,
                             tag=request.tag, registry=request.registry)
    source_dir = source_root(manifest, request.compose_file, request.source_dir)
    private_key = load_private_key(request.key_path)
    client = engine.connect()
    platform = request.platform or engine.host_platform(client)
    release = plan_release(manifest, source_dir, registry=request.registry, tag=request.tag, platform=platform,
                           with_build_bases=request.with_build_bases)
    plan, compose = release.plan, release.compose
    for warning in compose.warnings:
        reporter.line(f"warning: {warning}")
    _check_sources(manifest, source_dir)
    lock_path = request.lock_path or (
        default_lock_path(request.manifest_path) if request.manifest_path
        else Path(request.output_dir) / f"{manifest.name}.lock.json")
    lock = _usable_lock(lock_path, manifest.path, platform, reporter) if request.use_lock else None
    base = load_base(request.since, manifest.name) if request.since else None
    reporter.line(f"bundle {manifest.name} {plan.tag} for {platform}: {len(plan.entries)} image names")

    facts: dict[str, ImageFacts] = {}
    for entry in plan.of_kind("dependency", "build-base"):
        facts_for = _pull(client, entry, platform, lock, reporter) if request.pull else _use_local(client, entry, platform, lock)
        facts[facts_for.id] = facts_for
    for entry in plan.of_kind("source"):
        facts_for = _build_source(client, manifest, entry, source_dir, plan, platform, reporter)
        facts[facts_for.id] = facts_for
    _link_reused(plan)

    def tag_all() -> None:
        for entry in plan.entries:
            engine.tag(client, entry.image_id, entry.target)
        reporter.line(f"tagged {len(plan.entries)} names to {plan.registry or 'local names'}")

    images = collect_images(plan, facts)
    output = Path(request.output_dir) / f"{manifest.name}-{plan.tag}.tar.zst"
    for stale in list(output.parent.glob(output.name + ".part[0-9]*")) + [output.with_name(output.name + ".parts.json")]:
        stale.unlink(missing_ok=True)  # parts of an earlier split of this release would shadow the new archive
    if base is not None:
        reporter.line(f"delta against {base.name} {base.version}: leaving out {len(base.image_ids)} image(s) and their layers")
    archive = write_bundle(client=client, plan=plan, images=images, compose=compose, private_key=private_key,
                           output=output, reporter=reporter, level=request.level, base=base,
                           cache=MemberCache.from_env(request.level, request.cache_dir) if request.use_cache else None,
                           meanwhile=tag_all)
    lock = lock_from_plan(plan)
    lock.release = {"name": manifest.name, "version": plan.tag,
                    "images": [{"id": r.id, "diff_ids": r.diff_ids} for r in images.records]}
    write_lock(lock, lock_path)
    reporter.line(f"wrote {archive} ({archive.stat().st_size / 1e6:.1f} MB); lockfile {lock_path}")
    return archive


def load_base(path: Path, name: str) -> BaseRelease:
    """The release a delta is built against, from its archive or the lockfile its build wrote."""
    path = Path(path)
    if not path.is_file():
        raise BuildError(f"--since {path}: no such file; give the previous release's archive or lockfile")
    if path.name.endswith(".tar.zst"):
        try:
            header, _, _ = read_header(path)
        except VerificationError as exc:
            raise BuildError(f"--since {path}: {exc}") from None
        images = [(image.id, image.diff_ids) for image in header.images]
        base_name, version = header.name, header.version
    else:
        lock = read_lock(path)
        if not lock.release:
            raise BuildError(f"--since {path}: this lockfile records no built release (it was written by 'resolve'); "
                             "use the lockfile written by 'build', or the previous archive")
        images = [(item["id"], list(item["diff_ids"])) for item in lock.release["images"]]
        base_name, version = lock.release["name"], lock.release["version"]
    if base_name != name:
        raise BuildError(f"--since {path}: that is a release of {base_name}, not {name}")
    return BaseRelease.from_images(base_name, version, images)


def _use_local(client, entry: PlanEntry, platform: str, lock: Optional[Lockfile]) -> ImageFacts:
    """--no-pull: take the image the engine already has under the upstream name, checked like a pull."""
    facts = engine.find_local(client, entry.upstream)
    if facts is None:
        raise EngineError(f"{entry.upstream}: not on the engine, and --no-pull forbids pulling it; pull or load it first")
    if not engine.platform_matches(facts.platform, platform):
        raise EngineError(f"{entry.upstream} on the engine is {facts.platform}, but the bundle is for {platform}")
    locked = lock.images.get(entry.upstream) if lock else None
    if locked and locked.image_id and locked.image_id != facts.id:
        raise EngineError(f"{entry.upstream}: the engine's image {facts.id[:19]} is not the one the lockfile pins "
                          f"({locked.image_id[:19]}); pull the locked one, or build with --no-lock")
    entry.image_id = facts.id
    entry.digest = (locked.digest if locked else None) or _repo_digest(facts, entry.upstream)
    return facts


def _pull(client, entry: PlanEntry, platform: str, lock: Optional[Lockfile], reporter: Reporter) -> ImageFacts:
    locked = lock.images.get(entry.upstream) if lock else None
    reference = entry.upstream
    if locked and locked.digest:
        reference = parse_ref(entry.upstream).pinned(locked.digest)
    label = f"pull {entry.upstream}" + (" (locked digest)" if reference != entry.upstream else "")
    with reporter.task(label) as task:
        layers: dict[str, int] = {}
        finished: set[str] = set()

        def on_event(event: dict) -> None:
            layer, status = event.get("id"), event.get("status", "")
            if not layer or layer == parse_ref(entry.upstream).tag:
                return
            layers.setdefault(layer, 0)
            detail = event.get("progressDetail") or {}
            if status == "Downloading" and detail.get("current"):
                layers[layer] = detail["current"]
            if status in ("Pull complete", "Already exists"):
                finished.add(layer)
            task.set_bytes(sum(layers.values()))
            task.step(len(finished), len(layers), "layers")

        try:
            facts = engine.pull(client, reference, platform, on_event)
        except EngineError as exc:
            if reference == entry.upstream:
                raise
            raise EngineError(
                f"{exc} The digest was pinned by the lockfile; if the registry no longer has it, re-pin with "
                "'airgap-bundle resolve' or build with --no-lock."
            ) from None
    if locked and locked.image_id and locked.image_id != facts.id:
        raise EngineError(
            f"{entry.upstream}: the lockfile pins image {locked.image_id[:19]} but the engine gave {facts.id[:19]}; "
            "run 'airgap-bundle resolve' to update the lock if the change is intended"
        )
    if reference != entry.upstream:
        engine.tag(client, facts.id, parse_ref(entry.upstream).with_tag())
    entry.image_id = facts.id
    entry.digest = (locked.digest if locked else None) or _repo_digest(facts, entry.upstream)
    return facts


def _build_source(client, manifest: ReleaseManifest, entry: PlanEntry, source_dir: Path, plan: Plan, platform: str,
                  reporter: Reporter) -> ImageFacts:
    spec = next(s for s in manifest.sources if s.service == entry.service)
    context = (source_dir / spec.context).resolve()
    dockerfile = (source_dir / spec.dockerfile).resolve()
    args = {k: manifest.render_value(v, f"{spec.key}.args.{k}", tag=plan.tag, registry=plan.registry) for k, v in spec.args.items()}
    with reporter.task(f"build {entry.service}" + (f" (target {spec.target})" if spec.target else "")) as task:

        def on_event(event: dict) -> None:
            step = re.match(r"Step (\d+)/(\d+)", event.get("stream", ""))
            if step:
                task.step(int(step.group(1)) - 1, int(step.group(2)), "steps")

        image_id = engine.build(
            client, context=context, dockerfile=dockerfile.relative_to(context).as_posix(),
            tag=f"{spec.image}:{plan.tag}", target=spec.target, args=args, platform=platform, on_event=on_event,
        )
    facts = engine.inspect(client, image_id)
    if not engine.platform_matches(facts.platform, platform):
        raise EngineError(f"{entry.service} was built as {facts.platform}, expected {platform}")
    entry.image_id = facts.id
    return facts


def _check_sources(manifest: ReleaseManifest, source_dir: Path) -> None:
    if not manifest.sources:
        return
    if not Path(source_dir).is_dir():
        raise BuildError(f"--source {source_dir}: not a folder; point it at a checkout of the application")
    root = Path(source_dir).resolve()
    for spec in manifest.sources:
        context = (root / spec.context).resolve()
        dockerfile = (root / spec.dockerfile).resolve()
        if not context.is_dir():
            raise BuildError(f"{manifest.path}: {spec.key}.context: {context} is not a folder in --source {source_dir}")
        if not dockerfile.is_file():
            raise BuildError(f"{manifest.path}: {spec.key}.dockerfile: {dockerfile} does not exist in --source {source_dir}")
        if context != dockerfile.parent and context not in dockerfile.parents:
            raise BuildError(f"{manifest.path}: {spec.key}.dockerfile: {spec.dockerfile} is outside its context {spec.context}")


def _usable_lock(path: Path, manifest_path: Path, platform: str, reporter: Reporter) -> Optional[Lockfile]:
    if not Path(path).exists():
        return None
    try:
        lock = read_lock(path)
    except LockfileError as exc:
        raise BuildError(str(exc)) from None
    if lock.platform != platform:
        reporter.line(f"lockfile {path} is for {lock.platform}, not {platform}: ignoring its pins")
        return None
    if lock.manifest_sha256 != manifest_digest(manifest_path):
        reporter.line(f"lockfile {path} was made from another version of the manifest: pins kept for unchanged images")
    return lock


def _link_reused(plan: Plan) -> None:
    for entry in plan.of_kind("alias", "runtime"):
        base = plan.entry_for(entry.of)
        entry.image_id = base.image_id
        entry.digest = base.digest


def _repo_digest(facts: ImageFacts, upstream: str) -> Optional[str]:
    repository = parse_ref(upstream).repository
    candidates = {repository, f"docker.io/{repository}", f"docker.io/library/{repository}", f"library/{repository}"}
    for item in facts.repo_digests:
        name, _, digest = item.partition("@")
        if name in candidates:
            return digest
    return None
