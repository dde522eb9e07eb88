"""load_seggpt: every checkpoint layout, strict keys, registry, offline errors, precision."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from napari_segany.checkpoints import CheckpointError, WeightsUnavailableError
from napari_segany.models.seggpt import SegGpt, SegGptArchitecture
from napari_segany.seggpt import SEGGPT_MODELS, get_model_info, load_seggpt
from napari_segany.seggpt import loader as loader_module


def test_folder_and_pth_give_identical_weights(
    tiny_seggpt_hf_folder, tiny_seggpt_pth, tiny_seggpt_architecture
):
    from_folder = load_seggpt(tiny_seggpt_hf_folder, precision="fp32")
    from_pth = load_seggpt(tiny_seggpt_pth, precision="fp32", architecture=tiny_seggpt_architecture)
    assert from_folder.arch == tiny_seggpt_architecture == from_pth.arch
    a, b = from_folder.state_dict(), from_pth.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert not from_folder.training
    assert not any(p.requires_grad for p in from_folder.parameters())


def test_architecture_comes_from_config_json(tiny_seggpt_hf_folder):
    config = json.loads((tiny_seggpt_hf_folder / "config.json").read_text())
    model = load_seggpt(tiny_seggpt_hf_folder, precision="fp32")
    assert model.arch.hidden_size == config["hidden_size"] == 32
    assert model.arch.num_layers == config["num_hidden_layers"]
    assert model.arch.image_size == tuple(config["image_size"])
    assert model.arch.merge_index == config["merge_index"]
    assert model.arch.feature_indices == tuple(config["intermediate_hidden_state_indices"])


def test_pth_with_default_vit_l_architecture_names_the_mismatch(tiny_seggpt_pth):
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_seggpt(tiny_seggpt_pth, precision="fp32")


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny_seggpt_pth, tiny_seggpt_architecture):
    state = torch.load(tiny_seggpt_pth, weights_only=True)["model"]
    del state["blocks.0.attn.rel_pos_h"]
    state["blocks.0.attn.extra"] = torch.zeros(1)
    broken = tmp_path / "broken.pth"
    torch.save({"model": state}, broken)
    with pytest.raises(CheckpointError) as info:
        load_seggpt(broken, architecture=tiny_seggpt_architecture)
    message = str(info.value)
    assert "missing" in message and "encoder.layers.0.attention.rel_pos_h" in message
    assert "unexpected" in message and "encoder.layers.0.attention.extra" in message


def test_truncated_file_is_a_checkpoint_error(tmp_path, tiny_seggpt_pth, tiny_seggpt_architecture):
    data = tiny_seggpt_pth.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_seggpt(truncated, architecture=tiny_seggpt_architecture)


def test_folder_of_another_model_type_is_rejected(tmp_path, tiny_seggpt_hf_folder):
    folder = tmp_path / "other"
    folder.mkdir()
    config = json.loads((tiny_seggpt_hf_folder / "config.json").read_text())
    config["model_type"] = "sam"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not SegGPT"):
        load_seggpt(folder)


def test_unknown_source_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_seggpt(tmp_path / "nothing_here.pth")


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)],
)
def test_precision(tiny_seggpt_hf_folder, precision, dtype):
    model = load_seggpt(tiny_seggpt_hf_folder, precision=precision)
    assert model.dtype == dtype
    assert all(p.dtype == dtype for p in model.parameters())


def test_registry_name_and_hub_id_go_through_the_hub_download(
    monkeypatch, tiny_seggpt_hf_folder, tiny_seggpt_pth, tiny_seggpt_architecture
):
    calls = []

    def fake_download(repo_id, filenames=None, *, revision=None, single_file=None, **kwargs):
        calls.append((repo_id, single_file))
        return tiny_seggpt_pth if single_file else tiny_seggpt_hf_folder

    monkeypatch.setattr(loader_module, "download_from_hub", fake_download)
    assert isinstance(load_seggpt("seggpt-vit-l", precision="fp32"), SegGpt)
    assert isinstance(load_seggpt("BAAI/seggpt-vit-large", precision="fp32"), SegGpt)
    load_seggpt(
        "seggpt-vit-l", precision="fp32", original=True, architecture=tiny_seggpt_architecture
    )
    assert calls == [
        ("BAAI/seggpt-vit-large", None),
        ("BAAI/seggpt-vit-large", None),
        ("BAAI/SegGPT", "seggpt_vit_large.pth"),
    ]


def test_offline_registry_download_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    code = (
        "from napari_segany.seggpt import load_seggpt\n"
        "from napari_segany.checkpoints import WeightsUnavailableError\n"
        "try:\n    load_seggpt('seggpt-vit-l')\n"
        "except WeightsUnavailableError as e:\n    print('OFFLINE:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "OFFLINE:" in out.stdout, out.stderr[-2000:]
    assert "BAAI/seggpt-vit-large" in out.stdout and "download" in out.stdout
    assert issubclass(WeightsUnavailableError, OSError)


@pytest.mark.parametrize("name", sorted(SEGGPT_MODELS))
def test_every_registry_entry_builds_and_has_its_size(name):
    info = get_model_info(name)
    arch = info.architecture
    assert isinstance(arch, SegGptArchitecture)  # typed, like SamArchitecture
    with torch.device("meta"):
        model = SegGpt(arch)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params * 4 / 1e6 - info.size_mb) / info.size_mb < 0.05
    assert info.input_size == arch.image_size and info.prompt_size == arch.half_size
    assert info.license and info.hub_repo and info.original_filename.endswith(".pth")


def test_unknown_registry_name():
    with pytest.raises(KeyError, match="seggpt-vit-l"):
        get_model_info("seggpt-huge")


def test_registry_and_palette_import_without_torch():
    code = (
        "import sys\nfrom napari_segany.seggpt import SEGGPT_MODELS, build_palette\n"
        "build_palette(3)\nprint('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_architecture_validation():
    with pytest.raises(ValueError, match="merge_index"):
        SegGptArchitecture(merge_index=6)
    with pytest.raises(ValueError, match="halves"):
        SegGptArchitecture(image_size=(900, 448))
    with pytest.raises(ValueError, match="unknown"):
        SegGptArchitecture.from_dict({"depth": 3})


def test_mean_and_std_come_from_the_registry_entry(monkeypatch, tiny_seggpt_hf_folder):
    from dataclasses import replace

    from napari_segany.seggpt import SegGptPredictor
    from napari_segany.seggpt.registry import IMAGENET_MEAN, IMAGENET_STD

    default = SegGptPredictor(load_seggpt(tiny_seggpt_hf_folder, precision="fp32"))
    np_mean, np_std = default.mean.tolist(), default.std.tolist()
    assert np_mean == pytest.approx(IMAGENET_MEAN) and np_std == pytest.approx(IMAGENET_STD)
    other = replace(SEGGPT_MODELS["seggpt-vit-l"], mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    monkeypatch.setattr(loader_module, "SEGGPT_MODELS", {"seggpt-vit-l": other})
    monkeypatch.setattr(loader_module, "download_from_hub", lambda *a, **k: tiny_seggpt_hf_folder)
    predictor = SegGptPredictor(load_seggpt("seggpt-vit-l", precision="fp32"))
    assert predictor.mean.tolist() == [0.5] * 3 and predictor.std.tolist() == [0.25] * 3
    explicit = SegGptPredictor(predictor.model, mean=(0.1, 0.2, 0.3), std=(1, 1, 1))
    assert explicit.mean.tolist() == pytest.approx([0.1, 0.2, 0.3])
