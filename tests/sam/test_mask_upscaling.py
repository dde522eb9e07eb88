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
from napari_segany.sam import mask_upscaling
from napari_segany.sam.mask_upscaling import foreground_window, upscale_into
from napari_segany.sam.predictor import SamPredictor


@pytest.mark.parametrize(
    "shape, size", [((96, 128), (300, 400)), ((37, 53), (101, 143)), ((128, 85), (1000, 666))]
)
def test_window_upscaling_equals_f_interpolate(shape, size, monkeypatch):
    monkeypatch.setattr(mask_upscaling, "BAND_ELEMENTS", 5000)  # many bands
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
