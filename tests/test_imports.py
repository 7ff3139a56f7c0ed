"""The import graph of the packages: no module imports itself back through others (no cycle), and
the model loader stays apart from the evaluation code.

The graph is read from the source with ``ast`` (nothing is imported): an edge ``a -> b`` for every
``import b`` / ``from b import name`` in module ``a``, at module level or inside a function (a
function-level import that closes a cycle is still a cycle: data must flow one way). ``from pkg import
name`` points at ``pkg.name`` when that is a module, else at ``pkg`` (its ``__init__``).
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("robustprior", "restoration")


def package_modules(root: Path = REPO_ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of ``packages`` under ``root``."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imported_modules(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that ``module`` (source file ``path``) imports anywhere in its body."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the module's package
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {name for name in found if name in modules and name != module}


def import_graph(root: Path = REPO_ROOT) -> dict[str, set[str]]:
    modules = package_modules(root)
    return {module: imported_modules(module, path, modules) for module, path in modules.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    advanced = True
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module that importing ``start`` can import, its packages' ``__init__`` modules included."""
    seen: set[str] = set()
    pending = [start]
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        parents = {".".join(parts[:end]) for end in range(1, len(parts))}  # importing a.b.c runs a and a.b
        pending.extend((graph[module] | parents) & set(graph) - seen)
    return seen


def test_the_cycle_finder_finds_a_planted_cycle_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "robustprior" / "sub").mkdir(parents=True)
    (tmp_path / "restoration").mkdir()
    files = {
        "robustprior/__init__.py": "",
        "robustprior/a.py": "from robustprior.b import thing\n",
        "robustprior/b.py": "def f():\n    from . import c  # a function-level import still counts\n",
        "robustprior/c.py": "import robustprior.a\n",
        "robustprior/sub/__init__.py": "from .d import name\n",
        "robustprior/sub/d.py": "import os\nfrom robustprior.sub import e\n",
        "robustprior/sub/e.py": "from robustprior import a\n",
        "restoration/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert graph["robustprior.sub"] == {"robustprior.sub.d"} and graph["robustprior.sub.d"] == {"robustprior.sub.e"}
    assert import_cycles(graph) == [["robustprior.a", "robustprior.b", "robustprior.c"]]
    assert reachable(graph, "robustprior.sub.e") == {"robustprior.sub.e", "robustprior", "robustprior.sub",
                                                     "robustprior.sub.d", "robustprior.a", "robustprior.b",
                                                     "robustprior.c"}


def test_no_import_cycle_in_the_packages() -> None:
    graph = import_graph()
    assert len(graph) > 50 and "restoration.archs.nafnet" in graph["restoration.archs"]
    cycles = import_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(
        " <-> ".join(f"{module} -> {sorted(graph[module] & set(cycle))}" for module in cycle) for cycle in cycles)


@pytest.mark.parametrize("loader", ["robustprior.load", "robustprior.io.checkpoint", "restoration.archs"])
def test_loaders_do_not_import_the_evaluation_code(loader: str) -> None:
    graph = import_graph()
    evaluation = sorted(module for module in reachable(graph, loader) if module.startswith("robustprior.evaluation"))
    assert not evaluation, f"{loader} imports {evaluation}"


# restoration/ flows one way: recipe engine (table8) -> trainer (train) -> datasets -> priors; a finished
# run is read back (trained_run) without the trainer.
RUN_READERS = ("restoration.trained_run", "restoration.restore", "restoration.prior_swap", "restoration.prior_reliance",
               "restoration.report", "restoration.inference", "restoration.evaluation", "restoration.config",
               "restoration.losses", "restoration.run_priors")


def test_restoration_flows_one_way() -> None:
    """No reader of finished runs reaches the trainer; the trainer reaches neither the recipe engine nor those readers."""
    graph = import_graph()
    assert all(reader in graph for reader in RUN_READERS)
    reaching = [reader for reader in RUN_READERS if "restoration.train" in reachable(graph, reader)]
    assert not reaching, f"{reaching} import restoration.train"
    above = {"restoration.table8", "restoration.recipes", "restoration.restore", "restoration.prior_swap",
             "restoration.prior_reliance", "restoration.report"}
    assert not reachable(graph, "restoration.train") & above


def test_importing_restore_leaves_the_trainer_unimported() -> None:
    code = "import json, sys, restoration.restore; print(json.dumps(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    modules = json.loads(loaded.stdout.splitlines()[-1])
    assert "restoration.trained_run" in modules and "restoration.train" not in modules
