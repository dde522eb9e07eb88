"""``napari-segany models`` and ``download``: registry listing, cache detection, offline failure."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from napari_segany.cli import main


@pytest.fixture()
def empty_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache folder in place of the user's; offline mode is undone after."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    return cache


def _fake_cached_repo(cache, repo_id: str) -> None:
    """The cache layout huggingface_hub writes: refs/main -> snapshots/<commit>/files."""
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"")


def test_models_lists_the_registry_and_what_is_downloaded(empty_hub_cache, capsys):
    from napari_segany.sam.registry import SAM_MODELS

    _fake_cached_repo(empty_hub_cache, SAM_MODELS["slimsam-77"].hub_repo)
    assert main(["models", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert {"sam-vit-b", "sam-vit-h", "slimsam-77", "medsam-vit-b", "seggpt-vit-l"} <= set(rows)
    assert rows["slimsam-77"]["downloaded"] is True
    assert rows["sam-vit-b"]["downloaded"] is False
    assert rows["sam-vit-b"]["license"] == "Apache-2.0" and rows["sam-vit-b"]["size_mb"] > 0
    assert rows["seggpt-vit-l"]["family"] == "seggpt"

    assert main(["models"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:5] == ["name", "family", "size_mb", "license", "downloaded"]
    slim = next(line for line in table if line.startswith("slimsam-77"))
    assert slim.split()[4] == "yes"


def test_download_offline_fails_fast_with_a_clear_message(empty_hub_cache, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    assert main(["download", "sam-vit-b"]) == 1
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err
    assert "sam-vit-b" in err and "facebook/sam-vit-base" in err
    assert "napari-segany download sam-vit-b" in err and "HF_HOME" in err


def test_download_of_a_cached_model_works_offline(empty_hub_cache, monkeypatch, capsys):
    from napari_segany.sam.registry import SAM_MODELS

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fake_cached_repo(empty_hub_cache, SAM_MODELS["slimsam-77"].hub_repo)
    assert main(["download", "slimsam-77"]) == 0
    assert "slimsam-77" in capsys.readouterr().err


def test_download_unknown_name_is_a_usage_error(capsys):
    assert main(["download", "sam-vit-z"]) == 2
    assert "sam-vit-z" in capsys.readouterr().err


def test_run_with_an_unavailable_registered_model_fails_fast(
    empty_hub_cache, monkeypatch, tmp_path, capsys
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "x.png").write_bytes(b"")
    start = time.perf_counter()
    assert main(["everything", str(tmp_path / "x.png"), "-o", str(tmp_path / "out")]) == 1
    assert time.perf_counter() - start < 5
    assert "napari-segany download sam-vit-b" in capsys.readouterr().err


def test_python_dash_m_runs_the_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "napari_segany", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.startswith("napari-segany ")
    usage = subprocess.run([sys.executable, "-m", "napari_segany"], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_a_missing_batch_dependency_is_named(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "zarr", None)  # as if the batch extra were not installed
    (tmp_path / "x.png").write_bytes(b"")
    assert main(["everything", str(tmp_path / "x.png"), "-o", str(tmp_path / "out")]) == 2
    assert "napari-segany[batch]" in capsys.readouterr().err
