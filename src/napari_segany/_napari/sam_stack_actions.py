"""Stack-wide background jobs of the Segment Anything widget.

Precomputing the embeddings of a whole stack, propagating an object through it and *Segment
everything* each start one generator job on the widget's
:class:`~napari_segany._napari.background_task.BackgroundTask` and write layers only from the
main thread, when the job returned (so a cancelled or failed job leaves every layer as it was).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_segany._napari import sam_layers as glue
from napari_segany._napari.background_task import BackgroundTask
from napari_segany._napari.sam_prompt_layers import SamPromptLayers
from napari_segany._napari.sam_scripting import (
    along_axis,
    propagation_slice_segmenter,
    segment_everything_job,
)
from napari_segany._napari.sam_widget_sections import PropagationSettings
from napari_segany.sam.interactive_session import InteractiveSamSession
from napari_segany.sam.propagation import PropagationStep, propagate_through_stack

if TYPE_CHECKING:
    from napari.layers import Image, Labels


class SamStackActions:
    """Starts the stack jobs and writes their results.

    Parameters
    ----------
    session
        The widget's session (model and embedding cache).
    task
        Where jobs run (one at a time, with progress and cancel).
    layers
        The widget's managed layers (preview, and where new layers go).
    set_status
        Shows a one-line status message.
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

    def precompute(self, image: Image, on_finished: Callable[[], None] | None = None) -> None:
        """Embed every 2D slice of ``image`` (skipping cached ones) in the background."""
        slices = list(np.ndindex(*glue.spatial_shape(image)[:-2]))
        cache = self.session.cache
        if len(slices) > cache.max_items and cache.disk_dir is None:
            from napari.utils.notifications import show_warning

            show_warning(
                f"the stack has {len(slices)} slices but only {cache.max_items} embeddings fit "
                "in the cache: raise 'cached embeddings' or set a cache folder"
            )
        limits = glue.contrast_limits_of(image)
        layer_id = str(image.unique_id)
        items = (
            (
                self.session.embedding_key(layer_id, s, limits),
                lambda s=s: glue.read_slice(image, s),
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
        slice_index: Sequence[int],
        labels: Labels,
        label: int,
        settings: PropagationSettings,
        *,
        overwrite: bool = False,
    ) -> None:
        """Carry ``label`` from ``slice_index`` along one leading axis, in the background.

        The axis is ``settings.axis`` (an index among the image's leading axes, e.g. 0 = T of
        a T×Z×Y×X image), by default the last one. Each slice's mask is shown in the preview
        layer as it arrives; the labels layer is written once, as one undo step, when the job
        returned.

        Raises
        ------
        ValueError
            A 2D image, an axis that is not a stack axis, or ``label`` absent from the slice.
        """
        lead = glue.n_leading_axes(image)
        if lead == 0:
            raise ValueError("propagation needs a stack (3D or more); this image is 2D")
        axis = lead - 1 if settings.axis is None else int(settings.axis)
        if not 0 <= axis < lead:
            raise ValueError(f"axis {axis} is not a stack axis of this image (it has {lead})")
        slice_index = tuple(int(i) for i in slice_index)
        start_mask = np.asarray(labels.data[slice_index]) == label
        if not start_mask.any():
            raise ValueError(f"label {label} is not on the shown slice; go to a slice that has it")
        self.layers.clear_preview()

        def show_step(step: PropagationStep) -> None:
            if step.mask is not None:
                index = list(slice_index)
                index[axis] = step.slice_index
                self.layers.add_to_preview(image, tuple(index), step.mask)

        def write(result: Any) -> None:
            glue.write_mask_on_slices(
                labels, along_axis(result.masks, slice_index, axis), label, overwrite=overwrite
            )
            reasons = "; ".join(f"{k}: {v}" for k, v in result.stop_reasons.items())
            self.set_status(f"label {label} on {len(result.masks)} more slice(s) ({reasons})")

        self.task.start(
            propagate_through_stack,
            propagation_slice_segmenter(self.session, image, slice_index, axis),
            glue.spatial_shape(image)[axis],
            slice_index[axis],
            start_mask,
            **settings.as_kwargs(),
            description=f"Propagating label {label}",
            on_yielded=show_step,
            on_returned=write,
            on_finished=self.layers.clear_preview,
        )

    def segment_everything(
        self, image: Image, slices: Sequence[tuple[int, ...]], options: dict[str, Any]
    ) -> None:
        """Automatic segmentation of some slices into a new labels layer, in the background."""
        shape = glue.spatial_shape(image)

        def add_layer(labels: np.ndarray) -> None:
            layer = glue.new_labels_layer(image, f"SAM everything ({image.name})", labels)
            self.layers.add_below_prompts(layer)
            self.set_status(f"segment everything: {int(labels.max())} objects")

        self.task.start(
            segment_everything_job,
            self.session.model,
            lambda s: glue.read_slice(image, s),
            list(slices),
            shape,
            glue.contrast_limits_of(image),
            options,
            description="Segmenting everything",
            on_returned=add_layer,
        )
