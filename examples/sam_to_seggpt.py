"""SAM -> SegGPT: click objects on one slice, then propagate them through the whole stack.

1. SAM segments each blob of slice 0 of the sample stack from one point click.
2. SegGPT uses that slice (image + labels) as its prompt and segments every other slice.

Run with any model sources (registry names, hub ids, local folders or original checkpoints)::

    python examples/sam_to_seggpt.py --sam sam-vit-b --seggpt seggpt-vit-l
    python examples/sam_to_seggpt.py --sam ./sam_vit_b_01ec64.pth --seggpt ./seggpt_vit_large.pth --view
"""

from __future__ import annotations

import argparse

import numpy as np

from napari_segany._napari.sample_data import SAMPLE_BLOBS, make_sample_stack
from napari_segany.sam import SamPredictor, load_sam
from napari_segany.sam.coordinates import rowcol_to_xy
from napari_segany.seggpt import SegGptPredictor, load_seggpt
from napari_segany.seggpt.propagation import PropagationSettings, segment_stack_with_seggpt


def segment_slice_with_sam(
    predictor: SamPredictor, image, clicks_rc, contrast_limits
) -> np.ndarray:
    """One object per click (napari (row, col) positions) on a 2D image -> (H, W) int32 labels."""
    predictor.set_image(image, contrast_limits=contrast_limits)
    labels = np.zeros(image.shape[:2], dtype=np.int32)
    for label, click in enumerate(clicks_rc, start=1):
        masks, scores, _ = predictor.predict(
            point_coords=rowcol_to_xy(np.array([click])), point_labels=np.array([1])
        )
        labels[masks[int(np.argmax(scores))] & (labels == 0)] = label
    return labels


def main(argv: list[str] | None = None) -> np.ndarray:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sam", default="sam-vit-b", help="SAM model source")
    parser.add_argument("--seggpt", default="seggpt-vit-l", help="SegGPT model source")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--video", action="store_true", help="previous frame as extra prompt")
    parser.add_argument("--save", help="write the label stack to this .npy file")
    parser.add_argument("--view", action="store_true", help="show the result in napari")
    args = parser.parse_args(argv)

    [(stack, kwargs, _)] = make_sample_stack()
    limits = kwargs["contrast_limits"]
    clicks = [blob.center(0) for blob in SAMPLE_BLOBS]  # one click per blob on slice 0

    sam = SamPredictor(load_sam(args.sam, device=args.device, precision=args.precision))
    painted = np.zeros(stack.shape, dtype=np.int32)
    painted[0] = segment_slice_with_sam(sam, stack[0], clicks, limits)
    print(f"SAM: {len(np.unique(painted[0])) - 1} objects on slice 0")

    seggpt = SegGptPredictor(load_seggpt(args.seggpt, device=args.device, precision=args.precision))
    labels = segment_stack_with_seggpt(
        seggpt,
        stack,
        painted,
        target_contrast_limits=limits,
        settings=PropagationSettings(use_previous_frame=args.video),
    )
    counts = [len(np.unique(z)) - 1 for z in labels]
    print(f"SegGPT: objects per slice {counts}")
    if args.save:
        np.save(args.save, labels)
    if args.view:
        import napari

        viewer = napari.Viewer()
        viewer.add_image(stack, **kwargs)
        viewer.add_labels(labels, name="SAM -> SegGPT")
        napari.run()
    return labels


if __name__ == "__main__":
    main()
