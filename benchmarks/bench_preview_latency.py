"""Click → preview latency of the Segment Anything widget in a real napari viewer.

Drives a real viewer (run under Xvfb) with synthetic clicks: each click adds a point to the
widget's points layer and the clock stops when the preview layer has been redrawn with the new
mask. The embedding is computed once before timing (the latency users feel on every click).
Measured for a tiny random SAM (pure pipeline overhead: event hand-off, worker thread, layer
refresh) and a random model with ViT-B's shapes (the decoder cost included).

Interleaved with every click, the bare decode (``InteractiveSamSession.decode`` of the same
prompts, in the main thread, no napari) is timed as the reference, and napari's own cost of
adding the point (``Points.add``, synchronous) is timed too, so the printed rest (latency − decode
− add: thread hand-off, preview draw, canvas repaint) is comparable on a loaded machine. Under
Xvfb the canvas is painted by a software OpenGL, which makes every repaint slower than on a
desktop.

    xvfb-run -a python benchmarks/bench_preview_latency.py [--clicks 40] [--size 1024]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch


def random_sam(kind: str) -> torch.nn.Module:
    """A SAM with random weights: ``"tiny"`` or ``"vit-b"`` shapes."""
    from napari_segany.sam.loader import build_sam
    from napari_segany.sam.registry import SAM_MODELS

    arch = SAM_MODELS["sam-vit-b"].architecture
    if kind == "tiny":
        arch = replace(
            arch,
            image_size=256,
            encoder_embed_dim=48,
            encoder_depth=2,
            encoder_num_heads=4,
            encoder_mlp_dim=96,
            encoder_global_attn_indexes=(1,),
            encoder_window_size=4,
            prompt_embed_dim=32,
            mask_in_chans=8,
            decoder_num_heads=4,
            decoder_mlp_dim=64,
            iou_head_hidden_dim=32,
        )
    torch.manual_seed(0)
    model = build_sam(arch, name=f"random-{kind}")
    return model.eval()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def run(kind: str, clicks: int, size: int) -> None:
    from qtpy.QtWidgets import QApplication

    import napari
    from napari_segany._napari._qt.sam_widget import SamWidget
    from napari_segany.sam.interactive_session import InteractiveSamSession

    model = random_sam(kind)
    session = InteractiveSamSession()
    session.set_model(model, f"random-{kind}", "fp32")
    viewer = napari.Viewer(show=True)
    rng = np.random.default_rng(0)
    viewer.add_image(rng.integers(0, 255, (size, size)).astype(np.uint8), name="img")
    widget = SamWidget(viewer, session=session)
    viewer.window.add_dock_widget(widget, name="Segment Anything")
    widget.model_picker.set_custom_path(f"random-{kind}")
    widget.model_picker.device_box.value = "cpu"
    session.model_id = f"random-{kind}|cpu"  # the widget's id for that choice: no loading
    app = QApplication.instance()

    drawn: list[float] = []
    show = widget.layers.show_preview

    def timed_show(*args, **kwargs):
        show(*args, **kwargs)
        drawn.append(time.perf_counter())

    widget.layers.show_preview = timed_show

    adds: list[float] = []

    def click(row: float, col: float) -> float:
        start = time.perf_counter()
        count = len(drawn)
        widget.points_layer.add(np.array([row, col], float))
        adds.append(time.perf_counter() - start)  # napari's own cost of adding the point
        while len(drawn) == count or not widget.is_idle:
            app.processEvents()
            time.sleep(0.0005)
        return drawn[count] - start

    t0 = time.perf_counter()
    click(size / 2, size / 2)  # computes the embedding once
    print(f"[{kind}] first click (embedding included): {time.perf_counter() - t0:.2f} s")
    adds.clear()
    latencies, decodes = [], []
    for _ in range(clicks):
        widget.clear_prompts()
        while not widget.is_idle:
            app.processEvents()
        row, col = rng.uniform(0.1, 0.9, 2) * size
        latencies.append(click(row, col))
        context = widget.current_context()
        start = time.perf_counter()
        session.decode(context.key, context.prompts)  # reference: the bare decode
        decodes.append(time.perf_counter() - start)
    overhead = [a - b - c for a, b, c in zip(latencies, decodes, adds, strict=True)]
    print(
        f"[{kind}] {size}x{size}, {clicks} clicks: click->preview median "
        f"{percentile(latencies, 50):.1f} ms, p95 {percentile(latencies, 95):.1f} ms | bare decode "
        f"median {percentile(decodes, 50):.1f} ms | napari points.add median "
        f"{percentile(adds, 50):.1f} ms | rest (hand-off, draw, repaint) median "
        f"{percentile(overhead, 50):.1f} ms | ratio latency/decode "
        f"{np.median(latencies) / np.median(decodes):.2f}"
    )
    viewer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clicks", type=int, default=40)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--models", default="tiny,vit-b")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for kind in args.models.split(","):
        run(kind.strip(), args.clicks, args.size)


if __name__ == "__main__":
    main()
