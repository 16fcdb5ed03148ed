"""Compose's ``${VAR}`` interpolation: ``:-``, ``-``, ``:?``, ``?``, ``:+``, ``+``, nested defaults, ``$$``.

Shared by the bundler (reading the application's compose file) and the
installer (resolving the site's values into a Swarm stack file).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


@dataclass(frozen=True)
class Reference:
    """One ``${NAME<op><arg>}`` (or ``$NAME``) in a string."""

    name: str
    operator: str = ""
    argument: str = ""

    @property
    def default(self) -> Optional[str]:
        """The default compose uses when NAME is unset (``:-``/``-``), else None."""
        return self.argument if self.operator in (":-", "-") else None

    @property
    def required(self) -> bool:
        """``${NAME:?message}`` / ``${NAME?message}``."""
        return self.operator in (":?", "?")


class InterpolationError(ValueError):
    """A string is not valid compose interpolation, or a required variable is unset."""


def _scan(text: str, on_reference: Callable[[Reference, str], str]) -> str:
    """Walk ``text``; each reference is replaced by what ``on_reference(ref, raw)`` returns; ``$$`` stays ``$$``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$":
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if nxt == "$":
            out.append("$$")
            i += 2
        elif nxt == "{":
            end, reference = _braced(text, i)
            out.append(on_reference(reference, text[i:end]))
            i = end
        else:
            match = NAME.match(text, i + 1)
            if match:
                out.append(on_reference(Reference(match.group(0)), match.group(0)))
                i = match.end()
            else:
                out.append("$")
                i += 1
    return "".join(out)


def _braced(text: str, start: int) -> tuple[int, Reference]:
    match = NAME.match(text, start + 2)
    if not match:
        raise InterpolationError(f"invalid interpolation format in {text!r}: expected a variable name after '${{'")
    name = match.group(0)
    i = match.end()
    operator = ""
    for candidate in _OPERATORS:
        if text.startswith(candidate, i):
            operator = candidate
            i += len(candidate)
            break
    depth = 1
    arg_start = i
    while i < len(text):
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                break
        i += 1
    if depth != 0:
        raise InterpolationError(f"invalid interpolation format in {text!r}: '${{' without its '}}'")
    if not operator and i != arg_start:
        raise InterpolationError(f"invalid interpolation format in {text!r}: unexpected {text[arg_start:i]!r} after ${{{name}")
    return i + 1, Reference(name, operator, text[arg_start:i])


def references(text: str) -> list[Reference]:
    """Every variable ``text`` refers to, nested defaults included (``$$`` escapes skipped)."""
    found: list[Reference] = []

    def collect(reference: Reference, raw: str) -> str:
        found.append(reference)
        if reference.argument:
            found.extend(references(reference.argument))
        return raw

    _scan(text, collect)
    return found


def interpolate(text: str, values: Mapping[str, str]) -> str:
    """``text`` with every reference filled in as compose would; ``$$`` becomes ``$``."""

    def fill(reference: Reference, raw: str) -> str:
        value = values.get(reference.name)
        is_set, non_empty = value is not None, bool(value)
        op = reference.operator
        if op == ":-":
            return value if non_empty else interpolate(reference.argument, values)
        if op == "-":
            return value if is_set else interpolate(reference.argument, values)
        if op in (":?", "?"):
            if (op == ":?" and not non_empty) or (op == "?" and not is_set):
                raise InterpolationError(f"required variable {reference.name} is missing a value: {reference.argument}")
            return value or ""
        if op == ":+":
            return interpolate(reference.argument, values) if non_empty else ""
        if op == "+":
            return interpolate(reference.argument, values) if is_set else ""
        return value or ""

    return _scan(text, fill).replace("$$", "$")
