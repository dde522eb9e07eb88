"""The *Segment Anything* dock widget: click and box prompts to labels, interactive and threaded.

Thin by design (STYLE rule 7): it reads layers into arrays (:mod:`.sam_layers`), hands them to the
pure session (:class:`~napari_segany.sam.interactive_session.InteractiveSamSession`), runs long
work as generator jobs on a :class:`~.background_task.BackgroundTask`, and writes layers only on
the main thread.

How it works for the user:

- the widget adds a *SAM points* layer (positive points green, negative red; ``T`` toggles the
  kind of the next point) and a *SAM boxes* layer (each rectangle is one object);
- every prompt change (debounced) updates the *SAM preview* layer; the image embedding of the
  shown slice is computed once in the background (progress + cancel) and cached;
- ``N`` / *Next candidate* cycles through SAM's three candidate masks; ``C`` / *Commit* writes the
  object(s) into the output labels layer with the next free ids (one undo step), without
  overwriting other labels unless *overwrite* is ticked, and clears the prompts;
- *refine label* > 0 uses that label as SAM's mask prompt and replaces it on commit;
- *Propagate through stack* (along the stack axis chosen under *Propagation and cache*),
  *Precompute stack embeddings* and *Segment everything* are background jobs too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton, SpinBox
from qtpy.QtCore import QTimer

from napari_segany._napari import sam_layers as glue
from napari_segany._napari.background_task import BackgroundTask
from napari_segany._napari.model_picker import ModelChoice, ModelPicker
from napari_segany._napari.sam_preview_decoder import PreviewDecoder
from napari_segany._napari.sam_prompt_layers import SamPromptLayers
from napari_segany._napari.sam_stack_actions import SamStackActions
from napari_segany._napari.sam_widget_sections import (
    WHOLE_STACK,
    AdvancedSection,
    EverythingSection,
    collapsible,
)
from napari_segany.sam.embedding_cache import EmbeddingCache, EmbeddingKey
from napari_segany.sam.interactive_session import InteractiveSamSession, SamPrompts

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels

logger = logging.getLogger(__name__)

NEW_LAYER = "new layer"
DEBOUNCE_MS = 120


def load_sam_model(source: str, device: str, precision: str) -> Any:
    """Model loader given to the picker (runs in a worker thread)."""
    from napari_segany.sam import load_sam

    return load_sam(source, device=device, precision=precision)


def sam_model_names() -> list[str]:
    """Registry names offered in the model box."""
    from napari_segany.sam.registry import SAM_MODELS

    return list(SAM_MODELS)


@dataclass
class SliceContext:
    """Everything one preview/commit refers to: image, slice, cache key and prompts."""

    image_layer: Image
    slice_index: tuple[int, ...]
    key: EmbeddingKey
    prompts: SamPrompts
    version: int


class SamWidget(Container):
    """Dock widget for interactive SAM segmentation of 2D images and stacks.

    Parameters
    ----------
    napari_viewer
        The viewer (napari injects it).
    session
        The session to use (a new one by default); tests inject one with a custom predictor.
    """

    def __init__(
        self, napari_viewer: napari.viewer.Viewer, *, session: InteractiveSamSession | None = None
    ) -> None:
        self.viewer = napari_viewer
        self.session = (
            session if session is not None else InteractiveSamSession(cache=EmbeddingCache(64))
        )
        self.layers = SamPromptLayers(
            napari_viewer,
            self._prompts_changed,
            {"t": self.toggle_point_kind, "n": self.next_candidate, "c": self.commit},
            points_only_keys=("t",),
        )
        self._version = 0
        self._shown: SliceContext | None = None
        self._shown_predictions: list = []
        self._failed_choice: ModelChoice | None = None
        self._after_model: Callable[[], None] | None = None
        self._cancelled_key: EmbeddingKey | None = None
        self._last_error = ""
        self._last_committed: tuple[int, tuple[int, ...]] | None = None
        self.image_box = ComboBox(label="image", choices=self._image_choices)
        self.model_picker = ModelPicker(sam_model_names(), load_sam_model, default="sam-vit-b")
        self.output_box = ComboBox(label="output labels", choices=self._labels_choices)
        self.overwrite = CheckBox(text="overwrite existing labels", value=False)
        self.refine_label = SpinBox(
            label="refine label",
            value=0,
            min=0,
            max=2**31 - 1,
            tooltip="0: commit a new object. Otherwise that label is the mask prompt and is "
            "replaced on commit; also the label Propagate carries through the stack.",
        )
        self.point_kind = Label(value="next point: positive (T toggles)")
        self.toggle_button = PushButton(text="Toggle +/− (T)")
        self.candidate_button = PushButton(text="Next candidate (N)")
        self.commit_button = PushButton(text="Commit (C)")
        self.clear_button = PushButton(text="Clear prompts")
        self.status = Label(value="")
        self.precompute_button = PushButton(text="Precompute stack embeddings")
        self.propagate_button = PushButton(text="Propagate through stack")
        self.everything_button = PushButton(text="Segment everything")
        super().__init__(
            widgets=[
                self.image_box,
                self.model_picker,
                self.output_box,
                self.overwrite,
                self.refine_label,
                self.point_kind,
                Container(
                    widgets=[self.toggle_button, self.candidate_button],
                    layout="horizontal",
                    labels=False,
                ),
                Container(
                    widgets=[self.commit_button, self.clear_button],
                    layout="horizontal",
                    labels=False,
                ),
                self.status,
                self.precompute_button,
                self.propagate_button,
                self.everything_button,
            ]
        )
        self.everything = EverythingSection()
        self.advanced = AdvancedSection()
        self.task = BackgroundTask(notify_error=self._notify_error)
        layout = self.native.layout()
        layout.addWidget(collapsible("Segment everything parameters", self.everything))
        layout.addWidget(collapsible("Propagation and cache", self.advanced))
        layout.addWidget(self.task)
        self.stack_actions = SamStackActions(self.session, self.task, self.layers, self._set_status)

        self.decoder = PreviewDecoder(
            self.session,
            self._show_preview,
            lambda exc: self._notify_error(f"SAM could not decode the prompts: {exc}"),
            self.schedule_preview,
        )
        self._closed = False
        self._timer = QTimer(self.native)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self._update_preview)

        self.toggle_button.changed.connect(self.toggle_point_kind)
        self.candidate_button.changed.connect(self.next_candidate)
        self.commit_button.changed.connect(self.commit)
        self.clear_button.changed.connect(self.clear_prompts)
        self.precompute_button.changed.connect(self.precompute_stack)
        self.propagate_button.changed.connect(self.propagate)
        self.everything_button.changed.connect(self.segment_everything)
        self.image_box.changed.connect(self._image_changed)
        self.model_picker.changed.connect(self._model_changed)
        self.refine_label.changed.connect(self.schedule_preview)
        self.advanced.cache_items.changed.connect(self._cache_changed)
        self.advanced.cache_folder.changed.connect(self._cache_changed)
        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.changed):
            event.connect(self._layers_changed)
        self.viewer.dims.events.current_step.connect(self.schedule_preview)
        self.task.busy_changed.connect(self._task_busy_changed)
        self.native.destroyed.connect(self._close)
        self._image_changed()

    def _close(self, *_: Any) -> None:
        """The Qt widget is gone: stop reacting to viewer and layer events."""
        self._closed = True
        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.changed):
            event.disconnect(self._layers_changed)
        self.viewer.dims.events.current_step.disconnect(self.schedule_preview)
        for layer in (self.layers.points, self.layers.shapes):
            if layer is not None:
                layer.events.data.disconnect(self._prompts_changed)

    # -- layer bookkeeping --------------------------------------------------------------------

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

    def _layers_changed(self, event: Any = None) -> None:
        if self._closed:
            return
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
        """The widget's prompt boxes layer."""
        return self.layers.shapes

    @property
    def preview_layer(self) -> Any:
        """The widget's preview labels layer (created with the first preview)."""
        return self.layers.preview

    def _image_changed(self, *_: Any) -> None:
        image = self.image_layer
        if image is not None:
            self.layers.ensure_prompt_layers(image)
            self.output_box.reset_choices()
            self.advanced.set_stack_shape(glue.spatial_shape(image)[:-2])
        self.schedule_preview()

    # -- prompts ------------------------------------------------------------------------------

    def toggle_point_kind(self, *_: Any) -> None:
        """Switch whether the next point added is positive or negative."""
        kind = self.layers.set_positive(not self.layers.positive)
        self.point_kind.value = f"next point: {kind} (T toggles)"

    def current_context(self) -> SliceContext:
        """Image, shown slice, cache key and prompts on that slice.

        Raises
        ------
        ValueError
            No usable image layer, a view other than the image's last two axes in 2D, or
            prompts outside the image.
        """
        image = self.image_layer
        glue.check_image_layer(image)
        glue.check_plane_displayed(self.viewer.dims)
        slice_index = glue.slice_index_at(image, self.viewer.dims.point)
        world = self.viewer.dims.point
        points, labels = glue.points_on_slice(self.points_layer, image, slice_index, world)
        boxes = glue.boxes_on_slice(self.shapes_layer, image, slice_index, world)
        mask = None
        output = self.output_box.value
        if (
            self.refine_label.value
            and output is not None
            and output.data.shape == glue.spatial_shape(image)
        ):
            mask = np.asarray(output.data[slice_index]) == int(self.refine_label.value)
        prompts = SamPrompts(points, labels, boxes, mask)
        plane_shape = glue.spatial_shape(image)[-2:]
        glue.check_prompts_inside(prompts, plane_shape)
        key = (
            self.session.embedding_key(
                str(image.unique_id), slice_index, glue.contrast_limits_of(image)
            )
            if self.session.has_model
            else EmbeddingKey(str(image.unique_id), slice_index, "", "")
        )
        return SliceContext(image, slice_index, key, prompts, self._version)

    def _task_busy_changed(self, busy: bool) -> None:
        if not busy:
            self.schedule_preview()  # prompts added while a job ran get their preview now

    def _prompts_changed(self, *_: Any) -> None:
        self._cancelled_key = None  # a cancelled embedding is retried after a prompt change
        self.schedule_preview()

    def schedule_preview(self, *_: Any) -> None:
        """Note a prompt/slice change; the preview updates after a short debounce."""
        if self._closed:
            return
        self._version += 1
        self._timer.start()

    @property
    def is_idle(self) -> bool:
        """No job, no decoding and no pending preview update (tests wait for this)."""
        return not (self.task.is_running or self.decoder.busy or self._timer.isActive())

    def _update_preview(self) -> None:
        if not any(
            layer is not None and len(layer.data)
            for layer in (self.points_layer, self.shapes_layer)
        ):
            self._clear_preview()  # no prompt anywhere: nothing to check or show
            self._last_error = ""
            return
        try:
            context = self.current_context()
        except ValueError as exc:
            self._clear_preview()
            if self.image_layer is not None and str(exc) != self._last_error:
                self._last_error = str(exc)
                self._notify_error(str(exc))
            return
        self._last_error = ""
        if context.prompts.is_empty:
            self._clear_preview()
            return
        if not self._ensure_model():
            return
        context.key = self.session.embedding_key(
            str(context.image_layer.unique_id),
            context.slice_index,
            glue.contrast_limits_of(context.image_layer),
        )
        if context.key == self._cancelled_key:
            return  # the user cancelled this slice's embedding: wait for a prompt change
        if not self.session.has_embedding(context.key):
            self._start_embedding(context)
            return
        self._start_decoding(context)

    def _ensure_model(self, then: Callable[[], None] | None = None) -> bool:
        """Whether the session holds the picked model; starts loading it otherwise.

        ``then`` is called once the model is loaded (when loading had to start).
        """
        choice = self.model_picker.choice
        if self.session.has_model and self.session.model_id == _model_id(choice):
            return True
        if self.task.is_running or (choice == self._failed_choice and then is None):
            return False
        self._after_model = then
        try:
            self.model_picker.request_model(
                self.task, self._model_ready, on_error=lambda exc: self._model_failed(choice, exc)
            )
        except ValueError as exc:
            self._failed_choice = choice
            self._notify_error(str(exc))
        return False

    def _model_ready(self, model: Any, choice: ModelChoice) -> None:
        self.session.set_model(model, _model_id(choice), choice.precision)
        self.status.value = f"model: {choice.source}"
        then, self._after_model = self._after_model, None
        self.schedule_preview()
        if then is not None:
            then()

    def _model_failed(self, choice: ModelChoice, exc: BaseException) -> None:
        from napari_segany._napari.background_task import describe_failure

        self._failed_choice = choice
        self._after_model = None
        self._notify_error(describe_failure(f"Loading model {choice.source!r}", exc))

    def _model_changed(self, *_: Any) -> None:
        self._failed_choice = None
        self.schedule_preview()

    def _cache_changed(self, *_: Any) -> None:
        folder = str(self.advanced.cache_folder.value).strip() or None
        self.session.cache = EmbeddingCache(int(self.advanced.cache_items.value), disk_dir=folder)

    def _start_embedding(self, context: SliceContext) -> None:
        if self.task.is_running:
            return
        layer, slice_index = context.image_layer, context.slice_index

        def aborted() -> None:
            self._cancelled_key = context.key
            self.status.value = "embedding cancelled; change a prompt to try again"

        self.task.start(
            self.session.compute_embedding,
            context.key,
            lambda: glue.read_slice(layer, slice_index),
            description="Computing the image embedding",
            on_returned=lambda _key: self.schedule_preview(),
            on_aborted=aborted,
        )

    def _start_decoding(self, context: SliceContext) -> None:
        self.decoder.request(context)

    def _show_preview(self, context: SliceContext, predictions: list) -> None:
        if context.version != self._version:
            self.decoder.again = True  # prompts changed meanwhile: this result is stale
            return
        self._shown = context
        self._shown_predictions = predictions
        self._draw_preview()

    def _draw_preview(self) -> None:
        context = self._shown
        if context is None:
            return
        masks = self.session.chosen_masks(self._shown_predictions)
        self.layers.show_preview(context.image_layer, context.slice_index, masks)
        self.output_box.reset_choices()
        scores = ", ".join(f"{s:.2f}" for s in self.session.chosen_scores(self._shown_predictions))
        rank = self.session.candidate_offset % 3 + 1
        self.status.value = f"{len(masks)} object(s), candidate {rank}/3, predicted IoU {scores}"

    def _clear_preview(self) -> None:
        self._shown = None
        self._shown_predictions = []
        self.layers.clear_preview()

    def next_candidate(self, *_: Any) -> None:
        """Show SAM's next candidate mask for each object."""
        if self._shown is None:
            return
        self.session.cycle_candidate()
        self._draw_preview()

    def clear_prompts(self, *_: Any) -> None:
        """Delete all points and boxes and the preview."""
        self.layers.clear_prompts()
        self.session.clear_prompts()
        self._clear_preview()
        self.schedule_preview()

    # -- writing ------------------------------------------------------------------------------

    def output_layer(self, image: Image) -> Labels:
        """The chosen output labels layer, created (and selected) when *new layer* is chosen."""
        layer = self.output_box.value
        if layer is None:
            layer = glue.new_labels_layer(image, "SAM labels")
            self.layers.add_below_prompts(layer)
            self.output_box.reset_choices()
            self.output_box.value = layer
        glue.check_labels_fit(layer, image)
        return layer

    def commit(self, *_: Any) -> list[int]:
        """Write the previewed object(s) into the output labels layer; returns their label ids."""
        context = self._shown
        if (
            context is None
            or context.version != self._version
            or self.decoder.busy
            or self._timer.isActive()
        ):
            self._notify_error(
                "nothing to commit yet: add points or boxes and wait for the preview"
                if context is None
                else "the preview is still being updated; commit again in a moment"
            )
            return []
        masks = [m for m in self.session.chosen_masks(self._shown_predictions) if m.any()]
        if not masks:
            self._notify_error("the preview is empty: add or move prompts before committing")
            return []
        try:
            labels = self.output_layer(context.image_layer)
        except ValueError as exc:
            self._notify_error(str(exc))
            return []
        refine = int(self.refine_label.value) or None
        ids = glue.write_masks(
            labels,
            context.slice_index,
            masks,
            overwrite=bool(self.overwrite.value),
            replace_label=refine,
            label_ids=[refine] if refine and len(masks) == 1 else None,
        )
        self._last_committed = (ids[-1], context.slice_index)
        self.refine_label.value = 0
        self.clear_prompts()
        self.status.value = f"committed label(s) {', '.join(map(str, ids))}"
        return ids

    # -- stack jobs ---------------------------------------------------------------------------

    def _job_context(self, action: Callable[[], None]) -> SliceContext | None:
        """Context for a stack job, or ``None`` (error shown, or ``action`` re-run after loading)."""
        try:
            context = self.current_context()
        except ValueError as exc:
            self._notify_error(str(exc))
            return None
        if self.task.is_running:
            self._notify_error(f"{self.task.description!r} is still running; wait or press Cancel")
            return None
        if not self._ensure_model(then=action):
            return None
        return context

    def precompute_stack(self, *_: Any) -> None:
        """Compute the embeddings of every slice of the stack in the background."""
        context = self._job_context(self.precompute_stack)
        if context is not None:
            self.stack_actions.precompute(context.image_layer, on_finished=self.schedule_preview)

    def propagate(self, *_: Any) -> None:
        """Carry the committed object (or *refine label*) through the stack, in the background."""
        context = self._job_context(self.propagate)
        if context is None:
            return
        labels = self.output_box.value
        label = int(self.refine_label.value) or (self._last_committed or (0, ()))[0]
        if labels is None or not label:
            self._notify_error(
                "propagation needs an output labels layer and a committed object (or a 'refine "
                "label'): commit an object on one slice first"
            )
            return
        try:
            self.stack_actions.propagate(
                context.image_layer,
                context.slice_index,
                labels,
                label,
                self.advanced.propagation(),
                overwrite=bool(self.overwrite.value),
            )
        except ValueError as exc:
            self._notify_error(str(exc))
        else:
            self._clear_preview()

    def segment_everything(self, *_: Any) -> None:
        """Automatic segmentation of the shown slice or the whole stack into a new labels layer."""
        context = self._job_context(self.segment_everything)
        if context is None:
            return
        shape = glue.spatial_shape(context.image_layer)
        whole = self.everything.scope.value == WHOLE_STACK
        slices = list(np.ndindex(*shape[:-2])) if whole else [context.slice_index]
        self.stack_actions.segment_everything(
            context.image_layer, slices, self.everything.options()
        )

    # -- messages -----------------------------------------------------------------------------

    def _set_status(self, message: str) -> None:
        self.status.value = message

    def _notify_error(self, message: str) -> None:
        from napari.utils.notifications import show_error

        self.status.value = message.splitlines()[0][:120]
        show_error(message)


def _model_id(choice: ModelChoice) -> str:
    return f"{choice.source}|{choice.device}"
