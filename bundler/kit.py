"""The offline installer kit: everything an air-gapped host needs to install ``airgap-install``.

``build_kit`` writes ``OUTPUT/airgap-install-kit-VERSION/``::

    wheels/      this project's wheel, every runtime dependency for each Python
                 version x platform asked for, and a pip wheel (the host needs
                 neither pip nor venv/ensurepip: install.sh runs pip from its wheel)
    install.sh   POSIX sh: checks the signature of SHA256SUMS, then SHA256SUMS, finds
                 python3, installs into PREFIX/lib with no index, writes
                 PREFIX/bin/airgap-install
    README.txt   how to use it, and the signer's fingerprint
    release.pub  the release key's public half (PEM), the key that signs archives
    SHA256SUMS   sha256 of every other file but SHA256SUMS.sig, in ``sha256sum -c`` format
    SHA256SUMS.sig  the raw 64-byte Ed25519 signature of SHA256SUMS by the release key

The signature is what makes a kit trustworthy: SHA256SUMS alone only finds damage,
since whoever swaps a wheel can write SHA256SUMS anew. install.sh trusts the key
whose fingerprint the user gives (``--fingerprint``, or confirmed on a terminal),
checks that release.pub is that key, and verifies the signature with a pure-Python
Ed25519 verifier written into install.sh itself (any python3), else with
``openssl pkeyutl`` (OpenSSL >= 1.1.1), before it checks SHA256SUMS and before
anything is written on the host. ``key_path=None`` writes an unsigned kit, which
install.sh refuses unless told ``--insecure-skip-kit-signature``.

Wheels come from a cache folder first, with pip told to use no index, so a
second kit needs no network. Only when the cache cannot satisfy a Python
version x platform does pip ask the package index (with the user's pip
configuration) and add what it downloads to the cache.
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from installer.signing import fingerprint, load_private_key, sign

from .distwheel import DistWheelError, repack
from .kitcompose import COMPOSE_PLATFORMS, COMPOSE_VERSION, KitComposeError, compose_binary
from .kitstandalone import StandaloneError, standalone_executable
from .progress import Reporter

DIST_NAME = "airgap-compose"
KIT_NAME = "airgap-install-kit"
DEFAULT_PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
DEFAULT_PLATFORMS = ("manylinux2014_x86_64",)
DEFAULT_PREFIX = "/opt/airgap-install"
PACKAGES = ("bundler", "installer")
SUMS = "SHA256SUMS"
SIGNATURE = "SHA256SUMS.sig"  # raw 64-byte Ed25519 signature of SUMS
PUBLIC_KEY = "release.pub"  # the signer's public key, PEM (SubjectPublicKeyInfo), as keygen writes it

# Never copied when building the project's wheel from its source tree (at any depth; at the
# top only files, Python packages and src/ are copied anyway: see _source_ignore).
_SOURCE_JUNK = shutil.ignore_patterns("*.egg-info", "__pycache__", "*.pyc")
# What pip prints when it could not reach an index (as opposed to: the index has no such wheel).
_NETWORK_TROUBLE = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|"
    r"Name or service not known|Network is unreachable|Connection refused|ConnectTimeout|ReadTimeout|"
    r"ProxyError|SSLError|connection error|Could not fetch URL|No route to host",
    re.IGNORECASE,
)
_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")
_WRONG_PYTHON = re.compile(r"Package '([^']+)' requires a different Python: (\S+) not in '([^']+)'")


class KitError(Exception):
    """The kit could not be built; the message says what is missing and what to do."""


@dataclass(frozen=True)
class Target:
    """One Python version x platform the kit carries wheels for."""

    python: str  # "3.11"
    platform: str  # "manylinux2014_x86_64"

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")

    def tag_args(self) -> list[str]:
        """pip's options for this target (with --only-binary=:all:, which they require).
        --abi cp3X also admits abi3 wheels (cryptography's cp3Y-abi3, Y <= X) and pure-python
        ones (py3-none-any): pip derives those tags from the version."""
        return ["--python-version", self.python, "--platform", self.platform, "--implementation", "cp",
                "--abi", self.abi]

    def __str__(self) -> str:
        return f"Python {self.python} / {self.platform}"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/airgap-bundle/wheels``, else ``~/.cache/airgap-bundle/wheels``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "airgap-bundle" / "wheels"


def project_root() -> Path | None:
    """The source tree this copy of the bundler runs from, if it runs from one (a checkout, or ``pip install -e``)."""
    import bundler

    root = Path(bundler.__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def project_wheel(build_cache: Path, scratch: Path, refresh: bool) -> tuple[Path, str]:
    """This project's wheel and where it came from: built from the source tree the code runs from,
    else repacked from the installed distribution (a regular install: ``pip install .``, pipx)."""
    from installer import __version__

    root = project_root()
    if root is not None:
        return _build_project_wheel(root, build_cache, scratch, refresh), str(root)
    try:
        wheel = repack(DIST_NAME, __version__, PACKAGES, scratch / "wheel")
    except DistWheelError as exc:
        raise KitError(str(exc)) from None
    if wheel is None:
        raise KitError(f"{DIST_NAME} is neither installed nor run from its source tree; install it (pip install .)")
    return wheel, f"the installed {DIST_NAME}"


def build_kit(
    output_dir: Path,
    *,
    key_path: Path | None,
    python_versions: Sequence[str] = DEFAULT_PYTHONS,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
    cache_dir: Path | None = None,
    reporter: Reporter | None = None,
    refresh: bool = False,
    with_compose: bool = True,
    with_standalone: bool = True,
) -> Path:
    """Write ``OUTPUT/airgap-install-kit-VERSION/`` and return its path.

    ``key_path`` is the release key (Ed25519, PEM), the one that signs archives:
    it signs SHA256SUMS. ``None`` writes an unsigned kit (the caller decides
    whether that is allowed; install.sh refuses it unless told otherwise).
    ``refresh`` asks the package index for newer releases even when the cache
    could satisfy every target. ``with_compose`` adds compose v2 (for x86_64
    hosts without compose), ``with_standalone`` a one-file airgap-install (for
    hosts without a usable python3, of this machine's architecture). A kit of the same version already in OUTPUT is
    replaced only once the new one is complete.
    """
    from installer import __version__

    reporter = reporter or Reporter(quiet=True)
    private_key = load_private_key(Path(key_path).expanduser()) if key_path is not None else None
    signer = fingerprint(private_key.public_key()) if private_key is not None else ""
    targets = _targets(python_versions, platforms)
    cache = Path(cache_dir or default_cache_dir()).expanduser().resolve()
    output_dir = Path(output_dir).expanduser().resolve()
    final = output_dir / f"{KIT_NAME}-{__version__}"
    output_dir.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=output_dir))
    try:
        kit = work / final.name
        wheels = kit / "wheels"
        wheels.mkdir(parents=True)
        scratch = work / "scratch"

        with reporter.task("project wheel"):
            own_wheel, origin = project_wheel(cache / "build", scratch / "project", refresh)
        reporter.line(f"project wheel {own_wheel.name} from {origin}")
        dist = metadata.PathDistribution(zipfile.Path(own_wheel, at=_dist_info(own_wheel) + "/"))
        with zipfile.ZipFile(own_wheel) as archive:
            if "installer/cli.py" not in archive.namelist():
                raise KitError(f"the project's wheel {own_wheel.name} from {origin} has no installer/cli.py")
        if dist.version != __version__:
            raise KitError(
                f"the project's wheel from {origin} says version {dist.version} but installer.__version__ is "
                f"{__version__}; make pyproject.toml and installer/__init__.py agree before building a kit"
            )
        requires_python = (dist.metadata.get_all("Requires-Python") or [None])[0]
        _check_requires_python(requires_python, targets)
        requirements = dist.requires or []

        with reporter.task("pip wheel (install.sh runs pip from it)"):
            # pip is pure Python: one wheel, the newest that still runs on the oldest target
            oldest = min(targets, key=lambda t: tuple(int(p) for p in t.python.split(".")))
            pip_wheel = _resolve_into(["pip"], oldest, cache, wheels, scratch / "pip", refresh, no_deps=True)[0]

        with reporter.task(f"dependency wheels for {len(targets)} Python version x platform", total=len(targets)) as task:
            _resolve_all(f"{DIST_NAME}=={dist.version}", requirements, targets, cache, own_wheel.parent,
                                 wheels, scratch, refresh, task)
        shutil.rmtree(scratch)

        if with_compose and any(t.platform.endswith(p) for t in targets for p in COMPOSE_PLATFORMS):
            with reporter.task(f"compose v2 {COMPOSE_VERSION} (for hosts without compose)"):
                try:
                    binary = compose_binary(cache)
                except KitComposeError as exc:
                    raise KitError(str(exc)) from None
                (kit / "compose").mkdir()
                shutil.copy2(binary, kit / "compose" / "docker-compose")
                (kit / "compose" / "docker-compose").chmod(0o755)

        if with_standalone and any(t.platform.endswith(platform.machine()) for t in targets):
            with reporter.task("standalone airgap-install (PyInstaller, for hosts without python3)"):
                try:
                    executable = standalone_executable(wheels / own_wheel.name, wheels, cache, __version__,
                                                       lambda needs, where: _download_to_cache(needs, [], where))
                except StandaloneError as exc:
                    raise KitError(str(exc)) from None
                (kit / "standalone").mkdir()
                shutil.copy2(executable, kit / "standalone" / "airgap-install")
                (kit / "standalone" / "airgap-install").chmod(0o755)

        with reporter.task("check wheels, write install.sh, README.txt, SHA256SUMS" + (", sign it" if signer else "")):
            _check_wheels(sorted(wheels.iterdir()), cache)
            min_python = _min_python(requires_python) or oldest.python
            _write_text(kit / "install.sh", _install_script(__version__, targets, pip_wheel.name, min_python, signer),
                        0o755)
            _write_text(kit / "README.txt", _readme(__version__, targets, min_python, signer))
            if private_key is not None:
                _write_text(kit / PUBLIC_KEY, private_key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii"))
            _write_sums(kit)
            if private_key is not None:
                _sign_sums(kit, private_key)
        total = sum(f.stat().st_size for f in kit.rglob("*") if f.is_file())
        reporter.line(f"kit: {final} ({sum(1 for _ in wheels.iterdir())} wheels, {total / 1e6:.1f} MB), "
                      + (f"signed by {signer}: sites run sh install.sh --fingerprint {signer}" if signer else
                         "UNSIGNED: install.sh refuses it unless run with --insecure-skip-kit-signature"))

        _replace(kit, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def _targets(python_versions: Iterable[str], platforms: Iterable[str]) -> list[Target]:
    versions = list(dict.fromkeys(python_versions))
    plats = list(dict.fromkeys(platforms))
    if not versions or not plats:
        raise KitError("a kit needs at least one --python version and one --platform")
    for version in versions:
        if not re.fullmatch(r"3\.\d{1,2}", version):
            raise KitError(f"python version {version!r}: give MAJOR.MINOR of CPython 3, e.g. 3.11")
    for plat in plats:
        if not re.fullmatch(r"[a-z0-9_]+", plat):
            raise KitError(f"platform {plat!r}: give a wheel platform tag, e.g. manylinux2014_x86_64 or manylinux2014_aarch64")
    return [Target(v, p) for v in versions for p in plats]


def _run_pip(args: Sequence[str], *, offline: bool) -> subprocess.CompletedProcess:
    """Run this interpreter's pip. Offline: no index and no pip configuration at all (only the
    folders named with --find-links count); online: the user's pip configuration, as usual."""
    env = dict(os.environ)
    command, *rest = args
    # no version check (it would ask the index), never wait for a prompt
    options = ["--disable-pip-version-check", "--no-input"]
    if offline:
        env["PIP_CONFIG_FILE"] = os.devnull
        options += ["--isolated", "--no-index"]
    return subprocess.run([sys.executable, "-m", "pip", command, *options, *rest], env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)


def _pip_failure(result: subprocess.CompletedProcess, lines: int = 6) -> str:
    errors = [line.strip() for line in result.stdout.splitlines() if line.startswith("ERROR")]
    return "; ".join(errors[-lines:]) or result.stdout.strip()[-800:]


def _build_project_wheel(root: Path, build_cache: Path, out: Path, refresh: bool) -> Path:
    """Build this project's wheel from a clean copy of its source tree (a build in the tree
    itself would leave build/ behind, whose stale modules a later wheel could pick up).
    The build backend (pyproject's build-system.requires) is installed from the cache."""
    source = out / "source"
    shutil.copytree(root, source, ignore=_source_ignore(root))
    wheel_dir = out / "wheel"
    build_cache.mkdir(parents=True, exist_ok=True)

    def build() -> subprocess.CompletedProcess:
        shutil.rmtree(wheel_dir, ignore_errors=True)
        return _run_pip(["wheel", "--no-deps", "--find-links", str(build_cache), "-w", str(wheel_dir), str(source)],
                        offline=True)

    result = build() if not refresh else None
    if result is None or result.returncode != 0:
        needs = _build_requires(root)
        fetched = _download_to_cache(needs, [], build_cache)
        if fetched.returncode != 0:
            first = result if result is not None else fetched
            raise KitError(
                f"cannot build the project's wheel: the build backend ({', '.join(needs)}) is not in {build_cache} "
                f"and the package index could not provide it ({_describe_online_failure(fetched)}); "
                f"pip said: {_pip_failure(first)}"
            )
        result = build()
        if result.returncode != 0:
            raise KitError(f"building the project's wheel from {root} failed: {_pip_failure(result)}")
    built = sorted(wheel_dir.glob("*.whl"))
    if len(built) != 1:
        raise KitError(f"building the project's wheel from {root} gave {len(built)} wheels, expected one")
    return built[0]


def _source_ignore(root: Path):
    """Skip junk, and the kit output or anything else large that happens to sit in the tree:
    at the top, keep small files, Python packages (folders with __init__.py) and src/ only."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = set(_SOURCE_JUNK(folder, names))
        if Path(folder) == root:
            for name in names:
                path = root / name
                package = (path / "__init__.py").is_file() or name == "src"
                if ((path.is_dir() and not package) or name.startswith(".")
                        or (path.is_file() and path.stat().st_size > 1_000_000)):
                    skipped.add(name)
        return skipped

    return ignore


def _build_requires(root: Path) -> list[str]:
    try:
        import tomllib  # type: ignore[import-not-found]
    except ImportError:  # Python < 3.11
        from pip._vendor import tomli as tomllib  # type: ignore[no-redef]
    with open(root / "pyproject.toml", "rb") as handle:
        system = tomllib.load(handle).get("build-system", {})
    requires = list(system.get("requires", ["setuptools>=40.8.0"]))
    # setuptools before 70.1 builds wheels through the separate 'wheel' package
    if any(r.strip().lower().startswith("setuptools") for r in requires) and not any(
            r.strip().lower().startswith("wheel") for r in requires):
        requires.append("wheel")
    return requires


def _download_to_cache(requirements: Sequence[str], target_args: Sequence[str], cache: Path) -> subprocess.CompletedProcess:
    """Ask the package index (user's pip configuration) and add the wheels to the cache.
    Downloads land in a scratch folder first and are moved in whole, so the cache never
    holds a half-written wheel."""
    landing = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    # pip retries each URL 5 times with backoff (~8 s), for every project it looks up: with
    # no network at all that is minutes before the error. Two retries, unless PIP_RETRIES says.
    retries = [] if "PIP_RETRIES" in os.environ else ["--retries", "2"]
    try:
        result = _run_pip(["download", "--only-binary=:all:", *retries, *target_args, "-d", str(landing),
                           *requirements], offline=False)
        for wheel in landing.glob("*.whl"):
            if not (cache / wheel.name).exists():
                os.replace(wheel, cache / wheel.name)
        return result
    finally:
        shutil.rmtree(landing, ignore_errors=True)


def _resolve_offline(requirements: Sequence[str], target: Target, find_links: Sequence[Path], dest: Path,
                     no_deps: bool = False) -> subprocess.CompletedProcess:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    links = [arg for folder in find_links for arg in ("--find-links", str(folder))]
    return _run_pip(["download", "--only-binary=:all:", *target.tag_args(), *(["--no-deps"] if no_deps else []), *links,
                     "-d", str(dest), *requirements], offline=True)


def _resolve_into(requirements: Sequence[str], target: Target, cache: Path, wheels: Path, scratch: Path,
                  refresh: bool, *, no_deps: bool = False, online_requirements: Sequence[str] | None = None,
                  extra_links: Sequence[Path] = ()) -> list[Path]:
    """Resolve ``requirements`` for ``target`` from the cache (asking the index only when the
    cache falls short, or on ``refresh``) and put the wheels into ``wheels``."""
    links = [cache, *extra_links]
    dest = scratch / "resolved"
    result = None if refresh else _resolve_offline(requirements, target, links, dest, no_deps)
    if result is None or result.returncode != 0:
        fetched = _download_to_cache(online_requirements or requirements,
                                     target.tag_args() + (["--no-deps"] if no_deps else []), cache)
        if fetched.returncode != 0:
            raise KitError(_missing_message(result, fetched, target, cache))
        result = _resolve_offline(requirements, target, links, dest, no_deps)
        if result.returncode != 0:
            raise KitError(f"{target}: the cache {cache} still cannot satisfy {', '.join(requirements)} after a "
                           f"download: {_pip_failure(result)}")
    resolved = sorted(dest.glob("*.whl"))
    for wheel in resolved:
        if not (wheels / wheel.name).exists():
            shutil.copy2(wheel, wheels / wheel.name)
    return resolved


def _resolve_all(project: str, requirements: Sequence[str], targets: Sequence[Target], cache: Path,
                 project_wheels: Path, wheels: Path, scratch: Path, refresh: bool, task) -> None:
    """Every target's wheels: first all of them from the cache at once (pip is mostly CPU
    here), then one by one with the index for the targets the cache could not satisfy."""
    done = 0

    def offline(index_target) -> tuple[Target, Path, subprocess.CompletedProcess]:
        index, target = index_target
        dest = scratch / f"target-{index}" / "resolved"
        return target, dest, _resolve_offline([project], target, [cache, project_wheels], dest)

    pending = list(enumerate(targets))
    if not refresh:
        with ThreadPoolExecutor(max_workers=max(1, min(len(targets), os.cpu_count() or 1))) as pool:
            results = list(pool.map(offline, pending))
        pending = []
        for index, (target, dest, result) in enumerate(results):
            if result.returncode == 0:
                for wheel in dest.glob("*.whl"):
                    if not (wheels / wheel.name).exists():
                        shutil.copy2(wheel, wheels / wheel.name)
                done += 1
                task.step(done, len(targets), "from the cache")
            else:
                pending.append((index, target))
    for index, target in pending:
        _resolve_into([project], target, cache, wheels, scratch / f"target-{index}", refresh,
                      online_requirements=list(requirements), extra_links=[project_wheels])
        done += 1
        task.step(done, len(targets), "with the index")


def _missing_message(offline: subprocess.CompletedProcess | None, online: subprocess.CompletedProcess,
                     target: Target, cache: Path) -> str:
    wrong_python = _WRONG_PYTHON.search((offline.stdout if offline else "") + online.stdout)
    if wrong_python:
        name, version, spec = wrong_python.groups()
        return f"{target}: {name} requires Python {spec}, so no kit for Python {version}; drop --python {target.python}"
    missing = _NO_MATCH.search(offline.stdout) if offline else None
    if _NETWORK_TROUBLE.search(online.stdout):
        what = f"a wheel of {missing.group(1)}" if missing else "some wheels"
        return (f"{target}: the cache {cache} lacks {what} and the package index cannot be reached "
                f"({_describe_online_failure(online)}); build once on a machine with network access, "
                f"or copy a warm cache to {cache}")
    unavailable = _NO_MATCH.search(online.stdout)
    if unavailable:
        return (f"{target}: the package index has no wheel of {unavailable.group(1)} for this Python version and "
                f"platform (a kit carries wheels only, nothing is compiled on the site); "
                f"choose other --python/--platform values. pip said: {_pip_failure(online)}")
    return f"{target}: pip could not download the wheels: {_pip_failure(online)}"


def _describe_online_failure(result: subprocess.CompletedProcess) -> str:
    match = _NETWORK_TROUBLE.search(result.stdout)
    return f"network error: {match.group(0)}" if match else _pip_failure(result, 2)


def _dist_info(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        names = {name.split("/", 1)[0] for name in archive.namelist() if name.endswith(".dist-info/METADATA")}
    if len(names) != 1:
        raise KitError(f"{wheel.name}: expected one .dist-info/METADATA in the wheel, found {len(names)}")
    return names.pop()


def _min_python(requires_python: str | None) -> str | None:
    match = re.search(r">=\s*(3\.\d+)", requires_python or "")
    return match.group(1) if match else None


def _check_requires_python(requires_python: str | None, targets: Sequence[Target]) -> None:
    minimum = _min_python(requires_python)
    if not minimum:
        return
    floor = tuple(int(p) for p in minimum.split("."))
    too_old = sorted({t.python for t in targets if tuple(int(p) for p in t.python.split(".")) < floor})
    if too_old:
        raise KitError(f"{DIST_NAME} requires Python {requires_python}; drop --python {' '.join(too_old)}")


def _check_wheels(wheels: Sequence[Path], cache: Path) -> None:
    """Every wheel must be a sound zip (a damaged cache file would otherwise fail on the site)."""
    for wheel in wheels:
        try:
            with zipfile.ZipFile(wheel) as archive:
                bad = archive.testzip()
        except zipfile.BadZipFile:
            bad = "(not a zip file)"
        if bad:
            (cache / wheel.name).unlink(missing_ok=True)
            raise KitError(f"{wheel.name} in the cache {cache} is damaged ({bad}); removed it from the cache, "
                           "build the kit again to download it anew")


def _write_text(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text, encoding="utf-8", newline="\n")
    path.chmod(mode)


def _write_sums(kit: Path) -> None:
    """SHA256SUMS: every file of the kit but itself and its signature."""
    lines = []
    for path in sorted(p for p in kit.rglob("*") if p.is_file() and p.relative_to(kit).as_posix() not in (SUMS, SIGNATURE)):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        lines.append(f"{digest.hexdigest()}  {path.relative_to(kit).as_posix()}\n")
    _write_text(kit / SUMS, "".join(lines))


def _sign_sums(kit: Path, private_key: Ed25519PrivateKey) -> None:
    """SHA256SUMS.sig: the raw 64-byte Ed25519 signature of SHA256SUMS as written (what
    ``openssl pkeyutl -verify -rawin -sigfile`` and install.sh's own verifier read)."""
    signature = sign(private_key, (kit / SUMS).read_bytes())
    (kit / SIGNATURE).write_bytes(signature)
    (kit / SIGNATURE).chmod(0o644)


def _replace(new: Path, final: Path) -> None:
    """Put the finished kit in place; an older kit of that name goes only after that succeeded."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _readme(version: str, targets: Sequence[Target], min_python: str, signer: str) -> str:
    pythons = " ".join(dict.fromkeys(t.python for t in targets))
    plats = " ".join(dict.fromkeys(t.platform for t in targets))
    if signer:
        signature = (
            f"Signed by the release key {signer}: {SIGNATURE} is the raw 64-byte Ed25519 signature of {SUMS} by the "
            f"key in {PUBLIC_KEY}. Trust it only if that fingerprint is the one the release key's owner gave you "
            "('airgap-bundle keygen' printed it), not one read from this kit. By hand: openssl pkeyutl -verify -pubin "
            f"-inkey {PUBLIC_KEY} -rawin -in {SUMS} -sigfile {SIGNATURE} && sha256sum -c {SUMS} (the fingerprint is "
            f"ed25519: and the first 32 hex digits of the sha256 of the raw 32-byte key).\n"
        )
        fingerprint_option = "--fingerprint ed25519:... (the release key's, as its owner gave it to you)"
    else:
        signature = ("UNSIGNED kit (made with 'airgap-bundle kit --unsigned'): nothing proves who made it; install.sh "
                     "refuses it unless run with --insecure-skip-kit-signature.\n")
        fingerprint_option = "--insecure-skip-kit-signature"
    return (
        f"Offline installer kit for airgap-install {version}: needs only python3 ({pythons}; >= {min_python}) "
        f"on {plats}, no network, no pip, no venv.\n"
        + signature +
        f"Install, as root: sh install.sh {fingerprint_option} [--prefix DIR (default {DEFAULT_PREFIX})] [--no-link]  "
        f"({'checks the signature, then SHA256SUMS, first' if signer else 'checks SHA256SUMS first'}; running it again "
        "replaces the install; "
        "sh install.sh --help for more).\n"
        "Then run: airgap-install --help  (or PREFIX/bin/airgap-install when /usr/local/bin was not writable "
        "or --no-link was given).\n"
    )


def _install_script(version: str, targets: Sequence[Target], pip_wheel: str, min_python: str, signer: str) -> str:
    pythons = " ".join(dict.fromkeys(t.python for t in targets))
    plats = " ".join(dict.fromkeys(t.platform for t in targets))
    values = {
        "@VERSION@": version, "@PYTHONS@": pythons, "@PLATFORMS@": plats, "@PIP_WHEEL@": pip_wheel,
        "@MIN_PYTHON@": min_python, "@DIST@": DIST_NAME, "@PREFIX@": DEFAULT_PREFIX, "@SIGNER@": signer,
        "@VERIFY_PY@": VERIFY_PY,
    }
    script = INSTALL_SH
    for key, value in values.items():
        if "'" in value:
            raise KitError(f"{key.strip('@').lower()} {value!r} cannot go into install.sh")
        script = script.replace(key, value)
    return script


# install.sh's own Ed25519 verifier (RFC 8032 section 5.1.7, the reference arithmetic of its
# section 6): any python3 runs it with no package at all. It is slow as Ed25519 goes (tens of
# milliseconds) and checks SHA256SUMS only, which is small. Arguments: release.pub (PEM),
# SHA256SUMS, SHA256SUMS.sig; prints the key's fingerprint (installer/signing.py's format),
# then "good" or "bad"; a key file that is not an Ed25519 public key: a message, exit 2.
# Written into install.sh between single quotes: it must hold none, and no f-strings (an old
# python3 may be all a host has for this).
VERIFY_PY = r"""
import binascii, hashlib, sys
p = 2 ** 255 - 19
L = 2 ** 252 + 27742317777372353535851937790883648493
d = -121665 * pow(121666, p - 2, p) % p
SQRT_M1 = pow(2, (p - 1) // 4, p)
def add(P, Q):
    a = (P[1] - P[0]) * (Q[1] - Q[0]) % p
    b = (P[1] + P[0]) * (Q[1] + Q[0]) % p
    c = 2 * P[3] * Q[3] * d % p
    e = 2 * P[2] * Q[2] % p
    E, F, G, H = b - a, e - c, e + c, b + a
    return (E * F % p, G * H % p, F * G % p, E * H % p)
def mul(s, P):
    Q = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            Q = add(Q, P)
        P = add(P, P)
        s >>= 1
    return Q
def same(P, Q):
    return (P[0] * Q[2] - Q[0] * P[2]) % p == 0 and (P[1] * Q[2] - Q[1] * P[2]) % p == 0
def point(y, sign):
    if y >= p:
        return None
    x2 = (y * y - 1) * pow(d * y * y + 1, p - 2, p) % p
    if x2 == 0:
        return None if sign else (0, y, 1, 0)
    x = pow(x2, (p + 3) // 8, p)
    if (x * x - x2) % p:
        x = x * SQRT_M1 % p
    if (x * x - x2) % p:
        return None
    if (x & 1) != sign:
        x = p - x
    return (x, y, 1, x * y % p)
def decode(raw):
    y = int.from_bytes(raw, "little")
    return point(y & ((1 << 255) - 1), y >> 255)
B = point(4 * pow(5, p - 2, p) % p, 0)
def verify(key, message, signature):
    if len(key) != 32 or len(signature) != 64:
        return False
    A, R = decode(key), decode(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if A is None or R is None or s >= L:
        return False
    k = int.from_bytes(hashlib.sha512(signature[:32] + key + message).digest(), "little") % L
    return same(mul(s, B), add(R, mul(k, A)))
def main(pem_path, message_path, signature_path):
    try:
        pem, message, signature = [open(path, "rb").read() for path in (pem_path, message_path, signature_path)]
        lines = [line.strip() for line in pem.decode("ascii", "replace").splitlines()]
        begin, end = lines.index("-----BEGIN PUBLIC KEY-----"), lines.index("-----END PUBLIC KEY-----")
        der = binascii.a2b_base64("".join(lines[begin + 1:end]))
    except (OSError, ValueError) as exc:
        print("cannot read %s as a PEM public key, or the signature files: %s" % (pem_path, exc))
        sys.exit(2)
    if len(der) != 44 or der[:12] != binascii.unhexlify("302a300506032b6570032100"):
        print("%s is not an Ed25519 public key" % pem_path)
        sys.exit(2)
    print("ed25519:" + hashlib.sha256(der[12:]).hexdigest()[:32])
    print("good" if verify(der[12:], message, signature) else "bad")
main(*sys.argv[1:4])
"""


INSTALL_SH = r"""#!/bin/sh
# Offline installer of airgap-install @VERSION@, written by 'airgap-bundle kit'.
# Needs python3 and nothing else: no network, no pip, no venv. POSIX sh.
# Usage: sh install.sh --fingerprint ed25519:... [--prefix DIR] [--no-link]   (sh install.sh --help)
# Before anything is written on the host: the signature of SHA256SUMS (SHA256SUMS.sig, by the
# key in release.pub, which must be the key the user trusts), then SHA256SUMS itself.
set -eu
umask 022   # a system-wide install: readable by every user

KIT_VERSION='@VERSION@'
KIT_PYTHONS='@PYTHONS@'
KIT_PLATFORMS='@PLATFORMS@'
KIT_PIP_WHEEL='@PIP_WHEEL@'
MIN_PYTHON='@MIN_PYTHON@'
DIST='@DIST@'
KIT_SIGNER='@SIGNER@'   # the fingerprint of the key the kit says signed it; shown, never trusted by itself
KIT_VERIFY_PY='@VERIFY_PY@'

die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'install.sh: %s\n' "$*"; }

usage() {
  cat <<EOF
Usage: sh install.sh --fingerprint ed25519:HEX [--prefix DIR] [--no-link] [--link-dir DIR] [--standalone]

Install airgap-install $KIT_VERSION from this kit, with no network.
  --fingerprint FP the fingerprint of the release key you trust (ed25519: and 32 hex
                   digits), from the key's owner: 'airgap-bundle keygen' printed it when
                   it made the key. The kit must be signed by that key. Without it, on a
                   terminal, the kit's signer is shown for you to confirm or type in
  --insecure-skip-kit-signature
                   do not check the kit's signature (anyone who could change the kit
                   on its way here could then run code here); SHA256SUMS is still checked
  --prefix DIR     install into DIR/lib, with the command DIR/bin/airgap-install
                   (default: @PREFIX@)
  --no-link        do not link the command into the link folder
  --standalone     install the kit's one-file airgap-install (no Python used), as is
                   done by itself on a host without a usable python3
  --link-dir DIR   where to link the command (default: /usr/local/bin, when writable)
  -h, --help       this text

First the signature: SHA256SUMS.sig must be the signature of SHA256SUMS by the key in
release.pub, and that key's fingerprint the trusted one (checked with python3, any
version, else with openssl >= 1.1.1); then SHA256SUMS. Python: \$PYTHON if set, else the first of
python3, python3.X ... on PATH that the kit has wheels for (Python $KIT_PYTHONS,
$KIT_PLATFORMS). Running it again replaces the previous install.
EOF
}

# ed25519:<32 hex digits>, in lower case; fails on anything else
normal_fingerprint() {
  _f=$(printf '%s' "$1" | tr -d ' \t' | tr '[:upper:]' '[:lower:]')
  _f=${_f#ed25519:}
  case $_f in *[!0-9a-f]*|'') return 1 ;; esac
  [ ${#_f} -eq 32 ] || return 1
  printf 'ed25519:%s\n' "$_f"
}
bad_fingerprint() {
  die "--fingerprint $1: expected ed25519: and 32 hex digits, as 'airgap-bundle keygen' prints it"
}

prefix='@PREFIX@'
trusted=
skip_signature=no
standalone=no
link=yes
link_dir=/usr/local/bin
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a folder"; prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --fingerprint) [ $# -ge 2 ] || die "--fingerprint needs the release key's fingerprint (ed25519:...)"
      trusted=$(normal_fingerprint "$2") || bad_fingerprint "$2"; shift 2 ;;
    --fingerprint=*) trusted=$(normal_fingerprint "${1#--fingerprint=}") || bad_fingerprint "${1#--fingerprint=}"; shift ;;
    --insecure-skip-kit-signature) skip_signature=yes; shift ;;
    --no-link) link=no; shift ;;
    --standalone) standalone=yes; shift ;;
    --link-dir) [ $# -ge 2 ] || die "--link-dir needs a folder"; link_dir=$2; shift 2 ;;
    --link-dir=*) link_dir=${1#--link-dir=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
[ -n "$prefix" ] || die "--prefix is empty"
case $prefix in
  *"'"*|*'"'*|*\\*|*'$'*|*'`'*) die "--prefix $prefix: quotes, backslashes, \$ and backticks are not supported in the path" ;;
esac
here=$(pwd)
case $prefix in /*) ;; *) prefix="$here/$prefix" ;; esac
case $link_dir in /*) ;; *) link_dir="$here/$link_dir" ;; esac

case $0 in */*) kit=${0%/*} ;; *) kit=. ;; esac
kit=$(cd "$kit" && pwd -P) || die "cannot find the kit's folder"
cd "$kit"
[ -f SHA256SUMS ] || die "SHA256SUMS is missing from $kit: the kit is incomplete; copy the whole folder again"
[ -f "wheels/$KIT_PIP_WHEEL" ] || die "wheels/$KIT_PIP_WHEEL is missing from $kit: the kit is incomplete; copy the whole folder again"

# ---- the host: architecture and a Python the kit has wheels for ---------------------------
arch=$(uname -m)
case " $KIT_PLATFORMS " in
  *"_$arch "*) ;;
  *) die "this host is $arch, but the kit has wheels for $KIT_PLATFORMS only; build a kit for it: airgap-bundle kit --platform manylinux2014_$arch" ;;
esac

py_version() {
  _v=$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || return 1
  case $_v in [0-9]*.[0-9]*) printf '%s\n' "$_v" ;; *) return 1 ;; esac
}
too_old() {
  _maj=${1%%.*}; _min=${1#*.}; _rmaj=${MIN_PYTHON%%.*}; _rmin=${MIN_PYTHON#*.}
  if [ "$_maj" -lt "$_rmaj" ]; then return 0; fi
  if [ "$_maj" -eq "$_rmaj" ] && [ "$_min" -lt "$_rmin" ]; then return 0; fi
  return 1
}
in_kit() {
  case " $KIT_PYTHONS " in *" $1 "*) return 0 ;; esac
  return 1
}

python=
pyver=
standalone_arch=x86_64   # what the kit's standalone executable was built for
if [ "$standalone" = yes ]; then
  [ -f standalone/airgap-install ] || die "--standalone: this kit has no standalone/airgap-install (built with --no-standalone?)"
  [ "$standalone_arch" = "$arch" ] || die "--standalone: the kit's standalone airgap-install is for $standalone_arch, this host is $arch"
elif [ -n "${PYTHON:-}" ]; then
  command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON: no such program"
  pyver=$(py_version "$PYTHON") || die "PYTHON=$PYTHON does not run as Python"
  if too_old "$pyver"; then
    die "PYTHON=$PYTHON is Python $pyver, too old: airgap-install needs Python >= $MIN_PYTHON"
  fi
  in_kit "$pyver" || die "PYTHON=$PYTHON is Python $pyver, but the kit has wheels for Python $KIT_PYTHONS only; build a kit for it: airgap-bundle kit --python $pyver"
  python=$PYTHON
else
  newest_first=
  for v in $KIT_PYTHONS; do newest_first="python$v $newest_first"; done
  found=
  found_versions=
  for cand in python3 $newest_first; do
    command -v "$cand" >/dev/null 2>&1 || continue
    v=$(py_version "$cand") || continue
    found="$found $cand ($v)"
    found_versions="$found_versions $v"
    if ! too_old "$v" && in_kit "$v"; then python=$cand; pyver=$v; break; fi
  done
  if [ -z "$python" ]; then
    if [ -z "$found" ]; then
      why="no python3 found on PATH; install Python >= $MIN_PYTHON (the distribution's python3 package) or set PYTHON=/path/to/python3"
    else
      all_too_old=yes
      for v in $found_versions; do
        too_old "$v" || all_too_old=no
      done
      if [ "$all_too_old" = yes ]; then
        why="python too old: found$found; airgap-install needs Python >= $MIN_PYTHON (e.g. RHEL 8: dnf install python39; then run this again, or set PYTHON=/usr/bin/python3.9)"
      else
        why="no Python the kit has wheels for: found$found, the kit has Python $KIT_PYTHONS; set PYTHON=/path/to/python3.X, or build a kit for yours: airgap-bundle kit --python X.Y"
      fi
    fi
    if [ -f standalone/airgap-install ] && [ "$standalone_arch" = "$arch" ]; then
      say "${why%%;*}: installing the kit's standalone airgap-install (no Python needed)"
      standalone=yes
    else
      die "$why"
    fi
  fi
fi
if [ "$standalone" = no ]; then
  python=$("$python" -c 'import sys; print(sys.executable)') || die "cannot run $python"
  [ -n "$python" ] || die "$python does not tell its own path (sys.executable is empty)"
  case $python in *"'"*) die "$python: a quote in the interpreter's path is not supported" ;; esac
fi

# ---- the kit's signature: SHA256SUMS signed by the release key the user trusts -------------
# A python3 of any version runs the verifier written above (from /, with -E -s: nothing of the
# kit, which is not trusted yet, nor of the environment, is imported); else openssl >= 1.1.1.
verify_with_python() {
  (cd / && "$1" -E -s -c "$KIT_VERIFY_PY" "$kit/release.pub" "$kit/SHA256SUMS" "$kit/SHA256SUMS.sig") 2>&1
}
usable_openssl() {
  command -v openssl >/dev/null 2>&1 || return 1
  case $(openssl version 2>/dev/null) in
    "OpenSSL 1.1.1"*|"OpenSSL "[3-9].*) return 0 ;;
  esac
  return 1
}
verify_with_openssl() {
  _der=$(openssl pkey -pubin -in release.pub -outform DER 2>/dev/null | od -An -v -tx1 | tr -d ' \n')
  case $_der in
    302a300506032b6570032100*) [ ${#_der} -eq 88 ] || { echo "release.pub is not an Ed25519 public key"; return 2; } ;;
    *) echo "release.pub is not an Ed25519 public key"; return 2 ;;
  esac
  printf 'ed25519:%s\n' "$(openssl pkey -pubin -in release.pub -outform DER | tail -c 32 | openssl dgst -sha256 -r | cut -c1-32)"
  if _out=$(openssl pkeyutl -verify -pubin -inkey release.pub -rawin -in SHA256SUMS -sigfile SHA256SUMS.sig 2>&1); then
    echo good
  elif [ "$(wc -c <SHA256SUMS.sig)" -ne 64 ] || printf '%s' "$_out" | grep -q 'Verification Failure'; then
    echo bad
  else
    printf 'openssl pkeyutl could not check it: %s\n' "$(printf '%s' "$_out" | head -n 3 | tr '\n' ' ')"
    return 2
  fi
}

if [ "$skip_signature" = yes ]; then
  {
    echo "install.sh: WARNING: ************************************************************************"
    echo "install.sh: WARNING: --insecure-skip-kit-signature: the kit's signature is NOT checked."
    echo "install.sh: WARNING: Nothing proves this kit comes from the release key's owner: whoever could change"
    echo "install.sh: WARNING: it on its way here (a wheel, and SHA256SUMS with it) runs their code on this host."
    echo "install.sh: WARNING: SHA256SUMS is still checked, which finds damage only."
    echo "install.sh: WARNING: ************************************************************************"
  } >&2
else
  [ -n "$KIT_SIGNER" ] || die "this kit is not signed (made with 'airgap-bundle kit --unsigned'): nothing proves who made it; nothing was installed. Ask its maker for a signed kit (airgap-bundle kit --key RELEASE_KEY), or run with --insecure-skip-kit-signature, knowing what that means"
  for f in release.pub SHA256SUMS.sig; do
    [ -f "$f" ] || die "$f is missing from $kit: the kit's signature cannot be checked; copy the whole folder again"
  done
  if [ -z "$trusted" ]; then
    how_to="give the release key's fingerprint: sh $0 --fingerprint ed25519:... (get it from the release key's owner, not from this kit: 'airgap-bundle keygen' printed it when it made the key, 'airgap-bundle kit' prints it with every kit)"
    [ -t 0 ] || die "no --fingerprint, and no terminal to confirm the kit's signer on; $how_to; nothing was installed"
    {
      echo "install.sh: this kit says it is signed by the release key $KIT_SIGNER"
      echo "install.sh: trust it only if that is the fingerprint the release key's owner gave you (not one read from the kit)"
      printf 'install.sh: type yes if it is, or type the fingerprint you were given: '
    } >&2
    answer=
    read -r answer || true
    case $answer in
      yes|YES|Yes) trusted=$KIT_SIGNER ;;
      *) trusted=$(normal_fingerprint "$answer") || die "not confirmed ('$answer' is neither yes nor ed25519:<32 hex digits>); $how_to; nothing was installed" ;;
    esac
  fi
  verifier=
  if [ "$standalone" = no ]; then
    verifier=$python
  else
    for cand in ${PYTHON:-} python3; do
      if command -v "$cand" >/dev/null 2>&1 && py_version "$cand" >/dev/null; then verifier=$cand; break; fi
    done
  fi
  if [ -n "$verifier" ]; then
    checked=$(verify_with_python "$verifier") || die "cannot check the kit's signature: $checked"
    checked_with="python3, $verifier"
  elif usable_openssl; then
    checked=$(verify_with_openssl) || die "cannot check the kit's signature: $checked"
    checked_with="openssl, $(openssl version)"
  else
    die "cannot check the kit's signature: this host has no python3 and no openssl >= 1.1.1 ($(openssl version 2>/dev/null || echo 'no openssl on PATH')); install either (the distribution's openssl package is enough), or run with --insecure-skip-kit-signature, knowing what that means; nothing was installed"
  fi
  signer=$(printf '%s\n' "$checked" | sed -n 1p)
  verdict=$(printf '%s\n' "$checked" | sed -n 2p)
  [ "$signer" = "$trusted" ] || die "the kit's key (release.pub) is $signer, not the trusted $trusted: this kit was not signed by the key you trust; nothing was installed. Check the fingerprint with the release key's owner"
  [ "$verdict" = good ] || die "bad signature: SHA256SUMS.sig is not a signature of SHA256SUMS by $trusted: the kit was changed after it was signed, or damaged; nothing was installed; get the kit again from its maker"
  say "kit signature good: SHA256SUMS signed by the trusted key $trusted (checked with $checked_with)"
fi

# ---- the kit's integrity ------------------------------------------------------------------
for f in wheels/* compose/* standalone/*; do
  [ -e "$f" ] || continue
  awk -v f="$f" '$2 == f { found = 1 } END { exit !found }' SHA256SUMS \
    || die "SHA256SUMS check failed: $f is not listed in SHA256SUMS (something was added to the kit); copy the kit again"
done
if command -v sha256sum >/dev/null 2>&1; then
  if ! report=$(sha256sum -c SHA256SUMS 2>&1); then
    die "SHA256SUMS check failed, the kit is damaged or was changed; copy it again. $(printf '%s\n' "$report" | grep -v ': OK$' | tr '\n' ' ')"
  fi
elif [ "$standalone" = yes ]; then
  die "cannot check SHA256SUMS: this host has neither sha256sum (coreutils) nor python3"
else
  # from /, with -E -s: nothing in the kit folder (not checked yet) can be imported
  report=$(cd / && "$python" -E -s -c '
import hashlib, os, sys
os.chdir(sys.argv[1])
bad = []
for line in open("SHA256SUMS"):
    if not line.strip():
        continue
    digest, name = line.rstrip("\n").split(None, 1)
    name = name.lstrip("*")
    try:
        with open(name, "rb") as handle:
            actual = hashlib.sha256(handle.read()).hexdigest()
    except OSError as exc:
        actual = "unreadable (%s)" % exc.strerror
    if actual != digest:
        bad.append(name + ": FAILED")
print(" ".join(bad))
sys.exit(1 if bad else 0)
' "$kit" 2>&1) || die "SHA256SUMS check failed, the kit is damaged or was changed; copy it again. $report"
fi
if [ "$standalone" = yes ]; then
  say "kit checked against SHA256SUMS; standalone airgap-install (no Python)"
else
  say "kit checked against SHA256SUMS; Python $pyver ($python)"
fi

# ---- install: pip from the kit's own wheel into a fresh folder, then swap (or the standalone) 
mkdir -p "$prefix" || die "cannot create $prefix"
prefix=$(cd "$prefix" && pwd -P)
marker="$prefix/.airgap-install-kit"
if [ -e "$prefix/lib" ] && [ ! -f "$marker" ]; then
  die "$prefix/lib exists and was not installed by this kit; choose another --prefix (default @PREFIX@)"
fi
if [ "$standalone" = no ]; then
  stage="$prefix/.lib.new"
  log="$prefix/.install.log"
  rm -rf "$stage" "$prefix/.lib.old"
  say "installing $DIST $KIT_VERSION into $prefix/lib (pip from the kit, no index)"
  # No pip configuration of this host counts (PIP_CONFIG_FILE, --isolated), nor PYTHONPATH (-E, -s).
  if ! PIP_CONFIG_FILE=/dev/null "$python" -E -s "$kit/wheels/$KIT_PIP_WHEEL/pip" install --isolated --no-index \
       --find-links "$kit/wheels" --no-cache-dir --disable-pip-version-check --no-input --no-warn-script-location \
       --target "$stage" "$DIST==$KIT_VERSION" >"$log" 2>&1; then
    rm -rf "$stage"
    missing=$(sed -n 's/.*No matching distribution found for \([^ ]*\).*/\1/p' "$log" | head -n 1)
    if [ -n "$missing" ]; then
      die "the kit has no wheel of $missing for Python $pyver on this host ($arch; the kit was built for Python $KIT_PYTHONS on $KIT_PLATFORMS); build a kit that has it (airgap-bundle kit --python $pyver), or set PYTHON to another Python. pip's log: $log"
    fi
    tail -n 15 "$log" >&2
    die "pip could not install $DIST from the kit; pip's log: $log"
  fi
  rm -rf "${stage:?}/bin"   # pip's console scripts; the launcher below is the command
  printf '%s\n' "$KIT_VERSION" >"$marker"
  if [ -d "$prefix/lib" ]; then mv "$prefix/lib" "$prefix/.lib.old"; fi
  mv "$stage" "$prefix/lib"
  rm -rf "$prefix/.lib.old"
else
  # The one-file executable carries its own Python and packages: PREFIX/bin/airgap-install.
  printf '%s\n' "$KIT_VERSION" >"$marker"
  rm -rf "$prefix/lib"
  mkdir -p "$prefix/bin"
  cp standalone/airgap-install "$prefix/bin/.airgap-install.new"
  chmod 755 "$prefix/bin/.airgap-install.new"
fi

# Compose v2 from the kit, for hosts without compose: PREFIX/libexec/docker-compose, found by
# airgap-install when the host has no compose v2 plugin (the host's own plugins are left alone).
rm -rf "$prefix/libexec"
if [ -f compose/docker-compose ] && [ "$arch" = x86_64 ]; then
  mkdir -p "$prefix/libexec"
  cp compose/docker-compose "$prefix/libexec/.docker-compose.new"
  chmod 755 "$prefix/libexec/.docker-compose.new"
  mv "$prefix/libexec/.docker-compose.new" "$prefix/libexec/docker-compose"
fi

# The launcher: this Python in isolated mode (-I: no PYTHON* variables, no user site, not the
# current folder), the kit's packages first on sys.path. Nothing is exported, so the programs
# the installer runs (Debian's docker-compose v1 is Python too) never see the kit's packages.
if [ "$standalone" = no ]; then
mkdir -p "$prefix/bin"
cat >"$prefix/bin/.airgap-install.new" <<EOF
#!/bin/sh
# airgap-install $KIT_VERSION, installed from the offline kit (run its install.sh again to replace).
exec '$python' -I -c 'import sys; sys.path.insert(0, "$prefix/lib"); from installer.cli import main; sys.argv[0] = "airgap-install"; main(prog_name="airgap-install")' "\$@"
EOF
chmod 755 "$prefix/bin/.airgap-install.new"
fi
mv "$prefix/bin/.airgap-install.new" "$prefix/bin/airgap-install"
if ! check=$("$prefix/bin/airgap-install" --version 2>&1); then
  die "installed into $prefix, but '$prefix/bin/airgap-install --version' fails: $(printf '%s\n' "$check" | tail -n 3 | tr '\n' ' ')"
fi

command_name="$prefix/bin/airgap-install"
if [ "$link" = yes ]; then
  target="$link_dir/airgap-install"
  if [ ! -d "$link_dir" ] || [ ! -w "$link_dir" ]; then
    say "note: $link_dir is missing or not writable, no link made; run $prefix/bin/airgap-install or add $prefix/bin to PATH"
  elif [ -e "$target" ] && [ ! -L "$target" ]; then
    say "note: $target exists and is not a link, left alone; run $prefix/bin/airgap-install"
  else
    rm -f "$target"
    ln -s "$prefix/bin/airgap-install" "$target"
    command_name=airgap-install
    say "linked $target -> $prefix/bin/airgap-install"
  fi
fi
if [ "$standalone" = yes ]; then
  say "installed airgap-install $KIT_VERSION into $prefix (standalone, no Python); try: $command_name --help"
else
  say "installed airgap-install $KIT_VERSION into $prefix (Python $pyver); try: $command_name --help"
fi
"""
