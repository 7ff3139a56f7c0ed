"""pyproject's dependencies are what the code imports: every third-party import of the packages,
recipes and benchmarks is declared, and every declared dependency is imported (or named below with
the reason it is needed without an import of ours)."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO_ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"robustprior", "restoration", "__future__"}
# Import names whose distribution is named otherwise (every other import name is its distribution's name).
DISTRIBUTIONS = {"PIL": "pillow", "cv2": "opencv-python-headless", "yaml": "pyyaml", "skimage": "scikit-image",
                 "mobile_sam": "mobilesam-mirror", "segment_anything": "segment-anything",
                 "robust_segment_anything": "robust-segment-anything"}
NEEDED_WITHOUT_IMPORT = {
    "timm": "mobile_sam (mobilesam-mirror, which declares no dependencies) imports it",
    "setuptools": "basicsr imports distutils, which Python >= 3.12 only has through setuptools",
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalise(re.match(r"\s*([A-Za-z0-9._-]+)", requirement)[1])


def third_party_imports(*folders: str) -> dict[str, set[str]]:
    """Distribution name -> the files importing it, over every ``.py`` file under ``folders``."""
    found: dict[str, set[str]] = {}
    local = {path.stem for folder in folders for path in (REPO_ROOT / folder).glob("*.py")}  # sibling scripts
    for folder in folders:
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in FIRST_PARTY or top in local:
                        continue
                    found.setdefault(_normalise(DISTRIBUTIONS.get(top, top)), set()).add(
                        str(path.relative_to(REPO_ROOT)))
    return found


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def test_every_import_of_the_code_is_declared_and_every_dependency_used(project: dict) -> None:
    declared = {_requirement_name(requirement) for requirement in project["dependencies"]}
    imported = third_party_imports("robustprior", "restoration", "recipes")
    undeclared = {name: sorted(files) for name, files in imported.items() if name not in declared}
    assert not undeclared, f"imported but not in pyproject's dependencies: {undeclared}"
    unused = declared - set(imported) - set(NEEDED_WITHOUT_IMPORT)
    assert not unused, f"declared but never imported (drop them, or say why they are needed): {sorted(unused)}"


def test_benchmarks_and_tests_import_only_declared_or_test_dependencies(project: dict) -> None:
    declared = {_requirement_name(requirement) for requirement in project["dependencies"]}
    declared |= {_requirement_name(requirement) for requirement in project["optional-dependencies"]["test"]}
    imported = third_party_imports("benchmarks", "tests")
    undeclared = {name: sorted(files) for name, files in imported.items() if name not in declared}
    assert not undeclared, f"imported but declared neither as a dependency nor in the test extra: {undeclared}"
