"""Parameter sections of the Segment Anything widget (plain forms, no logic).

Each is a magicgui form the widget mounts in a collapsed section
(:meth:`~napari_segany._napari._qt.dock_form.DockForm.add_section`).
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, LineEdit, SpinBox

from napari_segany.sam.propagation import PropagationSettings

WHOLE_STACK = "whole stack"
CURRENT_SLICE = "current slice"


class EverythingSection(Container):
    """Parameters of *Segment everything* (defaults equal the reference generator's)."""

    def __init__(self) -> None:
        self.scope = ComboBox(
            label="scope", choices=[CURRENT_SLICE, WHOLE_STACK], value=CURRENT_SLICE
        )
        self.points_per_side = SpinBox(label="points per side", value=32, min=1, max=256)
        self.pred_iou_thresh = FloatSpinBox(
            label="pred. IoU thresh", value=0.88, min=0, max=1, step=0.01
        )
        self.stability_score_thresh = FloatSpinBox(
            label="stability thresh", value=0.95, min=0, max=1, step=0.01
        )
        self.box_nms_thresh = FloatSpinBox(
            label="box NMS thresh", value=0.7, min=0, max=1, step=0.01
        )
        self.crop_n_layers = SpinBox(label="crop layers", value=0, min=0, max=3)
        self.min_mask_region_area = SpinBox(label="min region area", value=0, min=0, max=10**7)
        super().__init__(
            widgets=[
                self.scope,
                self.points_per_side,
                self.pred_iou_thresh,
                self.stability_score_thresh,
                self.box_nms_thresh,
                self.crop_n_layers,
                self.min_mask_region_area,
            ]
        )

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``segment_everything``."""
        return {
            "points_per_side": int(self.points_per_side.value),
            "pred_iou_thresh": float(self.pred_iou_thresh.value),
            "stability_score_thresh": float(self.stability_score_thresh.value),
            "box_nms_thresh": float(self.box_nms_thresh.value),
            "crop_n_layers": int(self.crop_n_layers.value),
            "min_mask_region_area": int(self.min_mask_region_area.value),
        }


class AdvancedSection(Container):
    """Propagation stop rules and the embedding cache."""

    def __init__(self) -> None:
        self._stack_shape: tuple[int, ...] | None = None
        self.axis = ComboBox(
            label="along axis",
            choices=lambda _widget: stack_axis_choices(self._stack_shape or ()),
            tooltip="The stack axis Propagate walks along (for T×Z×Y×X: axis 0 is T, axis 1 is "
            "Z); by default the last one, next to the image plane",
        )
        self.direction = ComboBox(
            label="propagate",
            choices=["both", "forward", "backward"],
            value="both",
            tooltip="Direction along the chosen stack axis",
        )
        self.min_score = FloatSpinBox(
            label="stop below IoU",
            value=0.5,
            min=0,
            max=1,
            step=0.05,
            tooltip="Propagation stops on a slice where SAM's predicted IoU is lower",
        )
        self.min_area = SpinBox(
            label="stop below area",
            value=10,
            min=0,
            max=10**7,
            tooltip="Propagation stops on a slice where the object has fewer pixels",
        )
        self.use_mask_prompt = CheckBox(text="use previous mask as prompt", value=False)
        self.cache_items = SpinBox(
            label="cached embeddings",
            value=64,
            min=1,
            max=100000,
            tooltip="Most image embeddings kept in memory (one is 4 MiB for SAM)",
        )
        self.cache_folder = LineEdit(
            label="cache folder",
            tooltip="Optional folder where embeddings are also stored, reused after restarts",
        )
        super().__init__(
            widgets=[
                self.axis,
                self.direction,
                self.min_score,
                self.min_area,
                self.use_mask_prompt,
                self.cache_items,
                self.cache_folder,
            ]
        )

    def set_stack_shape(self, stack_shape: tuple[int, ...]) -> None:
        """Offer the axes of an image whose leading (non-plane) axes have sizes ``stack_shape``.

        A new shape resets the choice to the last axis (the default); the same shape keeps it.
        """
        stack_shape = tuple(int(n) for n in stack_shape)
        if stack_shape == self._stack_shape:
            return
        self._stack_shape = stack_shape
        self.axis.reset_choices()
        if stack_shape:
            self.axis.value = len(stack_shape) - 1
        self.axis.enabled = len(stack_shape) > 1

    def propagation(self) -> PropagationSettings:
        """The propagation settings shown."""
        axis = self.axis.value
        return PropagationSettings(
            direction=str(self.direction.value),
            min_score=float(self.min_score.value),
            min_area=int(self.min_area.value),
            use_mask_prompt=bool(self.use_mask_prompt.value),
            axis=None if axis is None else int(axis),
        )


def stack_axis_choices(stack_shape: tuple[int, ...]) -> list[tuple[str, int]]:
    """ComboBox choices ``("axis i (n slices)", i)`` for the leading axes of an image."""
    return [(f"axis {i} ({n} slices)", i) for i, n in enumerate(stack_shape)]
