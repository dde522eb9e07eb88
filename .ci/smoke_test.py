"""Smoke test of an installed wheel, run from outside the source tree in a fresh virtual environment.

Checks: the package imports from site-packages (not the checkout), its version is set, napari finds
the manifest through the ``napari.manifest`` entry point and npe2 validates it, the command line
answers ``--help``, and a tiny random-weight SAM segments an image end to end.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np


def main() -> None:
    import napari_segany

    location = Path(napari_segany.__file__).resolve()
    assert "site-packages" in location.parts, f"imported from {location}, not from the wheel"
    assert napari_segany.__version__ == importlib.metadata.version("napari-segany")
    assert not napari_segany.__version__.startswith("0.0.0"), napari_segany.__version__

    entry_points = importlib.metadata.entry_points(group="napari.manifest")
    (entry,) = [ep for ep in entry_points if ep.name == "napari-segany"]
    assert entry.value == "napari_segany:napari.yaml", entry.value
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-segany")
    manifest.validate_imports()  # every python_name in the manifest resolves
    widgets = [w.display_name for w in manifest.contributions.widgets or []]
    assert "Segment Anything" in widgets, widgets

    executable = shutil.which("napari-segany", path=str(Path(sys.executable).parent))
    assert executable, "the napari-segany console script is not installed"
    help_text = subprocess.run(
        [executable, "--help"], check=True, capture_output=True, text=True
    ).stdout
    assert "everything" in help_text, help_text

    import torch

    from napari_segany.sam.loader import build_sam
    from napari_segany.sam.predictor import SamPredictor
    from napari_segany.sam.registry import SamArchitecture

    torch.manual_seed(0)
    tiny = SamArchitecture(
        image_size=128,
        encoder_embed_dim=48,
        encoder_depth=2,
        encoder_num_heads=4,
        encoder_mlp_dim=96,
        encoder_global_attn_indexes=(1,),
        encoder_window_size=3,
        prompt_embed_dim=32,
        mask_in_chans=8,
        decoder_mlp_dim=64,
        iou_head_hidden_dim=32,
    )
    model = build_sam(tiny).eval()
    image = np.zeros((200, 300), dtype=np.uint16)
    image[50:120, 80:160] = 4000
    predictor = SamPredictor(model)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(
        point_coords=np.array([[120.0, 85.0]]), point_labels=np.array([1])
    )
    assert masks.shape == (3, 200, 300) and masks.dtype == bool, (masks.shape, masks.dtype)
    assert scores.shape == (3,) and np.isfinite(scores).all(), scores
    print(f"smoke test passed: napari-segany {napari_segany.__version__} from {location.parent}")


if __name__ == "__main__":
    main()
