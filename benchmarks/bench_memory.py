"""Peak memory (RSS) of the large-image paths: SAM box prediction on a huge plane, SegGPT on a stack.

Each case runs in its own Python process; a thread samples the process RSS every 2 ms (psutil)
during the measured call, and the figure is the peak above the RSS just before the call (so for
SAM it is "above ``set_image``"). Models are tiny random-weight ones (the memory of mask
upscaling and of label stacks does not depend on the encoder): SAM with a 1024 px input (so the
low-resolution masks are 256², as released) and SegGPT with a 32 px half input.

Cases
-----
``sam1`` / ``sam3``
    ``SamPredictor.predict(box=8 boxes)`` on a ``--side``² plane, one / three masks per box.
``samlazy``
    Three candidates per box with ``return_low_res_only=True``, then ``upscale_mask`` of the best
    one per box (what an interactive tool needs).
``seggpt``
    ``segment_stack_with_seggpt`` on a ``--depth`` × ``--slice-side``² zarr stack (one painted
    slice), writing into a zarr output (after only) and returning a numpy array.

``--before REV`` also runs the cases on the package as it was at git revision ``REV`` (exported
with ``git archive`` into a temporary folder), at ``--before-side`` / ``--before-depth``: the old
code holds B × C full-size float maps and full copies of the label stack, so the full sizes would
not fit this shared machine.

Usage::

    python benchmarks/bench_memory.py                      # after, full sizes
    python benchmarks/bench_memory.py --before 2784a9b --before-side 4000 --before-depth 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MEASURE = textwrap.dedent(
    """
    import json, os, resource, threading, time
    import psutil

    def measure(call):
        process = psutil.Process()
        base = process.memory_info().rss
        ru_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak = [base]
        done = threading.Event()

        def poll():
            while not done.is_set():
                peak[0] = max(peak[0], process.memory_info().rss)
                time.sleep(0.002)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        start = time.perf_counter()
        result = call()
        seconds = time.perf_counter() - start
        done.set()
        thread.join()
        ru_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        top = max(peak[0], ru_after if ru_after > ru_before else 0)
        return result, (top - base) / 2**20, base / 2**20, seconds
    """
)

SAM_CASE = textwrap.dedent(
    """
    import numpy as np, torch
    torch.manual_seed(0)
    from napari_segany.sam.loader import build_sam
    from napari_segany.sam.registry import SamArchitecture
    from napari_segany.sam.predictor import SamPredictor
    arch = SamArchitecture(encoder_embed_dim=48, encoder_depth=2, encoder_num_heads=4,
                           encoder_mlp_dim=96, encoder_global_attn_indexes=(1,),
                           prompt_embed_dim=32, mask_in_chans=8, decoder_mlp_dim=64,
                           iou_head_hidden_dim=32)
    model = build_sam(arch, name="tiny-1024").eval().requires_grad_(False)
    with torch.no_grad():  # a box-shaped bias so masks follow the boxes
        model.mask_decoder.iou_token.weight.normal_()
    predictor = SamPredictor(model)
    side = SIDE
    image = np.zeros((side, side), np.uint8)
    image[side // 8 : side // 2, side // 8 : side // 2] = 200
    predictor.set_image(image)
    del image
    rng = np.random.default_rng(0)
    x0 = rng.uniform(0, side * 0.6, 8); y0 = rng.uniform(0, side * 0.6, 8)
    boxes = np.stack([x0, y0, x0 + side * 0.35, y0 + side * 0.35], 1)

    def full():
        masks, scores, low = predictor.predict(box=boxes, multimask_output=MULTI)
        return masks.nbytes

    def lazy():
        _, scores, low = predictor.predict(box=boxes, multimask_output=True,
                                           return_low_res_only=True)
        return sum(predictor.upscale_mask(low, (b, int(np.argmax(scores[b])))).nbytes
                   for b in range(len(boxes)))

    out_bytes, extra, base, seconds = measure(CALL)
    print(json.dumps({"extra_mb": extra, "base_mb": base, "seconds": seconds,
                      "output_mb": out_bytes / 2**20}))
    """
)

SEGGPT_CASE = textwrap.dedent(
    """
    import numpy as np, torch, zarr
    torch.manual_seed(0)
    from napari_segany.models.seggpt import SegGpt, SegGptArchitecture
    from napari_segany.seggpt import SegGptPredictor
    from napari_segany.seggpt.propagation import segment_stack_with_seggpt
    arch = SegGptArchitecture.from_hf_config({
        "image_size": [64, 32], "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 4,
        "num_attention_heads": 2, "mlp_dim": 64, "pretrain_image_size": 16,
        "decoder_hidden_size": 16, "merge_index": 1,
        "intermediate_hidden_state_indices": [1, 2, 3]})
    predictor = SegGptPredictor(SegGpt(arch).eval().requires_grad_(False))
    target = zarr.open_array(FOLDER + "/target.zarr", mode="r")
    labels = zarr.open_array(FOLDER + "/labels.zarr", mode="r")
    if TO_ZARR:
        output = zarr.create_array(FOLDER + "/out.zarr", shape=labels.shape,
                                   chunks=(1,) + labels.shape[1:], dtype="int32",
                                   fill_value=0, overwrite=True)
        call = lambda: segment_stack_with_seggpt(predictor, target, labels, output=output) and 0
    else:
        call = lambda: segment_stack_with_seggpt(predictor, target, labels).nbytes
    out_bytes, extra, base, seconds = measure(call)
    print(json.dumps({"extra_mb": extra, "base_mb": base, "seconds": seconds,
                      "output_mb": out_bytes / 2**20}))
    """
)


def make_stack(folder: Path, depth: int, side: int) -> None:
    """A ``depth`` × ``side``² uint8 zarr stack and int32 labels painted on slice 0."""
    import numpy as np
    import zarr

    target = zarr.create_array(
        str(folder / "target.zarr"),
        shape=(depth, side, side),
        chunks=(1, side, side),
        dtype="uint8",
        overwrite=True,
    )
    ramp = (np.arange(side, dtype=np.uint32)[None, :] * 255 // side).astype(np.uint8)
    for z in range(depth):
        plane = np.broadcast_to(ramp, (side, side)).copy()
        plane[side // 4 : side // 2, side // 4 + z : side // 2 + z] = 255
        target[z] = plane
    labels = zarr.create_array(
        str(folder / "labels.zarr"),
        shape=(depth, side, side),
        chunks=(1, side, side),
        dtype="int32",
        fill_value=0,
        overwrite=True,
    )
    painted = np.zeros((side, side), np.int32)
    painted[side // 4 : side // 2, side // 4 : side // 2] = 1
    labels[0] = painted


def run_case(code: str, pythonpath: str | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    out = subprocess.run(
        [sys.executable, "-c", MEASURE + code], capture_output=True, text=True, env=env
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else out.returncode}
    return json.loads(out.stdout.strip().splitlines()[-1])


def sam_code(case: str, side: int) -> str:
    call = "lazy" if case == "samlazy" else "full"
    multi = "True" if case == "sam3" else "False"
    return SAM_CASE.replace("SIDE", str(side)).replace("CALL", call).replace("MULTI", multi)


def export_revision(revision: str, folder: Path) -> str:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "src/napari_segany"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return str(folder / "src")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=12000, help="SAM plane side (px)")
    parser.add_argument("--depth", type=int, default=64, help="SegGPT stack depth")
    parser.add_argument("--slice-side", type=int, default=4096, help="SegGPT slice side (px)")
    parser.add_argument("--cases", default="sam1,sam3,samlazy,seggpt")
    parser.add_argument("--before", help="git revision to compare with (old code)")
    parser.add_argument("--before-side", type=int, default=4000)
    parser.add_argument("--before-depth", type=int, default=8)
    parser.add_argument(
        "--max-result-gb",
        type=float,
        default=2.0,
        help="skip SegGPT runs whose numpy result would be larger (shared machines)",
    )
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        old = None
        if args.before:
            (tmp_path / "before").mkdir()
            old = export_revision(args.before, tmp_path / "before")
        runs = [("after", None, args.side, args.depth)]
        if old:
            runs.append(("before", old, args.before_side, args.before_depth))
            runs.append(("after", None, args.before_side, args.before_depth))
        for label, path, side, depth in runs:
            for case in cases:
                if case == "seggpt":
                    stack = tmp_path / f"stack{depth}"
                    if not stack.exists():
                        stack.mkdir()
                        make_stack(stack, depth, args.slice_side)
                    size = f"{depth}x{args.slice_side}^2"
                    targets = [("numpy result", False)]
                    if label == "after":
                        targets.insert(0, ("zarr output", True))
                    for how, to_zarr in targets:
                        result_gb = depth * args.slice_side**2 * 4 / 2**30
                        if not to_zarr and result_gb > args.max_result_gb:
                            skipped = {"error": f"skipped: the numpy result is {result_gb:.1f} GB"}
                            rows.append((label, f"seggpt stack, {how}", size, skipped))
                            continue
                        code = SEGGPT_CASE.replace("FOLDER", repr(str(stack))).replace(
                            "TO_ZARR", str(to_zarr)
                        )
                        rows.append((label, f"seggpt stack, {how}", size, run_case(code, path)))
                        print(*rows[-1], flush=True)
                    continue
                if label == "before" and case == "samlazy":
                    continue  # the old predictor has no lazy upscaling
                name = {"sam1": "8 boxes, 1 mask", "sam3": "8 boxes, 3 masks"}.get(
                    case, "8 boxes, best of 3 (lazy)"
                )
                rows.append(
                    (
                        label,
                        f"sam predict {name}",
                        f"{side}^2",
                        run_case(sam_code(case, side), path),
                    )
                )
                print(*rows[-1], flush=True)

    print("\n| code | case | size | peak above start (MB) | output (MB) | time (s) |")
    print("|---|---|---|---|---|---|")
    for label, case, size, result in rows:
        if "error" in result:
            print(f"| {label} | {case} | {size} | error: {result['error']} | | |")
            continue
        print(
            f"| {label} | {case} | {size} | {result['extra_mb']:.0f} | "
            f"{result['output_mb']:.0f} | {result['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
