"""A standalone ``airgap-install`` for hosts without a usable python3 (PyInstaller, one file).

Built on the connected machine, in a private virtual environment that holds the
kit's own wheels of airgap-install (so the executable runs exactly what the kit
installs elsewhere) and PyInstaller, both from the wheel cache when it has them.
The result is cached by the wheels it was made from, so a second kit takes no time.
The executable needs the C library of a host at least as new as the build machine's.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Sequence

PYINSTALLER = "pyinstaller>=6,<7"
ENTRY = (
    "import sys\n"
    "from installer.cli import main\n"
    "sys.argv[0] = 'airgap-install'\n"
    "main(prog_name='airgap-install')\n"
)


class StandaloneError(Exception):
    """The standalone executable could not be built; says why and what to do."""


def standalone_executable(project_wheel: Path, wheels: Path, cache: Path, version: str,
                          download: Callable[[Sequence[str], Path], subprocess.CompletedProcess]) -> Path:
    """The one-file ``airgap-install`` made from ``project_wheel`` and the kit's ``wheels``, from the cache if built before.

    ``download(requirements, cache)`` fetches wheels into the cache when it lacks PyInstaller.
    """
    key = hashlib.sha256()
    for wheel in sorted(wheels.glob("*.whl")):
        key.update(wheel.name.encode())
    with zipfile.ZipFile(project_wheel) as archive:  # what the wheel holds, not when it was zipped
        for name in sorted(archive.namelist()):
            key.update(name.encode() + hashlib.sha256(archive.read(name)).digest())
    key.update(f"{sys.version_info[:2]}{PYINSTALLER}".encode())
    cached = cache / "standalone" / f"airgap-install-{version}-{key.hexdigest()[:16]}"
    if cached.is_file() and _runs(cached, version):
        return cached
    work = Path(tempfile.mkdtemp(prefix=".standalone-", dir=cache))
    try:
        venv = work / "venv"
        _run([sys.executable, "-m", "venv", str(venv)], "create a virtual environment")
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
        _run([*pip, "--no-index", "--find-links", str(project_wheel.parent), "--find-links", str(wheels),
              "--find-links", str(cache), f"airgap-compose=={version}"],
             "install airgap-install from the kit's wheels into it")
        offline = subprocess.run([*pip, "--no-index", "--find-links", str(cache), PYINSTALLER], capture_output=True,
                                 text=True, stdin=subprocess.DEVNULL)
        if offline.returncode != 0:
            fetched = download([PYINSTALLER], cache)
            if fetched.returncode != 0:
                raise StandaloneError(f"PyInstaller is not in the cache {cache} and the package index could not provide "
                                      f"it: {_tail(fetched)}; build the kit once with network access, or pass --no-standalone")
            _run([*pip, "--no-index", "--find-links", str(cache), PYINSTALLER], "install PyInstaller from the cache")
        entry = work / "airgap_install_main.py"
        entry.write_text(ENTRY)
        dist = work / "dist"
        _run([str(venv / "bin" / "pyinstaller"), "--onefile", "--noconfirm", "--clean", "--log-level", "WARN",
              "--name", "airgap-install", "--distpath", str(dist), "--workpath", str(work / "build"),
              "--specpath", str(work), "--collect-submodules", "installer", "--collect-submodules", "rich",
              "--copy-metadata", "airgap-compose", str(entry)], "run PyInstaller")
        built = dist / "airgap-install"
        if not _runs(built, version):
            raise StandaloneError(f"the standalone airgap-install built in {work} does not run (--version)")
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(cached.name + ".partial")
        shutil.copy2(built, partial)
        os.replace(partial, cached)
        return cached
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _runs(executable: Path, version: str) -> bool:
    try:
        result = subprocess.run([str(executable), "--version"], capture_output=True, text=True, timeout=120,
                                stdin=subprocess.DEVNULL, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and version in result.stdout


def _run(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise StandaloneError(f"standalone airgap-install: could not {what}: {_tail(result)}")


def _tail(result: subprocess.CompletedProcess, lines: int = 4) -> str:
    text = ((result.stderr or "") + (result.stdout or "")).strip().splitlines()
    return " | ".join(text[-lines:]) if text else f"exit {result.returncode}"
