"""The sample stack: generated without downloads, reachable through the npe2 manifest."""

from __future__ import annotations

import numpy as np

from napari_segany._napari.sample_data import SAMPLE_SHAPE, blobs_stack, make_sample_stack


def test_sample_stack_has_the_promised_shape_and_dtype():
    [(data, kwargs, layer_type)] = make_sample_stack()
    assert layer_type == "image"
    assert data.shape == SAMPLE_SHAPE == (16, 128, 128)
    assert data.dtype == np.uint16
    low, high = kwargs["contrast_limits"]
    assert 0 < low < high <= np.iinfo(np.uint16).max
    # Not 8-bit data in disguise: scaling by the contrast limits matters.
    assert data.max() > 1000


def test_blobs_move_and_grow_and_are_reproducible():
    image, labels = blobs_stack()
    again, _ = blobs_stack()
    np.testing.assert_array_equal(image, again)
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4}
    first = np.argwhere(labels[0] == 1).mean(axis=0)
    last = np.argwhere(labels[-1] == 1).mean(axis=0)
    assert np.linalg.norm(last - first) > 10  # blob 1 moved
    assert (labels[-1] == 1).sum() > (labels[0] == 1).sum()  # and grew
    # Blobs are brighter than the background.
    assert image[labels > 0].mean() > image[labels == 0].mean() + 1000


def test_sample_data_is_declared_in_the_manifest_and_loads_through_npe2():
    from npe2 import PluginManager

    manager = PluginManager.instance()
    manager.discover()
    samples = {c.key: c for c in dict(manager.iter_sample_data())["napari-segany"]}
    assert samples["blobs_3d"].display_name == "Blobs stack (3D, 16 slices)"
    layers = samples["blobs_3d"].open()
    [(data, _, layer_type)] = layers
    assert layer_type == "image" and data.shape == SAMPLE_SHAPE


def test_sam_to_seggpt_example_runs_on_the_sample_stack(
    tiny_sam_hf_folder, tiny_seggpt_hf_folder, tmp_path
):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).parents[2] / "examples" / "sam_to_seggpt.py"
    spec = importlib.util.spec_from_file_location("sam_to_seggpt", script)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "labels.npy"
    labels = example.main(
        [
            "--sam",
            str(tiny_sam_hf_folder),
            "--seggpt",
            str(tiny_seggpt_hf_folder),
            "--device",
            "cpu",
            "--precision",
            "fp32",
            "--save",
            str(out),
        ]
    )
    assert labels.shape == SAMPLE_SHAPE
    np.testing.assert_array_equal(np.load(out), labels)
    # Slice 0 holds SAM's objects (ids 1..4 by click order) and SegGPT filled the other slices.
    assert labels[0].any() and set(np.unique(labels)) <= {0, 1, 2, 3, 4}
    assert sum(labels[z].any() for z in range(1, SAMPLE_SHAPE[0])) >= SAMPLE_SHAPE[0] - 2
