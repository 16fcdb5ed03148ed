"""Compare release versions by SemVer 2.0 precedence.

``v0.3.5`` < ``v0.3.6`` < ``v0.10.0``; ``v1.0-rc1`` < ``v1.0``; ``v0.3.5-2`` < ``v0.3.5-10``;
``v0.3.5+build7`` is the same release as ``v0.3.5`` (build metadata never orders).

Tolerated beyond strict SemVer: a leading ``v``; fewer (or more) than three numbers,
missing ones counting as 0 (``v1.0`` == ``v1.0.0``); ``~`` or no separator before a
pre-release (``1.0~rc1``, ``1.0rc1``); leading zeros. And an identifier mixing letters and
digits compares its digit runs as numbers (``rc9`` < ``rc10``; SemVer would compare it as
text, which is never what a release meant). Anything else is not a version: ``compare``
returns None and the caller decides.
"""
from __future__ import annotations

import re
from typing import Optional

_VERSION = re.compile(
    r"[vV]?(?P<core>\d+(?:\.\d+)*)"
    r"(?:(?:[-~]|(?=[A-Za-z]))(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+(?P<build>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
)
_RUNS = re.compile(r"\d+|\D+")


def version_key(version: str) -> Optional[tuple]:
    """A sortable key for ``version`` (SemVer precedence), or None when it is not a version.

    Two versions of equal precedence have equal keys, e.g. ``v1.0`` and ``1.0.0+b7``.
    """
    match = _VERSION.fullmatch(version.strip())
    if not match:
        return None
    numbers = [int(part) for part in match.group("core").split(".")]
    while len(numbers) > 3 and numbers[-1] == 0:  # 1.2.3.0 == 1.2.3
        numbers.pop()
    numbers += [0] * (3 - len(numbers))
    pre = match.group("pre")
    if pre is None:  # a release sorts after every one of its pre-releases
        return (tuple(numbers), 1, ())
    return (tuple(numbers), 0, tuple(_identifier_key(part) for part in pre.split(".")))


def _identifier_key(identifier: str) -> tuple:
    """A numeric identifier sorts before any alphanumeric one; digit runs inside compare as numbers."""
    if identifier.isdigit():
        return (0, int(identifier))
    return (1, tuple((0, int(run), "") if run.isdigit() else (1, 0, run) for run in _RUNS.findall(identifier)))


def compare(a: str, b: str) -> Optional[int]:
    """-1, 0 or 1 as ``a`` is older, the same as or newer than ``b``; None if not comparable."""
    if a == b:
        return 0
    key_a, key_b = version_key(a), version_key(b)
    if key_a is None or key_b is None:
        return None
    return (key_a > key_b) - (key_a < key_b)
