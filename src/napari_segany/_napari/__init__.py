"""napari side of napari-segany: dock widgets, layer glue and background tasks.

Everything that imports napari, magicgui or qtpy lives in this sub-package; the models and the
pure pipelines (:mod:`napari_segany.sam`, :mod:`napari_segany.seggpt`) never import it.
Importing this package itself stays cheap: the widgets are imported from their own modules.
"""
