"""Fine-tune SAM on the user's own labels (no napari, no Qt in this package).

>>> from napari_segany.sam import load_sam
>>> from napari_segany.training import finetune_sam
>>> result = finetune_sam(load_sam("sam-vit-b"), image, labels, time_budget_s=600)  # doctest: +SKIP
>>> result.save("~/.cache/napari-segany/finetuned/nuclei")                          # doctest: +SKIP
>>> model = load_sam("~/.cache/napari-segany/finetuned/nuclei")                     # doctest: +SKIP

Importing this package is cheap: torch is imported on first use of a name below.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from napari_segany.training.finetune import FinetuneResult, finetune_sam, iter_finetune_sam
    from napari_segany.training.model_library import (
        FinetunedModelInfo,
        finetuned_models_folder,
        list_finetuned_models,
    )
    from napari_segany.training.saved_model import (
        BaseModelMismatchError,
        export_merged_checkpoint,
        is_finetuned_folder,
        load_finetuned_sam,
    )
    from napari_segany.training.settings import FinetuneProgress, FinetuneSettings
    from napari_segany.training.tiles import separate_held_out

__all__ = [
    "BaseModelMismatchError",
    "FinetuneProgress",
    "FinetuneResult",
    "FinetuneSettings",
    "FinetunedModelInfo",
    "export_merged_checkpoint",
    "finetune_sam",
    "finetuned_models_folder",
    "is_finetuned_folder",
    "iter_finetune_sam",
    "list_finetuned_models",
    "load_finetuned_sam",
    "separate_held_out",
]

_LAZY = {
    "FinetuneProgress": "napari_segany.training.settings",
    "FinetuneResult": "napari_segany.training.finetune",
    "FinetuneSettings": "napari_segany.training.settings",
    "finetune_sam": "napari_segany.training.finetune",
    "iter_finetune_sam": "napari_segany.training.finetune",
    "FinetunedModelInfo": "napari_segany.training.model_library",
    "finetuned_models_folder": "napari_segany.training.model_library",
    "list_finetuned_models": "napari_segany.training.model_library",
    "BaseModelMismatchError": "napari_segany.training.saved_model",
    "export_merged_checkpoint": "napari_segany.training.saved_model",
    "is_finetuned_folder": "napari_segany.training.sidecar",
    "load_finetuned_sam": "napari_segany.training.saved_model",
    "separate_held_out": "napari_segany.training.tiles",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
