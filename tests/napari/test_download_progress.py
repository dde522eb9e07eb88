"""A model download shows its bytes in the widget's progress bar, not in the terminal (issue 13).

No network: ``huggingface_hub.hf_hub_download`` is replaced by a fake that reports its bytes
through huggingface_hub's own progress-bar factory with the ``tqdm_class`` it is given (a plain
tqdm bar on stderr when none is given, as in a terminal).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_segany import checkpoints
from napari_segany._napari._qt.model_picker import ModelChoice, load_model_job
from napari_segany.jobs import run_collecting
from tests.napari.test_sam_widget import WAIT_MS, add_point, errors
from tests.test_checkpoints import _hub_that_streams

MB = 1_000_000


def _download_loader(source, device, precision):
    return checkpoints.download_from_hub(source)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    files = {name: tmp_path / name for name in ("config.json", "model.safetensors")}
    monkeypatch.setattr(checkpoints, "hub_reachable", lambda *a: True)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(checkpoints, "_hub_offline_mode", lambda: False)
    return files


def test_the_loading_job_yields_the_bytes_of_a_download(fake_hub, monkeypatch):
    sizes = {"model.safetensors": 40 * MB}
    monkeypatch.setattr("huggingface_hub.hf_hub_download", _hub_that_streams(fake_hub, sizes))
    steps, folder = run_collecting(load_model_job(_download_loader, ModelChoice("owner/model")))
    assert folder == fake_hub["config.json"].parent
    assert steps[0] == (0, 1) and steps[-1] == (1, 1)
    downloads = [s for s in steps if isinstance(s, checkpoints.DownloadProgress)]
    assert downloads and downloads[-1].done == downloads[-1].total == 40 * MB


def test_cancel_stops_a_download_in_the_loading_job(fake_hub, monkeypatch):
    monkeypatch.setattr("huggingface_hub.hf_hub_download", _hub_that_streams(fake_hub, {}))
    job = load_model_job(_download_loader, ModelChoice("owner/model"), should_stop=lambda: True)
    with pytest.raises(checkpoints.DownloadCancelled):
        run_collecting(job)


def test_a_download_shows_its_bytes_in_the_sam_widget_progress_bar(
    make_napari_viewer, qtbot, fake_hub, monkeypatch, capfd, notifications
):
    """The registry model "sam-vit-b" is fetched; the bar shows MB while the weights arrive."""
    from huggingface_hub.errors import EntryNotFoundError

    from napari_segany._napari._qt.sam_widget import SamWidget

    streaming = _hub_that_streams(fake_hub, {"model.safetensors": 375 * MB}, steps=3)
    release = threading.Event()

    def hf_hub_download(repo_id, filename, **kwargs):
        if kwargs.get("local_files_only"):
            return streaming(repo_id, filename, **kwargs)
        if filename != "config.json":
            bar = kwargs["tqdm_class"]  # KeyError: the widget's load passed no progress class
            with bar(total=375 * MB, desc=filename, unit="B", unit_scale=True) as progress:
                progress.update(150 * MB)
                release.wait(WAIT_MS / 1000)
            raise EntryNotFoundError(f"{filename} not in {repo_id}")  # ends the load
        return streaming(repo_id, filename, **kwargs)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", hf_hub_download)
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((32, 32), np.uint8))
    widget = SamWidget(viewer)
    widget.model_picker.model_box.value = "sam-vit-b"
    widget.model_picker.device_box.value = "cpu"
    add_point(widget, image, (10, 10))
    bar = widget.task.progress_bar
    try:
        qtbot.waitUntil(lambda: "MB" in bar.text(), timeout=WAIT_MS)
        assert bar.text() == "150.0 / 375.0 MB"
        assert bar.maximum() > 0 and bar.value() / bar.maximum() == pytest.approx(0.4)
        assert "downloading model.safetensors" in widget.task.label.text()
    finally:
        release.set()
    qtbot.waitUntil(lambda: not widget.task.is_running, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: bool(errors(notifications)), timeout=WAIT_MS)
    assert bar.text() == "idle" or "MB" not in bar.text()
    err = capfd.readouterr().err
    assert "model.safetensors" not in err and "%|" not in err and "MB/s" not in err
