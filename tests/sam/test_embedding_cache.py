"""The on-disk embedding cache: safe format, hostile files never executed, stale files missed,
unwritable folders tolerated, atomic writes, and the scripted session with ``cache_dir``."""

from __future__ import annotations

import errno
import json
import os
import pickle
import warnings

import numpy as np
import pytest
import torch

from napari_segany.image_conversion import to_uint8_rgb
from napari_segany.sam.embedding_cache import (
    EmbeddingCache,
    EmbeddingCacheWarning,
    EmbeddingDiskCache,
    EmbeddingKey,
    disk_cache_key,
    image_fingerprint,
)
from napari_segany.sam.interactive_session import InteractiveSamSession, SamPrompts
from napari_segany.sam.predictor import SamEmbedding, SamPredictor
from napari_segany.sam.session_factory import open_sam_session

IMAGE = np.random.default_rng(5).normal(100, 20, (40, 56)).astype(np.float32)
LIMITS = (50.0, 150.0)


class _RunsCode:
    """Unpickling this runs ``os.system`` (touching a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _session(model, folder) -> InteractiveSamSession:
    session = InteractiveSamSession(cache=EmbeddingCache(4, disk_dir=folder))
    session.set_model(model, "tiny", "fp32")
    return session


def _expected_path(model, folder):
    predictor = SamPredictor(model)
    rgb = to_uint8_rgb(IMAGE, LIMITS)
    key = disk_cache_key(predictor.model_id, image_fingerprint(rgb), contrast_limits=LIMITS)
    return EmbeddingDiskCache(folder).path_for(key), key, predictor


def _segment(session) -> np.ndarray:
    key = session.embedding_key("img", (), LIMITS)
    session.embed_now(key, IMAGE)
    assert session.activate(key)
    session.set_prompts(SamPrompts(np.array([[20.0, 28.0]]), np.array([1])))
    (prediction,) = session.predict()
    return prediction.masks


def _write_safetensors(path, features, header):
    from safetensors.torch import save_file

    save_file({"features": features}, str(path), metadata={"napari_segany": json.dumps(header)})


def _hostile_files(path, key, marker, predictor):
    """(name, writer) pairs: each writes one kind of hostile or broken file at ``path``."""

    def legacy_dict(p):  # the old format: a dict naming a callable, read by the old loader
        torch.save({"class": "napari_segany.checkpoints:os.system", "fields": {}}, p)

    def pickled_code(p):  # a .pth whose unpickling runs a command
        torch.save({"x": _RunsCode(marker)}, p)

    def raw_pickle(p):
        p.write_bytes(pickle.dumps(_RunsCode(marker)))

    def garbage_json(p):
        p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\0" * 64)

    good = {
        "format": "napari-segany/sam-embedding",
        "version": 1,
        "key": key,
        "model_id": predictor.model_id,
        "dtype": "float32",
        "original_size": [40, 56],
        "input_size": [91, 128],
    }

    def wrong_shape(p):  # the header claims a shape the tensor does not have
        _write_safetensors(p, torch.zeros(1, 32, 8, 8), {**good, "shape": [1, 32, 16, 16]})

    def other_model(p):  # a well-formed file written by another model (replaced weights)
        _write_safetensors(
            p, torch.zeros(1, 32, 8, 8), {**good, "shape": [1, 32, 8, 8], "model_id": "other"}
        )

    def header_not_dict(p):
        from safetensors.torch import save_file

        save_file({"features": torch.zeros(1, 32, 8, 8)}, str(p), metadata={"napari_segany": "[1]"})

    def truncated(p):
        _write_safetensors(p, torch.zeros(1, 32, 8, 8), {**good, "shape": [1, 32, 8, 8]})
        p.write_bytes(p.read_bytes()[:-100])

    return [
        ("legacy_dict", legacy_dict),
        ("pickled_code", pickled_code),
        ("raw_pickle", raw_pickle),
        ("garbage_json", garbage_json),
        ("wrong_shape", wrong_shape),
        ("other_model", other_model),
        ("header_not_dict", header_not_dict),
        ("truncated", truncated),
    ]


def test_hostile_cache_files_are_never_executed_and_segmentation_recomputes(
    tiny_sam_model, tmp_path
):
    reference = _segment(_session(tiny_sam_model, tmp_path / "clean"))
    for name, writer in _hostile_files(
        *_expected_path(tiny_sam_model, tmp_path / "x")[:2],
        tmp_path / "marker",
        _expected_path(tiny_sam_model, tmp_path)[2],
    ):
        folder = tmp_path / name
        folder.mkdir()
        path, key, predictor = _expected_path(tiny_sam_model, folder)
        writer(path)
        assert EmbeddingDiskCache(folder).get(key, model_id=predictor.model_id) is None, name
        masks = _segment(_session(tiny_sam_model, folder))  # recomputed, never raised
        np.testing.assert_array_equal(masks, reference)
        assert not (tmp_path / "marker").exists(), f"{name}: code ran"
        # the bad file was replaced by a good one
        state = EmbeddingDiskCache(folder).get(key, model_id=predictor.model_id)
        assert isinstance(state, SamEmbedding), name


def test_round_trip_keeps_real_dtype_and_sizes(tmp_path):
    disk = EmbeddingDiskCache(tmp_path)
    state = SamEmbedding(torch.randn(1, 8, 4, 4).to(torch.bfloat16), (30, 40), (12, 16), "m|bf16")
    key = disk_cache_key("m|bf16", "f" * 32)
    assert disk.put(key, state)
    back = disk.get(key, model_id="m|bf16")
    assert back.features.dtype == torch.bfloat16
    assert torch.equal(back.features, state.features)
    assert back.original_size == (30, 40) and back.input_size == (12, 16)
    assert disk.get(key, model_id="m|fp32") is None  # stale: other precision
    assert disk.get(disk_cache_key("m|bf16", "0" * 32)) is None  # other image
    with pytest.raises(ValueError):
        disk.path_for("../escape")
    header = json.loads(
        __import__("safetensors")
        .safe_open(str(disk.path_for(key)), "pt")
        .metadata()["napari_segany"]
    )
    assert header["version"] == 1 and header["dtype"] == "bfloat16"
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was renamed into place


def test_replaced_weights_and_other_precision_are_misses(tiny_sam_model, tmp_path):
    import copy

    session = _session(tiny_sam_model, tmp_path)
    _segment(session)
    replaced = copy.deepcopy(tiny_sam_model)
    with torch.no_grad():
        replaced.mask_decoder.iou_token.weight.add_(1.0)
        for p in replaced.image_encoder.parameters():
            p.mul_(1.01)
    fresh = _session(replaced, tmp_path)  # same name "tiny", same folder, other weights
    calls = []
    original = fresh._embedder.set_image
    fresh._embedder.set_image = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    _segment(fresh)  # a stale file must not raise in activate()
    assert calls == [1]
    half = copy.deepcopy(tiny_sam_model).to(torch.bfloat16)
    assert SamPredictor(half).model_id != SamPredictor(tiny_sam_model).model_id
    assert "bfloat16" in SamPredictor(half).model_id


def test_contrast_change_makes_the_key_and_file_stale(tiny_sam_model, tmp_path):
    session = _session(tiny_sam_model, tmp_path)
    a = session.embedding_key("img", (), (50.0, 150.0))
    b = session.embedding_key("img", (), (0.0, 300.0))
    assert a != b
    session.embed_now(a, IMAGE)
    assert b not in session.cache
    calls = []
    original = session._embedder.set_image
    session._embedder.set_image = lambda *x, **k: (calls.append(1), original(*x, **k))[1]
    session.embed_now(b, IMAGE)
    assert calls == [1]  # recomputed, not served from a's memory entry or file
    assert len(list(tmp_path.glob("sam-embedding-*.safetensors"))) == 2
    fp = "a" * 32
    assert disk_cache_key("m", fp, contrast_limits=(0, 1)) != disk_cache_key(
        "m", fp, contrast_limits=(0, 2)
    )


def test_unwritable_folder_warns_once_and_keeps_the_embedding(tiny_sam_model, tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("I am a file")
    session = _session(tiny_sam_model, not_a_folder)
    with pytest.warns(EmbeddingCacheWarning, match="cannot be written"):
        masks = _segment(session)
    assert masks.any() or masks.shape == (3, 40, 56)
    assert session.cache.disk_error is not None and session.cache.disk_dir is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        session.embed_now(session.embedding_key("img", (1,), LIMITS), IMAGE)
    assert len(session.cache) == 2


def test_full_disk_is_survived(tmp_path, monkeypatch):
    import napari_segany.sam.embedding_cache as module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module.os, "replace", full)
    cache = EmbeddingCache(4, disk_dir=tmp_path)
    state = SamEmbedding(torch.zeros(1, 4, 2, 2), (8, 8), (8, 8), "m")
    key = EmbeddingKey("l", (), "m", "fp32")
    with pytest.warns(EmbeddingCacheWarning, match="No space left"):
        cache.put(key, state, "b" * 32)
    assert cache.get(key) is state
    assert not list(tmp_path.iterdir())  # no temporary file left behind


def test_concurrent_writers_never_leave_a_partial_file(tmp_path):
    import threading

    disk = EmbeddingDiskCache(tmp_path)
    key = disk_cache_key("m", "c" * 32)
    states = [
        SamEmbedding(torch.full((1, 16, 32, 32), float(i)), (9, 9), (9, 9), "m") for i in range(6)
    ]
    threads = [threading.Thread(target=disk.put, args=(key, s)) for s in states]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    back = disk.get(key, model_id="m")
    assert back is not None and back.features.unique().numel() == 1
    assert [p.name for p in tmp_path.iterdir()] == [disk.path_for(key).name]


def test_open_sam_session_with_cache_dir(tiny_sam_model, tmp_path):
    session = open_sam_session(tiny_sam_model, cache_dir=tmp_path)
    _segment(session)
    assert len(list(tmp_path.glob("sam-embedding-*.safetensors"))) == 1
    with pytest.raises(ValueError, match="no model"):
        open_sam_session(None)
    with pytest.raises(ValueError, match="no model"):
        open_sam_session("  ")


def test_scripting_load_session_takes_a_cache_dir(tiny_sam_model, tmp_path):
    from napari_segany.scripting import load_session

    session = load_session(tiny_sam_model, cache_dir=str(tmp_path))
    assert session.cache.disk_dir == tmp_path
    _segment(session)
    assert len(list(tmp_path.glob("sam-embedding-*.safetensors"))) == 1
