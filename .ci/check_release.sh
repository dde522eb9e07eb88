#!/usr/bin/env bash
# Release checks: build the sdist and the wheel, check them, install the wheel into a fresh virtual
# environment (no access to the checkout or to this machine's site-packages) and smoke-test it there.
set -euxo pipefail
cd "$(dirname "$0")/.."

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip install -q build twine
python3 -m build --sdist --wheel --outdir "$work/dist" .
python3 -m twine check --strict "$work"/dist/*
python3 .ci/check_dist.py "$work/dist"

python3 -m venv "$work/venv"
# The CPU build of torch from the local wheel first, so the wheel's torch requirement pulls no CUDA.
"$work/venv/bin/python" -m pip install -q torch==2.13.0
# As a user installs it: the wheel with its `all` extra (napari, a Qt binding, the batch tools).
wheel="$(ls "$work"/dist/*.whl)"
"$work/venv/bin/python" -m pip install -q "${wheel}[all]" npe2
cp .ci/smoke_test.py "$work/smoke_test.py"
(cd "$work" && xvfb-run -a "$work/venv/bin/python" smoke_test.py)
