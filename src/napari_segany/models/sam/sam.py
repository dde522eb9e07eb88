"""The composite Segment Anything model: image encoder + prompt encoder + mask decoder."""

from __future__ import annotations

import getpass
import os
import shutil
import stat
import tempfile
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder

CPU_DECODER_CHUNK_BYTES = 16 << 20
"""Upscaling-head activations per mask decoder call on the CPU (2 M values a prompt: 16 sub-pixels
of 4096 tokens, 32 channels): 4 prompts in bf16, 2 in float32. A larger batch of prompts leaves
the caches, and its buffers above glibc's 32 MB mmap threshold are mapped and faulted in afresh
by every operator. 64 one-point prompts on 2 cores, SAM's decoder: bf16 13.0 ms a prompt in one
call, 6.25 ms in calls of 4 (8.7 ms one by one, 7.6 ms in calls of 8); float32 31.5 ms in one
call, 14.9 ms in calls of 2 (18.1 ms in calls of 4)."""


class Sam(nn.Module):
    """Segment Anything, assembled from its three parts.

    The expensive image encoder runs once per image (:meth:`embed_image`); the prompt encoder and
    mask decoder run once per prompt (:meth:`decode`). Image preprocessing (resizing, padding,
    normalisation) and mask post-processing live in :class:`napari_segany.sam.SamPredictor`.

    Parameters
    ----------
    image_encoder, prompt_encoder, mask_decoder
        The three parts.
    name
        Human-readable identity, e.g. the registry name or the checkpoint path.
    preprocessing
        The :class:`napari_segany.sam.registry.SamPreprocessing` the weights were trained with;
        set by the loader and read by the predictor (None means SAM's own).
    """

    mask_threshold: float = 0.0

    def __init__(
        self,
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        *,
        name: str = "sam",
        preprocessing: Any = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.name = name
        self.preprocessing = preprocessing

    @property
    def image_size(self) -> int:
        """Side of the square model input in pixels (1024 for the released models)."""
        return self.image_encoder.image_size

    @property
    def low_res_mask_size(self) -> tuple[int, int]:
        """(height, width) of the low-resolution mask logits and of ``mask_input``."""
        return self.prompt_encoder.mask_input_size

    @property
    def device(self) -> torch.device:
        return self.mask_decoder.iou_token.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.mask_decoder.iou_token.weight.dtype

    def embed_image(
        self, pixels: torch.Tensor, *, on_block: Callable[[int, int], None] | None = None
    ) -> torch.Tensor:
        """(B, 3, S, S) normalised, padded image -> (B, C, S / patch, S / patch) image embedding.

        ``on_block(done, total)`` is called after each encoder block; raising from it cancels
        (see :meth:`ImageEncoderViT.forward`).
        """
        return self.image_encoder(pixels.to(self.dtype), on_block=on_block)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> low-resolution mask logits and IoU predictions, for B prompts on one image.

        On the CPU a large batch goes through the mask decoder a few prompts at a time
        (:data:`CPU_DECODER_CHUNK_BYTES`): the same results, twice as fast per prompt as all at
        once.

        Parameters
        ----------
        image_embeddings
            (1 or B, C, h, w) from :meth:`embed_image`.
        point_coords, point_labels
            (B, N, 2) (x, y) model-input-frame pixels and (B, N) labels (1 foreground,
            0 background, -1 ignored), or None.
        boxes
            (B, 4) x0, y0, x1, y1 in model-input-frame pixels, or None.
        mask_input
            (B, 1, 4h, 4w) mask logits from an earlier prediction, or None.
        multimask_output
            Three ambiguity-aware masks per prompt instead of one.

        Returns
        -------
        low_res_logits
            (B, M, 4h, 4w) in the model dtype; M = 3 with ``multimask_output`` else 1.
        iou_predictions
            (B, M).
        """
        points = None if point_coords is None else (point_coords, point_labels)
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        projections = None if mask_input is not None else self._image_projections(image_embeddings)
        inputs = {
            "image_embeddings": image_embeddings.to(self.dtype),
            "image_pe": self.prompt_encoder.get_dense_pe(),
            "sparse_prompt_embeddings": sparse,
            "dense_prompt_embeddings": dense,
            "multimask_output": multimask_output,
            "projections": projections,
        }
        batch = sparse.shape[0]
        chunk = self._prompts_per_decoder_call(batch)
        if chunk >= batch:
            return self._run_decoder(inputs)
        parts = [
            self._run_decoder(_prompt_slice(inputs, start, start + chunk, batch))
            for start in range(0, batch, chunk)
        ]
        return torch.cat([low for low, _ in parts]), torch.cat([iou for _, iou in parts])

    def _prompts_per_decoder_call(self, batch: int) -> int:
        """How many prompts one mask decoder call takes: all of them on a GPU; on the CPU as many
        as :data:`CPU_DECODER_CHUNK_BYTES` of upscaling-head activations hold."""
        if batch == 1 or self.device.type != "cpu":  # a click: nothing to work out
            return batch
        height, width = self.low_res_mask_size
        per_prompt = height * width * (self.mask_decoder.transformer_dim // 8) * self.dtype.itemsize
        return max(1, CPU_DECODER_CHUNK_BYTES // per_prompt)

    def _run_decoder(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The mask decoder on ``inputs``: compiled when :meth:`compile_decoder` asked for it."""
        compiled = self._compiled_decoder()
        if compiled is None:
            return self.mask_decoder(**inputs)
        try:
            low_res, iou = compiled(**inputs)
        except Exception as error:
            result = self.mask_decoder(**inputs)  # bad inputs raise here, as without compiling
            self.uncompile_decoder()
            warnings.warn(
                f"compiling the SAM mask decoder failed, so it runs uncompiled from now on "
                f"(same results, no speed-up): {type(error).__name__}: {str(error)[:500]}",
                RuntimeWarning,
                stacklevel=2,
            )
            return result
        if low_res.device.type == "cuda":  # CUDA graphs reuse their output buffers
            return low_res.clone(), iou.clone()
        return low_res, iou

    def _image_projections(self, image_embeddings: torch.Tensor):
        """The decoder's prompt-independent image side for ``image_embeddings`` (batch 1, no mask
        input), computed on the first prompt and reused while the embedding tensor and the
        weights it depends on are unchanged; ``None`` when gradients are on (training) or for a
        batch of images."""
        if image_embeddings.shape[0] != 1 or torch.is_grad_enabled():
            return None
        key = (_tensor_key(image_embeddings), *map(_tensor_key, self._projection_inputs()))
        cached = self.__dict__.get("_cached_projections")
        if cached is not None and cached[0] == key and cached[1]() is image_embeddings:
            return cached[2]
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        projections = self.mask_decoder.project_image(
            image_embeddings.to(self.dtype), self.prompt_encoder.get_dense_pe(), dense
        )
        self.__dict__["_cached_projections"] = (key, weakref.ref(image_embeddings), projections)
        return projections

    def _projection_inputs(self) -> list[torch.Tensor]:
        """The parameters and buffers :meth:`MaskDecoder.project_image` reads."""
        first = self.mask_decoder.transformer.layers[0]
        to_image, to_tokens = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        return [
            self.prompt_encoder.no_mask_embed.weight,
            self.prompt_encoder.get_dense_pe(),
            to_image.k_proj.weight,
            to_image.v_proj.weight,
            to_image.v_proj.bias,
            to_tokens.q_proj.weight,
            to_tokens.q_proj.bias,
        ]

    def compile_decoder(self, *, mode: str | None = "auto") -> None:
        """Opt in to ``torch.compile`` of the mask decoder, for inference.

        ``mode="auto"`` picks what pays on the model's device: CUDA graphs
        (``"reduce-overhead"``) on a GPU, where the small decoder's time is mostly kernel launches;
        on the CPU inductor's default mode with *freezing* (weights packed for oneDNN once, the
        norms, GELUs and softmaxes fused into few loops). ViT-B, 2 cores, bf16: click -> shown
        mask 9.1 -> 8.0 ms (``benchmarks/bench_sam.py --compile-decoder``); segment everything
        on a 1024² image 1.02-1.05x faster (``bench_automatic.py --compile-decoder``; 1.3-1.5x
        before the eager decoder took a large batch of prompts a few at a time). Any other
        ``mode`` is passed to ``torch.compile`` as it is.

        Each prompt shape (number of points, box or not, multimask or not, batch size) compiles
        once, 10-20 s on a laptop CPU, so this pays off over many prompts of few shapes (segment
        everything, batch runs: from the second or third image on), not in a short interactive
        session: it is off unless asked for. In bf16 the fused loops round differently from
        eager, so a borderline mask can change.

        The compiled decoder runs only with gradients off (training uses the eager one) and is
        rebuilt when the decoder's weights change (fine-tuning, ``load_state_dict``). The
        parameters are shared and the state dict does not change; :meth:`uncompile_decoder` goes
        back to eager.

        Compiling happens on the first call of each prompt shape; if it fails there (no C++
        compiler, an unsupported operator), that call and the later ones run the eager decoder
        and a ``RuntimeWarning`` says why.

        Raises
        ------
        PermissionError
            When inductor's cache directory (compiled code it loads and runs) is writable by
            other users.
        RuntimeError
            On the CPU without a C++ compiler (inductor builds its kernels with one).
        """
        freeze = mode == "auto" and self.device.type == "cpu"
        if mode == "auto":
            mode = "reduce-overhead" if self.device.type == "cuda" else None
        problem = compile_problem(self.device)
        if problem:
            raise RuntimeError(problem)
        check_compile_cache_private()
        self.__dict__["_compiled_mask_decoder"] = _CompiledDecoder.build(
            self.mask_decoder, mode, freeze
        )

    def uncompile_decoder(self) -> None:
        """Undo :meth:`compile_decoder`."""
        self.__dict__.pop("_compiled_mask_decoder", None)

    def _compiled_decoder(self) -> Callable | None:
        """The compiled decoder for this call, or None: not compiled, or gradients on.

        Frozen weights are constants of the compiled code, so a new decoder module or a change
        of any of its weights (storage or in-place version) compiles again, after clearing
        dynamo's caches (they would otherwise hand back the code that holds the old weights;
        other compiled modules of the process then compile again on their next call).
        """
        entry = self.__dict__.get("_compiled_mask_decoder")
        if entry is None or torch.is_grad_enabled():
            return None
        if not entry.is_current(self.mask_decoder):
            torch.compiler.reset()
            entry = _CompiledDecoder.build(self.mask_decoder, entry.mode, entry.freeze)
            self.__dict__["_compiled_mask_decoder"] = entry
        return entry


@dataclass(frozen=True)
class _CompiledDecoder:
    """A ``torch.compile``d mask decoder and how it was built.

    With ``freeze``, every call runs under inductor's ``freezing`` setting: dynamo reads it
    while tracing (weights become constants of the graph, packed once), so passing it in
    ``torch.compile(options=...)``, which only reaches inductor, is not enough.
    """

    module: Callable
    decoder: nn.Module
    tensors: tuple[torch.Tensor, ...]  # its parameters and buffers, listed once
    mode: str | None
    freeze: bool
    weights_key: tuple

    @classmethod
    def build(cls, decoder: nn.Module, mode: str | None, freeze: bool) -> _CompiledDecoder:
        tensors = (*decoder.parameters(), *decoder.buffers())
        compiled = torch.compile(decoder, mode=mode, dynamic=False)
        return cls(compiled, decoder, tensors, mode, freeze, tuple(map(_tensor_key, tensors)))

    def is_current(self, decoder: nn.Module) -> bool:
        """``decoder`` is the compiled one and its weights are unchanged (~40 µs; walking the
        module's parameters again would take 150)."""
        return decoder is self.decoder and tuple(map(_tensor_key, self.tensors)) == self.weights_key

    def __call__(self, **kwargs):
        if not self.freeze:
            return self.module(**kwargs)
        from torch._inductor import config

        with config.patch(freezing=True):
            return self.module(**kwargs)


def check_compile_cache_private() -> str:
    """Inductor's cache directory (``TORCHINDUCTOR_CACHE_DIR``, set to inductor's default when
    unset), created private (0700) if missing; ``PermissionError`` if another user owns it or can
    write to it: inductor loads and runs the compiled code it finds there. Not checked where there
    are no POSIX owners (Windows)."""
    path = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not path:  # inductor's default, made explicit so that the checked folder is the one used
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
        path = os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")
    path = os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.abspath(path)
    if not hasattr(os, "getuid"):
        return path
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.stat(path)
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(
            f"torch.compile's cache directory {path} is owned by another user or writable by "
            "others, and inductor runs the compiled code it finds there. Set "
            "TORCHINDUCTOR_CACHE_DIR to a directory only you can write to, or do not compile."
        )
    return path


def compile_problem(device: torch.device) -> str | None:
    """Why :meth:`Sam.compile_decoder` cannot work on ``device`` here, or None: on the CPU,
    inductor builds C++ and needs a compiler ($CXX, or c++, g++, clang++, cl on PATH)."""
    if device.type != "cpu":
        return None
    names = [os.environ.get("CXX", ""), "c++", "g++", "clang++", "cl"]
    if any(shutil.which(name) for name in names if name):
        return None
    return (
        "torch.compile on the CPU builds C++ code, and no C++ compiler was found (g++, clang++ "
        "or c++ on PATH, or $CXX): install one (e.g. 'apt install g++', Xcode's command line "
        "tools, or Visual Studio's Build Tools) or keep the decoder uncompiled."
    )


def _prompt_slice(inputs: dict[str, Any], start: int, stop: int, batch: int) -> dict[str, Any]:
    """The mask decoder's ``inputs`` for prompts ``start:stop`` of ``batch`` (per-prompt tensors
    sliced; one image embedding or dense embedding shared by every prompt kept whole)."""
    part = dict(inputs)
    for name in ("image_embeddings", "sparse_prompt_embeddings", "dense_prompt_embeddings"):
        if inputs[name].shape[0] == batch:
            part[name] = inputs[name][start:stop]
    return part


def _tensor_key(tensor: torch.Tensor) -> tuple:
    """Identity of a tensor's storage and contents for a cache: address, shape, dtype, device and
    in-place version (inference tensors keep no version: they cannot be changed outside
    inference mode, and nothing here changes them inside it)."""
    try:
        version = tensor._version
    except RuntimeError:
        version = None
    return (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype, tensor.device, version)
