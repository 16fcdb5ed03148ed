"""Nothing of an archive is trusted, or even read in bulk, before its signature checks out.

Forged archives are made here the way an attacker would: a tar whose first
extended header declares gigabytes; a header whose site variable has a
catastrophic regular expression and a secret of three billion characters,
signed with a key nobody trusts; a genuine header followed by thousands of
members it does not list.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from installer.archive import ArchiveWriter, BundleHeader, VerificationError, verify_archive
from installer.signing import fingerprint, generate_keypair, load_private_key, load_public_key, sign

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def keys(tmp_path: Path) -> dict:
    genuine, genuine_pub, _ = generate_keypair(tmp_path / "keys" / "release.key")
    attacker, _, _ = generate_keypair(tmp_path / "keys" / "attacker.key")
    return {"genuine": load_private_key(genuine), "pub": genuine_pub, "attacker": load_private_key(attacker)}


def capped(*argv: str, memory: int = 256 << 20, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a command with its address space capped at ``memory`` bytes."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, preexec_fn=limit, cwd=ROOT)


def write_header_only(path: Path, private_key, release: dict, *, extra_members: int = 0) -> None:
    """An archive whose signed header carries ``release``, optionally followed by members the header does not list."""
    with ArchiveWriter(path, header_reserve=64 * 1024) as writer:
        writer.add_bytes("release/docker-compose.yml", b"services: {}\n")
        listed = list(writer.members)
        for index in range(extra_members):
            writer.add_bytes(f"release/extra-{index}.txt", b"")
        header = BundleHeader(name="demo", version="v1", tool_version="test", platform="linux/amd64",
                              created="1970-01-01T00:00:00Z", signer=fingerprint(private_key.public_key()), images=[],
                              members=listed, release=release)
        data = header.to_bytes()
        writer.finish(data, sign(private_key, data))


def test_an_extended_header_declaring_gigabytes_is_refused_before_it_is_read(tmp_path: Path, keys) -> None:
    bomb = tarfile.TarInfo("././@PaxHeader")
    bomb.type = tarfile.XHDTYPE
    bomb.size = 4 << 30
    tar = bomb.tobuf(tarfile.USTAR_FORMAT) + b"9" * (128 << 10)
    archive = tmp_path / "bomb.tar.zst"
    archive.write_bytes(zstandard.ZstdCompressor().compress(tar))
    for tool in (["installer.cli", "verify"], ["bundler.cli", "inspect"]):
        result = capped(sys.executable, "-m", *tool, str(archive), *(["--pubkey", str(keys["pub"])] if "verify" in tool else []))
        assert result.returncode == 1, result.stderr
        assert "extended tar header of 4294967296 bytes" in result.stderr and "Traceback" not in result.stderr


def test_a_forged_header_is_never_evaluated(tmp_path: Path, keys) -> None:
    """A catastrophic pattern and a three-billion-character secret, signed by an unknown key: refused at the signature."""
    archive = tmp_path / "forged.tar.zst"
    release = {"project": "demo", "services": [], "ports": [],
               "variables": {"NAME": {"default": "a" * 40 + "!", "pattern": "(a+)+$"}},
               "secrets": {"TOKEN": {"length": 3_000_000_000, "alphabet": "alnum"}}}
    write_header_only(archive, keys["attacker"], release)
    for command in ("preflight", "install"):
        result = capped(sys.executable, "-m", "installer.cli", command, str(archive), "--pubkey", str(keys["pub"]),
                        "--prefix", str(tmp_path / "site"))
        assert result.returncode == 1, result.stderr
        assert "bad signature" in result.stderr
    assert not (tmp_path / "site").exists()


def test_members_the_header_does_not_list_are_bounded(tmp_path: Path, keys) -> None:
    archive = tmp_path / "padded.tar.zst"
    write_header_only(archive, keys["genuine"], {"project": "demo"}, extra_members=3000)
    with pytest.raises(VerificationError) as failure:
        verify_archive(archive, [load_public_key(keys["pub"])])
    problems = failure.value.problems
    assert len(problems) <= 45
    assert any("more than 1000 members the signed header does not list" in p for p in problems)


def test_the_stored_header_and_release_files_come_from_the_held_archive(tmp_path: Path, keys) -> None:
    """After the signature and digests check out, the path is never read again: a file renamed over it is ignored."""
    from installer.archive import open_signed
    from installer.site import write_release

    genuine, forged = tmp_path / "demo.tar.zst", tmp_path / "forged.tar.zst"
    write_header_only(genuine, keys["genuine"], {"project": "demo"})
    with ArchiveWriter(forged, header_reserve=64 * 1024) as writer:
        writer.add_bytes("release/docker-compose.yml", b"services: {evil: {image: x, privileged: true}}\n")
        header = BundleHeader(name="demo", version="v1", tool_version="test", platform="linux/amd64",
                              created="1970-01-01T00:00:00Z", signer="x", images=[], members=list(writer.members),
                              release={"project": "demo"})
        writer.finish(header.to_bytes(), sign(keys["attacker"], header.to_bytes()))
    with open_signed(genuine, [load_public_key(keys["pub"])]) as bundle:
        bundle.check_members()
        forged.replace(genuine)  # the swap, after verification
        release = write_release(tmp_path / "site", bundle.handle, bundle.header, bundle.header_bytes)
    assert (release / "docker-compose.yml").read_bytes() == b"services: {}\n"
    assert json.loads((release / "bundle.json").read_bytes())["release"] == {"project": "demo"}


@pytest.mark.parametrize("release, problem", [
    ({"secrets": {"TOKEN": {"length": 3_000_000_000}}}, "release.secrets.TOKEN.length"),
    ({"variables": {"X": {"default": "a", "pattern": "a" * 600}}}, "release.variables.X.pattern: longer than 512"),
    ({"variables": {"BAD NAME": {"default": "a"}}}, "is not a variable name"),
    ({"services": ["../etc"]}, "is not a service name"),
    ({"env_files": {"x.env": ["A\nB=1"]}}, "is not a variable name"),
])
def test_the_release_spec_is_typed_and_bounded_before_anyone_reads_it(tmp_path: Path, keys, release, problem) -> None:
    """Even signed by the trusted key, a header no bundler would write is refused at once, naming the key."""
    archive = tmp_path / "odd.tar.zst"
    write_header_only(archive, keys["genuine"], {"project": "demo", **release})
    with pytest.raises(VerificationError, match=problem.replace(".", r"\.").replace("(", r"\(")):
        verify_archive(archive, [load_public_key(keys["pub"])])
