"""A hand-written docker-archive of an image whose config claims another platform."""

from __future__ import annotations

import hashlib
import json

from .images import tar_bytes

_CREATED = "2024-01-01T00:00:00Z"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def foreign_archive(ref: str, architecture: str = "arm64", os_name: str = "linux") -> bytes:
    """A ``docker load``-able tar holding one tiny image tagged ``ref``.

    Its config says ``architecture``/``os_name``; its single layer holds
    /etc/foreign-platform. rootfs.diff_ids is the sha256 of the uncompressed
    layer tar, as ``docker load`` checks.
    """
    platform = f"{os_name}/{architecture}"
    layer = tar_bytes({"etc/foreign-platform": (f"{platform}\n".encode(), 0o644)})
    layer_id = _sha256(layer)
    config = json.dumps({
        "architecture": architecture,
        "os": os_name,
        "created": _CREATED,
        "config": {"Cmd": ["/bin/sh"], "Labels": {"airgap.harness.platform": platform}},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]},
        "history": [{"created": _CREATED, "created_by": f"airgap harness: {platform} stand-in"}],
    }, sort_keys=True).encode()
    config_name = f"{_sha256(config)}.json"
    manifest = json.dumps([{
        "Config": config_name,
        "RepoTags": [ref],
        "Layers": [f"{layer_id}/layer.tar"],
    }]).encode()
    return tar_bytes({
        "manifest.json": (manifest, 0o644),
        config_name: (config, 0o644),
        f"{layer_id}/layer.tar": (layer, 0o644),
        f"{layer_id}/VERSION": (b"1.0", 0o644),
    })
