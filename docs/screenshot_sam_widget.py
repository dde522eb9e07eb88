"""Screenshot of the Segment Anything widget at work: docs/sam_widget.png.

Loads the sample blobs stack, docks the Segment Anything widget, clicks one positive and one
negative point and draws one box on slice 8, commits the first object, shows the preview of the
next one, and saves a screenshot of the window with the dock widget. Run under a display (or Xvfb)::

    xvfb-run -a python docs/screenshot_sam_widget.py --model sam-vit-b

Without ``--model`` a tiny SAM with random weights is used (the test suite's model): the picture
shows the widget and the workflow, but its masks are not meaningful.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SLICE = 8


def tiny_random_model(folder: Path) -> Path:
    """The test suite's tiny random-weight SAM, saved as a transformers-layout folder."""
    import torch
    from transformers import SamModel

    sys.path.insert(0, str(ROOT))
    from tests.fixtures_sam import randomize_weights, tiny_sam_hf_config

    torch.manual_seed(0)
    model = SamModel(tiny_sam_hf_config()).eval()
    randomize_weights(model, seed=1)
    model.prompt_encoder.shared_embedding.positional_embedding = (
        model.shared_image_embedding.positional_embedding
    )
    model.save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", help="SAM source (registry name, folder, .pth); default: tiny random weights"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--out", default=str(ROOT / "docs" / "sam_widget.png"))
    args = parser.parse_args(argv)

    from napari.settings import get_settings

    settings = get_settings().application
    level = settings.gui_notification_level
    settings.gui_notification_level = "none"  # no toasts over the canvas (restored below)
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
    from napari_segany._napari._qt.sam_widget import SamWidget
    from napari_segany._napari.sample_data import make_sample_stack

    [(stack, kwargs, _)] = make_sample_stack()
    viewer = napari.Viewer(title="napari-segany: Segment Anything")
    viewer.window.resize(1400, 900)
    image = viewer.add_image(stack, **kwargs)
    viewer.dims.set_current_step(0, SLICE)
    widget = SamWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment Anything", area="right")
    app = QApplication.instance()
    with tempfile.TemporaryDirectory() as tmp:
        source = args.model or str(tiny_random_model(Path(tmp)))
        widget.model_picker.set_custom_path(source)
        widget.model_picker.device_box.value = args.device
        widget.model_picker.precision_box.value = args.precision

        def click(row: float, col: float) -> None:
            world = image.data_to_world(np.array([SLICE, row, col], float))
            widget.points_layer.add(np.asarray(widget.points_layer.world_to_data(world)))

        def random_weights_pick_smallest() -> None:
            # Random weights give arbitrary masks; show the tightest candidate so the picture
            # stays readable (with real weights the best-scored candidate is kept).
            if args.model:
                return
            areas = []
            for _ in range(3):
                areas.append(int(np.count_nonzero(widget.preview_layer.data)) or 10**12)
                widget.next_candidate()
            for _ in range(int(np.argmin(areas))):
                widget.next_candidate()

        # first object: one positive point on the upper-left blob, committed
        click(42, 42)
        _wait(app, lambda: widget.is_idle and widget._shown is not None)
        random_weights_pick_smallest()
        widget.commit()
        _wait(app, lambda: widget.is_idle)
        # second object: a box, a positive and a negative point; left as a preview
        corners = np.array(
            [[SLICE, 60, 45], [SLICE, 60, 85], [SLICE, 100, 85], [SLICE, 100, 45]], float
        )
        widget.shapes_layer.add_rectangles(
            np.array([widget.shapes_layer.world_to_data(image.data_to_world(c)) for c in corners])
        )
        click(80, 60)
        widget.toggle_point_kind()
        click(95, 80)
        widget.toggle_point_kind()
        _wait(app, lambda: widget.is_idle and widget._shown is not None)
        random_weights_pick_smallest()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()  # toasts would cover the canvas
    app.processEvents()
    out = Path(args.out)
    viewer.screenshot(str(out), canvas_only=False)
    viewer.close()
    return out


if __name__ == "__main__":
    print(main())
