"""Screenshot of the SegGPT widget at work: docs/seggpt_widget.png.

Loads the sample blobs stack, paints slice 0 (what the SAM widget would produce from one click per
blob), docks the SegGPT widget, propagates through the whole stack and saves a screenshot of the
window with the dock widget. Run under a display (or Xvfb)::

    xvfb-run -a python docs/screenshot_seggpt_widget.py --model seggpt-vit-l

Without ``--model`` a tiny SegGPT with random weights is used (the test suite's model), which shows
the widget and the workflow but not meaningful labels.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def tiny_random_model(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.fixtures_seggpt import make_tiny_seggpt_reference

    make_tiny_seggpt_reference().save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="SegGPT source; default: tiny random weights")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--out", default=str(ROOT / "docs" / "seggpt_widget.png"))
    args = parser.parse_args(argv)

    from napari.settings import get_settings

    settings = get_settings().application
    level = settings.gui_notification_level
    settings.gui_notification_level = "none"  # no toasts over the canvas (restored below)
    try:
        return _screenshot(args)
    finally:
        settings.gui_notification_level = level


def _screenshot(args: argparse.Namespace) -> Path:
    from qtpy.QtWidgets import QApplication

    import napari
    from napari_segany._napari._qt.seggpt_widget import SegGptWidget
    from napari_segany._napari.sample_data import blobs_stack, make_sample_stack

    [(stack, kwargs, _)] = make_sample_stack()
    _, truth = blobs_stack()
    painted = np.zeros_like(truth)
    painted[0] = truth[0]

    viewer = napari.Viewer(title="napari-segany: SegGPT")
    viewer.window.resize(1400, 850)
    image_layer = viewer.add_image(stack, **kwargs)
    labels_layer = viewer.add_labels(painted, name="painted (slice 0)", opacity=0.6)
    widget = SegGptWidget(viewer)
    viewer.window.add_dock_widget(widget, name="In-context segmentation (SegGPT)", area="right")
    widget.reset_choices()
    widget.target_box.value = image_layer
    widget.prompt_labels_box.value = labels_layer
    with tempfile.TemporaryDirectory() as tmp:
        source = args.model or str(tiny_random_model(Path(tmp)))
        widget.model_picker.set_custom_path(source)
        widget.model_picker.device_box.value = args.device
        widget.model_picker.precision_box.value = args.precision
        widget.run()
        app = QApplication.instance()
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            app.processEvents()
            time.sleep(0.05)
            if not widget.task.is_running and widget._run is not None:
                break
        app.processEvents()
    labels_layer.visible = False
    viewer.dims.set_current_step(0, 10)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()  # toasts (e.g. the PyQt5 deprecation warning) would cover the canvas
    app.processEvents()
    out = Path(args.out)
    viewer.screenshot(str(out), canvas_only=False)
    viewer.close()
    return out


if __name__ == "__main__":
    print(main())
