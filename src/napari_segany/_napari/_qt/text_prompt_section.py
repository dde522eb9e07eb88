"""The *Text prompt (Grounded SAM)* section of the SAM widget.

Type what to find ("nucleus. mitochondrion."), press *Find*: Grounding DINO's boxes appear as
rectangles in the widget's *SAM boxes* layer, labelled with phrase and score, and SAM previews
their masks as for hand-drawn boxes. Delete or adjust rectangles, then *Commit found objects*:
one object per rectangle, phrase and score in the output labels layer's ``features`` (plain
*Commit (C)* works too, without the phrases). *Find and commit on every slice* runs the whole
stack in the background (progress, *Cancel*).

Thin (STYLE rule 7): layers are read and written by :mod:`napari_segany._napari.text_layers`,
models by :mod:`napari_segany.grounding`; this file only wires controls to them.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import Container, FloatSpinBox, LineEdit, PushButton, SpinBox

from napari_segany._napari import layer_io
from napari_segany._napari._qt.background_task import describe_failure
from napari_segany._napari._qt.dock_form import wrapped_label
from napari_segany._napari._qt.model_picker import ModelPicker
from napari_segany._napari.text_layers import (
    add_detections_to_shapes,
    all_slices,
    segment_slices_job,
    text_boxes_on_slice,
    write_text_objects,
)
from napari_segany.grounding.detector import clean_phrase

if TYPE_CHECKING:
    from napari_segany._napari._qt.sam_widget import SamWidget

SECTION_TITLE = "Text prompt (Grounded SAM)"


def load_detector_model(source: str, device: str, precision: str) -> Any:
    """Detector loader given to the picker (runs in a worker thread)."""
    from napari_segany.grounding import GroundingDinoDetector, load_grounding_dino

    return GroundingDinoDetector(load_grounding_dino(source, device=device, precision=precision))


def detect_job(detector, image, text, box_threshold, text_threshold, contrast_limits, should_stop):
    """Job: detect on one slice; *Cancel* stops it between backbone blocks."""

    def on_block(done: int, total: int) -> None:
        if should_stop():
            raise InterruptedError("detection cancelled")

    yield 0, 1
    found = detector.detect(
        image, text, box_threshold, text_threshold, contrast_limits=contrast_limits,
        on_block=on_block,
    )  # fmt: skip
    yield 1, 1
    return found


def merge_duplicates(found, max_objects: int):
    """Drop boxes overlapping a higher-scored one (as segment_with_text does) and cap the count."""
    import torch

    from napari_segany.grounding.segment import DEFAULT_NMS_IOU
    from napari_segany.sam.box_nms import non_maximum_suppression

    keep = non_maximum_suppression(
        torch.from_numpy(found.boxes), torch.from_numpy(found.scores), DEFAULT_NMS_IOU
    )[:max_objects]
    return found.select(keep.numpy())


def decode_boxes_job(session, key, read, boxes) -> Generator[tuple[int, int], None, list]:
    """Job: one SAM mask per box on one slice (embedding from the session's cache)."""
    from napari_segany.sam import SamPredictor

    yield 0, 2
    state = session.embed_now(key, read)
    yield 1, 2
    predictor = SamPredictor(session.model)
    predictor.set_embedding_state(state)
    masks, _, _ = predictor.predict(box=np.asarray(boxes), multimask_output=False)
    yield 2, 2
    return [np.asarray(m[0], dtype=bool) for m in masks]


class TextPromptSection(Container):
    """Controls and behaviour of the text-prompt section.

    Parameters
    ----------
    widget
        The SAM widget it belongs to (its image, boxes layer, session, output and task are used).
    """

    def __init__(self, widget: SamWidget) -> None:
        from napari_segany.grounding import GROUNDING_DINO_MODELS

        self.widget = widget
        self.text = LineEdit(
            label="find", value="", tooltip="Phrases separated by '.', e.g. 'nucleus. cell.'"
        )
        self.box_threshold = FloatSpinBox(
            label="box threshold", value=0.35, min=0.0, max=1.0, step=0.05
        )
        self.text_threshold = FloatSpinBox(
            label="text threshold", value=0.25, min=0.0, max=1.0, step=0.05
        )
        self.max_objects = SpinBox(label="max objects", value=100, min=1, max=10000)
        self.picker = ModelPicker(list(GROUNDING_DINO_MODELS), load_detector_model)
        self.find_button = PushButton(text="Find")
        self.commit_button = PushButton(text="Commit found objects")
        self.stack_button = PushButton(text="Find and commit on every slice")
        self.message = wrapped_label()
        super().__init__(
            widgets=[
                self.text, self.box_threshold, self.text_threshold, self.max_objects,
                *self.picker.widgets, self.find_button, self.commit_button, self.stack_button,
                self.message,
            ]
        )  # fmt: skip
        self.find_button.changed.connect(self.find)
        self.commit_button.changed.connect(self.commit)
        self.stack_button.changed.connect(self.find_and_commit_every_slice)

    # -- helpers ------------------------------------------------------------------------------

    def _fail(self, message: str) -> None:
        self.message.value = message.splitlines()[0][:200]
        self.widget._notify_error(message)

    def _prompt(self) -> str | None:
        from napari_segany.grounding.preprocessing import normalize_prompt

        try:
            return normalize_prompt(self.text.value)
        except ValueError as exc:
            self._fail(str(exc))
            return None

    def _ready(self) -> bool:
        if self.widget.image_layer is None:
            self._fail("choose an image layer first")
            return False
        if self.widget.task.is_running:
            self._fail(f"{self.widget.task.description!r} is still running; wait or press Cancel")
            return False
        return True

    def _with_detector(self, then) -> None:
        try:
            self.picker.request_model(
                self.widget.task,
                lambda detector, _choice: then(detector),
                on_error=lambda exc: self._fail(describe_failure("Loading Grounding DINO", exc)),
            )
        except ValueError as exc:
            self._fail(str(exc))

    def _slice(self) -> tuple[int, ...]:
        return layer_io.slice_key_at(self.widget.image_layer, self.widget.viewer.dims.point)

    # -- actions ------------------------------------------------------------------------------

    def find(self, *_: Any) -> None:
        """Detect the prompt on the shown slice; boxes go to the SAM boxes layer."""
        text = self._prompt()
        if text is None or not self._ready():
            return
        image_layer = self.widget.image_layer
        slice_index = self._slice()
        image = layer_io.read_slice(image_layer, slice_index)
        limits = layer_io.contrast_limits_of(image_layer)

        def detect(detector) -> None:
            self.widget.task.start(
                detect_job, detector, image, text, float(self.box_threshold.value),
                float(self.text_threshold.value), limits, self.widget.task.stop_requested,
                description=f"Finding {text!r}",
                on_returned=lambda found: self._show_found(image_layer, slice_index, text, found),
                on_error=lambda exc: self._fail(describe_failure(f"Finding {text!r}", exc)),
                on_aborted=lambda: self._set_message("finding cancelled"),
            )  # fmt: skip

        self._with_detector(detect)

    def _set_message(self, message: str) -> None:
        self.message.value = message

    def _show_found(self, image_layer, slice_index, text, found) -> None:
        if len(found) == 0:
            self._fail(
                f"nothing matched {text!r} above box threshold "
                f"{float(self.box_threshold.value):.2f}; lower it or rephrase"
            )
            return
        found = merge_duplicates(found, int(self.max_objects.value))
        shapes = self.widget.shapes_layer
        if shapes is None:
            self.widget.layers.ensure_prompt_layers(image_layer)
            shapes = self.widget.shapes_layer
        add_detections_to_shapes(shapes, image_layer, slice_index, found)
        counts: dict[str, int] = {}
        for phrase in map(clean_phrase, found.phrases):
            counts[phrase] = counts.get(phrase, 0) + 1
        summary = ", ".join(f"{p or '?'} ({n})" for p, n in counts.items())
        self._set_message(f"found {len(found)} box(es): {summary}; edit them, then commit")

    def commit(self, *_: Any) -> None:
        """One object per rectangle of the shown slice, phrase and score into the labels' features."""
        if not self._ready():
            return
        widget = self.widget
        image_layer = widget.image_layer
        shapes = widget.shapes_layer
        slice_index = self._slice()
        boxes, phrases, scores = (
            text_boxes_on_slice(shapes, image_layer, slice_index)
            if shapes is not None
            else (np.zeros((0, 4)), [], np.zeros(0))
        )
        if len(boxes) == 0:
            self._fail("no rectangles on this slice: press Find first (or draw boxes)")
            return
        if not widget.session.has_model:
            widget._ensure_model(then=self.commit)
            return
        try:
            labels = widget.output_layer(image_layer)
        except ValueError as exc:
            self._fail(str(exc))
            return
        limits = layer_io.contrast_limits_of(image_layer)
        key = widget.session.embedding_key(str(image_layer.unique_id), slice_index, limits)

        def write(masks: list) -> None:
            order = sorted(
                range(len(masks)), key=lambda i: (int(masks[i].sum()), -np.nan_to_num(scores[i]), i)
            )
            ids = write_text_objects(
                labels, slice_index, [masks[i] for i in order], [phrases[i] for i in order],
                [float(scores[i]) for i in order], overwrite=bool(widget.overwrite.value),
            )  # fmt: skip
            widget.clear_prompts()
            self._set_message(f"committed {len(ids)} object(s)" if ids else "nothing written")

        widget.task.start(
            decode_boxes_job, widget.session, key,
            lambda: layer_io.read_slice(image_layer, slice_index), boxes,
            description="Segmenting the found objects", on_returned=write,
            on_error=lambda exc: self._fail(describe_failure("Segmenting the found objects", exc)),
        )  # fmt: skip

    def find_and_commit_every_slice(self, *_: Any) -> None:
        """Find and commit on every slice of the stack, in the background (Cancel stops it)."""
        text = self._prompt()
        if text is None or not self._ready():
            return
        widget = self.widget
        if not widget.session.has_model:
            widget._ensure_model(then=self.find_and_commit_every_slice)
            return
        image_layer = widget.image_layer
        try:
            labels = widget.output_layer(image_layer)
        except ValueError as exc:
            self._fail(str(exc))
            return
        written: list[int] = []

        def on_slice(value: Any) -> None:
            done = value[2] if isinstance(value, tuple) and len(value) > 2 else None
            if done is None or done.result.is_empty:
                return
            result = done.result
            written.extend(
                write_text_objects(
                    labels, done.slice_index, [result.labels == o.label for o in result.objects],
                    [o.phrase for o in result.objects], [o.score for o in result.objects],
                    overwrite=bool(widget.overwrite.value),
                )
            )  # fmt: skip

        def run(detector) -> None:
            widget.task.start(
                segment_slices_job, lambda key: layer_io.read_slice(image_layer, key),
                all_slices(image_layer), text, detector=detector, sam=widget.session,
                box_threshold=float(self.box_threshold.value),
                text_threshold=float(self.text_threshold.value),
                max_objects=int(self.max_objects.value),
                contrast_limits=layer_io.contrast_limits_of(image_layer),
                layer_id=str(image_layer.unique_id), should_stop=widget.task.stop_requested,
                description=f"Finding {text!r} on every slice", on_yielded=on_slice,
                on_finished=lambda: self._set_message(f"committed {len(written)} object(s)"),
                on_returned=lambda _r: self._set_message(f"committed {len(written)} object(s)"),
                on_aborted=lambda: self._set_message(
                    f"cancelled; {len(written)} object(s) committed before"
                ),
                on_error=lambda exc: self._fail(describe_failure(f"Finding {text!r}", exc)),
            )  # fmt: skip

        self._with_detector(run)


def mount_text_prompt_section(widget: SamWidget) -> TextPromptSection:
    """Build the section and add it (collapsed) to the SAM widget."""
    section = TextPromptSection(widget)
    widget.add_section(SECTION_TITLE, section)
    widget.text_prompt = section
    return section
