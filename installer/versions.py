"""Compare release versions (``v0.3.5`` < ``v0.3.6`` < ``v0.10.0``; ``v1.0-rc1`` < ``v1.0``)."""
from __future__ import annotations

import re
from typing import Optional


def version_key(version: str) -> Optional[tuple]:
    """A sortable key for ``version``, or None when it is not a dotted number version."""
    match = re.fullmatch(r"[vV]?(\d+(?:\.\d+)*)(?:[-+~]?(.*))?", version.strip())
    if not match:
        return None
    numbers = tuple(int(part) for part in match.group(1).split("."))
    numbers += (0,) * (4 - len(numbers)) if len(numbers) < 4 else ()
    suffix = match.group(2) or ""
    # a release sorts after its pre-releases (rc, beta...): no suffix ranks highest
    return numbers + ((1, "") if not suffix else (0, suffix))


def compare(a: str, b: str) -> Optional[int]:
    """-1, 0 or 1 as ``a`` is older, the same as or newer than ``b``; None if not comparable."""
    if a == b:
        return 0
    key_a, key_b = version_key(a), version_key(b)
    if key_a is None or key_b is None:
        return None
    return (key_a > key_b) - (key_a < key_b)
