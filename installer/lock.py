"""One airgap-install at a time per install directory: an exclusive lock kept outside the prefix.

The lock file lives in a folder only the running user can write: ``/run/airgap-install``
for root (created mode 0700); for other users ``$XDG_RUNTIME_DIR/airgap-install``, else
``airgap-install-<uid>`` in the temporary folder. A folder that is a symlink, is owned by
someone else or is writable by group or others is refused, never used. The lock file is
opened without following a symlink and without truncating; only after the lock is ours
and the file proved to be our own regular file is it emptied and given our pid.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

RUN_DIR = Path("/run/airgap-install")

Say = Callable[[str], None]


class LockError(Exception):
    """The prefix is locked by another run (and we were not to wait), or the lock folder or file is unsafe."""


def lock_directory() -> Path:
    """Where this user's prefix locks live (not created here)."""
    uid = os.geteuid()
    if uid == 0 and RUN_DIR.parent.is_dir():
        return RUN_DIR
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if uid != 0 and os.path.isabs(runtime) and os.path.isdir(runtime):
        return Path(runtime) / "airgap-install"
    return Path(tempfile.gettempdir()) / f"airgap-install-{uid}"


def lock_path(prefix: Path) -> Path:
    """The lock file of ``prefix``."""
    key = hashlib.sha256(str(prefix.resolve()).encode()).hexdigest()[:16]
    return lock_directory() / f"{key}.lock"


@contextmanager
def prefix_lock(prefix: Path, wait: bool = True, say: Optional[Say] = None) -> Iterator[None]:
    """Hold an exclusive lock on ``prefix`` (kept outside it, so a refused install leaves it untouched).

    A second run on the same prefix waits (saying so) or, with ``wait=False``, refuses.
    The kernel drops the lock when its holder dies, even by SIGKILL.
    """
    path = lock_path(prefix)
    fd = _open_lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            if not wait:
                raise LockError(f"another airgap-install (pid {holder}) is working on {prefix}; try again when it ends") from None
            if say:
                say(f"waiting: another airgap-install (pid {holder}) is working on {prefix}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        _check_own_regular_file(fd, path)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _open_lock_file(path: Path) -> int:
    """Open (creating) the lock file in its checked folder: no symlink followed, nothing truncated."""
    folder_fd = _open_lock_folder(path.parent)
    try:
        fd = os.open(path.name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600,
                     dir_fd=folder_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LockError(f"lock file {path} is a symlink; refusing to use it (remove it: rm {path})") from None
        raise LockError(f"cannot open the lock file {path}: {exc.strerror}") from None
    finally:
        os.close(folder_fd)
    try:
        _check_own_regular_file(fd, path)
    except LockError:
        os.close(fd)
        raise
    return fd


def _open_lock_folder(folder: Path) -> int:
    """The lock folder, created 0700 if absent; refused unless a real folder of ours, writable by us alone."""
    uid = os.geteuid()
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise LockError(f"cannot create the lock folder {folder}: {exc.strerror}") from None
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            kind = "a symlink" if os.path.islink(folder) else "not a folder"
            raise LockError(f"lock folder {folder} is {kind}; refusing to use it (remove it: rm {folder}, "
                            "then run again)") from None
        raise LockError(f"cannot open the lock folder {folder}: {exc.strerror}") from None
    info = os.fstat(fd)
    problem = None
    if info.st_uid != uid:
        problem = f"owned by uid {info.st_uid}, not by this user (uid {uid})"
    elif info.st_mode & 0o022:
        problem = f"writable by {'group and others' if info.st_mode & 0o002 else 'its group'} " \
                  f"(mode {stat.S_IMODE(info.st_mode):04o})"
    if problem:
        os.close(fd)
        fix = f"chmod 0700 {folder}" if info.st_uid == uid else f"rm -r {folder}, then run again"
        raise LockError(f"lock folder {folder} is {problem}; refusing to use it ({fix})")
    return fd


def _check_own_regular_file(fd: int, path: Path) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_nlink != 1:
        raise LockError(f"lock file {path} is not a plain file of this user's; refusing to use it (remove it: rm {path})")
