"""Click → shown mask in a process that loaded its embedding from disk, with and without keeping
the scratch memory mapped (``napari_segany.models.allocator``).

A process that has just computed an embedding has freed large blocks, and glibc has raised its
mmap and trim thresholds by itself; one that read the embedding from the disk cache (the widget
after a restart, a batch job over cached embeddings) has not, and the decoder's buffers are
mapped, faulted in and handed back on every click. Each run here is such a process: it loads the
weights and the embedding from files, then times clicks as ``bench_sam.py``'s "prompt->shown
mask" does (same random ViT-B weights, same point). Runs alternate between the package's setting
and ``NAPARI_SEGANY_MALLOC_TUNING=0`` (glibc's own), so a shared machine's load hits both alike.

    python benchmarks/bench_click_fresh_process.py [--rounds 5] [--clicks 100]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = """
import json, resource, statistics, sys, time
import numpy as np, torch
from napari_segany.checkpoints import build_with_weights
from napari_segany.models.allocator import keep_scratch_memory
from napari_segany.sam import SAM_MODELS, SamEmbedding, SamPredictor, build_sam
from napari_segany.sam.predictor import model_identity

folder, clicks = sys.argv[1], int(sys.argv[2])
arch = SAM_MODELS["sam-vit-b"].architecture
state = torch.load(f"{folder}/weights.pt", weights_only=True)
model = build_with_weights(
    lambda: build_sam(arch, name="sam-vit-b"), state, device=torch.device("cpu"),
    dtype=torch.bfloat16,
)
features = torch.load(f"{folder}/embedding.pt", weights_only=True)
predictor = SamPredictor(model)
size = model.image_size
predictor.set_embedding_state(SamEmbedding(features, (size, size), (size, size), model_identity(model)))
point, label = np.array([[size * 0.4, size * 0.6]]), np.array([1])

def click():
    _, scores, low_res = predictor.predict(
        point_coords=point, point_labels=label, return_low_res_only=True
    )
    return predictor.upscale_mask(low_res, int(np.argmax(scores)), crop=True)

for _ in range(10):
    click()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
times = []
for _ in range(clicks):
    start = time.perf_counter()
    click()
    times.append(time.perf_counter() - start)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
print(json.dumps({"state": keep_scratch_memory(), "median_ms": statistics.median(times) * 1e3,
                  "faults_per_click": faults / clicks}))
"""


def write_inputs(folder: Path) -> None:
    """bench_sam.py's random ViT-B weights (bf16) and the embedding of its random image."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from transformers import SamModel

    from bench_sam import randomize, transformers_config
    from napari_segany.checkpoints import build_with_weights
    from napari_segany.sam import SAM_MODELS, build_sam
    from napari_segany.sam.checkpoint_layouts import rename_transformers_keys

    arch = SAM_MODELS["sam-vit-b"].architecture
    torch.manual_seed(0)
    reference = SamModel(transformers_config(arch)).eval()
    randomize(reference)
    state = rename_transformers_keys(reference.state_dict())
    del reference
    model = build_with_weights(
        lambda: build_sam(arch, name="sam-vit-b"),
        state,
        device=torch.device("cpu"),
        dtype=torch.bfloat16,
    )
    size = arch.image_size
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        features = model.embed_image(pixels)
    torch.save(model.state_dict(), folder / "weights.pt")
    torch.save(features, folder / "embedding.pt")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="processes per setting")
    parser.add_argument("--clicks", type=int, default=100, help="timed clicks per process")
    args = parser.parse_args()
    settings = {
        "package (thresholds kept)": "1",
        "glibc's own (NAPARI_SEGANY_MALLOC_TUNING=0)": "0",
    }
    results: dict[str, list[dict]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as tmp:
        write_inputs(Path(tmp))
        for round_ in range(args.rounds):
            for name, value in settings.items():
                env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
                env["NAPARI_SEGANY_MALLOC_TUNING"] = value
                out = subprocess.run(
                    [sys.executable, "-c", _CHILD, tmp, str(args.clicks)],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                result = json.loads(out.strip().splitlines()[-1])
                results[name].append(result)
                print(
                    f"round {round_ + 1} {name:44s}: click -> shown mask median "
                    f"{result['median_ms']:6.2f} ms, {result['faults_per_click']:7.1f} page "
                    f"faults per click ({result['state']})"
                )
    medians = {
        name: statistics.median(r["median_ms"] for r in runs) for name, runs in results.items()
    }
    for name, runs in results.items():
        faults = statistics.median(r["faults_per_click"] for r in runs)
        print(
            f"{name:44s}: median of the runs' medians {medians[name]:6.2f} ms, "
            f"{faults:.1f} page faults per click"
        )
    kept, own = medians.values()
    print(f"ratio kept / glibc's own: {kept / own:.3f}")
    print(
        f"load average now: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
