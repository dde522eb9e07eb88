"""Root pytest configuration: shared fixtures and the ``gpu`` marker."""

import pytest

# Fixture modules, one per area (each owns its own file).
pytest_plugins = ["tests.fixtures_sam", "tests.fixtures_seggpt"]


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
