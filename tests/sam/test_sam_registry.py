"""The SAM registry: every entry builds, carries its sources and preprocessing, and imports no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from napari_segany.sam import SAM_MODELS, build_sam, get_sam_variant
from napari_segany.sam.registry import SamArchitecture, SamPreprocessing


@pytest.mark.parametrize("name", list(SAM_MODELS))
def test_every_entry_builds_on_meta_with_its_numbers(name):
    variant = SAM_MODELS[name]
    arch = variant.architecture
    with torch.device("meta"):
        model = build_sam(arch, name=name, preprocessing=variant.preprocessing)
    encoder = model.image_encoder
    assert len(encoder.blocks) == arch.encoder_depth
    assert encoder.patch_embed.proj.out_channels == arch.encoder_embed_dim
    assert encoder.blocks[0].mlp.lin1.out_features == arch.encoder_mlp_dim
    assert encoder.blocks[0].attn.num_heads == arch.encoder_num_heads
    assert [i for i, b in enumerate(encoder.blocks) if b.window_size == 0] == list(
        arch.encoder_global_attn_indexes
    )
    assert encoder.pos_embed.shape == (1, 64, 64, arch.encoder_embed_dim)
    assert model.low_res_mask_size == (256, 256)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert params == pytest.approx(variant.parameters_millions, rel=0.12), (name, params)
    assert variant.hub_repo.count("/") == 1
    assert variant.license and variant.description


def test_original_checkpoint_sources():
    for name, filename in [
        ("sam-vit-b", "sam_vit_b_01ec64.pth"),
        ("sam-vit-l", "sam_vit_l_0b3195.pth"),
        ("sam-vit-h", "sam_vit_h_4b8939.pth"),
    ]:
        variant = get_sam_variant(name)
        assert variant.original_filename == filename
        assert variant.original_url == "https://dl.fbaipublicfiles.com/segment_anything/" + filename
    with pytest.raises(KeyError, match="sam-vit-b"):
        get_sam_variant("sam-vit-x")


def test_medsam_carries_its_own_preprocessing():
    medsam = SAM_MODELS["medsam-vit-b"].preprocessing
    assert (medsam.resize, medsam.normalization) == ("square", "min_max")
    assert SAM_MODELS["sam-vit-b"].preprocessing == SamPreprocessing()
    assert SAM_MODELS["medsam-vit-b"].architecture == SAM_MODELS["sam-vit-b"].architecture


def test_architecture_validates_numbers():
    with pytest.raises(ValueError, match="divisible"):
        SamArchitecture(encoder_embed_dim=100, encoder_num_heads=12)
    with pytest.raises(ValueError, match="global attention"):
        SamArchitecture(encoder_global_attn_indexes=(12,))
    assert SamArchitecture(image_size=128).low_res_mask_size == 32


def test_registry_and_package_import_no_torch():
    code = (
        "import sys, napari_segany.sam, napari_segany.sam.registry; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
