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


@pytest.mark.parametrize(
    "module",
    [
        "napari_segany.sam",
        "napari_segany.seggpt",
        "napari_segany.checkpoints",
        "napari_segany.models.precision",
    ],
)
def test_model_and_predictor_modules_pull_no_gui(module):
    loaded = _modules_after_import(f"import {module}")
    assert not {"napari", "qtpy", "PyQt5", "magicgui"} & loaded, module
