"""Screenshot of the text-prompt (Grounded SAM) section of the SAM widget: docs/grounding_widget.png.

Loads the sample blobs stack, docks the Segment Anything widget, opens its *Text prompt* section,
types a prompt and presses *Find*: the detected boxes appear in the *SAM boxes* layer with their
phrase and score, and SAM previews their masks. Run under a display (or Xvfb)::

    xvfb-run -a python docs/screenshot_grounding_widget.py --detector grounding-dino-tiny --sam sam-vit-b

Without ``--detector`` / ``--sam`` the test suite's tiny random-weight models are used: the picture
shows the widget and the workflow, but its boxes and masks are not meaningful.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLICE = 8


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--detector", help="Grounding DINO source; default: tiny random weights")
    parser.add_argument("--sam", help="SAM source; default: tiny random weights")
    parser.add_argument("--text", default="blob.")
    parser.add_argument("--out", default=str(ROOT / "docs" / "grounding_widget.png"))
    args = parser.parse_args(argv)

    from napari.settings import get_settings

    settings = get_settings().application
    level = settings.gui_notification_level
    settings.gui_notification_level = "none"
    try:
        return _screenshot(args)
    finally:
        settings.gui_notification_level = level


def _wait(app, condition, timeout: float = 1800.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not condition():
        app.processEvents()
        time.sleep(0.05)
    if not condition():
        raise TimeoutError("the widget did not finish in time")


def _screenshot(args: argparse.Namespace) -> Path:
    from qtpy.QtWidgets import QApplication

    import napari

    sys.path.insert(0, str(ROOT))
    from docs.screenshot_sam_widget import tiny_random_model
    from tests.grounding.tiny_grounding_dino import write_tiny_folder

    from napari_segany._napari._qt.sam_widget import SamWidget
    from napari_segany._napari._qt.text_prompt_section import SECTION_TITLE
    from napari_segany._napari.sample_data import make_sample_stack

    [(stack, kwargs, _)] = make_sample_stack()
    viewer = napari.Viewer(title="napari-segany: text prompts (Grounded SAM)")
    viewer.window.resize(1400, 900)
    viewer.add_image(stack, **kwargs)
    viewer.dims.set_current_step(0, SLICE)
    widget = SamWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment Anything", area="right")
    app = QApplication.instance()
    with tempfile.TemporaryDirectory() as tmp:
        sam = args.sam or str(tiny_random_model(Path(tmp) / "sam"))
        detector = args.detector or str(write_tiny_folder(Path(tmp) / "gdino"))
        widget.model_picker.set_custom_path(sam)
        section = widget.text_prompt
        section.picker.set_custom_path(detector)
        if not args.detector:  # random weights: scores are low, show a few boxes anyway
            section.box_threshold.value = 0.0
            section.text_threshold.value = 0.0
            section.max_objects.value = 4
        widget.section(SECTION_TITLE).expand()
        section.text.value = args.text
        section.find()
        _wait(app, lambda: not widget.task.is_running and widget.shapes_layer is not None
              and len(widget.shapes_layer.data) > 0)  # fmt: skip
        _wait(app, lambda: widget.is_idle and widget._shown is not None)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    app.processEvents()
    out = Path(args.out)
    viewer.screenshot(str(out), canvas_only=False)
    viewer.close()
    return out


if __name__ == "__main__":
    print(main())
