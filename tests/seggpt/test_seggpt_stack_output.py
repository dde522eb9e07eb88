"""segment_stack_with_seggpt writes slice by slice into the output the caller gives (numpy, zarr)
and never reads or copies a whole stack."""

from __future__ import annotations

import numpy as np
import pytest

from napari_segany.seggpt.propagation import PropagationSettings, segment_stack_with_seggpt
from tests.seggpt.test_seggpt_propagation import CopyLastPrompt, painted_stack


class SliceOnlyArray:
    """An array-like that only allows whole-slice reads and writes (a stand-in for a huge stack)."""

    def __init__(self, data: np.ndarray, leading: int = 1) -> None:
        self.data, self.leading = data, leading
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.reads: list[tuple] = []
        self.writes: list[tuple] = []

    def _check(self, key) -> tuple:
        key = key if isinstance(key, tuple) else (key,)
        if len(key) != self.leading or not all(isinstance(k, int | np.integer) for k in key):
            raise AssertionError(f"not a single-slice key: {key!r}")
        return tuple(int(k) for k in key)

    def __getitem__(self, key):
        key = self._check(key)
        self.reads.append(key)
        return self.data[key].copy()

    def __setitem__(self, key, value):
        key = self._check(key)
        self.writes.append(key)
        self.data[key] = value

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole stack was read")

    def __len__(self) -> int:
        return self.shape[0]


def test_numpy_output_is_written_in_place_and_returned():
    image, labels = painted_stack(depth=5, painted=(0,))
    expected = segment_stack_with_seggpt(CopyLastPrompt(shift=1), image, labels)
    output = np.zeros(labels.shape, np.int32)
    output[4, 0, 0] = 99  # existing labels are kept (overwrite off)
    returned = segment_stack_with_seggpt(CopyLastPrompt(shift=1), image, labels, output=output)
    assert returned is output
    assert output[4, 0, 0] == 99
    assert (output[1:4] == expected[1:4]).all()
    assert not output[0].any()  # the painted slice is not predicted into a given output
    with pytest.raises(ValueError, match="does not fit"):
        segment_stack_with_seggpt(CopyLastPrompt(), image, labels, output=np.zeros((2, 3, 3)))


def test_slice_only_arrays_are_never_read_whole():
    image, labels = painted_stack(depth=6, painted=(0, 5))
    expected = segment_stack_with_seggpt(CopyLastPrompt(shift=2), image, labels)
    target = SliceOnlyArray(image.copy())
    painted = SliceOnlyArray(labels.copy())
    output = SliceOnlyArray(np.zeros(labels.shape, np.int32))
    result = segment_stack_with_seggpt(CopyLastPrompt(shift=2), target, painted, output=output)
    assert result is output
    np.testing.assert_array_equal(output.data[1:5], expected[1:5])
    assert sorted(output.writes) == [(1,), (2,), (3,), (4,)]
    # without an output the result is a new numpy array, the painted slices copied one by one
    fresh = segment_stack_with_seggpt(CopyLastPrompt(shift=2), target, painted)
    np.testing.assert_array_equal(fresh, expected)


def test_zarr_stack_in_and_out():
    zarr = pytest.importorskip("zarr")
    image, labels = painted_stack(depth=6, size=32, painted=(2,))
    expected = segment_stack_with_seggpt(CopyLastPrompt(shift=3), image, labels)
    target = zarr.array(image, chunks=(1, 32, 32))
    painted = zarr.array(labels, chunks=(1, 32, 32))
    output = zarr.zeros(labels.shape, chunks=(1, 32, 32), dtype=np.int32)
    result = segment_stack_with_seggpt(
        CopyLastPrompt(shift=3),
        target,
        painted,
        output=output,
        settings=PropagationSettings(overwrite_existing=True),
    )
    assert result is output
    got = output[:]
    keep = [0, 1, 3, 4, 5]
    np.testing.assert_array_equal(got[keep], expected[keep])
    assert not got[2].any()  # the prompt slice is not written into the given output


def test_int64_ids_beyond_int32_get_an_int64_result():
    image, labels = painted_stack(depth=3, painted=(0,), ids=(5, 6))
    labels = labels.astype(np.int64)
    labels[labels == 6] = 2**40
    result = segment_stack_with_seggpt(
        CopyLastPrompt(), SliceOnlyArray(image), SliceOnlyArray(labels)
    )
    assert result.dtype == np.int64 and set(np.unique(result[1])) == {0, 5, 2**40}


def test_cpu_out_of_memory_says_what_to_do():
    from napari_segany.errors import OutOfMemoryError

    class NoMemory(CopyLastPrompt):
        def predict(self, image, *, return_confidence=False):
            raise RuntimeError(
                "DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"
            )

    image, labels = painted_stack(depth=3, painted=(0,))
    with pytest.raises(
        OutOfMemoryError, match="out of memory while segmenting a slice.*batch_size"
    ):
        segment_stack_with_seggpt(NoMemory(), image, labels)
