"""finetune_sam in decoder mode on a tiny random SAM and synthetic bright disks."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_segany.training import FinetuneSettings, finetune_sam, iter_finetune_sam


def test_decoder_mode_freezes_the_encoders_and_trains_the_decoder(tiny_sam_model, decoder_run):
    before, result = decoder_run
    after = tiny_sam_model.state_dict()
    # The base model is untouched.
    assert all(torch.equal(before[k], after[k]) for k in before)
    tuned = result.model.state_dict()
    for key, value in before.items():
        if key.startswith(("image_encoder.", "prompt_encoder.")):
            assert torch.equal(tuned[key], value), key
    changed = [
        k for k in before if k.startswith("mask_decoder.") and not torch.equal(tuned[k], before[k])
    ]
    assert len(changed) > 10
    # The frozen parts are shared, not copied.
    assert result.model.image_encoder is tiny_sam_model.image_encoder
    assert set(result.changed) == {
        f"mask_decoder.{k}" for k in tiny_sam_model.mask_decoder.state_dict()
    }


def test_loss_falls_and_box_iou_rises_on_training_objects(decoder_run):
    _, result = decoder_run
    history = np.asarray(result.history)
    assert len(history) == 400 and result.stopped == "steps"
    assert history[-40:].mean() < 0.6 * history[:40].mean()
    before, after = result.metrics["before"], result.metrics["after"]
    assert after["objects"] == before["objects"] == 16
    assert after["box_iou"] > before["box_iou"] + 0.3
    assert after["point_iou"] > before["point_iou"] + 0.2
    assert result.improved is True
    for name in ("iou_1_click", "iou_3_clicks", "clicks_to_90", "reached_90"):
        assert name in after


def test_generator_yields_progress_and_stop_keeps_the_best_state(tiny_sam_model, disk_data):
    images, labels, val_images, val_labels = disk_data
    stop = threading.Event()
    job = iter_finetune_sam(
        tiny_sam_model,
        images,
        labels,
        settings=FinetuneSettings(steps=1000, learning_rate=3e-3, validate_every=5),
        val_images=val_images,
        val_labels=val_labels,
        stop_event=stop,
    )
    stages = []
    while True:
        try:
            report = next(job)
        except StopIteration as end:
            result = end.value
            break
        stages.append(report.stage)
        if report.stage == "training" and report.done == 12:
            stop.set()
    assert stages[0] == "embedding" and "evaluating" in stages and stages[-1] == "done"
    assert result.stopped == "cancelled" and result.steps_done == 12
    assert result.best_step in {s for s, _ in result.val_history}
    best_val = min(v for _, v in result.val_history)
    assert dict(result.val_history)[result.best_step] == best_val
    assert "after" in result.metrics


def test_time_budget_sets_the_step_count(tiny_sam_model, disk_data):
    images, labels, _, _ = disk_data
    result = finetune_sam(tiny_sam_model, images[:2], labels[:2], time_budget_s=2.0)
    assert result.stopped in ("steps", "time")
    assert result.steps_done > 3
    assert result.timings["total_s"] < 2.0 + 1.5


def test_small_objects_only_is_an_error(tiny_sam_model):
    labels = np.zeros((128, 128), np.int32)
    labels[10:14, 10:14] = 1  # 16 px < 25
    with pytest.raises(ValueError, match="no labelled object"):
        finetune_sam(tiny_sam_model, np.zeros((128, 128)), labels, steps=2)


@pytest.mark.parametrize("mode", ["decoder", "lora"])
def test_bfloat16_base_model_trains_in_float32_and_stays_bfloat16(
    tiny_sam_hf_folder, disk_data, mode
):
    from napari_segany.sam import load_sam

    model = load_sam(tiny_sam_hf_folder, precision="bf16")
    images, labels, val_images, val_labels = disk_data
    result = finetune_sam(
        model,
        images[:2],
        labels[:2],
        mode=mode,
        steps=6,
        val_images=val_images[:1],
        val_labels=val_labels[:1],
    )
    assert result.model.dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 for v in result.changed.values())
    assert np.isfinite(result.history).all()
    assert 0.0 <= result.metrics["after"]["box_iou"] <= 1.0
    decoder = dict(result.model.mask_decoder.named_parameters())
    for key, value in result.changed.items():
        if key.startswith("mask_decoder.") and key[len("mask_decoder.") :] in decoder:
            torch.testing.assert_close(
                decoder[key[len("mask_decoder.") :]].float(), value.to(torch.bfloat16).float()
            )


@pytest.mark.slow
def test_bfloat16_autocast_training_also_learns(tiny_sam_model, disk_data):
    """The default on CPUs with native bfloat16 (training_precision="auto"): forward in bf16."""
    images, labels, _, _ = disk_data
    result = finetune_sam(
        tiny_sam_model,
        images,
        labels,
        steps=200,
        val_images=images,
        val_labels=labels,
        settings=FinetuneSettings(learning_rate=3e-3, patience=1000, training_precision="bf16"),
    )
    history = np.asarray(result.history)
    assert history[-40:].mean() < 0.85 * history[:40].mean()
    assert result.metrics["after"]["box_iou"] > result.metrics["before"]["box_iou"] + 0.08
    assert result.model.dtype == torch.float32  # weights stay in the model's dtype


def test_unknown_training_precision_is_refused():
    with pytest.raises(ValueError, match="training_precision"):
        FinetuneSettings(training_precision="fp8")


def test_stop_during_the_embeddings_keeps_the_base_decoder(tiny_sam_model, disk_data):
    images, labels, _, _ = disk_data
    stop = threading.Event()
    stop.set()
    job = iter_finetune_sam(tiny_sam_model, images, labels, stop_event=stop)
    embedded = 0
    while True:
        try:
            report = next(job)
        except StopIteration as end:
            result = end.value
            break
        embedded += report.stage == "embedding"
    assert embedded < len(images)
    assert result.steps_done == 0 and result.stopped == "cancelled"
    for key, value in tiny_sam_model.mask_decoder.state_dict().items():
        torch.testing.assert_close(result.changed[f"mask_decoder.{key}"], value.float())
