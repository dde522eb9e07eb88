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

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_segany.batch.worker_resources import WorkerResources

__all__ = [
    "ComputeEmbedding",
    "ModelSpec",
    "SegGptPrompts",
    "SegmentEverything",
    "SegmentWithSegGpt",
    "SegmentWithText",
    "SliceOutcome",
]


@dataclass(frozen=True)
class ModelSpec:
    """A model as the user named it: registry name, hub id, folder or file; device; precision."""

    source: str
    device: str = "auto"
    precision: str = "auto"
    compile_decoder: bool = False  # SAM: Sam.compile_decoder() once loaded

    def describe(self) -> dict[str, str]:
        """For the run record."""
        described = {"source": self.source, "device": self.device, "precision": self.precision}
        if self.compile_decoder:
            described["compile_decoder"] = "yes"
        return described


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

    sam = load_sam(model.source, device=model.device, precision=model.precision)
    if model.compile_decoder:
        sam.compile_decoder()
    return SamPredictor(sam)


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

    # -- a large slice as tile tasks (map: run_tile, reduce: merge_tiles) --------------------------

    def tiles(self, shape: tuple[int, int]) -> list[list[int]]:
        """Tiles ``[x0, y0, x1, y1]`` of a slice of ``shape`` ((H, W)); ``[]`` when not tiled.

        The same tiles :func:`~napari_segany.sam.automatic.segment_everything` cuts.
        """
        from napari_segany.sam.prompt_grid import generate_tiles

        if self.tile_size is None or max(shape) <= self.tile_size:
            return []
        return generate_tiles(tuple(shape), self.tile_size, self.tile_overlap)

    def tile_contrast_limits(
        self, image: Any, contrast_limits: tuple[float, float] | None
    ) -> tuple[float, float] | None:
        """One contrast pair for every tile of ``image`` (as ``segment_everything`` uses)."""
        from napari_segany.sam.tiling import global_contrast_limits

        return global_contrast_limits(image, contrast_limits)

    def run_tile(
        self,
        tile: np.ndarray,
        box: list[int],
        contrast_limits: tuple[float, float] | None,
        resources: WorkerResources,
    ) -> Any:
        """Mask candidates of one tile (pixels ``tile``, at ``box`` of the slice), in slice
        coordinates, before the tiles are merged."""
        from napari_segany.image_conversion import to_uint8_rgb
        from napari_segany.jobs import run_to_completion
        from napari_segany.sam.automatic import SamAutomaticMaskGenerator

        options = dict(self.generator_options)
        options["min_mask_region_area"] = 0  # applied once, after the merge
        rgb = to_uint8_rgb(np.asarray(tile), contrast_limits)
        key = ("sam", self.model)
        with resources.using_model(key, lambda: _load_sam_predictor(self.model)) as predictor:
            generator = SamAutomaticMaskGenerator(predictor, **options)
            found = run_to_completion(generator.iter_candidates(rgb))
        return found.shifted(int(box[0]), int(box[1])) if box[0] or box[1] else found

    def merge_tiles(
        self, parts: list[tuple[list[int], Any]], shape: tuple[int, int]
    ) -> SliceOutcome:
        """Labels of a slice from its tiles' candidates: merged, cleaned, painted."""
        from napari_segany.sam.automatic import SamAutomaticMaskGenerator
        from napari_segany.sam.mask_records import paint_labels
        from napari_segany.sam.small_regions import postprocess_small_regions
        from napari_segany.sam.tiling import merge_across_tiles

        defaults = inspect.signature(SamAutomaticMaskGenerator).parameters
        options = {name: p.default for name, p in defaults.items()}
        options.update(self.generator_options)
        candidates = merge_across_tiles(parts, options["tile_merge_iou"])
        if options["min_mask_region_area"] > 0:
            candidates = postprocess_small_regions(
                candidates,
                options["min_mask_region_area"],
                max(options["box_nms_thresh"], options["crop_nms_thresh"]),
                tuple(shape),
            )
        labels, painted = paint_labels(candidates, tuple(shape))
        return SliceOutcome(labels, len(painted))


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


@dataclass(frozen=True)
class ComputeEmbedding:
    """The SAM image embedding of a slice, stored in an on-disk embedding cache folder.

    The file is the one :func:`napari_segany.sam.open_sam_session` (``cache_dir``) and the SAM
    widget's cache folder look up for the same model, 8-bit image and contrast limits, so
    opening the data later needs no encoder run. Slices already in the folder are not
    recomputed. ``objects`` of the outcome counts embeddings computed (0 or 1).

    Attributes
    ----------
    model
        The SAM model.
    cache_dir
        The embedding cache folder.
    """

    model: ModelSpec
    cache_dir: str

    family = "sam"

    def run(
        self,
        image: np.ndarray,
        contrast_limits: tuple[float, float] | None,
        resources: WorkerResources,
    ) -> SliceOutcome:
        """Compute and store the embedding of ``image`` unless the folder has it."""
        from napari_segany.image_conversion import to_uint8_rgb
        from napari_segany.sam.embedding_cache import (
            EmbeddingDiskCache,
            disk_cache_key,
            image_fingerprint,
        )

        rgb = to_uint8_rgb(image, contrast_limits)
        disk = EmbeddingDiskCache(self.cache_dir)
        key = ("sam", self.model)
        with resources.using_model(key, lambda: _load_sam_predictor(self.model)) as predictor:
            model_id = predictor.model_id
            disk_key = disk_cache_key(
                model_id, image_fingerprint(rgb), contrast_limits=contrast_limits
            )
            if disk.get(disk_key, model_id=model_id) is not None:
                return SliceOutcome(None, 0)
            predictor.set_image(rgb)
            state = predictor.get_embedding_state()
        if not disk.put(disk_key, state):
            raise OSError(f"cannot write the embedding to {self.cache_dir}: {disk.disabled_reason}")
        return SliceOutcome(None, 1)


def _load_grounding_detector(model: ModelSpec) -> Any:
    from napari_segany.grounding import GroundingDinoDetector, load_grounding_dino

    return GroundingDinoDetector(
        load_grounding_dino(model.source, device=model.device, precision=model.precision)
    )


@dataclass(frozen=True)
class SegmentWithText:
    """Grounded SAM: Grounding DINO finds boxes for a text prompt, SAM segments each box.

    Attributes
    ----------
    model
        The SAM model.
    detector
        The Grounding DINO model.
    prompt
        What to find, e.g. ``"nucleus. mitochondrion."``.
    box_threshold, text_threshold, max_objects
        See :func:`napari_segany.grounding.segment_with_text`.
    """

    model: ModelSpec
    detector: ModelSpec
    prompt: str
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    max_objects: int = 100

    family = "grounded-sam"

    def run(
        self,
        image: np.ndarray,
        contrast_limits: tuple[float, float] | None,
        resources: WorkerResources,
    ) -> SliceOutcome:
        """Instance labels (1..N) of the objects the prompt names in ``image``."""
        from napari_segany.grounding import segment_with_text

        detector_key = ("grounding-dino", self.detector)
        sam_key = ("sam", self.model)
        with (
            resources.using_model(
                detector_key, lambda: _load_grounding_detector(self.detector)
            ) as detector,
            resources.using_model(sam_key, lambda: _load_sam_predictor(self.model)) as predictor,
        ):
            result = segment_with_text(
                image,
                self.prompt,
                detector=detector,
                sam=predictor,
                box_threshold=self.box_threshold,
                text_threshold=self.text_threshold,
                max_objects=self.max_objects,
                contrast_limits=contrast_limits,
            )
        return SliceOutcome(result.labels, len(result.objects))
