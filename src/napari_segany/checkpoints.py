"""Reading checkpoints safely and fetching them from the Hugging Face Hub.

Shared by every model family: the family's loader decides *which* files it needs and how keys are
renamed; this module reads files (safetensors, or ``torch.load(weights_only=True)``), downloads
them with progress and caching, and builds a model from a state dict with one copy of the weights.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from napari_segany.models.allocator import keep_scratch_memory

logger = logging.getLogger(__name__)

HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HUB_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not fit the model."""


class WeightsUnavailableError(OSError):
    """Weights are neither in the local cache nor downloadable (offline, unknown repo, no access)."""


class DownloadCancelled(Exception):
    """Raised by a download progress hook to stop a running download (the user pressed Cancel)."""


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
            shards = shard_names(index)
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(read_state_dict(folder / shard))
            return state
    raise CheckpointError(
        f"no weights in {folder}: expected one of {', '.join(HUB_WEIGHT_FILES + HUB_INDEX_FILES)}"
    )


def shard_names(index: str | os.PathLike) -> list[str]:
    """The shard file names listed by a sharded checkpoint's ``*.index.json`` (sorted, unique).

    Raises
    ------
    CheckpointError
        Not JSON, no ``weight_map`` object, or a shard that is not a plain file name.
    """
    index = Path(index)
    try:
        content = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{index} is not valid JSON: {exc}") from exc
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(
            f'{index} has no "weight_map" object naming the shard of each weight, so the '
            f"sharded checkpoint cannot be read (incomplete download?)"
        )
    shards = sorted({str(v) for v in weight_map.values()})
    bad = [s for s in shards if Path(s).name != s or s in ("", ".", "..")]
    if bad:
        raise CheckpointError(f"{index} names shards outside its folder: {bad[:3]}")
    return shards


WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".json")


def looks_like_path(text: str) -> bool:
    """Whether a model source can only be a local path (never a registry name or hub repo id).

    True when it starts with ``.``, ``/`` or ``~``, contains a backslash or the platform's
    separator other than ``/``, has more than one ``/`` or ends with a weights-file suffix.
    """
    return (
        text.startswith((".", "/", "~"))
        or "\\" in text
        or (os.sep != "/" and os.sep in text)
        or text.count("/") > 1
        or text.lower().endswith(WEIGHT_SUFFIXES)
    )


def check_model_source(source: object, registry: Mapping[str, object]) -> str:
    """The model source as a string; a clear error for ``None``, empty or missing paths.

    Raises
    ------
    ValueError
        ``None`` or an empty string.
    TypeError
        Neither a string nor a path.
    FileNotFoundError
        A path-like string (:func:`looks_like_path`) that does not exist and is no registry name.
    """
    if source is None:
        raise ValueError(
            f"no model given: pass a registry name ({', '.join(registry)}), a checkpoint file "
            f"or folder, or a Hugging Face Hub repo id"
        )
    if not isinstance(source, str | os.PathLike):
        raise TypeError(
            f"a model source is a name or a path, not {type(source).__name__}; to use a loaded "
            f"model pass it to the predictor directly"
        )
    text = os.fspath(source)
    if not isinstance(text, str):
        text = os.fsdecode(text)
    if not text.strip():
        raise ValueError(
            f"the model name is empty: pass a registry name ({', '.join(registry)}), a "
            f"checkpoint file or folder, or a Hugging Face Hub repo id"
        )
    if text not in registry and looks_like_path(text) and not Path(text).expanduser().exists():
        raise FileNotFoundError(
            f"no such file or folder: {text!r} (not a registry name either: {', '.join(registry)})"
        )
    return text


def read_config(folder: str | os.PathLike) -> dict:
    """Read ``config.json`` of a Hugging Face layout folder (a JSON object)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.json, so its architecture is unknown")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{path} holds a JSON {type(config).__name__}, not an object with the model's "
            f"configuration"
        )
    return config


def download_from_hub(
    repo_id: str,
    filenames: Iterable[str] | None = None,
    *,
    revision: str | None = None,
    single_file: str | None = None,
    display_name: str | None = None,
) -> Path:
    """Download files of a hub repository into the standard Hugging Face cache.

    A download happens once; later calls find the files in the cache without touching the network
    (also with ``HF_HUB_OFFLINE=1``). Its progress goes to the hook installed by
    :func:`report_download_progress` (e.g. the widget's progress bar) and then nothing is printed;
    without a hook huggingface_hub shows its own bar on stderr (the command line). When they are not
    cached and the hub cannot be reached (offline mode, or no connection within
    :data:`HUB_PROBE_TIMEOUT` seconds) the call fails at once instead of retrying.

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
    display_name
        How the user calls the model (e.g. the registry name ``"sam-vit-b"``), for the first
        line of the error message; by default ``repo_id``.

    Returns
    -------
    Path
        The snapshot folder (or the file, with ``single_file``).

    Raises
    ------
    WeightsUnavailableError
        The files are not cached and cannot be downloaded; the message says how to get them.
    """
    try:
        return _fetch_repo(repo_id, filenames, revision, single_file, local_only=True)
    except Exception:  # not (completely) in the cache: the network is needed
        pass
    name = display_name or repo_id
    if _hub_offline_mode() or not hub_reachable():
        raise WeightsUnavailableError(
            f"{name} is not downloaded and there is no internet\n\n"
            + _offline_message(repo_id, single_file, None)
        )
    try:
        return _fetch_repo(repo_id, filenames, revision, single_file, local_only=False)
    except (WeightsUnavailableError, DownloadCancelled):
        raise
    except Exception as exc:
        raise WeightsUnavailableError(
            f"{name} could not be downloaded\n\n" + _offline_message(repo_id, single_file, exc)
        ) from exc


HUB_PROBE_TIMEOUT = 3.0
"""Seconds to wait for a connection to the Hugging Face Hub before calling it unreachable."""


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """Whether the Hugging Face Hub answers an HTTP request within ``timeout`` seconds.

    Any HTTP answer counts (even an error status); no answer, a refused connection or a name that
    does not resolve does not. The request runs in a helper thread, so a hanging name lookup or
    connection cannot block longer than ``timeout``.
    """
    import threading
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    url = constants.ENDPOINT.rstrip("/") + "/api/models?limit=1"
    result: list[bool] = []

    def probe() -> None:
        try:
            request = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(request, timeout=timeout):
                result.append(True)
        except urllib.error.HTTPError:
            result.append(True)  # the hub answered
        except Exception:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _hub_offline_mode() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or flag.strip().lower() in ("1", "true", "yes", "on")


def _fetch_repo(
    repo_id: str,
    filenames: Iterable[str] | None,
    revision: str | None,
    single_file: str | None,
    *,
    local_only: bool,
) -> Path:
    from huggingface_hub import hf_hub_download

    hook = None if local_only else _download_hook.get()
    progress = {} if hook is None else {"tqdm_class": _progress_bar_class(hook)}

    def fetch(name: str) -> Path:
        return Path(
            hf_hub_download(
                repo_id, name, revision=revision, local_files_only=local_only, **progress
            )
        )

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
            for shard in shard_names(path):
                fetch(shard)
        return path.parent if folder is None else folder
    if offline_error is not None:
        raise offline_error
    raise WeightsUnavailableError(f"hub repo {repo_id!r} has no weights file ({HUB_WEIGHT_FILES})")


# -- download progress ------------------------------------------------------------------------


@dataclass(frozen=True)
class DownloadProgress:
    """How much of one file a download has written so far.

    Attributes
    ----------
    filename
        The file being downloaded (e.g. ``"model.safetensors"``).
    done
        Bytes downloaded so far.
    total
        Size of the file in bytes; ``0`` when unknown.
    """

    filename: str
    done: int
    total: int

    @property
    def message(self) -> str:
        """What is happening, for a status line: ``"downloading model.safetensors"``."""
        return f"downloading {self.filename}"

    @property
    def text(self) -> str:
        """The bytes for a progress bar: ``"12.3 / 375.0 MB"`` (``"12.3 MB"`` if the size is unknown)."""
        if self.total > 0:
            return f"{self.done / 1e6:.1f} / {self.total / 1e6:.1f} MB"
        return f"{self.done / 1e6:.1f} MB"


DownloadHook = Callable[[DownloadProgress], None]
"""Receives every progress report of a download, in the downloading thread; it may raise
:class:`DownloadCancelled` to stop the download."""

_download_hook: ContextVar[DownloadHook | None] = ContextVar("download_hook", default=None)
"""The hook of the current context (thread); set only inside :func:`report_download_progress`, so
no state outlives the call that installed it."""


@contextmanager
def report_download_progress(hook: DownloadHook) -> Iterator[None]:
    """Send the progress of every download made in this thread (inside the block) to ``hook``.

    The model loaders do not take a progress argument: a caller that shows progress (the
    widgets' model loading job) wraps the load in this block instead. Downloads then use
    huggingface_hub's own progress machinery (a ``tqdm_class`` given to ``hf_hub_download``),
    redirected to ``hook`` and printing nothing.

    Example
    -------
    >>> with report_download_progress(lambda p: print(p.text)):  # doctest: +SKIP
    ...     load_sam("sam-vit-b")
    """
    token = _download_hook.set(hook)
    try:
        yield
    finally:
        _download_hook.reset(token)


_XET_TRANSFER_SUFFIX = "downloading bytes"
"""Description suffix of the second (network transfer) bar of a Xet download; its file's bytes
are reported by the first bar, so the second is not reported."""


def _progress_bar_class(hook: DownloadHook) -> type:
    """A ``tqdm`` class for huggingface_hub that reports to ``hook`` and prints nothing."""
    from tqdm.std import tqdm

    class _Silent:
        def write(self, text: str) -> int:
            return len(text)

        def flush(self) -> None:
            pass

    class HookedProgressBar(tqdm):
        monitor_interval = 0  # no tqdm monitor thread

        def __init__(self, *args, **kwargs) -> None:
            kwargs.pop("name", None)  # huggingface_hub's tqdm subclass takes it, tqdm does not
            kwargs["file"] = _Silent()
            kwargs["disable"] = False  # counted, not shown
            super().__init__(*args, **kwargs)
            description = str(self.desc or "").rstrip(": ")
            self._reported = not description.endswith(_XET_TRANSFER_SUFFIX)
            self._filename = description.split(": ")[0] or "weights"
            self._report()

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            self._report()
            return shown

        def _report(self) -> None:
            if self._reported:
                hook(DownloadProgress(self._filename, int(self.n), int(self.total or 0)))

    return HookedProgressBar


def _is_missing_file(exc: Exception) -> bool:
    from huggingface_hub.errors import EntryNotFoundError

    return isinstance(exc, EntryNotFoundError)


def _is_offline(exc: Exception) -> bool:
    from huggingface_hub.errors import LocalEntryNotFoundError

    return isinstance(exc, LocalEntryNotFoundError)


def _offline_message(repo_id: str, filename: str | None, exc: Exception | None) -> str:
    what = f"{filename!r} from " if filename else ""
    failure = (
        f"downloading failed ({type(exc).__name__}: {exc})"
        if exc is not None
        else "the Hugging Face Hub cannot be reached (no network, or HF_HUB_OFFLINE is set)"
    )
    return (
        f"could not get {what}hub repo {repo_id!r}: it is not in the local Hugging Face cache and "
        f"{failure}. On a machine with internet access run "
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

    On the CPU this also keeps the scratch memory of later calls mapped
    (:func:`napari_segany.models.allocator.keep_scratch_memory`).
    """
    if torch.device(device).type == "cpu":
        keep_scratch_memory()
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
