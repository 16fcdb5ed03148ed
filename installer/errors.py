"""The installer's own error, shared by the install core and its destinations and runners."""
from __future__ import annotations

from typing import Callable, Sequence

Say = Callable[[str], None]


class InstallError(Exception):
    """The install stopped; ``details`` lists what failed and what to do; ``exit_code`` is the process's."""

    def __init__(self, message: str, details: Sequence[str] = (), exit_code: int = 1):
        super().__init__(message)
        self.details = list(details)
        self.exit_code = exit_code
