"""napari-segany: Segment Anything (SAM) and SegGPT for napari, in plain PyTorch.

Importing this package is cheap: it imports neither torch nor Qt. The model families live in
:mod:`napari_segany.sam` and :mod:`napari_segany.seggpt`; the napari widgets in
:mod:`napari_segany._napari`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
