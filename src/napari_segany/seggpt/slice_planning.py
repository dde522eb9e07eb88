"""Which slices of a stack are prompts and targets, and in what order (numpy only).

Also the checks on a prompt stack (labels that fit their images, not empty) and one pair of
contrast limits for a whole stack.

Axis conventions: an image stack is ``(*leading, H, W)`` for grayscale or ``(*leading, H, W, C)``
for RGB(A); a label stack is ``(*leading, H, W)``. ``leading`` are the slice axes (Z, or T, or
T and Z); a slice is addressed by its *slice key*, the tuple of its leading indices (``()`` for a
plain 2D image).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_segany.image_conversion import ROBUST_PERCENTILES

SliceKey = tuple[int, ...]


@dataclass(frozen=True)
class StackLayout:
    """Shape bookkeeping of an image stack: its leading (slice) shape and whether it is RGB."""

    leading_shape: tuple[int, ...]
    spatial_shape: tuple[int, int]
    rgb: bool

    @classmethod
    def of(cls, shape: Sequence[int], rgb: bool | None = None) -> StackLayout:
        """Layout of an image of ``shape``; ``rgb=None`` guesses as napari does (last axis 3 or 4)."""
        shape = tuple(int(s) for s in shape)
        if rgb is None:
            rgb = len(shape) >= 3 and shape[-1] in (3, 4)
        spatial_ndim = 3 if rgb else 2
        if len(shape) < spatial_ndim:
            kind = "an RGB" if rgb else "a"
            raise ValueError(f"{kind} image needs at least {spatial_ndim} axes, got shape {shape}")
        leading = shape[: len(shape) - spatial_ndim]
        return cls(leading, (shape[len(leading)], shape[len(leading) + 1]), bool(rgb))

    @property
    def label_shape(self) -> tuple[int, ...]:
        """Shape of the matching label stack, ``(*leading, H, W)``."""
        return self.leading_shape + self.spatial_shape

    def all_keys(self) -> list[SliceKey]:
        return list(itertools.product(*(range(n) for n in self.leading_shape)))


def labelled_slices(labels: np.ndarray, leading_ndim: int) -> list[SliceKey]:
    """Slice keys of ``labels`` (``(*leading, H, W)``) that contain at least one non-zero label.

    Numpy arrays are scanned at once; other array-likes (zarr, dask) one slice at a time, so a
    stack larger than memory is never loaded whole.
    """
    if not isinstance(labels, np.ndarray) and leading_ndim > 0:
        leading = tuple(np.shape(labels)[:leading_ndim])
        return [
            tuple(int(i) for i in key)
            for key in np.ndindex(*leading)
            if np.any(np.asarray(labels[key]))
        ]
    labels = np.asarray(labels)
    if leading_ndim == 0:
        return [()] if np.any(labels) else []
    spatial_axes = tuple(range(leading_ndim, labels.ndim))
    has_labels = np.any(labels != 0, axis=spatial_axes)
    return [tuple(int(i) for i in key) for key in np.argwhere(has_labels)]


def select_slices(
    leading_shape: tuple[int, ...],
    selection: str | int | range | Iterable[Sequence[int]] | None = "all",
    *,
    exclude: Iterable[SliceKey] = (),
) -> list[SliceKey]:
    """The slice keys a selection names, in order, without the excluded ones.

    Parameters
    ----------
    leading_shape
        Shape of the slice axes.
    selection
        ``"all"`` (or ``None``): every slice. An ``int`` or a ``range``: the slices whose index on
        the first slice axis is that int / in that range (all indices on the other slice axes).
        Otherwise an iterable of slice keys (tuples of leading indices).
    exclude
        Keys never returned (e.g. the painted prompt slices).
    """
    excluded = {tuple(k) for k in exclude}
    every = list(itertools.product(*(range(n) for n in leading_shape)))
    if selection is None or (isinstance(selection, str) and selection == "all"):
        chosen = every
    elif isinstance(selection, str):
        raise ValueError(
            f"unknown slice selection {selection!r}; use 'all', an int, a range or keys"
        )
    elif isinstance(selection, int | np.integer | range):
        if not leading_shape:
            raise ValueError("a 2D image has no slices to choose from; use 'all'")
        wanted = (
            range(int(selection), int(selection) + 1)
            if not isinstance(selection, range)
            else selection
        )
        chosen = [k for k in every if k[0] in wanted]
        if not chosen:
            raise ValueError(
                f"slice range {wanted} is outside the stack's 0..{leading_shape[0] - 1}"
            )
    else:
        chosen = []
        for key in selection:
            key = tuple(int(i) for i in key)
            if len(key) != len(leading_shape) or any(
                not 0 <= i < n for i, n in zip(key, leading_shape, strict=True)
            ):
                raise ValueError(
                    f"slice {key} is not a slice of a stack with slice shape {leading_shape}"
                )
            chosen.append(key)
    return [k for k in dict.fromkeys(chosen) if k not in excluded]


def choose_prompts(
    prompt_keys: Sequence[SliceKey], target_key: SliceKey, max_prompts: int, *, nearest: bool
) -> tuple[SliceKey, ...]:
    """Pick at most ``max_prompts`` prompt slices for one target, returned sorted.

    ``nearest=True`` (prompts are slices of the target stack) takes those closest to the target
    (Euclidean distance of slice indices, ties to the lower key); otherwise an even spread over the
    sorted prompt keys, the same for every target.
    """
    keys = sorted(prompt_keys)
    if len(keys) <= max_prompts:
        return tuple(keys)
    if nearest and len(target_key) == len(keys[0]):
        target = np.asarray(target_key, dtype=float)
        ranked = sorted(keys, key=lambda k: (float(np.linalg.norm(np.asarray(k) - target)), k))
        return tuple(sorted(ranked[:max_prompts]))
    picks = np.unique(np.round(np.linspace(0, len(keys) - 1, max_prompts)).astype(int))
    return tuple(keys[i] for i in picks)


def video_order(
    targets: Sequence[SliceKey], anchors: Iterable[SliceKey], time_axis: int
) -> list[tuple[SliceKey, SliceKey | None]]:
    """Processing order for video mode, with each target's neighbouring frame.

    Frames are processed outwards from the painted frames (``anchors``) of their own track (same
    indices on every other slice axis): first the frames next to a painted one, then the next ones,
    so each frame's neighbour towards the nearest painted frame is done before it. A track without
    painted frames runs forwards in time from its first frame.

    Returns
    -------
    list of (target, neighbour)
        ``neighbour`` is the adjacent frame towards the nearest anchor, or ``None`` for the first
        frame of a track without anchors.
    """
    anchor_times: dict[SliceKey, list[int]] = {}
    for key in anchors:
        track = key[:time_axis] + key[time_axis + 1 :]
        anchor_times.setdefault(track, []).append(key[time_axis])
    plan = []
    for key in targets:
        t = key[time_axis]
        track = key[:time_axis] + key[time_axis + 1 :]
        times = anchor_times.get(track)
        if times:
            nearest = min(times, key=lambda a: (abs(t - a), a))
            distance = abs(t - nearest)
            step = 0 if distance == 0 else (1 if nearest > t else -1)
            neighbour_t = t + step if step else None
        else:
            distance = t
            neighbour_t = t - 1 if t > 0 else None
        neighbour = None
        if neighbour_t is not None:
            neighbour = key[:time_axis] + (neighbour_t,) + key[time_axis + 1 :]
        plan.append((distance, key, neighbour))
    plan.sort(key=lambda item: (item[0], item[1]))
    return [(key, neighbour) for _, key, neighbour in plan]


def stack_contrast_limits(stack: Any, layout: StackLayout) -> tuple[float, float] | None:
    """One (low, high) intensity pair for a whole image stack, so all slices scale alike.

    ``None`` for uint8 and boolean stacks (used as they are); ``(0, 1)`` for float stacks within
    [0, 1]; otherwise the robust percentiles (as :func:`~napari_segany.image_conversion.to_uint8_rgb`
    uses for one image) of a sample of at most 16 slices, each subsampled to about 256 x 256.
    """
    dtype = getattr(stack, "dtype", None)
    if dtype is None:
        dtype = np.asarray(stack[(0,) * len(layout.leading_shape)]).dtype
    dtype = np.dtype(dtype)
    if dtype == np.uint8 or dtype.kind == "b" or not np.issubdtype(dtype, np.number):
        return None
    keys = layout.all_keys()
    picked = [
        keys[i] for i in np.unique(np.linspace(0, len(keys) - 1, min(16, len(keys))).astype(int))
    ]
    step = max(1, int(np.ceil(max(layout.spatial_shape) / 256)))
    sample = np.concatenate([np.asarray(stack[k])[::step, ::step].ravel() for k in picked])
    if np.issubdtype(dtype, np.floating):
        sample = sample[np.isfinite(sample)]
        if sample.size == 0:
            return None
        if float(sample.min()) >= 0.0 and float(sample.max()) <= 1.0:
            return (0.0, 1.0)
    low, high = np.percentile(sample, ROBUST_PERCENTILES)
    return float(low), float(high)


def check_prompt_stack(
    prompt_images: Any, prompt_labels: Any, prompt_rgb: bool | None
) -> StackLayout:
    """Validate a prompt image stack against its labels and return its layout."""
    layout = StackLayout.of(np.shape(prompt_images), prompt_rgb)
    label_shape = tuple(np.shape(prompt_labels))
    if label_shape != layout.label_shape:
        raise ValueError(
            f"the prompt labels (shape {label_shape}) do not match the prompt image (shape "
            f"{tuple(np.shape(prompt_images))}, so labels of shape {layout.label_shape} expected): "
            f"pick the image layer the labels were painted on"
        )
    return layout


def prompt_keys_with_labels(
    prompt_labels: Any, layout: StackLayout, prompt_slices: Sequence[SliceKey] | None
) -> list[SliceKey]:
    """The prompt slices: the requested ones (checked to hold labels) or every labelled slice."""
    labels = prompt_labels if hasattr(prompt_labels, "dtype") else np.asarray(prompt_labels)
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"prompt labels must be integers, got dtype {labels.dtype}")
    labelled = labelled_slices(labels, len(layout.leading_shape))
    if np.issubdtype(labels.dtype, np.signedinteger):  # only labelled slices can hold negatives
        keys_to_check = labelled if len(layout.leading_shape) else [()]
        if any(np.min(np.asarray(labels[k]), initial=0) < 0 for k in keys_to_check):
            raise ValueError("prompt labels must not be negative")
    if prompt_slices is None:
        keys = labelled
    else:
        keys = select_slices(layout.leading_shape, [tuple(k) for k in prompt_slices])
        empty = [k for k in keys if k not in set(labelled)]
        if empty:
            raise ValueError(
                f"prompt slice(s) {empty} have no labels: paint objects there or choose other slices"
            )
    if not keys:
        raise ValueError(
            "the prompt labels are empty: paint at least one object on one slice of the prompt "
            "labels layer (or pick a labels layer that has some), then run again"
        )
    return keys
