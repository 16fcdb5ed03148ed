"""Progress for long steps: rich bars on a terminal, plain lines otherwise."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator, Optional, TextIO

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn


class Task:
    """One step whose progress is reported (bytes, or nothing if unknown)."""

    def __init__(self, reporter: "Reporter", description: str, total: Optional[int]):
        self.reporter, self.description, self.total = reporter, description, total
        self.done_bytes = 0
        self._id = reporter._progress.add_task(description, total=total) if reporter._progress else None

    def advance(self, amount: int) -> None:
        """Count ``amount`` more bytes done."""
        self.done_bytes += amount
        if self._id is not None:
            self.reporter._progress.update(self._id, advance=amount)

    def update(self, completed: int, total: Optional[int] = None) -> None:
        """Set the bytes done (and the total, when it becomes known)."""
        self.done_bytes = completed
        if self._id is not None:
            self.reporter._progress.update(self._id, completed=completed, total=total or self.total)


class Reporter:
    """Reports steps to ``stream``: bars when it is a terminal, one line per step otherwise."""

    def __init__(self, stream: Optional[TextIO] = None, *, quiet: bool = False, force_plain: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.fancy = not force_plain and not quiet and self.stream.isatty()
        self.console = Console(file=self.stream, highlight=False)
        self._progress: Optional[Progress] = None

    def line(self, text: str) -> None:
        """A plain status line."""
        if not self.quiet:
            if self._progress:
                self._progress.console.print(text, markup=False, highlight=False)
            else:
                print(text, file=self.stream, flush=True)

    @contextmanager
    def task(self, description: str, total: Optional[int] = None) -> Iterator[Task]:
        """A step with a bar on a terminal; 'description ... done (N MB, Ts)' otherwise."""
        started = time.monotonic()
        if self.fancy and self._progress is None:
            with Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                TimeElapsedColumn(), console=self.console, transient=False,
            ) as progress:
                self._progress = progress
                try:
                    yield Task(self, description, total)
                finally:
                    self._progress = None
            return
        if not self.fancy:
            self.line(f"{description} ...")
        task = Task(self, description, total)
        yield task
        if not self.fancy:
            size = f"{task.done_bytes / 1e6:.1f} MB, " if task.done_bytes else ""
            self.line(f"{description} ... done ({size}{time.monotonic() - started:.1f}s)")
