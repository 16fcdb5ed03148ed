"""The Swarm benchmark runs end to end on the two-node rig (its figures are measured, never asserted)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.swarm import MODES

ROOT = Path(__file__).resolve().parent.parent


def test_the_swarm_benchmark_times_all_four_installs_and_writes_its_table(harness, swarm_rig, tmp_path) -> None:
    out = tmp_path / "results"
    result = subprocess.run([sys.executable, "-m", "bench.swarm", "--repeat", "1", "--out", str(out),
                             "--work", str(tmp_path / "work")], capture_output=True, text=True, cwd=ROOT, timeout=1800)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    figures = json.loads((out / "swarm.json").read_text())
    for mode in MODES:
        assert len(figures["runs_s"][mode]) == 1 and figures["median_s"][mode] > 0, mode
        assert 0 < figures["median_up_s"][mode] < figures["median_s"][mode], mode
    table = (out / "swarm.md").read_text()
    assert all(label in table for label in MODES.values())
