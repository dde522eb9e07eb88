"""Peak RSS of a SAM propagation through a 64 x 4096^2 stack (lazy zarr image, uint8 labels).

Needs a tiny SAM folder at /tmp/scale/tiny_sam (written by tests.fixtures_sam's tiny config with
``save_pretrained``); random weights, so min_score=0 keeps the object going through the stack.
Usage: python3 benchmarks/probe_sam_propagation_64x4096.py
"""

import resource
import time

import dask.array as da
import numpy as np
import zarr
from napari.layers import Image, Labels

from napari_segany.scripting import load_session, propagate_label_through_stack

D, S = 64, 4096
z = zarr.create_array(
    "/tmp/scale/img64.zarr",
    shape=(D, S, S),
    chunks=(1, S, S),
    dtype="uint8",
    zarr_format=2,
    overwrite=True,
)
yy, xx = np.ogrid[0:S, 0:S]
disk = (yy - 2048) ** 2 + (xx - 2048) ** 2 < 1200**2
rng = np.random.default_rng(0)
for i in range(D):
    plane = rng.integers(0, 60, (S, S), dtype=np.uint8)
    plane[disk] = 200
    z[i] = plane
del plane
labels = np.zeros((D, S, S), dtype=np.uint8)
labels[32][disk] = 1
image = Image(da.from_zarr(z), name="stack")
lab = Labels(labels, name="labels")
session = load_session("/tmp/scale/tiny_sam", device="cpu", precision="fp32")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
t = time.time()
out = propagate_label_through_stack(
    image, lab, 1, (32,), model=session, axis=0, min_score=0.0, min_area=1
)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
print(
    f"slices reached {len(out)}; labelled slices {int((lab.data.reshape(D, -1).max(1) > 0).sum())}; {time.time() - t:.1f} s; peak RSS {peak:.2f} GB (before the call {base:.2f} GB, labels array {labels.nbytes / 1e9:.2f} GB)"
)
