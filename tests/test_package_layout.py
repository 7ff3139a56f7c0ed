"""The package layout by role: recipes are thin entry points, and robustprior/ keeps only its public
entry points beside the role folders."""
from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PUBLIC_ENTRY_POINTS = {"__init__.py", "automatic_mask_generator.py", "cli.py", "load.py", "predictor.py", "priors.py"}


def test_recipes_hold_no_library_code() -> None:
    for script in sorted((REPO_ROOT / "recipes").glob("*.py")):
        tree = ast.parse(script.read_text())
        definitions = [node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
        assert not definitions, f"{script.name} defines {definitions}: library code belongs in the package"
        imports = [node for node in tree.body if isinstance(node, ast.ImportFrom) and node.module
                   and node.module.split(".")[0] in ("robustprior", "restoration")]
        assert imports, f"{script.name} should call into the package"


def test_robustprior_top_level_is_entry_points_and_role_folders() -> None:
    top = {path.name for path in (REPO_ROOT / "robustprior").glob("*.py")}
    assert top == PUBLIC_ENTRY_POINTS
    folders = {path.name for path in (REPO_ROOT / "robustprior").iterdir() if (path / "__init__.py").is_file()}
    assert folders == {"data", "evaluation", "io", "modeling", "training"}
