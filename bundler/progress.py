"""Progress for long steps: rich bars on a terminal, plain lines otherwise."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Optional, TextIO

if TYPE_CHECKING:
    from rich.progress import Progress


class Task:
    """One step being reported: bytes moved, and steps done out of a total when known."""

    def __init__(self, reporter: "Reporter", description: str, total: Optional[int]):
        self.reporter, self.description = reporter, description
        self.bytes = 0
        self.completed, self.total = 0, total
        self.note = ""
        self._started = time.monotonic()
        progress = reporter._progress
        self._id = progress.add_task(description, total=total, detail="") if progress else None

    def add_bytes(self, amount: int) -> None:
        """Count ``amount`` more bytes moved."""
        self.bytes += amount
        self._refresh()

    def set_bytes(self, amount: int) -> None:
        """Set the bytes moved so far."""
        self.bytes = amount
        self._refresh()

    def step(self, completed: int, total: Optional[int] = None, note: str = "") -> None:
        """Set how many of ``total`` steps are done (layers, build steps, members)."""
        self.completed, self.total, self.note = completed, total or self.total, note
        self._refresh()

    def finish(self) -> None:
        """Mark the task complete (a full bar)."""
        if self.total is None:
            self.total = self.completed = 1
        else:
            self.completed = self.total
        self._refresh()

    def detail(self) -> str:
        """A short text: steps, megabytes and rate."""
        parts = []
        if self.total and self.total > 1:
            parts.append(f"{self.completed}/{self.total} {self.note}".rstrip())
        if self.bytes:
            elapsed = max(time.monotonic() - self._started, 1e-6)
            parts.append(f"{self.bytes / 1e6:.1f} MB at {self.bytes / 1e6 / elapsed:.0f} MB/s")
        return "  ".join(parts)

    def _refresh(self) -> None:
        if self._id is not None:
            self.reporter._progress.update(self._id, completed=self.completed, total=self.total, detail=self.detail())


class Reporter:
    """Reports steps to ``stream``: bars when it is a terminal, one line per step otherwise."""

    def __init__(self, stream: Optional[TextIO] = None, *, quiet: bool = False, force_plain: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.fancy = not force_plain and not quiet and self.stream.isatty()
        self._progress: Optional["Progress"] = None

    def line(self, text: str) -> None:
        """A plain status line."""
        if self.quiet:
            return
        if self._progress:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    @contextmanager
    def task(self, description: str, total: Optional[int] = None) -> Iterator[Task]:
        """A step: a bar on a terminal; 'description ... done (details, Ts)' otherwise."""
        started = time.monotonic()
        if self.fancy:
            # rich is imported only for bars: importing it costs about 35 ms at every start.
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(
                TextColumn("{task.description:<44}"), BarColumn(bar_width=30), TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(), console=Console(file=self.stream, highlight=False), transient=False,
            ) as progress:
                self._progress = progress
                try:
                    task = Task(self, description, total)
                    yield task
                    task.finish()
                finally:
                    self._progress = None
            return
        self.line(f"{description} ...")
        task = Task(self, description, total)
        yield task
        task.finish()
        detail = task.detail()
        self.line(f"{description} ... done ({detail + ', ' if detail else ''}{time.monotonic() - started:.1f}s)")
