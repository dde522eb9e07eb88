"""Import boundaries (STYLE.md rule 1): cheap package import, no GUI in model code."""

import subprocess
import sys

import pytest


def _modules_after_import(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_package_import_pulls_no_torch_and_no_qt():
    loaded = _modules_after_import("import napari_segany")
    assert "torch" not in loaded
    assert not {"napari", "qtpy", "PyQt5", "magicgui"} & loaded


GUI_MODULES = {"napari", "qtpy", "PyQt5", "PyQt6", "PySide6", "magicgui", "superqt"}


@pytest.mark.parametrize(
    "module",
    [
        "napari_segany.sam",
        "napari_segany.seggpt",
        "napari_segany.checkpoints",
        "napari_segany.models.precision",
        "napari_segany.models.sam",
        "napari_segany.models.seggpt",
        "napari_segany.sam.predictor",
        "napari_segany.sam.interactive_session",
        "napari_segany.sam.automatic",
        "napari_segany.sam.propagation",
        "napari_segany.seggpt.predictor",
        "napari_segany.seggpt.propagation",
        "napari_segany.seggpt.stack_job",
        "napari_segany.jobs",
    ],
)
def test_model_and_predictor_modules_pull_no_gui(module):
    loaded = _modules_after_import(f"import {module}")
    assert not GUI_MODULES & loaded, module


def test_scripting_and_layer_glue_pull_no_qt_and_no_magicgui():
    for module in (
        "napari_segany.scripting",
        "napari_segany._napari.layer_io",
        "napari_segany._napari.sam_layers",
        "napari_segany._napari.seggpt_layers",
    ):
        loaded = _modules_after_import(f"import {module}")
        assert not {"qtpy", "PyQt5", "PyQt6", "PySide6", "magicgui", "superqt"} & loaded, module


def test_qt_code_lives_only_in_the_qt_subpackage():
    """Every module that imports qtpy, magicgui or superqt is under ``_napari/_qt/``."""
    import re
    from pathlib import Path

    import napari_segany

    root = Path(napari_segany.__file__).parent
    gui_import = re.compile(r"^\s*(from|import)\s+(qtpy|magicgui|superqt|PyQt\d|PySide\d)\b", re.M)
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if gui_import.search(path.read_text()) and "_qt" not in path.relative_to(root).parts
    ]
    assert not offenders, offenders
