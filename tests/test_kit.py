"""The offline installer kit, for real: built here (package index, or the warm wheel cache),
then installed and run inside a network namespace that has only loopback, as on a site.

No mocks: ``build_kit`` runs pip; install.sh runs under /bin/sh (dash on Debian) with the
kit's own pip wheel; what it installs is imported and run. The wheel cache lives in
``~/.cache/airgap-bundle/wheels`` so that reruns (and CI on the same machine) are fast.
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import NoReturn

import pytest

import installer
from bundler.kit import DEFAULT_PYTHONS, KIT_NAME, build_kit, default_cache_dir

ROOT = Path(__file__).resolve().parent.parent
CACHE = default_cache_dir()
VERSION = installer.__version__
# Modules of the runtime dependencies, imported from the installed prefix in the namespace.
DEPENDENCY_MODULES = ("docker", "yaml", "zstandard", "cryptography", "cffi", "click", "rich",
                      "requests", "urllib3", "idna", "certifi", "charset_normalizer")


def _unavailable(reason: str) -> NoReturn:
    """Fail under CI (network namespaces must work there), skip elsewhere."""
    message = f"offline install test unavailable: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


class Offline:
    """A network namespace with only loopback up: commands run there cannot reach anything."""

    def __init__(self, name: str):
        self.name = name

    def run(self, *command: str, cwd: Path, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
        environment = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "PYTHONPATH")}
        environment.update(env or {})
        return subprocess.run(["nsenter", f"--net=/var/run/netns/{self.name}", "--", *command], cwd=cwd,
                              env=environment, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                              check=False)


@pytest.fixture(scope="module")
def offline() -> Iterator[Offline]:
    if os.geteuid() != 0:
        _unavailable("needs root (network namespaces)")
    for tool, package in (("ip", "iproute2"), ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            _unavailable(f"'{tool}' not found (Debian package {package})")
    name = f"kit-test-{os.getpid()}"
    added = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if added.returncode != 0:
        _unavailable(f"ip netns add {name}: {added.stderr.strip()}")
    try:
        up = subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], capture_output=True, text=True,
                            check=False)
        if up.returncode != 0:
            _unavailable(f"ip link set lo up in {name}: {up.stderr.strip()}")
        yield Offline(name)
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default kit (Python 3.9-3.13, manylinux2014_x86_64), built with the shared cache."""
    return build_kit(tmp_path_factory.mktemp("kit-out"), cache_dir=CACHE)


@pytest.fixture(scope="module")
def installed(kit: Path, offline: Offline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The kit installed with no network: the prefix."""
    prefix = tmp_path_factory.mktemp("site") / "prefix"
    result = offline.run("sh", str(kit / "install.sh"), "--prefix", str(prefix), "--no-link", cwd=prefix.parent)
    assert result.returncode == 0, f"install.sh failed:\n{result.stdout}\n{result.stderr}"
    assert f"installed airgap-install {VERSION} into {prefix}" in result.stdout
    return prefix


def _done(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _interpreter(version: str) -> str | None:
    """A CPython of that version on this machine (PATH, or pyenv's versions), if any."""
    found = shutil.which(f"python{version}")
    candidates = ([found] if found else []) + sorted(
        glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))
    for candidate in candidates:
        probe = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True, check=False)
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


def test_kit_layout_wheels_and_checksums(kit: Path) -> None:
    assert kit.name == f"{KIT_NAME}-{VERSION}"
    assert sorted(p.name for p in kit.iterdir()) == ["README.txt", "SHA256SUMS", "compose", "install.sh", "wheels"]
    assert len((kit / "README.txt").read_text().splitlines()) == 3
    wheels = sorted(p.name for p in (kit / "wheels").iterdir())
    assert all(name.endswith(".whl") for name in wheels)
    assert [w for w in wheels if w.startswith("pip-")] and len([w for w in wheels if w.startswith("pip-")]) == 1
    assert f"airgap_compose-{VERSION}-py3-none-any.whl" in wheels

    # every runtime dependency of the project (and theirs) is there
    names = {_normalize(w.split("-", 1)[0]) for w in wheels}
    for requirement in metadata.requires("airgap-compose") or []:
        if "extra ==" not in requirement:
            assert _normalize(re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0]) in names, requirement
    for transitive in ("cffi", "pycparser", "markdown_it_py", "mdurl", "pygments", "requests", "urllib3",
                       "idna", "certifi", "charset_normalizer"):
        assert transitive in names, transitive
    # compiled ones for each Python version; cryptography as an abi3 wheel
    for version in DEFAULT_PYTHONS:
        tag = "cp" + version.replace(".", "")
        for compiled in ("cffi", "pyyaml", "zstandard", "charset_normalizer"):
            assert any(w.startswith(f"{compiled}-") and f"-{tag}-{tag}-" in w for w in wheels), (compiled, version)
        assert any(w.startswith("cryptography-") and "-abi3-" in w
                   and int(re.search(r"-cp3(\d+)-abi3-", w).group(1)) <= int(version.split(".")[1]) for w in wheels)

    # SHA256SUMS covers every other file, in sha256sum -c format
    listed = {}
    for line in (kit / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
    files = {p.relative_to(kit).as_posix(): p for p in kit.rglob("*") if p.is_file() and p.name != "SHA256SUMS"}
    assert set(listed) == set(files)
    assert all(_digest(files[name]) == digest for name, digest in listed.items())
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=kit, check=True)
    if shutil.which("dash"):
        subprocess.run(["dash", "-n", str(kit / "install.sh")], check=True)


def test_install_with_no_network_and_run(installed: Path, offline: Offline, tmp_path: Path) -> None:
    # the namespace really has nothing but loopback
    links = offline.run("ip", "-o", "link", cwd=tmp_path)
    assert [line.split(":")[1].strip() for line in links.stdout.splitlines()] == ["lo"], links.stdout
    assert offline.run("ip", "-4", "route", cwd=tmp_path).stdout.strip() == ""

    launcher = installed / "bin" / "airgap-install"
    version = offline.run(str(launcher), "--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"airgap-install, version {VERSION}", _done(version)
    verify_help = offline.run(str(launcher), "verify", "--help", cwd=tmp_path)
    assert verify_help.returncode == 0 and "Usage: airgap-install verify" in verify_help.stdout, _done(verify_help)

    # the code that runs is the kit's copy, and so is every dependency
    modules = ("installer", *DEPENDENCY_MODULES)
    probe = offline.run("python3", "-c", f"import importlib; [print(importlib.import_module(m).__file__) for m in {modules!r}]",
                        cwd=tmp_path, env={"PYTHONPATH": str(installed / "lib")})
    assert probe.returncode == 0, _done(probe)
    paths = probe.stdout.split()
    assert len(paths) == len(modules)
    for module, path in zip(modules, paths):
        assert Path(path).is_relative_to(installed / "lib"), (module, path)

    # the launcher ignores a folder named 'installer' where it runs (here: the checkout)
    from_checkout = offline.run(str(launcher), "--version", cwd=ROOT)
    assert from_checkout.returncode == 0, _done(from_checkout)


def test_install_twice_replaces_the_previous(installed: Path, kit: Path, offline: Offline, tmp_path: Path) -> None:
    stray = installed / "lib" / "left-over-from-before.txt"
    stray.write_text("a previous install's file\n")
    link_dir = tmp_path / "bin"
    link_dir.mkdir()
    again = offline.run("sh", str(kit / "install.sh"), "--prefix", str(installed), "--link-dir", str(link_dir), cwd=tmp_path)
    assert again.returncode == 0, _done(again)
    assert not stray.exists()
    assert not list(installed.glob(".lib.*"))
    assert os.readlink(link_dir / "airgap-install") == str(installed / "bin" / "airgap-install")
    version = offline.run(str(link_dir / "airgap-install"), "--version", cwd=tmp_path)
    assert version.returncode == 0 and VERSION in version.stdout, _done(version)


@pytest.mark.parametrize("python_version", ["3.9", "3.13"])
def test_install_for_other_python_versions(kit: Path, offline: Offline, tmp_path: Path, python_version: str) -> None:
    interpreter = _interpreter(python_version)
    if interpreter is None:
        pytest.skip(f"no Python {python_version} on this machine")
    prefix = tmp_path / "prefix"
    result = offline.run("sh", str(kit / "install.sh"), "--prefix", str(prefix), "--no-link", cwd=tmp_path,
                         env={"PYTHON": interpreter})
    assert result.returncode == 0, _done(result)
    assert f"Python {python_version}" in result.stdout
    version = offline.run(str(prefix / "bin" / "airgap-install"), "--version", cwd=tmp_path)
    assert version.returncode == 0 and VERSION in version.stdout, _done(version)


def _copy_kit(kit: Path, tmp_path: Path) -> Path:
    copy = tmp_path / kit.name
    shutil.copytree(kit, copy)
    return copy


def test_corrupted_or_added_wheel_is_refused_naming_sha256sums(kit: Path, offline: Offline, tmp_path: Path) -> None:
    damaged = _copy_kit(kit, tmp_path)
    victim = next((damaged / "wheels").glob("cffi-*-cp311-*.whl"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    prefix = tmp_path / "prefix"
    result = offline.run("sh", str(damaged / "install.sh"), "--prefix", str(prefix), "--no-link", cwd=tmp_path)
    assert result.returncode != 0, _done(result)
    assert "SHA256SUMS" in result.stderr and victim.name in result.stderr, _done(result)
    assert not (prefix / "lib").exists()

    victim.write_bytes((kit / "wheels" / victim.name).read_bytes())  # repaired; now an extra wheel
    (damaged / "wheels" / "evil-1.0-py3-none-any.whl").write_bytes(b"not listed")
    result = offline.run("sh", str(damaged / "install.sh"), "--prefix", str(prefix), "--no-link", cwd=tmp_path)
    assert result.returncode != 0 and "SHA256SUMS" in result.stderr and "evil-1.0" in result.stderr, _done(result)


def test_missing_wheel_and_missing_python_are_named(kit: Path, offline: Offline, tmp_path: Path) -> None:
    from bundler.kit import _write_sums

    incomplete = _copy_kit(kit, tmp_path)
    current = f"{sys.version_info[0]}.{sys.version_info[1]}"
    tag = "cp" + current.replace(".", "")
    for wheel in (incomplete / "wheels").glob(f"zstandard-*-{tag}-*.whl"):
        wheel.unlink()
    _write_sums(incomplete)  # a consistent, but incomplete kit
    result = offline.run("sh", str(incomplete / "install.sh"), "--prefix", str(tmp_path / "p1"), "--no-link",
                         cwd=tmp_path, env={"PYTHON": sys.executable})
    assert result.returncode != 0, _done(result)
    assert "no wheel of zstandard" in result.stderr and f"Python {current}" in result.stderr, _done(result)

    result = offline.run("sh", str(kit / "install.sh"), "--prefix", str(tmp_path / "p2"), cwd=tmp_path,
                         env={"PYTHON": "/nonexistent/python3"})
    assert result.returncode != 0 and "PYTHON=/nonexistent/python3: no such program" in result.stderr, _done(result)

    old = _interpreter("3.8") or _interpreter("3.7") or _interpreter("3.6")
    if old:
        result = offline.run("sh", str(kit / "install.sh"), "--prefix", str(tmp_path / "p3"), cwd=tmp_path,
                             env={"PYTHON": old})
        assert result.returncode != 0 and "too old" in result.stderr and ">= 3.9" in result.stderr, _done(result)


def test_warm_rebuild_needs_no_network(offline: Offline, kit: Path, tmp_path: Path) -> None:
    """With the cache warm, a kit builds inside the namespace; the host's Python is then named as not covered."""
    other = next(v for v in DEFAULT_PYTHONS if v != f"{sys.version_info[0]}.{sys.version_info[1]}")
    started = time.monotonic()
    result = offline.run(sys.executable, "-m", "bundler.cli", "kit", "-o", str(tmp_path / "out"), "--python", other,
                         "--cache-dir", str(CACHE), "--plain", cwd=ROOT)
    assert result.returncode == 0, _done(result)
    small = Path(result.stdout.strip())
    assert small == tmp_path / "out" / kit.name and (small / "install.sh").is_file()
    assert time.monotonic() - started < 60

    refused = offline.run("sh", str(small / "install.sh"), "--prefix", str(tmp_path / "prefix"), cwd=tmp_path,
                          env={"PYTHON": sys.executable})
    assert refused.returncode != 0, _done(refused)
    assert f"has wheels for Python {other} only" in refused.stderr, _done(refused)


def test_cold_cache_without_network_names_the_missing_wheel(offline: Offline, kit: Path, tmp_path: Path) -> None:
    """The cache lacks one wheel and the index cannot be reached: a clear error, and no partial kit."""
    partial = tmp_path / "cache"
    shutil.copytree(CACHE, partial, copy_function=os.link, ignore=shutil.ignore_patterns("zstandard-*-cp312-*", ".download-*"))
    out = tmp_path / "out"
    result = offline.run(sys.executable, "-m", "bundler.cli", "kit", "-o", str(out), "--python", "3.12",
                         "--cache-dir", str(partial), "--plain", cwd=ROOT)
    assert result.returncode == 1, _done(result)
    assert "airgap-bundle: error:" in result.stderr and "Traceback" not in result.stderr, _done(result)
    assert "lacks a wheel of zstandard" in result.stderr and "cannot be reached" in result.stderr, _done(result)
    assert not out.exists() or list(out.iterdir()) == []
