"""``open_sam_session``: a ready :class:`InteractiveSamSession` from a model name, path or object.

Qt-free and napari-free: the scripting module (``napari_segany.scripting.load_session``), the
widget's cache-folder option and the batch command line all open sessions here, so that they share
one embedding cache format (:mod:`napari_segany.sam.embedding_cache`).
"""

from __future__ import annotations

import os
from typing import Any

from napari_segany.sam.embedding_cache import EmbeddingCache
from napari_segany.sam.interactive_session import InteractiveSamSession

__all__ = ["open_sam_session"]

DEFAULT_CACHE_ITEMS = 32


def open_sam_session(
    model: Any = "sam-vit-b",
    *,
    device: str = "auto",
    precision: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    cache_items: int = DEFAULT_CACHE_ITEMS,
) -> InteractiveSamSession:
    """An :class:`InteractiveSamSession` on a model, with an optional on-disk embedding cache.

    Parameters
    ----------
    model
        Registry name, hub id, folder or checkpoint path (loaded with
        :func:`napari_segany.sam.load_sam`), or an already loaded SAM model.
    device, precision
        Used when ``model`` is a name or path.
    cache_dir
        Folder for embeddings that survive the session (``None``: memory only). A folder that
        cannot be written gives one warning, and the session goes on without it.
    cache_items
        Embeddings kept in memory.

    Raises
    ------
    ValueError
        ``model`` is ``None`` or an empty name.
    """
    if model is None or (isinstance(model, str) and not model.strip()):
        raise ValueError(
            "no model given: pass a registry name such as 'sam-vit-b', a checkpoint path or a "
            "loaded SAM model"
        )
    session = InteractiveSamSession(cache=EmbeddingCache(cache_items, disk_dir=cache_dir))
    if isinstance(model, str | os.PathLike):
        from napari_segany.sam.loader import load_sam

        loaded = load_sam(model, device=device, precision=precision)
        session.set_model(loaded, f"{os.fspath(model)}|{device}", precision)
    else:
        session.set_model(model, f"model-{id(model)}", precision)
    return session
