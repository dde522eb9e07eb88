"""Grounded SAM import boundaries (STYLE rule 1): no GUI below _napari, no torch in the registry."""

from __future__ import annotations

import subprocess
import sys

import pytest

GUI = {"napari", "qtpy", "PyQt5", "PyQt6", "PySide6", "magicgui", "superqt"}


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "module",
    [
        "napari_segany.models.grounding_dino",
        "napari_segany.grounding.loader",
        "napari_segany.grounding.detector",
        "napari_segany.grounding.segment",
    ],
)
def test_model_and_pipeline_pull_no_gui_and_no_transformers(module):
    loaded = _modules_after(f"import {module}")
    assert not GUI & loaded, module
    assert "transformers" not in loaded, module


def test_text_layer_glue_pulls_no_qt():
    loaded = _modules_after("import napari_segany._napari.text_layers")
    assert not (GUI - {"napari"}) & loaded
