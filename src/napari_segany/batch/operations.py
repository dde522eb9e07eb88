"""What a batch task does to one 2D slice: the per-command operations, on the pure pipelines.

Each operation is a frozen, picklable description (model source, parameters) with one method,
``run(image, contrast_limits, resources)``, that fetches its model from the process's
:class:`~napari_segany.batch.worker_resources.WorkerResources` and calls the same pipeline the
widgets and the scripting module call:

- :class:`SegmentEverything`: :func:`napari_segany.sam.automatic.segment_everything`;
- :class:`SegmentWithSegGpt`: :func:`napari_segany.seggpt.propagation.segment_stack_with_seggpt`
  on the slice, prompted by painted example images;
- :class:`SegmentWithText`: Grounded SAM, ``napari_segany.grounding.segment_with_text``.
- :class:`ComputeEmbedding`: the SAM image embedding, stored in the on-disk embedding cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_segany.batch.worker_resources import WorkerResources

__all__ = [
    "ModelSpec",
    "SegmentEverything",
    "SegmentWithSegGpt",
    "SliceOutcome",
]


@dataclass(frozen=True)
class ModelSpec:
    """A model as the user named it: registry name, hub id, folder or file; device; precision."""

    source: str
    device: str = "auto"
    precision: str = "auto"

    def describe(self) -> dict[str, str]:
        """For the run record."""
        return {"source": self.source, "device": self.device, "precision": self.precision}


@dataclass(frozen=True)
class SliceOutcome:
    """Result of an operation on one slice: (H, W) labels (None when nothing is written) and
    the number of objects."""

    labels: np.ndarray | None
    objects: int


def _count_objects(labels: np.ndarray) -> int:
    ids = np.unique(labels)
    return int(np.count_nonzero(ids))


def _load_sam_predictor(model: ModelSpec) -> Any:
    from napari_segany.sam import SamPredictor, load_sam

    return SamPredictor(load_sam(model.source, device=model.device, precision=model.precision))


@dataclass(frozen=True)
class SegmentEverything:
    """SAM automatic segmentation of a slice into instance labels (ids 1..N per slice).

    Attributes
    ----------
    model
        The SAM model.
    tile_size, tile_overlap
        Tiles of a large slice (``tile_size=None``: never tile); see ``segment_everything``.
    generator_options
        Keyword arguments of :class:`napari_segany.sam.SamAutomaticMaskGenerator`
        (``points_per_side``, ``pred_iou_thresh``, ...), as sorted (name, value) pairs.
    """

    model: ModelSpec
    tile_size: int | None = 1024
    tile_overlap: int = 256
    generator_options: tuple[tuple[str, Any], ...] = ()

    family = "sam"

    def run(
        self,
        image: np.ndarray,
        contrast_limits: tuple[float, float] | None,
        resources: WorkerResources,
    ) -> SliceOutcome:
        """Segment everything in ``image`` ((H, W) or (H, W, 3|4), any dtype)."""
        from napari_segany.jobs import run_to_completion
        from napari_segany.sam.automatic import segment_everything

        key = ("sam", self.model)
        with resources.using_model(key, lambda: _load_sam_predictor(self.model)) as predictor:
            result = run_to_completion(
                segment_everything(
                    predictor,
                    image,
                    contrast_limits=contrast_limits,
                    tile_size=self.tile_size,
                    tile_overlap=self.tile_overlap,
                    **dict(self.generator_options),
                )
            )
        return SliceOutcome(result.labels, len(result.records))


@dataclass(frozen=True)
class SegGptPrompts:
    """Painted examples: image files and their label files (same (H, W) for all pairs)."""

    images: tuple[str, ...]
    labels: tuple[str, ...]

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """(N, H, W[, C]) images and (N, H, W) labels (2D / 3D for one pair).

        Raises
        ------
        ValueError
            Unequal numbers of images and labels, or pairs of different shapes.
        """
        from napari_segany.batch.volumes import read_image_file

        if len(self.images) != len(self.labels) or not self.images:
            raise ValueError(
                f"give one --prompt-labels per --prompt-image (got {len(self.images)} images and "
                f"{len(self.labels)} label files)"
            )
        images = [read_image_file(p) for p in self.images]
        labels = [np.asarray(read_image_file(p)) for p in self.labels]
        for path, image, label in zip(self.labels, images, labels, strict=True):
            if label.ndim != 2 or label.shape != image.shape[:2]:
                raise ValueError(
                    f"prompt labels {path} have shape {label.shape}; their image is "
                    f"{image.shape[:2]} (labels must be one 2D integer image per prompt image)"
                )
            if not np.issubdtype(label.dtype, np.integer) and label.dtype != bool:
                raise ValueError(f"prompt labels {path} are not integers ({label.dtype})")
        if len(images) == 1:
            return images[0], labels[0].astype(np.int64)
        shapes = {image.shape for image in images}
        if len(shapes) > 1:
            raise ValueError(
                f"prompt images have different shapes {sorted(shapes)}; crop or resize them to "
                f"one shape"
            )
        return np.stack(images), np.stack(labels).astype(np.int64)


def _load_seggpt_predictor(model: ModelSpec) -> Any:
    from napari_segany.seggpt import SegGptPredictor, load_seggpt

    return SegGptPredictor(
        load_seggpt(model.source, device=model.device, precision=model.precision)
    )


@dataclass(frozen=True)
class SegmentWithSegGpt:
    """SegGPT in-context segmentation of a slice from painted examples (the prompts' label ids).

    Attributes
    ----------
    model
        The SegGPT model.
    prompts
        The painted examples.
    max_prompts
        At most this many examples per target (an even spread when there are more).
    uncertainty_threshold
        Pixels whose predicted colour is farther than this from every label colour become 0.
    """

    model: ModelSpec
    prompts: SegGptPrompts
    max_prompts: int = 4
    uncertainty_threshold: float | None = None

    family = "seggpt"

    def run(
        self,
        image: np.ndarray,
        contrast_limits: tuple[float, float] | None,
        resources: WorkerResources,
    ) -> SliceOutcome:
        """Labels of ``image`` ((H, W) or (H, W, 3|4)) in the prompts' ids."""
        from napari_segany.seggpt.propagation import PropagationSettings, segment_stack_with_seggpt

        prompt_images, prompt_labels = self.prompts.read()
        settings = PropagationSettings(
            max_prompts=self.max_prompts, uncertainty_threshold=self.uncertainty_threshold
        )
        key = ("seggpt", self.model)
        with resources.using_model(key, lambda: _load_seggpt_predictor(self.model)) as predictor:
            labels = segment_stack_with_seggpt(
                predictor,
                image,
                prompt_labels,
                prompt_images,
                settings=settings,
                target_rgb=image.ndim == 3,
                prompt_rgb=prompt_images.ndim == prompt_labels.ndim + 1,
                target_contrast_limits=contrast_limits,
            )
        return SliceOutcome(labels, _count_objects(labels))
