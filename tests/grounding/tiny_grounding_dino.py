"""Tiny random-weight Grounding DINO checkpoints for tests (no download).

``write_tiny_folder(folder)`` saves a transformers ``GroundingDinoForObjectDetection`` with a tiny
config and randomised weights (the reference inits zero the box heads, which would hide bugs),
a BERT WordPiece vocabulary written here (the delimiters at bert-base-uncased's ids:
[CLS] 101, [SEP] 102, "." 1012, "?" 1029) and an image processor config with small sizes.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Model input: shorter side 64, longer side at most 96 (the released models: 800 / 1333).
TINY_SHORTEST_EDGE = 64
TINY_LONGEST_EDGE = 96
WORDS = (
    "a an the of and with in on red blue green small large big round dark bright cat dog "
    "nucleus nuclei cell cells membrane mito ##chondrion ##chondria vesicle bacteria "
    "object thing spot blob fibre fiber axon neuron"
).split()
PUNCTUATION = {1012: ".", 1029: "?", 1010: ",", 999: "!", 1005: "'"}


def write_vocab(path: Path, size: int = 1100) -> Path:
    """A WordPiece vocab.txt with the special and delimiter tokens at BERT's ids."""
    tokens = [f"[unused{i}]" for i in range(size)]
    tokens[0] = "[PAD]"
    tokens[100], tokens[101], tokens[102], tokens[103] = "[UNK]", "[CLS]", "[SEP]", "[MASK]"
    for index, token in PUNCTUATION.items():
        tokens[index] = token
    for offset, word in enumerate(WORDS):
        tokens[200 + offset] = word
    path.write_text("\n".join(tokens) + "\n")
    return path


def tiny_transformers_config():
    from transformers import BertConfig, GroundingDinoConfig, SwinConfig

    swin = SwinConfig(
        embed_dim=16,
        depths=[1, 2, 2, 1],
        num_heads=[1, 2, 2, 4],
        window_size=4,
        out_indices=[2, 3, 4],
    )
    bert = BertConfig(
        vocab_size=1100,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=1,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    return GroundingDinoConfig(
        backbone_config=swin,
        text_config=bert,
        d_model=64,
        encoder_layers=2,
        decoder_layers=3,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        num_queries=40,
    )


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights of a sensible scale everywhere (norm layers near identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name.lower():
                noise = 0.1 * torch.randn(param.shape, generator=generator)
                param.copy_((1.0 if name.endswith("weight") else 0.0) + noise)
            elif param.ndim >= 2:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in**0.5)
            else:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))


def build_tiny_reference(seed: int = 0):
    """The transformers model (eval, float32) with random weights."""
    from transformers import GroundingDinoForObjectDetection

    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(tiny_transformers_config()).eval()
    randomize(model, seed)
    return model


def write_tiny_folder(folder: Path, model=None, *, tokenizer_json: bool = True) -> Path:
    """Save model, tokenizer and image processor in the transformers layout into ``folder``."""
    from transformers import BertTokenizerFast, GroundingDinoImageProcessor

    folder.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else build_tiny_reference()
    model.save_pretrained(folder)
    vocab = write_vocab(folder / "vocab.txt")
    if tokenizer_json:
        tokens = vocab.read_text().splitlines()
        vocab_ids = {token: index for index, token in enumerate(tokens)}
        BertTokenizerFast(vocab=vocab_ids, do_lower_case=True).save_pretrained(folder)
    GroundingDinoImageProcessor(
        size={"shortest_edge": TINY_SHORTEST_EDGE, "longest_edge": TINY_LONGEST_EDGE}
    ).save_pretrained(folder)
    return folder


def reference_processor(folder: Path):
    """transformers' GroundingDinoProcessor (tokenizer + image processor) of a tiny folder."""
    from transformers import BertTokenizerFast, GroundingDinoImageProcessor, GroundingDinoProcessor

    return GroundingDinoProcessor(
        GroundingDinoImageProcessor.from_pretrained(folder),
        BertTokenizerFast.from_pretrained(folder),
    )
