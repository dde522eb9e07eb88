"""``python -m napari_segany``: the ``napari-segany`` command line."""

from napari_segany.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
