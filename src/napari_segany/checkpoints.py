"""Reading checkpoints safely and fetching them from the Hugging Face Hub.

Shared by every model family: the family's loader decides *which* files it needs and how keys are
renamed; this module reads files (safetensors, or ``torch.load(weights_only=True)``), downloads
them with progress and caching, and builds a model from a state dict with one copy of the weights.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HUB_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not fit the model."""


class WeightsUnavailableError(OSError):
    """Weights are neither in the local cache nor downloadable (offline, unknown repo, no access)."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors``, ``.bin``, ``.pth`` or ``.pt`` file, on the CPU.

    Pickled files are read with ``weights_only=True`` and memory-mapped where the format allows,
    so a multi-GB checkpoint is not copied into memory twice. A state dict nested under
    ``"model"`` or ``"state_dict"`` (as in the original SAM / SegGPT releases) is unwrapped.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    CheckpointError
        The file is truncated, not a checkpoint, or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"could not read {path} as safetensors (truncated or corrupt download?): {exc}"
            ) from exc
    else:
        state = _torch_load(path)
    for wrapper in ("model", "state_dict"):
        if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{path} holds no state dict (found {type(state).__name__})")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors")
    return tensors


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise CheckpointError(_unreadable(path, exc)) from exc
    except Exception as exc:  # pickle errors, zip errors, EOF: all mean an unusable file
        raise CheckpointError(_unreadable(path, exc)) from exc
    try:  # legacy (non-zip) serialization cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(_unreadable(path, exc)) from exc


def _unreadable(path: Path, exc: BaseException) -> str:
    return (
        f"could not read {path} as a PyTorch checkpoint (truncated or corrupt download, or not a "
        f"checkpoint file; only plain tensors are loaded, weights_only=True): {exc}"
    )


def read_folder_state_dict(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the weights of a folder in the Hugging Face layout.

    Looks for ``model.safetensors``, then ``pytorch_model.bin``, then a sharded checkpoint
    described by ``model.safetensors.index.json`` / ``pytorch_model.bin.index.json``.
    """
    folder = Path(folder)
    for name in HUB_WEIGHT_FILES:
        if (folder / name).is_file():
            return read_state_dict(folder / name)
    for name in HUB_INDEX_FILES:
        index = folder / name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(read_state_dict(folder / shard))
            return state
    raise CheckpointError(
        f"no weights in {folder}: expected one of {', '.join(HUB_WEIGHT_FILES + HUB_INDEX_FILES)}"
    )


def read_config(folder: str | os.PathLike) -> dict:
    """Read ``config.json`` of a Hugging Face layout folder."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.json, so its architecture is unknown")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc


def download_from_hub(
    repo_id: str,
    filenames: Iterable[str] | None = None,
    *,
    revision: str | None = None,
    single_file: str | None = None,
) -> Path:
    """Download files of a hub repository into the standard Hugging Face cache.

    A download shows huggingface_hub's progress bar and happens once; later calls find the files
    in the cache (also with ``HF_HUB_OFFLINE=1``).

    Parameters
    ----------
    repo_id
        ``"owner/name"`` on the Hugging Face Hub.
    filenames
        Files to fetch besides the weights; by default ``config.json``. The weights are the first
        of ``model.safetensors`` / ``pytorch_model.bin`` (or their sharded index) that the repo has.
    revision
        Branch, tag or commit.
    single_file
        Fetch only this one file (e.g. an original ``.pth``) and return its path.

    Returns
    -------
    Path
        The snapshot folder (or the file, with ``single_file``).

    Raises
    ------
    WeightsUnavailableError
        The files are not cached and cannot be downloaded; the message says how to get them.
    """
    from huggingface_hub import hf_hub_download

    def fetch(name: str) -> Path:
        return Path(hf_hub_download(repo_id, name, revision=revision))

    try:
        if single_file is not None:
            return fetch(single_file)
        folder = None
        for name in filenames or ("config.json",):
            folder = fetch(name).parent
        offline_error: Exception | None = None
        for name in HUB_WEIGHT_FILES + HUB_INDEX_FILES:
            try:
                path = fetch(name)
            except Exception as exc:  # the repo (or the offline cache) lacks this file: next layout
                if not _is_missing_file(exc):
                    raise
                if _is_offline(exc):
                    offline_error = exc
                continue
            if name in HUB_INDEX_FILES:
                for shard in sorted(set(json.loads(path.read_text())["weight_map"].values())):
                    fetch(shard)
            return path.parent if folder is None else folder
        if offline_error is not None:
            raise offline_error
        raise WeightsUnavailableError(
            f"hub repo {repo_id!r} has no weights file ({HUB_WEIGHT_FILES})"
        )
    except WeightsUnavailableError:
        raise
    except Exception as exc:
        raise WeightsUnavailableError(_offline_message(repo_id, single_file, exc)) from exc


def _is_missing_file(exc: Exception) -> bool:
    from huggingface_hub.errors import EntryNotFoundError

    return isinstance(exc, EntryNotFoundError)


def _is_offline(exc: Exception) -> bool:
    from huggingface_hub.errors import LocalEntryNotFoundError

    return isinstance(exc, LocalEntryNotFoundError)


def _offline_message(repo_id: str, filename: str | None, exc: Exception) -> str:
    what = f"{filename!r} from " if filename else ""
    return (
        f"could not get {what}hub repo {repo_id!r}: it is not in the local Hugging Face cache and "
        f"downloading failed ({type(exc).__name__}: {exc}). On a machine with internet access run "
        f"`hf download {repo_id}` (or `huggingface-cli download {repo_id}`) and copy the cache "
        f"(~/.cache/huggingface, or $HF_HOME), or download the weights yourself and pass the local "
        f"folder or checkpoint file instead of a name."
    )


def check_state_dict_keys(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str
) -> None:
    """Raise :class:`CheckpointError` naming missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    if not (missing or unexpected or mismatched):
        return
    parts = [f"checkpoint {source} does not fit the model:"]
    for label, keys in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", mismatched),
    ):
        if keys:
            shown = ", ".join(keys[:12]) + (
                f", ... ({len(keys) - 12} more)" if len(keys) > 12 else ""
            )
            parts.append(f"{len(keys)} {label} key(s): {shown}")
    raise CheckpointError("\n".join(parts))


def build_with_weights(
    build: Callable[[], nn.Module],
    state_dict: Mapping[str, torch.Tensor],
    *,
    device: torch.device,
    dtype: torch.dtype,
    source: str = "",
) -> nn.Module:
    """Construct a model and fill it with ``state_dict`` with a single copy of the weights.

    The model is built on the meta device (no random initialisation, no memory), cast to ``dtype``,
    allocated empty on ``device`` and then filled from the state dict, which may be memory-mapped.
    Keys must match exactly (see :func:`check_state_dict_keys`). Modules that keep non-persistent
    buffers define ``reset_buffers()``, which is called after loading to recompute them.
    """
    with torch.device("meta"):
        model = build()
    check_state_dict_keys(model, state_dict, source)
    model = model.to(dtype=dtype).to_empty(device=device)
    model.load_state_dict(state_dict, strict=True)
    for module in model.modules():
        reset = getattr(module, "reset_buffers", None)
        if callable(reset):
            reset()
    return model.eval().requires_grad_(False)
