"""Where a release's images go: the seam between the install core and an image destination.

Today's destination is the engine the installer runs next to (:class:`LocalEngine`:
``docker load`` of only what it lacks, then every name the stack uses tagged from
the loaded image IDs); the other takes them from the site registry
(:class:`installer.registry.pull.RegistryImages`: pull by digest what the engine
lacks, then the same tagging).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import docker

from . import engine as engine_ops
from .archive import BundleHeader, VerificationError, VerifiedBundle
from .errors import InstallError, Say
from .loader import LoadPlan, docker_archive_stream, missing_members_in_archive, read_ahead


@dataclass
class Delivered:
    """What a destination did: image names it received, names it tagged, layer bytes sent."""

    loaded: list[str] = field(default_factory=list)
    tagged: list[str] = field(default_factory=list)
    layer_bytes: int = 0


class ImageDestination(Protocol):
    """Where a release's images go."""

    def check(self, header: BundleHeader) -> None:
        """Refuse, before anything changes, a release this destination cannot take (InstallError)."""

    def deliver(self, bundle: VerifiedBundle, say: Say) -> Delivered:
        """Send the verified release's images, from the held archive; InstallError if a name stays missing."""


class LocalEngine:
    """The engine on this host: loads only the images and layers it lacks, streamed from the archive."""

    def __init__(self, client: docker.DockerClient, plan: LoadPlan):
        self.client, self.plan = client, plan

    def check(self, header: BundleHeader) -> None:
        """A delta whose left-out images or layers the engine lacks is refused."""
        refuse_delta_without_base(header, self.plan)

    def deliver(self, bundle: VerifiedBundle, say: Say) -> Delivered:
        """Load what is missing, then tag every name the stack uses."""
        loaded = load_missing(self.client, bundle, self.plan, say)
        tagged = fill_in_names(self.client, bundle.header, say)
        return Delivered(loaded=loaded, tagged=tagged, layer_bytes=self.plan.layer_bytes)


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
