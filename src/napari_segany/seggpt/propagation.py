"""Propagating painted labels through a stack with SegGPT (numpy only, no GUI).

The user paints a few slices of a labels stack; every other slice of a target stack is segmented
in context, with the painted slices (and their images) as prompts. :class:`SlicePropagation`
validates the inputs and plans the run (which slices are prompts for which targets, in which
order; see :mod:`napari_segany.seggpt.slice_planning`), then runs the predictor as a generator
that yields each slice as soon as it is done (targets sharing their prompts go through the model
in batches), so a GUI can write slices as they come, show progress and cancel.
:func:`merge_labels` combines a result with existing labels without touching what the user
painted, and :func:`segment_stack_with_seggpt` does it all for arrays.

Axis conventions: an image stack is ``(*leading, H, W)`` for grayscale or ``(*leading, H, W, C)``
for RGB(A); a label stack is ``(*leading, H, W)``. ``leading`` are the slice axes (Z, or T, or
T and Z); a slice is addressed by its *slice key*, the tuple of its leading indices (``()`` for a
plain 2D image).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

from napari_segany.errors import explain_out_of_memory
from napari_segany.image_conversion import to_uint8_rgb
from napari_segany.seggpt.slice_planning import (
    SliceKey,
    StackLayout,
    check_prompt_stack,
    choose_prompts,
    labelled_slices,
    prompt_keys_with_labels,
    select_slices,
    stack_contrast_limits,
    video_order,
)

__all__ = [
    "PropagationSettings",
    "SliceKey",
    "SlicePropagation",
    "StackLayout",
    "choose_prompts",
    "compact_labels",
    "label_dtype",
    "labelled_slices",
    "merge_labels",
    "segment_stack_with_seggpt",
    "select_slices",
    "stack_contrast_limits",
    "video_order",
]


class SegGptPredictorLike(Protocol):
    """What propagation needs from :class:`napari_segany.seggpt.SegGptPredictor`."""

    def set_prompts(self, images: list[np.ndarray], labels: list[np.ndarray], num_labels=None): ...

    def predict(self, image: np.ndarray, *, return_confidence: bool = False): ...


@dataclass(frozen=True)
class PropagationSettings:
    """How prompts are chosen and predictions kept.

    Attributes
    ----------
    max_prompts
        At most this many painted slices are prompts for one target (the feature ensemble costs one
        more prompt/target pair per prompt). With more painted slices than this, each target uses
        the nearest ones when the prompts are slices of the target stack, otherwise an even spread.
    use_previous_frame
        Video / time mode: the prediction of the neighbouring frame (along ``time_axis``, towards the
        nearest painted frame) is an extra prompt, which lets SegGPT track objects that move.
    time_axis
        The leading axis that is time, for ``use_previous_frame``.
    uncertainty_threshold
        Pixels whose predicted colour is farther than this from every palette colour (the
        predictor's distance map, 0-255 RGB units) are left unlabelled (0). ``None`` keeps all.
    overwrite_existing
        When merging into existing labels: replace labelled pixels too (``True``), or fill only
        unlabelled pixels (``False``, the default).
    batch_size
        Targets that share their prompts go through the model this many at a time (``None``: the
        predictor's choice, which fits the device's memory). ``1`` yields every slice as soon as
        it is done and lets a cancel take effect sooner.
    """

    max_prompts: int = 4
    use_previous_frame: bool = False
    time_axis: int = 0
    uncertainty_threshold: float | None = None
    overwrite_existing: bool = False
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.max_prompts < 1:
            raise ValueError(f"max_prompts must be at least 1, got {self.max_prompts}")
        if self.uncertainty_threshold is not None and self.uncertainty_threshold < 0:
            raise ValueError(
                f"uncertainty_threshold must be >= 0, got {self.uncertainty_threshold}"
            )


def merge_labels(
    existing: np.ndarray, predicted: np.ndarray, *, overwrite: bool = False
) -> np.ndarray:
    """Combine a predicted (H, W) label map with the existing one.

    ``overwrite=False`` keeps every labelled pixel of ``existing`` and fills only its zeros;
    ``overwrite=True`` returns the prediction. The result has ``existing``'s dtype.
    """
    predicted = np.asarray(predicted)
    if predicted.shape != existing.shape:
        raise ValueError(
            f"prediction shape {predicted.shape} differs from the labels' {existing.shape}"
        )
    if overwrite:
        return predicted.astype(existing.dtype, copy=True)
    return np.where(existing != 0, existing, predicted).astype(existing.dtype, copy=False)


class SlicePropagation:
    """A planned SegGPT run over target slices; :meth:`run` yields ``(slice key, labels)``.

    Construction validates everything and plans the order (cheap, no model needed), so a GUI can
    report bad inputs before loading a model or starting a worker; :meth:`run` then predicts one
    slice at a time and yields each result as soon as it is done (a consumer may stop early).

    Parameters
    ----------
    target
        Image stack to segment, ``(*leading, H, W)`` or ``(*leading, H, W, C)``, any dtype; any
        array-like that numpy-style indexing reads slice by slice (numpy, dask, zarr).
    prompt_images, prompt_labels
        Prompt image stack ``(*pleading, H', W'[, C])`` and its labels ``(*pleading, H', W')``
        (integers, 0 = background). May be the target stack itself (``prompts_in_target=True``).
    targets
        The slice keys of ``target`` to segment (see :func:`select_slices`).
    prompt_slices
        Slice keys of the prompt stack to use as prompts; by default every slice with labels.
    settings
        :class:`PropagationSettings`.
    prompts_in_target
        The prompt image stack *is* the target stack: prompts are chosen nearest to each target
        and, in video mode, painted frames start the tracks.
    skip_prompt_slices
        Leave the prompt slices out of the targets even if listed, so painted slices are never
        predicted over. Default: ``prompts_in_target`` (also wanted when the results go into the
        painted labels themselves).
    target_rgb, prompt_rgb
        Whether the last axis of the image is colour; ``None`` guesses (last axis 3 or 4).
    target_contrast_limits, prompt_contrast_limits
        Intensities mapped to black and white (napari's contrast limits). By default one pair
        for the whole stack (:func:`stack_contrast_limits`), so every slice is scaled alike.

    Raises
    ------
    ValueError
        Prompt images and labels of different shapes, no labels in the prompt slices, non-integer
        or negative labels, a prompt slice outside the prompt stack, a bad time axis.
    """

    def __init__(
        self,
        target: Any,
        prompt_images: Any,
        prompt_labels: Any,
        *,
        targets: Sequence[SliceKey],
        prompt_slices: Sequence[SliceKey] | None = None,
        settings: PropagationSettings | None = None,
        prompts_in_target: bool = False,
        skip_prompt_slices: bool | None = None,
        target_rgb: bool | None = None,
        prompt_rgb: bool | None = None,
        target_contrast_limits: tuple[float, float] | None = None,
        prompt_contrast_limits: tuple[float, float] | None = None,
    ) -> None:
        self.settings = settings or PropagationSettings()
        self.target_layout = StackLayout.of(np.shape(target), target_rgb)
        self.prompt_layout = check_prompt_stack(prompt_images, prompt_labels, prompt_rgb)
        self.prompt_keys = prompt_keys_with_labels(prompt_labels, self.prompt_layout, prompt_slices)
        leading = self.target_layout.leading_shape
        if prompts_in_target and self.prompt_layout.leading_shape != leading:
            raise ValueError(
                f"prompts_in_target needs the prompt stack's slice shape "
                f"{self.prompt_layout.leading_shape} to equal the target's {leading}"
            )
        self.video = self.settings.use_previous_frame and len(leading) > 0
        if self.video and not 0 <= self.settings.time_axis < len(leading):
            raise ValueError(
                f"time axis {self.settings.time_axis} is not a slice axis of a stack with slice "
                f"shape {leading}"
            )
        if skip_prompt_slices is None:
            skip_prompt_slices = prompts_in_target
        skip = skip_prompt_slices and self.prompt_layout.leading_shape == leading
        skipped = set(self.prompt_keys) if skip else set()
        todo = [tuple(int(i) for i in k) for k in targets]
        todo = [k for k in dict.fromkeys(todo) if k not in skipped]
        if self.video:
            anchors = self.prompt_keys if prompts_in_target else ()
            self.plan = video_order(todo, anchors, self.settings.time_axis)
        else:
            self.plan = [(key, None) for key in todo]
        self.target = target
        # What was painted when the run was planned: the GUI may write into the labels meanwhile.
        self._painted = {
            k: np.array(prompt_labels[k], dtype=np.int64, copy=True) for k in self.prompt_keys
        }
        self._painted_ids = {k: nonzero_ids(v) for k, v in self._painted.items()}
        self.prompt_images = prompt_images
        self.prompt_labels = prompt_labels
        self.prompts_in_target = prompts_in_target
        if target_contrast_limits is None:
            target_contrast_limits = stack_contrast_limits(target, self.target_layout)
        if prompt_contrast_limits is None:
            prompt_contrast_limits = (
                target_contrast_limits
                if prompts_in_target
                else stack_contrast_limits(prompt_images, self.prompt_layout)
            )
        self.target_contrast_limits = target_contrast_limits
        self.prompt_contrast_limits = prompt_contrast_limits

    @property
    def targets(self) -> list[SliceKey]:
        """The target slice keys in processing order."""
        return [key for key, _ in self.plan]

    def __len__(self) -> int:
        return len(self.plan)

    def run(self, predictor: SegGptPredictorLike) -> Iterator[tuple[SliceKey, np.ndarray]]:
        """Predict the targets in order, yielding ``(key, labels)`` as each one is done.

        Parameters
        ----------
        predictor
            A :class:`~napari_segany.seggpt.SegGptPredictor` (any device / precision); its
            prompts are replaced.

        Yields
        ------
        tuple
            The slice key and its (H, W) label map (int32, int64 for ids beyond int32), in the
            prompts' label ids (0 = unlabelled). Prompt label ids are renumbered 1..K for the
            model and mapped back.
        """
        settings = self.settings
        prompt_keys = set(self.prompt_keys)
        cache: dict[SliceKey, _Prompt] = {}

        def prompt_pair(key: SliceKey) -> _Prompt:
            if key not in cache:
                image = to_uint8_rgb(
                    np.asarray(self.prompt_images[key]), self.prompt_contrast_limits
                )
                cache[key] = _Prompt(image, self._painted[key], self._painted_ids[key])
            return cache[key]

        previous: dict[SliceKey, _Prompt] = {}
        current_prompts: tuple | None = None
        label_ids = np.zeros(0, dtype=np.int64)
        for chosen, group in self._groups():
            pairs = [prompt_pair(k) for k in chosen]
            extra = None
            neighbour = group[0][1]
            if neighbour is not None and not (self.prompts_in_target and neighbour in chosen):
                if neighbour in previous:
                    extra = previous.pop(neighbour)
                elif self.prompts_in_target and neighbour in prompt_keys:
                    extra = prompt_pair(neighbour)
                if extra is not None and extra.ids.size == 0:
                    extra = None  # an empty prediction teaches nothing
            if extra is not None:
                pairs.append(extra)
            if chosen != current_prompts or extra is not None:
                label_ids = np.unique(np.concatenate([p.ids for p in pairs]))
                predictor.set_prompts(
                    [p.image for p in pairs],
                    [compact_labels(p.labels, label_ids) for p in pairs],
                    num_labels=len(label_ids),
                )
                # A set including a previous frame is used once; force a reset next time.
                current_prompts = None if extra is not None else chosen
            images = _TargetSlices(
                self.target, [key for key, _ in group], self.target_contrast_limits
            )
            predictions = predict_many(
                predictor, images, label_ids, settings.uncertainty_threshold, settings.batch_size
            )
            for index, ((key, _), labels) in enumerate(zip(group, predictions, strict=True)):
                if self.video:
                    previous[key] = _Prompt(images[index], labels, nonzero_ids(labels))
                yield key, labels

    def _groups(self) -> Iterator[tuple[tuple[SliceKey, ...], list[tuple[SliceKey, Any]]]]:
        """Consecutive targets that share their prompts (one batch each); one target in video mode."""
        group: list[tuple[SliceKey, Any]] = []
        chosen_for_group: tuple[SliceKey, ...] = ()
        for key, neighbour in self.plan:
            chosen = choose_prompts(
                self.prompt_keys, key, self.settings.max_prompts, nearest=self.prompts_in_target
            )
            if group and (self.video or chosen != chosen_for_group):
                yield chosen_for_group, group
                group = []
            chosen_for_group = chosen
            group.append((key, neighbour))
        if group:
            yield chosen_for_group, group


class _Prompt(NamedTuple):
    """One prompt: (H, W, 3) uint8 image, (H, W) labels and their sorted non-zero ids."""

    image: np.ndarray
    labels: np.ndarray
    ids: np.ndarray


def nonzero_ids(labels: np.ndarray) -> np.ndarray:
    """Sorted distinct non-zero values of ``labels``, int64."""
    ids = np.unique(np.asarray(labels)).astype(np.int64)
    return ids[ids != 0]


class _TargetSlices(Sequence):
    """Target slices read and converted to (H, W, 3) uint8 only when indexed (lazy stacks)."""

    def __init__(self, stack: Any, keys: list[SliceKey], contrast_limits) -> None:
        self.stack, self.keys, self.contrast_limits = stack, keys, contrast_limits
        self._last: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index):  # type: ignore[override]
        if self._last is None or self._last[0] != index:
            image = to_uint8_rgb(np.asarray(self.stack[self.keys[index]]), self.contrast_limits)
            self._last = (index, image)
        return self._last[1]


def label_dtype(labels: np.ndarray) -> np.dtype:
    """int32 for labels that fit it (napari's usual), else int64."""
    labels = np.asarray(labels)
    if labels.size == 0 or int(labels.max()) <= np.iinfo(np.int32).max:
        return np.dtype(np.int32)
    return np.dtype(np.int64)


def compact_labels(labels: np.ndarray, label_ids: np.ndarray) -> np.ndarray:
    """Renumber labels to ``1..len(label_ids)`` (0 stays 0) so the palette needs few colours.

    ``label_ids`` is the sorted array of non-zero ids in use; every non-zero label must be in it.
    """
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, dtype=np.int32)
    nonzero = labels != 0
    out[nonzero] = np.searchsorted(label_ids, labels[nonzero]) + 1
    return out


def predict_many(
    predictor: SegGptPredictorLike,
    images: Sequence[np.ndarray],
    label_ids: np.ndarray,
    uncertainty_threshold: float | None,
    batch_size: int | None = None,
) -> Iterator[np.ndarray]:
    """Predict (H, W) label maps for ``images``, in batches when the predictor can.

    Compact labels ``1..K`` are mapped back to ``label_ids``; pixels farther than
    ``uncertainty_threshold`` from their palette colour become 0.
    """
    lookup = np.concatenate([[0], label_ids]).astype(label_dtype(label_ids))
    confidence = uncertainty_threshold is not None
    if hasattr(predictor, "iter_predictions"):
        batches = predictor.iter_predictions(
            images, batch_size=batch_size, return_confidence=confidence
        )
        results = (tuple(r[1:]) for r in batches)
    else:
        results = (
            predictor.predict(image, return_confidence=True)
            if confidence
            else (predictor.predict(image),)
            for image in images
        )
    for compact, *distance in results:
        compact = np.asarray(compact).astype(np.int64, copy=False)
        if confidence:
            compact = np.where(np.asarray(distance[0]) > uncertainty_threshold, 0, compact)
        yield lookup[np.clip(compact, 0, len(label_ids))]


def segment_stack_with_seggpt(
    predictor: SegGptPredictorLike,
    target: Any,
    prompt_labels: Any,
    prompt_images: Any | None = None,
    *,
    slices: str | int | range | Iterable[Sequence[int]] | None = "all",
    prompt_slices: Sequence[SliceKey] | None = None,
    output: Any | None = None,
    settings: PropagationSettings | None = None,
    target_rgb: bool | None = None,
    prompt_rgb: bool | None = None,
    target_contrast_limits: tuple[float, float] | None = None,
    prompt_contrast_limits: tuple[float, float] | None = None,
) -> Any:
    """Segment a whole stack (or some of its slices) from painted labels, slice by slice.

    Parameters
    ----------
    predictor
        A :class:`~napari_segany.seggpt.SegGptPredictor`.
    target
        ``(*leading, H, W)`` or ``(*leading, H, W, C)`` image stack: numpy, zarr, dask or any
        array-like read one slice at a time.
    prompt_labels
        Painted labels. Without ``prompt_images`` they are labels *of the target*
        (``(*leading, H, W)``): their labelled slices are the prompts and stay as painted.
    prompt_images
        A separate reference image (stack) the labels were painted on.
    slices
        Which target slices to segment (see :func:`select_slices`).
    output
        Where to write the labels (``(*leading, H, W)``): a numpy array, a zarr array, or anything
        that supports ``output[key]`` and ``output[key] = plane``. It is **written in place**,
        one slice at a time, each prediction merged into what it holds (see
        ``settings.overwrite_existing``), and returned. By default a new numpy array: zeros, or
        the painted labels when they are labels of the target.
    settings
        :class:`PropagationSettings` (prompts, video mode, uncertainty, overwrite).

    Returns
    -------
    array-like
        ``output`` (or the new ``(*leading, H, W)`` numpy labels).

    Notes
    -----
    Memory: besides ``output`` (none when it is a zarr array on disk) only the prompt slices, one
    target slice (a batch with ``settings.batch_size``) and its prediction are held, so a
    64 × 4096² zarr stack runs in a few hundred MB.
    """
    settings = settings or PropagationSettings()
    layout = StackLayout.of(np.shape(target), target_rgb)
    in_target = prompt_images is None
    if in_target:
        prompt_images, prompt_rgb, prompt_contrast_limits = (
            target,
            layout.rgb,
            target_contrast_limits,
        )
    if output is not None and tuple(np.shape(output)) != layout.label_shape:
        raise ValueError(
            f"output shape {tuple(np.shape(output))} does not fit the target: expected "
            f"{layout.label_shape}"
        )
    plan = SlicePropagation(
        target,
        prompt_images,
        prompt_labels,
        targets=select_slices(layout.leading_shape, slices),
        prompt_slices=prompt_slices,
        settings=settings,
        prompts_in_target=in_target,
        target_rgb=layout.rgb,
        prompt_rgb=prompt_rgb,
        target_contrast_limits=target_contrast_limits,
        prompt_contrast_limits=prompt_contrast_limits,
    )
    if output is None:
        output = _new_output(prompt_labels, layout, copy_labels=in_target)
    with explain_out_of_memory(
        "segmenting a slice with SegGPT",
        "use batch_size=1, fewer prompt slices (max_prompts) or smaller slices",
    ):
        for key, labels in plan.run(predictor):
            existing = np.asarray(output[key])
            output[key] = merge_labels(existing, labels, overwrite=settings.overwrite_existing)
    return output


def _new_output(prompt_labels: Any, layout: StackLayout, *, copy_labels: bool) -> np.ndarray:
    """A numpy label stack for the result: int32 (int64 for ids beyond it), read slice by slice."""
    keys = layout.all_keys()
    dtype = getattr(prompt_labels, "dtype", None)
    dtype = np.dtype(dtype if dtype is not None else np.asarray(prompt_labels).dtype)
    fits_int32 = dtype.kind == "b" or (
        np.issubdtype(dtype, np.integer) and np.can_cast(dtype, np.int32)
    )
    if not fits_int32:
        top = max((int(np.max(prompt_labels[k], initial=0)) for k in keys), default=0)
        fits_int32 = top <= np.iinfo(np.int32).max
    out = np.zeros(layout.label_shape, np.int32 if fits_int32 else np.int64)
    if copy_labels:
        for key in keys:
            out[key] = np.asarray(prompt_labels[key])
    return out
