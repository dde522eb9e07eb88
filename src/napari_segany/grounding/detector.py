"""Text → boxes: run Grounding DINO on one image and keep the confident boxes with their phrases."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from napari_segany.grounding.loader import LoadedGroundingDino
from napari_segany.grounding.preprocessing import image_to_pixels, normalize_prompt, tokenize_prompt
from napari_segany.image_conversion import to_uint8_rgb


@dataclass
class Detections:
    """Boxes found for a text prompt on one image, by decreasing score.

    Attributes
    ----------
    boxes
        (N, 4) float32 ``[x0, y0, x1, y1]`` in image pixels (x = column, y = row), clipped to the
        image.
    scores
        (N,) float32 in [0, 1]: the best token probability of each box.
    phrases
        N strings: the prompt tokens whose probability passed ``text_threshold`` for each box,
        decoded as the reference post-processing does (delimiters included; see
        :func:`clean_phrase` for display).
    image_size
        (H, W) of the image.
    """

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    phrases: list[str] = field(default_factory=list)
    image_size: tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        return len(self.phrases)

    def select(self, keep) -> Detections:
        """The detections at indices ``keep`` (in that order)."""
        keep = np.asarray(keep, dtype=np.int64).reshape(-1)
        return Detections(
            self.boxes[keep], self.scores[keep], [self.phrases[i] for i in keep], self.image_size
        )


def clean_phrase(phrase: str) -> str:
    """A phrase for display: without [CLS]/[SEP]/[PAD] tokens and the final "."."""
    for token in ("[CLS]", "[SEP]", "[PAD]"):
        phrase = phrase.replace(token, " ")
    return " ".join(phrase.split()).strip(" .")


class GroundingDinoDetector:
    """Find the boxes of a text prompt's phrases in images.

    Parameters
    ----------
    model
        From :func:`napari_segany.grounding.load_grounding_dino`.
    """

    def __init__(self, model: LoadedGroundingDino) -> None:
        self.model = model

    @torch.inference_mode()
    def detect(
        self,
        image: np.ndarray,
        text: str,
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        *,
        contrast_limits: tuple[float, float] | None = None,
        on_block=None,
    ) -> Detections:
        """Detect the phrases of ``text`` in ``image``.

        Parameters
        ----------
        image
            (H, W) grayscale, (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA, any numeric dtype
            (scaled to 8 bit by ``contrast_limits`` or robust percentiles).
        text
            Phrases separated by ".", e.g. ``"nucleus. mitochondrion."`` (lower-cased; a final
            "." is added when missing).
        box_threshold
            Keep boxes whose best token probability is above this.
        text_threshold
            A prompt token belongs to a box's phrase when its probability is above this.
        on_block
            ``on_block(done, total)`` after every backbone block (raise in it to cancel).

        Raises
        ------
        ValueError
            Empty text, text without words, more than 256 tokens, an image smaller than a
            backbone patch, or an image of unsupported shape.
        """
        loaded = self.model
        net = loaded.model
        prompt = normalize_prompt(text)
        input_ids = tokenize_prompt(loaded.tokenizer, prompt, net.config.max_text_len)
        rgb = to_uint8_rgb(image, contrast_limits)
        height, width = rgb.shape[:2]
        pixels = image_to_pixels(
            rgb, loaded.preprocessing, net.device, net.config.backbone.patch_size
        )
        output = net(pixels, input_ids.to(net.device), on_block=on_block)
        return detections_from_output(
            output.logits[0],
            output.boxes[0],
            input_ids[0],
            (height, width),
            box_threshold,
            text_threshold,
            loaded.tokenizer.decode,
        )


def detections_from_output(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    input_ids: torch.Tensor,
    image_size: tuple[int, int],
    box_threshold: float,
    text_threshold: float,
    decode,
) -> Detections:
    """Post-process one image's raw outputs.

    Parameters
    ----------
    logits
        (Q, max_text_len) query-token similarities.
    boxes
        (Q, 4) normalized (cx, cy, w, h).
    input_ids
        (T,) the prompt's token ids.
    image_size
        (H, W) of the image the boxes are scaled to.
    decode
        Token ids → text.
    """
    probs = logits.float().sigmoid().cpu()
    scores = probs.max(-1)[0]
    keep = torch.nonzero(scores > box_threshold)[:, 0]
    keep = keep[torch.argsort(scores[keep], descending=True, stable=True)]
    height, width = image_size
    cx, cy, w, h = boxes.float().cpu()[keep].unbind(-1)
    xyxy = torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -1)
    xyxy = xyxy * torch.tensor([width, height, width, height], dtype=torch.float32)
    xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
    xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
    token_ok = probs[keep] > text_threshold
    token_ok[:, 0] = False  # [CLS]
    token_ok[:, -1] = False
    ids = input_ids.tolist()
    phrases = []
    for row in token_ok:
        positions = [int(i) for i in torch.nonzero(row)[:, 0] if int(i) < len(ids)]
        phrases.append(decode([ids[i] for i in positions]))
    return Detections(
        xyxy.numpy().astype(np.float32),
        scores[keep].numpy().astype(np.float32),
        phrases,
        (int(height), int(width)),
    )
