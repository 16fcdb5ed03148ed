"""The release plan: every image the site needs, where it comes from and its site name."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .manifest import ManifestError, ReleaseManifest, fill_placeholders
from .refs import ReferenceError_, check_registry, check_tag, normalise, parse_ref

KINDS = ("dependency", "build-base", "source", "alias", "runtime")


class NamingCollision(ValueError):
    """Two different images would be shipped under one site name."""


@dataclass
class PlanEntry:
    """One row of the plan.

    ``upstream`` is where the image comes from (a reference, or a Dockerfile
    for a source build); ``of`` names the entry an alias or runtime name
    reuses; ``image_id`` and ``digest`` are filled in once known.
    """

    kind: str
    upstream: str
    target: str
    key: str
    service: Optional[str] = None
    of: Optional[str] = None
    local_name: Optional[str] = None
    image_id: Optional[str] = None
    digest: Optional[str] = None

    @property
    def identity(self) -> str:
        """What makes two entries the same image: its upstream, or what it reuses."""
        return self.of or self.upstream


@dataclass
class Plan:
    """Every entry of a release, for one registry, tag and platform."""

    manifest: ReleaseManifest
    registry: str
    tag: str
    platform: str
    entries: list[PlanEntry] = field(default_factory=list)

    def of_kind(self, *kinds: str) -> list[PlanEntry]:
        """Entries of the given kinds, in manifest order."""
        return [entry for entry in self.entries if entry.kind in kinds]

    def entry_for(self, identity: str) -> PlanEntry:
        """The dependency, build base or source entry an alias/runtime name points at."""
        for entry in self.of_kind("dependency", "build-base", "source"):
            if entry.upstream == identity or entry.service == identity:
                return entry
        raise KeyError(identity)

    def image_map(self) -> dict[str, str]:
        """Every name a compose file may use for an image → its site name.

        Upstream references (with and without ``:latest``), local source image
        names (``ai-infra-backend`` and ``ai-infra-backend:TAG``) and the site
        names themselves all map to the site name.
        """
        mapping: dict[str, str] = {}
        for entry in self.entries:
            mapping[entry.target] = entry.target
            if entry.kind in ("dependency", "build-base"):
                mapping[entry.upstream] = entry.target
                mapping[normalise(entry.upstream)] = entry.target
                mapping[str(parse_ref(entry.upstream).repository)] = entry.target
            elif entry.local_name:
                mapping[entry.local_name] = entry.target
                mapping[f"{entry.local_name}:{self.tag}"] = entry.target
        return mapping

    def site_image(self, reference: str) -> Optional[str]:
        """The site name for an image reference a compose file uses, or None if the release lacks it.

        Matches the reference as written, normalised (``redis`` = ``docker.io/library/redis:latest``),
        and, for local names of built images and aliases, by repository whatever the tag.
        """
        mapping = self.image_map()
        if reference in mapping:
            return mapping[reference]
        try:
            ref = parse_ref(reference)
            canonical = normalise(reference)
        except ReferenceError_:
            return None
        if canonical in mapping:
            return mapping[canonical]
        for entry in self.entries:
            if entry.kind in ("source", "alias") and entry.local_name and entry.local_name == ref.repository:
                return entry.target
        return None

    def source_for(self, service: str) -> Optional[PlanEntry]:
        """The source build of a compose service, if it has one."""
        for entry in self.of_kind("source"):
            if entry.service == service:
                return entry
        return None


def site_name(manifest: ReleaseManifest, *, registry: str, tag: str, name: str) -> str:
    """Apply the manifest's naming pattern: REGISTRY/NAME:TAG by default."""
    values = {"registry": registry, "name": name, "tag": tag, "version": tag}
    text = fill_placeholders(manifest.pattern, values, manifest.path, "naming.pattern")
    text = text.lstrip("/")
    try:
        parse_ref(text)
    except ReferenceError_ as exc:
        raise ManifestError(manifest.path, "naming.pattern", f"gives an invalid name for {name!r}: {exc}") from None
    return text


def make_plan(
    manifest: ReleaseManifest,
    *,
    registry: Optional[str] = None,
    tag: Optional[str] = None,
    platform: str = "linux/amd64",
    with_build_bases: bool = False,
) -> Plan:
    """Resolve the manifest into a plan; raise NamingCollision or ManifestError."""
    registry = manifest.registry if registry is None else registry
    tag = manifest.version if tag is None else tag
    try:
        if registry:
            check_registry(registry)
        check_tag(tag)
    except ReferenceError_ as exc:
        raise ManifestError(manifest.path, "--registry/--tag", str(exc)) from None
    plan = Plan(manifest=manifest, registry=registry, tag=tag, platform=platform)

    def target_for(name: Optional[str], default: str, target: Optional[str], key: str) -> str:
        if target:
            text = manifest.render_value(target, f"{key}.target", tag=tag, registry=registry)
            try:
                parse_ref(text)
            except ReferenceError_ as exc:
                raise ManifestError(manifest.path, f"{key}.target", str(exc)) from None
            return text
        return site_name(manifest, registry=registry, tag=tag, name=name or default)

    seen_upstream: dict[str, str] = {}
    for spec in manifest.dependencies + manifest.build_bases:
        upstream = str(spec.ref)
        canonical = normalise(upstream)
        if canonical in seen_upstream:
            raise ManifestError(manifest.path, spec.key, f"{upstream} is already listed at {seen_upstream[canonical]}")
        seen_upstream[canonical] = spec.key
        plan.entries.append(PlanEntry(kind=spec.kind, upstream=upstream, target=target_for(spec.name, spec.ref.name, spec.target, spec.key), key=spec.key))
    for spec in manifest.sources:
        upstream = f"{spec.dockerfile}" + (f" (target {spec.target})" if spec.target else "")
        plan.entries.append(
            PlanEntry(kind="source", upstream=upstream, service=spec.service, key=spec.key, local_name=spec.image,
                      target=target_for(spec.name, spec.image.rsplit("/", 1)[-1], None, spec.key))
        )
    for spec in manifest.aliases:
        base = _reused_entry(plan, spec.of, spec.key, manifest)
        plan.entries.append(PlanEntry(kind="alias", upstream=base.upstream, of=base.identity, key=spec.key, local_name=spec.name,
                                      target=site_name(manifest, registry=registry, tag=tag, name=spec.name)))
    for spec in manifest.runtime:
        base = _reused_entry(plan, spec.of, spec.key, manifest)
        name = manifest.render_value(spec.name, f"{spec.key}.name", tag=tag, registry=registry)
        try:
            name = normalise(name)
        except ReferenceError_ as exc:
            raise ManifestError(manifest.path, f"{spec.key}.name", str(exc)) from None
        plan.entries.append(PlanEntry(kind="runtime", upstream=base.upstream, of=base.identity, key=spec.key, target=name))
    _refuse_collisions(plan)
    if not with_build_bases:
        plan.entries = [e for e in plan.entries if e.kind != "build-base" and not _reuses_build_base(plan, e)]
    return plan


def _reused_entry(plan: Plan, of: str, key: str, manifest: ReleaseManifest) -> PlanEntry:
    candidates = [of]
    try:
        candidates.append(normalise(of))
    except ReferenceError_:
        pass
    for entry in plan.of_kind("dependency", "build-base", "source"):
        names = {entry.service} if entry.kind == "source" else {entry.upstream, normalise(entry.upstream)}
        if names & set(candidates):
            return entry
    raise ManifestError(manifest.path, f"{key}.of", f"{of!r} is neither a listed image reference nor a source service")


def _reuses_build_base(plan: Plan, entry: PlanEntry) -> bool:
    if entry.of is None:
        return False
    base = plan.entry_for(entry.of)
    return base.kind == "build-base"


def _refuse_collisions(plan: Plan) -> None:
    owners: dict[str, PlanEntry] = {}
    for entry in plan.entries:
        other = owners.get(entry.target)
        if other is not None:
            raise NamingCollision(
                f"{plan.manifest.path}: naming collision: {other.key} ({other.kind} {_label(other)}) and "
                f"{entry.key} ({entry.kind} {_label(entry)}) would both be shipped as {entry.target}. "
                f"Give one of them its own `name:` (or `target:`) in the manifest."
            )
        owners[entry.target] = entry


def _label(entry: PlanEntry) -> str:
    if entry.kind == "source":
        return f"service {entry.service}"
    return entry.upstream
