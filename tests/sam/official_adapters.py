"""Test oracle: the official ``segment_anything`` model/predictor behind this package's interface.

:class:`napari_segany.sam.point_decoding.PointPromptDecoder` (segment everything) drives this
package's :class:`~napari_segany.sam.SamPredictor`. To compare its masks with the official
generator on the *same* model (including test models whose decoder is replaced), tests wrap an
official ``Sam`` or ``SamPredictor`` in :class:`OfficialSamAdapter`. Test-only code: it imports
``segment_anything``, which is not a dependency of the package.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class _OfficialModelFace:
    """The parts of this package's ``Sam`` that point decoding uses, on an official ``Sam``."""

    def __init__(self, official_model: Any) -> None:
        self.official = official_model
        self.mask_threshold = float(official_model.mask_threshold)
        self.image_size = int(official_model.image_encoder.img_size)

    @property
    def device(self) -> torch.device:
        return self.official.device

    def decode(self, features, point_coords, point_labels, multimask_output=True):
        model = self.official
        sparse, dense = model.prompt_encoder(
            points=(point_coords, point_labels), boxes=None, masks=None
        )
        return model.mask_decoder(
            image_embeddings=features,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )


class OfficialSamAdapter:
    """An official ``segment_anything`` ``Sam`` or ``SamPredictor`` with our predictor's face.

    Points stay float64 on their way to the decoder (``coords_dtype = None``), as in the official
    generator, so that masks are bit-identical to it.
    """

    coords_dtype = None

    def __init__(self, model_or_predictor: Any) -> None:
        from segment_anything import SamPredictor

        if hasattr(model_or_predictor, "set_image"):
            self.official = model_or_predictor
        else:
            self.official = SamPredictor(model_or_predictor)
        self.model = _OfficialModelFace(self.official.model)

    @property
    def device(self) -> torch.device:
        return self.official.device

    @property
    def is_image_set(self) -> bool:
        return bool(self.official.is_image_set)

    @property
    def original_size(self) -> tuple[int, int]:
        return tuple(self.official.original_size)

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.official.input_size)

    def set_image(self, image: np.ndarray) -> None:
        self.official.set_image(image)

    def get_image_embedding(self) -> torch.Tensor:
        return self.official.get_image_embedding()

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        return self.official.transform.apply_coords(coords, original_size)

    def postprocess_masks(self, low_res: torch.Tensor) -> torch.Tensor:
        return self.official.model.postprocess_masks(
            low_res, self.official.input_size, self.official.original_size
        )

    def predict_torch(self, *args, **kwargs):
        return self.official.predict_torch(*args, **kwargs)
