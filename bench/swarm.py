"""Benchmark: time to healthy of the stand-in AI-Infra Matrix on one host and on a Swarm of one and two nodes.

    sudo python3 -m bench.swarm [--repeat 3] [--out bench/results]

On the test harness's two-node Swarm rig (tests/harness/swarm.py: engines in the network
namespaces node1 and node2, the site registry on node1), each round installs release v0.3.5
of the stand-in four ways, each from nothing (no stack, none of its images on either node,
no volumes), timing ``airgap-install`` from start to "healthy":

(a) one host, compose, images from the signed archive (the one-host install);
(b) one host, compose, images from the site registry (``--from-registry``, release-only archive);
(c) a Swarm of one node (node2 drained), ``--swarm --from-registry``;
(d) the Swarm of two nodes, ``--swarm --from-registry --swarm-every-node nginx``.

Figures are medians; results go to OUT/swarm.json and OUT/swarm.md. Nothing here asserts
anything: it measures. The stand-in's images are small, so the figures are dominated by
start order and health checks (2 s intervals), as at a site with images already at hand.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import docker

from tests.harness import SOURCE_DIR, Harness
from tests.harness.swarm import NODES
from tests.test_swarm_engine import clean_nodes

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
DOCKER_CLI = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"  # Debian's 20.10 client
REGISTRY = "aiharbor.msxf.local/aihpc"
MODES = {
    "one_host_archive": "(a) one host, compose, images from the archive",
    "one_host_registry": "(b) one host, compose, images from the site registry",
    "swarm_1_node": "(c) Swarm of 1 node, images from the site registry",
    "swarm_2_nodes": "(d) Swarm of 2 nodes, images from the site registry",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="rounds (the median of each figure is reported)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/airgap-bench-swarm"))
    args = parser.parse_args()
    say = lambda text: print(f"bench: {text}", flush=True)  # noqa: E731
    harness = Harness().up()
    rig = harness.swarm
    rig.ensure()
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    archive, release_only, pubkey = build_release(harness, rig, work, say)
    clients = {node: rig.client(node) for node in NODES}

    def node1(*argv: str, stdin: str = "") -> subprocess.CompletedProcess:
        env = {"DOCKER_HOST": rig.docker_host("node1"), "AIRGAP_INSTALL_DOCKER_CLI": DOCKER_CLI}
        command = ["nsenter", "--net=/var/run/netns/node1", "env", *[f"{k}={v}" for k, v in env.items()], *argv]
        result = subprocess.run(command, capture_output=True, text=True, input=stdin, cwd=ROOT, timeout=1200)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:5])} failed:\n{result.stderr[-3000:]}")
        return result

    credentials = ["--username", rig.site_registry.username, "--password-stdin"]
    password = rig.site_registry.password + "\n"
    installs: dict[str, Callable[[Path], subprocess.CompletedProcess]] = {
        "one_host_archive": lambda prefix: node1(PY, "-m", "installer.cli", "install", str(archive), "--pubkey",
                                                 str(pubkey), "--prefix", str(prefix)),
        "one_host_registry": lambda prefix: node1(PY, "-m", "installer.cli", "install", str(release_only), "--pubkey",
                                                  str(pubkey), "--prefix", str(prefix), "--from-registry",
                                                  *credentials, stdin=password),
        "swarm_1_node": lambda prefix: node1(PY, "-m", "installer.cli", "install", str(release_only), "--pubkey",
                                             str(pubkey), "--prefix", str(prefix), "--from-registry", "--swarm",
                                             *credentials, stdin=password),
        "swarm_2_nodes": lambda prefix: node1(PY, "-m", "installer.cli", "install", str(release_only), "--pubkey",
                                              str(pubkey), "--prefix", str(prefix), "--from-registry", "--swarm",
                                              "--swarm-every-node", "nginx", *credentials, stdin=password),
    }
    runs: dict[str, list[float]] = {mode: [] for mode in MODES}
    up: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_ in range(args.repeat):
        for mode, install in installs.items():
            prefix = work / "site" / mode
            reset(rig, clients, prefix, drain_node2=mode == "swarm_1_node")
            os.sync()
            started = time.monotonic()
            result = install(prefix)
            seconds = time.monotonic() - started
            runs[mode].append(round(seconds, 2))
            up[mode].append(timings(result.stderr).get("up", 0.0))
            say(f"round {round_ + 1}: {MODES[mode]}: healthy in {seconds:.1f} s (up {up[mode][-1]:.1f} s)")
            node1(PY, "-m", "installer.cli", "down", "--prefix", str(prefix), "--remove-data-volumes")
    reset(rig, clients, work / "site" / "none", drain_node2=False)
    figures = {
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} cores",
        "repeat": args.repeat,
        "release": "stand-in AI-Infra Matrix v0.3.5 (16 services, 2 one-shots)",
        "runs_s": runs,
        "up_s": up,
        "median_s": {mode: statistics.median(values) for mode, values in runs.items()},
        "median_up_s": {mode: statistics.median(values) for mode, values in up.items()},
    }
    write_results(args.out, figures)
    say(f"results in {args.out / 'swarm.md'}")


def build_release(harness: Harness, rig, work: Path, say: Callable[[str], None]) -> tuple[Path, Path, Path]:
    """The stand-in v0.3.5 built and signed, pushed into the rig's registry; (archive, release-only, pubkey)."""
    subprocess.run([PY, "-m", "bundler.cli", "keygen", "-o", str(work / "release.key")], check=True,
                   capture_output=True)
    build_env = dict(os.environ, DOCKER_HOST=harness.build_docker_host)
    built = subprocess.run([PY, "-m", "bundler.cli", "build", str(ROOT / "manifests/aimatrix.yaml"), "--registry",
                            REGISTRY, "--tag", "v0.3.5", "--source", str(SOURCE_DIR), "--key",
                            str(work / "release.key"), "-o", str(work / "out"), "--lock", str(work / "lock.json"),
                            "--no-kit"],
                           env=build_env, capture_output=True, text=True, cwd=ROOT)
    if built.returncode != 0:
        raise RuntimeError(built.stderr[-3000:])
    archive = Path(built.stdout.strip().splitlines()[-1])
    pubkey = work / "release.pub"
    release_only = work / "aimatrix-v0.3.5.release.tar.zst"
    subprocess.run([PY, "-m", "installer.cli", "export-release", str(archive), "--pubkey", str(pubkey), "-o",
                    str(release_only)], check=True, capture_output=True, cwd=ROOT)
    site = rig.site_registry
    subprocess.run(["nsenter", "--net=/var/run/netns/node1", PY, "-m", "installer.cli", "push", str(archive),
                    "--pubkey", str(pubkey), "--username", site.username, "--password-stdin"],
                   input=site.password + "\n", check=True, capture_output=True, text=True, cwd=ROOT)
    say(f"built and pushed {archive.name} ({archive.stat().st_size / 1e6:.1f} MB)")
    return archive, release_only, pubkey


def reset(rig, clients: dict[str, docker.DockerClient], prefix: Path, drain_node2: bool) -> None:
    """Nothing of the stack left on either node, node2 drained or taking tasks, a fresh install folder."""
    clean_nodes(rig, clients)
    manager = clients["node1"]
    for node in manager.nodes.list():
        if node.attrs["Description"]["Hostname"] == "node2":
            spec = dict(node.attrs["Spec"])
            wanted = "drain" if drain_node2 else "active"
            if spec.get("Availability") != wanted:
                node.update({**spec, "Availability": wanted})
    shutil.rmtree(prefix, ignore_errors=True)


def timings(stderr: str) -> dict[str, float]:
    """The install's phase timings (its 'timings:' line)."""
    line = next((line for line in stderr.splitlines() if line.startswith("timings:")), "timings:")
    return {key: float(value.rstrip("s")) for key, value in (item.split("=") for item in line.split()[1:])}


def write_results(out: Path, figures: dict) -> None:
    """swarm.json and a markdown table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "swarm.json").write_text(json.dumps(figures, indent=2) + "\n")
    one_host = figures["median_s"]["one_host_archive"]
    lines = [
        f"Measured {figures['measured_at']} on {figures['machine']}: {figures['release']}, each install from nothing, "
        f"median of {figures['repeat']} round(s). Command: `sudo python3 -m bench.swarm --repeat {figures['repeat']}`",
        "",
        "| install | time to healthy | of which bring-up | vs one host from the archive |",
        "|---|---|---|---|",
    ] + [f"| {label} | {figures['median_s'][mode]:.1f} s | {figures['median_up_s'][mode]:.1f} s | "
         f"{figures['median_s'][mode] / one_host:.2f}x |" for mode, label in MODES.items()]
    (out / "swarm.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
