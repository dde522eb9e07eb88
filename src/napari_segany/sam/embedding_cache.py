"""Bounded cache of SAM image embeddings, in memory and optionally in a folder on disk.

Computing an embedding is the expensive half of SAM (the image encoder); decoding prompts is cheap.
:class:`EmbeddingCache` keeps the embedding states of recently used 2D slices, keyed by
:class:`EmbeddingKey` (image, slice, model, precision, contrast limits), bounded by item count and
by bytes, least recently used dropped first. With ``disk_dir`` every state is also written to an
:class:`EmbeddingDiskCache`, so evicted or previous-session embeddings are read back instead of
recomputed. No napari, no Qt; torch and safetensors only for disk files.

On-disk format (version 1)
--------------------------
One ``sam-embedding-<key>.safetensors`` file per embedding, ``<key>`` from
:func:`disk_cache_key` (a hash of the model identity, the image content and the contrast limits).
The file is plain `safetensors <https://huggingface.co/docs/safetensors>`_: one tensor
``"features"`` (1, C, h, w) in the model's real dtype, and in the safetensors metadata one entry
``"napari_segany"`` holding a small JSON object::

    {"format": "napari-segany/sam-embedding", "version": 1, "key": "<key>",
     "model_id": "<model identity: name|dtype|input|grid|preprocessing|weights checksum>",
     "dtype": "float32", "shape": [1, 256, 64, 64],
     "original_size": [H, W], "input_size": [h, w]}

Reading can only produce an array and these plain values: nothing in a file names a class or a
function. A file that is unreadable, of another version, key, model, dtype or shape, or otherwise
malformed is a cache miss (the embedding is recomputed and the file replaced), never an error.
Writes are atomic (unique temporary name in the folder, then ``os.replace``). When the folder
cannot be written (read-only, full disk, the path is a file) the cache warns once
(:class:`EmbeddingCacheWarning`) and goes on in memory only.

Example (the batch command line and scripts use the same API)::

    from napari_segany.image_conversion import to_uint8_rgb
    from napari_segany.sam.embedding_cache import (
        EmbeddingDiskCache, disk_cache_key, image_fingerprint)

    disk = EmbeddingDiskCache("~/.cache/napari-segany/embeddings")
    rgb = to_uint8_rgb(image, contrast_limits)
    key = disk_cache_key(predictor.model_id, image_fingerprint(rgb), contrast_limits=contrast_limits)
    state = disk.get(key, model_id=predictor.model_id)
    if state is None:
        predictor.set_image(rgb)
        state = predictor.get_embedding_state()
        disk.put(key, state)
    else:
        predictor.set_embedding_state(state)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "EmbeddingCache",
    "EmbeddingCacheWarning",
    "EmbeddingDiskCache",
    "EmbeddingKey",
    "disk_cache_key",
    "image_fingerprint",
]

FORMAT_NAME = "napari-segany/sam-embedding"
FORMAT_VERSION = 1
METADATA_ENTRY = "napari_segany"
FILE_PREFIX = "sam-embedding-"
FILE_SUFFIX = ".safetensors"
MAX_FILE_BYTES = 256 * 2**20
"""Files larger than this are not read (a SAM ViT embedding is 4 MiB in float32)."""
_DTYPES = ("float32", "float16", "bfloat16", "float64")
_MAX_SIDE = 2**24


class EmbeddingCacheWarning(UserWarning):
    """The embedding cache folder cannot be used; the session continues without it."""


@dataclass(frozen=True)
class EmbeddingKey:
    """Identity of one image embedding in the cache.

    Attributes
    ----------
    layer_id
        Identity of the image (napari layer unique id, a file name, ...).
    slice_index
        Indices of the non-spatial axes of the 2D slice, ``()`` for a 2D image.
    model
        Identity of the model (registry name or path, with the device).
    precision
        Precision name the model runs in.
    contrast_limits
        Intensity window used to turn the slice into 8-bit RGB (``None``: automatic).
    """

    layer_id: str
    slice_index: tuple[int, ...]
    model: str
    precision: str
    contrast_limits: tuple[float, float] | None = None


def image_fingerprint(image_rgb: np.ndarray) -> str:
    """Content hash (hex) of an 8-bit RGB image, its shape and dtype included."""
    image_rgb = np.ascontiguousarray(image_rgb)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image_rgb.shape}|{image_rgb.dtype}".encode())
    digest.update(memoryview(image_rgb).cast("B"))
    return digest.hexdigest()


def disk_cache_key(
    model_id: str,
    fingerprint: str,
    *,
    contrast_limits: tuple[float, float] | None = None,
    preprocessing: str = "",
) -> str:
    """The on-disk key (32 hex digits) of one embedding.

    Parameters
    ----------
    model_id
        Identity of the model: :attr:`napari_segany.sam.SamPredictor.model_id` (name, real dtype,
        input size, preprocessing and a weights checksum), or any string naming the model.
    fingerprint
        :func:`image_fingerprint` of the 8-bit RGB image given to the encoder.
    contrast_limits
        The (low, high) window that made the 8-bit image (``None``: automatic). The fingerprint
        already changes with it; it is part of the key so that the key says what it depends on.
    preprocessing
        Any further preprocessing choice (e.g. a channel selection) that changes the embedding.
    """
    limits = (
        "auto"
        if contrast_limits is None
        else f"{float(contrast_limits[0]):.9g},{float(contrast_limits[1]):.9g}"
    )
    text = f"v{FORMAT_VERSION}|{model_id}|{fingerprint}|{limits}|{preprocessing}"
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class EmbeddingDiskCache:
    """A folder of SAM embeddings in the safe format described in this module's docstring.

    Parameters
    ----------
    folder
        Where the files live (created on the first write; ``~`` is expanded).

    Attributes
    ----------
    disabled_reason
        ``None`` while usable; the reason once a write failed (then nothing is read or written
        anymore and one :class:`EmbeddingCacheWarning` has been issued).

    Notes
    -----
    Safe for several threads and processes sharing one folder: each file is written under a
    unique temporary name and renamed into place, so readers see either no file or a whole one.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder).expanduser()
        self.disabled_reason: str | None = None
        self._lock = threading.Lock()

    def path_for(self, key: str) -> Path:
        """The file that holds ``key`` (from :func:`disk_cache_key`)."""
        if not _is_hex_key(key):
            raise ValueError(f"a disk cache key is 32 hex digits (disk_cache_key), got {key!r}")
        return self.folder / f"{FILE_PREFIX}{key}{FILE_SUFFIX}"

    def get(self, key: str, *, model_id: str | None = None) -> Any | None:
        """The :class:`~napari_segany.sam.predictor.SamEmbedding` stored under ``key``, or ``None``.

        ``None`` (a miss) also for a file that is unreadable, malformed, of another format
        version, or written for another key, model (``model_id``, when given), dtype or shape.
        """
        if self.disabled_reason is not None or not _is_hex_key(key):
            return None
        path = self.path_for(key)
        try:
            if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
                return None
            return _read_embedding(path, key, model_id)
        except Exception as exc:  # any malformed or hostile file is a miss, never an error
            logger.info("ignoring cached embedding %s: %s", path.name, exc)
            return None

    def put(self, key: str, state: Any) -> bool:
        """Write ``state`` (a ``SamEmbedding``) under ``key``; ``False`` when it was not written.

        A failing write (read-only folder, full disk, the folder path is a file) disables this
        disk cache with one :class:`EmbeddingCacheWarning`; the caller keeps its state.
        """
        if self.disabled_reason is not None:
            return False
        if not _is_embedding_state(state):
            logger.debug("not writing a %s to the embedding disk cache", type(state).__name__)
            return False
        path = self.path_for(key)
        try:
            _write_embedding(path, key, state)
        except Exception as exc:
            self._disable(f"{type(exc).__name__}: {exc}")
            return False
        return True

    def _disable(self, reason: str) -> None:
        with self._lock:
            if self.disabled_reason is not None:
                return
            self.disabled_reason = reason
        warnings.warn(
            f"the embedding cache folder {self.folder} cannot be written ({reason}); "
            f"continuing without the disk cache (embeddings are kept in memory only)",
            EmbeddingCacheWarning,
            stacklevel=3,
        )


class EmbeddingCache:
    """Bounded LRU cache of SAM embedding states, optionally spilled to a folder.

    Parameters
    ----------
    max_items
        Most embeddings kept in memory.
    max_bytes
        Most bytes (sum of the tensors/arrays in the states) kept in memory; the least recently
        used states are dropped first. One ViT embedding of SAM is 256×64×64 float32 = 4 MiB.
    disk_dir
        When given, every stored state is also written there (see :class:`EmbeddingDiskCache`),
        so it survives eviction and napari restarts.
    """

    def __init__(
        self,
        max_items: int = 32,
        *,
        max_bytes: int = 512 * 2**20,
        disk_dir: str | os.PathLike | None = None,
    ) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.disk = EmbeddingDiskCache(disk_dir) if disk_dir is not None else None
        self._states: OrderedDict[EmbeddingKey, Any] = OrderedDict()
        self._sizes: dict[EmbeddingKey, int] = {}
        self._lock = threading.Lock()

    @property
    def disk_dir(self) -> Path | None:
        """The disk cache folder, or ``None`` (also once the folder turned out unwritable)."""
        if self.disk is None or self.disk.disabled_reason is not None:
            return None
        return self.disk.folder

    @property
    def disk_error(self) -> str | None:
        """Why the disk cache was switched off, or ``None``."""
        return None if self.disk is None else self.disk.disabled_reason

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, key: object) -> bool:
        return key in self._states

    @property
    def nbytes(self) -> int:
        """Bytes held in memory."""
        return sum(self._sizes.values())

    def keys(self) -> list[EmbeddingKey]:
        """Keys in memory, least recently used first."""
        with self._lock:
            return list(self._states)

    def get(
        self, key: EmbeddingKey, fingerprint: str | None = None, *, model_id: str | None = None
    ) -> Any | None:
        """The state for ``key`` from memory, else from disk (needs ``fingerprint``), else ``None``.

        Parameters
        ----------
        key
            The in-memory key.
        fingerprint
            :func:`image_fingerprint` of the 8-bit image: needed to look on disk.
        model_id
            The predictor's :attr:`~napari_segany.sam.SamPredictor.model_id`. A disk file written
            by another model (other weights at the same path, other dtype) is then a miss; without
            it the disk key is made from ``key.model`` and ``key.precision``.
        """
        with self._lock:
            state = self._states.get(key)
            if state is not None:
                self._states.move_to_end(key)
                return state
        if self.disk_dir is None or not fingerprint:
            return None
        state = self.disk.get(self._disk_key(key, fingerprint, model_id), model_id=model_id)
        if state is not None:
            self._remember(key, state)
        return state

    def put(
        self,
        key: EmbeddingKey,
        state: Any,
        fingerprint: str | None = None,
        *,
        model_id: str | None = None,
    ) -> None:
        """Store ``state`` (and write it to disk when a folder and ``fingerprint`` are given).

        A disk that cannot be written never loses ``state``: it stays in memory.
        """
        if self.disk_dir is not None and fingerprint:
            self.disk.put(self._disk_key(key, fingerprint, model_id), state)
        self._remember(key, state)

    def clear(self) -> None:
        """Forget every state held in memory (files on disk stay)."""
        with self._lock:
            self._states.clear()
            self._sizes.clear()

    def _remember(self, key: EmbeddingKey, state: Any) -> None:
        with self._lock:
            self._states[key] = state
            self._states.move_to_end(key)
            self._sizes[key] = _state_nbytes(state)
            while len(self._states) > 1 and (
                len(self._states) > self.max_items or self.nbytes > self.max_bytes
            ):
                old, _ = self._states.popitem(last=False)
                self._sizes.pop(old, None)

    @staticmethod
    def _disk_key(key: EmbeddingKey, fingerprint: str, model_id: str | None) -> str:
        identity = model_id if model_id is not None else f"{key.model}|{key.precision}"
        return disk_cache_key(identity, fingerprint, contrast_limits=key.contrast_limits)


# -- file format ------------------------------------------------------------------------------


def _is_hex_key(key: object) -> bool:
    return isinstance(key, str) and len(key) == 32 and all(c in "0123456789abcdef" for c in key)


def _is_embedding_state(state: Any) -> bool:
    return all(
        hasattr(state, name) for name in ("features", "original_size", "input_size", "model_id")
    )


def _state_nbytes(state: Any) -> int:
    values = dataclasses.astuple(state) if dataclasses.is_dataclass(state) else (state,)
    total = 0
    stack = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
        elif hasattr(value, "nbytes"):
            total += int(value.nbytes)
        elif hasattr(value, "element_size") and hasattr(value, "nelement"):
            total += int(value.element_size() * value.nelement())
    return total


def _write_embedding(path: Path, key: str, state: Any) -> None:
    from safetensors.torch import save_file

    features = state.features.detach().to("cpu").contiguous().clone()
    dtype = str(features.dtype).removeprefix("torch.")
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "key": key,
        "model_id": str(state.model_id),
        "dtype": dtype,
        "shape": [int(s) for s in features.shape],
        "original_size": [int(s) for s in state.original_size],
        "input_size": [int(s) for s in state.input_size],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file({"features": features}, temporary, metadata={METADATA_ENTRY: json.dumps(header)})
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _read_embedding(path: Path, key: str, model_id: str | None) -> Any:
    """Read and validate one file; raises ``ValueError`` (or the reader's error) on any mismatch."""
    from safetensors import safe_open

    from napari_segany.sam.predictor import SamEmbedding

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        metadata = handle.metadata() or {}
        header = json.loads(metadata.get(METADATA_ENTRY, "null"))
        if not isinstance(header, dict):
            raise ValueError("no napari-segany header")
        if header.get("format") != FORMAT_NAME or header.get("version") != FORMAT_VERSION:
            raise ValueError(f"format {header.get('format')!r} v{header.get('version')!r}")
        if header.get("key") != key:
            raise ValueError("written for another key")
        stored_model = header.get("model_id")
        if not isinstance(stored_model, str) or (model_id is not None and stored_model != model_id):
            raise ValueError("written by another model (other weights, dtype or input size)")
        dtype, shape = header.get("dtype"), header.get("shape")
        original, input_size = header.get("original_size"), header.get("input_size")
        if dtype not in _DTYPES or not _int_list(shape, 4) or shape[0] != 1:
            raise ValueError(f"bad dtype/shape {dtype!r} {shape!r}")
        if not (_int_list(original, 2) and _int_list(input_size, 2)):
            raise ValueError("bad sizes")
        if list(handle.keys()) != ["features"]:
            raise ValueError("unexpected tensors")
        info = handle.get_slice("features")
        if list(info.get_shape()) != shape or _safetensors_dtype(info.get_dtype()) != dtype:
            raise ValueError("tensor does not match its header")
        features = handle.get_tensor("features")
    if str(features.dtype).removeprefix("torch.") != dtype or list(features.shape) != shape:
        raise ValueError("tensor does not match its header")
    return SamEmbedding(
        features, (original[0], original[1]), (input_size[0], input_size[1]), stored_model
    )


def _int_list(value: Any, length: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == length
        and all(type(v) is int and 0 < v <= _MAX_SIDE for v in value)
    )


def _safetensors_dtype(name: str) -> str:
    return {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}.get(
        str(name), str(name)
    )
