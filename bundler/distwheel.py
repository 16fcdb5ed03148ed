"""This project's wheel, repacked from the installed distribution (no source checkout needed).

A regular install (``pip install .``, a wheel, pipx) lists every file it put in
place in its ``RECORD``; those files are the wheel again. An editable install
lists only a path hook, so it has nothing to repack: the kit is then built from
the source tree the code runs from.
"""
from __future__ import annotations

import base64
import hashlib
import zipfile
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Optional

# Written by the installer of a wheel, not part of one (RECORD is written anew).
_INSTALL_ONLY = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "WHEEL"}
_WHEEL_FILE = "Wheel-Version: 1.0\nGenerator: airgap-bundle (repacked)\nRoot-Is-Purelib: true\nTag: py3-none-any\n"


class DistWheelError(Exception):
    """The installed distribution cannot be repacked; says which file and why."""


def installed_files(dist_name: str, packages: tuple[str, ...]) -> Optional[list[tuple[str, Path]]]:
    """(name in the wheel, file on disk) of a regular install of ``dist_name``; None for an editable one."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        return None
    records = dist.files or []
    names = {PurePosixPath(str(f)).as_posix() for f in records}
    if not all(f"{package}/__init__.py" in names for package in packages):
        return None  # an editable install: its RECORD holds a .pth or finder, not the modules
    result = []
    for record in records:
        path = PurePosixPath(str(record))
        if path.suffix == ".pyc" or "__pycache__" in path.parts or ".." in path.parts:
            continue
        top = path.parts[0]
        if top.endswith(".dist-info"):
            if path.name in _INSTALL_ONLY:
                continue
        elif top not in packages:
            continue  # console scripts in bin/ and the like are made again by whoever installs the wheel
        result.append((path.as_posix(), Path(record.locate())))
    return result


def repack(dist_name: str, version: str, packages: tuple[str, ...], out: Path) -> Optional[Path]:
    """Write ``NAME-VERSION-py3-none-any.whl`` into ``out`` from the installed files; None if editable."""
    files = installed_files(dist_name, packages)
    if files is None:
        return None
    normalised = dist_name.replace("-", "_")
    dist_info = f"{normalised}-{version}.dist-info"
    if not any(name == f"{dist_info}/METADATA" for name, _ in files):
        raise DistWheelError(f"the installed {dist_name} has no {dist_info}/METADATA; reinstall it (pip install .)")
    out.mkdir(parents=True, exist_ok=True)
    wheel = out / f"{normalised}-{version}-py3-none-any.whl"
    record_lines = []
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        entries = [(name, _read(path, name)) for name, path in sorted(files)]
        entries.append((f"{dist_info}/WHEEL", _WHEEL_FILE.encode()))
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record_lines.append(f"{name},sha256={digest},{len(data)}")
        record_lines.append(f"{dist_info}/RECORD,,")
        info = zipfile.ZipInfo(f"{dist_info}/RECORD", date_time=(2020, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        archive.writestr(info, "\n".join(record_lines) + "\n")
    return wheel


def _read(path: Path, name: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DistWheelError(f"cannot read {name} of the installed distribution at {path} ({exc.strerror}); "
                             "reinstall it (pip install .)") from None
