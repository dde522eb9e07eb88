"""The Qt event loop keeps running during every job (a QTimer ticking every 10 ms shows the gaps).

The issue's target is no gap above 100 ms on a quiet machine. Each test asserts it on the main
thread's own work, the CPU time it spends between two ticks (:data:`MAX_BUSY_S`), which the load
of a shared machine barely changes, and asserts :data:`MAX_GAP_S` on the wall-clock gaps, which
other processes on a loaded 2-core machine stretch (software OpenGL under Xvfb). Each test prints
both. Measured at a load average of 5-6 on the shared 2-core machine (largest gap / most
main-thread CPU): preview 0.04 / 0.015 s, commit of a 2048² object 0.09 / 0.04 s, propagation
0.03 / 0.015 s, segment everything 0.15 / 0.07 s, SegGPT 0.18 / 0.08 s (at a load average of 3:
0.02, 0.06 and 0.08 s of largest gap); the last two are napari adding the new labels layer (its
visual, painting overlays and controls, in one call).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_segany._napari._qt import sam_stack_actions
from tests.napari.test_sam_widget import WAIT_MS, add_point, open_widget, wait_for_preview

MAX_BUSY_S = 0.1
"""Most main-thread CPU time between two ticks: the issue's 100 ms."""
MAX_GAP_S = 0.25
"""Longest wall-clock gap between two ticks, with room for a loaded 2-core machine."""


class Ticks:
    """Records every tick of a 10 ms QTimer: wall-clock time and the main thread's CPU time.

    :attr:`max_gap` is the longest wall-clock time between ticks (what the user feels; it grows
    when other processes load the machine); :attr:`max_busy` is the most CPU time the main
    thread spent between two ticks (its own work in one event-loop turn, much less sensitive to
    the load; waiting for the GIL or the CPU does not count).
    """

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        self.times.append(time.perf_counter())
        self.cpu_times.append(time.thread_time())

    def __enter__(self) -> Ticks:
        self.times.clear()
        self.cpu_times.clear()
        self.timer.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.timer.stop()

    @property
    def max_gap(self) -> float:
        return float(np.diff(self.times).max()) if len(self.times) > 1 else float("inf")

    @property
    def max_busy(self) -> float:
        return float(np.diff(self.cpu_times).max()) if len(self.cpu_times) > 1 else float("inf")


@pytest.fixture
def big_plane_widget(make_napari_viewer, qtbot, tiny_sam_hf_folder):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    image = viewer.add_image(rng.integers(0, 255, (2048, 2048)).astype(np.uint8), name="big")
    labels = viewer.add_labels(np.zeros((2048, 2048), np.int32), name="out")
    widget = open_widget(viewer, tiny_sam_hf_folder)
    widget.output_box.value = labels
    add_point(widget, image, (1000, 1000))
    wait_for_preview(qtbot, widget)  # model loaded and the plane embedded once
    return viewer, image, labels, widget


@pytest.mark.slow
def test_never_frozen_while_previewing_and_committing_a_large_plane(
    big_plane_widget, qtbot, monkeypatch
):
    _viewer, image, labels, widget = big_plane_widget
    monkeypatch.setattr(sam_stack_actions, "SYNC_COMMIT_PIXELS", 1_000_000)
    with Ticks() as preview:
        for row in (400, 800, 1200):
            add_point(widget, image, (row, 1000))
            qtbot.wait(30)
        wait_for_preview(qtbot, widget)
    with Ticks() as commit:
        widget.commit()
        qtbot.waitUntil(lambda: "committed" in widget.status.value, timeout=WAIT_MS)
        qtbot.waitUntil(lambda: widget.is_idle, timeout=WAIT_MS)
    print(f"largest gap: preview {preview.max_gap:.3f} s, commit {commit.max_gap:.3f} s")
    print(f"most main-thread CPU: preview {preview.max_busy:.3f} s, commit {commit.max_busy:.3f} s")
    assert labels.data.any()
    assert preview.max_gap < MAX_GAP_S and commit.max_gap < MAX_GAP_S
    assert preview.max_busy < MAX_BUSY_S and commit.max_busy < MAX_BUSY_S


@pytest.mark.slow
def test_never_frozen_during_propagation_and_segment_everything(
    make_napari_viewer, qtbot, tiny_sam_hf_folder
):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    image = viewer.add_image(rng.integers(0, 4000, (12, 512, 512)).astype(np.uint16), name="s")
    labels = viewer.add_labels(np.zeros((12, 512, 512), np.int32), name="out")
    widget = open_widget(viewer, tiny_sam_hf_folder)
    widget.output_box.value = labels
    viewer.dims.set_point(0, 6)
    add_point(widget, image, (6, 250, 250))
    wait_for_preview(qtbot, widget)
    widget.commit()
    qtbot.waitUntil(lambda: "committed" in widget.status.value, timeout=WAIT_MS)
    widget.advanced.min_score.value = 0.0
    widget.advanced.min_area.value = 1
    with Ticks() as propagation:
        widget.propagate()
        qtbot.waitUntil(lambda: widget.task.is_running, timeout=WAIT_MS)
        qtbot.waitUntil(lambda: widget.is_idle, timeout=WAIT_MS)
    assert "more slice(s)" in widget.status.value  # written once the job and its writes ended
    widget.everything.points_per_side.value = 4
    with Ticks() as everything:
        widget.segment_everything()
        qtbot.waitUntil(lambda: widget.task.is_running, timeout=WAIT_MS)
        qtbot.waitUntil(lambda: widget.is_idle, timeout=WAIT_MS)
    print(
        f"largest gap: propagation {propagation.max_gap:.3f} s, "
        f"segment everything {everything.max_gap:.3f} s"
    )
    print(
        f"most main-thread CPU: propagation {propagation.max_busy:.3f} s, "
        f"segment everything {everything.max_busy:.3f} s"
    )
    assert "label" in widget.status.value or "segment everything" in widget.status.value
    assert propagation.max_gap < MAX_GAP_S and everything.max_gap < MAX_GAP_S
    assert propagation.max_busy < MAX_BUSY_S and everything.max_busy < MAX_BUSY_S


@pytest.mark.slow
def test_never_frozen_during_a_seggpt_run(make_napari_viewer, qtbot, tiny_seggpt_hf_folder):
    from napari_segany._napari._qt.seggpt_widget import SegGptWidget
    from napari_segany._napari.sample_data import blobs_stack

    viewer = make_napari_viewer()
    stack, truth = blobs_stack((6, 256, 256))
    painted = np.zeros_like(truth)
    painted[0] = truth[0]
    image = viewer.add_image(stack)
    prompt = viewer.add_labels(painted, name="painted")
    widget = SegGptWidget(viewer)
    widget.model_picker.set_custom_path(str(tiny_seggpt_hf_folder))
    widget.model_picker.device_box.value = "cpu"
    widget.model_picker.precision_box.value = "fp32"
    widget.reset_choices()
    widget.target_box.value = image
    widget.prompt_labels_box.value = prompt
    with Ticks() as run:
        widget.run()
        qtbot.waitUntil(lambda: "segmented" in widget.status.value, timeout=WAIT_MS)
    print(f"largest gap: SegGPT {run.max_gap:.3f} s")
    print(f"most main-thread CPU: SegGPT {run.max_busy:.3f} s")
    assert run.max_gap < MAX_GAP_S and run.max_busy < MAX_BUSY_S
