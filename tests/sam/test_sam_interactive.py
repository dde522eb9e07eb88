"""InteractiveSamSession and EmbeddingCache: pure tests (no napari), fake and tiny real models."""

import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from napari_segany.jobs import run_to_completion
from napari_segany.sam.embedding_cache import EmbeddingCache, EmbeddingKey, image_fingerprint
from napari_segany.sam.interactive_session import (
    InteractiveSamSession,
    SamPrompts,
    group_points_by_box,
    mask_to_mask_input,
)


@dataclass(frozen=True)
class FakeState:
    features: torch.Tensor
    original_size: tuple


class FakePredictor:
    """Records calls; predicts three candidates: a disk around the first point, all, nothing."""

    instances: list = []

    def __init__(self, model):
        self.model = model
        self.set_image_calls = 0
        self.predict_calls = []
        self.state = None
        FakePredictor.instances.append(self)

    def set_image(self, image):
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
        self.set_image_calls += 1
        self.state = FakeState(torch.full((1, 2, 2), float(image.mean())), image.shape[:2])

    def get_embedding_state(self):
        return self.state

    def set_embedding_state(self, state):
        self.state = state

    def predict(
        self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True
    ):
        self.predict_calls.append(
            dict(
                point_coords=point_coords, point_labels=point_labels, box=box, mask_input=mask_input
            )
        )
        h, w = self.state.original_size
        disk = np.zeros((h, w), bool)
        if point_coords is not None:
            x, y = point_coords[0]
            rr, cc = np.indices((h, w))
            disk = (rr + 0.5 - y) ** 2 + (cc + 0.5 - x) ** 2 <= 9
        masks = np.stack([np.zeros((h, w), bool), disk, np.ones((h, w), bool)])
        return masks, np.array([0.1, 0.9, 0.5], np.float32), np.zeros((3, 16, 16), np.float32)


@pytest.fixture
def session():
    FakePredictor.instances = []
    s = InteractiveSamSession(cache=EmbeddingCache(4), predictor_factory=FakePredictor)
    s.set_model(object(), "fake", "fp32")
    return s


def drain(job):
    return run_to_completion(job)


def test_out_of_order_calls_raise():
    bare = InteractiveSamSession(predictor_factory=FakePredictor)
    with pytest.raises(RuntimeError, match="set_model"):
        bare.embedding_key("img")
    bare.set_model(object(), "fake", "fp32")
    with pytest.raises(RuntimeError, match="embedding"):
        bare.predict()
    key = bare.embedding_key("img")
    drain(bare.compute_embedding(key, np.zeros((8, 8))))
    assert bare.activate(key)
    with pytest.raises(RuntimeError, match="set_prompts"):
        bare.predict()


def test_embedding_computed_once_per_key_and_prompts_converted_to_xy(session):
    image = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30)
    key = session.embedding_key("layer-1", (), (0.0, 600.0))
    assert not session.activate(key)
    assert drain(session.compute_embedding(key, image)) == key
    drain(session.compute_embedding(key, image))
    embedder, decoder = FakePredictor.instances
    assert embedder.set_image_calls == 1 and decoder.set_image_calls == 0
    assert session.activate(key)
    session.set_prompts(SamPrompts(np.array([[4.0, 7.0]]), np.array([1])))
    (prediction,) = session.predict()
    call = decoder.predict_calls[-1]
    np.testing.assert_allclose(call["point_coords"], [[7.5, 4.5]])  # (x, y) = (col, row) + 0.5
    assert call["box"] is None and call["mask_input"] is None
    # candidates ranked by score: disk (0.9), all (0.5), empty (0.1)
    (mask,) = session.chosen_masks()
    assert mask[4, 7] and mask.sum() < mask.size
    session.cycle_candidate()
    assert session.chosen_masks()[0].all()
    session.cycle_candidate()
    assert not session.chosen_masks()[0].any()
    assert session.chosen_scores() == [pytest.approx(0.1)]
    session.cycle_candidate()
    assert session.chosen_scores() == [pytest.approx(0.9)]


def test_several_boxes_make_several_objects_with_their_points(session):
    key = session.embedding_key("layer", ())
    drain(session.compute_embedding(key, np.zeros((40, 40), np.uint8)))
    session.activate(key)
    boxes = [np.array([[0.0, 0.0], [10.0, 10.0]]), np.array([[20.0, 20.0], [30.0, 35.0]])]
    points = np.array([[25.0, 25.0], [5.0, 5.0], [39.0, 39.0]])
    session.set_prompts(SamPrompts(points, np.array([1, 1, 0]), boxes))
    predictions = session.predict()
    assert len(predictions) == 2
    decoder = FakePredictor.instances[1]
    first, second = decoder.predict_calls[-2:]
    np.testing.assert_allclose(first["box"], [0.5, 0.5, 10.5, 10.5])
    np.testing.assert_allclose(first["point_coords"], [[5.5, 5.5]])
    np.testing.assert_allclose(second["point_coords"], [[25.5, 25.5], [39.5, 39.5]])
    np.testing.assert_array_equal(second["point_labels"], [1, 0])


def test_group_points_by_box_without_boxes():
    assert group_points_by_box(np.zeros((0, 2)), []) == []
    ((box, index),) = group_points_by_box(np.ones((3, 2)), [])
    assert box is None and list(index) == [0, 1, 2]


def test_refine_mask_becomes_mask_prompt(session):
    key = session.embedding_key("layer", ())
    drain(session.compute_embedding(key, np.zeros((40, 20), np.uint8)))
    session.activate(key)
    mask = np.zeros((40, 20), bool)
    mask[10:20, 5:15] = True
    session.set_prompts(SamPrompts(np.array([[12.0, 8.0]]), np.array([1]), mask=mask))
    session.predict()
    mask_input = FakePredictor.instances[1].predict_calls[-1]["mask_input"]
    assert mask_input.shape == (1, 256, 256)  # the fake model has no low_res_mask_size: SAM's 256


def test_mask_to_mask_input_follows_longest_side_resize_and_padding():
    mask = np.zeros((100, 50), bool)
    mask[:50, :25] = True  # top-left quarter
    logits = mask_to_mask_input(mask, 32)
    assert logits.shape == (1, 32, 32) and logits.dtype == np.float32
    inside = logits[0] > 0
    # 100×50 → 32×16 on the grid; the quarter is rows 0..15, cols 0..7; padding is negative
    assert inside[:16, :8].all() and not inside[16:].any() and not inside[:, 8:].any()


def test_cache_is_bounded_by_items_and_bytes():
    cache = EmbeddingCache(3, max_bytes=10**9)
    keys = [EmbeddingKey("l", (i,), "m", "fp32") for i in range(5)]
    for key in keys:
        cache.put(key, FakeState(torch.zeros(256), (1, 1)))
    assert len(cache) == 3 and cache.keys() == keys[2:]
    cache.get(keys[2])  # refresh: now most recently used
    cache.put(EmbeddingKey("l", (9,), "m", "fp32"), FakeState(torch.zeros(256), (1, 1)))
    assert keys[2] in cache and keys[3] not in cache
    by_bytes = EmbeddingCache(100, max_bytes=3 * 1024)
    for key in keys:
        by_bytes.put(key, FakeState(torch.zeros(256), (1, 1)))  # 1 KiB each
    assert len(by_bytes) == 3 and by_bytes.nbytes == 3 * 1024
    with pytest.raises(ValueError):
        EmbeddingCache(0)


def test_session_cache_bound_holds_while_embedding_a_stack(session):
    stack = np.random.default_rng(0).integers(0, 255, (7, 16, 16)).astype(np.uint8)
    items = [(session.embedding_key("stack", (z,)), lambda z=z: stack[z]) for z in range(7)]
    computed = drain(session.precompute_embeddings(items, 7))
    assert computed == 7 and len(session.cache) == 4
    assert [k.slice_index for k in session.cache.keys()] == [(3,), (4,), (5,), (6,)]


def test_real_tiny_model_session_and_disk_cache(tiny_sam_model, tmp_path):
    from napari_segany.sam.predictor import SamEmbedding

    image = np.random.default_rng(1).normal(100, 20, (48, 64)).astype(np.float32)
    session = InteractiveSamSession(cache=EmbeddingCache(2, disk_dir=tmp_path))
    session.set_model(tiny_sam_model, "tiny", "fp32")
    key = session.embedding_key("img", (), (50.0, 150.0))
    drain(session.compute_embedding(key, image))
    assert session.activate(key)
    session.set_prompts(
        SamPrompts(np.array([[20.0, 30.0]]), np.array([1]), [np.array([[5.0, 5.0], [40.0, 60.0]])])
    )
    (prediction,) = session.predict()
    assert prediction.masks.shape == (3, 48, 64) and prediction.masks.dtype == bool
    assert prediction.scores.shape == (3,) and prediction.low_res_logits.shape[-1] == 32
    files = list(tmp_path.glob("sam-embedding-*.safetensors"))
    assert len(files) == 1
    # a new session (e.g. after a restart) reads the embedding from disk instead of encoding
    fresh = InteractiveSamSession(cache=EmbeddingCache(2, disk_dir=tmp_path))
    fresh.set_model(tiny_sam_model, "tiny", "fp32")
    fresh._embedder.set_image = None  # would fail if the encoder ran
    state = fresh.embed_now(fresh.embedding_key("other-layer-id", (), (50.0, 150.0)), image)
    assert isinstance(state, SamEmbedding)
    torch.testing.assert_close(state.features, session.cache.get(key).features)
    assert image_fingerprint(np.zeros((2, 2, 3), np.uint8)) != image_fingerprint(
        np.zeros((2, 3, 3), np.uint8)
    )
    # refining with the mask prompt at the tiny model's 32×32 low-resolution size
    session.set_prompts(
        SamPrompts(np.array([[20.0, 30.0]]), np.array([1]), mask=prediction.masks[0])
    )
    assert len(session.predict()) == 1


def test_pure_modules_import_no_gui():
    code = (
        "import sys; import napari_segany.sam.interactive_session, napari_segany.sam.propagation, "
        "napari_segany.sam.coordinates, napari_segany.sam.embedding_cache; "
        "print(sorted({'napari', 'qtpy', 'PyQt5', 'magicgui'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
