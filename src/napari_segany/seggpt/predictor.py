"""In-context segmentation with SegGPT: numpy prompts in, numpy label maps out.

``set_prompts`` does the expensive prompt work once (resizing, painting label maps as colour
masks, embedding, the whole mask stream up to the merge block); ``predict`` /
``predict_batch`` / ``iter_predictions`` then run only the target-dependent part.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..image_conversion import to_uint8_rgb
from ..models.seggpt import EMBEDDING_TYPES, SegGpt, SegGptPromptState
from .palette import (
    build_palette,
    check_num_labels,
    labels_to_rgb,
    palette_from_colour_masks,
)
from .registry import IMAGENET_MEAN, IMAGENET_STD

ContrastLimits = tuple[float, float] | None


class SegGptPredictor:
    """Segment images "like the prompts" with a :class:`~napari_segany.models.seggpt.SegGpt`.

    Parameters
    ----------
    model
        From :func:`napari_segany.seggpt.load_seggpt`.
    mean, std
        RGB normalisation of images and colour masks; by default the model's registry entry's
        (``model.pixel_mean`` / ``model.pixel_std``, set by the loader), else ImageNet's.
    """

    def __init__(
        self,
        model: SegGpt,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if model is None:
            raise ValueError(
                f"SegGptPredictor needs a loaded SegGPT model "
                f"(napari_segany.seggpt.load_seggpt('seggpt-vit-l')), got {type(model).__name__}"
            )
        self.model = model.eval()
        if mean is None:
            mean = getattr(model, "pixel_mean", None) or IMAGENET_MEAN
        if std is None:
            std = getattr(model, "pixel_std", None) or IMAGENET_STD
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self._state: SegGptPromptState | None = None
        self._palette: np.ndarray | None = None

    # ------------------------------------------------------------------ prompts

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) every prompt and target is resized to (448 x 448 for ViT-L)."""
        return self.model.arch.half_size

    @property
    def palette(self) -> np.ndarray:
        """(K + 1, 3) uint8 colours of labels 0..K for the current prompts."""
        if self._palette is None:
            raise RuntimeError("no prompts set: call set_prompts() first")
        return self._palette

    @property
    def num_labels(self) -> int:
        """Largest label the current prompts can produce."""
        return len(self.palette) - 1

    @property
    def has_prompts(self) -> bool:
        return self._state is not None

    def set_prompts(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        num_labels: int | None = None,
        contrast_limits: ContrastLimits | Sequence[ContrastLimits] = None,
        *,
        prompt_type: str = "instance",
        feature_ensemble: bool = True,
        on_block: Callable[[int, int], None] | None = None,
    ) -> None:
        """Set the example images and their segmentations.

        Parameters
        ----------
        images
            Prompt images, each (H, W) grayscale or (H, W, C) RGB / RGBA, any numeric dtype
            (converted with :func:`~napari_segany.image_conversion.to_uint8_rgb`).
        labels
            One per image, the same (H, W): an integer label map (0 = background, labels painted
            with transformers' SegGPT palette) or an (H, W, 3) uint8 colour mask used as is.
        num_labels
            Number of labels besides the background; by default the largest label present (for
            label maps) or the number of distinct non-black colours (for colour masks, whose
            predicted label ``k`` is then the ``k``-th colour of :attr:`palette`). For colour
            masks already painted with the SegGPT palette, pass the ``num_labels`` they were
            painted with to decode with that palette.
        contrast_limits
            (low, high) for all images, or one per image; see ``to_uint8_rgb``.
        prompt_type
            ``"instance"`` or ``"semantic"``: SegGPT's type token.
        feature_ensemble
            With several prompts, ensemble them into one prediction (the original SegGPT rule).
        on_block
            Called as ``on_block(done, total)`` after each encoder block of the mask stream;
            an exception raised from it cancels (it propagates, the prompts stay unchanged).

        Raises
        ------
        ValueError
            Mismatched counts or shapes, non-integer or negative labels, more labels than the
            palette separates (:data:`~napari_segany.seggpt.palette.MAX_LABELS`), no labels.
        """
        if prompt_type not in EMBEDDING_TYPES:
            raise ValueError(f"prompt_type must be one of {EMBEDDING_TYPES}, got {prompt_type!r}")
        images, labels = list(images), list(labels)
        if not images or len(images) != len(labels):
            raise ValueError(
                f"need one label map per prompt image (at least one), got {len(images)} images and "
                f"{len(labels)} label maps"
            )
        limits = _per_image(contrast_limits, len(images))
        rgb_images = [to_uint8_rgb(image, lim) for image, lim in zip(images, limits, strict=True)]
        masks = [
            _check_label_map(lab, img.shape[:2], i)
            for i, (lab, img) in enumerate(zip(labels, rgb_images, strict=True))
        ]
        colour = [m.ndim == 3 for m in masks]
        if any(colour) and not all(colour):
            raise ValueError("give either label maps or colour masks for all prompts, not a mix")
        if all(colour):
            palette = (
                build_palette(num_labels)
                if num_labels is not None
                else palette_from_colour_masks(masks)
            )
            colour_masks = masks
        else:
            largest = max(int(m.max()) for m in masks)
            if num_labels is None:
                num_labels = largest
            check_num_labels(num_labels)
            if largest > num_labels:
                raise ValueError(f"prompt labels go up to {largest} but num_labels is {num_labels}")
            palette = build_palette(num_labels)
            colour_masks = [labels_to_rgb(m, palette) for m in masks]
        if len(palette) < 2:
            raise ValueError("the prompt label maps hold no labels (all background)")
        pixels = self._to_model_device(
            np.stack([self._normalise(self._resize(i, Image.BICUBIC)) for i in rgb_images])
        )
        mask_pixels = self._to_model_device(
            np.stack([self._normalise(self._resize(m, Image.NEAREST)) for m in colour_masks])
        )
        self._state = self.model.encode_prompts(
            pixels,
            mask_pixels,
            embedding_type=prompt_type,
            feature_ensemble=feature_ensemble,
            on_block=on_block,
        )
        self._palette = palette

    def reset_prompts(self) -> None:
        """Forget the prompts (and free their cached features)."""
        self._state = None
        self._palette = None

    # ------------------------------------------------------------------ prediction

    def predict(
        self,
        image: np.ndarray,
        *,
        contrast_limits: ContrastLimits = None,
        return_confidence: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Segment one image like the prompts.

        Parameters
        ----------
        image
            (H, W) or (H, W, C) target image, any numeric dtype.
        contrast_limits
            See ``to_uint8_rgb``.
        return_confidence
            Also return the per-pixel distance between the painted colour and the palette colour
            it was decoded to: float32 (H, W) in 8-bit RGB levels, 0 = exactly the palette
            colour; lower is more certain. Neighbouring palette colours are
            :func:`~napari_segany.seggpt.palette.palette_step` levels apart per channel, so
            pixels farther than about half that are ambiguous.

        Returns
        -------
        labels
            (H, W) int32 label map at the image's own size.
        distance
            Only with ``return_confidence``: (H, W) float32, see above.
        """
        _, *result = next(
            self.iter_predictions(
                [image], contrast_limits=contrast_limits, return_confidence=return_confidence
            )
        )
        return (result[0], result[1]) if return_confidence else result[0]

    def predict_batch(
        self,
        images: Sequence[np.ndarray] | np.ndarray,
        *,
        batch_size: int | None = None,
        contrast_limits: ContrastLimits = None,
        return_confidence: bool = False,
    ) -> list[np.ndarray] | tuple[list[np.ndarray], list[np.ndarray]]:
        """Segment several images (e.g. the slices of a stack, a (T, H, W[, C]) array).

        Same results as :meth:`predict` one by one, in ``ceil(T / batch_size)`` forward passes.

        Returns
        -------
        list of (H, W) int32 label maps, and with ``return_confidence`` the list of distances.
        """
        labels, distances = [], []
        for _, lab, *dist in self.iter_predictions(
            images,
            batch_size=batch_size,
            contrast_limits=contrast_limits,
            return_confidence=return_confidence,
        ):
            labels.append(lab)
            distances.extend(dist)
        return (labels, distances) if return_confidence else labels

    def iter_predictions(
        self,
        images: Sequence[np.ndarray] | np.ndarray,
        *,
        batch_size: int | None = None,
        contrast_limits: ContrastLimits = None,
        return_confidence: bool = False,
        on_block: Callable[[int, int], None] | None = None,
    ) -> Iterator[tuple]:
        """Segment images batch by batch, yielding each result as soon as its batch is done.

        ``on_block(done, total)`` is called after each encoder block of every batch; an
        exception raised from it cancels (it propagates out of the iteration).

        Yields
        ------
        (index, labels) or, with ``return_confidence``, (index, labels, distance), in order.
        """
        if self._state is None or self._palette is None:
            raise RuntimeError("no prompts set: call set_prompts() before predicting")
        count = len(images)
        size = batch_size if batch_size is not None else self.default_batch_size()
        if size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, count, size):
            chunk = [
                to_uint8_rgb(images[i], contrast_limits)
                for i in range(start, min(start + size, count))
            ]
            pixels = self._to_model_device(
                np.stack([self._normalise(self._resize(c, Image.BICUBIC)) for c in chunk])
            )
            painted = self.model(pixels, self._state, on_block=on_block)
            for offset, (image, colours) in enumerate(zip(chunk, painted, strict=True)):
                labels, distance = self._decode(colours, image.shape[:2])
                if return_confidence:
                    yield start + offset, labels, distance
                else:
                    yield start + offset, labels

    def default_batch_size(self) -> int:
        """Targets per forward pass when not given: what fits comfortably in memory."""
        state = self._state
        prompts = state.num_prompts if state is not None else 1
        device = self.model.device
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            arch = self.model.arch
            tokens = arch.grid_size[0] * arch.grid_size[1]
            itemsize = torch.empty(0, dtype=self.model.dtype).element_size()
            # Peak per stacked input: the attention bias of all heads plus a few MLP activations.
            per_input = tokens * (tokens * arch.num_heads * 2 + 8 * arch.mlp_dim) * itemsize
            return max(1, min(64, int(0.5 * free) // (per_input * prompts)))
        return max(1, 4 // prompts)

    # ------------------------------------------------------------------ helpers

    def _to_model_device(self, array: np.ndarray) -> torch.Tensor:
        """float32 array -> tensor on the model's device; on CUDA through pinned memory with a
        non-blocking copy (the host does not wait for the transfer)."""
        tensor = torch.from_numpy(array)
        device = self.model.device
        if device.type == "cuda":
            return tensor.pin_memory().to(device, non_blocking=True)
        return tensor.to(device)

    def _resize(self, image: np.ndarray, resample: int) -> np.ndarray:
        height, width = self.input_size
        if image.shape[:2] == (height, width):
            return image
        return np.asarray(Image.fromarray(image).resize((width, height), resample=resample))

    def _normalise(self, rgb: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 -> (3, h, w) float32 ImageNet-normalised."""
        scaled = (rgb.astype(np.float32) / 255.0 - self.mean) / self.std
        return np.ascontiguousarray(scaled.transpose(2, 0, 1))

    @torch.inference_mode()
    def _decode(
        self, painted: torch.Tensor, shape: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(3, h, w) normalised painting -> (H, W) labels and distances (nearest palette colour)."""
        mean = torch.tensor(self.mean, device=painted.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=painted.device).view(3, 1, 1)
        colours = torch.clip((painted.float() * std + mean) * 255, 0, 255).permute(1, 2, 0)
        palette = torch.from_numpy(self.palette.astype(np.float32)).to(painted.device)
        labels, best = nearest_palette_colour(colours, palette)
        stacked = torch.stack((labels.float(), best.sqrt()))[None]
        if tuple(stacked.shape[2:]) != tuple(shape):
            stacked = F.interpolate(stacked, size=tuple(shape), mode="nearest")
        labels_np = stacked[0, 0].round().to(torch.int32).cpu().numpy()
        return labels_np, stacked[0, 1].cpu().numpy().astype(np.float32)


DIRECT_DECODE_MAX_COLOURS = 64
"""Palettes up to this size are decoded with the direct squared distance, exactly as
transformers' post-processing does; larger ones through a matrix product (fast, and equal up to
float rounding in near-ties)."""


def nearest_palette_colour(
    colours: torch.Tensor, palette: torch.Tensor, *, pixel_chunk: int = 8192
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of, and squared distance to, the nearest palette colour of every pixel.

    Parameters
    ----------
    colours
        (H, W, 3) float32 colours in 8-bit units.
    palette
        (K + 1, 3) float32 colours.

    Returns
    -------
    labels
        (H, W) int64 index of the nearest colour (the first one on exact ties).
    squared
        (H, W) float32 squared Euclidean distance to it.
    """
    if len(palette) <= DIRECT_DECODE_MAX_COLOURS:
        best = torch.full(colours.shape[:2], float("inf"), device=colours.device)
        labels = torch.zeros(colours.shape[:2], dtype=torch.int64, device=colours.device)
        red, green, blue = colours.unbind(-1)
        for index, (r, g, b) in enumerate(palette.tolist()):
            squared = (red - r) ** 2 + (green - g) ** 2 + (blue - b) ** 2
            closer = squared < best
            best = torch.where(closer, squared, best)
            labels.masked_fill_(closer, index)
        return labels, best
    flat = colours.reshape(-1, 3)
    norms = (palette**2).sum(-1)
    labels = torch.empty(flat.shape[0], dtype=torch.int64, device=flat.device)
    for start in range(0, flat.shape[0], pixel_chunk):  # bounded memory for big palettes
        chunk = flat[start : start + pixel_chunk]
        # |c - p|^2 = |c|^2 - 2 c.p + |p|^2, and |c|^2 does not change the argmin.
        labels[start : start + pixel_chunk] = torch.addmm(norms, chunk, palette.T, alpha=-2).argmin(
            -1
        )
    squared = ((flat - palette[labels]) ** 2).sum(-1)
    return labels.reshape(colours.shape[:2]), squared.reshape(colours.shape[:2])


def _per_image(
    limits: ContrastLimits | Sequence[ContrastLimits], count: int
) -> list[ContrastLimits]:
    if limits is None:
        return [None] * count
    if len(limits) == 2 and all(np.isscalar(v) for v in limits):
        return [tuple(limits)] * count  # type: ignore[list-item]
    limits = list(limits)
    if len(limits) != count:
        raise ValueError(f"got {len(limits)} contrast limits for {count} prompt images")
    return limits


def _check_label_map(labels: np.ndarray, shape: tuple[int, int], index: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 3 and labels.shape[-1] == 3:
        if labels.shape[:2] != shape:
            raise ValueError(
                f"colour mask {index} has shape {labels.shape[:2]} but its image {shape}"
            )
        if labels.dtype != np.uint8:
            raise ValueError(f"colour mask {index} must be uint8 RGB, got {labels.dtype}")
        return labels
    if labels.ndim != 2:
        raise ValueError(
            f"label map {index} must be (H, W) integers or an (H, W, 3) uint8 colour mask, got shape "
            f"{labels.shape}"
        )
    if labels.shape != shape:
        raise ValueError(f"label map {index} has shape {labels.shape} but its image {shape}")
    if labels.dtype == bool:
        return labels.astype(np.int64)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"label map {index} must hold integers, got dtype {labels.dtype}")
    if labels.size and int(labels.min()) < 0:
        raise ValueError(f"label map {index} has negative labels (min {int(labels.min())})")
    return labels.astype(np.int64, copy=False)
