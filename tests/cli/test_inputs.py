"""Input discovery and axis planning of batch runs (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_segany.batch.inputs import discover_inputs, split_zarr_path
from napari_segany.batch.volumes import AxisChoice, InputError, open_volume, plan_layout


def _touch_images(folder, names):
    import tifffile

    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, np.zeros((4, 5), np.uint8))


def test_folders_globs_recursion_and_earlier_outputs_excluded(tmp_path):
    _touch_images(tmp_path, ["in/a.tif", "in/sub/b.tif", "in/out/old_labels.tif", "in/notes.txt"])
    (tmp_path / "in/notes.txt").write_text("not an image")
    flat, missing = discover_inputs([str(tmp_path / "in")], exclude=tmp_path / "in/out")
    assert [s.name for s in flat] == ["a"] and not missing
    deep, _ = discover_inputs([str(tmp_path / "in")], recursive=True, exclude=tmp_path / "in/out")
    assert sorted((s.subfolder, s.name) for s in deep) == [("", "a"), ("sub", "b")]
    globbed, _ = discover_inputs([str(tmp_path / "in" / "*.tif")])
    assert [s.name for s in globbed] == ["a"]
    outputs, _ = discover_inputs([str(tmp_path / "in/out/*.tif")], exclude=tmp_path / "in/out")
    assert outputs == []
    again, _ = discover_inputs([str(tmp_path / "in/a.tif"), str(tmp_path / "in/*.tif")])
    assert len(again) == 1  # duplicates removed


def test_inputs_with_the_same_stem_get_distinct_output_names(tmp_path):
    _touch_images(tmp_path, ["a.tif", "a.tiff"])
    (tmp_path / "a.png").write_bytes(b"")
    specs, _ = discover_inputs([str(tmp_path)])
    assert sorted(s.name for s in specs) == ["a", "a_tif", "a_tiff"]


def test_missing_paths_and_empty_globs_are_named(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    specs, missing = discover_inputs(
        [str(tmp_path / "nope.tif"), str(tmp_path / "*.png"), str(tmp_path / "notes.txt")]
    )
    assert not specs
    assert [m.argument for m in missing] == [
        str(tmp_path / "nope.tif"),
        str(tmp_path / "*.png"),
        str(tmp_path / "notes.txt"),
    ]
    assert "unsupported file type" in missing[2].reason


def test_zarr_paths_split_into_store_and_array(tmp_path, zarr_stack):
    path, _ = zarr_stack
    assert split_zarr_path(f"{path}/0") == (path, "0")
    specs, _ = discover_inputs([str(path), str(tmp_path)])
    assert [(s.kind, s.name, s.array_path) for s in specs] == [("zarr", "volume", "")]


@pytest.mark.parametrize(
    ("shape", "axes", "choice", "leading", "spatial", "colour", "channel"),
    [
        ((5, 40, 30), "QYX", AxisChoice(), (0,), (1, 2), None, None),
        ((40, 30, 3), None, AxisChoice(), (), (0, 1), 2, None),
        ((40, 30, 3), None, AxisChoice(channel=1), (), (0, 1), None, 2),
        ((3, 40, 30), "SYX", AxisChoice(), (), (1, 2), 0, None),
        ((40, 30, 7), None, AxisChoice(stack_axis=-1), (2,), (0, 1), None, None),
        ((2, 4, 3, 40, 30), "TZCYX", AxisChoice(channel=2), (0, 1), (3, 4), None, 2),
    ],
)
def test_axis_roles(shape, axes, choice, leading, spatial, colour, channel):
    layout = plan_layout(shape, axes, choice)
    assert layout.leading_axes == leading
    assert layout.spatial_axes == spatial
    assert layout.colour_axis == colour
    assert layout.channel_axis == channel


def test_channel_axis_needs_a_channel_choice():
    with pytest.raises(InputError, match="--channel"):
        plan_layout((3, 40, 30), "CYX", AxisChoice())
    with pytest.raises(InputError, match="out of range"):
        plan_layout((3, 40, 30), "CYX", AxisChoice(channel=5))


def test_slices_read_lazily_in_any_axis_order(tmp_path):
    import tifffile

    data = np.arange(4 * 6 * 5, dtype=np.uint16).reshape(6, 5, 4)  # Y, X, Z
    tifffile.imwrite(tmp_path / "yxz.tif", data, photometric="minisblack", metadata=None)
    from napari_segany.batch.inputs import InputSpec

    volume = open_volume(InputSpec(str(tmp_path / "yxz.tif"), "tiff"), AxisChoice(stack_axis=2))
    try:
        assert volume.label_shape == (4, 6, 5)
        np.testing.assert_array_equal(volume.read_slice((3,)), data[:, :, 3])
    finally:
        volume.close()


def test_ome_zarr_axes_come_from_the_multiscales_metadata(tmp_path):
    import zarr

    from napari_segany.batch.inputs import InputSpec

    root = zarr.open_group(str(tmp_path / "image.ome.zarr"), mode="w", zarr_format=2)
    data = np.arange(2 * 3 * 8 * 9, dtype=np.uint16).reshape(2, 3, 8, 9)  # C, Z, Y, X
    root.create_array("0", shape=data.shape, chunks=(1, 1, 8, 9), dtype="uint16")[:] = data
    axes = [{"name": "c", "type": "channel"}] + [
        {"name": n, "type": "space"} for n in ("z", "y", "x")
    ]
    root.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0"}]}]
    specs, _ = discover_inputs([str(tmp_path / "image.ome.zarr")])
    assert [s.name for s in specs] == ["image"]
    with pytest.raises(InputError, match="--channel"):
        open_volume(specs[0], AxisChoice())
    for spec in (specs[0], InputSpec(str(tmp_path / "image.ome.zarr"), "zarr", "0")):
        volume = open_volume(spec, AxisChoice(channel=1))
        assert volume.label_shape == (3, 8, 9) and volume.spatial_chunks == (8, 9)
        np.testing.assert_array_equal(volume.read_slice((2,)), data[1, 2])
