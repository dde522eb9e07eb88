"""The registered models, whether their weights are in the Hugging Face cache, and downloading them.

For ``napari-segany models`` / ``download`` and for a fast, clear failure before a batch starts
when the weights are neither cached nor reachable. Listing imports no torch.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

__all__ = [
    "ModelEntry",
    "ModelUnavailableError",
    "UnknownModelError",
    "check_model_source",
    "download_model",
    "hub_reachable",
    "is_cached",
    "list_models",
    "use_offline_mode",
]


@dataclass(frozen=True)
class ModelEntry:
    """One registered model, as listed by ``napari-segany models``."""

    name: str
    family: str
    hub_repo: str
    size_mb: float
    license: str
    description: str

    @property
    def downloaded(self) -> bool:
        """Whether its weights are in the local Hugging Face cache."""
        return is_cached(self.hub_repo)


def list_models() -> list[ModelEntry]:
    """Every registered model: SAM variants, SegGPT, and Grounding DINO when that package exists."""
    from napari_segany.sam.registry import SAM_MODELS
    from napari_segany.seggpt.registry import SEGGPT_MODELS

    entries = [
        ModelEntry(v.name, "sam", v.hub_repo, v.download_megabytes, v.license, v.description)
        for v in SAM_MODELS.values()
    ]
    entries += [
        ModelEntry(i.name, "seggpt", i.hub_repo, i.size_mb, i.license, i.description)
        for i in SEGGPT_MODELS.values()
    ]
    entries += _grounding_entries()
    return entries


def _grounding_entries() -> list[ModelEntry]:
    try:
        from napari_segany.grounding import registry  # type: ignore[attr-defined]
    except Exception:
        return []
    models = getattr(registry, "GROUNDING_MODELS", None) or getattr(
        registry, "GROUNDING_DINO_MODELS", None
    )
    if not isinstance(models, dict):
        return []
    entries = []
    for name, info in models.items():
        entries.append(
            ModelEntry(
                str(name),
                "grounding-dino",
                str(getattr(info, "hub_repo", "")),
                float(
                    getattr(info, "download_size_mb", 0)
                    or getattr(info, "size_mb", 0)
                    or getattr(info, "download_megabytes", 0)
                    or 0
                ),
                str(getattr(info, "license", "")),
                str(getattr(info, "description", "")),
            )
        )
    return entries


def is_cached(hub_repo: str) -> bool:
    """Whether ``config.json`` and a weights file of ``hub_repo`` are in the Hugging Face cache."""
    if not hub_repo:
        return False
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> bool:
        return isinstance(try_to_load_from_cache(hub_repo, name), str)

    weights = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
    return cached("config.json") and any(cached(w) for w in weights)


def hub_reachable(timeout: float = 5.0) -> tuple[bool, str]:
    """Whether the Hugging Face endpoint answers a TCP connection (no retries, ``timeout`` s).

    ``HF_HUB_OFFLINE=1`` counts as unreachable. Returns (reachable, reason when not).
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False, "HF_HUB_OFFLINE is set"
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True, ""
    except OSError as exc:
        return False, f"cannot reach {constants.ENDPOINT} ({exc})"


def use_offline_mode() -> None:
    """Make huggingface_hub use its cache only, in this process and the worker processes it starts.

    Sets ``HF_HUB_OFFLINE=1`` in the environment (inherited by new processes) and in the
    already-imported ``huggingface_hub.constants``.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True


def _offline_hint(names: str) -> str:
    return (
        f"On a machine with internet access run `napari-segany download {names}`, then copy the "
        f"Hugging Face cache (~/.cache/huggingface, or $HF_HOME) to this machine; or pass a local "
        f"folder or checkpoint file with --model."
    )


def download_model(name: str) -> Path:
    """Fill the Hugging Face cache with the weights of registered model ``name``.

    Raises
    ------
    KeyError
        Not a registered name.
    napari_segany.checkpoints.WeightsUnavailableError
        Not cached and the hub is unreachable (checked first, without retries).
    """
    entries = {e.name: e for e in list_models()}
    if name not in entries:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(entries)}")
    from napari_segany.checkpoints import WeightsUnavailableError, download_from_hub

    entry = entries[name]
    reachable, reason = hub_reachable()
    if entry.downloaded and not reachable:
        use_offline_mode()
    if not entry.downloaded:
        if not reachable:
            raise WeightsUnavailableError(
                f"{name} ({entry.hub_repo}) is not downloaded and the hub is unreachable: "
                f"{reason}. {_offline_hint(name)}"
            )
    return download_from_hub(entry.hub_repo)


class UnknownModelError(ValueError):
    """A model source that names nothing: no file, folder, registered name or hub id."""


class ModelUnavailableError(OSError):
    """A registered model or hub id whose weights are neither cached nor reachable."""


def check_model_source(source: str, *, option: str = "--model") -> None:
    """Fail fast, without loading anything, when ``source`` cannot be loaded.

    A local path must exist; a registered name or hub id must be cached or the hub reachable
    (one connection attempt, no retries). Cached weights with the hub unreachable switch
    huggingface_hub to offline mode (:func:`use_offline_mode`), so loading does not first retry
    the network for half a minute.

    Raises
    ------
    UnknownModelError
        ``source`` names nothing.
    ModelUnavailableError
        Not downloaded and the hub is unreachable; the message says how to get the weights.
    """
    if Path(source).expanduser().exists():
        return
    repos = {entry.name: entry.hub_repo for entry in list_models()}
    repo = repos.get(source)
    if repo is None and (
        source.count("/") == 1
        and not source.startswith((".", "/", "~"))
        and Path(source).suffix not in (".pth", ".pt", ".bin", ".safetensors")
    ):
        repo = source
    if repo is None:
        raise UnknownModelError(
            f"{option} {source!r} is no registered name, existing file or folder, or hub id"
        )
    reachable, reason = hub_reachable()
    if is_cached(repo):
        if not reachable:
            use_offline_mode()
        return
    if not reachable:
        raise ModelUnavailableError(
            f"the weights of {source!r} ({repo}) are not downloaded and the hub is unreachable: "
            f"{reason}. {_offline_hint(source)}"
        )
