"""Segment everything: SAM prompted with a grid of points, filtered, de-duplicated, labelled.

:class:`SamAutomaticMaskGenerator` has the official ``segment_anything`` generator's parameters,
defaults and records, and keeps the same masks given the same model outputs. It is faster because
it filters by predicted IoU before upscaling any mask, upscales in bounded chunks, never encodes
masks as RLE and stores kept masks cropped to their boxes. :func:`segment_everything` is the
generator a GUI runs in a worker thread: it yields progress, tiles large images and returns one
instance label image.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_segany.errors import explain_out_of_memory
from napari_segany.image_conversion import to_uint8_rgb
from napari_segany.jobs import run_to_completion
from napari_segany.sam.box_nms import box_area, non_maximum_suppression
from napari_segany.sam.mask_records import (
    MaskCandidates,
    mask_to_uncompressed_rle,
    paint_labels,
    records_to_label_image,
)
from napari_segany.sam.point_decoding import PointPromptDecoder
from napari_segany.sam.prompt_grid import (
    build_all_layer_point_grids,
    generate_crop_boxes,
    generate_tiles,
)
from napari_segany.sam.small_regions import postprocess_small_regions
from napari_segany.sam.tiling import global_contrast_limits, merge_across_tiles

__all__ = [
    "SamAutomaticMaskGenerator",
    "SegmentEverythingResult",
    "records_to_label_image",
    "segment_everything",
]

Progress = Generator[tuple[int, int], None, Any]


class SamAutomaticMaskGenerator:
    """Masks for every object in an image, from a grid of single-point prompts.

    Parameters follow the official ``segment_anything.SamAutomaticMaskGenerator`` and have its
    defaults; with them (and no tiling) the kept masks equal the official ones.

    Parameters
    ----------
    model
        A loaded SAM model (``napari_segany.sam.load_sam`` or the official package) or a
        ``SamPredictor``. With ``reuse_embedding=True``, a predictor whose embedding is already
        set for an image of the same size as the one passed to :meth:`generate` is used without
        recomputing it: it must then be the embedding of that very image (e.g. the current
        slice's, set from a cache just before). The predictor's embedding is restored afterwards
        when crops or tiles replaced it (where it supports ``get_embedding_state``).
    points_per_side
        Grid points along each side (``points_per_side**2`` prompts), or None with
        ``point_grids``.
    points_per_batch
        Prompts decoded at once (memory vs speed).
    pred_iou_thresh
        Keep masks whose predicted IoU is above this.
    stability_score_thresh, stability_score_offset
        Keep masks whose stability (IoU of the masks at logit thresholds +/- offset) is at least
        this.
    box_nms_thresh
        Box IoU above which masks of one crop are duplicates (the higher predicted IoU wins).
    crop_n_layers, crop_nms_thresh, crop_overlap_ratio, crop_n_points_downscale_factor
        Crop pyramid: layer ``i`` cuts the image into ``(2**i)**2`` overlapping crops prompted by
        ``points_per_side / factor**i`` points a side; duplicates across crops are removed by NMS
        preferring smaller crops.
    point_grids
        Explicit normalised (N, 2) (x, y) grids, one per crop layer.
    min_mask_region_area
        If > 0, fill holes and remove islands smaller than this (pixels), then NMS again.
    output_mode
        ``segmentation`` as an (H, W) bool array (``"binary_mask"``), an uncompressed RLE dict
        (``"uncompressed_rle"``) or a COCO RLE (``"coco_rle"``, needs pycocotools).
    skip_covered_points
        Keyword-only, default False. Skip grid points that already lie inside a mask kept from an
        earlier batch of the same crop. Faster on crowded images, but changes the result: an
        object seen only from such points (e.g. a part inside a larger object) is not proposed.
    tile_size, tile_overlap
        Keyword-only, default None (no tiling, the reference behaviour). Process images larger
        than ``tile_size`` pixels in tiles of that size overlapping by ``tile_overlap``, each
        tile with its own embedding, and merge instances cut by tile borders (see
        :func:`napari_segany.sam.tiling.merge_across_tiles`).
    tile_merge_iou
        IoU within the overlap of two tiles above which two masks are one object.
    reuse_embedding
        Keyword-only, default False (the embedding is always computed). Use a predictor's current
        embedding for the whole image (see ``model``); never reused with tiles.
    upscale_chunk_bytes
        Memory budget for full-resolution logits upscaled at once. The default, 16 MB (two
        candidates of a 1024² image), keeps them in the CPU's caches: segment everything on a
        1024² image (ViT-B, 2 cores, 32 x 32 points) took 12.0 s with it, 19.7 s with 256 MB,
        the same masks.
    """

    def __init__(
        self,
        model: Any,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        *,
        skip_covered_points: bool = False,
        tile_size: int | None = None,
        tile_overlap: int = 256,
        tile_merge_iou: float = 0.5,
        reuse_embedding: bool = False,
        upscale_chunk_bytes: int = 16 * 2**20,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        if points_per_side is not None:
            self.point_grids = build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        else:
            self.point_grids = [np.asarray(g, dtype=np.float64) for g in point_grids]
        if len(self.point_grids) < crop_n_layers + 1:
            raise ValueError(f"need {crop_n_layers + 1} point grids, got {len(self.point_grids)}")
        if points_per_batch < 1:
            raise ValueError(f"points_per_batch must be >= 1, got {points_per_batch}")
        if tile_size is not None and tile_size <= tile_overlap:
            raise ValueError(
                f"tile_size ({tile_size}) must be larger than tile_overlap ({tile_overlap})"
            )
        if output_mode not in ("binary_mask", "uncompressed_rle", "coco_rle"):
            raise ValueError(f"unknown output_mode {output_mode!r}")
        self.output_mode = output_mode
        self.decoder = PointPromptDecoder(model)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.skip_covered_points = skip_covered_points
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.tile_merge_iou = tile_merge_iou
        self.reuse_embedding = reuse_embedding
        self.upscale_chunk_bytes = upscale_chunk_bytes

    @property
    def predictor(self) -> Any:
        """The predictor that computes embeddings and decodes prompts."""
        return self.decoder.predictor

    def generate(
        self, image: np.ndarray, contrast_limits: tuple[float, float] | None = None
    ) -> list[dict[str, Any]]:
        """Masks of every object, as the official generator's records.

        Parameters
        ----------
        image
            (H, W) grayscale or (H, W, 3|4) RGB(A), any dtype (see
            :func:`napari_segany.image_conversion.to_uint8_rgb`).
        contrast_limits
            Intensities mapped to 0 and 255, or None for automatic scaling.

        Returns
        -------
        list of dict
            ``segmentation`` ((H, W) bool), ``area`` (int), ``bbox`` (XYWH), ``predicted_iou``,
            ``point_coords`` ([[x, y]]), ``stability_score``, ``crop_box`` (XYWH).
        """
        candidates = run_to_completion(self.iter_candidates(image, contrast_limits))
        records = candidates.to_records(tuple(np.shape(image)[:2]))
        if self.output_mode != "binary_mask":
            for record in records:
                record["segmentation"] = _encode(record["segmentation"], self.output_mode)
        return records

    def count_steps(self, image_shape: tuple[int, int]) -> int:
        """Progress steps of :meth:`iter_candidates`: per crop, one embedding plus its batches."""
        steps = 0
        for tile in self._tiles(image_shape):
            tile_shape = (tile[3] - tile[1], tile[2] - tile[0])
            for _, layer in zip(
                *generate_crop_boxes(tile_shape, self.crop_n_layers, self.crop_overlap_ratio),
                strict=True,
            ):
                steps += 1 + math.ceil(len(self.point_grids[layer]) / self.points_per_batch)
        return steps

    def iter_candidates(
        self, image: np.ndarray, contrast_limits: tuple[float, float] | None = None
    ) -> Progress:
        """Generator of the whole pipeline: yields ``(done, total)`` steps, returns the masks.

        Returns (as ``StopIteration.value``) a :class:`MaskCandidates` in image coordinates.
        """
        shape = tuple(np.shape(image)[:2])
        tiles = self._tiles(shape)
        total = self.count_steps(shape)
        progress = [0, total]
        saved_state = self.decoder.save_embedding()
        try:
            if len(tiles) == 1:
                rgb = to_uint8_rgb(np.asarray(image), contrast_limits)
                reuse = self.reuse_embedding and self.decoder.has_embedding_for(shape)
                candidates = yield from self._whole_image(rgb, progress, reuse_embedding=reuse)
            else:
                limits = global_contrast_limits(image, contrast_limits)
                parts = []
                for x0, y0, x1, y1 in tiles:
                    rgb = to_uint8_rgb(np.asarray(image[y0:y1, x0:x1]), limits)
                    found = yield from self._whole_image(rgb, progress, reuse_embedding=False)
                    parts.append(([x0, y0, x1, y1], found.shifted(x0, y0)))
                candidates = merge_across_tiles(parts, self.tile_merge_iou)
        finally:
            self.decoder.restore_embedding(saved_state)
        if self.min_mask_region_area > 0:
            candidates = postprocess_small_regions(
                candidates,
                self.min_mask_region_area,
                max(self.box_nms_thresh, self.crop_nms_thresh),
                shape,
            )
        return candidates

    def _tiles(self, shape: tuple[int, int]) -> list[list[int]]:
        height, width = shape
        if self.tile_size is None or max(height, width) <= self.tile_size:
            return [[0, 0, width, height]]
        return generate_tiles(shape, self.tile_size, self.tile_overlap)

    def _whole_image(
        self, rgb: np.ndarray, progress: list[int], *, reuse_embedding: bool
    ) -> Progress:
        shape = rgb.shape[:2]
        crop_boxes, layers = generate_crop_boxes(shape, self.crop_n_layers, self.crop_overlap_ratio)
        parts = []
        for crop_box, layer in zip(crop_boxes, layers, strict=True):
            reuse = reuse_embedding and layer == 0
            found = yield from self._process_crop(rgb, crop_box, layer, progress, reuse)
            parts.append(found)
        candidates = MaskCandidates.concatenate(parts)
        if len(crop_boxes) > 1 and len(candidates):
            # Duplicates across crops: prefer masks from smaller crops.
            scores = 1 / box_area(candidates.crop_boxes)
            keep = non_maximum_suppression(candidates.boxes.float(), scores, self.crop_nms_thresh)
            candidates = candidates.select(keep)
        return candidates

    def _process_crop(
        self,
        rgb: np.ndarray,
        crop_box: list[int],
        layer: int,
        progress: list[int],
        reuse_embedding: bool,
    ) -> Progress:
        x0, y0, x1, y1 = crop_box
        crop = rgb[y0:y1, x0:x1]
        crop_size = crop.shape[:2]
        if not reuse_embedding:
            self.decoder.set_image(crop)
        progress[0] += 1
        yield tuple(progress)

        points = self.point_grids[layer] * np.array(crop_size)[None, ::-1]
        image_box = [0, 0, rgb.shape[1], rgb.shape[0]]
        covered = np.zeros(crop_size, dtype=bool) if self.skip_covered_points else None
        parts = []
        for start in range(0, len(points), self.points_per_batch):
            batch = points[start : start + self.points_per_batch]
            if covered is not None:
                batch = batch[~_points_covered(batch, covered)]
            if len(batch):
                found = self.decoder.decode_points(
                    batch,
                    crop_box,
                    image_box,
                    pred_iou_thresh=self.pred_iou_thresh,
                    stability_score_thresh=self.stability_score_thresh,
                    stability_score_offset=self.stability_score_offset,
                    chunk_bytes=self.upscale_chunk_bytes,
                    defer_masks=covered is None,  # the coverage needs the masks at once
                )
                parts.append(found)
                if covered is not None:
                    _paint_coverage(covered, found)
            progress[0] += 1
            yield tuple(progress)

        candidates = MaskCandidates.concatenate(parts)
        if len(candidates):
            keep = non_maximum_suppression(
                candidates.boxes.float(), candidates.predicted_iou, self.box_nms_thresh
            )
            candidates = candidates.select(keep)
        candidates = self.decoder.make_masks(candidates, self.upscale_chunk_bytes)
        if x0 or y0:
            candidates = candidates.shifted(x0, y0)
        candidates.crop_boxes = torch.as_tensor(
            [crop_box] * len(candidates), dtype=torch.long
        ).reshape(-1, 4)
        return candidates


@dataclass
class SegmentEverythingResult:
    """Result of :func:`segment_everything`.

    Attributes
    ----------
    labels
        (H, W) int32 instance labels, 0 background (rule: :func:`records_to_label_image`).
    records
        One dict per label ``k`` at position ``k - 1``: ``label``, ``area`` (pixels of the
        mask before overlaps were resolved), ``bbox`` (XYWH), ``predicted_iou``,
        ``point_coords``, ``stability_score``, ``crop_box`` (XYWH of its crop or tile). No
        full-size ``segmentation``: the label image holds the masks.
    """

    labels: np.ndarray
    records: list[dict[str, Any]]


def segment_everything(
    model_or_predictor: Any,
    image: np.ndarray,
    *,
    contrast_limits: tuple[float, float] | None = None,
    tile_size: int | None = 1024,
    tile_overlap: int = 256,
    **generator_options: Any,
) -> Generator[tuple[int, int], None, SegmentEverythingResult]:
    """Instance labels of every object in a 2D image; a generator that reports progress.

    Yields ``(done, total)`` after each embedding and each decoded batch of prompts, and returns
    (``StopIteration.value``; ``result = yield from segment_everything(...)``) a
    :class:`SegmentEverythingResult`. Images larger than ``tile_size`` are processed in
    overlapping tiles at full resolution, one embedding per tile at a time, and objects cut by
    tile borders are merged; smaller images give exactly the generator's masks.

    Parameters
    ----------
    model_or_predictor
        A loaded SAM model or a ``SamPredictor`` (see :class:`SamAutomaticMaskGenerator`).
    image
        (H, W) grayscale or (H, W, 3|4) RGB(A), any dtype. One 2D slice: loop over stacks.
        Any array with ``shape`` and numpy slicing (numpy, dask, zarr): tiles are read one at a
        time.
    contrast_limits
        Intensities mapped to 0 and 255 (the napari layer's), the same for every tile.
    tile_size, tile_overlap
        Tile side and overlap in image pixels; ``tile_size=None`` never tiles (a large image is
        then seen downscaled to the model's input size, as by the official generator).
    **generator_options
        Any :class:`SamAutomaticMaskGenerator` parameter.
    """
    if not hasattr(image, "shape"):
        image = np.asarray(image)
    if len(image.shape) not in (2, 3) or (
        len(image.shape) == 3 and image.shape[-1] not in (1, 3, 4)
    ):
        raise ValueError(
            f"segment_everything takes one 2D slice, (H, W) or (H, W, 3|4); got shape {image.shape}"
        )
    generator = SamAutomaticMaskGenerator(
        model_or_predictor, tile_size=tile_size, tile_overlap=tile_overlap, **generator_options
    )
    with explain_out_of_memory(
        f"segmenting everything in a {image.shape[0]} x {image.shape[1]} image",
        "segment it in tiles (tile_size=1024) or decode fewer prompts at once "
        "(points_per_batch=16)",
    ):
        candidates = yield from generator.iter_candidates(image, contrast_limits)
    labels, painted = paint_labels(candidates, tuple(image.shape[:2]))
    records = []
    for label, index in enumerate(painted, start=1):
        record = candidates.record(index)
        record["label"] = label
        records.append(record)
    return SegmentEverythingResult(labels=labels, records=records)


def segment_everything_job(
    model_or_predictor: Any,
    read: Any,
    slice_keys: Any,
    shape: tuple[int, ...],
    contrast_limits: tuple[float, float] | None,
    options: dict[str, Any],
) -> Generator[tuple[int, int], None, np.ndarray]:
    """Job: :func:`segment_everything` on some 2D slices of a stack, into one label volume.

    Parameters
    ----------
    model_or_predictor
        A loaded SAM model or a ``SamPredictor``.
    read
        ``read(slice_key) -> (H, W[, C]) array``, called in the job (lazy data is read off the
        GUI thread).
    slice_keys
        Leading-axis indices of the slices to segment (``[()]`` for a 2D image).
    shape
        Spatial shape of the whole image, ``(*leading, H, W)``; the result has this shape.
    contrast_limits
        Intensities mapped to 0 and 255, the same for every slice.
    options
        Keyword arguments of :func:`segment_everything`.

    Yields overall ``(done, total)`` (each slice's own progress scaled into its share) and returns
    an int32 label volume of ``shape``; ids of later slices are offset so that they are unique
    across the volume.
    """
    slice_keys = [tuple(int(i) for i in key) for key in slice_keys]
    labels = np.zeros(shape, dtype=np.int32)
    scale = 1000
    total = scale * len(slice_keys)
    offset = 0
    yield 0, total
    for n, key in enumerate(slice_keys):
        job = segment_everything(
            model_or_predictor, read(key), contrast_limits=contrast_limits, **options
        )
        while True:
            try:
                done, sub_total = next(job)
            except StopIteration as stop:
                result = stop.value
                break
            yield n * scale + int(scale * done / max(sub_total, 1)), total
        plane = np.asarray(result.labels, dtype=np.int32)
        labels[key] = np.where(plane > 0, plane + offset, 0)
        offset = max(offset, int(labels[key].max(initial=0)))
        yield (n + 1) * scale, total
    return labels


def _encode(mask: np.ndarray, output_mode: str) -> dict[str, Any]:
    rle = mask_to_uncompressed_rle(mask)
    if output_mode == "uncompressed_rle":
        return rle
    from pycocotools import mask as coco_mask  # optional, as in the official package

    encoded = coco_mask.frPyObjects(rle, *rle["size"])
    encoded["counts"] = encoded["counts"].decode("utf-8")
    return encoded


def _points_covered(points: np.ndarray, covered: np.ndarray) -> np.ndarray:
    height, width = covered.shape
    cols = np.clip(points[:, 0].astype(np.int64), 0, width - 1)
    rows = np.clip(points[:, 1].astype(np.int64), 0, height - 1)
    return covered[rows, cols]


def _paint_coverage(covered: np.ndarray, candidates: MaskCandidates) -> None:
    for (x0, y0, x1, y1), crop in zip(candidates.boxes.tolist(), candidates.crops, strict=True):
        covered[y0 : y1 + 1, x0 : x1 + 1] |= crop.numpy()
