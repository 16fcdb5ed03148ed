"""The path a site really takes, on the hosts sites really have.

The bundler runs from a regular install (a virtualenv with ``pip install .``, no
checkout on its path) and builds the archive and the offline kit. On the
air-gapped target (network namespace with loopback only), the kit installs
airgap-install and that installs the stand-in AI-Infra Matrix, once per host
profile. A profile hides what the host lacks with a private mount namespace:

  a. Debian's docker-compose v1 only (no v2 plugin visible): the kit's launcher and
     the installer must leave no Python trace in compose v1's environment;
  b. a compose v2 plugin only (no docker-compose);
  c. no compose at all: the kit's own compose v2 is used;
  d. no python3 on PATH: install.sh installs the standalone executable.

Each ends with every service healthy and /health answering inside the namespace.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from installer.signing import fingerprint, load_public_key
from tests.harness import SOURCE_DIR

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "manifests" / "aimatrix.yaml"
PLUGIN_DIRS = ("/usr/local/lib/docker/cli-plugins", "/usr/local/libexec/docker/cli-plugins", "/usr/lib/docker/cli-plugins",
               "/usr/libexec/docker/cli-plugins", "/root/.docker/cli-plugins")
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture(scope="module")
def regular_install(tmp_path_factory) -> Path:
    """A virtualenv holding a regular (non-editable) install of this project: its bin folder."""
    venv = tmp_path_factory.mktemp("venv") / "bundler"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    result = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-deps", "--disable-pip-version-check", "-q", str(ROOT)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import bundler; print(bundler.__file__)"],
                           capture_output=True, text=True, cwd=venv, check=True).stdout.strip()
    assert where.startswith(str(venv)), f"the bundler must come from the regular install, not {where}"
    return venv / "bin"


@pytest.fixture(scope="module")
def release(harness, regular_install, tmp_path_factory) -> dict:
    """The archive and kit, made by airgap-bundle from the regular install (run outside the checkout)."""
    folder = tmp_path_factory.mktemp("release")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["DOCKER_HOST"] = harness.build_docker_host
    bundle = str(regular_install / "airgap-bundle")
    subprocess.run([bundle, "keygen", "-o", str(folder / "release.key")], check=True, capture_output=True, cwd=folder, env=env)
    result = subprocess.run([bundle, "build", str(MANIFEST), "--source", str(SOURCE_DIR), "--key", str(folder / "release.key"),
                             "-o", str(folder), "--lock", str(folder / "lock.json"), "--plain"],
                            capture_output=True, text=True, cwd=folder, env=env)
    assert result.returncode == 0, result.stderr
    assert "project wheel airgap_compose-" in result.stderr and "from the installed airgap-compose" in result.stderr
    kits = list(folder.glob("airgap-install-kit-*"))
    assert len(kits) == 1 and (kits[0] / "compose" / "docker-compose").is_file()
    assert (kits[0] / "standalone" / "airgap-install").is_file()
    return {"archive": folder / "aimatrix-v0.3.5.tar.zst", "pubkey": folder / "release.pub", "kit": kits[0]}


def on_host(harness, script: str, *, hide: tuple[str, ...] = (), timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``script`` (sh) on the air-gapped host, with ``hide`` made invisible (empty folder / non-executable file)."""
    mounts = []
    for path in hide:
        if os.path.isdir(path):
            mounts.append(f"mount -t tmpfs -o size=1m tmpfs {shlex.quote(path)}")
        elif os.path.lexists(path):
            mounts.append(f"mount --bind /dev/null {shlex.quote(path)}")
    inner = " && ".join(mounts + [f"exec env -i PATH={HOST_PATH} HOME=/root DOCKER_HOST={harness.target_docker_host} "
                                  f"sh -c {shlex.quote(script)}"])
    command = ["nsenter", f"--net=/var/run/netns/{harness.netns}", "unshare", "--mount", "--propagation", "private",
               "sh", "-c", inner]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def python_binaries() -> tuple[str, ...]:
    found = [str(p) for folder in ("/usr/bin", "/usr/local/bin", "/bin") for p in Path(folder).glob("python3*")
             if p.is_file() and not p.name.endswith("-config")]
    return tuple(sorted(set(found)))


PROFILES = {
    # the kit's v2 would be preferred to the host's v1: a site that wants its own v1 says so
    "a-compose-v1-only": {"hide": PLUGIN_DIRS, "compose": "docker-compose 1.", "installed": "(Python ", "args": "--compose v1"},
    "b-compose-v2-plugin-only": {"hide": ("/usr/bin/docker-compose", "/usr/local/bin/docker-compose"),
                                 "compose": "(the host's compose plugin)", "installed": "(Python "},
    "c-no-compose": {"hide": PLUGIN_DIRS + ("/usr/bin/docker-compose", "/usr/local/bin/docker-compose"),
                     "compose": "(the kit's compose v2)", "installed": "(Python "},
    "d-no-python3": {"hide": "python", "compose": "(the host's compose plugin)", "installed": "(standalone, no Python)"},
}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_the_kit_installs_the_stack_offline_on_this_kind_of_host(harness, release, tmp_path, profile: str) -> None:
    spec = PROFILES[profile]
    hide = python_binaries() if spec["hide"] == "python" else spec["hide"]
    harness.reset_target()
    tool, site = tmp_path / "tool", tmp_path / "site"
    script = (
        f"sh {shlex.quote(str(release['kit'] / 'install.sh'))} --fingerprint "
        f"{fingerprint(load_public_key(release['pubkey']))} --prefix {tool} --no-link && "
        f"{tool}/bin/airgap-install install {release['archive']} --pubkey {release['pubkey']} --prefix {site} --timeout 240 "
        f"{spec.get('args', '')} && "
        f"{tool}/bin/airgap-install status --prefix {site} && "
        "wget -qO- http://127.0.0.1:8080/health"
    )
    result = on_host(harness, script, hide=hide)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert spec["installed"] in output, output
    compose_line = next(line for line in output.splitlines() if line.strip().startswith("ok   compose:"))
    assert spec["compose"] in compose_line, compose_line
    assert "healthy: 14 service(s) up, 2 one-shot(s) done" in output
    assert result.stdout.rstrip().endswith("ok")  # /health, through nginx, inside the namespace
    if profile == "c-no-compose":
        assert str(tool / "libexec" / "docker-compose") in compose_line
        assert "the host has no compose v2 plugin" in compose_line
    if profile == "d-no-python3":
        assert not (tool / "lib").exists() and "no python3 found on PATH" in output
    on_host(harness, f"{tool}/bin/airgap-install down --prefix {site} --remove-data-volumes", hide=hide)
