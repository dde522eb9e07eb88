"""Finding the inputs of a batch run: files, folders, globs and zarr arrays, each with an output name.

No array is read here: :func:`discover_inputs` only looks at paths. Opening and reading slices is
:mod:`napari_segany.batch.volumes`.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "IMAGE_SUFFIXES",
    "InputSpec",
    "MissingInput",
    "discover_inputs",
    "is_zarr_store",
    "split_zarr_path",
]

TIFF_SUFFIXES = (".tif", ".tiff")
PLAIN_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_SUFFIXES = TIFF_SUFFIXES + PLAIN_IMAGE_SUFFIXES
ZARR_METADATA = (".zarray", ".zgroup", "zarr.json")
_GLOB_CHARACTERS = "*?["
OUTPUT_SUFFIXES = ("_labels.tif", "_labels.zarr")


@dataclass(frozen=True)
class InputSpec:
    """One input of a batch run, not yet opened.

    Attributes
    ----------
    path
        The file, or the zarr store's root folder.
    kind
        ``"tiff"``, ``"image"`` (PNG / JPEG) or ``"zarr"``.
    array_path
        Inside a zarr store, the array's path (``"0"``); ``""`` for the root (an array, or an
        OME-Zarr / single-array group, resolved when opened).
    name
        Output base name: the file's stem (``cells`` for ``cells.tif``), the store's stem plus its
        non-numeric array path parts for zarr (``volume`` for ``volume.zarr/0``).
    subfolder
        Folder of the input relative to the folder argument it was found in (``""`` otherwise);
        outputs mirror it.
    """

    path: str
    kind: str
    array_path: str = ""
    name: str = ""
    subfolder: str = ""

    @property
    def label(self) -> str:
        """How the input is named in messages and the run record."""
        return f"{self.path}/{self.array_path}" if self.array_path else self.path


@dataclass(frozen=True)
class MissingInput:
    """An input argument that names nothing readable (a missing file, a glob without matches)."""

    argument: str
    reason: str


def is_zarr_store(path: Path) -> bool:
    """Whether ``path`` is a folder holding zarr (v2 or v3) metadata or is named ``*.zarr``."""
    if not path.is_dir():
        return False
    return path.suffix == ".zarr" or any((path / name).is_file() for name in ZARR_METADATA)


def split_zarr_path(text: str) -> tuple[Path, str] | None:
    """``volume.zarr/0/`` -> (``volume.zarr``, ``"0"``); None when no component is a zarr store."""
    path = Path(text)
    parts = path.parts
    for index in range(1, len(parts) + 1):
        candidate = Path(*parts[:index])
        if candidate.suffix == ".zarr" or (
            is_zarr_store(candidate)
            and not any((candidate.parent / m).is_file() for m in ZARR_METADATA)
        ):
            return candidate, "/".join(parts[index:])
    return None


def _stem(path: Path) -> str:
    """File name without its suffix, and without ``.ome`` (``cells.ome.tif`` -> ``cells``)."""
    return path.stem.removesuffix(".ome")


def _zarr_name(store: Path, array_path: str) -> str:
    extra = [p for p in array_path.split("/") if p and not p.isdigit()]
    return "_".join([_stem(store), *extra])


def _spec_for_file(path: Path, subfolder: str = "") -> InputSpec | None:
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return InputSpec(str(path), "tiff", name=_stem(path), subfolder=subfolder)
    if suffix in PLAIN_IMAGE_SUFFIXES:
        return InputSpec(str(path), "image", name=_stem(path), subfolder=subfolder)
    return None


def _inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _earlier_output(path: Path, out_dir: Path | None) -> bool:
    """Whether ``path`` is a result of an earlier run (``*_labels.tif|zarr`` in the output folder)."""
    return path.name.endswith(OUTPUT_SUFFIXES) and _inside(path, out_dir)


def _scan_folder(folder: Path, recursive: bool, exclude: Path | None) -> list[InputSpec]:
    found: list[InputSpec] = []
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        subfolder = os.path.relpath(root, folder)
        subfolder = "" if subfolder == "." else subfolder
        keep_dirs = []
        for name in sorted(dirs):
            child = root_path / name
            if _earlier_output(child, exclude) or name.startswith("."):
                continue
            if is_zarr_store(child):
                found.append(InputSpec(str(child), "zarr", "", _zarr_name(child, ""), subfolder))
            elif recursive:
                keep_dirs.append(name)
        dirs[:] = keep_dirs
        for name in sorted(files):
            spec = _spec_for_file(root_path / name, subfolder)
            if spec is not None and not _earlier_output(root_path / name, exclude):
                found.append(spec)
        if not recursive:
            break
    return found


def discover_inputs(
    arguments: list[str], *, recursive: bool = False, exclude: str | os.PathLike | None = None
) -> tuple[list[InputSpec], list[MissingInput]]:
    """Turn command-line input arguments into inputs, in argument order, without duplicates.

    Parameters
    ----------
    arguments
        Files (``.tif``, ``.tiff``, ``.png``, ``.jpg``, ``.jpeg``), folders (their image files and
        zarr stores; sub-folders with ``recursive``), globs (``"plate*/*.tif"``, ``**`` with
        ``recursive``) and zarr arrays (``volume.zarr``, ``volume.zarr/0``).
    recursive
        Descend into sub-folders of folder arguments (outputs mirror them).
    exclude
        The output folder: results of earlier runs in it (``*_labels.tif``, ``*_labels.zarr``)
        are not taken as inputs when a folder or glob is searched.

    Returns
    -------
    tuple
        The inputs found, and the arguments that named nothing usable (missing paths, globs
        without matches, unsupported file types, empty folders), each with the reason. Inputs
        whose outputs would collide are renamed: ``a.png`` and ``a.tif`` give ``a_labels.tif``
        and ``a_tif_labels.tif``.
    """
    exclude_path = Path(exclude) if exclude is not None else None
    specs: list[InputSpec] = []
    missing: list[MissingInput] = []
    for argument in arguments:
        if any(c in argument for c in _GLOB_CHARACTERS) and not Path(argument).exists():
            matches = sorted(glob.glob(argument, recursive=recursive))
            found = []
            for match in matches:
                if _earlier_output(Path(match), exclude_path):
                    continue
                found.extend(_specs_for_path(Path(match), recursive=False, exclude=exclude_path))
            if not found:
                missing.append(MissingInput(argument, "no image file or zarr store matches"))
            specs.extend(found)
            continue
        zarr_parts = split_zarr_path(argument)
        if zarr_parts is not None:
            store, array_path = zarr_parts
            if not store.is_dir():
                missing.append(MissingInput(argument, "no such zarr store"))
                continue
            specs.append(InputSpec(str(store), "zarr", array_path, _zarr_name(store, array_path)))
            continue
        path = Path(argument)
        if not path.exists():
            missing.append(MissingInput(argument, "no such file or folder"))
            continue
        found = _specs_for_path(path, recursive=recursive, exclude=exclude_path)
        if not found:
            reason = (
                "no image file or zarr store in this folder"
                if path.is_dir()
                else f"unsupported file type (use {', '.join(IMAGE_SUFFIXES)} or a zarr store)"
            )
            missing.append(MissingInput(argument, reason))
        specs.extend(found)
    return _distinct_output_names(list(dict.fromkeys(specs))), missing


def _distinct_output_names(specs: list[InputSpec]) -> list[InputSpec]:
    """Rename inputs whose outputs would collide (``a.png`` and ``a.tif``: ``a_tif``, ...)."""
    seen: set[tuple[str, str, bool]] = set()
    result = []
    for spec in specs:
        slot = (spec.subfolder, spec.name, spec.kind == "zarr")
        if slot in seen:
            suffix = Path(spec.path).suffix.lstrip(".").lower() or spec.kind
            name = f"{spec.name}_{suffix}"
            number = 2
            while (spec.subfolder, name, slot[2]) in seen:
                name, number = f"{spec.name}_{suffix}{number}", number + 1
            spec = dataclasses.replace(spec, name=name)
            slot = (spec.subfolder, name, slot[2])
        seen.add(slot)
        result.append(spec)
    return result


def _specs_for_path(path: Path, *, recursive: bool, exclude: Path | None) -> list[InputSpec]:
    if is_zarr_store(path):
        return [InputSpec(str(path), "zarr", "", _zarr_name(path, ""))]
    if path.is_dir():
        return _scan_folder(path, recursive, exclude)
    spec = _spec_for_file(path)
    return [spec] if spec is not None else []
