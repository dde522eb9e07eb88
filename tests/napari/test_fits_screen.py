"""Both widgets docked in a 1366 × 768 window: the window keeps its size, the canvas half the width."""

from __future__ import annotations

import numpy as np

from napari_segany._napari._qt.sam_widget import SamWidget
from napari_segany._napari._qt.seggpt_widget import SegGptWidget

LONG_STATUS = (
    "Loading 'sam-vit-h' failed: sam-vit-h is not downloaded and there is no internet; the "
    "notification says how to download it on another machine and copy the cache here"
)


def test_both_widgets_docked_fit_a_1366x768_window(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.showNormal()
    window.resize(1366, 768)
    viewer.add_image(np.zeros((4, 64, 64), np.uint16), name="stack")
    sam = SamWidget(viewer)
    viewer.window.add_dock_widget(sam, name="Segment Anything", area="right")
    seggpt = SegGptWidget(viewer)
    viewer.window.add_dock_widget(seggpt, name="In-context segmentation (SegGPT)", area="right")
    qtbot.wait(300)
    sam._set_status(LONG_STATUS)  # a long status line wraps instead of widening the dock
    seggpt.status.value = LONG_STATUS
    for section in ("Model", "Segment everything parameters", "Propagation and cache"):
        sam.section(section).expand(animate=False)  # even with every section open
    qtbot.wait(300)
    canvas = viewer.window._qt_viewer.canvas.native
    assert (window.width(), window.height()) == (1366, 768)
    assert canvas.width() >= 1366 / 2, canvas.width()
    assert sam.width() <= 330 and seggpt.width() <= 330
    assert sam.height() > 200 and seggpt.height() > 200  # the docks share the height
    assert sam.commit_button.native.isVisible() and seggpt.run_button.native.isVisible()


def test_widget_tests_run_on_a_qt6_binding(qtbot):
    """The testing extra installs PyQt6 (napari deprecates its PyQt5 backend); PyQt5 is unused."""
    import sys

    import qtpy

    assert qtpy.QT6, qtpy.API_NAME
    assert "PyQt5" not in sys.modules
