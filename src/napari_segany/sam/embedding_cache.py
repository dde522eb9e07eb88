"""Bounded cache of SAM image embeddings, in memory and optionally on disk.

Computing an embedding is the expensive half of SAM (the image encoder); decoding prompts is cheap.
:class:`EmbeddingCache` keeps the embedding states of recently used 2D slices, keyed by
:class:`EmbeddingKey` (image, slice, model, precision, contrast limits), bounded by item count and
by bytes, least recently used dropped first. With ``disk_dir`` every state is also written to a
file named by the content hash of the 8-bit image and the model, so evicted or previous-session
embeddings are read back instead of recomputed. No napari, no Qt; torch only for disk files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


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
    """Content hash (hex) of an 8-bit RGB image, its shape included: the on-disk cache key."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(image_rgb.shape).encode())
    digest.update(np.ascontiguousarray(image_rgb).tobytes())
    return digest.hexdigest()


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
        When given, every stored state is also written there (file name: content hash of the
        8-bit image + model + precision), so it survives eviction and napari restarts.
    """

    def __init__(
        self,
        max_items: int = 32,
        *,
        max_bytes: int = 512 * 2**20,
        disk_dir: str | Path | None = None,
    ) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        self._states: OrderedDict[EmbeddingKey, Any] = OrderedDict()
        self._sizes: dict[EmbeddingKey, int] = {}
        self._disk_names: dict[EmbeddingKey, str] = {}
        self._lock = threading.Lock()

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

    def get(self, key: EmbeddingKey, fingerprint: str | None = None) -> Any | None:
        """The state for ``key`` from memory, else from disk (needs ``fingerprint``), else ``None``."""
        with self._lock:
            state = self._states.get(key)
            if state is not None:
                self._states.move_to_end(key)
                return state
        name = fingerprint and self._disk_name(key, fingerprint)
        if self.disk_dir is None or not name or not (self.disk_dir / name).is_file():
            return None
        try:
            state = _load_state(self.disk_dir / name)
        except Exception as exc:  # a stale or foreign file must not break the session
            logger.warning("ignoring unreadable cached embedding %s: %s", name, exc)
            return None
        self._remember(key, state, name)
        return state

    def put(self, key: EmbeddingKey, state: Any, fingerprint: str | None = None) -> None:
        """Store ``state`` (and write it to disk when a folder and ``fingerprint`` are given)."""
        name = None
        if self.disk_dir is not None and fingerprint:
            name = self._disk_name(key, fingerprint)
            self.disk_dir.mkdir(parents=True, exist_ok=True)
            try:
                _save_state(state, self.disk_dir / name)
            except OSError as exc:
                logger.warning("could not write embedding cache file %s: %s", name, exc)
        self._remember(key, state, name)

    def clear(self) -> None:
        """Forget every state held in memory (files on disk stay)."""
        with self._lock:
            self._states.clear()
            self._sizes.clear()
            self._disk_names.clear()

    def _remember(self, key: EmbeddingKey, state: Any, name: str | None) -> None:
        with self._lock:
            self._states[key] = state
            self._states.move_to_end(key)
            self._sizes[key] = _state_nbytes(state)
            if name:
                self._disk_names[key] = name
            while len(self._states) > 1 and (
                len(self._states) > self.max_items or self.nbytes > self.max_bytes
            ):
                old, _ = self._states.popitem(last=False)
                self._sizes.pop(old, None)
                self._disk_names.pop(old, None)

    @staticmethod
    def _disk_name(key: EmbeddingKey, fingerprint: str) -> str:
        model = hashlib.blake2b(f"{key.model}|{key.precision}".encode(), digest_size=8).hexdigest()
        return f"sam-{fingerprint}-{model}.pt"


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


def _save_state(state: Any, path: Path) -> None:
    import torch

    if not dataclasses.is_dataclass(state):
        raise TypeError(
            f"only dataclass embedding states can be written to disk, not {type(state)}"
        )
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    payload = {"class": f"{type(state).__module__}:{type(state).__qualname__}", "fields": fields}
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def _load_state(path: Path) -> Any:
    import torch

    payload = torch.load(path, map_location="cpu", weights_only=True)
    module_name, _, qualname = payload["class"].partition(":")
    if not module_name.startswith("napari_segany."):
        raise ValueError(f"refusing to rebuild foreign class {payload['class']!r}")
    cls: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    return cls(**payload["fields"])
