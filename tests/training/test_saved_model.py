"""Saving a fine-tuned model (changes + sidecar), load_sam(folder), wrong base, merged export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from napari_segany.sam import SamPredictor, load_sam
from napari_segany.training import (
    BaseModelMismatchError,
    export_merged_checkpoint,
    list_finetuned_models,
    load_finetuned_sam,
)
from napari_segany.training.saved_model import SIDECAR_NAME, WEIGHTS_NAME, read_sidecar
from tests.fixtures_sam import build_official_tiny_sam, import_segment_anything
from tests.training.conftest import bright_disks


def _outputs(model, image):
    predictor = SamPredictor(model)
    predictor.set_image(image)
    box = predictor.predict(box=np.array([20, 25, 70, 80]), return_logits=True)
    point = predictor.predict(point_coords=np.array([[40, 50]]), point_labels=np.array([1]))
    return box + point


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory, decoder_run):
    _, result = decoder_run
    folder = tmp_path_factory.mktemp("finetuned") / "disks"
    result.save(folder, provenance={"image_layer": "disks", "slices": [0, 1, 2, 3]})
    return folder


def test_saved_folder_holds_only_the_changes_and_a_sidecar(saved_folder, decoder_run):
    _, result = decoder_run
    assert sorted(p.name for p in saved_folder.iterdir()) == sorted([SIDECAR_NAME, WEIGHTS_NAME])
    weights = load_file(saved_folder / WEIGHTS_NAME)
    assert set(weights) == set(result.changed)
    assert all(k.startswith("mask_decoder.") for k in weights)
    sidecar = read_sidecar(saved_folder)
    assert sidecar["mode"] == "decoder"
    assert sidecar["base"]["source"] == str(Path(result.base_model.name).resolve())
    assert len(sidecar["base"]["fingerprint"]) == 64
    assert sidecar["labels"] == {"image_layer": "disks", "slices": [0, 1, 2, 3]}
    assert sidecar["metrics"]["after"]["box_iou"] == pytest.approx(
        result.metrics["after"]["box_iou"]
    )
    assert sidecar["training"]["learning_rate"] == pytest.approx(3e-3)
    assert sidecar["preprocessing"]["resize"] == "longest_side"


def test_load_sam_of_the_folder_gives_identical_outputs(saved_folder, decoder_run):
    _, result = decoder_run
    loaded = load_sam(saved_folder, precision="fp32")
    image, _ = bright_disks(20)
    for ours, theirs in zip(_outputs(result.model, image), _outputs(loaded, image), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert loaded.name == str(saved_folder)


def test_bf16_load_of_the_folder_stays_close(saved_folder, decoder_run):
    _, result = decoder_run
    loaded = load_sam(saved_folder, precision="bf16")
    assert loaded.dtype == torch.bfloat16
    image, _ = bright_disks(20)
    ours = _outputs(result.model, image)[0]
    theirs = _outputs(loaded, image)[0]
    assert np.mean((ours > 0) == (theirs > 0)) > 0.95


def test_a_different_base_is_refused(saved_folder, tiny_sam_hf_folder, tmp_path):
    other = tmp_path / "other_base"
    shutil.copytree(tiny_sam_hf_folder, other)
    state = load_file(other / "model.safetensors")
    key = next(k for k in state if k.startswith("vision_encoder.layers.0"))
    state[key] = state[key] + 0.01
    save_file(state, other / "model.safetensors")
    with pytest.raises(BaseModelMismatchError, match="different base"):
        load_finetuned_sam(saved_folder, precision="fp32", base=other)
    # The recorded source pointing at the wrong base is refused by load_sam itself.
    moved = tmp_path / "moved"
    shutil.copytree(saved_folder, moved)
    sidecar = json.loads((moved / SIDECAR_NAME).read_text())
    sidecar["base"]["source"] = str(other)
    (moved / SIDECAR_NAME).write_text(json.dumps(sidecar))
    with pytest.raises(BaseModelMismatchError):
        load_sam(moved, precision="fp32")


def test_merged_export_loads_in_segment_anything_with_the_same_outputs(decoder_run, tmp_path):
    _, result = decoder_run
    path = export_merged_checkpoint(result.model, tmp_path / "sam_finetuned.pth")
    state = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) and v.dtype == torch.float32 for v in state.values())
    segment_anything = import_segment_anything()
    official = build_official_tiny_sam()
    official.load_state_dict(state, strict=True)
    theirs = segment_anything.SamPredictor(official.eval())
    ours = SamPredictor(result.model)
    image, _ = bright_disks(21)
    rgb = np.repeat(np.clip(image, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    theirs.set_image(rgb)
    ours.set_image(rgb)
    for prompt in (
        {"box": np.array([20, 25, 70, 80]), "multimask_output": False},
        {"point_coords": np.array([[40, 50]]), "point_labels": np.array([1])},
    ):
        a = ours.predict(**prompt, return_logits=True)
        b = theirs.predict(**prompt, return_logits=True)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(x, y, atol=2e-4, rtol=1e-4)
    # And this package reads the export back as a plain original-layout checkpoint (its layer
    # norm epsilon differs from the transformers-folder base: same tolerance as the parity tests).
    reloaded = load_sam(path, precision="fp32")
    for x, y in zip(_outputs(reloaded, image), _outputs(result.model, image), strict=True):
        np.testing.assert_allclose(x, y, atol=2e-4, rtol=1e-4)


def test_saved_models_are_listed(decoder_run, tmp_path, monkeypatch):
    _, result = decoder_run
    monkeypatch.setenv("NAPARI_SEGANY_FINETUNED_DIR", str(tmp_path))
    assert list_finetuned_models() == []
    result.save(tmp_path / "nuclei-v1")
    (tmp_path / "not-a-model").mkdir()
    listed = list_finetuned_models()
    assert [m.name for m in listed] == ["nuclei-v1"]
    assert listed[0].mode == "decoder" and listed[0].improved is True
    assert listed[0].path == tmp_path / "nuclei-v1"


@pytest.mark.slow
def test_batch_command_line_uses_a_finetuned_folder(saved_folder, decoder_run, tmp_path):
    import tifffile

    from napari_segany.cli import main
    from napari_segany.jobs import run_to_completion
    from napari_segany.sam.automatic import segment_everything
    from tests.cli.batch_data import EVERYTHING_FAST

    _, result = decoder_run
    image, _ = bright_disks(40)
    image = np.clip(image, 0, 255).astype(np.uint8)
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "disks.tif", image)
    out = tmp_path / "out"
    args = ["everything", str(inputs), "-o", str(out), "--model", str(saved_folder)]
    assert main(args + EVERYTHING_FAST) == 0
    labels = tifffile.imread(out / "disks_labels.tif")
    expected = run_to_completion(
        segment_everything(
            SamPredictor(result.model),
            image,
            points_per_side=6,
            pred_iou_thresh=0.0,
            stability_score_thresh=0.0,
        )
    ).labels
    assert labels.max() > 0
    np.testing.assert_array_equal(labels, expected)
