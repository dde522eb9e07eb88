"""The command line starts fast: parsing and planning import no torch, GUI or dask."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module", ["napari_segany.cli", "napari_segany.batch.runner", "napari_segany.batch.operations"]
)
def test_cli_and_batch_planning_import_no_torch_gui_or_dask(module):
    code = f"import sys, {module}; print(' '.join(sys.modules))"
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert not {"torch", "napari", "qtpy", "PyQt5", "magicgui", "distributed"} & loaded
