"""The offline installer kit, for real: built here (package index, or the warm wheel cache),
then installed and run inside a network namespace that has only loopback, as on a site.

No mocks: ``build_kit`` runs pip; install.sh runs under /bin/sh (dash on Debian) with the
kit's own pip wheel; what it installs is imported and run. The wheel cache lives in
``~/.cache/airgap-bundle/wheels`` so that reruns (and CI on the same machine) are fast.
The kit is signed with a release key made here; install.sh is told its fingerprint.
"""
from __future__ import annotations

import glob
import hashlib
import os
import pty
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import NoReturn

import pytest

import installer
from bundler.kit import DEFAULT_PYTHONS, KIT_NAME, VERIFY_PY, build_kit, default_cache_dir
from installer.signing import generate_keypair, load_private_key, load_public_key

ROOT = Path(__file__).resolve().parent.parent
CACHE = default_cache_dir()
VERSION = installer.__version__
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # no pyenv: what a site host has
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

    def run_without(self, hidden: tuple[str, ...], *command: str, cwd: Path) -> subprocess.CompletedProcess:
        """``command`` with the programs ``hidden`` made non-executable (/dev/null bound over them in a private
        mount namespace) and the PATH of a plain host."""
        binds = "".join(f"mount --bind /dev/null {shlex.quote(path)} && " for path in hidden)
        return self.run("unshare", "--mount", "--propagation", "private", "sh", "-c",
                        f'{binds}exec env -i PATH={HOST_PATH} HOME=/root "$@"', "hide", *command, cwd=cwd)

    def run_on_terminal(self, answer: str, *command: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
        """``command`` with a terminal as its stdin, on which ``answer`` is typed."""
        controller, terminal = pty.openpty()
        try:
            process = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{self.name}", "--", *command], cwd=cwd,
                                       env={k: v for k, v in os.environ.items() if k not in ("PYTHON", "PYTHONPATH")},
                                       stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            os.close(terminal)
            terminal = -1
            os.write(controller, answer.encode() + b"\n")
            stdout, stderr = process.communicate(timeout=timeout)
        finally:
            os.close(controller)
            if terminal >= 0:
                os.close(terminal)
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


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


@dataclass(frozen=True)
class Key:
    private: Path
    public: Path
    fingerprint: str


def _keypair(folder: Path) -> Key:
    return Key(*generate_keypair(folder / "release.key"))


@pytest.fixture(scope="module")
def release_key(tmp_path_factory: pytest.TempPathFactory) -> Key:
    """The release key that signs the kit (and would sign archives)."""
    return _keypair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def kit(release_key: Key, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default kit (Python 3.9-3.13, manylinux2014_x86_64), built with the shared cache, signed."""
    return build_kit(tmp_path_factory.mktemp("kit-out"), key_path=release_key.private, cache_dir=CACHE)


@pytest.fixture(scope="module")
def installed(kit: Path, release_key: Key, offline: Offline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The kit installed with no network, told the release key's fingerprint: the prefix."""
    prefix = tmp_path_factory.mktemp("site") / "prefix"
    result = offline.run("sh", str(kit / "install.sh"), "--fingerprint", release_key.fingerprint, "--prefix", str(prefix),
                         "--no-link", cwd=prefix.parent)
    assert result.returncode == 0, f"install.sh failed:\n{result.stdout}\n{result.stderr}"
    assert f"installed airgap-install {VERSION} into {prefix}" in result.stdout
    assert f"kit signature good: SHA256SUMS signed by the trusted key {release_key.fingerprint} (checked with python3" \
        in result.stdout
    return prefix


def _install_sh(offline: Offline, kit: Path, key: Key | None, *args: str, cwd: Path,
                env: dict | None = None) -> subprocess.CompletedProcess:
    """sh KIT/install.sh, told the fingerprint of ``key`` (none: not told any)."""
    trust = ("--fingerprint", key.fingerprint) if key else ()
    return offline.run("sh", str(kit / "install.sh"), *trust, *args, cwd=cwd, env=env)


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


def test_kit_layout_wheels_and_checksums(kit: Path, release_key: Key) -> None:
    assert kit.name == f"{KIT_NAME}-{VERSION}"
    assert sorted(p.name for p in kit.iterdir()) == ["README.txt", "SHA256SUMS", "SHA256SUMS.sig", "compose", "install.sh",
                                                     "release.pub", "standalone", "wheels"]
    readme = (kit / "README.txt").read_text()
    assert len(readme.splitlines()) == 4
    assert f"Signed by the release key {release_key.fingerprint}" in readme
    assert "sh install.sh --fingerprint ed25519:... (the release key's, as its owner gave it to you)" in readme
    assert f"KIT_SIGNER='{release_key.fingerprint}'" in (kit / "install.sh").read_text()
    # the signature: raw 64 bytes over SHA256SUMS, by the release key, whose public half travels as release.pub
    assert (kit / "release.pub").read_bytes() == release_key.public.read_bytes()
    signature = (kit / "SHA256SUMS.sig").read_bytes()
    assert len(signature) == 64
    load_public_key(release_key.public).verify(signature, (kit / "SHA256SUMS").read_bytes())
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
    files = {p.relative_to(kit).as_posix(): p for p in kit.rglob("*")
             if p.is_file() and p.name not in ("SHA256SUMS", "SHA256SUMS.sig")}
    assert set(listed) == set(files) and "release.pub" in listed and "install.sh" in listed
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


def test_install_twice_replaces_the_previous(installed: Path, kit: Path, release_key: Key, offline: Offline,
                                             tmp_path: Path) -> None:
    stray = installed / "lib" / "left-over-from-before.txt"
    stray.write_text("a previous install's file\n")
    link_dir = tmp_path / "bin"
    link_dir.mkdir()
    again = _install_sh(offline, kit, release_key, "--prefix", str(installed), "--link-dir", str(link_dir), cwd=tmp_path)
    assert again.returncode == 0, _done(again)
    assert not stray.exists()
    assert not list(installed.glob(".lib.*"))
    assert os.readlink(link_dir / "airgap-install") == str(installed / "bin" / "airgap-install")
    version = offline.run(str(link_dir / "airgap-install"), "--version", cwd=tmp_path)
    assert version.returncode == 0 and VERSION in version.stdout, _done(version)


@pytest.mark.parametrize("python_version", ["3.9", "3.13"])
def test_install_for_other_python_versions(kit: Path, release_key: Key, offline: Offline, tmp_path: Path,
                                           python_version: str) -> None:
    interpreter = _interpreter(python_version)
    if interpreter is None:
        pytest.skip(f"no Python {python_version} on this machine")
    prefix = tmp_path / "prefix"
    result = _install_sh(offline, kit, release_key, "--prefix", str(prefix), "--no-link", cwd=tmp_path,
                         env={"PYTHON": interpreter})
    assert result.returncode == 0, _done(result)
    assert f"Python {python_version}" in result.stdout
    version = offline.run(str(prefix / "bin" / "airgap-install"), "--version", cwd=tmp_path)
    assert version.returncode == 0 and VERSION in version.stdout, _done(version)


def _copy_kit(kit: Path, tmp_path: Path) -> Path:
    copy = tmp_path / kit.name
    shutil.copytree(kit, copy)
    return copy


def test_corrupted_or_added_wheel_is_refused_naming_sha256sums(kit: Path, release_key: Key, offline: Offline,
                                                               tmp_path: Path) -> None:
    damaged = _copy_kit(kit, tmp_path)
    victim = next((damaged / "wheels").glob("cffi-*-cp311-*.whl"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    prefix = tmp_path / "prefix"
    result = _install_sh(offline, damaged, release_key, "--prefix", str(prefix), "--no-link", cwd=tmp_path)
    assert result.returncode != 0, _done(result)
    assert "SHA256SUMS" in result.stderr and victim.name in result.stderr, _done(result)
    assert not (prefix / "lib").exists()

    victim.write_bytes((kit / "wheels" / victim.name).read_bytes())  # repaired; now an extra wheel
    (damaged / "wheels" / "evil-1.0-py3-none-any.whl").write_bytes(b"not listed")
    result = _install_sh(offline, damaged, release_key, "--prefix", str(prefix), "--no-link", cwd=tmp_path)
    assert result.returncode != 0 and "SHA256SUMS" in result.stderr and "evil-1.0" in result.stderr, _done(result)


def test_missing_wheel_and_missing_python_are_named(kit: Path, release_key: Key, offline: Offline, tmp_path: Path) -> None:
    from bundler.kit import _sign_sums, _write_sums

    incomplete = _copy_kit(kit, tmp_path)
    current = f"{sys.version_info[0]}.{sys.version_info[1]}"
    tag = "cp" + current.replace(".", "")
    for wheel in (incomplete / "wheels").glob(f"zstandard-*-{tag}-*.whl"):
        wheel.unlink()
    _write_sums(incomplete)  # a consistent, but incomplete kit, signed by its maker
    _sign_sums(incomplete, load_private_key(release_key.private))
    result = _install_sh(offline, incomplete, release_key, "--prefix", str(tmp_path / "p1"), "--no-link",
                         cwd=tmp_path, env={"PYTHON": sys.executable})
    assert result.returncode != 0, _done(result)
    assert "no wheel of zstandard" in result.stderr and f"Python {current}" in result.stderr, _done(result)

    result = _install_sh(offline, kit, release_key, "--prefix", str(tmp_path / "p2"), cwd=tmp_path,
                         env={"PYTHON": "/nonexistent/python3"})
    assert result.returncode != 0 and "PYTHON=/nonexistent/python3: no such program" in result.stderr, _done(result)

    old = _interpreter("3.8") or _interpreter("3.7") or _interpreter("3.6")
    if old:
        result = _install_sh(offline, kit, release_key, "--prefix", str(tmp_path / "p3"), cwd=tmp_path,
                             env={"PYTHON": old})
        assert result.returncode != 0 and "too old" in result.stderr and ">= 3.9" in result.stderr, _done(result)


def test_warm_rebuild_needs_no_network(offline: Offline, kit: Path, release_key: Key, tmp_path: Path) -> None:
    """With the cache warm, a kit builds inside the namespace; the host's Python is then named as not covered."""
    other = next(v for v in DEFAULT_PYTHONS if v != f"{sys.version_info[0]}.{sys.version_info[1]}")
    result = offline.run(sys.executable, "-m", "bundler.cli", "kit", "-o", str(tmp_path / "out"), "--python", other,
                         "--key", str(release_key.private), "--cache-dir", str(CACHE), "--plain", cwd=ROOT)
    assert result.returncode == 0, _done(result)
    small = Path(result.stdout.strip())
    assert small == tmp_path / "out" / kit.name and (small / "install.sh").is_file()

    assert f"signed by {release_key.fingerprint}" in result.stderr, _done(result)
    refused = _install_sh(offline, small, release_key, "--prefix", str(tmp_path / "prefix"), cwd=tmp_path,
                          env={"PYTHON": sys.executable})
    assert refused.returncode != 0, _done(refused)
    assert f"has wheels for Python {other} only" in refused.stderr, _done(refused)


def test_cold_cache_without_network_names_the_missing_wheel(offline: Offline, kit: Path, release_key: Key,
                                                            tmp_path: Path) -> None:
    """The cache lacks one wheel and the index cannot be reached: a clear error, and no partial kit."""
    partial = tmp_path / "cache"
    shutil.copytree(CACHE, partial, copy_function=os.link, ignore=shutil.ignore_patterns("zstandard-*-cp312-*", ".download-*"))
    out = tmp_path / "out"
    result = offline.run(sys.executable, "-m", "bundler.cli", "kit", "-o", str(out), "--python", "3.12",
                         "--key", str(release_key.private), "--cache-dir", str(partial), "--plain", cwd=ROOT)
    assert result.returncode == 1, _done(result)
    assert "airgap-bundle: error:" in result.stderr and "Traceback" not in result.stderr, _done(result)
    assert "lacks a wheel of zstandard" in result.stderr and "cannot be reached" in result.stderr, _done(result)
    assert not out.exists() or list(out.iterdir()) == []


# ---- the kit's signature ---------------------------------------------------------------------

def _run_verifier(python: str, public: Path, message: Path, signature: Path) -> list[str]:
    result = subprocess.run([python, "-E", "-s", "-c", VERIFY_PY, str(public), str(message), str(signature)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, _done(result)
    return result.stdout.split()


def test_install_sh_verifier_agrees_with_cryptography(release_key: Key, tmp_path: Path) -> None:
    """install.sh's pure-Python Ed25519 verifier: the fingerprint installer.signing computes, good signatures
    good, any changed bit of message or signature bad; on the oldest python3 at hand too."""
    private = load_private_key(release_key.private)
    pythons = [sys.executable] + [p for p in (_interpreter("3.6"), _interpreter("3.9")) if p]
    for size in (0, 1, 3000):
        message = tmp_path / "message"
        message.write_bytes(os.urandom(size))
        signature = tmp_path / "signature"
        signature.write_bytes(private.sign(message.read_bytes()))
        for python in pythons:
            assert _run_verifier(python, release_key.public, message, signature) == [release_key.fingerprint, "good"]
        for where, target in ((0, signature), (40, signature), (max(size - 1, 0), message)):
            original = target.read_bytes()
            if not original:
                continue
            changed = bytearray(original)
            changed[where] ^= 0x01
            target.write_bytes(bytes(changed))
            assert _run_verifier(sys.executable, release_key.public, message, signature)[1] == "bad", (size, where)
            target.write_bytes(original)
    other = _keypair(tmp_path / "other")
    assert _run_verifier(sys.executable, other.public, message, signature) == [other.fingerprint, "bad"]
    not_a_key = subprocess.run([sys.executable, "-c", VERIFY_PY, str(message), str(message), str(signature)],
                               capture_output=True, text=True, check=False)
    assert not_a_key.returncode == 2 and "PEM public key" in not_a_key.stdout, _done(not_a_key)


@pytest.fixture(scope="module")
def trojan_kit(kit: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The kit with a file slipped into the project's wheel and SHA256SUMS made anew with sha256sum,
    as whoever changed it on the way would: consistent, and not signed by the release key."""
    copy = _copy_kit(kit, tmp_path_factory.mktemp("trojan"))
    wheel = next((copy / "wheels").glob("airgap_compose-*.whl"))
    with zipfile.ZipFile(wheel, "a") as archive:
        archive.writestr("installer/_trojan.py", "import os\nos.system('touch /tmp/owned')\n")
    names = [line.split("  ", 1)[1] for line in (copy / "SHA256SUMS").read_text().splitlines()]
    sums = subprocess.run(["sha256sum", "--", *names], cwd=copy, capture_output=True, text=True, check=True).stdout
    (copy / "SHA256SUMS").write_text(sums)
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=copy, check=True)
    return copy


def test_trojan_wheel_with_new_sha256sums_is_refused_for_its_signature(trojan_kit: Path, release_key: Key,
                                                                       offline: Offline, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    result = _install_sh(offline, trojan_kit, release_key, "--prefix", str(prefix), cwd=tmp_path)
    assert result.returncode == 1, _done(result)
    assert "bad signature: SHA256SUMS.sig is not a signature of SHA256SUMS" in result.stderr, _done(result)
    assert release_key.fingerprint in result.stderr and "nothing was installed" in result.stderr, _done(result)
    assert not prefix.exists()


def test_kit_of_another_key_or_another_fingerprint_is_refused(kit: Path, release_key: Key, offline: Offline,
                                                               tmp_path: Path) -> None:
    other = _keypair(tmp_path / "other")
    prefix = tmp_path / "prefix"
    # the genuine kit, but the site trusts another key
    result = _install_sh(offline, kit, other, "--prefix", str(prefix), cwd=tmp_path)
    assert result.returncode == 1, _done(result)
    assert (f"the kit's key (release.pub) is {release_key.fingerprint}, not the trusted {other.fingerprint}"
            in result.stderr), _done(result)
    # a changed kit signed anew by another key, its release.pub put in: the site trusts the release key
    from bundler.kit import _sign_sums, _write_sums

    forged = _copy_kit(kit, tmp_path)
    shutil.copy(other.public, forged / "release.pub")
    _write_sums(forged)
    _sign_sums(forged, load_private_key(other.private))
    result = _install_sh(offline, forged, release_key, "--prefix", str(prefix), cwd=tmp_path)
    assert result.returncode == 1, _done(result)
    assert (f"the kit's key (release.pub) is {other.fingerprint}, not the trusted {release_key.fingerprint}"
            in result.stderr), _done(result)
    # not a fingerprint at all
    result = _install_sh(offline, kit, None, "--fingerprint", "ed25519:1234", "--prefix", str(prefix), cwd=tmp_path)
    assert result.returncode == 1 and "expected ed25519: and 32 hex digits" in result.stderr, _done(result)
    assert not prefix.exists()


def test_no_fingerprint_asks_on_a_terminal_and_is_refused_without_one(kit: Path, release_key: Key, offline: Offline,
                                                                      tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    result = _install_sh(offline, kit, None, "--prefix", str(prefix), cwd=tmp_path)  # stdin: /dev/null
    assert result.returncode == 1, _done(result)
    assert "no --fingerprint, and no terminal to confirm the kit's signer on" in result.stderr, _done(result)
    assert "--fingerprint ed25519:" in result.stderr and "'airgap-bundle keygen' printed it" in result.stderr
    assert not prefix.exists()

    other = _keypair(tmp_path / "other")
    typed_wrong = offline.run_on_terminal(other.fingerprint, "sh", str(kit / "install.sh"), "--prefix", str(prefix),
                                          "--no-link", cwd=tmp_path)
    assert typed_wrong.returncode == 1, _done(typed_wrong)
    assert f"this kit says it is signed by the release key {release_key.fingerprint}" in typed_wrong.stderr
    assert f"not the trusted {other.fingerprint}" in typed_wrong.stderr, _done(typed_wrong)
    assert not prefix.exists()

    confirmed = offline.run_on_terminal("yes", "sh", str(kit / "install.sh"), "--prefix", str(prefix), "--no-link",
                                        cwd=tmp_path)
    assert confirmed.returncode == 0, _done(confirmed)
    assert f"SHA256SUMS signed by the trusted key {release_key.fingerprint}" in confirmed.stdout, _done(confirmed)
    assert (prefix / "bin" / "airgap-install").is_file()


def test_unsigned_kit_is_refused_here_and_there_unless_insecure(release_key: Key, offline: Offline, tmp_path: Path) -> None:
    current = f"{sys.version_info[0]}.{sys.version_info[1]}"
    kit_command = [sys.executable, "-m", "bundler.cli", "kit", "--python", current, "--no-compose", "--no-standalone",
                   "--cache-dir", str(CACHE), "--plain"]
    refused = offline.run(*kit_command, "-o", str(tmp_path / "none"), cwd=ROOT)
    assert refused.returncode == 1 and not (tmp_path / "none").exists(), _done(refused)
    assert "pass --key keys/release.key" in refused.stderr and "or --unsigned" in refused.stderr, _done(refused)

    made = offline.run(*kit_command, "--unsigned", "-o", str(tmp_path / "out"), cwd=ROOT)
    assert made.returncode == 0, _done(made)
    assert "warning: --unsigned" in made.stderr and "UNSIGNED" in made.stderr, _done(made)
    unsigned = Path(made.stdout.strip())
    assert not (unsigned / "SHA256SUMS.sig").exists() and not (unsigned / "release.pub").exists()
    assert "UNSIGNED kit" in (unsigned / "README.txt").read_text()

    prefix = tmp_path / "prefix"
    result = _install_sh(offline, unsigned, release_key, "--prefix", str(prefix), cwd=tmp_path)
    assert result.returncode == 1 and "this kit is not signed" in result.stderr, _done(result)
    assert "--insecure-skip-kit-signature" in result.stderr and not prefix.exists(), _done(result)

    result = _install_sh(offline, unsigned, None, "--insecure-skip-kit-signature", "--prefix", str(prefix), "--no-link",
                         cwd=tmp_path)
    assert result.returncode == 0, _done(result)
    assert "WARNING: --insecure-skip-kit-signature: the kit's signature is NOT checked" in result.stderr, _done(result)
    assert f"installed airgap-install {VERSION} into {prefix}" in result.stdout


def test_insecure_skip_still_checks_sha256sums(trojan_kit: Path, offline: Offline, tmp_path: Path) -> None:
    """--insecure-skip-kit-signature on the trojan kit: nothing stops it but the warning (which is the point of
    the signature); a damaged file is still found."""
    damaged = _copy_kit(trojan_kit, tmp_path)
    with open(damaged / "install.sh", "a") as script:
        script.write("# changed\n")
    result = _install_sh(offline, damaged, None, "--insecure-skip-kit-signature", "--prefix", str(tmp_path / "p"),
                         cwd=tmp_path)
    assert result.returncode == 1 and "WARNING" in result.stderr, _done(result)
    assert "SHA256SUMS check failed" in result.stderr and "install.sh" in result.stderr, _done(result)


def _python_binaries() -> tuple[str, ...]:
    return tuple(sorted(str(p) for folder in ("/usr/bin", "/usr/local/bin") for p in Path(folder).glob("python3*")
                        if p.is_file() and not p.name.endswith("-config")))


def test_without_python3_openssl_checks_the_signature(kit: Path, trojan_kit: Path, release_key: Key, offline: Offline,
                                                      tmp_path: Path) -> None:
    """A host with no python3 (it gets the standalone executable): openssl pkeyutl checks the signature."""
    if shutil.which("openssl") is None:
        _unavailable("no openssl (Debian package openssl; scripts/setup.sh installs it)")
    hidden = _python_binaries()
    prefix = tmp_path / "prefix"
    trust = ("--fingerprint", release_key.fingerprint)
    result = offline.run_without(hidden, "sh", str(kit / "install.sh"), *trust, "--prefix", str(prefix), "--no-link",
                                 cwd=tmp_path)
    assert result.returncode == 0, _done(result)
    assert "no python3 found on PATH" in result.stdout, _done(result)
    assert (f"kit signature good: SHA256SUMS signed by the trusted key {release_key.fingerprint} (checked with openssl"
            in result.stdout), _done(result)
    assert f"installed airgap-install {VERSION} into {prefix} (standalone, no Python)" in result.stdout

    refused = offline.run_without(hidden, "sh", str(trojan_kit / "install.sh"), *trust, "--prefix",
                                  str(tmp_path / "p2"), cwd=tmp_path)
    assert refused.returncode == 1 and "bad signature" in refused.stderr, _done(refused)
    assert not (tmp_path / "p2").exists()

    wrong = offline.run_without(hidden, "sh", str(kit / "install.sh"), "--fingerprint", "ed25519:" + "0" * 32,
                                "--prefix", str(tmp_path / "p3"), cwd=tmp_path)
    assert wrong.returncode == 1, _done(wrong)
    assert f"the kit's key (release.pub) is {release_key.fingerprint}, not the trusted ed25519:{'0' * 32}" in wrong.stderr

    neither = offline.run_without((*hidden, shutil.which("openssl")), "sh", str(kit / "install.sh"), *trust,
                                  "--prefix", str(tmp_path / "p4"), cwd=tmp_path)
    assert neither.returncode == 1, _done(neither)
    assert "cannot check the kit's signature: this host has no python3 and no openssl >= 1.1.1" in neither.stderr
    assert not (tmp_path / "p4").exists()
