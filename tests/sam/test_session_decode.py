"""InteractiveSamSession.decode: the preview upscales only the candidate it shows."""

from __future__ import annotations

import numpy as np


def test_lazy_preview_masks_equal_the_eager_ones(tiny_sam_model):
    from napari_segany.sam.interactive_session import InteractiveSamSession, SamPrompts

    session = InteractiveSamSession()
    session.set_model(tiny_sam_model, "tiny", "fp32")
    image = np.random.default_rng(0).integers(0, 255, (40, 56)).astype(np.uint8)
    key = session.embedding_key("img")
    session.embed_now(key, image)
    prompts = SamPrompts(np.array([[20.0, 30.0], [5.0, 5.0]]), np.array([1, 0]))
    (lazy,) = session.decode(key, prompts)
    eager = session._predict_object(
        session._decoder, prompts.points_rc, prompts.point_labels, None, None, lazy=False
    )
    assert lazy._masks is None  # only the shown candidate was upscaled
    np.testing.assert_array_equal(lazy.mask(int(lazy.ranked()[0])), eager.masks[eager.ranked()[0]])
    np.testing.assert_array_equal(lazy.masks, eager.masks)
    np.testing.assert_allclose(lazy.scores, eager.scores)
