"""``napari-segany embed`` fills the embedding cache that interactive sessions read."""

from __future__ import annotations

import json

import numpy as np
import torch

from napari_segany.cli import main
from tests.cli.batch_data import blobs


def test_embedded_slices_are_read_by_a_session_without_recomputing(
    tiny_sam_hf_folder, tmp_path, monkeypatch
):
    import tifffile
    from PIL import Image

    from napari_segany.sam import SamPredictor, load_sam
    from napari_segany.sam.session_factory import open_sam_session

    image = blobs((60, 70), 51)
    stack = np.stack([blobs((40, 44), 52 + i).astype(np.uint16) * 90 for i in range(3)])
    Image.fromarray(image).save(tmp_path / "plane.png")
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    cache = tmp_path / "cache"
    args = [
        "embed",
        str(tmp_path / "plane.png"),
        str(tmp_path / "stack.tif"),
        "--cache",
        str(cache),
    ]
    args += ["--model", str(tiny_sam_hf_folder), "--precision", "fp32", "--device", "cpu", "-q"]
    assert main(args) == 0
    assert len(list(cache.glob("*.safetensors"))) == 4
    record = json.loads((cache / "napari-segany-run.json").read_text())
    assert [r["objects"] for r in record["inputs"]] == [1, 3]  # embeddings computed

    assert main(args) == 0  # everything cached: nothing recomputed
    record = json.loads((cache / "napari-segany-run.json").read_text())
    assert [r["objects"] for r in record["inputs"]] == [0, 0]

    session = open_sam_session(tiny_sam_hf_folder, device="cpu", precision="fp32", cache_dir=cache)

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder ran: the embedding was not read from the cache")

    monkeypatch.setattr(session._embedder, "set_image", no_encoder)
    fresh = SamPredictor(load_sam(tiny_sam_hf_folder, device="cpu", precision="fp32"))
    for layer, key, data in [("plane", (), image)] + [("stack", (z,), stack[z]) for z in range(3)]:
        state = session.embed_now(session.embedding_key(layer, key), data)
        fresh.set_image(data)
        assert torch.equal(state.features, fresh.get_embedding_state().features)
