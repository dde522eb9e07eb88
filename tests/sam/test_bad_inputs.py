"""Bad input gives a clear message at once (issue 9): images, prompts, models, sources, offline hub."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import torch

from napari_segany import checkpoints
from napari_segany.checkpoints import CheckpointError, WeightsUnavailableError
from napari_segany.image_conversion import to_uint8_rgb
from napari_segany.sam import load_sam
from napari_segany.sam.predictor import MAX_POINTS_PER_OBJECT, SamPredictor
from napari_segany.seggpt import load_seggpt


@pytest.fixture
def predictor(tiny_sam_model):
    return SamPredictor(tiny_sam_model)


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


# -- images -------------------------------------------------------------------------------------


def test_extreme_aspect_ratio_works_or_says_why(predictor):
    # the tiny model's input is 128 px: 30 x 5000 keeps a 1-pixel short side (SAM's 1024 px
    # input keeps 2 pixels of a 10 x 5000 image), 10 x 5000 would keep none
    image = np.random.default_rng(0).integers(0, 255, (30, 5000)).astype(np.uint8)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(point_coords=np.array([[2500.0, 5.0]]), point_labels=[1])
    assert masks.shape == (3, 30, 5000) and np.isfinite(scores).all()
    with pytest.raises(ValueError, match="too elongated"):
        predictor.set_image(np.zeros((10, 5000), np.uint8))


def test_uint64_extremes_and_constant_images_do_not_divide_by_zero():
    top = np.full((4, 4), np.iinfo(np.uint64).max, np.uint64)
    assert to_uint8_rgb(top).shape == (4, 4, 3)
    mixed = np.array([[0, np.iinfo(np.uint64).max]], np.uint64)
    assert to_uint8_rgb(mixed)[0, :, 0].tolist() == [0, 255]
    assert to_uint8_rgb(np.full((3, 3), 7, np.int64)).max() == 0


def test_complex_images_are_a_clear_type_error(predictor):
    with pytest.raises(TypeError, match="complex"):
        to_uint8_rgb(np.zeros((4, 4), np.complex64))
    with pytest.raises(TypeError, match="np.abs"):
        predictor.set_image(np.zeros((8, 8), np.complex128))


@pytest.mark.parametrize("limits", [(200, 100), (np.nan, 100), (0, np.inf), ("a", 1)])
def test_reversed_or_nan_contrast_limits_are_value_errors(predictor, limits):
    with pytest.raises(ValueError, match="contrast limits"):
        to_uint8_rgb(np.zeros((4, 4), np.uint16), limits)
    with pytest.raises(ValueError, match="contrast limits"):
        predictor.set_image(np.zeros((4, 4), np.float32), contrast_limits=limits)


# -- prompts ------------------------------------------------------------------------------------


def test_nan_mask_input_is_a_value_error(predictor):
    predictor.set_image(np.zeros((32, 32), np.uint8))
    _, _, low_res = predictor.predict(point_coords=np.array([[5.0, 5.0]]), point_labels=[1])
    bad = low_res[:1].copy()
    bad[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        predictor.predict(point_coords=np.array([[5.0, 5.0]]), point_labels=[1], mask_input=bad)


def test_points_in_the_hundred_thousands_are_refused_at_once(predictor):
    predictor.set_image(np.zeros((64, 64), np.uint8))
    many = np.random.default_rng(0).uniform(0, 63, (100_000, 2))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=f"at most {MAX_POINTS_PER_OBJECT}"):
        predictor.predict(point_coords=many, point_labels=np.ones(100_000))
    assert time.perf_counter() - start < 2.0


def test_points_per_side_zero_is_a_value_error(predictor):
    from napari_segany.sam.automatic import SamAutomaticMaskGenerator

    with pytest.raises(ValueError, match="at least 1"):
        SamAutomaticMaskGenerator(predictor, points_per_side=0)


# -- models and sources -------------------------------------------------------------------------


def test_model_none_or_empty_is_a_clear_error():
    from napari_segany.sam.session_factory import open_sam_session
    from napari_segany.seggpt import SegGptPredictor

    with pytest.raises(ValueError, match="load_sam"):
        SamPredictor(None)
    with pytest.raises(ValueError, match="load_seggpt"):
        SegGptPredictor(None)
    for load in (load_sam, load_seggpt):
        with pytest.raises(ValueError, match="no model given"):
            load(None)
        with pytest.raises(ValueError, match="empty"):
            load("")
    with pytest.raises(ValueError, match="no model"):
        open_sam_session(None)


@pytest.mark.parametrize(
    "source", ["./nothing", "~/nothing.pth", "does/not/exist", "weights.safetensors", "x.bin"]
)
def test_path_like_sources_that_do_not_exist_fail_at_once(source, monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError("a path-like source must not be looked up on the hub")

    monkeypatch.setattr(checkpoints, "download_from_hub", no_hub)
    for load in (load_sam, load_seggpt):
        start = time.perf_counter()
        with pytest.raises(FileNotFoundError, match="no such file or folder"):
            load(source)
        assert time.perf_counter() - start < 1.0


def test_offline_hub_lookup_fails_fast_with_a_short_first_line(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    monkeypatch.setattr(checkpoints, "hub_reachable", lambda *a: False)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        load_sam("sam-vit-b")
    assert time.perf_counter() - start < 5.0
    first, _, details = str(info.value).partition("\n")
    assert first == "sam-vit-b is not downloaded and there is no internet"
    assert "hf download facebook/sam-vit-base" in details
    with pytest.raises(WeightsUnavailableError, match="no such file or folder 'does/notexist'"):
        load_sam("does/notexist")
    with pytest.raises(WeightsUnavailableError, match="seggpt-vit-l is not downloaded"):
        load_seggpt("seggpt-vit-l")


def test_offline_mode_env_fails_without_probing(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(checkpoints, "hub_reachable", lambda *a: pytest.fail("probed"))
    with pytest.raises(WeightsUnavailableError, match="no internet"):
        checkpoints.download_from_hub("facebook/sam-vit-base", display_name="sam-vit-b")


def test_hub_probe_gives_up_within_its_timeout(monkeypatch):
    import socket

    import huggingface_hub.constants as hub_constants

    silent = socket.socket()  # accepts connections (backlog) but never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        for endpoint in (f"http://127.0.0.1:{silent.getsockname()[1]}", "http://127.0.0.1:1"):
            monkeypatch.setattr(hub_constants, "ENDPOINT", endpoint)
            start = time.perf_counter()
            assert checkpoints.hub_reachable(timeout=0.5) is False
            assert time.perf_counter() - start < 2.0
    finally:
        silent.close()


def _folder_with_config(tmp_path, source_folder, config) -> str:
    folder = tmp_path / "model"
    shutil.copytree(source_folder, folder)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def test_config_that_is_a_list_is_a_checkpoint_error(tmp_path, tiny_sam_hf_folder):
    folder = _folder_with_config(tmp_path, tiny_sam_hf_folder, [1, 2, 3])
    with pytest.raises(CheckpointError, match="not an object"):
        load_sam(folder)
    with pytest.raises(CheckpointError, match="not an object"):
        load_seggpt(folder)


def test_zero_heads_is_a_checkpoint_error(tmp_path, tiny_sam_hf_folder, tiny_seggpt_hf_folder):
    config = json.loads((tiny_sam_hf_folder / "config.json").read_text())
    config["vision_config"]["num_attention_heads"] = 0
    with pytest.raises(CheckpointError, match="encoder_num_heads must be a positive integer"):
        load_sam(_folder_with_config(tmp_path / "sam", tiny_sam_hf_folder, config))
    config = json.loads((tiny_seggpt_hf_folder / "config.json").read_text())
    config["num_attention_heads"] = 0
    with pytest.raises(CheckpointError, match="describes no usable SegGPT"):
        load_seggpt(_folder_with_config(tmp_path / "seggpt", tiny_seggpt_hf_folder, config))


def test_index_without_weight_map_is_a_checkpoint_error(tmp_path, tiny_sam_hf_folder):
    folder = tmp_path / "sharded"
    shutil.copytree(tiny_sam_hf_folder, folder)
    for name in ("model.safetensors", "pytorch_model.bin"):
        (folder / name).unlink(missing_ok=True)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CheckpointError, match="weight_map"):
        load_sam(folder)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "../../etc/passwd"}})
    )
    with pytest.raises(CheckpointError, match="outside its folder"):
        load_sam(folder)


def test_legacy_non_zip_pth_with_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "legacy.pth"
    torch.save(
        {"model": {"w": torch.zeros(2)}, "x": _RunsCode(marker)},
        path,
        _use_new_zipfile_serialization=False,
    )
    for load in (load_sam, load_seggpt):
        with pytest.raises(CheckpointError, match="weights_only"):
            load(path)
    with pytest.raises(CheckpointError):
        checkpoints.read_state_dict(path)
    assert not marker.exists()
