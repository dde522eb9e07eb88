"""SegGPT network modules (torch only).

:class:`SegGptArchitecture` is a plain dataclass: importing it (e.g. by the torch-free SegGPT
registry) does not import torch; the network modules are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import SegGptArchitecture

if TYPE_CHECKING:
    from .decoder import SegGptDecoder
    from .embeddings import EMBEDDING_TYPES, SegGptEmbeddings
    from .encoder import SegGptEncoder
    from .seggpt import SegGpt, SegGptPromptState

_LAZY = {
    "EMBEDDING_TYPES": "embeddings",
    "SegGpt": "seggpt",
    "SegGptDecoder": "decoder",
    "SegGptEmbeddings": "embeddings",
    "SegGptEncoder": "encoder",
    "SegGptPromptState": "seggpt",
}

__all__ = [
    "EMBEDDING_TYPES",
    "SegGpt",
    "SegGptArchitecture",
    "SegGptDecoder",
    "SegGptEmbeddings",
    "SegGptEncoder",
    "SegGptPromptState",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
