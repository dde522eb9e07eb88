"""The layers the Segment Anything widget creates and manages: points, boxes and preview.

- *SAM points*: positive points green, negative points red (feature ``"prompt"``); which kind the
  next click adds is the layer's feature default, switched by :meth:`SamPromptLayers.set_positive`.
- *SAM boxes*: a Shapes layer whose rectangles are SAM boxes, one object each.
- *SAM preview*: a uint8 Labels layer over the image (same shape and placement) showing the
  current object(s) on the shown slice, and propagation results while they arrive.

All three are placed exactly on the image layer (scale and translation), so a click lands on the
pixel under the cursor; the prompts are still read through world coordinates
(:mod:`.sam_layers`), so moving a layer does not break anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_segany._napari import sam_layers as glue
from napari_segany._napari.layer_io import (
    bounding_box,
    insert_layer,
    new_labels_layer,
    slice_key_at,
    spatial_shape,
)

if TYPE_CHECKING:
    from napari.layers import Image, Labels

    import napari

POINTS_NAME = "SAM points"
BOXES_NAME = "SAM boxes"
PREVIEW_NAME = "SAM preview"
POSITIVE_COLOR = "lime"
NEGATIVE_COLOR = "red"

PARTIAL_REFRESH_FRACTION = 16
"""A preview change of more than 1/16 of the plane redraws the whole slice (cheaper than
napari's per-pixel partial update); smaller changes redraw only their region."""

ROLE_KEY = "napari_segany_role"
"""Layer metadata key telling other widgets what a layer is for."""
INTERNAL_ROLE = "sam internal"
"""The SAM widget's own points, boxes and preview layers: never offered as inputs or outputs."""
SAM_OUTPUT_ROLE = "sam output"
"""A labels layer the SAM widget committed objects into (SegGPT's default prompt labels)."""


def mark_role(layer: Any, role: str) -> None:
    """Record in ``layer.metadata`` what the layer is for (:data:`ROLE_KEY`)."""
    layer.metadata = {**layer.metadata, ROLE_KEY: role}


def role_of(layer: Any) -> str | None:
    """The role recorded by :func:`mark_role`, or ``None``."""
    return (getattr(layer, "metadata", None) or {}).get(ROLE_KEY)


class SamPromptLayers:
    """Creates, tracks and updates the widget's own layers in one viewer.

    Parameters
    ----------
    viewer
        The napari viewer.
    on_prompts_changed
        Called whenever points or boxes change.
    key_actions
        Key → callable bound on both prompt layers (e.g. ``{"n": next_candidate}``);
        ``points_only_keys`` are bound on the points layer only.
    points_only_keys
        Keys of ``key_actions`` bound on the points layer only (``"t"`` is the Shapes layer's
        path tool).
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        on_prompts_changed: Callable[..., None],
        key_actions: dict[str, Callable[[], Any]],
        points_only_keys: Sequence[str] = (),
    ) -> None:
        self.viewer = viewer
        self.on_prompts_changed = on_prompts_changed
        self.key_actions = key_actions
        self.points_only_keys = set(points_only_keys)
        self.points: Any = None
        self.shapes: Any = None
        self.preview: Labels | None = None
        self.positive = True
        self._preview_boxes: dict[tuple[int, ...], tuple[slice, slice]] = {}

    def forget_removed(self) -> None:
        """Drop references to managed layers the user deleted."""
        for name in ("points", "shapes", "preview"):
            layer = getattr(self, name)
            if layer is not None and layer not in self.viewer.layers:
                setattr(self, name, None)
                if name == "preview":
                    self._preview_boxes.clear()

    def is_managed(self, layer: Any) -> bool:
        """Whether ``layer`` is one of the three managed layers."""
        return layer is not None and any(
            layer is m for m in (self.points, self.shapes, self.preview)
        )

    # -- prompts ------------------------------------------------------------------------------

    def ensure_prompt_layers(self, image: Image) -> None:
        """Add the points and boxes layers over ``image`` if missing (or of another ndim)."""
        import pandas as pd

        ndim = len(spatial_shape(image))
        placement = {"scale": tuple(image.scale), "translate": tuple(image.translate)}
        for layer in (self.points, self.shapes):
            if layer is not None and layer.ndim != ndim:
                self.viewer.layers.remove(layer)
        self.forget_removed()
        size = max(spatial_shape(image)[-2:])
        if self.points is None:
            self.points = self.viewer.add_points(
                np.zeros((0, ndim)),
                ndim=ndim,
                name=POINTS_NAME,
                size=max(3.0, size / 60),
                features={
                    glue.PROMPT_FEATURE: pd.Categorical(
                        [], categories=[glue.POSITIVE, glue.NEGATIVE]
                    )
                },
                feature_defaults={glue.PROMPT_FEATURE: self._kind()},
                face_color=glue.PROMPT_FEATURE,
                face_color_cycle={glue.POSITIVE: POSITIVE_COLOR, glue.NEGATIVE: NEGATIVE_COLOR},
                border_color="white",
                **placement,
            )
            mark_role(self.points, INTERNAL_ROLE)
            self.points.events.data.connect(self.on_prompts_changed)
            self._bind_keys(self.points, points_layer=True)
        if self.shapes is None:
            self.shapes = self.viewer.add_shapes(
                ndim=ndim,
                name=BOXES_NAME,
                face_color="transparent",
                edge_color="yellow",
                edge_width=max(1.0, size / 200),
                **placement,
            )
            mark_role(self.shapes, INTERNAL_ROLE)
            self.shapes.events.data.connect(self.on_prompts_changed)
            self._bind_keys(self.shapes, points_layer=False)
        self.points.mode = "add"
        self.viewer.layers.selection.active = self.points

    def _bind_keys(self, layer: Any, *, points_layer: bool) -> None:
        for key, action in self.key_actions.items():
            if points_layer or key not in self.points_only_keys:
                layer.bind_key(key, lambda _layer, action=action: action(), overwrite=True)

    def _kind(self) -> str:
        return glue.POSITIVE if self.positive else glue.NEGATIVE

    def set_positive(self, positive: bool) -> str:
        """Make the next point added positive (or negative); returns the kind's name."""
        self.positive = positive
        if self.points is not None:
            self.points.feature_defaults[glue.PROMPT_FEATURE] = self._kind()
        return self._kind()

    def clear_prompts(self) -> None:
        """Delete every point and box."""
        if self.points is not None and len(self.points.data):
            self.points.data = np.zeros((0, self.points.ndim))
        if self.shapes is not None and len(self.shapes.data):
            self.shapes.data = []

    # -- preview ------------------------------------------------------------------------------

    def ensure_preview(self, image: Image) -> Labels:
        """The preview layer over ``image``, added below the prompt layers if missing."""
        shape = spatial_shape(image)
        layer = self.preview
        if layer is not None and tuple(layer.data.shape) != shape:
            self.viewer.layers.remove(layer)
            self.forget_removed()
            layer = None
        if layer is None:
            layer = new_labels_layer(image, PREVIEW_NAME, np.zeros(shape, dtype=np.uint8))
            layer.opacity = 0.5
            mark_role(layer, INTERNAL_ROLE)
            self.preview = layer
            self.add_below_prompts(layer)
        return layer

    def add_below_prompts(self, layer: Any) -> None:
        """Add ``layer`` to the viewer under the managed layers, keeping the active layer active.

        So clicks keep going to the points layer and the prompts stay visible on top. One
        insertion at that place, without selecting the new layer (:func:`.layer_io.insert_layer`),
        keeps napari's main-thread work to the layer's own setup.
        """
        layers = self.viewer.layers
        managed = [
            layers.index(m)
            for m in (self.points, self.shapes, self.preview)
            if m is not None and m is not layer and m in layers
        ]
        insert_layer(layers, min(managed) if managed else len(layers), layer)

    def show_preview(
        self, image: Image, slice_index: tuple[int, ...], masks: Sequence[np.ndarray]
    ) -> None:
        """Replace the preview by ``masks`` (ids 1, 2, ...) on one slice.

        Only the region that changes (the old and new objects' bounding box) is written and
        redrawn, so a small object on a large image costs a small crop.
        """
        layer = self.ensure_preview(image)
        key = tuple(int(i) for i in slice_index)
        for other in [k for k in self._preview_boxes if k != key]:
            self._draw(layer, other, [])
        self._draw(layer, key, masks)

    def add_to_preview(self, image: Image, slice_index: tuple[int, ...], mask: np.ndarray) -> None:
        """Show one more mask (e.g. a propagation step) without clearing other slices."""
        layer = self.ensure_preview(image)
        self._draw(layer, tuple(int(i) for i in slice_index), [mask])

    def clear_preview(self, refresh: bool = True) -> None:
        """Erase every slice the preview has drawn on (one redraw for all of them)."""
        layer = self.preview
        boxes, self._preview_boxes = self._preview_boxes, {}
        if layer is None or not boxes:
            return
        for key, box in boxes.items():
            layer.data[key + box] = 0
        if refresh and self._shown_key(layer) in boxes:
            layer.refresh()  # other slices are read afresh when the viewer moves to them

    def _shown_key(self, layer: Labels) -> tuple[int, ...]:
        """Slice key of ``layer`` on the slice the viewer shows."""
        return slice_key_at(layer, self.viewer.dims.point)

    def _draw(self, layer: Labels, key: tuple[int, ...], masks: Sequence[np.ndarray]) -> None:
        new_box = None
        boxes = []
        for mask in masks:
            box = bounding_box(np.asarray(mask, bool))
            if box is not None:
                boxes.append(box)
        if boxes:
            new_box = _union(boxes)
        old_box = self._preview_boxes.pop(key, None)
        region = _union([b for b in (old_box, new_box) if b is not None])
        if region is None:
            return
        crop = paint_preview(masks, region)
        old = np.asarray(layer.data[key + region])
        changed = crop != old
        n_changed = int(np.count_nonzero(changed))
        plane_pixels = int(np.prod(layer.data.shape[-2:]))
        if n_changed and key != self._shown_key(layer):
            # a slice the viewer does not show (a propagation step): nothing to redraw, napari
            # reads the data afresh when the viewer moves there
            layer.data[key + region] = crop
        elif n_changed > plane_pixels // PARTIAL_REFRESH_FRACTION:
            layer.data[key + region] = crop  # large change: one full redraw is cheaper
            layer.refresh()
        elif n_changed:
            rows, cols = np.nonzero(changed)
            fill = [np.full(rows.size, i, dtype=np.intp) for i in key]
            layer.data_setitem(  # redraws only the changed region
                (*fill, rows + region[0].start, cols + region[1].start), crop[changed]
            )
            if hasattr(layer, "_reset_history"):
                layer._reset_history()  # the preview is not something to undo
        if new_box is not None:
            self._preview_boxes[key] = new_box


def paint_preview(masks: Sequence[np.ndarray], region: tuple[slice, slice]) -> np.ndarray:
    """(h, w) uint8 crop of the preview inside ``region``: mask ``i`` painted with ``i % 254 + 1``
    where no earlier mask is.

    Whole-array arithmetic on the masks' 0/1 bytes, the last mask first and each earlier one
    written over it: boolean indexing took 0.7 s for a speckled mask on a 12000² plane, this
    13 ms for one mask.
    """
    shape = (region[0].stop - region[0].start, region[1].stop - region[1].start)
    crop = np.zeros(shape, np.uint8)
    for i in reversed(range(len(masks))):
        part = np.asarray(masks[i], bool)[region].view(np.uint8)  # 0 or 1
        label = np.uint8(i % 254 + 1)
        if i == len(masks) - 1:
            np.multiply(part, label, out=crop)
        else:
            np.multiply(crop, 1 - part, out=crop)
            crop += part * label
    return crop


def _union(boxes: Sequence[tuple[slice, slice]]) -> tuple[slice, slice] | None:
    if not boxes:
        return None
    return (
        slice(min(b[0].start for b in boxes), max(b[0].stop for b in boxes)),
        slice(min(b[1].start for b in boxes), max(b[1].stop for b in boxes)),
    )
