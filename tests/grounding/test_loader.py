"""Loading Grounding DINO: every layout, strict keys, registry, offline message."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from napari_segany.checkpoints import CheckpointError, WeightsUnavailableError
from napari_segany.grounding import GROUNDING_DINO_MODELS, load_grounding_dino
from napari_segany.grounding.checkpoint_layout import is_original_layout
from napari_segany.models.grounding_dino import (
    GroundingDino,
    GroundingDinoConfig,
    grounding_dino_base_config,
    grounding_dino_tiny_config,
)
from tests.grounding.original_layout import to_original_layout
from tests.grounding.tiny_grounding_dino import TINY_SHORTEST_EDGE, write_vocab


def _outputs(loaded, text="red cell. nucleus."):
    ids = torch.tensor([loaded.tokenizer.encode(text)])
    pixels = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return loaded.model(pixels, ids)


def test_folder_reads_config_tokenizer_and_preprocessing(tiny_loaded):
    assert tiny_loaded.model.config.d_model == 64
    assert tiny_loaded.model.config.backbone.window_size == 4
    assert tiny_loaded.preprocessing.shortest_edge == TINY_SHORTEST_EDGE
    assert tiny_loaded.tokenizer.delimiter_token_ids == (101, 102, 1012, 1029)
    assert not tiny_loaded.model.training
    assert not any(p.requires_grad for p in tiny_loaded.model.parameters())


def test_folder_with_only_vocab_txt(tmp_path, tiny_folder, tiny_loaded):
    folder = tmp_path / "vocab_only"
    shutil.copytree(tiny_folder, folder)
    (folder / "tokenizer.json").unlink()
    loaded = load_grounding_dino(folder, precision="fp32")
    text = "a big, round cell? the nuclei."
    assert loaded.tokenizer.encode(text) == tiny_loaded.tokenizer.encode(text)
    torch.testing.assert_close(_outputs(loaded).boxes, _outputs(tiny_loaded).boxes)


def test_original_release_layout(tmp_path, tiny_loaded):
    state = to_original_layout(
        tiny_loaded.model.state_dict(), tiny_loaded.model.config.decoder_layers
    )
    assert is_original_layout(state)
    path = tmp_path / "groundingdino_tiny_test.pth"
    torch.save({"model": state}, path)
    write_vocab(tmp_path / "vocab.txt")
    loaded = load_grounding_dino(path, precision="fp32")
    assert loaded.model.config.backbone == tiny_loaded.model.config.backbone
    expected, ours = _outputs(tiny_loaded), _outputs(loaded)
    torch.testing.assert_close(ours.logits, expected.logits)
    torch.testing.assert_close(ours.boxes, expected.boxes)


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny_folder):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "broken"
    shutil.copytree(tiny_folder, folder)
    state = load_file(folder / "model.safetensors")
    state.pop("model.level_embed")
    state["model.surprise.weight"] = torch.zeros(2)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_grounding_dino(folder)
    assert "level_embed" in str(info.value) and "surprise.weight" in str(info.value)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(CheckpointError):
        load_grounding_dino(path)
    with pytest.raises(FileNotFoundError, match="registry name"):
        load_grounding_dino(tmp_path / "missing" / "model.pth")


def test_offline_without_cache_is_a_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsUnavailableError) as info:
        load_grounding_dino("grounding-dino-tiny")
    assert "IDEA-Research/grounding-dino-tiny" in str(info.value)
    assert "hf download" in str(info.value)


def test_registry_imports_no_torch():
    code = (
        "import sys; import napari_segany.grounding as g; "
        "assert 'torch' not in sys.modules, 'torch imported'; print(sorted(g.GROUNDING_DINO_MODELS))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "grounding-dino-tiny" in done.stdout


@pytest.mark.parametrize("name", list(GROUNDING_DINO_MODELS))
def test_registry_variants_build_with_their_size(name):
    variant = GROUNDING_DINO_MODELS[name]
    config = {"tiny": grounding_dino_tiny_config, "base": grounding_dino_base_config}[
        variant.architecture
    ]()
    with torch.device("meta"):
        model = GroundingDino(config)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(millions - variant.num_parameters_millions) < 0.03 * variant.num_parameters_millions
    assert variant.license == "Apache-2.0"
    assert variant.preprocessing.shortest_edge == 800 and variant.preprocessing.longest_edge == 1333


def test_tiny_config_matches_transformers_default():
    from transformers import GroundingDinoConfig as Reference

    config = GroundingDinoConfig.from_hub_dict(Reference().to_dict())
    assert config == grounding_dino_tiny_config()


def test_original_file_without_tokenizer_offline_says_how(monkeypatch, tmp_path, tiny_loaded):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    state = to_original_layout(
        tiny_loaded.model.state_dict(), tiny_loaded.model.config.decoder_layers
    )
    path = tmp_path / "alone" / "groundingdino_swint_ogc.pth"
    path.parent.mkdir()
    torch.save({"model": state}, path)
    with pytest.raises(WeightsUnavailableError, match="tokenizer"):
        load_grounding_dino(path)
    write_vocab(tmp_path / "vocab.txt")
    loaded = load_grounding_dino(path, precision="fp32", tokenizer=tmp_path)
    assert loaded.tokenizer.delimiter_token_ids == (101, 102, 1012, 1029)
