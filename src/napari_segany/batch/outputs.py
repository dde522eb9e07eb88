"""Where and how batch results are written: label TIFFs, zarr label arrays, per-slice progress.

For an input file ``name.ext`` the result is ``OUT/name_labels.tif`` (the input's (H, W) or
(Z, H, W) shape; uint16 when the ids fit, else uint32); for a zarr input it is
``OUT/name_labels.zarr``, a uint32 array chunked like the input's slices (one slice deep). A 2D
result is written at once; a stack is written slice by slice into a zarr store by whichever
process computed the slice (the final zarr, or a partial store next to the TIFF that is converted
to the TIFF at the end, one slice in memory at a time). Every finished slice leaves a small marker
file, so a crashed run resumes where it stopped. Writes are atomic (temporary name, then rename).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_segany.batch.inputs import InputSpec

__all__ = [
    "COMPLETE_ATTRIBUTE",
    "OutputTarget",
    "atomic_write_text",
    "label_tiff_dtype",
    "plan_output",
]

COMPLETE_ATTRIBUTE = "napari_segany_complete"
PROGRESS_FOLDER = ".napari-segany-progress"


def label_tiff_dtype(max_label: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16) if max_label <= np.iinfo(np.uint16).max else np.dtype(np.uint32)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a unique temporary file renamed over it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass(frozen=True)
class OutputTarget:
    """The result of one input: its final path and, for stacks, where slices go meanwhile.

    Attributes
    ----------
    path
        Final output (``.tif`` file or ``.zarr`` folder).
    kind
        ``"tiff"`` or ``"zarr"``.
    label_shape
        Shape of the labels (leading axes, then H, W).
    slice_chunks
        (H, W) chunk size of the zarr store the slices are written into.
    progress_dir
        Folder of the per-slice marker files.
    """

    path: Path
    kind: str
    label_shape: tuple[int, ...]
    slice_chunks: tuple[int, int]
    progress_dir: Path

    @property
    def is_stack(self) -> bool:
        """Whether the labels have leading (stack) axes."""
        return len(self.label_shape) > 2

    @property
    def store_path(self) -> Path:
        """The zarr store slices are written into: the output, or a partial store for a TIFF."""
        if self.kind == "zarr":
            return self.path
        return self.progress_dir / "partial.zarr"

    # -- state on disk -------------------------------------------------------------------------

    def is_complete(self) -> bool:
        """Whether the final output exists (a zarr output also records that it is whole)."""
        if self.kind == "tiff":
            return self.path.is_file()
        if not self.path.is_dir():
            return False
        try:
            import zarr

            return bool(zarr.open_array(self.path, mode="r").attrs.get(COMPLETE_ATTRIBUTE, False))
        except Exception:
            return False

    def done_slices(self) -> dict[tuple[int, ...], dict[str, Any]]:
        """Slices finished by an earlier, interrupted run: key -> marker (objects, max_label)."""
        if not self.progress_dir.is_dir() or not self.store_path.is_dir():
            return {}
        done = {}
        for marker in self.progress_dir.glob("slice-*.json"):
            try:
                info = json.loads(marker.read_text())
                done[tuple(int(i) for i in info["key"])] = info
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return done

    def discard(self) -> None:
        """Remove the output and any partial state (``--overwrite``, or an unusable earlier try)."""
        if self.path.is_dir():
            shutil.rmtree(self.path)
        elif self.path.exists():
            self.path.unlink()
        if self.progress_dir.exists():
            shutil.rmtree(self.progress_dir)

    def prepare_store(
        self, input_chunks: tuple[int, int] | None = None, *, fingerprint: str = ""
    ) -> None:
        """Create the zarr store the slices are written into.

        uint32, one slice deep, chunked like the input's slices along (H, W). The store and the
        slices finished in it are kept when it has the right shape and was started with the same
        ``fingerprint`` (model and parameters); otherwise it is started afresh.
        """
        import zarr

        self.progress_dir.mkdir(parents=True, exist_ok=True)
        store = self.store_path
        started = self.progress_dir / "parameters.json"
        if store.is_dir():
            try:
                existing = zarr.open_array(store, mode="r")
                same = json.loads(started.read_text()).get("fingerprint") == fingerprint
                if tuple(existing.shape) == self.label_shape and same:
                    return
            except Exception:
                pass
            shutil.rmtree(store)
        for marker in self.progress_dir.glob("slice-*.json"):
            marker.unlink()
        atomic_write_text(started, json.dumps({"fingerprint": fingerprint}))
        chunks = (1,) * (len(self.label_shape) - 2) + tuple(input_chunks or self.slice_chunks)
        zarr.create_array(
            store=str(store),
            shape=self.label_shape,
            chunks=chunks,
            dtype="uint32",
            fill_value=0,
            zarr_format=2 if self.kind == "zarr" else 3,
        )

    # -- writing (called by whichever process computed the labels) -------------------------------

    def write_image(self, labels: np.ndarray) -> None:
        """Write the labels of a 2D input: a TIFF, or the whole zarr array."""
        if self.kind == "tiff":
            _write_tiff(self.path, [labels], int(labels.max(initial=0)))
        else:
            self.write_slice((), labels, objects=int(labels.max(initial=0)))

    def write_slice(self, key: tuple[int, ...], labels: np.ndarray, *, objects: int) -> None:
        """Write slice ``key`` into the zarr store and leave its marker."""
        import zarr

        array = zarr.open_array(self.store_path, mode="r+")
        array[tuple(key)] = np.asarray(labels, dtype=np.uint32)
        marker = {
            "key": list(key),
            "objects": int(objects),
            "max_label": int(labels.max(initial=0)),
        }
        name = "slice-" + ("_".join(str(i) for i in key) or "all") + ".json"
        self.progress_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.progress_dir / name, json.dumps(marker))

    def finish(self, max_label: int) -> None:
        """Turn the slices into the final output and remove the partial state.

        A TIFF is written page by page from the partial store (one slice in memory at a time); a
        zarr output is marked complete.
        """
        import zarr

        if self.kind == "tiff":
            if self.is_stack:
                store = zarr.open_array(self.store_path, mode="r")
                pages = (store[key] for key in np.ndindex(*self.label_shape[:-2]))
                _write_tiff(self.path, pages, max_label, shape=self.label_shape)
            shutil.rmtree(self.progress_dir, ignore_errors=True)
            return
        array = zarr.open_array(self.path, mode="r+")
        array.attrs[COMPLETE_ATTRIBUTE] = True
        shutil.rmtree(self.progress_dir, ignore_errors=True)


def _write_tiff(path: Path, pages, max_label: int, shape: tuple[int, ...] | None = None) -> None:
    import tifffile

    dtype = label_tiff_dtype(max_label)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        if shape is None:
            (page,) = list(pages)
            tifffile.imwrite(
                tmp, np.asarray(page).astype(dtype), photometric="minisblack", compression="zlib"
            )
        else:
            # One multi-page series of the full shape, written slice by slice.
            tifffile.imwrite(
                tmp,
                (np.asarray(p).astype(dtype) for p in pages),
                shape=shape,
                dtype=dtype,
                photometric="minisblack",
                compression="zlib",
            )
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def plan_output(
    spec: InputSpec, out_dir: Path, label_shape: tuple[int, ...], slice_chunks: tuple[int, int]
) -> OutputTarget:
    """The output of ``spec`` under ``out_dir`` (mirroring its sub-folder)."""
    folder = out_dir / spec.subfolder if spec.subfolder else out_dir
    kind = "zarr" if spec.kind == "zarr" else "tiff"
    name = f"{spec.name}_labels." + ("zarr" if kind == "zarr" else "tif")
    progress = out_dir / PROGRESS_FOLDER / (f"{spec.subfolder}/{name}" if spec.subfolder else name)
    return OutputTarget(folder / name, kind, tuple(label_shape), slice_chunks, progress)
