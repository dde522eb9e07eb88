"""Dock widget "In-context segmentation (SegGPT)": paint one slice, get the whole stack.

The widget is thin (STYLE rule 7): it reads its form into a
:class:`~napari_segany.seggpt.propagation.SlicePropagation` through
:func:`~napari_segany._napari.seggpt_layers.plan_from_layers` (which validates everything, so bad
inputs end in a notification before anything changes), loads the model through the shared
:class:`~.model_picker.ModelPicker`, runs :func:`~napari_segany.seggpt.stack_job.segment_job` in
the shared :class:`~.background_task.BackgroundTask` and writes each slice into the output
labels layer on the main thread as soon as it is done.

The SAM widget's own layers (points, boxes, preview) are never offered; once the SAM widget has
committed objects, its output labels layer is the default prompt.
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    LineEdit,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning

from napari_segany._napari import layer_io
from napari_segany._napari._qt.background_task import BackgroundTask
from napari_segany._napari._qt.dock_form import DockForm, find_docked, wrapped_label
from napari_segany._napari._qt.model_picker import ModelPicker
from napari_segany._napari.sam_prompt_layers import INTERNAL_ROLE, SAM_OUTPUT_ROLE, role_of
from napari_segany._napari.seggpt_layers import (
    new_output_data,
    plan_from_layers,
    run_fits_undo,
    seggpt_predictor,
)
from napari_segany.seggpt.propagation import PropagationSettings, SliceKey, SlicePropagation
from napari_segany.seggpt.registry import DEFAULT_SEGGPT_MODEL, SEGGPT_MODELS
from napari_segany.seggpt.stack_job import SliceDone, parse_slice_list, segment_job

WIDGET_NAME = "In-context segmentation (SegGPT)"
SAME_AS_TARGET = "same as image"
NEW_LAYER = "new labels layer"
ALL_SLICES, CURRENT_SLICE, SLICE_RANGE = "all slices", "current slice", "slice range"


@dataclass
class _Run:
    """What the running job writes into: the output layer is created with the first slice.

    A run into an existing layer is one undo step (napari's ``block_history``, entered with the
    first slice and left when the job ends) if it fits the undo budget; a new layer is not
    recorded (deleting it undoes the run).
    """

    target: Image
    prompt_labels: Labels
    output: Labels | None
    overwrite: bool
    start_from_prompt_labels: bool
    undoable: bool = False
    written: int = 0
    stopped: bool = False
    data: Any = None
    keys: list[SliceKey] = field(default_factory=list)
    history: ExitStack = field(default_factory=ExitStack)


def _load_seggpt(source: str, device: str, precision: str) -> Any:
    from napari_segany.seggpt import load_seggpt

    return load_seggpt(source, device=device, precision=precision)


@dataclass(frozen=True)
class SliceWritten:
    """Progress of :func:`slice_edits_job`: slice ``key`` is done and ``edit`` is its write."""

    done: int
    total: int
    key: SliceKey | None = None
    edit: layer_io.PlaneEdit | None = None

    @property
    def message(self) -> str:
        return f"slice {self.done}/{self.total}" if self.key is not None else "starting"


def slice_edits_job(
    plan: SlicePropagation,
    predictor: Any,
    output_data: Any,
    overwrite: bool,
    should_stop: Any,
) -> Generator[SliceWritten, None, int]:
    """Job: :func:`segment_job`, and what each slice changes in ``output_data`` (in the worker).

    Only the main thread writes; the slices differ, so comparing in the worker is safe.
    """
    job = segment_job(plan, predictor, should_stop=should_stop)
    while True:
        try:
            progress: SliceDone = next(job)
        except StopIteration as stop:
            return stop.value
        edit = None
        if progress.key is not None and progress.labels is not None:
            edit = layer_io.plane_edit(
                output_data, progress.key, progress.labels, overwrite=overwrite
            )
        yield SliceWritten(progress.done, progress.total, progress.key, edit)


def find_or_open_seggpt_widget(viewer: Any) -> SegGptWidget:
    """The SegGPT widget docked in ``viewer``, docking a new one if there is none."""
    found = find_docked(viewer, SegGptWidget)
    if found is not None:
        return found
    widget = SegGptWidget(viewer)
    viewer.window.add_dock_widget(widget, name=WIDGET_NAME, area="right")
    return widget


class SegGptWidget(DockForm):
    """In-context segmentation of image layers from painted labels (SegGPT).

    Parameters
    ----------
    napari_viewer
        The viewer whose layers are offered.
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.target_box = ComboBox(
            label="image",
            choices=self._image_choices,
            tooltip="The image (2D, 3D stack, time series or 4D) to segment",
        )
        self.prompt_image_box = ComboBox(
            label="prompt image",
            choices=self._prompt_image_choices,
            tooltip="The image the prompt labels were painted on: the image itself, or another "
            "(reference) image",
        )
        self.prompt_labels_box = ComboBox(
            label="prompt labels",
            choices=self._labels_choices,
            tooltip="Painted examples: every slice with labels is a prompt",
        )
        self.prompt_slices_edit = LineEdit(
            label="prompt slices",
            tooltip="Which painted slices are prompts, e.g. '0, 8, 12-14'; empty: every painted "
            "slice (up to 'max prompts', the nearest ones)",
        )
        self.max_prompts_box = SpinBox(
            label="max prompts",
            value=4,
            min=1,
            max=32,
            tooltip="Prompts per target slice (SegGPT's feature ensemble); more is slower",
        )
        self.slices_box = ComboBox(
            label="segment",
            choices=[ALL_SLICES, CURRENT_SLICE, SLICE_RANGE],
            value=ALL_SLICES,
            tooltip="Which slices of the image to segment; painted prompt slices are never "
            "overwritten",
        )
        self.range_start = SpinBox(label="from slice", value=0, min=0, max=0)
        self.range_stop = SpinBox(label="to slice", value=0, min=0, max=0)
        self.output_box = ComboBox(
            label="output",
            choices=self._output_choices,
            tooltip="Labels layer the results are written into (slice by slice), or a new one",
        )
        self.overwrite_box = CheckBox(
            text="overwrite existing labels",
            value=False,
            tooltip="Replace labelled pixels of the output; otherwise only unlabelled pixels are "
            "filled",
        )
        self.video_box = CheckBox(
            text="video: previous frame as extra prompt",
            value=False,
            tooltip="Each frame also uses the prediction of the frame before it (along the time "
            "axis, outwards from the painted frames) as a prompt: tracks moving objects",
        )
        self._stack_shape: tuple[int, ...] = ()
        self.time_axis_box = ComboBox(
            label="time axis",
            choices=self._time_axis_choices,
            tooltip="Video mode on a stack with several slice axes: the one that is time (for "
            "T×Z×Y×X, axis 0 is T and axis 1 is Z); by default the first",
        )
        self.uncertain_box = CheckBox(
            text="leave uncertain pixels unlabelled",
            value=False,
            tooltip="SegGPT paints each pixel with a label's colour; pixels whose colour is "
            "unclear stay empty instead of getting the nearest label",
        )
        self.threshold_box = FloatSpinBox(
            label="tolerance",
            value=60.0,
            min=0.0,
            max=442.0,
            step=5.0,
            tooltip="How unclear a pixel may be and still get a label: lower leaves more "
            "pixels empty, higher labels almost every pixel (RGB colour distance, 0-442)",
        )
        self.model_picker = ModelPicker(
            list(SEGGPT_MODELS), _load_seggpt, default=DEFAULT_SEGGPT_MODEL
        )
        self.run_button = PushButton(text="Segment")
        self.status = wrapped_label()
        self.add_rows(
            self.target_box,
            self.prompt_labels_box,
            self.output_box,
            self.slices_box,
            self.range_start,
            self.range_stop,
        )
        self.add_rows(self.run_button, self.status, labels=False)
        self.add_section(
            "Prompts",
            Container(
                widgets=[self.prompt_image_box, self.prompt_slices_edit, self.max_prompts_box]
            ),
        )
        self.add_section(
            "Options",
            Container(
                widgets=[
                    self.overwrite_box,
                    self.video_box,
                    self.time_axis_box,
                    self.uncertain_box,
                    self.threshold_box,
                ]
            ),
        )
        self.add_section("Model", Container(widgets=self.model_picker.widgets), expanded=True)
        self.finish_form()
        self.task = BackgroundTask(notify_error=self._error)
        self.set_bottom(self.task)
        self._auto_prompt = True  # follow the SAM output until the user picks prompt labels
        self.prompt_labels_box.native.activated.connect(self._prompt_picked)
        self._predictor: tuple[Any, Any] | None = None
        self._run: _Run | None = None

        self.run_button.changed.connect(self.run)
        self.task.busy_changed.connect(self._busy_changed)
        self.slices_box.changed.connect(self._update_enabled)
        self.uncertain_box.changed.connect(self._update_enabled)
        self.video_box.changed.connect(self._update_enabled)
        self.target_box.changed.connect(self._update_enabled)
        for event in ("inserted", "removed", "moved", "changed"):
            getattr(self.viewer.layers.events, event).connect(self._layers_changed)
        self.destroyed.connect(self._close)
        self._layers_changed()

    def _close(self, *_: Any) -> None:
        for event in ("inserted", "removed", "moved", "changed"):
            getattr(self.viewer.layers.events, event).disconnect(self._layers_changed)

    def reset_choices(self, *_: Any) -> None:
        """Re-read the viewer's layers into every layer box."""
        for box in (
            self.target_box,
            self.prompt_image_box,
            self.prompt_labels_box,
            self.output_box,
            self.time_axis_box,
        ):
            box.reset_choices()

    def _busy_changed(self, busy: bool) -> None:
        self.run_button.enabled = not busy
        if busy:
            self.status.value = "running…"  # a new run clears the previous run's message

    def _prompt_picked(self, *_: Any) -> None:
        self._auto_prompt = False

    def use_prompt_labels(self, image: Image, labels: Labels) -> None:
        """Segment ``image`` from ``labels`` (e.g. the SAM widget's output) into a new layer."""
        self.reset_choices()
        self.target_box.value = image
        self.prompt_image_box.value = SAME_AS_TARGET
        self.prompt_labels_box.value = labels
        self.output_box.value = NEW_LAYER
        self._auto_prompt = False

    # ------------------------------------------------------------------ form

    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _prompt_image_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(SAME_AS_TARGET, SAME_AS_TARGET), *self._image_choices()]

    def _labels_choices(self, _widget: Any = None) -> list[tuple[str, Labels]]:
        layers = [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, Labels) and role_of(layer) != INTERNAL_ROLE
        ]
        layers.sort(key=lambda layer: role_of(layer) != SAM_OUTPUT_ROLE)  # SAM output first
        return [(layer.name, layer) for layer in layers]

    def _output_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(NEW_LAYER, NEW_LAYER), *self._labels_choices()]

    def _time_axis_choices(self, _widget: Any = None) -> list[tuple[str, int]]:
        return [(f"axis {i} ({n} slices)", i) for i, n in enumerate(self._stack_shape)]

    def _layers_changed(self, *_: Any) -> None:
        self.reset_choices()
        if self._auto_prompt:
            sam_outputs = [
                layer for layer in self.viewer.layers if role_of(layer) == SAM_OUTPUT_ROLE
            ]
            if sam_outputs and self.prompt_labels_box.value is not sam_outputs[0]:
                self.prompt_labels_box.value = sam_outputs[0]
        self._update_enabled()

    def _update_enabled(self, *_: Any) -> None:
        target = self.target_box.value
        leading = ()
        if isinstance(target, Image):
            leading = tuple(layer_io.spatial_shape(target)[:-2])
        ranged = self.slices_box.value == SLICE_RANGE
        last = max(leading[0] - 1, 0) if leading else 0
        for box in (self.range_start, self.range_stop):
            box.max = last
            box.visible = ranged
        self.video_box.enabled = bool(leading)
        if leading != self._stack_shape:  # another image: offer its axes, first one chosen
            self._stack_shape = leading
            self.time_axis_box.reset_choices()
            if leading:
                self.time_axis_box.value = 0
        self.time_axis_box.enabled = bool(self.video_box.value) and len(leading) > 1
        self.threshold_box.enabled = self.uncertain_box.value

    def settings(self) -> PropagationSettings:
        """The form's propagation settings."""
        return PropagationSettings(
            max_prompts=int(self.max_prompts_box.value),
            use_previous_frame=bool(self.video_box.value and self.video_box.enabled),
            time_axis=int(self.time_axis_box.value or 0) if self.time_axis_box.enabled else 0,
            uncertainty_threshold=float(self.threshold_box.value)
            if self.uncertain_box.value
            else None,
            overwrite_existing=bool(self.overwrite_box.value),
        )

    def plan(self) -> SlicePropagation:
        """Read the form and the layers into a validated plan (raises ``ValueError``)."""
        target = self.target_box.value
        prompt_labels = self.prompt_labels_box.value
        if not isinstance(target, Image):
            raise ValueError("no image layer: open or choose the image to segment")
        if not isinstance(prompt_labels, Labels):
            raise ValueError(
                "no prompt labels layer: add a labels layer, paint a few objects on one slice, "
                "and choose it as 'prompt labels'"
            )
        prompt_image = self.prompt_image_box.value
        prompt_image = None if prompt_image == SAME_AS_TARGET else prompt_image
        output = self.output_box.value
        output = None if output == NEW_LAYER else output
        slices: Any = "all"
        if self.slices_box.value == CURRENT_SLICE:
            slices = "current"
        elif self.slices_box.value == SLICE_RANGE:
            start, stop = int(self.range_start.value), int(self.range_stop.value)
            slices = range(min(start, stop), max(start, stop) + 1)
        return plan_from_layers(
            target,
            prompt_labels,
            prompt_image,
            output=output,
            slices=slices,
            current_key=layer_io.slice_key_at(target, self.viewer.dims.point),
            prompt_slices=parse_slice_list(self.prompt_slices_edit.value),
            settings=self.settings(),
        )

    # ------------------------------------------------------------------ running

    def run(self, *_: Any) -> None:
        """Validate, load the model (in the background, once) and segment the chosen slices."""
        if self.task.is_running:
            self._warn(f"{self.task.description} is still running: wait or press Cancel")
            return
        try:
            plan = self.plan()
        except ValueError as exc:
            self._error(f"SegGPT: {exc}")
            return
        if len(plan) == 0:
            self._warn("SegGPT: nothing to segment: every chosen slice is a painted prompt slice")
            return
        output = self.output_box.value
        prompt_labels = self.prompt_labels_box.value
        run = _Run(
            target=self.target_box.value,
            prompt_labels=prompt_labels,
            output=None if output == NEW_LAYER else output,
            overwrite=plan.settings.overwrite_existing,
            start_from_prompt_labels=plan.prompts_in_target,
            undoable=output != NEW_LAYER and run_fits_undo(plan),
        )
        try:
            self.model_picker.request_model(
                self.task,
                lambda model, _choice: self._when_idle(lambda: self._start(plan, run, model)),
            )
        except (ValueError, RuntimeError) as exc:
            self._error(f"SegGPT: {exc}")

    def cancel(self) -> None:
        """Stop the running job; finished slices stay, the others are left as they were."""
        self.task.cancel()

    def _when_idle(self, callback: Any) -> None:
        """Call ``callback`` once the task is free (a model load finishes just before)."""
        if not self.task.is_running:
            callback()
            return

        def once(busy: bool) -> None:
            if not busy:
                self.task.busy_changed.disconnect(once)
                callback()

        self.task.busy_changed.connect(once)

    def _start(self, plan: SlicePropagation, run: _Run, model: Any) -> None:
        if self._predictor is None or self._predictor[0] is not model:
            self._predictor = (model, seggpt_predictor(model))
        self._run = run
        if plan.settings.batch_size is None and getattr(model, "device", None) is not None:
            if getattr(model.device, "type", None) == "cpu":
                # A CPU gains little from batches: one slice at a time shows each slice as soon
                # as it is done and lets Cancel act within one slice.
                plan.settings = replace(plan.settings, batch_size=1)
        if run.output is None:  # the new layer's array; the layer comes with the first slice
            painted = run.prompt_labels.data if run.start_from_prompt_labels else None
            run.data = new_output_data(run.target, painted, prompt_labels=run.prompt_labels.data)
        self.task.start(
            slice_edits_job,
            plan,
            self._predictor[1],
            run.data if run.output is None else run.output.data,
            run.overwrite,
            lambda: self._output_removed(run),
            description="SegGPT",
            on_yielded=self._write,
            on_returned=self._finished,
            on_error=self._failed,
            on_aborted=self._cancelled,
            on_finished=self._close_history,
        )

    def _output_removed(self, run: _Run) -> bool:
        """Whether the run's output layer was removed from the viewer (any thread)."""
        return run.output is not None and run.output not in self.viewer.layers

    def _write(self, progress: SliceWritten) -> None:
        run = self._run
        if run is None or progress.key is None:
            return
        edit = progress.edit
        if run.output is None:  # the first slice goes into the array, then the layer is added
            if edit is not None:
                layer_io.write_into_array(run.data, [edit])
            run.output = self._new_output(run)
        elif self._output_removed(run):
            run.stopped = True
            return
        else:
            if run.undoable and run.written == 0:
                run.history.enter_context(run.output.block_history())
            shown = layer_io.slice_key_at(run.output, self.viewer.dims.point)
            layer_io.apply_edits(
                run.output, [edit], undoable=run.undoable, own_history_step=False, shown_key=shown
            )
        run.written += 1
        run.keys.append(progress.key)

    def _new_output(self, run: _Run) -> Labels:
        layer = layer_io.new_labels_layer(run.target, f"{run.target.name} SegGPT", run.data)
        layer_io.insert_layer(self.viewer.layers, len(self.viewer.layers), layer)  # on top
        return layer

    def _close_history(self) -> None:
        if self._run is not None:
            self._run.history.close()  # commits the run's changes as one undo step

    def _finished(self, done: int) -> None:
        run = self._run
        if run is not None and (run.stopped or self._output_removed(run)):
            self._warn(
                f"SegGPT stopped: the output layer {run.output.name!r} was removed; "
                f"{run.written} slice(s) had been written into it"
            )
            return
        name = run.output.name if run is not None and run.output is not None else "?"
        self._info(f"SegGPT segmented {done} slice(s) into {name!r}")

    def _failed(self, exc: BaseException) -> None:
        from napari_segany._napari._qt.background_task import describe_failure

        written = self._run.written if self._run is not None else 0
        self._error(
            describe_failure("SegGPT", exc).replace(
                "Nothing in your layers was changed",
                f"{written} finished slice(s) were kept, the others left as they were",
            )
        )

    def _cancelled(self) -> None:
        written = self._run.written if self._run is not None else 0
        self._info(
            f"SegGPT cancelled: {written} finished slice(s) kept, the others left as they were"
        )

    def _info(self, message: str) -> None:
        self.status.value = message
        show_info(message)

    def _warn(self, message: str) -> None:
        self.status.value = message
        show_warning(message)

    def _error(self, message: str) -> None:
        self.status.value = message.splitlines()[0][:200]
        show_error(message)
