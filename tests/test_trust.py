"""Trusted keys and key files (issue 12, finding 3): a trusted-keys folder others can write is refused;
keygen never writes through a symlink."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from installer import trust
from installer.signing import KeyFileError, generate_keypair, load_private_key
from installer.trust import trusted_keys

AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")


@pytest.fixture
def trust_dir(tmp_path: Path, monkeypatch) -> Path:
    """A trusted-keys folder as the installer expects it: 0755, one 0644 key, both ours."""
    folder = tmp_path / "etc" / "trusted-keys"
    folder.mkdir(parents=True)
    folder.chmod(0o755)
    generate_keypair(tmp_path / "release.key", folder / "release.pub")
    monkeypatch.setattr(trust, "SYSTEM_TRUST_DIR", folder)
    return folder


def test_a_folder_of_root_or_ours_writable_by_no_one_else_is_trusted(trust_dir: Path) -> None:
    assert len(trusted_keys([])) == 1


@pytest.mark.parametrize("mode, who", [(0o777, "others"), (0o775, "its group"), (0o1777, "others")])
def test_a_trusted_keys_folder_others_can_write_is_refused(trust_dir: Path, mode: int, who: str) -> None:
    trust_dir.chmod(mode)
    with pytest.raises(KeyFileError, match=f"trusted folder {trust_dir} is writable by {who} "
                                           f"\\(mode {mode:04o}\\).*chmod go-w {trust_dir}"):
        trusted_keys([])


@pytest.mark.parametrize("name, mode, who", [("release.pub", 0o666, "others"), ("release.pub", 0o664, "its group"),
                                             ("other.pem", 0o646, "others")])
def test_a_key_others_can_write_is_refused(trust_dir: Path, name: str, mode: int, who: str) -> None:
    key = trust_dir / name
    if not key.exists():
        key.write_bytes((trust_dir / "release.pub").read_bytes())
    key.chmod(mode)
    with pytest.raises(KeyFileError, match=f"trusted key {key} is writable by {who}.*chmod go-w {key}"):
        trusted_keys([])


def test_other_files_in_the_folder_are_not_keys_and_not_checked(trust_dir: Path) -> None:
    (trust_dir / "README").write_text("keys go here\n")
    (trust_dir / "README").chmod(0o666)
    assert len(trusted_keys([])) == 1


@AS_ROOT
@pytest.mark.parametrize("what", ["folder", "key"])
def test_a_folder_or_key_owned_by_another_user_is_refused(trust_dir: Path, what: str) -> None:
    path = trust_dir if what == "folder" else trust_dir / "release.pub"
    os.chown(path, 65534, 65534)
    with pytest.raises(KeyFileError, match=f"trusted {what} {path} is owned by uid 65534.*chown root:root {path}"):
        trusted_keys([])


def test_keys_given_on_the_command_line_are_the_users_choice(trust_dir: Path) -> None:
    trust_dir.chmod(0o777)
    assert len(trusted_keys([trust_dir / "release.pub"])) == 1


def test_the_installer_says_so_and_exits_1_without_a_traceback(trust_dir: Path, tmp_path: Path) -> None:
    from installer.cli import main

    trust_dir.chmod(0o777)
    result = CliRunner().invoke(main, ["verify", str(tmp_path / "any.tar.zst")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"trusted folder {trust_dir} is writable by others" in result.output


VICTIM_TEXT = b"do not overwrite\n"


@pytest.mark.parametrize("which", ["private", "public"])
def test_keygen_refuses_a_dangling_symlink_and_creates_nothing(tmp_path: Path, which: str) -> None:
    private = tmp_path / "keys" / "release.key"
    private.parent.mkdir()
    planted = private if which == "private" else private.with_suffix(".pub")
    os.symlink(tmp_path / "created-through-the-link", planted)
    for force in (False, True):
        with pytest.raises(KeyFileError, match=f"{planted} is a symlink; refusing to write a key through it"):
            generate_keypair(private, overwrite=force)
    assert not (tmp_path / "created-through-the-link").exists()
    assert not private.with_suffix(".pub" if which == "private" else ".key").exists()


def test_keygen_force_refuses_a_symlink_to_a_file(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM_TEXT)
    private = tmp_path / "release.key"
    os.symlink(victim, private)
    with pytest.raises(KeyFileError, match="is a symlink"):
        generate_keypair(private, overwrite=True)
    assert victim.read_bytes() == VICTIM_TEXT


def test_keygen_force_replaces_regular_files(tmp_path: Path) -> None:
    private = tmp_path / "release.key"
    private.write_bytes(b"old")
    private.chmod(0o644)
    private.with_suffix(".pub").write_bytes(b"old")
    with pytest.raises(KeyFileError, match="already exists"):
        generate_keypair(private)
    generate_keypair(private, overwrite=True)
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    load_private_key(private)
    assert private.with_suffix(".pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")


def test_bundler_keygen_refuses_a_symlink_without_a_traceback(tmp_path: Path) -> None:
    from bundler.cli import main

    os.symlink(tmp_path / "elsewhere", tmp_path / "release.key")
    result = CliRunner().invoke(main, ["keygen", "-o", str(tmp_path / "release.key")])
    assert result.exit_code != 0 and "is a symlink; refusing to write a key through it" in result.output
    assert not (tmp_path / "elsewhere").exists()
