"""State of one interactive SAM session: model, embedding cache, current prompts, candidates.

No napari and no Qt here (STYLE rules 1 and 9): the widget owns one
:class:`InteractiveSamSession` and hands it plain arrays in the 2D slice's data coordinates,
napari order ``(row, col)``; the conversion to SAM's ``(x, y)`` happens in
:mod:`napari_segany.sam.coordinates`.

The session keeps two predictors on the same model: one computes embeddings (the expensive
``set_image``, run in a background thread), the other decodes prompts from a cached embedding (the
cheap ``predict``). So prompts can be decoded on one slice while the embedding of another is being
computed, and neither blocks the other.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any

import numpy as np

from napari_segany.image_conversion import to_uint8_rgb
from napari_segany.sam.coordinates import corners_to_sam_box, rowcol_to_xy
from napari_segany.sam.embedding_cache import EmbeddingCache, EmbeddingKey, image_fingerprint
from napari_segany.sam.session_prompts import (
    LOW_RES_MASK_SIZE,
    ObjectPrediction,
    SamPrompts,
    group_points_by_box,
    mask_to_mask_input,
)

__all__ = [
    "EmbeddingCancelled",
    "EmbeddingKey",
    "InteractiveSamSession",
    "ObjectPrediction",
    "SamPrompts",
    "group_points_by_box",
    "mask_to_mask_input",
]

logger = logging.getLogger(__name__)


class InteractiveSamSession:
    """Model, embedding cache, current prompts and candidate choice of one interactive session.

    Parameters
    ----------
    cache
        Embedding cache (a fresh in-memory :class:`EmbeddingCache` when not given).
    predictor_factory
        ``predictor_factory(model)`` returning an object with the
        :class:`napari_segany.sam.SamPredictor` interface; defaults to that class.

    Notes
    -----
    Order of use: :meth:`set_model`, then :meth:`compute_embedding` (a job, usually run in a
    background thread) or :meth:`activate` with a cached key, then :meth:`set_prompts` and
    :meth:`predict`. Calls out of order raise ``RuntimeError``.
    """

    def __init__(
        self,
        *,
        cache: EmbeddingCache | None = None,
        predictor_factory: Callable[[Any], Any] | None = None,
    ) -> None:
        self.cache = cache if cache is not None else EmbeddingCache()
        self._predictor_factory = predictor_factory
        self.model: Any = None
        self.model_id: str | None = None
        self.precision: str | None = None
        self._embedder: Any = None
        self._decoder: Any = None
        self._embed_lock = threading.Lock()
        self._decode_lock = threading.RLock()
        self.active_key: EmbeddingKey | None = None
        self.prompts = SamPrompts()
        self._prompts_set = False
        self.predictions: list[ObjectPrediction] = []
        self.candidate_offset = 0

    # -- model and embeddings ---------------------------------------------------------------

    @property
    def has_model(self) -> bool:
        """Whether :meth:`set_model` was called."""
        return self.model is not None

    @property
    def low_res_mask_size(self) -> int:
        """Side of the model's low-resolution mask grid (256 for the released SAM models)."""
        size = getattr(self.model, "low_res_mask_size", LOW_RES_MASK_SIZE)
        return int(size[0] if isinstance(size, tuple | list) else size)

    def set_model(self, model: Any, model_id: str, precision: str) -> None:
        """Use ``model`` from now on; ``model_id`` and ``precision`` name it in cache keys."""
        if model is self.model and model_id == self.model_id and precision == self.precision:
            return
        factory = self._predictor_factory
        if factory is None:
            from napari_segany.sam import SamPredictor

            factory = SamPredictor
        with self._embed_lock, self._decode_lock:
            self.model = model
            self.model_id = model_id
            self.precision = precision
            self._embedder = factory(model)
            self._decoder = factory(model)
            self.active_key = None
            self.predictions = []

    def embedding_key(
        self,
        layer_id: str,
        slice_index: Sequence[int] = (),
        contrast_limits: tuple[float, float] | None = None,
    ) -> EmbeddingKey:
        """The cache key of one 2D slice under the current model."""
        self._require_model()
        limits = (
            None
            if contrast_limits is None
            else (float(contrast_limits[0]), float(contrast_limits[1]))
        )
        return EmbeddingKey(
            str(layer_id),
            tuple(int(i) for i in slice_index),
            str(self.model_id),
            str(self.precision),
            limits,
        )

    def has_embedding(self, key: EmbeddingKey) -> bool:
        """Whether ``key``'s embedding is in memory (disk is only checked by :meth:`activate`)."""
        return key in self.cache

    def compute_embedding(
        self,
        key: EmbeddingKey,
        image: np.ndarray | Callable[[], np.ndarray],
        *,
        should_stop: Callable[[], bool] | None = None,
    ) -> Generator[tuple[int, int], None, EmbeddingKey]:
        """Job: compute (or fetch from disk) and cache the embedding of one 2D slice.

        Parameters
        ----------
        key
            From :meth:`embedding_key`; its ``contrast_limits`` are used for the 8-bit scaling.
        image
            (H, W) grayscale or (H, W, 3|4) RGB(A) slice, any numeric dtype; or a callable
            returning it, called in the job (so lazily loaded data is read off the GUI thread).
        should_stop
            Asked after every encoder block; when it returns ``True`` the embedding is abandoned
            (:class:`EmbeddingCancelled` is raised), so *Cancel* acts within one block.

        Yields
        ------
        tuple[int, int]
            ``(0, 1)`` before the encoder runs, ``(1, 1)`` after.

        Returns
        -------
        EmbeddingKey
            ``key``, now in the cache.
        """
        self._require_model()
        yield 0, 1
        self.embed_now(key, image, should_stop=should_stop)
        yield 1, 1
        return key

    def embed_now(
        self,
        key: EmbeddingKey,
        image: np.ndarray | Callable[[], np.ndarray],
        *,
        should_stop: Callable[[], bool] | None = None,
    ) -> Any:
        """Compute (or fetch) the embedding of one slice right away and cache it; returns the state.

        ``image`` is the slice or a callable returning it (only called when not cached);
        ``should_stop`` as in :meth:`compute_embedding`.
        """
        self._require_model()
        if key in self.cache:
            return self.cache.get(key)
        rgb = to_uint8_rgb(image() if callable(image) else image, key.contrast_limits)
        fingerprint = image_fingerprint(rgb) if self.cache.disk_dir is not None else None
        model_id = getattr(self._embedder, "model_id", None)  # stale disk files are a miss
        state = self.cache.get(key, fingerprint, model_id=model_id)
        if state is not None:
            return state
        with self._embed_lock:
            _set_image(self._embedder, rgb, should_stop)
            state = self._embedder.get_embedding_state()
        self.cache.put(key, state, fingerprint, model_id=model_id)
        return state

    def precompute_embeddings(
        self, items: Iterable[tuple[EmbeddingKey, Callable[[], np.ndarray]]], total: int
    ) -> Generator[tuple[int, int], None, int]:
        """Job: embed many slices (e.g. a whole stack), skipping those already cached.

        Parameters
        ----------
        items
            ``(key, read_slice)`` pairs; ``read_slice()`` returns the 2D slice (read lazily so a
            large stack is never loaded at once).
        total
            Number of items, for progress.

        Yields ``(done, total)`` after each slice; returns the number of slices newly computed.
        """
        self._require_model()
        computed = 0
        yield 0, total
        for done, (key, read_slice) in enumerate(items, start=1):
            if key not in self.cache:
                self.embed_now(key, read_slice())
                computed += 1
            yield done, total
        return computed

    def activate(self, key: EmbeddingKey) -> bool:
        """Decode prompts against ``key``'s embedding from now on; ``False`` if it is not cached.

        Cheap (no encoder run). Clears the predictions of the previous slice when the key changes.
        """
        self._require_model()
        if key == self.active_key:
            return True
        state = self.cache.get(key)
        if state is None:
            return False
        with self._decode_lock:
            self._decoder.set_embedding_state(state)
            self.active_key = key
            self.predictions = []
        return True

    # -- prompts and decoding ---------------------------------------------------------------

    def decode(self, key: EmbeddingKey, prompts: SamPrompts) -> list[ObjectPrediction]:
        """Decode ``prompts`` on ``key``'s embedding: activate, set prompts and predict, atomically.

        The one entry the widget's preview uses: the whole step holds the session's decode
        lock, so a prompt change on the GUI thread never interleaves with a decode in a worker.
        Returns the predictions (also kept in :attr:`predictions`).

        Raises
        ------
        LookupError
            ``key``'s embedding is not cached (compute it first).
        """
        with self._decode_lock:
            if not self.activate(key):
                raise LookupError("the image embedding is not in the cache; compute it first")
            self.set_prompts(prompts)
            return self.predict()

    def key_segmenter(
        self,
        layer_id: str,
        read_slice: Callable[[tuple[int, ...]], np.ndarray],
        contrast_limits: tuple[float, float] | None,
    ) -> Callable[[tuple[int, ...], SamPrompts], ObjectPrediction]:
        """``segment_at(slice_key, prompts)`` on the cached embeddings of one image's slices.

        For :func:`~napari_segany.sam.propagation.propagate_along_axis`; slices are read with
        ``read_slice(slice_key)`` only when their embedding is not cached.
        """

        def segment_at(slice_key: tuple[int, ...], prompts: SamPrompts) -> ObjectPrediction:
            key = self.embedding_key(layer_id, slice_key, contrast_limits)
            return self.segment_slice(key, lambda: read_slice(slice_key), prompts)

        return segment_at

    def set_prompts(self, prompts: SamPrompts) -> None:
        """Replace the current prompts (and forget predictions made from the previous ones)."""
        points = np.asarray(prompts.points_rc, dtype=np.float64).reshape(-1, 2)
        labels = np.asarray(prompts.point_labels, dtype=np.int64).reshape(-1)
        if len(points) != len(labels):
            raise ValueError(f"{len(points)} points but {len(labels)} point labels")
        self.prompts = SamPrompts(
            points,
            labels,
            [np.asarray(c, dtype=np.float64) for c in prompts.boxes_corners],
            prompts.mask,
        )
        self._prompts_set = True
        self.predictions = []

    def clear_prompts(self) -> None:
        """Forget prompts, predictions and the candidate choice."""
        with self._decode_lock:
            self.prompts = SamPrompts()
            self._prompts_set = False
            self.predictions = []
            self.candidate_offset = 0

    def predict(self) -> list[ObjectPrediction]:
        """Decode the current prompts against the active embedding.

        One object per box (each with the points that fall inside it, or the nearest box for
        points outside all boxes); without boxes, all points make one object. The mask prompt (if
        any) is used only for a single object.

        Returns
        -------
        list[ObjectPrediction]
            One entry per object (empty when there is no prompt); also kept in
            :attr:`predictions`.

        Raises
        ------
        RuntimeError
            No model, no active embedding, or :meth:`set_prompts` was not called.
        """
        self._require_model()
        if self.active_key is None:
            raise RuntimeError("no embedding is active: compute or activate one before predict()")
        if not self._prompts_set:
            raise RuntimeError("set_prompts() must be called before predict()")
        prompts = self.prompts
        groups = group_points_by_box(prompts.points_rc, prompts.boxes_corners)
        mask_input = None
        if prompts.mask is not None and len(groups) == 1 and prompts.mask.any():
            mask_input = mask_to_mask_input(prompts.mask, self.low_res_mask_size)
        predictions = []
        with self._decode_lock:
            for box_corners, point_index in groups:
                prediction = self._predict_object(
                    self._decoder,
                    prompts.points_rc[point_index],
                    prompts.point_labels[point_index],
                    box_corners,
                    mask_input,
                    lazy=True,
                )
                prediction.mask(self._chosen_index(prediction))  # the one the preview shows
                predictions.append(prediction)
        self.predictions = predictions
        return predictions

    def segment_slice(
        self,
        key: EmbeddingKey,
        image: np.ndarray | Callable[[], np.ndarray],
        prompts: SamPrompts,
    ) -> ObjectPrediction:
        """Decode one object on any slice, computing its embedding first if it is not cached.

        Runs on the embedding predictor (the one :meth:`compute_embedding` uses), so it neither
        changes the active embedding nor waits for interactive decoding: meant for background
        jobs such as :func:`~napari_segany.sam.propagation.propagate_through_stack`.

        Parameters
        ----------
        key
            The slice's cache key (:meth:`embedding_key`).
        image
            The (H, W[, 3]) slice, or a callable returning it (only called when not cached).
        prompts
            Points, at most one box (the first is used) and optionally a mask, ``(row, col)``.
        """
        self._require_model()
        state = self.cache.get(key)
        if state is None:
            state = self.embed_now(key, image)
        box = prompts.boxes_corners[0] if prompts.boxes_corners else None
        mask_input = (
            mask_to_mask_input(prompts.mask, self.low_res_mask_size)
            if prompts.mask is not None
            else None
        )
        with self._embed_lock:
            self._embedder.set_embedding_state(state)
            return self._predict_object(
                self._embedder,
                np.asarray(prompts.points_rc, dtype=np.float64).reshape(-1, 2),
                np.asarray(prompts.point_labels, dtype=np.int64).reshape(-1),
                box,
                mask_input,
            )

    def _predict_object(
        self,
        predictor: Any,
        points_rc: np.ndarray,
        labels: np.ndarray,
        box_corners: np.ndarray | None,
        mask_input: np.ndarray | None,
        *,
        lazy: bool = False,
    ) -> ObjectPrediction:
        """Decode one object; ``lazy``: full-size masks only for the candidates asked for.

        Lazy upscaling needs a predictor with ``upscale_mask`` (``SamPredictor``); the masks
        are upscaled on the embedding active now, so the prediction must be used before another
        one is activated (:meth:`activate` forgets the predictions).
        """
        lazy = lazy and hasattr(predictor, "upscale_mask")
        kwargs = {"return_low_res_only": True} if lazy else {}
        masks, scores, logits = predictor.predict(
            point_coords=rowcol_to_xy(points_rc) if len(points_rc) else None,
            point_labels=labels if len(points_rc) else None,
            box=corners_to_sam_box(box_corners) if box_corners is not None else None,
            mask_input=mask_input,
            multimask_output=True,
            **kwargs,
        )
        logits = np.asarray(logits, dtype=np.float32)
        if not lazy:
            return ObjectPrediction(
                np.asarray(masks, dtype=bool), np.asarray(scores, dtype=np.float32), logits
            )

        def upscale(index: int) -> np.ndarray:
            with self._decode_lock:
                return predictor.upscale_mask(logits, index)

        return ObjectPrediction(None, np.asarray(scores, dtype=np.float32), logits, upscale)

    def cycle_candidate(self) -> int:
        """Show the next candidate mask (of each object); returns the new offset."""
        self.candidate_offset += 1
        return self.candidate_offset

    def chosen_masks(
        self, predictions: Sequence[ObjectPrediction] | None = None
    ) -> list[np.ndarray]:
        """(H, W) bool mask per object: the candidate ranked ``candidate_offset`` by score.

        ``predictions`` defaults to the latest :attr:`predictions`.
        """
        predictions = self.predictions if predictions is None else predictions
        return [p.mask(self._chosen_index(p)) for p in predictions]

    def chosen_scores(self, predictions: Sequence[ObjectPrediction] | None = None) -> list[float]:
        """Predicted IoU of each object's chosen candidate (see :meth:`chosen_masks`)."""
        predictions = self.predictions if predictions is None else predictions
        return [float(p.scores[self._chosen_index(p)]) for p in predictions]

    def _chosen_index(self, prediction: ObjectPrediction) -> int:
        order = prediction.ranked()
        return int(order[self.candidate_offset % len(order)])

    def _require_model(self) -> None:
        if self.model is None:
            raise RuntimeError("no model: call set_model() first")


class EmbeddingCancelled(Exception):
    """An embedding was abandoned between two encoder blocks because the job was cancelled."""


def _set_image(predictor: Any, rgb: np.ndarray, should_stop: Callable[[], bool] | None) -> None:
    """``predictor.set_image(rgb)``, checking ``should_stop`` after every encoder block."""
    if should_stop is None:
        predictor.set_image(rgb)
        return

    def on_block(done: int, total: int) -> None:
        if should_stop():
            raise EmbeddingCancelled(f"embedding cancelled after block {done} of {total}")

    if should_stop():
        raise EmbeddingCancelled("embedding cancelled before it started")
    try:
        predictor.set_image(rgb, on_block=on_block)
    except TypeError as exc:  # a predictor without the per-block callback
        if "on_block" not in str(exc):
            raise
        predictor.set_image(rgb)
