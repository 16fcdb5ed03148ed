"""The prefix lock (issue 12, finding 2): a folder of our own, no symlink followed, nothing truncated."""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
from pathlib import Path

import pytest

from installer import lock
from installer.lock import LockError, prefix_lock

VICTIM_TEXT = b"root:precious:contents\n"


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch) -> Path:
    """The lock folder, moved to a temporary place (lock_directory() chooses it; tests do not touch /run)."""
    folder = tmp_path / "run" / "airgap-install"
    (tmp_path / "run").mkdir()
    monkeypatch.setattr(lock, "lock_directory", lambda: folder)
    return folder


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.write_bytes(VICTIM_TEXT)
    return path


def test_the_folder_is_created_0700_and_the_file_holds_our_pid(run_dir: Path, tmp_path: Path) -> None:
    with prefix_lock(tmp_path / "site"):
        assert oct(run_dir.stat().st_mode & 0o777) == "0o700" and run_dir.stat().st_uid == os.geteuid()
        [lock_file] = run_dir.iterdir()
        assert lock_file.read_text() == f"{os.getpid()}\n"
        assert oct(lock_file.stat().st_mode & 0o777) == "0o600"


def _hold(prefix: Path, folder: Path, ready, release) -> None:
    lock.lock_directory = lambda: folder
    with prefix_lock(prefix):
        ready.set()
        release.wait(30)


def test_a_second_run_refuses_or_waits_saying_so(run_dir: Path, tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(tmp_path / "site", run_dir, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(LockError, match=f"another airgap-install \\(pid {holder.pid}\\) is working on"):
            with prefix_lock(tmp_path / "site", wait=False):
                pass
        with prefix_lock(tmp_path / "other", wait=False):  # another prefix is not blocked
            pass
        said: list[str] = []
        threading.Timer(0.5, release.set).start()
        with prefix_lock(tmp_path / "site", say=said.append):
            assert lock.lock_path(tmp_path / "site").read_text() == f"{os.getpid()}\n"
    finally:
        release.set()
        holder.join(30)
    assert said == [f"waiting: another airgap-install (pid {holder.pid}) is working on {tmp_path / 'site'}"]


def test_the_lock_is_dropped_when_its_holder_dies(run_dir: Path, tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(tmp_path / "site", run_dir, ready, release))
    holder.start()
    assert ready.wait(30)
    holder.kill()
    holder.join(30)
    with prefix_lock(tmp_path / "site", wait=False):
        pass


def test_a_symlink_at_the_lock_file_is_neither_followed_nor_truncated(run_dir: Path, tmp_path: Path, victim: Path) -> None:
    run_dir.mkdir(mode=0o700)
    planted = lock.lock_path(tmp_path / "site")
    os.symlink(victim, planted)
    with pytest.raises(LockError, match="is a symlink; refusing to use it"):
        with prefix_lock(tmp_path / "site"):
            pass
    assert victim.read_bytes() == VICTIM_TEXT


def test_a_dangling_symlink_at_the_lock_file_creates_nothing(run_dir: Path, tmp_path: Path) -> None:
    run_dir.mkdir(mode=0o700)
    os.symlink(tmp_path / "created-through-the-link", lock.lock_path(tmp_path / "site"))
    with pytest.raises(LockError, match="is a symlink"):
        with prefix_lock(tmp_path / "site"):
            pass
    assert not (tmp_path / "created-through-the-link").exists()


def test_a_hard_link_at_the_lock_file_is_not_truncated(run_dir: Path, tmp_path: Path, victim: Path) -> None:
    run_dir.mkdir(mode=0o700)
    os.link(victim, lock.lock_path(tmp_path / "site"))
    with pytest.raises(LockError, match="not a plain file of this user's"):
        with prefix_lock(tmp_path / "site"):
            pass
    assert victim.read_bytes() == VICTIM_TEXT


def test_the_old_predictable_path_is_not_touched(run_dir: Path, tmp_path: Path, victim: Path) -> None:
    """Before: /run/lock/airgap-install-<key>.lock, world-writable folder, opened following links, truncated."""
    old_folder = Path("/run/lock")
    if not (old_folder.is_dir() and os.access(old_folder, os.W_OK)):
        pytest.skip("no writable /run/lock here")
    prefix = tmp_path / "site"
    key = hashlib.sha256(str(prefix.resolve()).encode()).hexdigest()[:16]
    planted = old_folder / f"airgap-install-{key}.lock"
    os.symlink(victim, planted)
    try:
        with prefix_lock(prefix):
            pass
    finally:
        planted.unlink()
    assert victim.read_bytes() == VICTIM_TEXT


@pytest.mark.parametrize("mode, message", [(0o777, r"writable by group and others \(mode 0777\)"),
                                           (0o770, r"writable by its group \(mode 0770\)"),
                                           (0o1777, r"writable by group and others \(mode 1777\)")])
def test_a_lock_folder_writable_by_others_is_refused(run_dir: Path, tmp_path: Path, mode: int, message: str) -> None:
    run_dir.mkdir()
    os.chmod(run_dir, mode)
    with pytest.raises(LockError, match=f"lock folder {run_dir} is {message}; refusing to use it \\(chmod 0700"):
        with prefix_lock(tmp_path / "site"):
            pass
    assert list(run_dir.iterdir()) == []


def test_a_lock_folder_that_is_a_symlink_is_refused(run_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    os.symlink(elsewhere, run_dir)
    with pytest.raises(LockError, match="is a symlink; refusing to use it"):
        with prefix_lock(tmp_path / "site"):
            pass
    assert list(elsewhere.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the folder to another user")
def test_a_lock_folder_owned_by_another_user_is_refused(run_dir: Path, tmp_path: Path) -> None:
    run_dir.mkdir(mode=0o700)
    os.chown(run_dir, 65534, 65534)
    with pytest.raises(LockError, match="owned by uid 65534, not by this user"):
        with prefix_lock(tmp_path / "site"):
            pass


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another user")
def test_a_lock_file_owned_by_another_user_is_refused_untouched(run_dir: Path, tmp_path: Path) -> None:
    run_dir.mkdir(mode=0o700)
    planted = lock.lock_path(tmp_path / "site")
    planted.write_bytes(VICTIM_TEXT)
    os.chown(planted, 65534, 65534)
    with pytest.raises(LockError, match="not a plain file of this user's"):
        with prefix_lock(tmp_path / "site"):
            pass
    assert planted.read_bytes() == VICTIM_TEXT


def test_root_locks_live_in_a_root_only_run_folder(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert lock.lock_directory() == Path("/run/airgap-install")
    monkeypatch.setattr(os, "geteuid", lambda: 1234)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert lock.lock_directory() == tmp_path / "airgap-install"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert lock.lock_directory().name == "airgap-install-1234"
