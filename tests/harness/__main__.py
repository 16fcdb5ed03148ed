"""CLI: python -m tests.harness up|down [--purge]|status|env|reset-target."""

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
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
