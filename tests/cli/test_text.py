"""``napari-segany text`` (Grounded SAM) with tiny random Grounding DINO and SAM models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_segany.cli import main
from tests.cli.batch_data import blobs


@pytest.fixture(scope="module")
def tiny_grounding_folder(tmp_path_factory):
    from tests.grounding.tiny_grounding_dino import build_tiny_reference, write_tiny_folder

    return write_tiny_folder(tmp_path_factory.mktemp("tiny_gdino"), build_tiny_reference(seed=0))


@pytest.mark.slow
def test_text_labels_equal_the_grounded_sam_pipeline(
    tiny_grounding_folder, tiny_sam_hf_folder, tmp_path
):
    from PIL import Image

    from napari_segany.grounding import (
        GroundingDinoDetector,
        load_grounding_dino,
        segment_with_text,
    )
    from napari_segany.sam import SamPredictor, load_sam

    image = blobs((72, 96), 61)
    Image.fromarray(image).save(tmp_path / "cells.png")
    out = tmp_path / "out"
    thresholds = {"box_threshold": 0.0, "text_threshold": 0.0, "max_objects": 4}
    code = main(
        ["text", str(tmp_path / "cells.png"), "-o", str(out), "--prompt", "cell. nucleus."]
        + ["--detector", str(tiny_grounding_folder), "--model", str(tiny_sam_hf_folder)]
        + ["--box-threshold", "0", "--text-threshold", "0", "--max-objects", "4"]
        + ["--precision", "fp32", "--device", "cpu", "-q"]
    )
    assert code == 0
    import tifffile

    labels = tifffile.imread(out / "cells_labels.tif")
    detector = GroundingDinoDetector(
        load_grounding_dino(tiny_grounding_folder, device="cpu", precision="fp32")
    )
    sam = SamPredictor(load_sam(tiny_sam_hf_folder, device="cpu", precision="fp32"))
    expected = segment_with_text(image, "cell. nucleus.", detector=detector, sam=sam, **thresholds)
    np.testing.assert_array_equal(labels, expected.labels)
    assert labels.max() >= 1
    record = json.loads((out / "napari-segany-run.json").read_text())
    assert record["inputs"][0]["objects"] == len(expected.objects)
    assert record["model"]["detector"]["source"] == str(tiny_grounding_folder)


def test_empty_prompt_and_unknown_detector_are_usage_errors(tmp_path, tiny_sam_hf_folder):
    (tmp_path / "x.png").write_bytes(b"")
    base = ["text", str(tmp_path / "x.png"), "-o", str(tmp_path / "out")]
    model = ["--model", str(tiny_sam_hf_folder)]
    assert main(base + ["--prompt", " . "] + model) == 2
    assert main(base + ["--prompt", "cell.", "--detector", "no-such-detector"] + model) == 2


def test_without_the_grounding_package_text_is_a_clear_usage_error(
    tmp_path, tiny_sam_hf_folder, monkeypatch, capsys
):
    import sys

    monkeypatch.setitem(sys.modules, "napari_segany.grounding", None)  # import fails
    (tmp_path / "x.png").write_bytes(b"")
    code = main(
        ["text", str(tmp_path / "x.png"), "-o", str(tmp_path / "out"), "--prompt", "cell."]
        + ["--model", str(tiny_sam_hf_folder)]
    )
    assert code == 2
    assert "Grounded SAM not available" in capsys.readouterr().err
