"""The form of the *Segment Anything* dock widget: its rows, sections and layer choices.

:class:`SamForm` builds the controls (frequent ones on top, the rest in collapsed sections) and
offers the viewer's layers in its boxes; :class:`~.sam_widget.SamWidget` adds the behaviour.
Sections from other parts of the plugin mount with :meth:`~.dock_form.DockForm.add_section`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, PushButton, SpinBox

from napari_segany._napari import layer_io
from napari_segany._napari._qt.background_task import BackgroundTask
from napari_segany._napari._qt.dock_form import DockForm, wrapped_label
from napari_segany._napari._qt.model_picker import ModelPicker
from napari_segany._napari._qt.sam_sections import AdvancedSection, EverythingSection
from napari_segany._napari.sam_prompt_layers import SAM_OUTPUT_ROLE, SamPromptLayers, mark_role

if TYPE_CHECKING:
    from napari.layers import Image, Labels

    import napari

NEW_LAYER = "new layer"


def load_sam_model(source: str, device: str, precision: str) -> Any:
    """Model loader given to the picker (runs in a worker thread)."""
    from napari_segany.sam.loader import load_sam

    return load_sam(source, device=device, precision=precision)


def sam_model_names() -> list[str]:
    """Registry names offered in the model box, then the user's saved fine-tuned models (folders)."""
    from napari_segany.sam.registry import SAM_MODELS
    from napari_segany.training.model_library import list_finetuned_models

    return list(SAM_MODELS) + [str(info.path) for info in list_finetuned_models()]


def row(*widgets: Any) -> Container:
    """Widgets side by side without labels."""
    box = Container(widgets=list(widgets), layout="horizontal", labels=False)
    box.margins = (0, 0, 0, 0)
    return box


class SamForm(DockForm):
    """The controls of the SAM widget, laid out to fit a laptop screen.

    Parameters
    ----------
    napari_viewer
        The viewer whose layers are offered.
    layers
        The widget's managed layers (never offered as outputs).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, layers: SamPromptLayers) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.layers = layers
        self._last_error = ""
        self._committed: tuple[Labels, int] | None = None  # (layer, label) of the last commit
        self._committed_where: tuple[tuple, tuple] = ((), (slice(None), slice(None)))
        self._build_form()

    def _build_form(self) -> None:
        self.image_box = ComboBox(label="image", choices=self._image_choices)
        self.model_picker = ModelPicker(sam_model_names(), load_sam_model, default="sam-vit-b")
        self.output_box = ComboBox(label="output labels", choices=self._labels_choices)
        self.point_kind = wrapped_label("next point: positive (T toggles)")
        self.toggle_button = PushButton(text="Toggle +/− (T)")
        self.candidate_button = PushButton(text="Next candidate (N)")
        self.commit_button = PushButton(text="Commit (C)")
        self.clear_button = PushButton(text="Clear prompts")
        self.status = wrapped_label()
        self.overwrite = CheckBox(text="overwrite existing labels", value=False)
        self.refine_label = SpinBox(
            label="refine label", value=0, min=0, max=2**31 - 1,
            tooltip="0: commit a new object. Otherwise that label is SAM's mask prompt and is "
            "replaced on commit.",
        )  # fmt: skip
        self.propagate_label = SpinBox(
            label="label to propagate", value=0, min=0, max=2**31 - 1,
            tooltip="The object Propagate carries through the stack: the last committed one, "
            "or type any label that is on the shown slice.",
        )  # fmt: skip
        self.propagate_button = PushButton(text="Propagate (SAM)")
        self.seggpt_button = PushButton(
            text="Propagate (SegGPT)",
            tooltip="Hand the output labels to the SegGPT widget and segment the whole stack with them",
        )
        self.precompute_button = PushButton(text="Precompute stack")
        self.everything_button = PushButton(
            text="Segment all",
            tooltip="Segment every object of the shown slice (or the whole stack, see the section below) into a new labels layer",
        )
        self.add_rows(self.image_box, self.output_box)
        self.add_rows(
            self.point_kind,
            row(self.toggle_button, self.candidate_button),
            row(self.commit_button, self.clear_button),
            self.status,
            labels=False,
        )
        self.add_rows(self.overwrite, self.refine_label, self.propagate_label)
        self.add_rows(
            row(self.propagate_button, self.seggpt_button),
            row(self.precompute_button, self.everything_button),
            labels=False,
        )
        self.everything = EverythingSection()
        self.advanced = AdvancedSection()
        self.add_section("Model", Container(widgets=self.model_picker.widgets), expanded=True)
        self.add_section("Segment everything parameters", self.everything)
        self.add_section("Propagation and cache", self.advanced)
        self.finish_form()
        self.task = BackgroundTask(notify_error=self._notify_error)
        self.set_bottom(self.task)

    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _labels_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Labels

        layers = [
            (layer.name, layer)
            for layer in self.viewer.layers
            if isinstance(layer, Labels) and not self.layers.is_managed(layer)
        ]
        return [(NEW_LAYER, None), *layers]

    def _layers_changed(self, *_: Any) -> None:
        if not self._closed:
            self.layers.forget_removed()
            self.image_box.reset_choices()
            self.output_box.reset_choices()

    @property
    def image_layer(self) -> Image | None:
        """The image layer being segmented."""
        return self.image_box.value

    @property
    def points_layer(self) -> Any:
        """The widget's prompt points layer (``None`` until an image is chosen)."""
        return self.layers.points

    @property
    def shapes_layer(self) -> Any:
        """The widget's prompt boxes layer (what the text-prompt section adds boxes to)."""
        return self.layers.shapes

    @property
    def preview_layer(self) -> Any:
        """The widget's preview labels layer (created with the first preview)."""
        return self.layers.preview

    def use_model_source(self, source: str) -> None:
        """Switch the model to a registry name, or a folder / checkpoint path (e.g. fine-tuned)."""
        names = list(self.model_picker.model_box.choices)
        if source in names:
            self.model_picker.model_box.value = source
        else:
            self.model_picker.set_custom_path(str(source))

    def output_layer(self, image: Image) -> Labels:
        """The chosen output labels layer, created (and selected) when *new layer* is chosen."""
        layer = self.output_box.value
        if layer is None:
            layer = layer_io.new_labels_layer(image, "SAM labels")
            mark_role(layer, SAM_OUTPUT_ROLE)
            self.layers.add_below_prompts(layer)
            self.output_box.reset_choices()
            self.output_box.value = layer
        layer_io.check_labels_fit(layer, image)
        return layer

    def remember_commit(self, labels: Labels, label: int, key: tuple, mask: Any) -> None:
        """*label to propagate* becomes ``label``, and is cleared if an undo removes it."""
        previous = self._committed
        if previous is not None:
            previous[0].events.set_data.disconnect(self._check_committed)
        box = layer_io.bounding_box(np.asarray(mask, bool)) or (slice(None), slice(None))
        self._committed = (labels, label)
        self._committed_where = (tuple(key), box)
        self.propagate_label.value = label
        labels.events.set_data.connect(self._check_committed)

    def _check_committed(self, *_: Any) -> None:
        """After an undo (or any edit), drop a committed label that is no longer there."""
        if self._committed is None or int(self.propagate_label.value) != self._committed[1]:
            return
        labels, label = self._committed
        key, box = self._committed_where
        if not (np.asarray(labels.data[key + box]) == label).any():
            self.propagate_label.value = 0
            self._set_status(f"label {label} is gone (undone?): 'label to propagate' is cleared")

    def label_to_propagate(self, slice_index: tuple[int, ...]) -> tuple[Labels, int]:
        """The output layer and the label *Propagate* carries (``ValueError`` if it is absent)."""
        labels, label = self.output_box.value, int(self.propagate_label.value)
        if labels is None or not label:
            raise ValueError(
                "propagation needs an output labels layer and a label to propagate: commit an "
                "object on one slice first, or type its label in 'label to propagate'"
            )
        if not (np.asarray(labels.data[slice_index]) == label).any():
            self.propagate_label.value = 0 if self._committed == (labels, label) else label
            raise ValueError(
                f"label {label} is not on the shown slice (undone or on another slice): go to a "
                "slice that has it or type another label in 'label to propagate'"
            )
        return labels, label

    def _set_status(self, message: str) -> None:
        self.status.value = message

    def _notify_error(self, message: str) -> None:
        from napari.utils.notifications import show_error

        self._last_error = message.splitlines()[0][:200]
        self.status.value = self._last_error
        show_error(message)
