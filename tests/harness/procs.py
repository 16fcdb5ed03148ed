"""Background processes: spawn detached, find by pidfile, stop, wait for readiness."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence


# Popen objects of the daemons we started, kept so they are not reported as leaked.
_CHILDREN: list[subprocess.Popen] = []


class HarnessError(RuntimeError):
    """A harness component could not be started, reached or stopped."""


def read_pid(pidfile: Path) -> Optional[int]:
    """The pid written in ``pidfile``, or None when absent or unreadable."""
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: Optional[int], name: str) -> bool:
    """True when ``pid`` runs a process whose command line mentions ``name``.

    The name check guards against a stale pidfile whose pid was reused.
    Zombies count as dead.
    """
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return False
    return state != b"Z" and name.encode() in cmdline


def spawn(argv: Sequence[str], log: Path, pidfile: Optional[Path] = None,
          env: Optional[Mapping[str, str]] = None) -> subprocess.Popen:
    """Start ``argv`` detached from us (own session, output to ``log``).

    The process outlives the caller. Writes ``pidfile`` when given; ``env``
    is added to our environment.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n--- {time.strftime('%F %T')} {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env={**os.environ, **(env or {})},
        )
    _CHILDREN.append(proc)
    if pidfile is not None:
        pidfile.parent.mkdir(parents=True, exist_ok=True)
        pidfile.write_text(f"{proc.pid}\n")
    return proc


def reap(pid: int) -> None:
    """Collect ``pid`` if it is our own exited child (no-op otherwise)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_pid(pid: Optional[int], name: str, timeout: float = 30.0) -> bool:
    """SIGTERM ``pid`` (if it is ``name``), SIGKILL after ``timeout`` s.

    Returns True when a process was stopped.
    """
    if not pid_alive(pid, name):
        return False
    assert pid is not None

    def gone() -> bool:
        reap(pid)
        return not pid_alive(pid, name)

    os.kill(pid, signal.SIGTERM)
    try:
        wait_until(gone, timeout, f"{name} (pid {pid}) to exit")
    except HarnessError:
        os.kill(pid, signal.SIGKILL)
        wait_until(gone, 10, f"{name} (pid {pid}) to die")
    return True


def wait_until(
    ready: Callable[[], bool],
    timeout: float,
    what: str,
    alive: Optional[Callable[[], bool]] = None,
    log: Optional[Path] = None,
) -> None:
    """Poll ``ready`` until true; raise HarnessError after ``timeout`` s.

    When ``alive`` turns false first, fail at once. ``log``'s tail goes into
    the error message.
    """
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        if ready():
            return
        if alive is not None and not alive():
            raise HarnessError(f"{what}: process exited{log_tail(log)}")
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what}{log_tail(log)}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def log_tail(log: Optional[Path], lines: int = 15) -> str:
    """The last ``lines`` lines of ``log``, formatted for an error message."""
    if log is None or not log.exists():
        return ""
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {log}:\n" + "\n".join(tail)


def run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    """Run a short command, capturing output; raise HarnessError on failure."""
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on file ``path`` (made, with its folder, if missing) while inside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield
