"""SegGptPredictor: per-block progress and cancellation (``on_block``), device transfer."""

from __future__ import annotations

import numpy as np
import pytest
import torch


class Cancelled(Exception):
    pass


def _prompt(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), rng.integers(0, 3, (32, 32))


def test_on_block_reports_progress_and_cancels(tiny_seggpt_predictor):
    predictor = tiny_seggpt_predictor
    image, labels = _prompt()
    calls: list[tuple[int, int]] = []
    predictor.set_prompts([image], [labels], on_block=lambda *args: calls.append(args))
    arch = predictor.model.arch
    assert calls == [(i, arch.merge_index + 1) for i in range(1, arch.merge_index + 2)]

    targets = [_prompt(seed)[0] for seed in (1, 2, 3)]
    calls.clear()
    expected = predictor.predict_batch(targets, batch_size=2)
    got = [
        result[1]
        for result in predictor.iter_predictions(
            targets, batch_size=2, on_block=lambda *args: calls.append(args)
        )
    ]
    total = max(arch.feature_indices) + 1
    assert calls == [(i, total) for i in range(1, total + 1)] * 2  # two batches
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)

    def cancel(done: int, total: int) -> None:
        if done == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        list(predictor.iter_predictions(targets, on_block=cancel))
    state = predictor._state
    with pytest.raises(Cancelled):
        predictor.set_prompts([image], [labels], on_block=lambda done, total: cancel(2, total))
    assert predictor._state is state  # a cancelled set_prompts keeps the previous prompts


@pytest.mark.gpu
def test_cuda_batched_targets_match_one_by_one(tiny_seggpt_hf_folder):
    """On CUDA (pinned, non-blocking transfers), a batch of targets gives the one-by-one results."""
    from napari_segany.seggpt import SegGptPredictor, load_seggpt

    predictor = SegGptPredictor(load_seggpt(tiny_seggpt_hf_folder, device="cuda", precision="fp32"))
    image, labels = _prompt()
    predictor.set_prompts([image], [labels])
    targets = [_prompt(seed)[0] for seed in range(1, 6)]
    batched = predictor.predict_batch(targets, batch_size=5)
    single = [predictor.predict(t) for t in targets]
    for a, b in zip(batched, single, strict=True):
        assert (a != b).mean() < 1e-3
    assert torch.cuda.is_available()
