"""Checkpoint reading, hub download (without a network) and building a model from weights."""

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
from safetensors.torch import save_file
from torch import nn

from napari_segany import checkpoints
from napari_segany.checkpoints import (
    CheckpointError,
    WeightsUnavailableError,
    build_with_weights,
    check_state_dict_keys,
    read_folder_state_dict,
    read_state_dict,
)


class _WithBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.register_buffer("grid", torch.empty(4), persistent=False)
        self.reset_buffers()

    def reset_buffers(self):
        self.grid = torch.arange(4, dtype=torch.float32, device=self.linear.weight.device)


def _weights():
    torch.manual_seed(0)
    return {"linear.weight": torch.randn(2, 3), "linear.bias": torch.randn(2)}


def test_reads_safetensors_and_wrapped_pth(tmp_path):
    weights = _weights()
    save_file(weights, tmp_path / "w.safetensors")
    torch.save({"model": weights, "epoch": 3}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        loaded = read_state_dict(tmp_path / name)
        assert set(loaded) == set(weights)
        torch.testing.assert_close(loaded["linear.weight"], weights["linear.weight"])


def test_reads_legacy_serialization(tmp_path):
    torch.save(_weights(), tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    assert set(read_state_dict(tmp_path / "old.pth")) == {"linear.weight", "linear.bias"}


def test_truncated_and_foreign_files_are_clear_errors(tmp_path):
    torch.save(_weights(), tmp_path / "w.pth")
    data = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.pth").write_text("hello")
    save_file(_weights(), tmp_path / "w.safetensors")
    st = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(st[:-10])
    for name in ("cut.pth", "notes.pth", "cut.safetensors"):
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            read_state_dict(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        read_state_dict(tmp_path / "nothing.pth")


def test_pickled_code_is_refused(tmp_path):
    torch.save({"weights": _weights(), "fn": Path}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        read_state_dict(tmp_path / "evil.pth")


def test_sharded_folder(tmp_path):
    weights = _weights()
    save_file({"linear.weight": weights["linear.weight"]}, tmp_path / "a.safetensors")
    save_file({"linear.bias": weights["linear.bias"]}, tmp_path / "b.safetensors")
    index = {"weight_map": {"linear.weight": "a.safetensors", "linear.bias": "b.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert set(read_folder_state_dict(tmp_path)) == set(weights)
    with pytest.raises(CheckpointError, match="no weights"):
        read_folder_state_dict(tmp_path / "..")


def test_key_check_names_every_kind_of_mismatch():
    state = _weights()
    state["extra.weight"] = torch.zeros(1)
    state["linear.bias"] = torch.zeros(5)
    del state["linear.weight"]
    with pytest.raises(CheckpointError) as info:
        check_state_dict_keys(_WithBuffer(), state, "w.pth")
    message = str(info.value)
    assert "missing key(s): linear.weight" in message
    assert "unexpected key(s): extra.weight" in message
    assert "linear.bias: checkpoint (5,) vs model (2,)" in message


def test_build_with_weights_fills_weights_and_recomputes_buffers():
    weights = _weights()
    model = build_with_weights(
        _WithBuffer, weights, device=torch.device("cpu"), dtype=torch.bfloat16
    )
    assert model.linear.weight.dtype == torch.bfloat16
    torch.testing.assert_close(
        model.linear.weight.float(), weights["linear.weight"], atol=1e-2, rtol=1e-2
    )
    torch.testing.assert_close(model.grid, torch.arange(4, dtype=torch.float32))
    assert not model.training and not model.linear.weight.requires_grad


def _fake_hub(files: dict[str, Path], calls: list[str]):
    def hf_hub_download(repo_id, filename, revision=None, local_files_only=False):
        if local_files_only:  # nothing cached: the files come from the (fake) network
            raise LocalEntryNotFoundError(f"{filename} is not cached")
        calls.append(filename)
        if filename not in files:
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(files[filename])

    return hf_hub_download


def test_download_falls_back_to_the_next_weights_layout(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    torch.save(_weights(), tmp_path / "pytorch_model.bin")
    calls: list[str] = []
    files = {
        "config.json": tmp_path / "config.json",
        "pytorch_model.bin": tmp_path / "pytorch_model.bin",
    }
    monkeypatch.setattr("huggingface_hub.hf_hub_download", _fake_hub(files, calls))
    monkeypatch.setattr(checkpoints, "hub_reachable", lambda *a: True)
    folder = checkpoints.download_from_hub("owner/model")
    assert folder == tmp_path
    assert calls == ["config.json", "model.safetensors", "pytorch_model.bin"]
    assert set(read_folder_state_dict(folder)) == {"linear.weight", "linear.bias"}


def test_offline_without_cache_says_how_to_get_the_weights(monkeypatch):
    def offline(repo_id, filename, revision=None, **kwargs):
        raise LocalEntryNotFoundError("offline mode is enabled")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        checkpoints.download_from_hub("facebook/sam-vit-base")
    message = str(info.value)
    assert "facebook/sam-vit-base" in message and "hf download" in message
    assert "local folder or checkpoint file" in message


def test_offline_cache_with_only_the_bin_layout_is_found(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    torch.save(_weights(), tmp_path / "pytorch_model.bin")
    files = {
        "config.json": tmp_path / "config.json",
        "pytorch_model.bin": tmp_path / "pytorch_model.bin",
    }

    def cached_only(repo_id, filename, revision=None, **kwargs):
        if filename not in files:
            raise LocalEntryNotFoundError(f"{filename} is not cached and offline mode is on")
        return str(files[filename])

    monkeypatch.setattr("huggingface_hub.hf_hub_download", cached_only)
    assert checkpoints.download_from_hub("owner/model") == tmp_path


def _hub_that_streams(files: dict[str, Path], sizes: dict[str, int], steps: int = 4):
    """A fake ``hf_hub_download`` that reports its bytes the way huggingface_hub does.

    The bar comes from huggingface_hub's own factory with the ``tqdm_class`` it was given; without
    one it is a plain tqdm bar on stderr, as in a terminal.
    """
    import functools
    import logging
    import sys

    from huggingface_hub.utils.tqdm import _get_progress_bar_context
    from tqdm.std import tqdm

    def hf_hub_download(repo_id, filename, *, revision=None, local_files_only=False, **kwargs):
        if local_files_only:
            raise LocalEntryNotFoundError(f"{filename} is not cached")
        if filename not in files:
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        total = sizes.get(filename, 100)
        bar_class = kwargs.get("tqdm_class") or functools.partial(tqdm, file=sys.stderr)
        with _get_progress_bar_context(
            desc=filename,
            log_level=logging.INFO,
            total=total,
            name="huggingface_hub.http_get",
            tqdm_class=bar_class,
        ) as bar:
            for _ in range(steps):
                bar.update(total // steps)
        return str(files[filename])

    return hf_hub_download


def test_download_progress_reaches_the_hook_in_bytes_and_prints_nothing(
    tmp_path, monkeypatch, capfd
):
    (tmp_path / "config.json").write_text("{}")
    save_file(_weights(), tmp_path / "model.safetensors")
    files = {name: tmp_path / name for name in ("config.json", "model.safetensors")}
    sizes = {"config.json": 400, "model.safetensors": 375_000_000}
    monkeypatch.setattr("huggingface_hub.hf_hub_download", _hub_that_streams(files, sizes))
    monkeypatch.setattr(checkpoints, "hub_reachable", lambda *a: True)
    reports: list[checkpoints.DownloadProgress] = []
    with checkpoints.report_download_progress(reports.append):
        assert checkpoints.download_from_hub("owner/model") == tmp_path
    weights = [r for r in reports if r.filename == "model.safetensors"]
    assert [r.done for r in weights] == [0, 93_750_000, 187_500_000, 281_250_000, 375_000_000]
    assert {r.total for r in weights} == {375_000_000}
    assert weights[-1].text == "375.0 / 375.0 MB"
    assert weights[1].message == "downloading model.safetensors"
    assert any(r.filename == "config.json" for r in reports)
    captured = capfd.readouterr()
    assert "model.safetensors" not in captured.err and "%|" not in captured.err
    # outside the block nothing reports: huggingface_hub draws its own bar (the command line)
    reports.clear()
    checkpoints.download_from_hub("owner/model")
    assert reports == [] and "model.safetensors" in capfd.readouterr().err


def test_a_hook_that_raises_download_cancelled_stops_the_download(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    files = {name: tmp_path / name for name in ("config.json", "model.safetensors")}
    monkeypatch.setattr("huggingface_hub.hf_hub_download", _hub_that_streams(files, {}))
    monkeypatch.setattr(checkpoints, "hub_reachable", lambda *a: True)

    def cancel_at_half(progress):
        if progress.filename == "model.safetensors" and progress.done >= progress.total // 2:
            raise checkpoints.DownloadCancelled("cancelled")

    with checkpoints.report_download_progress(cancel_at_half):
        with pytest.raises(checkpoints.DownloadCancelled):  # not turned into "unavailable"
            checkpoints.download_from_hub("owner/model")
