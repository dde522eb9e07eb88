"""How well a SAM model segments labelled objects from simulated prompts (before/after tables).

For every object: IoU from its tight box; IoU from its centre point (the most confident of the
three masks); IoU after 1 and 3 simulated correction clicks (each click at the centre of the
largest error, the previous mask's logits given as ``mask_input``); and the number of clicks
(the centre point counts as one) until IoU reaches 90 %, ``1 + max_clicks`` when never reached
(the usual NoC@90 convention). Prompts go through :class:`~napari_segany.sam.SamPredictor`, so the
figures are those of the inference path the widgets use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from napari_segany.training.prompts import correction_click, object_prompts

__all__ = ["METRIC_NAMES", "EvaluationObject", "evaluate_prompting", "metrics_improved"]

METRIC_NAMES = {
    "box_iou": "Box IoU",
    "point_iou": "Centre-point IoU",
    "iou_1_click": "IoU after 1 click",
    "iou_3_clicks": "IoU after 3 clicks",
    "clicks_to_90": "Clicks to 90 % IoU",
}


@dataclass(frozen=True)
class EvaluationObject:
    """One tile's labels and the objects to score on it.

    Attributes
    ----------
    labels
        (h, w) integer labels of the tile.
    object_ids
        Label values to score.
    set_image
        Puts the tile's embedding into a predictor (``set_image`` or ``set_embedding_state``).
    """

    labels: np.ndarray
    object_ids: tuple[int, ...]
    set_image: Callable


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def evaluate_prompting(
    predictor,
    tiles: Iterable[EvaluationObject],
    *,
    max_clicks: int = 5,
    seed: int = 0,
) -> dict[str, float]:
    """Mean metrics over every object of ``tiles`` (see the module docstring).

    Parameters
    ----------
    predictor
        A :class:`~napari_segany.sam.SamPredictor` of the model to score.
    tiles
        Tiles with their objects; each tile's ``set_image(predictor)`` is called once.
    max_clicks
        Correction clicks simulated per object (at least 3).

    Returns
    -------
    dict
        ``box_iou``, ``point_iou``, ``iou_1_click``, ``iou_3_clicks``, ``clicks_to_90``,
        ``reached_90`` (fraction of objects) and ``objects`` (count).
    """
    max_clicks = max(int(max_clicks), 3)
    rng = np.random.default_rng(seed)
    rows: list[list[float]] = []
    for tile in tiles:
        tile.set_image(predictor)
        for value in tile.object_ids:
            target = tile.labels == value
            prompts = object_prompts(target, rng)
            masks, _, _ = predictor.predict(box=prompts.box, multimask_output=False)
            box_iou = _iou(masks[0], target)
            ious = _click_sequence(
                predictor, target, prompts.centre, prompts.dilated_box, max_clicks
            )
            reached = [i for i, value in enumerate(ious) if value >= 0.9]
            clicks = reached[0] + 1 if reached else max_clicks + 1
            rows.append([box_iou, ious[0], ious[1], ious[3], clicks, float(bool(reached))])
    if not rows:
        return {"objects": 0}
    table = np.asarray(rows)
    names = ["box_iou", "point_iou", "iou_1_click", "iou_3_clicks", "clicks_to_90", "reached_90"]
    result = {name: float(table[:, i].mean()) for i, name in enumerate(names)}
    result["objects"] = len(rows)
    return result


def _click_sequence(
    predictor,
    target: np.ndarray,
    centre: np.ndarray,
    dilated_box: np.ndarray,
    max_clicks: int,
) -> list[float]:
    """IoU after the centre point and after each of ``max_clicks`` correction clicks."""
    points = [centre]
    labels = [1]
    masks, scores, low_res = predictor.predict(
        point_coords=np.asarray(points), point_labels=np.asarray(labels), multimask_output=True
    )
    best = int(np.argmax(scores))
    mask, logits = masks[best], low_res[best]
    ious = [_iou(mask, target)]
    x0, y0, x1, y1 = (int(v) for v in dilated_box)
    # Errors are looked for around the object; IoU counts the whole tile.
    window = (slice(y0, y1), slice(x0, x1))
    for _ in range(max_clicks):
        click = correction_click(mask[window], target[window])
        if click is None:
            ious.append(ious[-1])
            continue
        point, label = click
        points.append(point + np.array([x0, y0]))
        labels.append(label)
        masks, _, low_res = predictor.predict(
            point_coords=np.asarray(points),
            point_labels=np.asarray(labels),
            mask_input=logits[None],
            multimask_output=False,
        )
        mask, logits = masks[0], low_res[0]
        ious.append(_iou(mask, target))
    return ious


def metrics_improved(before: dict[str, float], after: dict[str, float]) -> bool:
    """Whether ``after`` beats ``before``: mean of box, point and 1-click IoU up by > 0.005."""
    keys: Sequence[str] = ("box_iou", "point_iou", "iou_1_click")
    if not all(k in before and k in after for k in keys):
        return False
    gain = np.mean([after[k] - before[k] for k in keys])
    return bool(gain > 0.005)
