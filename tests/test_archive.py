"""The archive format on its own: round trip, tar compatibility, and every way verify must fail."""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from installer.archive import (
    ArchiveFormatError,
    FramedArchiveReader,
    ArchiveWriter,
    BundleHeader,
    ImageRecord,
    VerificationError,
    layer_path,
    read_header,
    verify_archive,
)
from installer.archive.layout import skippable_frame
from installer.signing import fingerprint, generate_keypair, load_private_key, load_public_key, sign


def _layer_bytes(seed: str, size: int = 300_000) -> bytes:
    text = (f"{seed} " * 40 + "\n").encode()
    return (text * (size // len(text) + 1))[:size]


@pytest.fixture()
def keypair(tmp_path: Path):
    private, public, _ = generate_keypair(tmp_path / "keys" / "release.key")
    return load_private_key(private), load_public_key(public), public


def write_bundle(path: Path, private_key, *, signed: bool = True) -> dict[str, bytes]:
    """A small bundle: two layers (one named only after it streamed), a config, a release file."""
    layer_a, layer_b = _layer_bytes("alpha"), _layer_bytes("beta", 5000)
    diff_a, diff_b = hashlib.sha256(layer_a).hexdigest(), hashlib.sha256(layer_b).hexdigest()
    config = json.dumps({"rootfs": {"diff_ids": [f"sha256:{diff_a}", f"sha256:{diff_b}"]}}).encode()
    image_id = hashlib.sha256(config).hexdigest()
    contents = {
        "images/manifest.json": b"[]",
        f"images/{image_id}.json": config,
        layer_path(diff_a): layer_a,
        layer_path(diff_b): layer_b,
        "release/compose.yml": b"services: {}\n",
    }
    with ArchiveWriter(path, header_reserve=64 * 1024) as writer:
        writer.add_bytes("images/manifest.json", contents["images/manifest.json"])
        writer.add_bytes(f"images/{image_id}.json", config)
        writer.add_stream_named_by_digest(len(layer_a), [layer_a[:1000], layer_a[1000:]], lambda sha: layer_path(sha), "layer a")
        writer.add_stream(layer_path(diff_b), len(layer_b), [layer_b])
        writer.add_bytes("release/compose.yml", contents["release/compose.yml"])
        header = BundleHeader(
            name="demo", version="v1", tool_version="test", platform="linux/amd64", created="1970-01-01T00:00:00Z",
            signer=fingerprint(private_key.public_key()),
            images=[ImageRecord(id=f"sha256:{image_id}", diff_ids=[f"sha256:{diff_a}", f"sha256:{diff_b}"],
                                targets=["example.local/demo:v1"], platform="linux/amd64")],
            members=list(writer.members),
        )
        data = header.to_bytes()
        if signed:
            writer.finish(data, sign(private_key, data))
        else:
            _finish_unsigned(writer, data)
    return contents


def _finish_unsigned(writer: ArchiveWriter, data: bytes) -> None:
    """Seal without a signature member, as a forger or an old tool would."""
    from installer.archive.layout import END_OF_ARCHIVE, padding_for
    from installer.archive.writer import tar_header
    import os

    writer._out.put(writer._small_compressor.compress(END_OF_ARCHIVE))
    writer._out.drain()
    front = writer._small_compressor.compress(tar_header("bundle.json", len(data)) + data + padding_for(len(data)))
    os.pwrite(writer._file.fileno(), front + skippable_frame(writer.header_reserve - len(front)), 0)
    writer._file.close()
    os.replace(writer.partial_path, writer.path)
    writer._finished = True


def test_round_trip_members_and_digests(tmp_path: Path, keypair) -> None:
    private, public, _ = keypair
    archive = tmp_path / "demo-v1.tar.zst"
    contents = write_bundle(archive, private)
    verified = verify_archive(archive, [public])
    assert verified.signer == fingerprint(public)
    assert {m.path for m in verified.header.members} == set(contents)
    with FramedArchiveReader(archive) as reader:
        read = {m.name: m.read_all() for m in reader.members()}
    assert read == contents
    assert not (tmp_path / "demo-v1.tar.zst.partial").exists()


def test_gnu_tar_unpacks_it_and_the_header_comes_first(tmp_path: Path, keypair) -> None:
    private, _, _ = keypair
    archive = tmp_path / "demo-v1.tar.zst"
    contents = write_bundle(archive, private)
    listing = subprocess.run(["tar", "--zstd", "-tf", str(archive)], check=True, capture_output=True, text=True).stdout.split()
    assert listing[:2] == ["bundle.json", "bundle.json.sig"]
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(archive), "-C", str(out)], check=True)
    for name, data in contents.items():
        assert (out / name).read_bytes() == data
    # python's own tarfile agrees
    raw = zstandard.ZstdDecompressor().stream_reader(open(archive, "rb"), read_across_frames=True).read()
    assert tarfile.open(fileobj=io.BytesIO(raw)).getnames()[:2] == ["bundle.json", "bundle.json.sig"]


def test_wrong_key_is_refused_naming_the_signature(tmp_path: Path, keypair) -> None:
    private, _, _ = keypair
    archive = tmp_path / "demo-v1.tar.zst"
    write_bundle(archive, private)
    _, other_pub, _ = generate_keypair(tmp_path / "other.key")
    with pytest.raises(VerificationError, match="bad signature"):
        verify_archive(archive, [load_public_key(other_pub)])


def test_unsigned_is_refused_unless_waived(tmp_path: Path, keypair) -> None:
    private, public, _ = keypair
    archive = tmp_path / "demo-v1.tar.zst"
    write_bundle(archive, private, signed=False)
    with pytest.raises(VerificationError, match="unsigned"):
        verify_archive(archive, [public])
    waived = verify_archive(archive, [public], allow_untrusted=True)
    assert waived.signer is None and waived.warnings


def _decompressed_tar(archive: Path) -> bytes:
    return zstandard.ZstdDecompressor().stream_reader(open(archive, "rb"), read_across_frames=True).read()


def _recompress(tar_bytes: bytes, target: Path) -> None:
    target.write_bytes(zstandard.ZstdCompressor(level=1).compress(tar_bytes))


@pytest.mark.parametrize("member", ["bundle.json", "bundle.json.sig", "images/manifest.json", "layer", "release/compose.yml"])
def test_one_flipped_byte_in_any_member_fails_naming_it(tmp_path: Path, keypair, member: str) -> None:
    private, public, _ = keypair
    archive = tmp_path / "demo-v1.tar.zst"
    contents = write_bundle(archive, private)
    if member == "layer":
        member = next(name for name in contents if name.endswith("layer.tar"))
    tar_bytes = bytearray(_decompressed_tar(archive))
    info = next(i for i in tarfile.open(fileobj=io.BytesIO(bytes(tar_bytes))).getmembers() if i.name == member)
    tar_bytes[info.offset_data + info.size // 2] ^= 0x01
    tampered = tmp_path / "tampered.tar.zst"
    _recompress(bytes(tar_bytes), tampered)
    with pytest.raises(VerificationError) as failure:
        verify_archive(tampered, [public])
    expected = "bad signature" if member.startswith("bundle.json") else member
    assert expected in str(failure.value)


def test_flipped_byte_in_the_compressed_file_is_caught(tmp_path: Path, keypair) -> None:
    private, public, _ = keypair
    archive = tmp_path / "demo-v1.tar.zst"
    write_bundle(archive, private)
    data = bytearray(archive.read_bytes())
    failures = 0
    reserve = 64 * 1024
    for offset in range(reserve, len(data), max(1, (len(data) - reserve) // 25)):
        flipped = bytearray(data)
        flipped[offset] ^= 0x40
        target = tmp_path / "flip.tar.zst"
        target.write_bytes(bytes(flipped))
        try:
            verify_archive(target, [public])
        except VerificationError:
            failures += 1
            continue
        # a flip that still verifies may only have hit padding of a skippable frame
        _assert_only_padding_changed(bytes(flipped), public, tmp_path)
    assert failures > 0


def _assert_only_padding_changed(archive_bytes: bytes, public, tmp_path: Path) -> None:
    target = tmp_path / "ok.tar.zst"
    target.write_bytes(archive_bytes)
    with FramedArchiveReader(target) as reader:
        for member in reader.members():
            member.skip()


def test_truncated_archive_fails_saying_truncated(tmp_path: Path, keypair) -> None:
    private, public, _ = keypair
    archive = tmp_path / "demo-v1.tar.zst"
    write_bundle(archive, private)
    data = archive.read_bytes()
    for cut in (len(data) - 5, len(data) // 2, 64 * 1024 + 100):
        target = tmp_path / "cut.tar.zst"
        target.write_bytes(data[:cut])
        with pytest.raises(VerificationError, match="truncated|missing|corrupt"):
            verify_archive(target, [public])


def test_member_with_unsafe_name_is_refused(tmp_path: Path, keypair) -> None:
    private, public, _ = keypair
    archive = tmp_path / "demo-v1.tar.zst"
    write_bundle(archive, private)
    tar_bytes = _decompressed_tar(archive)
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w", format=tarfile.PAX_FORMAT) as out, tarfile.open(fileobj=io.BytesIO(tar_bytes)) as src:
        for info in src.getmembers():
            out.addfile(info, src.extractfile(info))
            if info.name == "bundle.json.sig":
                bad = tarfile.TarInfo("../../etc/evil")
                bad.size = 3
                out.addfile(bad, io.BytesIO(b"bad"))
    target = tmp_path / "evil.tar.zst"
    _recompress(evil.getvalue(), target)
    with pytest.raises(VerificationError, match="unsafe member name"):
        verify_archive(target, [public])


def test_header_is_readable_without_reading_the_rest(tmp_path: Path, keypair) -> None:
    private, _, _ = keypair
    archive = tmp_path / "demo-v1.tar.zst"
    write_bundle(archive, private)
    header, raw, signature = read_header(archive)
    assert header.name == "demo" and signature is not None and len(signature) == 64
    with FramedArchiveReader(archive) as reader:
        reader.read_signed_header()
        assert reader.bytes_read < 10_000


def test_private_key_is_written_0600(tmp_path: Path) -> None:
    private, public, fp = generate_keypair(tmp_path / "k" / "site.key")
    assert (private.stat().st_mode & 0o777) == 0o600
    assert fp == fingerprint(load_public_key(public))


def test_split_archive_reads_back_and_names_a_missing_or_damaged_part(tmp_path: Path, keypair) -> None:
    from installer.archive.parts import split_archive

    private, public, _ = keypair
    archive = tmp_path / "demo-v1.tar.zst"
    write_bundle(archive, private)
    whole = archive.read_bytes()
    index = split_archive(archive, 20_000)
    parts = sorted(tmp_path.glob("demo-v1.tar.zst.part[0-9]*"))
    assert len(parts) >= 2 and not archive.exists()
    assert b"".join(p.read_bytes() for p in parts) == whole
    assert all(p.stat().st_size <= 20_000 for p in parts)
    for given in (parts[0], tmp_path, index):
        assert verify_archive(given, [public]).header.name == "demo"
    damaged = bytearray(parts[1].read_bytes())
    damaged[-1] ^= 0xFF
    parts[1].write_bytes(bytes(damaged))
    with pytest.raises(VerificationError, match=r"part 2 of \d+ \(demo-v1.tar.zst.part002\) is damaged"):
        verify_archive(parts[0], [public])
    parts[1].unlink()
    with pytest.raises(VerificationError, match=r"part 2 of \d+ \(demo-v1.tar.zst.part002\) is missing"):
        verify_archive(tmp_path, [public])


def test_load_stream_refuses_a_config_changed_after_verification(tmp_path: Path, keypair) -> None:
    from dataclasses import replace

    from installer.archive import MemberRecord
    from installer.engine import EngineInventory
    from installer.loader import docker_archive_stream, plan_load

    private, public, _ = keypair
    archive = tmp_path / "demo-v1.tar.zst"
    write_bundle(archive, private)
    header = verify_archive(archive, [public]).header
    plan = plan_load(header, EngineInventory(image_ids=set(), chains=set(), tags={}))
    streamed = b"".join(docker_archive_stream(archive, header, plan))
    assert tarfile.open(fileobj=io.BytesIO(streamed)).getnames()[0] == "manifest.json"
    config = next(m for m in header.members if m.path.endswith(".json") and m.path != "images/manifest.json")
    swapped = replace(header, members=[MemberRecord(m.path, "0" * 64, m.size) if m == config else m for m in header.members])
    with pytest.raises(VerificationError, match="changed after verification"):
        b"".join(docker_archive_stream(archive, swapped, plan))


def test_writer_reports_where_each_members_frames_lie_and_their_hash(tmp_path: Path) -> None:
    from installer.archive.layout import DATA_BLOCK

    layer = _layer_bytes("gamma", 7000) * (2 * DATA_BLOCK // 7000 + 3)  # spans three data blocks
    reported = []
    path = tmp_path / "frames.tar.zst"
    with ArchiveWriter(path, header_reserve=64 * 1024, on_data_written=lambda r, f: reported.append((r, f, f.path.read_bytes()))) as writer:
        writer.add_stream(layer_path(hashlib.sha256(layer).hexdigest()), len(layer), [layer[i:i + 65536] for i in range(0, len(layer), 65536)])
        writer.add_bytes("release/small.txt", b"small")
        writer._out.drain()
    assert [r.path for r, _, _ in reported] == [layer_path(hashlib.sha256(layer).hexdigest()), "release/small.txt"]
    for record, frame, file_bytes in reported:
        raw = file_bytes[frame.offset:frame.offset + frame.length]
        assert frame.sha256 == hashlib.sha256(raw).hexdigest()
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw), read_across_frames=True).read()
        expected = layer if record.path.endswith("layer.tar") else b"small"
        assert data[:len(expected)] == expected and set(data[len(expected):]) <= {0} and len(data) % 512 == 0
    assert reported[0][1].length < len(layer)


def test_every_member_is_framed_on_its_own_and_listed_with_its_frames_sha256(tmp_path: Path, keypair) -> None:
    from installer.archive import FramedArchiveReader

    private, _, _ = keypair
    archive = tmp_path / "demo-v1.tar.zst"
    contents = write_bundle(archive, private)
    header = read_header(archive)[0]
    by_path = {m.path: m for m in header.members}
    assert all(m.frames_sha256 for m in header.members)
    with FramedArchiveReader(archive) as reader:
        for member in reader.members():
            assert member.framed
            digest = hashlib.sha256()
            for part in member.compressed_chunks():
                digest.update(part)
            assert digest.hexdigest() == by_path[member.name].frames_sha256
    with FramedArchiveReader(archive) as reader:
        read = {m.name: b"".join(m.chunks(chunk_size=1000)) for m in reader.members()}
    assert read == contents
    with FramedArchiveReader(archive) as reader:  # members not read are stepped over
        assert [m.name for m in reader.members()] == [m.path for m in header.members]


def test_verify_checks_framed_members_without_decompressing_their_data(tmp_path: Path, keypair, monkeypatch) -> None:
    from installer.archive import reader as reader_module

    private, public, _ = keypair
    archive = tmp_path / "demo-v1.tar.zst"
    write_bundle(archive, private)
    decompressed: list[int] = []
    real = reader_module.decompress_frame

    def recording(frame, limit):
        data = real(frame, limit)
        decompressed.append(len(data))
        return data

    monkeypatch.setattr(reader_module, "decompress_frame", recording)
    verify_archive(archive, [public])
    assert decompressed and max(decompressed) < 4096  # tar headers only: no layer was decompressed


def test_a_member_not_framed_on_its_own_is_checked_by_its_content(tmp_path: Path, keypair, monkeypatch) -> None:
    from installer.archive import FramedArchiveReader
    from installer.archive import reader as reader_module

    private, public, _ = keypair
    archive = tmp_path / "demo-v1.tar.zst"
    contents = write_bundle(archive, private)
    single = tmp_path / "one-frame.tar.zst"  # the same tar, recompressed as one frame (as `zstd` would)
    _recompress(_decompressed_tar(archive), single)
    assert verify_archive(single, [public]).signer == fingerprint(public)
    monkeypatch.setattr(reader_module, "WHOLE_FRAME_LIMIT", 1000)  # and frames too large to take whole are streamed
    with FramedArchiveReader(single) as reader:
        members = list((m.name, m.framed, b"".join(m.chunks())) for m in reader.members())
    assert {name: data for name, _, data in members} == contents
    assert not any(framed for _, framed, _ in members)


def test_frames_that_run_past_a_member_are_refused(tmp_path: Path, keypair) -> None:
    from installer.archive import FramedArchiveReader

    private, public, _ = keypair
    archive = tmp_path / "demo-v1.tar.zst"
    write_bundle(archive, private)
    with FramedArchiveReader(archive) as reader:
        layer = next(m for m in reader.members() if m.name.endswith("layer.tar"))
        layer.size -= 512  # as if the tar header claimed less than the frames hold
        with pytest.raises(ArchiveFormatError, match="do not end where its data ends"):
            for _ in layer.compressed_chunks():
                pass


def test_finished_data_is_flushed_to_disk_while_the_archive_streams(tmp_path: Path, keypair, monkeypatch) -> None:
    import os
    from installer.archive import writer as writer_module

    flushed_sizes: list[int] = []
    real_fdatasync = os.fdatasync

    def spying_fdatasync(fd: int) -> None:
        flushed_sizes.append(os.fstat(fd).st_size)
        real_fdatasync(fd)

    monkeypatch.setattr(writer_module, "FLUSH_EVERY", 1)
    monkeypatch.setattr(writer_module.os, "fdatasync", spying_fdatasync)
    private, public, _ = keypair
    archive = tmp_path / "demo-v1.tar.zst"
    write_bundle(archive, private)
    assert flushed_sizes and min(flushed_sizes) < archive.stat().st_size  # before the end, not only at it
    verify_archive(archive, [public])


def test_a_member_named_after_it_streamed_reads_back_under_that_name(tmp_path: Path, keypair) -> None:
    from installer.archive import FramedArchiveReader

    private, public, _ = keypair
    layer = _layer_bytes("delta", 70_000)
    diff = hashlib.sha256(layer).hexdigest()
    reported = []
    archive = tmp_path / "demo-v1.tar.zst"
    with ArchiveWriter(archive, header_reserve=64 * 1024, on_data_written=lambda r, f: reported.append(r)) as writer:
        pending = writer.add_stream_named_later(len(layer), [layer[:5000], layer[5000:]], "abc/layer.tar")
        writer.add_bytes("release/compose.yml", b"services: {}\n")
        writer.name_later(pending, layer_path(diff), diff)
        header = BundleHeader(name="demo", version="v1", tool_version="test", platform="linux/amd64",
                              created="1970-01-01T00:00:00Z", signer=fingerprint(private.public_key()),
                              images=[], members=list(writer.members))
        writer.finish(header.to_bytes(), sign(private, header.to_bytes()))
    assert [m.path for m in header.members] == [layer_path(diff), "release/compose.yml"]
    assert header.members[0].sha256 == diff and header.members[0].frames_sha256
    assert {r.path for r in reported} == {layer_path(diff), "release/compose.yml"}  # reported once named
    verify_archive(archive, [public])
    with FramedArchiveReader(archive) as reader:
        assert {m.name: b"".join(m.chunks()) for m in reader.members()}[layer_path(diff)] == layer


def test_a_member_never_named_stops_the_archive_from_being_sealed(tmp_path: Path) -> None:
    from installer.archive import ArchiveWriteError

    archive = tmp_path / "demo-v1.tar.zst"
    with pytest.raises(ArchiveWriteError, match="never named"):
        with ArchiveWriter(archive, header_reserve=64 * 1024) as writer:
            writer.add_stream_named_later(4, [b"data"], "abc/layer.tar")
            writer.finish(b"{}", b"")
    assert not archive.exists() and not archive.with_name(archive.name + ".partial").exists()


@pytest.mark.parametrize("data, message", [
    (b"[" * 100_000, "nested too deeply"),
    (b'{"a": ' * 100_000, "nested too deeply"),
    (b"\xff\xfe", "not valid JSON"),
    (b"{", "not valid JSON"),
    (b'{"format": ' + b"9" * 10_000 + b"}", "not valid JSON"),
], ids=["deep-list", "deep-object", "not-utf8", "truncated", "huge-number"])
def test_a_malformed_header_is_a_header_error_not_a_traceback(data: bytes, message: str) -> None:
    from installer.archive import HeaderError

    with pytest.raises(HeaderError, match=message):
        BundleHeader.from_bytes(data)


def test_a_deeply_nested_unsigned_header_is_refused_with_a_clear_message(tmp_path: Path, keypair) -> None:
    _, public, _ = keypair
    archive = tmp_path / "demo-v1.tar.zst"
    with ArchiveWriter(archive, header_reserve=64 * 1024) as writer:
        writer.add_bytes("release/compose.yml", b"services: {}\n")
        _finish_unsigned(writer, b"[" * 50_000)
    with pytest.raises(VerificationError, match="nested too deeply"):
        read_header(archive)
    with pytest.raises(VerificationError):
        verify_archive(archive, [public], allow_untrusted=True)


def test_members_read_side_by_side_from_the_held_archive_and_a_change_after_verification_is_caught(
        tmp_path: Path, keypair) -> None:
    private, public, _ = keypair
    archive = tmp_path / "demo-v1.tar.zst"
    contents = write_bundle(archive, private)
    with verify_archive(archive, [public]) as verified:
        layers = [name for name in contents if name.endswith("/layer.tar")]
        readers = {name: verified.blocks(name) for name in layers}  # open at once, read interleaved
        got = {name: [] for name in layers}
        while readers:
            for name in list(readers):
                block = next(readers[name], None)
                if block is None:
                    del readers[name]
                else:
                    got[name].append(block)
        assert {name: b"".join(parts) for name, parts in got.items()} == {name: contents[name] for name in layers}
        size, frames = verified.frames(layers[0])
        raw = b"".join(frames)
        plain = zstandard.ZstdDecompressor().decompressobj().decompress(raw)  # the member, then its tar padding
        assert len(raw) == size and plain.rstrip(b"\0") == contents[layers[0]].rstrip(b"\0") and len(plain) % 512 == 0
        # the same file changed in place after verification: the read fails once the member's frames are in
        location = verified.locations[layers[0]]
        with open(archive, "r+b") as handle:
            handle.seek(location.offset + location.length - 6)
            byte = handle.read(1)
            handle.seek(-1, 1)
            handle.write(bytes([byte[0] ^ 0xFF]))
        with pytest.raises(ArchiveFormatError, match="changed since they were verified|corrupt"):
            for _ in verified.blocks(layers[0]):
                pass
