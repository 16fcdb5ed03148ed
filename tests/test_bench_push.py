"""The push benchmark runs end to end on a small image set (its figures are measured, never asserted)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("load_push_s", "skopeo_s", "push_s", "repush_s", "push_peak_rss_mb", "speedup_vs_load_push",
           "speedup_vs_skopeo", "repush_fraction")


def test_the_push_benchmark_measures_all_three_ways_and_writes_its_table(harness, site_registry, tmp_path) -> None:
    out = tmp_path / "results"
    result = subprocess.run([sys.executable, "-m", "bench.push", "--scale", "0.02", "--repeat", "1", "--out", str(out),
                             "--work", str(tmp_path / "work")], capture_output=True, text=True, cwd=ROOT, timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    figures = json.loads((out / "push.json").read_text())
    assert all(isinstance(figures[name], (int, float)) and figures[name] > 0 for name in FIGURES), figures
    assert figures["names"] == 12 and len(figures["rounds"]["ours"]) == 1
    table = (out / "push.md").read_text()
    assert "docker load + docker push" in table and "skopeo copy" in table and "airgap-install push" in table
