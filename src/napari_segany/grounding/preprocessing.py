"""Image and text preparation for Grounding DINO (numpy in, torch tensors out)."""

from __future__ import annotations

import numpy as np
import torch

from napari_segany.grounding.registry import GroundingDinoPreprocessing
from napari_segany.grounding.tokenizer import GroundingDinoTokenizer, is_only_punctuation


def resized_size(height: int, width: int, shortest_edge: int, longest_edge: int) -> tuple[int, int]:
    """Model input size (h, w): shorter side ``shortest_edge``, longer side at most ``longest_edge``.

    Same rounding as the reference processor: when the longer side would exceed
    ``longest_edge`` the shorter side becomes ``round(longest_edge · short / long)``, and the
    other side is truncated.
    """
    size = shortest_edge
    raw = None
    short, long = float(min(height, width)), float(max(height, width))
    if long / short * size > longest_edge:
        raw = longest_edge * short / long
        size = int(round(raw))
    if (height <= width and height == size) or (width <= height and width == size):
        return height, width
    scale_from = raw if raw is not None else size
    if width < height:
        return int(scale_from * height / width), size
    return size, int(scale_from * width / height)


def image_to_pixels(
    rgb: np.ndarray,
    preprocessing: GroundingDinoPreprocessing,
    device: torch.device,
    patch_size: int = 4,
) -> torch.Tensor:
    """(H, W, 3) uint8 RGB → (1, 3, h, w) float32 normalized model input.

    Resized with Pillow's bilinear filter (antialiased when shrinking; as the reference
    processor), then scaled to [0, 1] and normalized.

    Raises
    ------
    ValueError
        The image is smaller than one backbone patch in either direction.
    """
    height, width = rgb.shape[:2]
    if height < patch_size or width < patch_size:
        raise ValueError(
            f"image of {height}×{width} pixels is smaller than one {patch_size}×{patch_size} "
            f"patch of the detector; nothing to detect"
        )
    out_h, out_w = resized_size(
        height, width, preprocessing.shortest_edge, preprocessing.longest_edge
    )
    if (out_h, out_w) != (height, width):
        from PIL import Image

        # Pillow's bilinear filter (antialiased when shrinking), as the reference processor.
        rgb = np.array(Image.fromarray(rgb).resize((out_w, out_h), Image.BILINEAR))
    pixels = torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1)[None].float()
    mean = torch.tensor(preprocessing.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std, device=device).view(1, 3, 1, 1)
    return (pixels / 255.0 - mean) / std


def normalize_prompt(text: str) -> str:
    """Lower-case, strip and end the prompt with "." (the phrase delimiter).

    Raises
    ------
    ValueError
        Empty text, or text without any letter or digit.
    """
    if not isinstance(text, str):
        raise ValueError(f"the text prompt must be a string, got {type(text).__name__}")
    text = " ".join(text.strip().lower().split())
    if not text:
        raise ValueError("the text prompt is empty; type what to find, e.g. 'nucleus. cell.'")
    if is_only_punctuation(text):
        raise ValueError(
            f"the text prompt {text!r} has no words; type what to find, e.g. 'nucleus. cell.'"
        )
    if not text.endswith("."):
        text += "."
    return text


def tokenize_prompt(
    tokenizer: GroundingDinoTokenizer, text: str, max_text_len: int
) -> torch.Tensor:
    """Token ids (1, T) of a normalized prompt.

    Raises
    ------
    ValueError
        More than ``max_text_len`` tokens (including [CLS] and [SEP]).
    """
    ids = tokenizer.encode(text)
    if len(ids) > max_text_len:
        raise ValueError(
            f"the text prompt has {len(ids)} tokens; the detector reads at most {max_text_len} "
            f"(about {max_text_len // 2} words): shorten it or split it into several runs"
        )
    return torch.tensor([ids], dtype=torch.long)
