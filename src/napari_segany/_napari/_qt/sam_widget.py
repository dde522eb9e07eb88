"""The *Segment Anything* dock widget: click and box prompts to labels, interactive and threaded.

Thin (STYLE rule 7): layers are read by :mod:`..sam_layers` / :mod:`..layer_io`, the interactive
state lives in the session, the preview timing in a :class:`~.preview_controller.PreviewController`,
long work in :class:`~.sam_stack_actions.SamStackActions`; the controls in :class:`~.sam_form.SamForm`.

For the user: a *SAM points* layer (positive green, negative red; ``T`` toggles) and a *SAM
boxes* layer (one object per rectangle); every prompt change updates the *SAM preview* at once
(the image embedding of the shown slice is computed once in the background, cancellable);
``N`` cycles SAM's candidates; ``C`` commits into the output labels with the next free ids (one
undo step; nothing labelled is overwritten unless *overwrite*); *refine label* uses a label as
the mask prompt and replaces it; *label to propagate* (the last committed one by default) is
carried through the stack by SAM, or handed to the SegGPT widget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from napari_segany._napari import layer_io
from napari_segany._napari import sam_layers as glue
from napari_segany._napari._qt.background_task import describe_failure
from napari_segany._napari._qt.model_picker import ModelChoice
from napari_segany._napari._qt.preview_controller import PreviewController
from napari_segany._napari._qt.sam_form import SamForm, load_sam_model, sam_model_names
from napari_segany._napari._qt.sam_sections import WHOLE_STACK
from napari_segany._napari._qt.sam_stack_actions import SamStackActions
from napari_segany._napari.sam_prompt_layers import SAM_OUTPUT_ROLE, SamPromptLayers, mark_role
from napari_segany.sam.embedding_cache import EmbeddingCache
from napari_segany.sam.interactive_session import InteractiveSamSession

__all__ = ["SamWidget", "load_sam_model", "sam_model_names"]

if TYPE_CHECKING:
    from napari.layers import Labels

    import napari


class SamWidget(SamForm):
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
        keys = {"t": self.toggle_point_kind, "n": self.next_candidate, "c": self.commit}
        super().__init__(
            napari_viewer, SamPromptLayers(napari_viewer, self._prompts_changed, keys, ("t",))
        )
        self.session = session or InteractiveSamSession(cache=EmbeddingCache(64))
        self.preview = PreviewController(
            self.session,
            on_tick=self._update_preview,
            on_result=self._show_preview,
            on_error=self._decode_failed,
            parent=self,
        )
        self.stack_actions = SamStackActions(self.session, self.task, self.layers, self._set_status)
        self._shown: glue.SliceContext | None = None
        self._failed: tuple[Any, ...] | None = None  # what failed; retried after a user change
        self._closed = False
        self._connect()
        self._image_changed()
        from napari_segany._napari._qt.text_prompt_section import mount_text_prompt_section

        self.text_prompt = mount_text_prompt_section(self)  # Grounded SAM (issue 10)

    def _connect(self) -> None:
        self.toggle_button.changed.connect(self.toggle_point_kind)
        self.candidate_button.changed.connect(self.next_candidate)
        self.commit_button.changed.connect(self.commit)
        self.clear_button.changed.connect(self.clear_prompts)
        self.precompute_button.changed.connect(self.precompute_stack)
        self.propagate_button.changed.connect(self.propagate)
        self.seggpt_button.changed.connect(self.propagate_with_seggpt)
        self.everything_button.changed.connect(self.segment_everything)
        self.image_box.changed.connect(self._image_changed)
        self.model_picker.changed.connect(self._model_changed)
        self.refine_label.changed.connect(self._user_changed)
        self.advanced.cache_items.changed.connect(self._cache_changed)
        self.advanced.cache_folder.changed.connect(self._cache_changed)
        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.changed):
            event.connect(self._layers_changed)
        self.viewer.dims.events.current_step.connect(self.preview.request)
        self.task.busy_changed.connect(self._task_busy_changed)
        self.destroyed.connect(self._close)

    def _close(self, *_: Any) -> None:
        """The Qt widget is gone: stop reacting to viewer and layer events."""
        self._closed = True
        self.preview.close()
        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.changed):
            event.disconnect(self._layers_changed)
        self.viewer.dims.events.current_step.disconnect(self.preview.request)
        for layer in (self.layers.points, self.layers.shapes):
            if layer is not None:
                layer.events.data.disconnect(self._prompts_changed)

    def _image_changed(self, *_: Any) -> None:
        image = self.image_layer
        if image is not None:
            self.layers.ensure_prompt_layers(image)
            self.output_box.reset_choices()
            self.advanced.set_stack_shape(layer_io.spatial_shape(image)[:-2])
        self._user_changed()

    def toggle_point_kind(self, *_: Any) -> None:
        """Switch whether the next point added is positive or negative."""
        kind = self.layers.set_positive(not self.layers.positive)
        self.point_kind.value = f"next point: {kind} (T toggles)"

    def current_context(self) -> glue.SliceContext:
        """Image, shown slice, cache key and prompts on that slice (``ValueError`` if unusable)."""
        return glue.read_slice_context(
            self.viewer.dims, self.image_layer, self.points_layer, self.shapes_layer,
            self.output_box.value, int(self.refine_label.value), self.session, self.preview.version,
        )  # fmt: skip

    def _prompts_changed(self, event: Any = None) -> None:
        if str(getattr(event, "action", "")).lower() in ("adding", "removing", "changing"):
            return  # the matching "added"/"removed"/"changed" event follows
        self._user_changed(immediate=True)

    def _user_changed(self, *_: Any, immediate: bool = False) -> None:
        if self._failed is not None and self._failed[0] == "embedding":
            self._failed = None  # a user change is the signal to try a failed embedding again
        self.preview.request(immediate=immediate)

    def _model_changed(self, *_: Any) -> None:
        self._failed = None  # another model choice: try loading again
        self.preview.request()

    def _task_busy_changed(self, busy: bool) -> None:
        if busy and self._last_error:
            self._last_error = ""
            self.status.value = ""  # a new run clears the previous run's error
        if not busy:
            self.preview.request()  # prompts added while a job ran get their preview now

    @property
    def is_idle(self) -> bool:
        """No job, no result being written, no pending preview update (tests wait for this)."""
        return not (self.task.is_running or self.preview.pending or self.stack_actions.writing)

    def _update_preview(self) -> None:
        if not any(
            layer is not None and len(layer.data)
            for layer in (self.points_layer, self.shapes_layer)
        ):
            self._clear_preview()
            return
        try:
            context = self.current_context()
        except ValueError as exc:
            self._clear_preview()
            if self.image_layer is not None and str(exc) != self._last_error:
                self._notify_error(str(exc))
            return
        if context.prompts.is_empty:
            self._clear_preview()
            return
        if not self._ensure_model():
            return
        context.key = self.session.embedding_key(
            str(context.image_layer.unique_id),
            context.slice_index,
            layer_io.contrast_limits_of(context.image_layer),
        )
        if self.session.has_embedding(context.key):
            self.preview.decode(context)
        elif self._failed != ("embedding", context.key) and not self.task.is_running:
            self._start_embedding(context)

    def _ensure_model(self, then: Any = None) -> bool:
        """Whether the session holds the picked model; starts loading it otherwise."""
        choice = self.model_picker.choice
        if self.session.has_model and self.session.model_id == _model_id(choice):
            return True
        if self.task.is_running or (self._failed == ("model", choice) and then is None):
            return False
        try:
            self.model_picker.request_model(
                self.task,
                lambda model, c: self._model_ready(model, c, then),
                on_error=lambda exc: self._failed_step(
                    ("model", choice), f"Loading {choice.source!r}", exc
                ),
                on_aborted=lambda: self._set_status("model loading cancelled"),
            )
        except ValueError as exc:
            self._failed = ("model", choice)
            self._notify_error(str(exc))
        return False

    def _model_ready(self, model: Any, choice: ModelChoice, then: Any) -> None:
        self.session.set_model(model, _model_id(choice), choice.precision)
        self._set_status(f"model: {choice.source}")
        self.preview.request()
        if then is not None:
            then()

    def _failed_step(self, what: tuple[Any, ...], description: str, exc: BaseException) -> None:
        self._failed = what  # not retried until the user changes something
        self._notify_error(describe_failure(description, exc))

    def _cache_changed(self, *_: Any) -> None:
        folder = str(self.advanced.cache_folder.value).strip() or None
        self.session.cache = EmbeddingCache(int(self.advanced.cache_items.value), disk_dir=folder)

    def _start_embedding(self, context: glue.SliceContext) -> None:
        layer, key = context.image_layer, context.slice_index

        def aborted() -> None:
            self._failed = ("embedding", context.key)
            self._set_status("embedding cancelled; change a prompt to try again")

        self.task.start(
            self.session.compute_embedding,
            context.key,
            lambda: layer_io.read_slice(layer, key),
            should_stop=self.task.stop_requested,
            description="Computing the image embedding",
            on_returned=lambda _key: self.preview.request(),
            on_error=lambda exc: self._failed_step(
                ("embedding", context.key), "Computing the image embedding", exc
            ),
            on_aborted=aborted,
        )

    def _show_preview(self, context: glue.SliceContext, _predictions: list) -> None:
        self._shown = context
        self._draw_preview()

    def _decode_failed(self, exc: BaseException) -> None:
        if isinstance(exc, LookupError):
            self.preview.request()  # the embedding left the cache: compute it again
        else:
            self._notify_error(f"SAM could not decode the prompts: {exc}")

    def _draw_preview(self) -> None:
        context = self._shown
        if context is None:
            return
        masks = self.session.chosen_masks()
        self.layers.show_preview(context.image_layer, context.slice_index, masks)
        scores = ", ".join(f"{s:.2f}" for s in self.session.chosen_scores())
        rank = self.session.candidate_offset % 3 + 1
        self._set_status(f"{len(masks)} object(s), candidate {rank}/3, predicted IoU {scores}")

    def _clear_preview(self) -> None:
        self._shown = None
        self.layers.clear_preview()

    def next_candidate(self, *_: Any) -> None:
        """Show SAM's next candidate mask for each object."""
        if self._shown is not None:
            self.session.cycle_candidate()
            self._draw_preview()

    def clear_prompts(self, *_: Any) -> None:
        """Delete all points and boxes and the preview."""
        self.layers.clear_prompts()
        self.session.clear_prompts()
        self._clear_preview()
        self.preview.request()

    # -- writing ------------------------------------------------------------------------------

    def commit(self, *_: Any) -> list[int]:
        """Write the previewed object(s) into the output labels layer; returns their label ids.

        Empty when nothing was written (no preview yet, or every pixel already labelled and
        *overwrite* off: the status says so and the next id is not used up).
        """
        context = self._shown
        if context is None or context.version != self.preview.version or self.preview.pending:
            self._notify_error(
                "nothing to commit yet: add points or boxes and wait for the preview"
                if context is None
                else "the preview is still being updated; commit again in a moment"
            )
            return []
        masks = [m for m in self.session.chosen_masks() if m.any()]
        if not masks:
            self._notify_error("the preview is empty: add or move prompts before committing")
            return []
        try:
            labels = self.output_layer(context.image_layer)
        except ValueError as exc:
            self._notify_error(str(exc))
            return []
        refine = int(self.refine_label.value) or None
        ids = glue.planned_label_ids(
            labels.data, len(masks), [refine] if refine and len(masks) == 1 else None, refine
        )
        written: list[int] = []

        def done(ids_written: list[int], undoable: bool) -> None:
            written.extend(ids_written)
            self._committed_ids(labels, ids_written, undoable, context.slice_index, masks[-1])

        self.stack_actions.commit(
            labels, context.slice_index, masks, ids, overwrite=bool(self.overwrite.value),
            replace_label=refine, on_written=done,
        )  # fmt: skip
        return written

    def _committed_ids(
        self, labels: Labels, ids: list[int], undoable: bool, key: tuple, mask: Any
    ) -> None:
        if not ids:
            self._set_status(
                "nothing written: those pixels already carry labels; tick 'overwrite existing "
                "labels' to replace them"
            )
            return
        mark_role(labels, SAM_OUTPUT_ROLE)
        self.remember_commit(labels, ids[-1], key, mask)
        self.refine_label.value = 0
        self.clear_prompts()
        note = "" if undoable else " (too large to undo: not in the undo history)"
        self._set_status(f"committed label(s) {', '.join(map(str, ids))}{note}")

    # -- stack jobs ---------------------------------------------------------------------------

    def _job_context(self, action: Any) -> glue.SliceContext | None:
        """Context for a job, or ``None`` (error shown, or ``action`` re-run after loading)."""
        try:
            context = self.current_context()
        except ValueError as exc:
            self._notify_error(str(exc))
            return None
        if self.task.is_running or self.stack_actions.writing:
            self._notify_error(f"{self.task.description!r} is still running; wait or press Cancel")
            return None
        return context if self._ensure_model(then=action) else None

    def precompute_stack(self, *_: Any) -> None:
        """Compute the embeddings of every slice of the stack in the background."""
        context = self._job_context(self.precompute_stack)
        if context is not None:
            self.stack_actions.precompute(context.image_layer, on_finished=self.preview.request)

    def propagate(self, *_: Any) -> None:
        """Carry *label to propagate* through the stack with SAM, in the background."""
        context = self._job_context(self.propagate)
        if context is None:
            return
        try:
            labels, label = self.label_to_propagate(context.slice_index)
            self.stack_actions.propagate(
                context.image_layer, context.slice_index, labels, label,
                self.advanced.propagation(), overwrite=bool(self.overwrite.value),
            )  # fmt: skip
        except ValueError as exc:
            self._notify_error(str(exc))
        else:
            self._shown = None

    def propagate_with_seggpt(self, *_: Any) -> Any:
        """Hand the output labels to the SegGPT widget (opened if needed) and run it."""
        from napari_segany._napari._qt.seggpt_widget import find_or_open_seggpt_widget

        labels, image = self.output_box.value, self.image_layer
        if labels is None or image is None or not labels.data.any():
            self._notify_error(
                "commit at least one object first: SegGPT propagates the output labels"
            )
            return None
        widget = find_or_open_seggpt_widget(self.viewer)
        widget.use_prompt_labels(image, labels)
        widget.run()
        return widget

    def segment_everything(self, *_: Any) -> None:
        """Automatic segmentation of the shown slice or the whole stack into a new labels layer."""
        context = self._job_context(self.segment_everything)
        if context is not None:
            shape = layer_io.spatial_shape(context.image_layer)
            whole = self.everything.scope.value == WHOLE_STACK
            slices = list(np.ndindex(*shape[:-2])) if whole else [context.slice_index]
            self.stack_actions.segment_everything(
                context.image_layer, slices, self.everything.options()
            )


def _model_id(choice: ModelChoice) -> str:
    return f"{choice.source}|{choice.device}"
