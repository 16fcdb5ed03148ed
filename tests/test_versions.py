"""Release order by SemVer precedence, and another archive of an installed version (issue 12, finding 1)."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from installer.archive import BundleHeader
from installer.install import InstallError, InstallOptions, check_version_order
from installer.versions import compare


@pytest.mark.parametrize("older, newer", [
    ("v0.3.5", "v0.3.6"),
    ("v0.3.6", "v0.10.0"),
    ("v0.3.5-2", "v0.3.5-10"),           # numeric identifiers compare as numbers
    ("v1.0-rc9", "v1.0-rc10"),           # and so do digit runs inside one
    ("v1.0-rc1", "v1.0"),                # a pre-release is lower than its release
    ("v1.0", "v1.0.1"),
    ("1.0.0-alpha", "1.0.0-alpha.1"),    # SemVer 2.0, section 11, in order
    ("1.0.0-alpha.1", "1.0.0-alpha.beta"),
    ("1.0.0-alpha.beta", "1.0.0-beta"),
    ("1.0.0-beta", "1.0.0-beta.2"),
    ("1.0.0-beta.2", "1.0.0-beta.11"),
    ("1.0.0-beta.11", "1.0.0-rc.1"),
    ("1.0.0-rc.1", "1.0.0"),
    ("v2.0.0", "v10.0.0"),
])
def test_precedence(older: str, newer: str) -> None:
    assert compare(older, newer) == -1 and compare(newer, older) == 1


@pytest.mark.parametrize("a, b", [
    ("v0.3.5+build7", "v0.3.5"),         # build metadata never orders
    ("v0.3.5+build7", "v0.3.5+build8"),
    ("v1.0", "v1.0.0"),                  # missing parts are 0
    ("V1.0.0", "1.0.0"),
])
def test_same_precedence(a: str, b: str) -> None:
    assert compare(a, b) == 0 and compare(b, a) == 0


@pytest.mark.parametrize("other", ["latest", "main-2024", "v1..2", "1.0.0+", "v1.0-", ""])
def test_not_a_version_is_not_comparable(other: str) -> None:
    assert compare(other, "v1.0.0") is None and compare("v1.0.0", other) is None


def header(version: str = "v1.0.0", created: str = "2026-01-01T00:00:00Z", name: str = "demo") -> BundleHeader:
    return BundleHeader(name=name, version=version, tool_version="t", platform="linux/amd64", created=created,
                        signer="ed25519:" + "0" * 32, images=[], members=[], release={"project": name})


def installed(prefix: Path, *headers: BundleHeader, active: str) -> Path:
    """A prefix with each header stored in its release folder, ``current`` pointing at ``active``."""
    for stored in headers:
        folder = prefix / "releases" / stored.version
        folder.mkdir(parents=True)
        (folder / "bundle.json").write_bytes(stored.to_bytes())
    os.symlink(f"releases/{active}", prefix / "current")
    return prefix


def options(**flags) -> InstallOptions:
    return InstallOptions(archive=Path("unused.tar.zst"), keys=[], **flags)


def test_the_same_archive_again_is_accepted(tmp_path: Path) -> None:
    prefix = installed(tmp_path, header(), active="v1.0.0")
    check_version_order(prefix, header(), options())


@pytest.mark.parametrize("version", ["v1.0.0", "v1.0", "v1.0.0+build7"])
def test_another_archive_of_the_same_version_is_refused_unless_asked(tmp_path: Path, version: str) -> None:
    prefix = installed(tmp_path, header(), active="v1.0.0")
    rebuilt = header(version=version, created="2026-02-02T00:00:00Z")
    with pytest.raises(InstallError, match="a different archive of the same version is installed: .*--replace-same-version"):
        check_version_order(prefix, rebuilt, options())
    with pytest.raises(InstallError, match="--replace-same-version"):
        check_version_order(prefix, rebuilt, options(allow_downgrade=True))
    check_version_order(prefix, rebuilt, options(replace_same_version=True))


def test_another_archive_of_an_inactive_installed_version_is_refused(tmp_path: Path) -> None:
    prefix = installed(tmp_path, header("v1.0.0"), header("v2.0.0"), active="v1.0.0")
    with pytest.raises(InstallError, match="releases/v2.0.0 holds another signed header"):
        check_version_order(prefix, header("v2.0.0", created="later"), options())
    check_version_order(prefix, header("v2.0.0"), options())


def test_an_unreadable_stored_header_is_not_the_same_archive(tmp_path: Path) -> None:
    prefix = installed(tmp_path, header(), active="v1.0.0")
    (prefix / "releases" / "v2.0.0").mkdir()
    (prefix / "releases" / "v2.0.0" / "bundle.json").write_bytes(b"[" * 100_000)
    with pytest.raises(InstallError, match="a different archive of the same version"):
        check_version_order(prefix, header("v2.0.0"), options())


@pytest.mark.parametrize("active, new", [("v0.3.5-10", "v0.3.5-2"), ("v1.0-rc10", "v1.0-rc9"), ("v0.3.5", "v0.3.5-rc1")])
def test_an_older_release_is_refused_as_a_downgrade(tmp_path: Path, active: str, new: str) -> None:
    prefix = installed(tmp_path, header(active), active=active)
    with pytest.raises(InstallError, match=f"refusing to downgrade demo from {active} to {new}"):
        check_version_order(prefix, header(new), options())
    check_version_order(prefix, header(new), options(allow_downgrade=True))


@pytest.mark.parametrize("active, new", [("v0.3.5-2", "v0.3.5-10"), ("v1.0-rc9", "v1.0-rc10"), ("v1.0-rc10", "v1.0")])
def test_a_newer_release_is_accepted(tmp_path: Path, active: str, new: str) -> None:
    prefix = installed(tmp_path, header(active), active=active)
    check_version_order(prefix, header(new), options())


def test_a_version_that_cannot_be_ordered_needs_allow_downgrade(tmp_path: Path) -> None:
    prefix = installed(tmp_path, header("v1.0.0"), active="v1.0.0")
    with pytest.raises(InstallError, match="cannot tell whether nightly is newer"):
        check_version_order(prefix, header("nightly"), options())
    check_version_order(prefix, header("nightly"), options(allow_downgrade=True))


def test_another_application_is_refused(tmp_path: Path) -> None:
    prefix = installed(tmp_path, header(), active="v1.0.0")
    with pytest.raises(InstallError, match="holds demo, this archive is other"):
        check_version_order(prefix, replace(header(), name="other"), options())
