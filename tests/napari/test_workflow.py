"""The flagship SAM -> SegGPT workflow, scripted, end to end on tiny random-weight models."""

import importlib.util
from pathlib import Path

import numpy as np

from napari_segany._napari.sample_data import make_sample_stack

EXAMPLE = Path(__file__).parents[2] / "examples" / "sam_to_seggpt.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("sam_to_seggpt", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_script_propagates_sam_objects_through_the_stack(
    tiny_sam_hf_folder, tiny_seggpt_hf_folder, tmp_path
):
    out = tmp_path / "labels.npy"
    example = _load_example()
    labels = example.main(
        [
            "--sam",
            str(tiny_sam_hf_folder),
            "--seggpt",
            str(tiny_seggpt_hf_folder),
            "--save",
            str(out),
        ]
    )
    [(stack, _, _)] = make_sample_stack()
    assert labels.shape == stack.shape
    assert np.issubdtype(labels.dtype, np.integer)
    np.testing.assert_array_equal(np.load(out), labels)
    # SAM wrote objects on slice 0, and SegGPT used only those ids on the other slices.
    sam_ids = set(np.unique(labels[0])) - {0}
    assert sam_ids
    assert set(np.unique(labels[1:])) <= sam_ids | {0}


def test_scripting_module_exports_the_layer_functions():
    from napari_segany import scripting

    for name in scripting.__all__:
        assert callable(getattr(scripting, name)), name
