"""CLI: python -m tests.harness up|down [--purge]|status|env|reset-target|site-registry [--wipe]|
swarm [--down]."""

from __future__ import annotations

import argparse
import shlex
import sys

from .core import Harness, stderr_log
from .procs import HarnessError


def main(argv: list[str] | None = None) -> int:
    """Run one harness command; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m tests.harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start or reuse everything (idempotent)")
    down = sub.add_parser("down", help="stop engines and registry (keeps data)")
    down.add_argument("--purge", action="store_true", help="also delete all state and the netns")
    sub.add_parser("status", help="one line per component; exit 1 when any is down")
    sub.add_parser("env", help="print shell export lines")
    sub.add_parser("reset-target", help="empty the target engine")
    site = sub.add_parser("site-registry",
                          help="start the site registry (aiharbor.msxf.local in the netns); "
                               "print its host, CA file, username and password file as exports")
    site.add_argument("--wipe", action="store_true", help="delete everything it stores first")
    rig = sub.add_parser("swarm",
                         help="start the two-node Swarm rig (netns node1, node2; the site "
                              "registry on node1); print each node's DOCKER_HOST and the "
                              "registry as exports")
    rig.add_argument("--down", action="store_true",
                     help="leave the Swarm, stop its engines, delete its namespaces")
    args = parser.parse_args(argv)

    harness = Harness(log=stderr_log)
    try:
        if args.command == "up":
            harness.up()
        elif args.command == "down":
            harness.down(purge=args.purge)
        elif args.command == "status":
            rows = harness.status()
            print("\n".join(str(row) for row in rows))
            return 0 if all(row.ok for row in rows) else 1
        elif args.command == "env":
            for key, value in harness.env().items():
                print(f"export {key}={shlex.quote(value)}")
        elif args.command == "reset-target":
            harness.reset_target()
        elif args.command == "site-registry":
            site_registry(harness, wipe=args.wipe)
        elif args.command == "swarm":
            swarm(harness, down=args.down)
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2
    return 0


def site_registry(harness: Harness, wipe: bool = False) -> None:
    """Start (or reuse, or wipe) the site registry; print shell export lines naming it."""
    site = harness.site_registry
    if wipe:
        site.wipe()
        stderr_log("site registry: wiped and started")
    else:
        stderr_log(f"site registry: {site.ensure()}")
    for key, value in (("SITE_REGISTRY_HOST", site.host),
                       ("SITE_REGISTRY_CA_FILE", str(site.ca_file)),
                       ("SITE_REGISTRY_USERNAME", site.username),
                       ("SITE_REGISTRY_PASSWORD_FILE", str(site.password_file))):
        print(f"export {key}={shlex.quote(value)}")


def swarm(harness: Harness, down: bool = False) -> None:
    """Start (or reuse, or stop) the Swarm rig; print shell export lines naming it."""
    rig = harness.swarm
    if down:
        stderr_log(f"swarm rig: {'stopped' if rig.stop() else 'not running'}")
        return
    rig.ensure()
    site = rig.site_registry
    exports = [(f"{node.upper()}_DOCKER_HOST", rig.docker_host(node)) for node in rig.nodes]
    exports += [("SITE_REGISTRY_HOST", site.host), ("SITE_REGISTRY_CA_FILE", str(site.ca_file)),
                ("SITE_REGISTRY_USERNAME", site.username),
                ("SITE_REGISTRY_PASSWORD_FILE", str(site.password_file))]
    for key, value in exports:
        print(f"export {key}={shlex.quote(value)}")
    stderr_log("run a command inside a node: nsenter --net=/var/run/netns/NODE COMMAND")


if __name__ == "__main__":
    sys.exit(main())
