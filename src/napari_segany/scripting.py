"""The napari-segany operations for scripted napari sessions, without clicking.

Everything here takes napari layers (or arrays) and returns or writes labels; the widgets call the
same pure jobs and layer glue. Importing this module imports napari, never Qt or magicgui.

SAM (see the README for a walk-through)::

    from napari_segany.scripting import load_session, segment_layers_with_sam
    session = load_session("sam-vit-b")
    labels = segment_layers_with_sam(viewer.layers["cells"], viewer.layers["points"], model=session)

Text prompts (Grounded SAM: Grounding DINO boxes → SAM masks)::

    from napari_segany.scripting import segment_layer_with_text
    labels = segment_layer_with_text(viewer.layers["cells"], "nucleus. mitochondrion.")

SegGPT::

    from napari_segany.scripting import segment_layers_with_seggpt
    labels = segment_layers_with_seggpt(viewer.layers["cells"], viewer.layers["painted"])
"""

from napari_segany._napari.sam_scripting import (
    load_session,
    propagate_label_through_stack,
    segment_everything_in_layer,
    segment_layers_with_sam,
)
from napari_segany._napari.seggpt_layers import segment_layers_with_seggpt
from napari_segany._napari.text_layers import segment_layer_with_text
from napari_segany.seggpt.propagation import segment_stack_with_seggpt

__all__ = [
    "load_session",
    "propagate_label_through_stack",
    "segment_everything_in_layer",
    "segment_layer_with_text",
    "segment_layers_with_sam",
    "segment_layers_with_seggpt",
    "segment_stack_with_seggpt",
]
