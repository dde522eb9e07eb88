"""Opening batch inputs lazily and reading them one 2D slice at a time.

An input array (TIFF through tifffile's zarr view, zarr / OME-Zarr, or a small PNG / JPEG read
whole) has *spatial* axes (Y, X), perhaps a *colour* axis kept with each slice (RGB), perhaps a
*channel* axis reduced to one channel (``--channel``), and *leading* axes whose index tuples are
the slice keys (Z, T, ...). :class:`ImageVolume` maps a slice key to one (H, W) or (H, W, 3|4)
array read from disk; nothing else is read, so a volume larger than RAM costs one slice.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_segany.batch.inputs import InputSpec

__all__ = ["AxisChoice", "ImageVolume", "InputError", "open_volume", "read_image_file"]


class InputError(ValueError):
    """An input that cannot be used: unreadable, or a shape the command cannot segment."""


@dataclass(frozen=True)
class AxisChoice:
    """How the user wants the axes of every input read.

    Attributes
    ----------
    stack_axis
        Axis index (negative allowed) that is the stack axis even if it is one of the last two
        (e.g. a ``YXZ`` array); ``None``: from metadata, else all but the last two (and colour).
    channel
        Index of the channel to segment along the channel axis (or along the colour axis of an
        RGB image, making it grayscale); ``None``: keep colour, refuse other channel axes.
    """

    stack_axis: int | None = None
    channel: int | None = None


@dataclass(frozen=True)
class SliceLayout:
    """Roles of the axes of an input array (indices into its shape)."""

    shape: tuple[int, ...]
    leading_axes: tuple[int, ...]
    spatial_axes: tuple[int, int]
    colour_axis: int | None
    channel_axis: int | None
    channel: int | None

    @property
    def leading_shape(self) -> tuple[int, ...]:
        """Sizes of the leading (stack) axes, in input order."""
        return tuple(self.shape[a] for a in self.leading_axes)

    @property
    def spatial_shape(self) -> tuple[int, int]:
        """(H, W) of every slice."""
        return (self.shape[self.spatial_axes[0]], self.shape[self.spatial_axes[1]])

    @property
    def label_shape(self) -> tuple[int, ...]:
        """Shape of the labels: leading axes then (H, W)."""
        return self.leading_shape + self.spatial_shape

    def index(self, key: tuple[int, ...]) -> tuple[Any, ...]:
        """Numpy index of slice ``key`` (leading indices in order) into the input array."""
        index: list[Any] = [slice(None)] * len(self.shape)
        for axis, i in zip(self.leading_axes, key, strict=True):
            index[axis] = int(i)
        if self.channel_axis is not None:
            index[self.channel_axis] = self.channel
        return tuple(index)

    def slice_order(self) -> tuple[int, ...]:
        """Transpose of an indexed slice that puts it in (H, W[, C]) order."""
        kept = [a for a in range(len(self.shape)) if a not in self.leading_axes]
        if self.channel_axis is not None:
            kept.remove(self.channel_axis)
        wanted = list(self.spatial_axes) + (
            [self.colour_axis] if self.colour_axis is not None else []
        )
        return tuple(kept.index(a) for a in wanted)


def plan_layout(shape: tuple[int, ...], axes: str | None, choice: AxisChoice) -> SliceLayout:
    """Decide the role of each axis from the shape, metadata axis letters and the user's choice.

    ``axes`` are letters as tifffile and OME-Zarr use them (``Y``, ``X``, ``C`` channel, ``S``
    colour samples, anything else a stack axis), or None when the file records none.

    Raises
    ------
    InputError
        Fewer than two axes, a stack/channel index out of range, or a channel axis that is not
        colour (more than 4 entries, or not last) without ``channel``.
    """
    ndim = len(shape)
    if ndim < 2:
        raise InputError(f"shape {shape} has fewer than two axes: not an image")
    if axes is not None and len(axes) != ndim:
        axes = None
    stack_axis = None
    if choice.stack_axis is not None:
        if not -ndim <= choice.stack_axis < ndim:
            raise InputError(f"--axis {choice.stack_axis} is out of range for shape {shape}")
        stack_axis = choice.stack_axis % ndim
    channel_like = None
    if axes is not None:
        for letter in ("C", "S"):
            position = axes.rfind(letter)
            if position >= 0 and position != stack_axis:
                channel_like = position
                break
    elif ndim >= 3 and shape[-1] in (3, 4) and stack_axis != ndim - 1:
        channel_like = ndim - 1

    colour_axis = channel_axis = None
    if channel_like is not None:
        if choice.channel is not None:
            if not -shape[channel_like] <= choice.channel < shape[channel_like]:
                raise InputError(
                    f"--channel {choice.channel} is out of range: the channel axis has "
                    f"{shape[channel_like]} entries"
                )
            channel_axis = channel_like
        elif shape[channel_like] in (3, 4) and (
            channel_like == ndim - 1 or (axes is not None and axes[channel_like] == "S")
        ):
            colour_axis = channel_like
        else:
            raise InputError(
                f"shape {shape} has a channel axis ({shape[channel_like]} channels, axis "
                f"{channel_like}); choose one with --channel"
            )
    elif choice.channel is not None:
        raise InputError(f"--channel given but shape {shape} has no channel or colour axis")

    taken = {channel_like, stack_axis}
    spatial: list[int] = []
    if axes is not None and "Y" in axes and "X" in axes:
        candidates = [axes.rfind("Y"), axes.rfind("X")]
        if not taken & set(candidates):
            spatial = candidates
    if not spatial:
        spatial = [a for a in range(ndim) if a not in taken][-2:]
    if len(spatial) != 2:
        raise InputError(f"shape {shape} has no two spatial axes left")
    leading = tuple(a for a in range(ndim) if a not in spatial and a != channel_like)
    channel = None
    if channel_axis is not None:
        channel = int(choice.channel) % shape[channel_axis]
    return SliceLayout(
        tuple(int(s) for s in shape),
        leading,
        (spatial[0], spatial[1]),
        colour_axis,
        channel_axis,
        channel,
    )


class ImageVolume:
    """An opened input: its slice layout and lazy access to its slices.

    Parameters
    ----------
    array
        Anything with ``shape``, ``dtype`` and numpy indexing (numpy, zarr, tifffile's zarr view).
    layout
        Roles of its axes (:func:`plan_layout`).
    chunks
        The array's chunk shape (``None`` for unchunked arrays).
    closer
        Called by :meth:`close` (closes an open TIFF file).
    """

    def __init__(
        self, array: Any, layout: SliceLayout, chunks: tuple[int, ...] | None = None, closer=None
    ) -> None:
        self.array = array
        self.layout = layout
        self.chunks = chunks
        self._closer = closer
        self._order = layout.slice_order()

    @property
    def dtype(self) -> np.dtype:
        """The input's dtype."""
        return np.dtype(self.array.dtype)

    @property
    def leading_shape(self) -> tuple[int, ...]:
        """Shape of the stack axes; ``()`` for a 2D image."""
        return self.layout.leading_shape

    @property
    def label_shape(self) -> tuple[int, ...]:
        """Shape of the labels written for this input: leading axes, then (H, W)."""
        return self.layout.label_shape

    @property
    def spatial_chunks(self) -> tuple[int, int]:
        """The input's chunk size along (Y, X), or the whole slice when unchunked."""
        if self.chunks is None:
            return self.layout.spatial_shape
        y, x = self.layout.spatial_axes
        return (int(self.chunks[y]), int(self.chunks[x]))

    def keys(self) -> list[tuple[int, ...]]:
        """Every slice key, in C order (``[()]`` for a 2D image)."""
        return list(itertools.product(*(range(n) for n in self.leading_shape)))

    def __len__(self) -> int:
        return math.prod(self.leading_shape)

    def read_slice(self, key: tuple[int, ...]) -> np.ndarray:
        """Slice ``key`` as (H, W) or (H, W, 3|4) numpy, read from disk now."""
        data = np.asarray(self.array[self.layout.index(tuple(key))])
        return np.transpose(data, self._order) if self._order != tuple(range(data.ndim)) else data

    def read_region(self, key: tuple[int, ...], rows: slice, cols: slice) -> np.ndarray:
        """Rows and columns (any numpy slices, strides too) of slice ``key``, read alone."""
        index = list(self.layout.index(tuple(key)))
        y_axis, x_axis = self.layout.spatial_axes
        index[y_axis], index[x_axis] = rows, cols
        data = np.asarray(self.array[tuple(index)])
        return np.transpose(data, self._order) if self._order != tuple(range(data.ndim)) else data

    def read_tile(self, key: tuple[int, ...], box: tuple[int, int, int, int]) -> np.ndarray:
        """The ``[x0, y0, x1, y1]`` region (exclusive ends) of slice ``key``, read alone."""
        x0, y0, x1, y1 = (int(v) for v in box)
        return self.read_region(key, slice(y0, y1), slice(x0, x1))

    def close(self) -> None:
        """Release the file handle, if any."""
        if self._closer is not None:
            self._closer()
            self._closer = None


def read_image_file(path: str | Path) -> np.ndarray:
    """Read a whole PNG / JPEG / TIFF into numpy (for prompts and small images)."""
    path = Path(path)
    spec = InputSpec(str(path), "tiff" if path.suffix.lower() in (".tif", ".tiff") else "image")
    volume = open_volume(spec, AxisChoice())
    try:
        return np.asarray(volume.array)
    finally:
        volume.close()


def open_volume(spec: InputSpec, choice: AxisChoice) -> ImageVolume:
    """Open one input lazily (only metadata is read).

    Raises
    ------
    InputError
        Missing or unreadable file, not an image, or axes the command cannot use; the message
        names the input.
    """
    try:
        if spec.kind == "zarr":
            array, axes = _open_zarr(spec)
            volume = ImageVolume(array, plan_layout(array.shape, axes, choice), array.chunks)
        elif spec.kind == "tiff":
            volume = _open_tiff(spec.path, choice)
        else:
            pixels = _read_plain_image(spec.path)
            volume = ImageVolume(pixels, plan_layout(pixels.shape, None, choice))
    except InputError as exc:
        raise InputError(f"{spec.label}: {exc}") from None
    except Exception as exc:
        raise InputError(f"{spec.label}: cannot read it ({type(exc).__name__}: {exc})") from exc
    return volume


def _read_plain_image(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        if image.mode == "LA":
            image = image.convert("L")
        elif image.mode not in ("1", "L", "I", "I;16", "F", "RGB", "RGBA"):
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        return np.asarray(image)


def _open_tiff(path: str, choice: AxisChoice) -> ImageVolume:
    import tifffile
    import zarr

    tiff = tifffile.TiffFile(path)
    try:
        series = tiff.series[0]
        array = zarr.open(series.aszarr(), mode="r")
        layout = plan_layout(tuple(series.shape), series.axes, choice)
    except Exception:
        tiff.close()
        raise
    return ImageVolume(array, layout, tuple(array.chunks), closer=tiff.close)


def _open_zarr(spec: InputSpec) -> tuple[Any, str | None]:
    import zarr

    node = zarr.open(spec.path, mode="r", path=spec.array_path or None)
    axes = None
    if isinstance(node, zarr.Group):
        multiscales = _multiscales(node.attrs)
        if multiscales:
            dataset = multiscales[0]["datasets"][0]["path"]
            axes = _ome_axes(multiscales[0])
            node = node[dataset]
        else:
            arrays = list(node.array_keys())
            if len(arrays) != 1:
                raise InputError(
                    f"is a zarr group with arrays {arrays or 'none'}; name one, e.g. "
                    f"{spec.path}/{arrays[0] if arrays else '0'}"
                )
            node = node[arrays[0]]
    elif spec.array_path:
        # An array inside an OME-Zarr image: its axes are in the parent group's metadata.
        parent, _, _ = spec.array_path.rpartition("/")
        try:
            group = zarr.open_group(spec.path, mode="r", path=parent or None)
            multiscales = _multiscales(group.attrs)
            axes = _ome_axes(multiscales[0]) if multiscales else None
        except Exception:
            axes = None
    return node, axes


def _multiscales(attrs: Any) -> list[dict]:
    attrs = dict(attrs)
    if "ome" in attrs and isinstance(attrs["ome"], dict):
        attrs = attrs["ome"]
    value = attrs.get("multiscales")
    return value if isinstance(value, list) else []


def _ome_axes(multiscale: dict) -> str | None:
    axes = multiscale.get("axes")
    if not axes:
        return None
    letters = []
    for axis in axes:
        name = axis if isinstance(axis, str) else axis.get("name", "")
        kind = "" if isinstance(axis, str) else axis.get("type", "")
        if kind == "channel" or name.lower() == "c":
            letters.append("C")
        elif name.lower() in ("y", "x"):
            letters.append(name.upper())
        else:
            letters.append("Q")
    return "".join(letters)
