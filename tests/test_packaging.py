"""Release metadata: the manifest validates, the licence and version are declared the modern way, and
the napari hub and citation files are complete and point at files that exist."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_manifest_validates_and_every_command_imports():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-segany")
    manifest.validate_imports()  # raises if a python_name does not resolve
    widget_names = {w.display_name for w in manifest.contributions.widgets}
    assert {"Segment Anything", "In-context segmentation (SegGPT)"} <= widget_names
    commands = {c.id for c in manifest.contributions.commands}
    for widget in manifest.contributions.widgets:
        assert widget.command in commands


def test_licence_is_an_spdx_expression_with_the_file_shipped():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    metadata = importlib.metadata.metadata("napari-segany")
    assert metadata["License-Expression"] == "Apache-2.0"


def test_version_comes_from_the_installed_distribution():
    import napari_segany

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" in project["dynamic"] and "version" not in project
    assert napari_segany.__version__ == importlib.metadata.version("napari-segany")
    assert re.match(r"^\d+\.\d+", napari_segany.__version__)


def test_napari_hub_files_are_complete():
    config = yaml.safe_load((ROOT / ".napari-hub" / "config.yml").read_text())
    assert config["visibility"] == "public"
    assert 20 < len(config["summary"]) <= 150
    assert config["labels"]["ontology"].startswith("EDAM-BIOIMAGING")
    assert "Image segmentation" in config["labels"]["terms"]
    description = (ROOT / ".napari-hub" / "DESCRIPTION.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", description)
    assert len(images) >= 2, "the hub description shows the widget screenshots"
    for image in images:
        assert (ROOT / ".napari-hub" / image).resolve().is_file(), image


def test_citation_and_changelog():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    assert citation["license"] == "Apache-2.0"
    titles = " ".join(ref["title"] for ref in citation["references"])
    for model in ("Segment Anything", "SegGPT", "Grounding DINO"):
        assert model in titles
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## Unreleased" in changelog and "## 0.1.0" in changelog
