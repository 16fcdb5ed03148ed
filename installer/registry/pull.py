"""A host takes a release's images from the site registry instead of the archive.

Preflight asks the registry for every name the release uses and checks each
manifest names the image's signed config digest (its image ID), then asks the
engine itself to resolve each one (``/distribution/NAME/json``: the engine
reaches the registry, trusts its certificate, and is let in). Delivery pulls
by manifest digest only the images the engine lacks, then tags every name
the stack uses from the image IDs; a pulled image whose ID is not the signed
one is refused.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import docker

from .. import engine as engine_ops
from ..archive import BundleHeader, VerifiedBundle
from ..destinations import Delivered, fill_in_names
from ..errors import InstallError, Say
from .client import RegistryClient, RegistryError
from .push import image_targets, survey

PARALLEL_PULLS = 4


@dataclass
class RegistryCheck:
    """What preflight found: the pull reference of each image, and what is wrong."""

    pulls: dict[str, str] = field(default_factory=dict)  # image ID -> host/repository@digest
    pinned: dict[str, str] = field(default_factory=dict)  # host/repository:tag -> host/repository@digest
    problems: list[str] = field(default_factory=list)
    names: int = 0


def check_registry(registry: RegistryClient, header: BundleHeader, jobs: int = 8) -> RegistryCheck:
    """Every name of the release in the registry, each pointing at its signed image (reads only)."""
    found = RegistryCheck()
    try:
        registry.ping()
        targets = image_targets(header, registry.registry)
        survey(registry, targets, jobs)
    except RegistryError as exc:
        found.problems.append(str(exc))
        return found
    absent = []
    for target in targets:
        found.names += len(target.references)
        for reference in target.missing:
            other = target.wrong.get(str(reference))
            if other is None:
                absent.append(f"{reference.repository.rsplit('/', 1)[-1]}:{reference.tag}")
            else:
                found.problems.append(f"{reference} names image {other[7:19]}, the signed release says "
                                      f"{target.image.id[7:19]} (another build was pushed under this tag)")
        for reference in target.references:
            if str(reference) in target.digests:
                found.pinned[str(reference)] = reference.with_digest(target.digests[str(reference)])
        if target.present is not None:
            repository, body, _ = target.present
            found.pulls[target.image.id] = f"{registry.host}/{repository}@sha256:{hashlib.sha256(body).hexdigest()}"
    if absent:
        shown = ", ".join(absent[:4]) + (f" and {len(absent) - 4} more" if len(absent) > 4 else "")
        found.problems.insert(0, f"{registry.registry} lacks {len(absent)} of the release's {found.names} name(s): "
                                 f"{shown}")
    return found


def engine_reaches(client: docker.DockerClient, reference: str, auth: Optional[dict]) -> Optional[str]:
    """None when the engine resolves ``reference`` in the registry itself, else what to do."""
    try:
        client.api.inspect_distribution(reference, auth_config=auth)
        return None
    except docker.errors.APIError as exc:
        return engine_advice(reference, str(exc.explanation or exc))
    except docker.errors.DockerException as exc:
        return f"the engine could not ask the registry for {reference}: {exc}"


def engine_advice(reference: str, text: str) -> str:
    """What to do about the engine's error when it talks to the registry."""
    host = reference.split("/", 1)[0]
    if "x509" in text or "certificate" in text:
        return (f"the Docker engine does not trust {host}'s certificate: put the site CA in "
                f"/etc/docker/certs.d/{host}/ca.crt on this host ({text[:160]})")
    if "unauthorized" in text or "authentication required" in text or "denied" in text:
        return (f"the registry refused the engine's pull of {reference}: pass --username/--password-stdin or run "
                f"'docker login {host}' ({text[:160]})")
    if "no such host" in text or "connection refused" in text or "i/o timeout" in text or "unreachable" in text:
        return f"the Docker engine cannot reach {host}: check its name resolves and the registry runs ({text[:160]})"
    if "http: server gave HTTP response to HTTPS client" in text:
        return (f"{host} speaks plain HTTP: list it in the engine's insecure-registries (daemon.json) and pass "
                f"--insecure-registry")
    return f"the Docker engine could not resolve {reference}: {text[:200]}"


class RegistryImages:
    """The engine on this host, taking the release's images from the site registry (an ImageDestination)."""

    def __init__(self, client: docker.DockerClient, registry: RegistryClient):
        self.client, self.registry = client, registry
        self.found: Optional[RegistryCheck] = None

    def auth(self) -> Optional[dict]:
        """The credentials to hand the engine (None: the engine's own docker login, if any)."""
        credentials = self.registry.credentials
        return {"username": credentials.username, "password": credentials.password} if credentials else None

    def survey(self, header: BundleHeader) -> RegistryCheck:
        """Check the registry holds every name by digest, and the engine can pull from it; cached."""
        if self.found is None:
            found = check_registry(self.registry, header)
            for reference in list(dict.fromkeys(found.pulls.values()))[:1] if not found.problems else []:
                problem = engine_reaches(self.client, reference, self.auth())
                if problem:
                    found.problems.append(problem)
            self.found = found
        return self.found

    def check(self, header: BundleHeader) -> None:
        """Refuse, before anything changes, a release the registry does not hold or the engine cannot pull."""
        found = self.survey(header)
        if found.problems:
            raise InstallError(f"the site registry {self.registry.registry} cannot serve this release "
                               f"({len(found.problems)} problem(s)); nothing was changed. Push it first with "
                               "'airgap-install push ARCHIVE'", found.problems[:20], exit_code=2)

    def deliver(self, bundle: VerifiedBundle, say: Say) -> Delivered:
        """Pull by digest the images the engine lacks, then tag every name the stack uses."""
        bundle.require_checked()
        header = bundle.header
        self.check(header)
        assert self.found is not None
        lacking = [image for image in header.images if engine_ops.image_id_of(self.client, image.id) is None]
        say(f"pull: {len(lacking)} image(s) from {self.registry.registry} "
            f"(the engine has {len(header.images) - len(lacking)} already)")
        pulls = {image.id: self.found.pulls[image.id] for image in lacking}
        with ThreadPoolExecutor(max_workers=PARALLEL_PULLS) as pool:  # the engine shares layers between pulls
            for future in [pool.submit(self._pull, reference, say) for reference in pulls.values()]:
                future.result()
        for image_id, reference in pulls.items():
            got = engine_ops.image_id_of(self.client, reference)
            if got != image_id:
                raise InstallError(f"{reference} was pulled as image {str(got)[7:19]}, the signed release says "
                                   f"{image_id[7:19]}; refusing it")
        pulled = list(pulls.values())
        tagged = fill_in_names(self.client, header, say)
        return Delivered(loaded=pulled, tagged=tagged, layer_bytes=0)

    def _pull(self, reference: str, say: Say) -> None:
        repository, digest = reference.split("@", 1)
        try:
            for event in self.client.api.pull(repository, tag=digest, stream=True, decode=True, auth_config=self.auth()):
                if isinstance(event, dict) and event.get("error"):
                    raise InstallError(engine_advice(reference, str(event["error"])))
        except docker.errors.APIError as exc:
            raise InstallError(engine_advice(reference, str(exc.explanation or exc))) from None
        say(f"  pulled {reference}")

