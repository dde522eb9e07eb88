"""Memory-bounded mask upscaling: same masks as F.interpolate, one map and one window at a time,
lazy full-size masks (``return_low_res_only`` + ``upscale_mask``), clear out-of-memory errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_segany.errors import OutOfMemoryError, explain_out_of_memory, is_out_of_memory
from napari_segany.sam import mask_upscaling, transforms
from napari_segany.sam.mask_upscaling import (
    foreground_window,
    input_frame_block,
    resized_block,
    upscale_into,
)
from napari_segany.sam.predictor import SamPredictor


@pytest.mark.parametrize(
    "band_elements, product_min_elements",
    [(5000, 0), (mask_upscaling.BAND_ELEMENTS, 0), (5000, mask_upscaling.PRODUCT_MIN_ELEMENTS)],
)
@pytest.mark.parametrize(
    "shape, size",
    [
        ((96, 128), (300, 400)),
        ((37, 53), (101, 143)),
        ((128, 85), (1000, 666)),
        ((64, 64), (40, 50)),
    ],
)
def test_window_upscaling_equals_f_interpolate(
    shape, size, band_elements, product_min_elements, monkeypatch
):
    """Many bands, or one band of several blend products when enlarging, or gathers (small
    windows); also shrinking."""
    monkeypatch.setattr(mask_upscaling, "BAND_ELEMENTS", band_elements)
    monkeypatch.setattr(mask_upscaling, "PRODUCT_MIN_ELEMENTS", product_min_elements)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) - 8
    x[10:20, 5:30] += 15
    reference = F.interpolate(x[None, None], size, mode="bilinear", align_corners=False)[0, 0]
    mask = torch.zeros(size, dtype=torch.bool)
    upscale_into(x, mask)
    assert torch.equal(mask, reference > 0) and mask.any()
    logits = torch.empty(size)
    upscale_into(x, logits)
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-6)
    row0, row1, col0, col1 = foreground_window(x, size, 0.0)
    outside = reference.clone()
    outside[row0:row1, col0:col1] = -1
    assert not (outside > 0).any()  # nothing positive outside the window
    assert (row1 - row0) * (col1 - col0) < 0.5 * size[0] * size[1]  # and it is small


@pytest.mark.parametrize("size", [(40, 48), (60, 72), (80, 96), (50, 61)])
def test_resized_block_equals_the_whole_resize(size):
    """Same values as resizing the whole map, for any window (edges included); integer factors
    read only the source pixels the window needs, others (50 x 61) fall back to the whole."""
    x = torch.randn(20, 24, generator=torch.Generator().manual_seed(1))
    full = transforms.resize_bilinear(x[None], size)[0]
    rng = np.random.default_rng(0)
    windows = [((0, size[0]), (0, size[1])), ((0, 1), (0, 1)), ((size[0] - 1, size[0]), (3, 9))]
    for _ in range(40):
        r0, r1 = sorted(rng.choice(size[0] + 1, 2, replace=False))
        c0, c1 = sorted(rng.choice(size[1] + 1, 2, replace=False))
        windows.append(((int(r0), int(r1)), (int(c0), int(c1))))
    for rows, cols in windows:
        block = resized_block(x, size, rows, cols)
        assert torch.equal(block, full[rows[0] : rows[1], cols[0] : cols[1]]), (rows, cols)


@pytest.mark.parametrize("in_size, out_size", [(32, 128), (37, 101), (128, 85), (7, 7), (1, 5)])
def test_reach_is_every_output_whose_taps_touch_the_source_range(in_size, out_size):
    first, second, _ = mask_upscaling.bilinear_taps(in_size, out_size)
    for low in range(in_size):
        for high in range(low, in_size):
            touched = ((first >= low) & (first <= high)) | ((second >= low) & (second <= high))
            where = torch.nonzero(touched).flatten()
            expected = None if where.numel() == 0 else (int(where[0]), int(where[-1]) + 1)
            assert mask_upscaling._reach(in_size, out_size, low, high) == expected


def test_input_frame_block_covers_every_positive_pixel_of_the_frame():
    low = torch.full((32, 32), -4.0)
    low[10:14, 15:18] = 3.0
    frame = transforms.resize_bilinear(low[None], (128, 128))[0, :100, :90]  # cropped to the input
    values, (row0, col0) = input_frame_block(low, (128, 128), (100, 90), 0.0, margin=1)
    assert torch.equal(values, frame[row0 : row0 + values.shape[0], col0 : col0 + values.shape[1]])
    outside = frame.clone()
    outside[row0 : row0 + values.shape[0], col0 : col0 + values.shape[1]] = -1
    assert (frame > 0).any() and not (outside > 0).any()
    assert values.numel() < frame.numel() / 20  # a compact object: a small block
    assert (values[0] <= 0).all() and (values[:, -1] <= 0).all()  # the margin
    low[:] = -4.0
    low[30:, 30:] = 3.0  # positive only in the padding beyond the crop
    assert input_frame_block(low, (128, 128), (100, 90), 0.0) is None


@pytest.mark.parametrize("sharp", [False, True])
@pytest.mark.parametrize("shape", [(128, 128), (300, 200), (70, 100), (2000, 1500)])
def test_upscale_mask_of_a_compact_object_equals_the_whole_frame_path(
    tiny_sam_model, shape, sharp, monkeypatch
):
    """The full-size mask, its crop and predict's masks equal resizing the whole frame, while
    only a block of the frame around the object is resized. ``sharp``: logits so high that the
    frame is positive up to the edge of the block, where the second resize reads one pixel
    beyond it."""
    p = SamPredictor(tiny_sam_model)
    p.set_image(np.zeros((*shape, 3), np.uint8))
    low = torch.randn(32, 32, generator=torch.Generator().manual_seed(2)) - 6
    low[5:9, 6:11] += 10
    if sharp:
        low = torch.full((32, 32), -1.0)
        low[5:9, 6:11] = 100.0
    frame = p._input_frame_logits(low[None])[0]
    expected = torch.zeros(shape, dtype=torch.bool)
    if tuple(frame.shape) == shape:
        expected = frame > 0
    else:
        upscale_into(frame, expected)
    assert expected.any()
    resized = []
    resize = transforms.resize_bilinear
    monkeypatch.setattr(
        transforms, "resize_bilinear", lambda m, size: resized.append(size) or resize(m, size)
    )
    np.testing.assert_array_equal(p.upscale_mask(low.numpy()), expected.numpy())
    assert resized and all(h * w <= 40 * 40 for h, w in resized), resized  # not 128 x 128
    window, (row0, col0) = p.upscale_mask(low.numpy(), crop=True)
    rebuilt = np.zeros(shape, bool)
    rebuilt[row0 : row0 + window.shape[0], col0 : col0 + window.shape[1]] = window
    np.testing.assert_array_equal(rebuilt, expected.numpy())
    assert window.size < expected.numel() / 4
    masks = p._upscale_all(low[None, None], False, torch.device("cpu"))[0, 0]
    assert torch.equal(masks, expected)
    low[:] = -5.0
    assert not p.upscale_mask(low.numpy()).any()
    assert p.upscale_mask(low.numpy(), crop=True)[0].shape == (0, 0)
    low[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        p.upscale_mask(low.numpy())


def test_a_compact_mask_on_a_huge_plane_touches_only_its_window(tiny_sam_hf_folder):
    """The full-size (12000² = 137 MiB) mask of a small object costs about its window in memory
    (and time): the untouched rest of the all-False array is never written."""
    code = textwrap.dedent(
        f"""
        import resource, numpy as np, torch
        from napari_segany.sam import load_sam, transforms
        from napari_segany.sam.predictor import SamEmbedding, SamPredictor, model_identity
        model = load_sam({str(tiny_sam_hf_folder)!r}, precision="fp32")
        p = SamPredictor(model)
        size = (12000, 12000)
        features = torch.zeros(1, 32, 8, 8)
        input_size = transforms.model_input_size(size, model.image_size, "longest_side")
        p.set_embedding_state(SamEmbedding(features, size, input_size, model_identity(model)))
        low = np.full((3, 32, 32), -8.0, np.float32)
        low[:, 10:12, 20:23] = 6.0
        p.upscale_mask(low, 0)  # warm up
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        masks = [p.upscale_mask(low, i) for i in range(3)]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((peak - base) / 1024, int(masks[0].sum()), masks[0].shape[0])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    extra_mb, area, side = out.stdout.split()
    assert int(side) == 12000 and 0 < int(area) < 12000**2 / 100
    assert float(extra_mb) < 60, extra_mb  # three full masks written in full: 412 MiB


def test_empty_mask_computes_nothing():
    out = torch.zeros(50, 60, dtype=torch.bool)
    upscale_into(torch.full((10, 12), -3.0), out)
    assert not out.any()
    assert foreground_window(torch.full((10, 12), -3.0), (50, 60), 0.0) is None


@pytest.fixture
def predictor(tiny_sam_model):
    p = SamPredictor(tiny_sam_model)
    image = np.random.default_rng(2).integers(0, 255, (300, 200, 3)).astype(np.uint8)
    p.set_image(image)
    return p


BOXES = np.array([[10.0, 20.0, 80.0, 120.0], [100.0, 150.0, 190.0, 290.0], [5, 5, 195, 295]])


def test_lazy_upscaling_gives_the_masks_of_predict(predictor):
    masks, scores, low_res = predictor.predict(box=BOXES)
    none, scores_lazy, low_res_lazy = predictor.predict(box=BOXES, return_low_res_only=True)
    assert none is None
    np.testing.assert_array_equal(scores, scores_lazy)
    np.testing.assert_array_equal(low_res, low_res_lazy)
    for b in range(len(BOXES)):
        best = int(np.argmax(scores[b]))
        full = predictor.upscale_mask(low_res, (b, best))
        np.testing.assert_array_equal(full, masks[b, best])
        window, (row0, col0) = predictor.upscale_mask(low_res, (b, best), crop=True)
        rebuilt = np.zeros_like(full)
        rebuilt[row0 : row0 + window.shape[0], col0 : col0 + window.shape[1]] = window
        np.testing.assert_array_equal(rebuilt, full)
        assert window.size <= full.size
    single_masks, _, single_low = predictor.predict(box=BOXES[0])
    np.testing.assert_array_equal(predictor.upscale_mask(single_low, 1), single_masks[1])
    logits = predictor.upscale_mask(single_low, 1, return_logits=True)
    np.testing.assert_array_equal(logits > 0, single_masks[1])
    with pytest.raises(ValueError, match="does not select one"):
        predictor.upscale_mask(low_res, 0)


def test_predict_torch_and_predict_agree(predictor):
    masks, _, _ = predictor.predict(box=BOXES, multimask_output=False)
    boxes_t = torch.as_tensor(predictor.apply_boxes(BOXES, predictor.original_size)).float()
    masks_t, _, _ = predictor.predict_torch(None, None, boxes_t, multimask_output=False)
    np.testing.assert_array_equal(masks_t.numpy(), masks)


def test_many_boxes_are_decoded_in_batches(predictor, monkeypatch):
    import napari_segany.sam.predictor as module

    batches = []
    original = predictor.model.decode

    def spy(features, **kwargs):
        batches.append(0 if kwargs["boxes"] is None else len(kwargs["boxes"]))
        return original(features, **kwargs)

    monkeypatch.setattr(predictor.model, "decode", spy)
    monkeypatch.setattr(module, "BOXES_PER_DECODE", 2)
    boxes = np.tile(BOXES, (2, 1))  # 6 boxes
    masks, scores, low_res = predictor.predict(box=boxes, multimask_output=False)
    assert batches == [2, 2, 2]
    assert masks.shape == (6, 1, 300, 200) and scores.shape == (6, 1)
    np.testing.assert_array_equal(masks[:3], masks[3:])


@pytest.mark.slow
def test_eight_boxes_on_a_large_image_stay_within_budget(tmp_path, tiny_sam_hf_folder):
    """Peak RSS above set_image: the boolean masks plus little (the old path held 8 x 3 floats)."""
    code = textwrap.dedent(
        f"""
        import resource, numpy as np
        from napari_segany.sam import load_sam
        from napari_segany.sam.predictor import SamPredictor
        p = SamPredictor(load_sam({str(tiny_sam_hf_folder)!r}, precision="fp32"))
        side = 3000
        p.set_image(np.zeros((side, side), np.uint8))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rng = np.random.default_rng(0)
        x0 = rng.uniform(0, side / 2, 8); y0 = rng.uniform(0, side / 2, 8)
        boxes = np.stack([x0, y0, x0 + side / 2, y0 + side / 2], 1)
        masks, _, _ = p.predict(box=boxes, multimask_output=True)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((peak - base) / 1024, masks.nbytes / 2**20)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600
    )
    extra_mb, masks_mb = map(float, out.stdout.split())
    # 8 x 3 float32 maps would be 824 MiB; the booleans are 206 MiB
    assert extra_mb < masks_mb + 150, (extra_mb, masks_mb)


def test_cpu_allocator_failure_becomes_a_clear_out_of_memory_error():
    message = "[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: you tried to allocate 27648000000 bytes."
    with pytest.raises(OutOfMemoryError, match="out of memory while upscaling.*fewer boxes"):
        with explain_out_of_memory("upscaling 24 masks", "use fewer boxes"):
            raise RuntimeError(message)
    with pytest.raises(MemoryError):  # OutOfMemoryError is a MemoryError
        with explain_out_of_memory("x"):
            raise MemoryError()
    with pytest.raises(RuntimeError, match="unrelated"):  # other errors pass through
        with explain_out_of_memory("x"):
            raise RuntimeError("unrelated")
    assert is_out_of_memory(RuntimeError(message))
    assert not is_out_of_memory(ValueError("nope"))


def test_predict_reports_out_of_memory_with_advice(predictor, monkeypatch):
    def no_memory(*args, **kwargs):
        raise RuntimeError(
            "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"
        )

    monkeypatch.setattr(predictor, "_upscale_all", no_memory)
    with pytest.raises(OutOfMemoryError, match="fewer boxes"):
        predictor.predict(box=BOXES)


def test_segment_everything_out_of_memory_suggests_tiles(predictor, monkeypatch):
    from napari_segany.jobs import run_to_completion
    from napari_segany.sam.automatic import segment_everything

    def no_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 GB")

    monkeypatch.setattr(predictor, "set_image", no_memory)
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(OutOfMemoryError, match="tile_size"):
        run_to_completion(segment_everything(predictor, image, points_per_side=4))
