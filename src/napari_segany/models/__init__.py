"""Neural network modules (torch only: no numpy pipelines, no napari, no Qt)."""
