"""An install or upgrade killed (SIGKILL, the whole process group) at any moment is finished by one rerun.

The kill points are spread evenly over a clean run's own duration, measured
first, so most of them land during ``compose up`` (the longest phase), where a
half-created stack holds its ports: the rerun must take those over as its own.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from tests.test_upgrade_engine import _start_install, install, releases, rows, status, write_row  # noqa: F401 - fixture

FRACTIONS = [0.05 + 0.1 * i for i in range(10)]  # 10 points over the whole run


def _timed_run(harness, archive, prefix, pubkey, command: str = "install") -> float:
    started = time.monotonic()
    install(harness, archive, prefix, pubkey, command=command)
    return time.monotonic() - started


def _kill_after(process, seconds: float) -> bool:
    """Kill the run's process group after ``seconds``; False if it had ended by then."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return True


@pytest.fixture(scope="module")
def install_seconds(harness, releases, tmp_path_factory) -> float:  # noqa: F811 - the imported fixture
    harness.reset_target()
    return _timed_run(harness, releases["v0.3.5"], tmp_path_factory.mktemp("clean") / "site", releases["pubkey"])


@pytest.mark.parametrize("fraction", FRACTIONS, ids=lambda f: f"at-{round(f * 100)}pct")
def test_install_killed_at_any_point_is_finished_by_a_rerun(harness, releases, install_seconds, target_engine,  # noqa: F811
                                                            tmp_path, fraction: float) -> None:
    harness.reset_target()
    prefix = tmp_path / "site"
    process = _start_install(harness, releases["v0.3.5"], prefix, releases["pubkey"], {})
    _kill_after(process, fraction * install_seconds)
    rerun = install(harness, releases["v0.3.5"], prefix, releases["pubkey"], check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert "in use by a process on this host" not in rerun.stderr
    assert status(harness, prefix)["healthy"]


@pytest.mark.parametrize("fraction", FRACTIONS, ids=lambda f: f"at-{round(f * 100)}pct")
def test_upgrade_killed_at_any_point_is_finished_by_a_rerun_and_keeps_the_data(harness, releases, install_seconds,  # noqa: F811
                                                                               target_engine, tmp_path, fraction: float) -> None:
    harness.reset_target()
    prefix = tmp_path / "site"
    install(harness, releases["v0.3.5"], prefix, releases["pubkey"])
    write_row(target_engine, "row-before-the-upgrade")
    process = _start_install(harness, releases["v0.3.6"], prefix, releases["pubkey"], {})
    _kill_after(process, fraction * install_seconds)
    rerun = install(harness, releases["v0.3.6"], prefix, releases["pubkey"], command="upgrade", check=False)
    assert rerun.returncode == 0, rerun.stderr
    state = status(harness, prefix)
    assert state["healthy"] and state["version"] == "v0.3.6"
    assert "row-before-the-upgrade" in rows(target_engine)
