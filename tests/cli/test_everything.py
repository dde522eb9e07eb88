"""``napari-segany everything`` end to end on a tiny random SAM (single process)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_segany.cli import main
from tests.cli.batch_data import EVERYTHING_FAST, blobs

FILES = {"a": "a.png", "b": "b.tif", "c": "c.jpg"}
GENERATOR = {"points_per_side": 6, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


@pytest.fixture(scope="module")
def tiny_predictor(tiny_sam_hf_folder):
    from napari_segany.sam import SamPredictor, load_sam

    return SamPredictor(load_sam(tiny_sam_hf_folder, device="cpu", precision="fp32"))


def expected_labels(predictor, image, contrast_limits=None):
    """The pure pipeline's labels, as the widgets get them."""
    from napari_segany.jobs import run_to_completion
    from napari_segany.sam.automatic import segment_everything

    result = run_to_completion(
        segment_everything(predictor, image, contrast_limits=contrast_limits, **GENERATOR)
    )
    return result.labels


def read_record(out):
    return json.loads((out / "napari-segany-run.json").read_text())


def test_folder_outputs_equal_the_pipeline_and_are_recorded(
    tiny_sam_hf_folder, tiny_predictor, image_folder, tmp_path, capsys
):
    import tifffile
    from PIL import Image

    out = tmp_path / "out"
    code = main(
        ["everything", str(image_folder), "-o", str(out), "--model", str(tiny_sam_hf_folder)]
        + EVERYTHING_FAST
    )
    assert code == 0
    inputs = {
        "a": np.asarray(Image.open(image_folder / "a.png")),
        "b": tifffile.imread(image_folder / "b.tif"),
        "c": np.asarray(Image.open(image_folder / "c.jpg")),
    }
    record = read_record(out)
    by_input = {r["input"]: r for r in record["inputs"]}
    total = 0
    for name, image in inputs.items():
        labels = tifffile.imread(out / f"{name}_labels.tif")
        assert labels.shape == image.shape[:2]
        assert labels.dtype == np.uint16
        np.testing.assert_array_equal(labels, expected_labels(tiny_predictor, image))
        entry = by_input[str(image_folder / FILES[name])]
        assert entry["status"] == "done" and entry["objects"] == int(labels.max())
        assert entry["output"] == str(out / f"{name}_labels.tif") and entry["seconds"] > 0
        total += int(labels.max())
    assert total > 0, "the tiny model should find objects with these thresholds"
    assert record["command"] == "everything"
    assert record["parameters"]["points_per_side"] == 6
    assert record["model"] == {
        "source": str(tiny_sam_hf_folder),
        "device": "cpu",
        "precision": "fp32",
    }
    from napari_segany import __version__

    assert record["version"] == __version__ and record["finished"]
    assert record["execution"]["model_loads_per_worker"] == {"this process": 1}
    assert not (out / ".napari-segany-progress").exists()


def test_rerun_skips_finished_outputs_and_overwrite_recomputes(tiny_sam_hf_folder, tmp_path):
    from PIL import Image

    Image.fromarray(blobs((40, 52), 7)).save(tmp_path / "one.png")
    out = tmp_path / "out"
    args = [
        "everything",
        str(tmp_path / "one.png"),
        "-o",
        str(out),
        "--model",
        str(tiny_sam_hf_folder),
    ] + EVERYTHING_FAST
    assert main(args) == 0
    output = out / "one_labels.tif"
    first = output.stat().st_mtime_ns
    objects = read_record(out)["inputs"][0]["objects"]

    assert main(args) == 0
    entry = read_record(out)["inputs"][0]
    assert entry["status"] == "skipped" and entry["objects"] == objects
    assert output.stat().st_mtime_ns == first

    assert main(args + ["--overwrite"]) == 0
    assert read_record(out)["inputs"][0]["status"] == "done"
    assert output.stat().st_mtime_ns != first


def test_zarr_stack_in_gives_zarr_labels_chunked_like_its_slices(
    tiny_sam_hf_folder, tiny_predictor, zarr_stack, tmp_path
):
    import zarr

    from napari_segany.batch.inputs import InputSpec
    from napari_segany.batch.runner import stack_limits
    from napari_segany.batch.volumes import AxisChoice, open_volume

    path, data = zarr_stack
    out = tmp_path / "out"
    code = main(
        ["everything", f"{path}", "-o", str(out), "--model", str(tiny_sam_hf_folder)]
        + EVERYTHING_FAST
    )
    assert code == 0
    labels = zarr.open_array(out / "volume_labels.zarr", mode="r")
    assert labels.shape == data.shape and labels.chunks == (1, 24, 56)
    assert labels.dtype == np.uint32
    assert labels.attrs["napari_segany_complete"] is True
    volume = open_volume(InputSpec(str(path), "zarr"), AxisChoice())
    limits = stack_limits(volume)
    assert limits is None  # uint8 is used as it is
    for z in range(data.shape[0]):
        np.testing.assert_array_equal(labels[z], expected_labels(tiny_predictor, data[z], limits))
    entry = read_record(out)["inputs"][0]
    assert entry["slices"] == 3 and entry["objects"] == sum(int(labels[z].max()) for z in range(3))


def test_tiff_stack_gives_a_tiff_stack_scaled_by_one_contrast_pair(
    tiny_sam_hf_folder, tiny_predictor, tmp_path
):
    import tifffile

    from napari_segany.batch.inputs import InputSpec
    from napari_segany.batch.runner import stack_limits
    from napari_segany.batch.volumes import AxisChoice, open_volume

    stack = np.stack([blobs((40, 44), 20 + i).astype(np.uint16) * (i + 1) * 50 for i in range(3)])
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    out = tmp_path / "out"
    code = main(
        ["everything", str(tmp_path / "stack.tif"), "-o", str(out)]
        + ["--model", str(tiny_sam_hf_folder)]
        + EVERYTHING_FAST
    )
    assert code == 0
    labels = tifffile.imread(out / "stack_labels.tif")
    assert labels.shape == stack.shape and labels.dtype == np.uint16
    volume = open_volume(InputSpec(str(tmp_path / "stack.tif"), "tiff"), AxisChoice())
    limits = stack_limits(volume)
    volume.close()
    assert limits is not None  # one pair for the whole stack, not per slice
    for z in range(3):
        np.testing.assert_array_equal(labels[z], expected_labels(tiny_predictor, stack[z], limits))


def test_a_large_image_is_split_into_tile_tasks_with_the_pipeline_result(
    tiny_sam_hf_folder, tiny_predictor, tmp_path
):
    import tifffile

    from napari_segany.jobs import run_to_completion
    from napari_segany.sam.automatic import segment_everything

    image = np.concatenate([blobs((70, 60), 71), blobs((70, 60), 72)], axis=1).astype(np.uint16)
    image = image * 100  # 16 bit: every tile is scaled by the whole image's contrast
    tifffile.imwrite(tmp_path / "large.tif", image)
    out = tmp_path / "out"
    tiling = ["--tile-size", "48", "--tile-overlap", "16", "--min-mask-region-area", "20"]
    code = main(
        ["everything", str(tmp_path / "large.tif"), "-o", str(out)]
        + ["--model", str(tiny_sam_hf_folder)]
        + tiling
        + EVERYTHING_FAST
    )
    assert code == 0
    expected = run_to_completion(
        segment_everything(
            tiny_predictor,
            image,
            tile_size=48,
            tile_overlap=16,
            min_mask_region_area=20,
            **GENERATOR,
        )
    )
    labels = tifffile.imread(out / "large_labels.tif")
    np.testing.assert_array_equal(labels, expected.labels)
    assert labels.max() > 0
    assert read_record(out)["inputs"][0]["objects"] == len(expected.records)


class _Interrupt(BaseException):
    """Stands for a crash (or Ctrl-C) in the middle of a run."""


def test_interrupted_stack_resumes_from_its_finished_slices(
    tiny_sam_hf_folder, zarr_stack, tmp_path, monkeypatch
):
    import zarr

    from napari_segany.batch import runner
    from napari_segany.batch.executors import SerialExecutor

    path, data = zarr_stack
    reference = tmp_path / "reference"
    args = ["everything", str(path), "--model", str(tiny_sam_hf_folder)] + EVERYTHING_FAST
    assert main(args + ["-o", str(reference)]) == 0

    class CrashAfterTwo(SerialExecutor):
        def completed(self):
            for done, pair in enumerate(super().completed(), start=1):
                yield pair
                if done == 2:
                    raise _Interrupt

    def crashing(**options):
        return CrashAfterTwo(options.get("threads"))

    def interrupted_run(out, extra=()):
        with monkeypatch.context() as patch:
            patch.setattr(runner, "make_executor", crashing)
            with pytest.raises(_Interrupt):
                main(args + ["-o", str(out), *extra])
        assert not zarr.open_array(out / "volume_labels.zarr").attrs.get("napari_segany_complete")

    out = tmp_path / "out"
    interrupted_run(out)
    assert main(args + ["-o", str(out)]) == 0
    entry = read_record(out)["inputs"][0]
    assert entry["status"] == "done" and entry["resumed_slices"] == 2
    np.testing.assert_array_equal(
        zarr.open_array(out / "volume_labels.zarr")[:],
        zarr.open_array(reference / "volume_labels.zarr")[:],
    )
    assert entry["objects"] == read_record(reference)["inputs"][0]["objects"]

    # Slices made with other settings are not reused.
    other = tmp_path / "other"
    interrupted_run(other, ["--points-per-side", "5"])
    assert main(args + ["-o", str(other)]) == 0
    entry = read_record(other)["inputs"][0]
    assert entry["status"] == "done" and entry["resumed_slices"] == 0
    np.testing.assert_array_equal(
        zarr.open_array(other / "volume_labels.zarr")[:],
        zarr.open_array(reference / "volume_labels.zarr")[:],
    )


def test_missing_and_corrupt_inputs_are_named_and_the_others_finish(
    tiny_sam_hf_folder, image_folder, tmp_path, capsys
):
    import zarr

    (image_folder / "broken.tif").write_bytes(b"II*\x00 this is no TIFF")
    (image_folder / "wrong.tif").write_bytes(b"")
    zarr.create_array(str(tmp_path / "line.zarr"), shape=(10,), dtype="uint8")  # 1-D: no image
    out = tmp_path / "out"
    code = main(
        [
            "everything",
            str(image_folder),
            str(tmp_path / "missing.png"),
            str(tmp_path / "line.zarr"),
            "-o",
            str(out),
            "--model",
            str(tiny_sam_hf_folder),
        ]
        + EVERYTHING_FAST
    )
    assert code == 1
    err = capsys.readouterr().err
    record = read_record(out)
    status = {r["input"].rsplit("/", 1)[-1]: r for r in record["inputs"]}
    for name in ("broken.tif", "wrong.tif", "missing.png", "line.zarr"):
        assert status[name]["status"] == "failed"
        assert name in status[name]["error"] and name in err
    for name in ("a", "b", "c"):
        assert (out / f"{name}_labels.tif").is_file()
    assert sum(r["status"] == "done" for r in record["inputs"]) == 3


def test_outputs_never_overwrite_inputs(tiny_sam_hf_folder, zarr_stack, tmp_path):
    path, _ = zarr_stack
    before = sorted(p.name for p in path.rglob("*"))
    code = main(
        ["everything", str(path), "-o", str(path / "labels"), "--model", str(tiny_sam_hf_folder)]
        + EVERYTHING_FAST
    )
    assert code == 1
    entry = read_record(path / "labels")["inputs"][0]
    assert "would overwrite the input" in entry["error"]
    after = sorted(p.name for p in path.rglob("*") if "labels" not in p.parts)
    assert after == before


@pytest.mark.parametrize(
    "arguments",
    [
        [],
        ["everything"],
        ["everything", "x.tif"],  # no -o
        ["everything", "x.tif", "-o", "out", "--points-per-side", "0"],
        ["everything", "x.tif", "-o", "out", "--workers", "0"],
        ["everything", "x.tif", "-o", "out", "--workers", "2", "--scheduler", "tcp://a:1"],
        ["everything", "x.tif", "-o", "out", "--model", "no-such-model"],
        ["everything", "x.tif", "-o", "out", "--precision", "fp8"],
        ["everything", "x.tif", "-o", "out", "--tile-size", "200"],  # overlap 256
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(arguments, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(arguments) == 2
    assert "usage" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_help_and_version_exit_0(capsys):
    assert main(["--help"]) == 0
    assert "everything" in capsys.readouterr().out
    assert main(["everything", "--help"]) == 0
    assert "--points-per-side" in capsys.readouterr().out


def test_compile_decoder_option_compiles_once_and_keeps_the_labels(
    tiny_sam_hf_folder, tiny_predictor, image_folder, tmp_path, monkeypatch
):
    """--compile-decoder: the worker's model is compiled once (dynamo's eager backend here: no C++
    build), the labels are those of the eager pipeline, and the record says so."""
    import tifffile
    import torch

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    real_compile = torch.compile
    compiled = []

    def eager_backend_compile(module, **kwargs):
        compiled.append(type(module).__name__)
        return real_compile(module, backend="eager", dynamic=kwargs.get("dynamic"))

    monkeypatch.setattr(torch, "compile", eager_backend_compile)
    out = tmp_path / "out"
    args = ["everything", str(image_folder / "b.tif"), "-o", str(out)]
    args += ["--model", str(tiny_sam_hf_folder), "--compile-decoder"] + EVERYTHING_FAST
    assert main(args) == 0
    image = tifffile.imread(image_folder / "b.tif")
    labels = tifffile.imread(out / "b_labels.tif")
    np.testing.assert_array_equal(labels, expected_labels(tiny_predictor, image))
    assert labels.max() > 0
    assert compiled == ["MaskDecoder"]
    assert read_record(out)["model"]["compile_decoder"] == "yes"


def test_compile_decoder_without_a_cpp_compiler_is_a_usage_error(
    tiny_sam_hf_folder, image_folder, tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr("shutil.which", lambda name: None)
    out = tmp_path / "out"
    args = ["everything", str(image_folder / "b.tif"), "-o", str(out), "--device", "cpu"]
    args += ["--model", str(tiny_sam_hf_folder), "--compile-decoder"] + EVERYTHING_FAST
    assert main(args) == 2
    assert "no C++ compiler" in capsys.readouterr().err
    assert not out.exists()  # stopped before any input was read or any model loaded
