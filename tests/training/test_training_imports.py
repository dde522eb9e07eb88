"""Import boundaries of the training package (STYLE rule 1): no napari, no Qt, lazy torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

GUI_MODULES = {"napari", "qtpy", "PyQt5", "PyQt6", "PySide6", "magicgui", "superqt"}


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_package_import_is_cheap():
    loaded = _modules_after("import napari_segany.training")
    assert "torch" not in loaded and not GUI_MODULES & loaded


@pytest.mark.parametrize(
    "statement",
    [
        "from napari_segany.training import finetune_sam, load_finetuned_sam",
        "import napari_segany.training.finetune_job",
        "import napari_segany.training.model_library",
    ],
)
def test_training_modules_pull_no_gui(statement):
    assert not GUI_MODULES & _modules_after(statement)


def test_listing_saved_models_imports_no_torch():
    loaded = _modules_after(
        "from napari_segany.training.model_library import list_finetuned_models; "
        "list_finetuned_models('/nonexistent')"
    )
    assert "torch" not in loaded
