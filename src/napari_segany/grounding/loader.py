"""Loading Grounding DINO from a registry name, a hub id, a local folder or an original ``.pth``.

One loader for every layout; keys are renamed in
:func:`napari_segany.grounding.checkpoint_layout.rename_grounding_dino_keys`, files are read with
safetensors or ``torch.load(weights_only=True)`` and the keys must match exactly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from napari_segany import checkpoints
from napari_segany.grounding.checkpoint_layout import rename_grounding_dino_keys
from napari_segany.grounding.registry import (
    GROUNDING_DINO_MODELS,
    GroundingDinoPreprocessing,
)
from napari_segany.grounding.tokenizer import GroundingDinoTokenizer
from napari_segany.models.grounding_dino import (
    BertConfig,
    GroundingDino,
    GroundingDinoConfig,
    SwinConfig,
)
from napari_segany.models.precision import resolve_device, resolve_dtype

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


@dataclass
class LoadedGroundingDino:
    """A Grounding DINO model with what it needs to read images and text.

    Attributes
    ----------
    model
        The torch module, in eval mode, on its device and dtype.
    tokenizer
        The text tokenizer (``tokenizers`` library).
    preprocessing
        Resize and normalization of the images.
    name
        Where it came from (registry name, repo id or path).
    """

    model: GroundingDino
    tokenizer: GroundingDinoTokenizer
    preprocessing: GroundingDinoPreprocessing
    name: str

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype


def load_grounding_dino(
    source: str | os.PathLike,
    device: str | torch.device = "cpu",
    precision: str | torch.dtype = "auto",
    *,
    tokenizer: str | os.PathLike | None = None,
) -> LoadedGroundingDino:
    """Load Grounding DINO, ready for :class:`napari_segany.grounding.GroundingDinoDetector`.

    Parameters
    ----------
    source
        One of: a registry name (``"grounding-dino-tiny"``, ``"grounding-dino-base"``; fetched
        once into the Hugging Face cache); a hub repo id in the transformers layout
        (``"IDEA-Research/grounding-dino-tiny"``); a local folder in the transformers layout
        (``config.json``, ``model.safetensors`` or ``pytorch_model.bin``, ``tokenizer.json`` or
        ``vocab.txt``; the architecture comes from ``config.json``); or an original release file
        (``groundingdino_swint_ogc.pth`` → tiny, ``groundingdino_swinb_cogcoor.pth`` → base; the
        architecture is recognised from the tensors).
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``"auto"``.
    precision
        ``"auto"`` (bfloat16 on CUDA and on CPUs with native bfloat16, float16 on MPS, float32
        elsewhere), ``"fp32"``, ``"bf16"`` or ``"fp16"``.
    tokenizer
        Folder with ``tokenizer.json`` / ``vocab.txt``; needed for an original ``.pth`` whose folder
        has none (by default the registry's hub tokenizer is fetched).

    Raises
    ------
    FileNotFoundError
        A path-like source that does not exist and is no registry name or repo id.
    napari_segany.checkpoints.CheckpointError
        Unreadable file, unknown layout, missing / unexpected / mis-shaped keys.
    napari_segany.checkpoints.WeightsUnavailableError
        Weights neither cached nor downloadable; the message says how to get them.
    """
    dev = resolve_device(device)
    dtype = resolve_dtype(precision, dev)
    text = os.fspath(source)
    path = Path(text).expanduser()
    if text in GROUNDING_DINO_MODELS:
        variant = GROUNDING_DINO_MODELS[text]
        folder = _download_with_tokenizer(variant.hub_repo)
        return _load_folder(folder, dev, dtype, name=text, tokenizer=tokenizer)
    if path.is_dir():
        return _load_folder(path, dev, dtype, name=str(path), tokenizer=tokenizer)
    if path.is_file():
        return _load_original_file(path, dev, dtype, tokenizer=tokenizer)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        folder = _download_with_tokenizer(text)
        return _load_folder(folder, dev, dtype, name=text, tokenizer=tokenizer)
    raise FileNotFoundError(
        f"{text!r} is not a registry name ({', '.join(GROUNDING_DINO_MODELS)}), an existing file "
        f"or folder, or a Hugging Face Hub repo id (owner/name)"
    )


def _download_with_tokenizer(repo_id: str) -> Path:
    """Weights, config and tokenizer of a hub repo in the transformers layout (cached once)."""
    folder = checkpoints.download_from_hub(repo_id, ("config.json",))
    _download_tokenizer(repo_id)
    return folder


def _download_tokenizer(repo_id: str) -> Path:
    """Only the tokenizer files of a hub repo: ``tokenizer.json``, else ``vocab.txt``.

    ``tokenizer_config.json`` and ``preprocessor_config.json`` come along when the repo has
    them. Returns the snapshot folder.
    """
    folder = None
    for name in (
        "tokenizer.json",
        "vocab.txt",
        "tokenizer_config.json",
        "preprocessor_config.json",
    ):
        if name == "vocab.txt" and folder is not None:
            continue
        try:
            path = checkpoints.download_from_hub(repo_id, single_file=name)
        except checkpoints.WeightsUnavailableError:
            continue
        if name in ("tokenizer.json", "vocab.txt"):
            folder = path.parent
    if folder is None:
        raise checkpoints.WeightsUnavailableError(
            f"could not get tokenizer.json or vocab.txt of hub repo {repo_id!r} (not in the local "
            f"Hugging Face cache and not downloadable); pass a folder with one as tokenizer="
        )
    return folder


def build_grounding_dino(
    config: GroundingDinoConfig,
    state: dict[str, torch.Tensor],
    *,
    device: torch.device,
    dtype: torch.dtype,
    delimiter_token_ids: tuple[int, ...],
    source: str = "",
) -> GroundingDino:
    """Build the module and fill it with an already renamed state dict (strict keys)."""
    return checkpoints.build_with_weights(
        lambda: GroundingDino(config, delimiter_token_ids=delimiter_token_ids),
        state,
        device=device,
        dtype=dtype,
        source=source,
    )


def _load_folder(folder: Path, device, dtype, *, name: str, tokenizer) -> LoadedGroundingDino:
    try:
        config = GroundingDinoConfig.from_hub_dict(checkpoints.read_config(folder))
    except ValueError as exc:
        if isinstance(exc, checkpoints.CheckpointError):
            raise
        raise checkpoints.CheckpointError(f"{folder}/config.json: {exc}") from exc
    text_tokenizer = GroundingDinoTokenizer.from_folder(tokenizer or folder)
    state = rename_grounding_dino_keys(checkpoints.read_folder_state_dict(folder), config)
    model = build_grounding_dino(
        config,
        state,
        device=device,
        dtype=dtype,
        delimiter_token_ids=text_tokenizer.delimiter_token_ids,
        source=str(folder),
    )
    return LoadedGroundingDino(model, text_tokenizer, _preprocessing(folder), name)


def _load_original_file(path: Path, device, dtype, *, tokenizer) -> LoadedGroundingDino:
    raw = checkpoints.read_state_dict(path)
    config = config_from_original_state(raw, str(path))
    state = rename_grounding_dino_keys(raw, config)
    if tokenizer is None:
        here = path.parent
        if any((here / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
            tokenizer = here
        else:
            variant = GROUNDING_DINO_MODELS["grounding-dino-tiny"]
            tokenizer = _download_tokenizer(variant.hub_repo)
    text_tokenizer = GroundingDinoTokenizer.from_folder(tokenizer)
    model = build_grounding_dino(
        config,
        state,
        device=device,
        dtype=dtype,
        delimiter_token_ids=text_tokenizer.delimiter_token_ids,
        source=str(path),
    )
    return LoadedGroundingDino(model, text_tokenizer, GroundingDinoPreprocessing(), str(path))


def config_from_original_state(state: dict[str, torch.Tensor], source: str) -> GroundingDinoConfig:
    """Recognise the architecture of an original release from its tensors.

    Every width and depth is read from tensor shapes; head counts where shapes cannot tell
    follow the releases: BERT heads of width 64, 4 sampling points per level and head, as many
    decoder as encoder heads.

    Raises
    ------
    napari_segany.checkpoints.CheckpointError
        The tensors are not an original Grounding DINO checkpoint.
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}
    required = (
        "backbone.0.patch_embed.proj.weight",
        "transformer.level_embed",
        "transformer.tgt_embed.weight",
        "bert.embeddings.word_embeddings.weight",
        "transformer.encoder.layers.0.self_attn.sampling_offsets.weight",
    )
    absent = [k for k in required if k not in state]
    if absent:
        raise checkpoints.CheckpointError(
            f"{source} is not a Grounding DINO checkpoint in the original or transformers layout "
            f"(no {', '.join(absent)})"
        )

    def count(prefix: str) -> int:
        return 1 + max(int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix))

    stages = count("backbone.0.layers.")
    depths = tuple(count(f"backbone.0.layers.{i}.blocks.") for i in range(stages))
    tables = [
        state[f"backbone.0.layers.{i}.blocks.0.attn.relative_position_bias_table"]
        for i in range(stages)
    ]
    window = (int(round(tables[0].shape[0] ** 0.5)) + 1) // 2
    levels, d_model = state["transformer.level_embed"].shape
    points = 4
    heads = state["transformer.encoder.layers.0.self_attn.sampling_offsets.weight"].shape[0] // (
        levels * points * 2
    )
    word = state["bert.embeddings.word_embeddings.weight"]
    shared = all(
        torch.equal(value, state[key.replace("bbox_embed.1.", "bbox_embed.0.", 1)])
        for key, value in state.items()
        if key.startswith("bbox_embed.1.")
    )
    return GroundingDinoConfig(
        backbone=SwinConfig(
            embed_dim=state["backbone.0.patch_embed.proj.weight"].shape[0],
            depths=depths,
            num_heads=tuple(t.shape[1] for t in tables),
            window_size=window,
        ),
        text=BertConfig(
            vocab_size=word.shape[0],
            hidden_size=word.shape[1],
            num_hidden_layers=count("bert.encoder.layer."),
            num_attention_heads=max(1, word.shape[1] // 64),
            intermediate_size=state["bert.encoder.layer.0.intermediate.dense.weight"].shape[0],
            max_position_embeddings=state["bert.embeddings.position_embeddings.weight"].shape[0],
        ),
        d_model=d_model,
        num_queries=state["transformer.tgt_embed.weight"].shape[0],
        encoder_layers=count("transformer.encoder.layers."),
        decoder_layers=count("transformer.decoder.layers."),
        encoder_ffn_dim=state["transformer.encoder.layers.0.linear1.weight"].shape[0],
        decoder_ffn_dim=state["transformer.decoder.layers.0.linear1.weight"].shape[0],
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        num_feature_levels=levels,
        encoder_n_points=points,
        decoder_n_points=points,
        decoder_bbox_embed_share=shared,
    )


def _preprocessing(folder: Path) -> GroundingDinoPreprocessing:
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return GroundingDinoPreprocessing()
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError:
        return GroundingDinoPreprocessing()
    size = config.get("size") or {}
    default = GroundingDinoPreprocessing()
    return GroundingDinoPreprocessing(
        shortest_edge=int(size.get("shortest_edge", default.shortest_edge)),
        longest_edge=int(size.get("longest_edge", default.longest_edge)),
        mean=tuple(config.get("image_mean", default.mean)),
        std=tuple(config.get("image_std", default.std)),
    )
