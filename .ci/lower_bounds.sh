#!/usr/bin/env bash
# Lower-bound check: install the oldest napari / numpy / torch / magicgui / scikit-image that
# pyproject.toml claims (.ci/lower-bounds.txt, applied with `pip -c`) into a fresh virtual
# environment, then run the fast tests (everything not marked slow) against them under Xvfb.
set -euxo pipefail
cd "$(dirname "$0")/.."

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q torch==2.13.0  # the oldest torch claimed; the CPU build from the local wheel
"$py" -m pip install -q -c .ci/lower-bounds.txt -e ".[testing]"
"$py" -m pip list 2>/dev/null | grep -iE "^(napari|numpy|torch|magicgui|scikit-image|qtpy|pyqt6|pyside6) "
xvfb-run -a "$py" -m pytest -q -m "not slow" -p no:cacheprovider
# Leave the checkout's editable install pointing at the main interpreter's environment.
