"""napari-segany: Segment Anything (SAM) and SegGPT for napari, in plain PyTorch.

Importing this package is cheap: it imports neither torch nor Qt. The model families live in
:mod:`napari_segany.sam` and :mod:`napari_segany.seggpt`; the napari widgets in
:mod:`napari_segany._napari`.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version

try:  # the installed distribution's version, which setuptools-scm took from the git tag
    __version__: str = _distribution_version("napari-segany")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
