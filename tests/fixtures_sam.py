"""Fixtures for SAM tests: tiny random-weight models written in every checkpoint layout.

Session-scoped, built once per test run:

* ``tiny_sam_hf_folder``: a transformers ``SamModel`` with a tiny config and randomised weights
  (the reference inits are near zero, which would hide bugs), saved with ``save_pretrained``.
* ``tiny_sam_pth``: the same weights in the original segment_anything key layout, as a ``.pth``
  written from an official ``segment_anything`` model (strictly loaded, so every key is there).
* ``tiny_sam_model``: this package's model loaded from the folder, float32 on the CPU.
* ``official_tiny_sam``: the official model holding those weights; ``build_official_tiny_sam()``
  builds an empty one with the tiny dimensions.

The official package imports torchvision, which is not a dependency: ``import_segment_anything()``
imports it with a minimal test-only stand-in (PIL resize, NMS) that is removed from
``sys.modules`` right after the import.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest
import torch

# Tiny SAM: 128 px input, 16 px patches (8 x 8 grid), 3 x 3 windows (grid padded to 9 x 9),
# encoder width 48 with 4 heads, one global block; decoder width 32 with 8 heads (as released:
# the decoder head count is not visible in tensor shapes, so .pth files assume 8).
TINY_IMAGE_SIZE = 128
TINY_PATCH = 16
TINY_ENCODER = {"hidden": 48, "depth": 3, "heads": 4, "mlp": 96, "window": 3, "global": (1,)}
TINY_PROMPT_DIM = 32
TINY_MASK_IN_CHANS = 8
TINY_DECODER = {"depth": 2, "heads": 8, "mlp": 64, "iou_hidden": 32}
TINY_LOW_RES = 4 * TINY_IMAGE_SIZE // TINY_PATCH  # 32


# -- torchvision stand-in for the official segment_anything package (test-only) -------------------


def _torchvision_stub_modules() -> dict[str, types.ModuleType]:
    from PIL import Image

    def to_pil_image(pic):
        array = pic.numpy().transpose(1, 2, 0) if isinstance(pic, torch.Tensor) else np.asarray(pic)
        return Image.fromarray(array)

    def resize(img, size, interpolation=None, max_size=None, antialias=True):
        # torchvision.transforms.functional.resize on a PIL image with (h, w): PIL bilinear.
        height, width = size
        return img.resize((width, height), Image.BILINEAR)

    def box_area(boxes):
        return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])

    def nms(boxes, scores, iou_threshold):
        order = torch.argsort(scores, descending=True)
        keep = []
        suppressed = torch.zeros(len(boxes), dtype=torch.bool)
        areas = box_area(boxes)
        for idx in order.tolist():
            if suppressed[idx]:
                continue
            keep.append(idx)
            lt = torch.maximum(boxes[idx, :2], boxes[:, :2])
            rb = torch.minimum(boxes[idx, 2:], boxes[:, 2:])
            inter = (rb - lt).clamp(min=0).prod(dim=1)
            iou = inter / (areas[idx] + areas - inter)
            suppressed |= iou > iou_threshold
        return torch.as_tensor(keep, dtype=torch.int64)

    def batched_nms(boxes, scores, idxs, iou_threshold):
        if boxes.numel() == 0:
            return torch.empty((0,), dtype=torch.int64)
        offsets = idxs.to(boxes) * (boxes.max() + 1)
        return nms(boxes + offsets[:, None], scores, iou_threshold)

    tv = types.ModuleType("torchvision")
    tv_transforms = types.ModuleType("torchvision.transforms")
    tv_functional = types.ModuleType("torchvision.transforms.functional")
    tv_functional.resize = resize
    tv_functional.to_pil_image = to_pil_image
    tv_ops = types.ModuleType("torchvision.ops")
    tv_boxes = types.ModuleType("torchvision.ops.boxes")
    tv_boxes.batched_nms = batched_nms
    tv_boxes.box_area = box_area
    tv_boxes.nms = nms
    tv_ops.boxes = tv_boxes
    tv_ops.batched_nms = batched_nms
    tv_ops.box_area = box_area
    tv_ops.nms = nms
    tv_transforms.functional = tv_functional
    tv.transforms = tv_transforms
    tv.ops = tv_ops
    return {
        "torchvision": tv,
        "torchvision.transforms": tv_transforms,
        "torchvision.transforms.functional": tv_functional,
        "torchvision.ops": tv_ops,
        "torchvision.ops.boxes": tv_boxes,
    }


def import_segment_anything() -> types.ModuleType:
    """Import the official ``segment_anything`` package (with its automatic mask generator).

    Without torchvision, a stand-in is put into ``sys.modules`` only while the package imports
    (its modules keep the functions they imported) and removed afterwards, so other libraries
    (transformers checks ``find_spec("torchvision")``) do not see a fake torchvision.
    """
    if "segment_anything" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        import segment_anything.automatic_mask_generator  # noqa: F401

        return sys.modules["segment_anything"]
    stubs = _torchvision_stub_modules()
    sys.modules.update(stubs)
    try:
        import segment_anything
        import segment_anything.automatic_mask_generator  # noqa: F401
    finally:
        for name in stubs:
            sys.modules.pop(name, None)
    return segment_anything


# -- builders -------------------------------------------------------------------------------------


def tiny_sam_hf_config():
    """A transformers ``SamConfig`` with the tiny dimensions above."""
    from transformers import SamConfig

    return SamConfig(
        vision_config={
            "hidden_size": TINY_ENCODER["hidden"],
            "num_hidden_layers": TINY_ENCODER["depth"],
            "num_attention_heads": TINY_ENCODER["heads"],
            "mlp_dim": TINY_ENCODER["mlp"],
            "image_size": TINY_IMAGE_SIZE,
            "patch_size": TINY_PATCH,
            "output_channels": TINY_PROMPT_DIM,
            "window_size": TINY_ENCODER["window"],
            "global_attn_indexes": list(TINY_ENCODER["global"]),
            "num_pos_feats": TINY_PROMPT_DIM // 2,
        },
        prompt_encoder_config={
            "hidden_size": TINY_PROMPT_DIM,
            "image_size": TINY_IMAGE_SIZE,
            "patch_size": TINY_PATCH,
            "mask_input_channels": TINY_MASK_IN_CHANS,
        },
        mask_decoder_config={
            "hidden_size": TINY_PROMPT_DIM,
            "mlp_dim": TINY_DECODER["mlp"],
            "num_hidden_layers": TINY_DECODER["depth"],
            "num_attention_heads": TINY_DECODER["heads"],
            "iou_head_hidden_dim": TINY_DECODER["iou_hidden"],
        },
    )


def build_official_tiny_sam():
    """The official ``segment_anything`` Sam with the tiny dimensions (weights uninitialised)."""
    from functools import partial

    import_segment_anything()
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    grid = TINY_IMAGE_SIZE // TINY_PATCH
    model = Sam(
        image_encoder=ImageEncoderViT(
            img_size=TINY_IMAGE_SIZE,
            patch_size=TINY_PATCH,
            embed_dim=TINY_ENCODER["hidden"],
            depth=TINY_ENCODER["depth"],
            num_heads=TINY_ENCODER["heads"],
            mlp_ratio=TINY_ENCODER["mlp"] / TINY_ENCODER["hidden"],
            out_chans=TINY_PROMPT_DIM,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=TINY_ENCODER["window"],
            global_attn_indexes=TINY_ENCODER["global"],
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=TINY_PROMPT_DIM,
            image_embedding_size=(grid, grid),
            input_image_size=(TINY_IMAGE_SIZE, TINY_IMAGE_SIZE),
            mask_in_chans=TINY_MASK_IN_CHANS,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=TINY_DECODER["depth"],
                embedding_dim=TINY_PROMPT_DIM,
                mlp_dim=TINY_DECODER["mlp"],
                num_heads=TINY_DECODER["heads"],
            ),
            transformer_dim=TINY_PROMPT_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=TINY_DECODER["iou_hidden"],
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return model.eval()


_EMBEDDINGS = ("point_embed", "not_a_point", "no_mask", "iou_token", "mask_tokens")


def randomize_weights(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter and buffer random values of a sensible scale (reference inits are ~0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if "norm" in name and name.endswith("weight"):
                value = 1.0 + 0.2 * noise
            elif name.endswith("bias"):
                value = 0.2 * noise
            elif "rel_pos" in name or "pos_embed" in name:
                value = 0.5 * noise
            elif (
                tensor.ndim >= 2
                and name.endswith("weight")
                and not any(k in name for k in _EMBEDDINGS)
            ):
                fan_in = tensor[0].numel() if "upscal" not in name else tensor.shape[0]
                value = noise / fan_in**0.5
            else:  # embeddings, tokens, positional gaussian matrix
                value = noise
            tensor.copy_(value.to(tensor.dtype))


def _official_from_hf_modules(depth: int, decoder_depth: int) -> list[tuple[str, str]]:
    """(official module path, transformers module path) pairs whose parameters correspond 1:1."""
    pairs = [
        ("image_encoder.patch_embed.proj", "vision_encoder.patch_embed.projection"),
        ("image_encoder.neck.0", "vision_encoder.neck.conv1"),
        ("image_encoder.neck.1", "vision_encoder.neck.layer_norm1"),
        ("image_encoder.neck.2", "vision_encoder.neck.conv2"),
        ("image_encoder.neck.3", "vision_encoder.neck.layer_norm2"),
        ("prompt_encoder.mask_downscaling.0", "prompt_encoder.mask_embed.conv1"),
        ("prompt_encoder.mask_downscaling.1", "prompt_encoder.mask_embed.layer_norm1"),
        ("prompt_encoder.mask_downscaling.3", "prompt_encoder.mask_embed.conv2"),
        ("prompt_encoder.mask_downscaling.4", "prompt_encoder.mask_embed.layer_norm2"),
        ("prompt_encoder.mask_downscaling.6", "prompt_encoder.mask_embed.conv3"),
        ("prompt_encoder.no_mask_embed", "prompt_encoder.no_mask_embed"),
        ("prompt_encoder.not_a_point_embed", "prompt_encoder.not_a_point_embed"),
        ("mask_decoder.iou_token", "mask_decoder.iou_token"),
        ("mask_decoder.mask_tokens", "mask_decoder.mask_tokens"),
        ("mask_decoder.output_upscaling.0", "mask_decoder.upscale_conv1"),
        ("mask_decoder.output_upscaling.1", "mask_decoder.upscale_layer_norm"),
        ("mask_decoder.output_upscaling.3", "mask_decoder.upscale_conv2"),
        (
            "mask_decoder.transformer.final_attn_token_to_image",
            "mask_decoder.transformer.final_attn_token_to_image",
        ),
        (
            "mask_decoder.transformer.norm_final_attn",
            "mask_decoder.transformer.layer_norm_final_attn",
        ),
    ]
    pairs += [
        (f"prompt_encoder.point_embeddings.{i}", f"prompt_encoder.point_embed.{i}")
        for i in range(4)
    ]
    for i in range(depth):
        src, dst = f"image_encoder.blocks.{i}", f"vision_encoder.layers.{i}"
        pairs += [(f"{src}.norm1", f"{dst}.layer_norm1"), (f"{src}.norm2", f"{dst}.layer_norm2")]
        pairs += [(f"{src}.attn", f"{dst}.attn"), (f"{src}.mlp", f"{dst}.mlp")]
    for i in range(decoder_depth):
        src = dst = f"mask_decoder.transformer.layers.{i}"
        pairs += [(f"{src}.norm{j}", f"{dst}.layer_norm{j}") for j in range(1, 5)]
        for part in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token", "mlp"):
            pairs.append((f"{src}.{part}", f"{dst}.{part}"))
    for head in [f"output_hypernetworks_mlps.{i}" for i in range(4)] + ["iou_prediction_head"]:
        pairs += [
            (f"mask_decoder.{head}.layers.0", f"mask_decoder.{head}.proj_in"),
            (f"mask_decoder.{head}.layers.1", f"mask_decoder.{head}.layers.0"),
            (f"mask_decoder.{head}.layers.2", f"mask_decoder.{head}.proj_out"),
        ]
    return pairs


def copy_hf_weights_into_official(hf_model: torch.nn.Module, official: torch.nn.Module) -> None:
    """Copy a transformers SamModel's weights into an official Sam with the same dimensions."""
    with torch.no_grad():
        for src, dst in _official_from_hf_modules(TINY_ENCODER["depth"], TINY_DECODER["depth"]):
            target = official.get_submodule(src)
            source = hf_model.get_submodule(dst)
            target_params = dict(target.named_parameters())
            source_params = dict(source.named_parameters())
            assert set(target_params) == set(source_params), (
                src,
                set(target_params),
                set(source_params),
            )
            for name, param in target_params.items():
                param.copy_(source_params[name])
        official.image_encoder.pos_embed.copy_(hf_model.vision_encoder.pos_embed)
        official.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.copy_(
            hf_model.shared_image_embedding.positional_embedding
        )


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_sam_hf_model():
    """The transformers reference model (float32, eval) with randomised weights."""
    from transformers import SamModel

    torch.manual_seed(0)
    model = SamModel(tiny_sam_hf_config()).eval()
    randomize_weights(model, seed=1)
    # Tied: both names must hold the same matrix.
    model.prompt_encoder.shared_embedding.positional_embedding = (
        model.shared_image_embedding.positional_embedding
    )
    return model


@pytest.fixture(scope="session")
def tiny_sam_hf_folder(tmp_path_factory, tiny_sam_hf_model):
    """Folder with ``config.json`` + ``model.safetensors`` of the tiny transformers model."""
    folder = tmp_path_factory.mktemp("tiny_sam_hf")
    tiny_sam_hf_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def official_tiny_sam(tiny_sam_hf_model):
    """The official segment_anything Sam holding the tiny model's weights (float32, eval)."""
    official = build_official_tiny_sam()
    copy_hf_weights_into_official(tiny_sam_hf_model, official)
    return official


@pytest.fixture(scope="session")
def tiny_sam_pth(tmp_path_factory, official_tiny_sam):
    """The tiny weights in the original segment_anything key layout, as a ``.pth`` state dict."""
    path = tmp_path_factory.mktemp("tiny_sam_pth") / "sam_vit_tiny.pth"
    state = official_tiny_sam.state_dict()
    # The strict load proves the file has exactly the official keys.
    build_official_tiny_sam().load_state_dict(state, strict=True)
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def tiny_sam_model(tiny_sam_hf_folder):
    """This package's tiny SAM loaded from the transformers folder: float32, CPU, eval."""
    from napari_segany.sam import load_sam

    return load_sam(tiny_sam_hf_folder, device="cpu", precision="fp32")
