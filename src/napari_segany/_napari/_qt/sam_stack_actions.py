"""Background jobs of the Segment Anything widget: commit, precompute, propagate, everything.

Each starts one generator job on the widget's
:class:`~napari_segany._napari._qt.background_task.BackgroundTask`; the heavy numpy work (the
pipelines, and comparing masks with the labels to find what changes) runs in the worker, and the
main thread only applies the result (:func:`~napari_segany._napari.layer_io.apply_edits`), so a
cancelled or failed job leaves every layer as it was and the GUI never waits for the heavy part.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_segany._napari import layer_io
from napari_segany._napari._qt.background_task import BackgroundTask
from napari_segany._napari._qt.chunked_write import prepare_chunks, write_in_chunks
from napari_segany._napari.sam_layers import mask_edits, written_ids
from napari_segany._napari.sam_prompt_layers import SamPromptLayers
from napari_segany.sam.automatic import segment_everything_job
from napari_segany.sam.interactive_session import InteractiveSamSession
from napari_segany.sam.propagation import (
    PropagationResult,
    PropagationSettings,
    PropagationStep,
    propagate_along_axis,
)

if TYPE_CHECKING:
    from napari.layers import Image, Labels

SYNC_COMMIT_PIXELS = 4_000_000
"""Planes up to this many pixels are committed at once; larger ones in the background."""


class OutputRemoved(Exception):
    """The output labels layer was removed while a job was writing into it."""


def edits_job(
    labels_data: Any,
    slice_key: tuple[int, ...],
    masks: Sequence[np.ndarray],
    label_ids: Sequence[int],
    overwrite: bool,
    replace_label: int | None,
) -> Generator[tuple[int, int], None, tuple[list[layer_io.PlaneEdit], list[int], list]]:
    """Job: the crops a commit changes, the ids it writes and the pieces to write them in."""
    yield 0, 1
    edits = mask_edits(
        labels_data, slice_key, masks, label_ids, overwrite=overwrite, replace_label=replace_label
    )
    yield 1, 1
    return edits, written_ids(edits, label_ids), prepare_chunks(edits)


def propagation_job(
    steps: Generator[PropagationStep, None, PropagationResult],
    labels_data: Any,
    label: int,
    overwrite: bool,
    should_stop: Callable[[], bool],
) -> Generator[PropagationStep, None, tuple[PropagationResult, list[layer_io.PlaneEdit], list]]:
    """Job: run a propagation, then compute its writes (crops) in the same worker thread."""
    result = None
    while True:
        try:
            step = next(steps)
        except StopIteration as stop:
            result = stop.value
            break
        if should_stop():
            raise OutputRemoved("the output labels layer was removed")
        yield step
    edits: list[layer_io.PlaneEdit] = []
    for key, mask in result.masks.items():
        edits += mask_edits(labels_data, key, [mask], [label], overwrite=overwrite)
    return result, edits, prepare_chunks(edits)


def everything_job(*args: Any) -> Generator[Any, None, tuple[np.ndarray, int]]:
    """Job: :func:`segment_everything_job`, and the number of objects (counted in the worker)."""
    labels = yield from segment_everything_job(*args)
    return labels, int(labels.max(initial=0))


class SamStackActions:
    """Starts the widget's jobs and writes their results.

    Parameters
    ----------
    session
        The widget's session (model and embedding cache).
    task
        Where jobs run (one at a time, with progress and cancel).
    layers
        The widget's managed layers (preview, and where new layers go).
    set_status
        Shows a status message (the widget's status line).
    """

    def __init__(
        self,
        session: InteractiveSamSession,
        task: BackgroundTask,
        layers: SamPromptLayers,
        set_status: Callable[[str], None],
    ) -> None:
        self.session = session
        self.task = task
        self.layers = layers
        self.set_status = set_status
        self._pending_writes = 0

    @property
    def writing(self) -> bool:
        """Whether a result is still being written into a labels layer, piece by piece."""
        return self._pending_writes > 0

    def _write(
        self,
        labels: Labels,
        edits: Sequence[layer_io.PlaneEdit],
        chunks: list,
        on_done: Callable[[bool], None],
    ) -> None:
        """Write ``edits`` a few pixels per event-loop turn (:func:`write_in_chunks`)."""
        self._pending_writes += 1

        def done(undoable: bool) -> None:
            self._pending_writes -= 1
            on_done(undoable)

        try:
            write_in_chunks(labels, edits, done, self.task, chunks)
        except BaseException:
            self._pending_writes -= 1
            raise

    # -- commit -------------------------------------------------------------------------------

    def commit(
        self,
        labels: Labels,
        slice_key: tuple[int, ...],
        masks: Sequence[np.ndarray],
        label_ids: Sequence[int],
        *,
        overwrite: bool,
        replace_label: int | None,
        on_written: Callable[[list[int], bool], None],
    ) -> bool:
        """Write masks into ``labels``: at once on small planes, in the background on large ones.

        ``on_written(ids, undoable)`` gets the ids that changed pixels (empty: nothing written).
        Returns whether the write happened at once.
        """
        layer_io.widen_for_label(labels, max(label_ids))
        args = (labels.data, slice_key, list(masks), list(label_ids), overwrite, replace_label)

        def apply(prepared: tuple[list[layer_io.PlaneEdit], list[int], list]) -> None:
            edits, ids, chunks = prepared
            if labels not in self.layers.viewer.layers:
                self.set_status("commit cancelled: the output labels layer was removed")
                return
            self._write(labels, edits, chunks, lambda undoable: on_written(ids, undoable))

        if int(np.prod(labels.data.shape[-2:])) <= SYNC_COMMIT_PIXELS:
            from napari_segany.jobs import run_to_completion

            apply(run_to_completion(edits_job(*args)))
            return True
        self.task.start(edits_job, *args, description="Committing", on_returned=apply)
        return False

    # -- stack jobs ---------------------------------------------------------------------------

    def precompute(self, image: Image, on_finished: Callable[[], None] | None = None) -> None:
        """Embed every 2D slice of ``image`` (skipping cached ones) in the background."""
        slices = list(np.ndindex(*layer_io.spatial_shape(image)[:-2]))
        cache = self.session.cache
        if len(slices) > cache.max_items and cache.disk_dir is None:
            from napari.utils.notifications import show_warning

            show_warning(
                f"the stack has {len(slices)} slices but only {cache.max_items} embeddings fit "
                "in the cache: raise 'cached embeddings' or set a cache folder"
            )
        limits = layer_io.contrast_limits_of(image)
        layer_id = str(image.unique_id)
        items = (
            (
                self.session.embedding_key(layer_id, s, limits),
                lambda s=s: layer_io.read_slice(image, s),
            )
            for s in slices
        )
        self.task.start(
            self.session.precompute_embeddings,
            items,
            len(slices),
            description="Embedding the stack",
            on_finished=on_finished,
        )

    def propagate(
        self,
        image: Image,
        slice_key: Sequence[int],
        labels: Labels,
        label: int,
        settings: PropagationSettings,
        *,
        overwrite: bool = False,
    ) -> None:
        """Carry ``label`` from ``slice_key`` along one leading axis, in the background.

        Each slice's mask is shown in the preview layer as it arrives; the labels layer is
        written when the job returned, a few pixels per event-loop turn (:attr:`writing` until
        then), as one undo step when it fits the undo budget.
        Removing ``labels`` from the viewer stops the job and nothing is written.

        Raises
        ------
        ValueError
            A 2D image, an axis that is not a stack axis, or ``label`` absent from the slice.
        """
        stack_shape = layer_io.spatial_shape(image)[:-2]
        axis = settings.resolved_axis(len(stack_shape))
        slice_key = tuple(int(i) for i in slice_key)
        start_mask = np.asarray(labels.data[slice_key]) == label
        if not start_mask.any():
            raise ValueError(f"label {label} is not on the shown slice; go to a slice that has it")
        self.layers.clear_preview()
        viewer_layers = self.layers.viewer.layers

        def removed() -> bool:
            return labels not in viewer_layers

        def show_step(step: PropagationStep) -> None:
            if step.mask is not None and not removed():
                self.layers.add_to_preview(image, step.key, step.mask)

        def write(outcome: tuple[PropagationResult, list[layer_io.PlaneEdit], list]) -> None:
            result, edits, chunks = outcome
            if removed():
                self.set_status("propagation stopped: the output labels layer was removed")
                return
            reasons = "; ".join(f"{k}: {v}" for k, v in result.stop_reasons.items())

            def written(undoable: bool) -> None:
                note = "" if undoable else " (too large to undo: not recorded in the undo history)"
                self.set_status(
                    f"label {label} on {len(result.masks)} more slice(s) ({reasons}){note}"
                )

            self._write(labels, edits, chunks, written)

        def failed(exc: BaseException) -> None:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            if isinstance(cause, OutputRemoved) or removed():
                self.set_status("propagation stopped: the output labels layer was removed")
                return
            from napari_segany._napari._qt.background_task import describe_failure

            self.task._show_error(describe_failure(f"Propagating label {label}", exc))

        steps = propagate_along_axis(
            self.session.key_segmenter(
                str(image.unique_id),
                lambda key: layer_io.read_slice(image, key),
                layer_io.contrast_limits_of(image),
            ),
            stack_shape,
            slice_key,
            start_mask,
            settings,
        )
        self.task.start(
            propagation_job,
            steps,
            labels.data,
            label,
            overwrite,
            removed,
            description=f"Propagating label {label} along axis {axis}",
            on_yielded=show_step,
            on_returned=write,
            on_error=failed,
            on_finished=self.layers.clear_preview,
        )

    def segment_everything(
        self, image: Image, slices: Sequence[tuple[int, ...]], options: dict[str, Any]
    ) -> None:
        """Automatic segmentation of some slices into a new labels layer, in the background."""
        shape = layer_io.spatial_shape(image)

        def add_layer(outcome: tuple[np.ndarray, int]) -> None:
            labels, n_objects = outcome
            layer = layer_io.new_labels_layer(image, f"SAM everything ({image.name})", labels)
            self.layers.add_below_prompts(layer)
            self.set_status(f"segment everything: {n_objects} objects")

        self.task.start(
            everything_job,
            self.session.model,
            lambda s: layer_io.read_slice(image, s),
            list(slices),
            shape,
            layer_io.contrast_limits_of(image),
            options,
            description="Segmenting everything",
            on_returned=add_layer,
        )
