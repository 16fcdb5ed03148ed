"""Real-engine test harness for airgap-compose.

``Harness().up()`` gives a loopback registry acting as docker.io mirror, a
BUILD engine (the connected machine, pulls through the mirror), a TARGET
engine in network namespace ``airgap`` (the air-gapped host: no network),
and busybox stand-ins for every upstream image. On demand, ``SiteRegistry``:
the site's Harbor stand-in (``aiharbor.msxf.local``, TLS + basic auth) inside
the namespace. On demand too, ``SwarmRig``: a two-node Docker Swarm (engines
in network namespaces ``node1`` and ``node2`` joined by a veth pair, the site
registry on node1 answering to both). CLI: ``python -m tests.harness
up|down [--purge]|status|env|reset-target|site-registry [--wipe]|swarm [--down]``.
"""

from .core import (DEFAULT_ROOT, FOREIGN_REF, MIRROR_CHECK_REF, ComponentStatus, Harness,
                   push_foreign_platform_image)
from .images import BASE_REF, Standin, load_standins
from .procs import HarnessError
from .siteregistry import SiteRegistry
from .source import SOURCE_DIR, SOURCE_SERVICES, SourceService, build_source_service
from .swarm import SwarmRig

__all__ = [
    "BASE_REF", "DEFAULT_ROOT", "FOREIGN_REF", "MIRROR_CHECK_REF", "SOURCE_DIR", "SOURCE_SERVICES",
    "ComponentStatus", "Harness", "HarnessError", "SiteRegistry", "SourceService", "Standin",
    "SwarmRig", "build_source_service", "load_standins", "push_foreign_platform_image",
]
