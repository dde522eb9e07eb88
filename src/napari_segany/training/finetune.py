"""Fine-tune SAM on labelled objects: the decoder (default) or decoder + LoRA on the last block.

``iter_finetune_sam`` is the job generator (STYLE rule 8): it yields :class:`FinetuneProgress`
and returns a :class:`FinetuneResult`; ``finetune_sam`` is its synchronous wrapper.

The method: the image encoder and prompt encoder stay frozen, so the encoder runs once per tile
(:mod:`~napari_segany.training.prepared_tiles`); each step decodes prompts for up to
``objects_per_step`` objects of one tile, cycling through jittered boxes (one mask), interior
points (three masks, best-of-three loss) and point + one correction click with the previous mask
as input. Loss: Dice + BCE on the low-resolution logits plus MSE between predicted and real IoU.
AdamW with linear warm-up and cosine decay; with held-out data the model is validated regularly,
the best state is kept and training stops early when it no longer improves. A time budget sets
the step count from the measured time of the first steps. The base model is never modified.

Memory: the cached tiles (see prepared_tiles) plus a float32 copy of the decoder (~4 M
parameters) and, in LoRA mode, of the last encoder block and the neck.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from napari_segany.jobs import run_to_completion
from napari_segany.training.evaluation import EvaluationObject, evaluate_prompting, metrics_improved
from napari_segany.training.prepared_tiles import (
    PreparedTile,
    prepare_tile,
)
from napari_segany.training.saved_model import (
    assemble_finetuned_sam,
    base_fingerprint,
    export_merged_checkpoint,
    save_finetuned,
)
from napari_segany.training.settings import MODES, FinetuneProgress, FinetuneSettings
from napari_segany.training.tiles import tiles_from_labels
from napari_segany.training.trainer import FinetuneTrainer, learning_rate_at

__all__ = [
    "MODES",
    "FinetuneProgress",
    "FinetuneResult",
    "FinetuneSettings",
    "finetune_sam",
    "iter_finetune_sam",
]


@dataclass
class FinetuneResult:
    """What fine-tuning produced.

    Attributes
    ----------
    model
        The fine-tuned :class:`~napari_segany.models.sam.Sam` (frozen parts shared with the base).
    history
        Training loss per step.
    val_history
        (step, held-out loss) pairs.
    metrics
        ``{"before": {...}, "after": {...}}`` on the held-out data (empty without it); see
        :func:`~napari_segany.training.evaluation.evaluate_prompting`.
    improved
        Whether the fine-tuned model beats the base on the held-out data (None without it).
    changed
        The trained tensors (float32): ``mask_decoder.*`` and ``lora.blocks.<i>.*``.
    """

    model: Any
    history: list[float]
    val_history: list[tuple[int, float]]
    metrics: dict[str, dict[str, float]]
    improved: bool | None
    changed: dict[str, torch.Tensor]
    settings: FinetuneSettings
    steps_done: int
    best_step: int
    stopped: str  # "steps", "time", "early stop" or "cancelled"
    timings: dict[str, float]
    base_model: Any = field(repr=False, default=None)
    provenance: dict[str, Any] = field(default_factory=dict)

    def sidecar(self, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON sidecar describing this model (see :mod:`~napari_segany.training.saved_model`)."""
        import datetime

        base = self.base_model
        architecture = getattr(base, "architecture", None)
        lora = None
        if self.settings.mode == "lora":
            lora = {
                "block": len(base.image_encoder.blocks) - 1,
                "rank": self.settings.lora_rank,
                "alpha": self.settings.lora_alpha,
                "targets": ["q", "v"],
            }
        return {
            "name": self.model.name,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017 (Python 3.10)
            "mode": self.settings.mode,
            "base": {
                "source": _absolute_if_path(str(base.name)),
                "fingerprint": base_fingerprint(base),
                "architecture": asdict(architecture) if architecture is not None else None,
                "dtype_at_training": str(base.dtype),
            },
            "lora": lora,
            "preprocessing": asdict(base.preprocessing) if base.preprocessing else None,
            "training": {
                **asdict(self.settings),
                "steps_done": self.steps_done,
                "best_step": self.best_step,
                "stopped": self.stopped,
                "timings": self.timings,
            },
            "labels": {**self.provenance, **(provenance or {})},
            "metrics": self.metrics,
            "improved": self.improved,
        }

    def save(self, folder, *, provenance: dict[str, Any] | None = None):
        """Write the changed weights and the sidecar into ``folder``; ``load_sam(folder)`` reads it.

        ``provenance`` (JSON-able) records where the labels came from (layer names, slices).
        """
        return save_finetuned(folder, self.changed, self.sidecar(provenance))

    def export_merged(self, path):
        """Write the full fine-tuned model in the original SAM ``.pth`` layout."""
        return export_merged_checkpoint(self.model, path)


def _absolute_if_path(source: str) -> str:
    """A base model's source as recorded: paths made absolute, registry names and ids kept."""
    from pathlib import Path

    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


def finetune_sam(
    model,
    images,
    labels,
    *,
    mode: str = "decoder",
    steps: int | None = None,
    time_budget_s: float | None = None,
    val_images=None,
    val_labels=None,
    seed: int = 0,
    progress: Callable[[FinetuneProgress], None] | None = None,
    settings: FinetuneSettings | None = None,
) -> FinetuneResult:
    """Fine-tune a SAM model on labelled objects and return the result (synchronous).

    Parameters
    ----------
    model
        A :class:`~napari_segany.models.sam.Sam` from :func:`~napari_segany.sam.load_sam`; not
        modified.
    images, labels
        One (H, W) / (H, W, 3) image and (H, W) integer labels (0 unlabelled), an (N, H, W) stack
        with (N, H, W) labels, or sequences of those. Sparse labels are fine.
    mode
        ``"decoder"`` (default, fast) or ``"lora"`` (decoder + rank-4 adapters on q and v of the
        last encoder block; slower on the CPU).
    steps, time_budget_s
        Training length (see :class:`FinetuneSettings`).
    val_images, val_labels
        Held-out data (same forms): early stopping, best state, before/after metrics.
    seed
        Makes prompt sampling and the order of tiles reproducible.
    progress
        Called with every :class:`FinetuneProgress`.
    settings
        Further settings; ``mode``, ``steps``, ``time_budget_s`` and ``seed`` override its fields.
    """
    settings = replace(
        settings or FinetuneSettings(),
        mode=mode,
        steps=steps,
        time_budget_s=time_budget_s,
        seed=seed,
    )
    job = iter_finetune_sam(
        model, images, labels, settings=settings, val_images=val_images, val_labels=val_labels
    )
    if progress is None:
        return run_to_completion(job)
    while True:
        try:
            progress(next(job))
        except StopIteration as stop:
            return stop.value


def _evaluation_tiles(model, tiles: Sequence[PreparedTile], *, adapted_block: bool):
    """EvaluationObjects that set each tile's embedding; with ``adapted_block`` the cached tokens
    go through ``model``'s own last encoder block and neck."""
    from napari_segany.sam.predictor import SamEmbedding, model_identity

    identity = model_identity(model)
    out = []
    for tile in tiles:
        features = tile.features
        if adapted_block:
            encoder = model.image_encoder
            with torch.no_grad():
                x = encoder.blocks[-1](tile.tokens.to(model.dtype))
                features = encoder.neck(x.permute(0, 3, 1, 2))
        state = SamEmbedding(
            features.to(model.dtype), tile.original_size, tile.input_size, identity
        )
        out.append(
            EvaluationObject(
                tile.labels,
                tuple(o.value for o in tile.objects),
                lambda predictor, state=state: predictor.set_embedding_state(state),
            )
        )
    return out


def iter_finetune_sam(
    model,
    images,
    labels,
    *,
    settings: FinetuneSettings | None = None,
    val_images=None,
    val_labels=None,
    stop_event: threading.Event | None = None,
    provenance: dict[str, Any] | None = None,
) -> Generator[FinetuneProgress, None, FinetuneResult]:
    """Fine-tuning as a job generator: yields progress, returns a :class:`FinetuneResult`.

    Arguments as :func:`finetune_sam`. Setting ``stop_event`` ends training at the next step;
    the best state so far is kept, evaluated and returned (so a GUI cancel loses nothing).
    ``provenance`` is stored in the saved sidecar.
    """
    from napari_segany.sam.predictor import SamPredictor

    s = settings or FinetuneSettings()
    started = time.perf_counter()
    rng = np.random.default_rng(s.seed)
    torch.manual_seed(s.seed)
    stop_event = stop_event or threading.Event()
    keep_tokens = s.mode == "lora"

    raw = tiles_from_labels(
        images,
        labels,
        tile_size=model.image_size,
        min_object_pixels=s.min_object_pixels,
        max_tiles=s.max_tiles,
        contrast_limits=s.contrast_limits,
    )
    if not raw:
        raise ValueError(f"no labelled object of at least {s.min_object_pixels} pixels to train on")
    raw_val = []
    if val_images is not None and val_labels is not None:
        raw_val = tiles_from_labels(
            val_images,
            val_labels,
            tile_size=model.image_size,
            min_object_pixels=s.min_object_pixels,
            max_tiles=s.max_tiles,
            contrast_limits=s.contrast_limits,
        )
    predictor = SamPredictor(model)
    tiles: list[PreparedTile] = []
    val_tiles: list[PreparedTile] = []
    n_embed = len(raw) + len(raw_val)
    for i, tile in enumerate(raw + raw_val):
        yield FinetuneProgress(
            "embedding", i, n_embed, message=f"image embedding {i + 1}/{n_embed}"
        )
        if stop_event.is_set() and tiles:  # stopped early: train on nothing, keep the base
            break
        prepared = prepare_tile(
            predictor, tile, rng, keep_tokens=keep_tokens, min_edge_distance=s.min_edge_distance
        )
        (tiles if i < len(raw) else val_tiles).append(prepared)
    predictor.reset_image()
    timings = {"embedding_s": time.perf_counter() - started}

    metrics: dict[str, dict[str, float]] = {}
    eval_s = 0.0
    if val_tiles:
        yield FinetuneProgress(
            "evaluating", 0, 2, message="scoring the base model on held-out data"
        )
        t0 = time.perf_counter()
        metrics["before"] = evaluate_prompting(
            SamPredictor(model),
            _evaluation_tiles(model, val_tiles, adapted_block=False),
            max_clicks=s.eval_max_clicks,
            seed=s.seed,
        )
        eval_s = time.perf_counter() - t0
        timings["evaluation_s"] = eval_s

    trainer = FinetuneTrainer(model, s)
    kinds = ["box", "point"] + (["correction"] if s.correction_clicks else [])
    total = s.steps if s.steps is not None else (None if s.time_budget_s else s.default_steps)
    provisional = total or s.default_steps
    warmup = s.warmup_steps or int(min(50, max(1, 0.05 * provisional)))
    validate_every = s.validate_every or max(5, provisional // 20)
    history: list[float] = []
    val_history: list[tuple[int, float]] = []
    best_score, best_step, best_state = math.inf, 0, trainer.changed()
    smoothed = None
    stale = 0
    stopped = "steps"
    order: list[int] = []
    train_started = time.perf_counter()
    step_times: list[float] = []
    val_s = 0.0
    step = 0
    last_scored = -1
    while True:
        if total is not None and step >= total:
            break
        if stop_event.is_set():
            stopped = "cancelled"
            break
        if s.time_budget_s is not None:
            elapsed = time.perf_counter() - started
            if elapsed + eval_s >= s.time_budget_s and step > 0:
                stopped = "time"
                break
        if not order:
            order = list(rng.permutation(len(tiles)))
        tile = tiles[order.pop()]
        chosen = rng.permutation(len(tile.objects))[: s.objects_per_step]
        objects = [tile.objects[i] for i in chosen]
        lr = learning_rate_at(step, total or provisional, warmup, s)
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        parts = trainer.loss(tile, objects, kinds[step % len(kinds)], rng)
        trainer.optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        trainer.optimizer.step()
        step_times.append(time.perf_counter() - t0)
        loss = float(parts.total.detach())
        history.append(loss)
        step += 1
        smoothed = loss if smoothed is None else 0.9 * smoothed + 0.1 * loss

        if total is None and step == s.timing_steps:
            # The budget left after the final evaluation, spent at the measured pace.
            per_step = float(np.mean(step_times[1:] or step_times))
            per_step *= 1.0 + 0.02 * len(val_tiles)  # validation overhead, roughly
            left = s.time_budget_s - (time.perf_counter() - started) - eval_s
            total = step + max(0, int(left / per_step))
            validate_every = s.validate_every or max(5, total // 20)
            warmup = s.warmup_steps or int(min(50, max(1, 0.05 * total)))

        val_loss = None
        if step % validate_every == 0 or (total is not None and step >= total):
            last_scored = step
            if val_tiles:
                t0 = time.perf_counter()
                val_loss = trainer.validation_loss(val_tiles)
                val_s += time.perf_counter() - t0
                val_history.append((step, val_loss))
                score = val_loss
            else:
                score = smoothed
            if score < best_score - 1e-6:
                best_score, best_step, best_state, stale = score, step, trainer.changed(), 0
            else:
                stale += 1
            if val_tiles and stale >= s.patience:
                stopped = "early stop"
                yield FinetuneProgress(
                    "training", step, total or step, loss, val_loss, "stopped early"
                )
                break
        yield FinetuneProgress(
            "training", step, total or provisional, loss, val_loss, f"step {step}, loss {loss:.4f}"
        )
    if step > 0 and step != last_scored:
        # Score the last state too (it is the best without held-out data and a fresh validation).
        score = trainer.validation_loss(val_tiles) if val_tiles else smoothed
        if val_tiles:
            val_history.append((step, score))
        if score is not None and (score < best_score - 1e-6 or not val_tiles):
            best_score, best_step, best_state = score, step, trainer.changed()
    timings.update(
        training_s=time.perf_counter() - train_started,
        seconds_per_step=float(np.mean(step_times)) if step_times else 0.0,
        validation_s=val_s,
    )
    trainer.load_changed(best_state)
    finetuned = assemble_finetuned_sam(model, best_state, lora_alpha=s.lora_alpha)
    improved = None
    if val_tiles:
        yield FinetuneProgress("evaluating", 1, 2, message="scoring the fine-tuned model")
        metrics["after"] = evaluate_prompting(
            SamPredictor(finetuned),
            _evaluation_tiles(finetuned, val_tiles, adapted_block=keep_tokens),
            max_clicks=s.eval_max_clicks,
            seed=s.seed,
        )
        improved = metrics_improved(metrics["before"], metrics["after"])
    timings["total_s"] = time.perf_counter() - started
    yield FinetuneProgress("done", step, step, history[-1] if history else None, message=stopped)
    return FinetuneResult(
        model=finetuned,
        history=history,
        val_history=val_history,
        metrics=metrics,
        improved=improved,
        changed=best_state,
        settings=replace(s, steps=s.steps),
        steps_done=step,
        best_step=best_step,
        stopped=stopped,
        timings=timings,
        base_model=model,
        provenance=dict(provenance or {}),
    )
