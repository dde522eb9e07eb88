"""SegGPT network modules (torch only)."""

from .config import SegGptArchitecture
from .decoder import SegGptDecoder
from .embeddings import EMBEDDING_TYPES, SegGptEmbeddings
from .encoder import SegGptEncoder
from .seggpt import SegGpt, SegGptPromptState

__all__ = [
    "EMBEDDING_TYPES",
    "SegGpt",
    "SegGptArchitecture",
    "SegGptDecoder",
    "SegGptEmbeddings",
    "SegGptEncoder",
    "SegGptPromptState",
]
