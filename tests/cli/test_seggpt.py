"""``napari-segany seggpt`` on a stack, with a tiny random SegGPT."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_segany.cli import main
from tests.cli.batch_data import blobs


@pytest.fixture()
def painted_example(tmp_path):
    """A grayscale example image and its painted labels (ids 3 and 7), as PNG files."""
    from PIL import Image

    image = blobs((40, 48), 31)
    labels = np.zeros(image.shape, np.uint8)
    labels[image > 100] = 3
    labels[:10, :12] = 7
    Image.fromarray(image).save(tmp_path / "example.png")
    Image.fromarray(labels).save(tmp_path / "example_labels.png")
    return tmp_path / "example.png", tmp_path / "example_labels.png", image, labels


def test_stack_is_segmented_slice_by_slice_like_the_pipeline(
    tiny_seggpt_hf_folder, painted_example, tmp_path
):
    import tifffile

    from napari_segany.seggpt import SegGptPredictor, load_seggpt
    from napari_segany.seggpt.propagation import PropagationSettings, segment_stack_with_seggpt

    image_path, labels_path, image, labels = painted_example
    stack = np.stack([blobs((36, 44), 40 + i).astype(np.uint16) * 30 for i in range(3)])
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    out = tmp_path / "out"
    code = main(
        ["seggpt", str(tmp_path / "stack.tif"), "-o", str(out)]
        + ["--prompt-image", str(image_path), "--prompt-labels", str(labels_path)]
        + ["--model", str(tiny_seggpt_hf_folder), "--precision", "fp32", "--device", "cpu", "-q"]
    )
    assert code == 0
    result = tifffile.imread(out / "stack_labels.tif")
    assert result.shape == stack.shape and result.dtype == np.uint16
    assert set(np.unique(result)) <= {0, 3, 7} and result.any()
    predictor = SegGptPredictor(load_seggpt(tiny_seggpt_hf_folder, device="cpu", precision="fp32"))
    expected = segment_stack_with_seggpt(
        predictor, stack, labels, image, settings=PropagationSettings(batch_size=1)
    )
    np.testing.assert_array_equal(result, expected)
    record = json.loads((out / "napari-segany-run.json").read_text())
    entry = record["inputs"][0]
    assert entry["status"] == "done" and entry["slices"] == 3
    assert record["parameters"]["prompt_labels"] == [str(labels_path)]


def test_mismatched_prompts_are_a_usage_error(tiny_seggpt_hf_folder, painted_example, tmp_path):
    image_path, labels_path, *_ = painted_example
    base = ["seggpt", str(image_path), "-o", str(tmp_path / "out")]
    model = ["--model", str(tiny_seggpt_hf_folder)]
    two_images = ["--prompt-image", str(image_path)] * 2 + ["--prompt-labels", str(labels_path)]
    assert main(base + two_images + model) == 2
    wrong_shape = ["--prompt-image", str(image_path), "--prompt-labels", str(tmp_path / "x.png")]
    from PIL import Image

    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "x.png")
    assert main(base + wrong_shape + model) == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_workers_give_the_single_process_labels(
    tiny_seggpt_hf_folder, painted_example, tmp_path
):
    pytest.importorskip("distributed")
    import tifffile

    image_path, labels_path, *_ = painted_example
    stack = np.stack([blobs((36, 44), 80 + i) for i in range(4)])
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    common = ["seggpt", str(tmp_path / "stack.tif")]
    common += ["--prompt-image", str(image_path), "--prompt-labels", str(labels_path)]
    common += ["--model", str(tiny_seggpt_hf_folder), "--precision", "fp32", "--device", "cpu"]
    common += ["-q"]
    assert main(common + ["-o", str(tmp_path / "single"), "--threads", "1"]) == 0
    assert main(common + ["-o", str(tmp_path / "parallel"), "--workers", "2"]) == 0
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "parallel" / "stack_labels.tif"),
        tifffile.imread(tmp_path / "single" / "stack_labels.tif"),
    )
