"""How the bundler reads an engine export's manifest.json to name the layers it streamed unhashed."""
from __future__ import annotations

import json

import pytest

from bundler.engine import EngineError
from bundler.export import layer_paths_in_export
from installer.archive import ImageRecord

A, B, C = "a" * 64, "b" * 64, "c" * 64
IMAGE = ImageRecord(id=f"sha256:{'1' * 64}", diff_ids=[f"sha256:{A}", f"sha256:{B}"], targets=["x:1"], platform="linux/amd64")
OTHER = ImageRecord(id=f"sha256:{'2' * 64}", diff_ids=[f"sha256:{A}", f"sha256:{C}"], targets=["y:1"], platform="linux/amd64")


def _manifest(*entries: dict) -> bytes:
    return json.dumps(list(entries)).encode()


def test_each_save_path_gets_the_diff_id_at_its_place_in_the_image() -> None:
    export = _manifest({"Config": f"{'1' * 64}.json", "Layers": ["v1a/layer.tar", "v1b/layer.tar"]},
                       {"Config": f"{'2' * 64}.json", "Layers": ["v1a/layer.tar", "v1c/layer.tar"]})
    assert layer_paths_in_export(export, [IMAGE, OTHER]) == {"v1a/layer.tar": A, "v1b/layer.tar": B, "v1c/layer.tar": C}


@pytest.mark.parametrize("export", [
    b"not json",
    b'{"Config": "x"}',
    _manifest({"Config": f"{'9' * 64}.json", "Layers": ["v1a/layer.tar", "v1b/layer.tar"]}),  # an image not asked for
    _manifest({"Config": f"{'1' * 64}.json", "Layers": ["v1a/layer.tar"]}),  # fewer layers than the image has
    _manifest({"Config": f"{'1' * 64}.json"}),
    _manifest({"Config": f"{'1' * 64}.json", "Layers": ["v1a/layer.tar", "v1b/layer.tar"]},
              {"Config": f"{'2' * 64}.json", "Layers": ["v1b/layer.tar", "v1c/layer.tar"]}),  # one path, two layers
])
def test_an_export_manifest_that_does_not_match_the_images_is_refused(export: bytes) -> None:
    with pytest.raises(EngineError, match="manifest.json"):
        layer_paths_in_export(export, [IMAGE, OTHER])
