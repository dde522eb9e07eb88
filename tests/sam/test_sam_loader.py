"""load_sam: every source kind, tied weights, strictness, and clear errors."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from napari_segany import checkpoints
from napari_segany.checkpoints import CheckpointError, WeightsUnavailableError
from napari_segany.models.precision import resolve_dtype
from napari_segany.sam import SAM_MODELS, load_sam
from napari_segany.sam.checkpoint_layouts import (
    ORIGINAL,
    TRANSFORMERS,
    architecture_from_state_dict,
    architecture_from_transformers_config,
    detect_layout,
    rename_transformers_keys,
)
from napari_segany.sam.registry import MEDSAM_PREPROCESSING, SamPreprocessing


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key].float(), sb[key].float(), msg=key)


def test_folder_and_pth_load_identical_weights(tiny_sam_hf_folder, tiny_sam_pth, tiny_sam_model):
    from_pth = load_sam(tiny_sam_pth, precision="fp32")
    assert from_pth.architecture == tiny_sam_model.architecture.__class__(
        **{**tiny_sam_model.architecture.__dict__, "decoder_layer_norm_eps": 1e-5}
    )
    _same_weights(from_pth, tiny_sam_model)
    assert tiny_sam_model.name == str(tiny_sam_hf_folder)
    assert from_pth.name == str(tiny_sam_pth)
    assert tiny_sam_model.preprocessing == SamPreprocessing()
    assert not any(p.requires_grad for p in tiny_sam_model.parameters())
    assert not tiny_sam_model.training


def test_default_precision_is_auto(tiny_sam_hf_folder):
    model = load_sam(tiny_sam_hf_folder)
    assert model.dtype == resolve_dtype("auto", torch.device("cpu"))


def test_tied_embedding_saved_under_either_name(tmp_path, tiny_sam_hf_folder, tiny_sam_model):
    state = load_file(tiny_sam_hf_folder / "model.safetensors")
    shared = "shared_image_embedding.positional_embedding"
    prompt_side = "prompt_encoder.shared_embedding.positional_embedding"
    assert shared in state or prompt_side in state
    matrix = state.pop(shared, None)
    matrix = state.pop(prompt_side, matrix)
    for names in ([prompt_side], [shared, prompt_side]):
        folder = tmp_path / "-".join(n.split(".")[0] for n in names)
        folder.mkdir()
        shutil.copy(tiny_sam_hf_folder / "config.json", folder / "config.json")
        save_file({**state, **{n: matrix.clone() for n in names}}, folder / "model.safetensors")
        _same_weights(load_sam(folder, precision="fp32"), tiny_sam_model)


def test_folder_with_pytorch_model_bin(tmp_path, tiny_sam_hf_folder, tiny_sam_model):
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(tiny_sam_hf_folder / "config.json", folder / "config.json")
    torch.save(load_file(tiny_sam_hf_folder / "model.safetensors"), folder / "pytorch_model.bin")
    _same_weights(load_sam(folder, precision="fp32"), tiny_sam_model)


def test_partial_config_takes_transformers_defaults(tmp_path, tiny_sam_hf_folder):
    # SlimSAM's config.json lists only the pruned widths; everything else is a default.
    config = json.loads((tiny_sam_hf_folder / "config.json").read_text())
    from napari_segany.sam.checkpoint_layouts import architecture_from_transformers_config

    slim = architecture_from_transformers_config(
        {
            "model_type": "sam",
            "vision_config": {"hidden_size": 168, "mlp_dim": 696, "model_type": ""},
        }
    )
    assert slim == SAM_MODELS["slimsam-77"].architecture.__class__(
        **{**SAM_MODELS["slimsam-77"].architecture.__dict__, "decoder_layer_norm_eps": 1e-6}
    )
    tiny = architecture_from_transformers_config(config)
    assert (tiny.image_size, tiny.encoder_embed_dim, tiny.encoder_global_attn_indexes) == (
        128,
        48,
        (1,),
    )


def test_original_layout_variants_recognised_from_shapes():
    for name in ("sam-vit-b", "sam-vit-l", "sam-vit-h", "slimsam-50", "slimsam-77"):
        from napari_segany.sam import build_sam

        with torch.device("meta"):
            model = build_sam(SAM_MODELS[name].architecture)
        state = model.state_dict()
        assert detect_layout(state) == ORIGINAL
        recognised = architecture_from_state_dict(state)
        assert recognised == SAM_MODELS[name].architecture, name


def test_transformers_renaming_covers_every_key(tiny_sam_hf_model, tiny_sam_model):
    state = tiny_sam_hf_model.state_dict()
    assert detect_layout(state) == TRANSFORMERS
    renamed = rename_transformers_keys(state)
    assert set(renamed) == set(tiny_sam_model.state_dict())


def test_source_kinds_resolve_through_the_hub(monkeypatch, tiny_sam_hf_folder):
    calls = []

    def fake_download(repo_id, filenames=None, **kwargs):
        calls.append(repo_id)
        return tiny_sam_hf_folder

    monkeypatch.setattr(checkpoints, "download_from_hub", fake_download)
    # the tiny folder stands in for the downloads: registry entries with its architecture
    tiny = architecture_from_transformers_config(checkpoints.read_config(tiny_sam_hf_folder))
    for name in ("medsam-vit-b", "slimsam-77"):
        monkeypatch.setitem(SAM_MODELS, name, replace(SAM_MODELS[name], architecture=tiny))
    by_name = load_sam("medsam-vit-b", precision="fp32")
    assert calls[-1] == "wanglab/medsam-vit-base"
    assert by_name.name == "medsam-vit-b"
    assert by_name.preprocessing == MEDSAM_PREPROCESSING
    by_repo = load_sam("wanglab/medsam-vit-base", precision="fp32")
    assert (
        by_repo.name == "wanglab/medsam-vit-base" and by_repo.preprocessing == MEDSAM_PREPROCESSING
    )
    other = load_sam("someone/sam-finetune", precision="fp32")
    assert other.preprocessing == SamPreprocessing()
    assert (
        load_sam("slimsam-77", precision="fp32", preprocessing="medsam").preprocessing
        == MEDSAM_PREPROCESSING
    )
    assert calls == [
        "wanglab/medsam-vit-base",
        "wanglab/medsam-vit-base",
        "someone/sam-finetune",
        "nielsr/slimsam-77-uniform",
    ]


def test_medsam_file_name_selects_medsam_preprocessing(tmp_path, tiny_sam_pth):
    path = tmp_path / "medsam_vit_b.pth"
    shutil.copy(tiny_sam_pth, path)
    assert load_sam(path, precision="fp32").preprocessing == MEDSAM_PREPROCESSING
    with pytest.raises(ValueError, match="unknown preprocessing"):
        load_sam(path, preprocessing="imagenet")


def test_offline_without_cache_is_a_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsUnavailableError) as info:
        load_sam("sam-vit-b")
    message = str(info.value)
    assert "facebook/sam-vit-base" in message
    assert "hf download" in message and "local" in message


def test_not_a_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("this is not a checkpoint")
    with pytest.raises(CheckpointError, match="could not read"):
        load_sam(path)


@pytest.mark.parametrize("kind", ["pth", "safetensors"])
def test_truncated_file_is_a_checkpoint_error(tmp_path, tiny_sam_pth, tiny_sam_hf_folder, kind):
    source = tiny_sam_pth if kind == "pth" else tiny_sam_hf_folder / "model.safetensors"
    data = source.read_bytes()
    path = tmp_path / f"truncated.{kind}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_sam(path)


def test_unknown_layout_is_named(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.bias": torch.zeros(10)}, path)
    with pytest.raises(
        CheckpointError, match="not a SAM checkpoint in a known layout.*conv1.weight"
    ):
        load_sam(path)


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny_sam_pth):
    state = torch.load(tiny_sam_pth, weights_only=True)
    del state["mask_decoder.iou_token.weight"]
    state["mask_decoder.extra_head.weight"] = torch.zeros(2)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_sam(path)
    assert "missing key(s): mask_decoder.iou_token.weight" in str(info.value)
    assert "unexpected key(s): mask_decoder.extra_head.weight" in str(info.value)


def test_config_that_does_not_fit_the_weights_names_shapes(tmp_path, tiny_sam_hf_folder):
    folder = tmp_path / "wrong-config"
    shutil.copytree(tiny_sam_hf_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["mlp_dim"] = 100
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="wrong shape.*mlp.lin1.weight"):
        load_sam(folder)


def test_unknown_source_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="registry name"):
        load_sam(tmp_path / "nothing-here.pth")
    with pytest.raises(FileNotFoundError):
        load_sam("sam-vit-q")


def test_folder_without_config_is_a_checkpoint_error(tmp_path, tiny_sam_hf_folder):
    folder = tmp_path / "no-config"
    folder.mkdir()
    shutil.copy(tiny_sam_hf_folder / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="config.json"):
        load_sam(folder)


def test_registry_name_builds_from_its_entry_and_a_disagreeing_config_is_an_error(
    monkeypatch, tiny_sam_hf_folder
):
    monkeypatch.setattr(checkpoints, "download_from_hub", lambda *a, **k: tiny_sam_hf_folder)
    with pytest.raises(checkpoints.CheckpointError, match="disagrees with the registry entry"):
        load_sam("sam-vit-b", precision="fp32")  # the tiny config is not ViT-B
    tiny = architecture_from_transformers_config(checkpoints.read_config(tiny_sam_hf_folder))
    monkeypatch.setitem(
        SAM_MODELS, "sam-vit-b", replace(SAM_MODELS["sam-vit-b"], architecture=tiny)
    )
    model = load_sam("sam-vit-b", precision="fp32")
    assert model.architecture.encoder_embed_dim == tiny.encoder_embed_dim
    assert model.name == "sam-vit-b"
