"""Benchmark: pushing a release into the site registry, three ways, side by side on the same images.

    sudo python3 -m bench.push [--scale 1.0] [--repeat 3] [--out bench/results]

(a) the seed's habit: ``docker load`` of the images, then ``docker tag`` + ``docker push`` of every name
    (the air-gapped engine, Docker 20.10); (b) Debian's ``skopeo copy docker-archive:... docker://...`` per
    name; (c) ``airgap-install push`` from the signed archive. Each round starts from an empty registry
    (the test rig's TLS + basic-auth registry answering as aiharbor.msxf.local inside the namespace) and
    runs all three; then (c) again against the full registry (the re-push). Figures are medians; results go
    to OUT/push.json and OUT/push.md. Nothing here asserts anything: it measures.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import docker

from bench.imageset import ensure_images, layer_bytes, write_manifest
from bench.run import DOCKER, run_measured, settle
from installer.archive import read_header
from installer.registry.push import image_targets
from installer.registry.reference import Registry
from tests.harness import Harness

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SITE = "aiharbor.msxf.local/bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="size of the image set (1.0: about 2.6 GB of unique layers, as bench.run)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (the median of each figure is reported)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/airgap-bench-push"))
    args = parser.parse_args()
    say = lambda text: print(f"bench: {text}", flush=True)  # noqa: E731
    harness = Harness().up()
    registry = harness.site_registry
    registry.ensure()
    work = args.work
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    build_env = dict(os.environ, DOCKER_HOST=harness.build_docker_host)
    build = docker.DockerClient(base_url=harness.build_docker_host, timeout=1800)
    # A regular install byte-compiles the tool (an editable one under PYTHONDONTWRITEBYTECODE would compile
    # every module at each start, which is not what users run, and which the re-push figure would measure).
    subprocess.run([PY, "-m", "compileall", "-q", str(ROOT / "bundler"), str(ROOT / "installer")], check=True,
                   env=dict(os.environ, PYTHONDONTWRITEBYTECODE=""), stdout=subprocess.DEVNULL)
    refs = ensure_images(build, args.scale, say=say)
    unique, _ = layer_bytes(args.scale)
    say(f"{len(refs)} images, {unique / 1e9:.2f} GB of unique layers")
    manifest = write_manifest(work / "m", refs, "v1")
    subprocess.run([PY, "-m", "bundler.cli", "keygen", "-o", str(work / "bench.key")], check=True, capture_output=True)
    subprocess.run([PY, "-m", "bundler.cli", "build", "--no-pull", "--no-kit", "--plain", "--key", str(work / "bench.key"),
                    str(manifest), "--source", str(manifest.parent), "-o", str(work / "v1"), "--lock",
                    str(work / "lock.json")], check=True, env=build_env, capture_output=True, cwd=ROOT)
    archive = work / "v1" / "bench-v1.tar.zst"
    header, _, _ = read_header(archive)
    names = {image.id: [str(r) for r in target.references]
             for image, target in zip(header.images, image_targets(header, Registry.parse(SITE)))}
    say("docker save of the images (the input of (a) and (b), not timed)")
    docker_archive = work / "images.tar"
    subprocess.run(f"{DOCKER} save {' '.join(refs)} > {docker_archive}", shell=True, check=True, env=build_env)
    source_of = {}  # a name the docker archive carries for each image ID
    for ref in refs:
        source_of[build.images.get(ref).id] = ref

    netns = ["nsenter", f"--net=/var/run/netns/{harness.netns}"]
    target_env = dict(os.environ, DOCKER_HOST=harness.target_docker_host, DOCKER_CONFIG=str(work / "docker-config"))
    creds = f"{registry.username}:{registry.password}"
    subprocess.run(netns + [DOCKER, "login", "aiharbor.msxf.local", "-u", registry.username, "--password-stdin"],
                   input=registry.password, text=True, check=True, env=target_env, capture_output=True)

    def seed_habit() -> float:
        harness.reset_target()
        settle()
        started = time.monotonic()
        subprocess.run(netns + [DOCKER, "load", "-i", str(docker_archive)], check=True, env=target_env,
                       capture_output=True)
        for image_id, targets in names.items():
            for name in targets:
                subprocess.run(netns + [DOCKER, "tag", source_of[image_id], name], check=True, env=target_env)
        for targets in names.values():
            for name in targets:
                subprocess.run(netns + [DOCKER, "push", name], check=True, env=target_env, capture_output=True)
        return time.monotonic() - started

    def skopeo() -> float:
        settle()
        started = time.monotonic()
        for image_id, targets in names.items():
            for name in targets:
                subprocess.run(netns + ["skopeo", "copy", "--quiet", "--dest-creds", creds,
                                        f"docker-archive:{docker_archive}:{source_of[image_id]}", f"docker://{name}"],
                               check=True, capture_output=True)
        return time.monotonic() - started

    push = netns + ["env", f"AIRGAP_INSTALL_CACHE={work / 'push-record'}", PY, "-m", "installer.cli", "push",
                    str(archive), "--pubkey", str(work / "bench.pub"), "--registry", SITE, "--username",
                    registry.username, "--password-stdin"]

    def ours() -> object:
        settle()
        return run_measured_stdin(push, registry.password)

    rounds: dict[str, list] = {"load_push": [], "skopeo": [], "ours": [], "ours_again": [], "ours_rss_mb": []}
    for number in range(args.repeat):
        say(f"round {number + 1}/{args.repeat}: (a) docker load + push")
        registry.wipe()
        rounds["load_push"].append(seed_habit())
        say(f"round {number + 1}/{args.repeat}: (b) skopeo copy")
        registry.wipe()
        rounds["skopeo"].append(skopeo())
        say(f"round {number + 1}/{args.repeat}: (c) airgap-install push, then again")
        registry.wipe()
        subprocess.run(["rm", "-rf", str(work / "push-record")], check=True)
        measured = ours()
        rounds["ours"].append(measured.seconds)
        rounds["ours_rss_mb"].append(measured.peak_rss_kb / 1024)
        rounds["ours_again"].append(ours().seconds)
    harness.reset_target()
    med = {k: statistics.median(v) for k, v in rounds.items()}
    figures = {
        "scale": args.scale, "repeat": args.repeat, "images": len(refs), "names": sum(len(v) for v in names.values()),
        "unique_layer_bytes": unique, "archive_bytes": archive.stat().st_size,
        "load_push_s": med["load_push"], "skopeo_s": med["skopeo"], "push_s": med["ours"],
        "repush_s": med["ours_again"], "push_peak_rss_mb": max(rounds["ours_rss_mb"]),
        "speedup_vs_load_push": med["load_push"] / med["ours"], "speedup_vs_skopeo": med["skopeo"] / med["ours"],
        "repush_fraction": med["ours_again"] / med["ours"], "rounds": rounds,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "push.json").write_text(json.dumps(figures, indent=2) + "\n")
    table = (
        f"Push benchmark: {figures['images']} images, {figures['names']} names, {unique / 1e9:.2f} GB of unique "
        f"layers (scale {args.scale}), median of {args.repeat} rounds, registry with TLS + basic auth on loopback.\n\n"
        "| figure | value | target |\n|---|---|---|\n"
        f"| (a) docker load + docker push of every name | {med['load_push']:.1f} s | |\n"
        f"| (b) skopeo copy docker-archive: → docker:// per name | {med['skopeo']:.1f} s | |\n"
        f"| (c) airgap-install push | {med['ours']:.1f} s | |\n"
        f"| (c) vs (a) | {figures['speedup_vs_load_push']:.1f}x faster | ≥ 2x |\n"
        f"| (c) vs (b) | {figures['speedup_vs_skopeo']:.2f}x faster | ≥ 1x |\n"
        f"| re-push of an archive the registry holds | {med['ours_again']:.2f} s = "
        f"{100 * figures['repush_fraction']:.1f}% of a full push | < 5% |\n"
        f"| peak memory of airgap-install push | {figures['push_peak_rss_mb']:.0f} MB | < 200 MB |\n"
    )
    (args.out / "push.md").write_text(table)
    print(table)


def run_measured_stdin(argv: list[str], text: str):
    """run_measured with ``text`` on stdin (the password)."""
    read, write = os.pipe()
    os.write(write, (text + "\n").encode())
    os.close(write)
    saved = os.dup(0)
    os.dup2(read, 0)
    try:
        return run_measured(argv, dict(os.environ))
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(read)


if __name__ == "__main__":
    main()
