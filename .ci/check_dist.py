"""Check that the built sdist and wheel hold everything the plugin needs at run time.

Usage: ``python3 .ci/check_dist.py dist/``. Exits 1 and names what is missing.
"""

from __future__ import annotations

import sys
import tarfile
import zipfile
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = SOURCE_ROOT / "src" / "napari_segany"


def expected_package_files() -> set[str]:
    """Every module and data file of the package, as paths inside a wheel."""
    files = {
        str(path.relative_to(PACKAGE.parent))
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in {".py", ".yaml"}
    }
    files.add("napari_segany/_version.py")  # written by setuptools-scm at build time
    return files


def main(dist: Path) -> int:
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        print(f"expected one wheel and one sdist in {dist}, found {wheels + sdists}")
        return 1
    problems: list[str] = []

    wheel_names = set(zipfile.ZipFile(wheels[0]).namelist())
    missing = sorted(expected_package_files() - wheel_names)
    problems += [f"wheel lacks {name}" for name in missing]
    dist_info = [n for n in wheel_names if ".dist-info/" in n]
    if not any(n.endswith("licenses/LICENSE") for n in dist_info):
        problems.append("wheel lacks the LICENSE file in its .dist-info/licenses/")
    entry_points = next((n for n in dist_info if n.endswith("entry_points.txt")), None)
    if entry_points is None:
        problems.append("wheel has no entry_points.txt")
    else:
        text = zipfile.ZipFile(wheels[0]).read(entry_points).decode()
        if "[napari.manifest]" not in text or "napari_segany:napari.yaml" not in text:
            problems.append("wheel does not register the napari.manifest entry point")
    metadata = next(n for n in dist_info if n.endswith("/METADATA"))
    metadata_text = zipfile.ZipFile(wheels[0]).read(metadata).decode()
    for field in ("License-Expression: Apache-2.0", "Classifier: Framework :: napari"):
        if field not in metadata_text:
            problems.append(f"wheel METADATA lacks '{field}'")

    with tarfile.open(sdists[0]) as sdist:
        sdist_names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for needed in (
        "LICENSE",
        "README.md",
        "pyproject.toml",
        "src/napari_segany/napari.yaml",
        "CHANGELOG.md",
        "CITATION.cff",
    ):
        if needed not in sdist_names:
            problems.append(f"sdist lacks {needed}")

    for problem in problems:
        print(problem)
    print(
        f"checked {wheels[0].name} ({len(wheel_names)} files) and {sdists[0].name}: "
        f"{'OK' if not problems else f'{len(problems)} problem(s)'}"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "dist")))
