"""Screenshots of both widgets docked in a 1366 × 768 window (run under Xvfb).

    xvfb-run -a -s "-screen 0 1366x768x24" python docs/make_screenshots.py [--model PATH]

Prints the window size and the canvas width, and writes docs/widgets_1366x768.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=1366)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--out", default=str(Path(__file__).parent / "widgets_1366x768.png"))
    args = parser.parse_args()

    from qtpy.QtWidgets import QApplication

    import napari
    from napari_segany._napari._qt.sam_widget import SamWidget
    from napari_segany._napari._qt.seggpt_widget import SegGptWidget
    from napari_segany._napari.sample_data import blobs_stack

    viewer = napari.Viewer(show=True)
    window = viewer.window._qt_window
    window.showNormal()
    window.resize(args.width, args.height)
    stack, truth = blobs_stack((16, 128, 128))
    viewer.add_image(stack, name="blobs")
    painted = np.zeros_like(truth)
    painted[8] = truth[8]
    viewer.add_labels(painted, name="painted")
    sam = SamWidget(viewer)
    viewer.window.add_dock_widget(sam, name="Segment Anything", area="right")
    seggpt = SegGptWidget(viewer)
    viewer.window.add_dock_widget(seggpt, name="In-context segmentation (SegGPT)", area="right")
    sam._set_status(
        "Loading 'sam-vit-h' failed: sam-vit-h is not downloaded and there is no internet; "
        "see the notification for what to do"
    )
    for _ in range(20):
        QApplication.processEvents()
    canvas = viewer.window._qt_viewer.canvas.native
    print(f"window {window.width()}x{window.height()}, canvas {canvas.width()}x{canvas.height()}")
    print(f"SAM dock {sam.width()}x{sam.height()}, SegGPT dock {seggpt.width()}x{seggpt.height()}")
    image = viewer.screenshot(canvas_only=False, flash=False)
    from skimage.io import imsave

    imsave(args.out, image, check_contrast=False)
    print(f"wrote {args.out} {image.shape}")
    viewer.close()


if __name__ == "__main__":
    main()
