"""Benchmark: airgap-bundle / airgap-install against the manual pipelines, on one image set.

    sudo python3 -m bench.run [--scale 1.0] [--repeat 3] [--out bench/results]

Uses the test harness's engines (tests/harness): the build engine for export,
the air-gapped target engine (emptied before each install) for install. Every
figure is the median of --repeat runs. Results: OUT/latest.json and OUT/latest.md.
Nothing here asserts anything: it measures.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import docker

from bench.imageset import ensure_images, layer_bytes, write_manifest
from tests.harness import Harness

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"  # Debian's 20.10 client


@dataclass
class Measured:
    """One run: wall seconds, peak resident memory of the measured process (KB) and bytes it wrote."""

    seconds: float
    peak_rss_kb: int = 0
    write_bytes: int = 0


def run_measured(argv: list[str], env: dict, stdout=subprocess.DEVNULL) -> Measured:
    """Run ``argv``; sample its VmHWM and write_bytes from /proc until it exits."""
    started = time.monotonic()
    process = subprocess.Popen(argv, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    peak = written = 0
    while process.poll() is None:
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
            peak = max(peak, int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))))
            io = Path(f"/proc/{process.pid}/io").read_text()
            written = max(written, int(next(line.split()[1] for line in io.splitlines() if line.startswith("write_bytes"))))
        except (OSError, StopIteration, ValueError):
            pass
        time.sleep(0.05)
    seconds = time.monotonic() - started
    stderr = process.stderr.read()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{stderr[-3000:]}")
    measured = Measured(seconds, peak, written)
    measured.stderr = stderr  # type: ignore[attr-defined]
    return measured


def shell(command: str, env: dict) -> float:
    """Wall seconds of a shell pipeline (pipefail on)."""
    started = time.monotonic()
    subprocess.run(["bash", "-o", "pipefail", "-c", command], env=env, check=True, cwd=ROOT)
    return time.monotonic() - started


RUNS: dict[str, list[float]] = {}


def median(runs: list[float], name: str = "") -> float:
    """The median; every run is kept in the results too (``runs``)."""
    if name:
        RUNS[name] = [round(r, 3) for r in runs]
    return statistics.median(runs)


def settle() -> None:
    """Write out what earlier runs left in the page cache, so no timed run pays for another's writeback."""
    os.sync()


def repeat(times: int, action: Callable[[], float], before: Optional[Callable[[], None]] = None) -> list[float]:
    results = []
    for _ in range(times):
        if before:
            before()
        settle()
        results.append(action())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="size of the image set (1.0: about 2.1 GB of unique layers)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (the median is reported)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/airgap-bench"))
    args = parser.parse_args()
    harness = Harness().up()
    build_env = dict(os.environ, DOCKER_HOST=harness.build_docker_host)
    target_env = dict(os.environ, DOCKER_HOST=harness.target_docker_host)
    build = docker.DockerClient(base_url=harness.build_docker_host, timeout=1800)
    work = args.work
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    say = lambda text: print(f"bench: {text}", flush=True)  # noqa: E731

    # Containers left running on the target engine (restart policies bring them back with the
    # engine) spend CPU on health checks while the exports are timed: start from an empty target.
    harness.reset_target()
    # A regular install byte-compiles the tool; an editable one under PYTHONDONTWRITEBYTECODE would
    # compile every module at each start, which is not what users run.
    subprocess.run([PY, "-m", "compileall", "-q", str(ROOT / "bundler"), str(ROOT / "installer")], check=True,
                   env=dict(os.environ, PYTHONDONTWRITEBYTECODE=""))
    refs = ensure_images(build, args.scale, say=say)
    next_refs = ensure_images(build, args.scale, changed_app=5, tag_suffix="next", say=say)
    unique, per_image = layer_bytes(args.scale)
    say(f"{len(refs)} images, {unique / 1e9:.2f} GB of unique layers ({per_image / 1e9:.2f} GB counted per image)")
    manifest_v1 = write_manifest(work / "m1", refs, "v1")
    manifest_v2 = write_manifest(work / "m2", next_refs, "v2")
    subprocess.run([PY, "-m", "bundler.cli", "keygen", "-o", str(work / "bench.key")], check=True, capture_output=True)
    all_refs = " ".join(refs)
    cache = work / "cache"
    bundle = [PY, "-m", "bundler.cli", "build", "--no-pull", "--no-kit", "--plain", "--key", str(work / "bench.key")]
    figures: dict[str, object] = {"scale": args.scale, "repeat": args.repeat, "images": len(refs),
                                  "unique_layer_bytes": unique, "per_image_bytes": per_image}

    say("export (a): docker save per image | gzip")
    (work / "gz").mkdir()
    per_image = " ; ".join(f"{DOCKER} save {r} | gzip -c > {work}/gz/{i}.tar.gz" for i, r in enumerate(refs))
    figures["export_gzip_s"] = median(repeat(args.repeat, lambda: shell(per_image, build_env)), "export_gzip_s")
    figures["export_gzip_bytes"] = sum(p.stat().st_size for p in (work / "gz").glob("*.tar.gz"))

    # The floor, (b) and (c) run in rounds, one of each per round, so that the machine's slow
    # and fast spells fall on all three alike; each figure is still the median of its own runs.
    say("export floor, (b) docker save of all | zstd -T0 -3, (c) airgap-bundle build (images present, empty cache): in rounds")
    zst, out1 = work / "all.tar.zst", work / "v1"
    floor, expert, cold = [], [], []
    for _ in range(args.repeat):
        settle()
        floor.append(shell(f"{DOCKER} save {all_refs} > /dev/null", build_env))
        zst.unlink(missing_ok=True)
        settle()
        expert.append(shell(f"{DOCKER} save {all_refs} | zstd -T0 -3 -q -f -o {zst}", build_env))
        subprocess.run(["rm", "-rf", str(cache), str(out1)], check=True)
        settle()
        cold.append(run_measured(bundle + [str(manifest_v1), "--source", str(manifest_v1.parent), "-o", str(out1), "--lock", str(work / "v1.lock.json")],
                                 dict(build_env, AIRGAP_BUNDLE_CACHE=str(cache))))
    figures["save_devnull_s"] = median(floor, "save_devnull_s")
    figures["export_zstd_s"] = median(expert, "export_zstd_s")
    figures["export_zstd_bytes"] = zst.stat().st_size
    archive_v1 = out1 / "bench-v1.tar.zst"
    figures["bundle_s"] = median([m.seconds for m in cold], "bundle_s")
    figures["bundle_vs_save_by_round"] = [round(m.seconds / f, 3) for m, f in zip(cold, floor)]
    figures["bundle_peak_rss_mb"] = max(m.peak_rss_kb for m in cold) / 1024
    figures["bundle_bytes"] = archive_v1.stat().st_size

    say("export (d): airgap-bundle build of the next release (one image changed), warm cache")
    out2 = work / "v2"
    warm = []
    for _ in range(args.repeat):
        subprocess.run(["rm", "-rf", str(out2)], check=True)
        settle()
        warm.append(run_measured(bundle + [str(manifest_v2), "--source", str(manifest_v2.parent), "-o", str(out2), "--lock", str(work / "v2.lock.json")],
                                 dict(build_env, AIRGAP_BUNDLE_CACHE=str(cache))))
    figures["bundle_next_s"] = median([m.seconds for m in warm], "bundle_next_s")
    archive_v2 = out2 / "bench-v2.tar.zst"
    figures["bundle_next_bytes"] = archive_v2.stat().st_size
    out_delta = work / "delta"
    delta = run_measured(bundle + [str(manifest_v2), "--source", str(manifest_v2.parent), "-o", str(out_delta), "--lock", str(work / "d.lock.json"),
                                   "--since", str(archive_v1)], dict(build_env, AIRGAP_BUNDLE_CACHE=str(cache)))
    archive_delta = out_delta / "bench-v2.tar.zst"
    figures["bundle_delta_s"] = delta.seconds
    figures["delta_bytes"] = archive_delta.stat().st_size

    reset = harness.reset_target
    say("install (a): gunzip | docker load per image, empty engine")
    gz_load = " ; ".join(f"gunzip -c {work}/gz/{i}.tar.gz | {DOCKER} load -q > /dev/null" for i in range(len(refs)))
    figures["install_gzip_s"] = median(repeat(args.repeat, lambda: shell(gz_load, target_env), reset), "install_gzip_s")

    say("install (b) zstd -dc | docker load and (c) airgap-install, each onto an empty engine: in rounds")
    expert_loads, installs = [], []
    install = [PY, "-m", "installer.cli", "install", "--pubkey", str(work / "bench.pub"), "--timeout", "600"]
    for run in range(args.repeat):
        reset()
        settle()
        expert_loads.append(shell(f"zstd -dc {zst} | {DOCKER} load -q > /dev/null", target_env))
        reset()
        settle()
        installs.append(run_measured(install + [str(archive_v1), "--prefix", str(work / f"site{run}")], target_env))
    figures["install_zstd_s"] = median(expert_loads, "install_zstd_s")
    timings = [_timings(m) for m in installs]
    verify_load = [t["preflight"] + t["verify"] + t["load"] for t in timings]
    figures["install_verify_load_s"] = median(verify_load, "install_verify_load_s")
    figures["install_vs_expert_by_round"] = [round(v / e, 3) for v, e in zip(verify_load, expert_loads)]
    figures["install_verify_s"] = median([t["verify"] for t in timings])
    figures["install_up_s"] = median([t["up"] for t in timings])
    figures["install_total_s"] = median([m.seconds for m in installs])
    figures["install_peak_rss_mb"] = max(m.peak_rss_kb for m in installs) / 1024
    figures["install_write_bytes"] = max(m.write_bytes for m in installs)

    say("upgrade: v1 -> v2 with the full and with the delta archive")
    for kind, archive in (("full", archive_v2), ("delta", archive_delta)):
        runs = []
        for run in range(args.repeat):
            reset()
            prefix = work / f"up-{kind}{run}"
            run_measured(install + [str(archive_v1), "--prefix", str(prefix)], target_env)
            settle()
            runs.append(run_measured(install + [str(archive), "--prefix", str(prefix)], target_env))
        figures[f"upgrade_{kind}_verify_load_s"] = median([_timings(m)["verify"] + _timings(m)["load"] for m in runs])
        figures[f"upgrade_{kind}_total_s"] = median([m.seconds for m in runs])
    reset()
    figures["runs"] = RUNS
    write_results(args.out, figures)
    print((args.out / "latest.md").read_text())


def _timings(measured: Measured) -> dict[str, float]:
    line = next(line for line in measured.stderr.splitlines() if line.startswith("timings:"))  # type: ignore[attr-defined]
    return {k: float(v.rstrip("s")) for k, v in (item.split("=") for item in line.split()[1:])}


def _ratios(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def write_results(out: Path, f: dict) -> None:
    """latest.json and a markdown table with the targets of issue 5."""
    out.mkdir(parents=True, exist_ok=True)
    f["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    f["machine"] = f"{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    (out / "latest.json").write_text(json.dumps(f, indent=2) + "\n")
    mb = lambda n: f"{n / 1e6:,.0f} MB"  # noqa: E731
    save = f["save_devnull_s"]
    rows = [
        ("docker save of all images > /dev/null (floor)", f"{save:.1f} s", "", ""),
        ("export (a) docker save per image \\| gzip", f"{f['export_gzip_s']:.1f} s", mb(f["export_gzip_bytes"]), ""),
        ("export (b) docker save all \\| zstd -T0 -3", f"{f['export_zstd_s']:.1f} s", mb(f["export_zstd_bytes"]), ""),
        ("export (c) airgap-bundle build (images present, cold cache)", f"{f['bundle_s']:.1f} s", mb(f["bundle_bytes"]),
         f"{f['bundle_s'] / save:.2f}x save (target <= 1.05; by round: {_ratios(f['bundle_vs_save_by_round'])}); "
         f"{f['export_gzip_s'] / f['bundle_s']:.1f}x faster than (a) (>= 4.5); "
         f"size {f['bundle_bytes'] / f['export_zstd_bytes']:.3f}x (b) (<= 1)"),
        ("export (d) next release, 1 image changed, warm cache", f"{f['bundle_next_s']:.1f} s", mb(f["bundle_next_bytes"]),
         f"{f['bundle_next_s'] / save:.2f}x save (target <= 0.25)"),
        ("delta archive of the next release (--since)", f"{f['bundle_delta_s']:.1f} s", mb(f["delta_bytes"]),
         f"{f['delta_bytes'] / f['bundle_next_bytes']:.3f}x the full archive"),
        ("install (a) gunzip \\| docker load per image", f"{f['install_gzip_s']:.1f} s", "", ""),
        ("install (b) zstd -dc \\| docker load", f"{f['install_zstd_s']:.1f} s", "", ""),
        ("install (c) airgap-install: verify + load", f"{f['install_verify_load_s']:.1f} s", "",
         f"{f['install_verify_load_s'] / f['install_zstd_s']:.2f}x (b) (target <= 1.15; by round: "
         f"{_ratios(f['install_vs_expert_by_round'])}); verify alone {f['install_verify_s']:.1f} s"),
        ("install (c) then compose up to healthy", f"{f['install_up_s']:.1f} s", "", f"whole install {f['install_total_s']:.1f} s"),
        ("upgrade with the full archive: verify + load", f"{f['upgrade_full_verify_load_s']:.1f} s", mb(f["bundle_next_bytes"]), ""),
        ("upgrade with the delta archive: verify + load", f"{f['upgrade_delta_verify_load_s']:.1f} s", mb(f["delta_bytes"]),
         f"{f['upgrade_delta_verify_load_s'] / f['install_verify_load_s']:.2f}x a full install (target <= 0.2)"),
        ("peak memory: bundler / installer", f"{f['bundle_peak_rss_mb']:.0f} MB / {f['install_peak_rss_mb']:.0f} MB", "",
         "target <= 200 MB each"),
        ("installer extra disk (bytes it wrote)", mb(f["install_write_bytes"]), "", "target 0 beyond the archive"),
    ]
    lines = [
        f"Measured {f['measured_at']} on {f['machine']}: {f['images']} images, {f['unique_layer_bytes'] / 1e9:.2f} GB of unique "
        f"layers ({f['per_image_bytes'] / 1e9:.2f} GB counted per image), scale {f['scale']}, median of {f['repeat']} run(s). "
        f"Command: `sudo python3 -m bench.run --scale {f['scale']} --repeat {f['repeat']}`",
        "",
        "| figure | time | size | against the targets |",
        "|---|---|---|---|",
    ] + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    (out / "latest.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
