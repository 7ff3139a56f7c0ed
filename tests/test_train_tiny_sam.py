"""Smoke test of recipes/train_tiny_sam.py: a few iterations, atomic checkpoints, exact resume."""
from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_recipe() -> ModuleType:
    """Import ``recipes/train_tiny_sam.py`` (the recipes folder is not a package)."""
    spec = importlib.util.spec_from_file_location("train_tiny_sam", REPO_ROOT / "recipes" / "train_tiny_sam.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recipe() -> ModuleType:
    return load_recipe()


@pytest.fixture
def small_config(recipe: ModuleType) -> dict:
    """The shipped config shrunk to 4 train scenes, 2 x 2 prompts and 3 iterations."""
    config = recipe.load_config(REPO_ROOT / "recipes" / "configs" / "tiny_sam.yaml")
    config["data"].update(train_scenes=4, test_scenes=1, quick_eval_scenes=1)
    config["batch"].update(images=2, prompts_per_image=2)
    config["optimizer"].update(iterations=3, warmup_iterations=1)
    config["logging"].update(quick_eval_every=1000, log_every=1)
    return config


def loss_at(output: Path, iteration: int) -> float:
    """The logged loss of ``iteration`` in ``output/losses.csv``."""
    with open(output / "losses.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if int(row["iteration"]) == iteration]
    assert len(rows) == 1, f"expected one row for iteration {iteration}, got {rows}"
    return float(rows[0]["loss"])


def test_train_checkpoint_and_exact_resume(recipe: ModuleType, small_config: dict, tmp_path: Path) -> None:
    uninterrupted = recipe.train(small_config, tmp_path / "full", export=False)
    assert uninterrupted["iteration"] == 3
    assert math.isfinite(uninterrupted["last_loss"])
    assert all(math.isfinite(loss_at(tmp_path / "full", step)) for step in (1, 2, 3))
    assert 0.0 <= uninterrupted["metrics"]["single_point_iou"] <= 1.0
    assert (tmp_path / "full" / "metrics.json").is_file()

    interrupted = tmp_path / "interrupted"
    assert recipe.train(small_config, interrupted, stop_after=2, export=False)["iteration"] == 2
    checkpoint_path = interrupted / recipe.CHECKPOINT_NAME
    assert torch.load(checkpoint_path, map_location="cpu", weights_only=False)["iteration"] == 2
    assert not list(interrupted.glob(".*.tmp")), "temporary checkpoint files must be moved into place"
    assert not (interrupted / "metrics.json").exists()

    resumed = recipe.train(small_config, interrupted, resume=True, export=False)
    assert resumed["iteration"] == 3
    assert loss_at(interrupted, 1) == loss_at(tmp_path / "full", 1)
    assert loss_at(interrupted, 3) == pytest.approx(loss_at(tmp_path / "full", 3), rel=1e-6)


def test_atomic_write_keeps_the_old_file_on_failure(recipe: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    recipe.save_training_state(path, {"iteration": 1})

    def failing_write(handle) -> None:
        handle.write(b"partial")
        raise RuntimeError("interrupted while writing")

    with pytest.raises(RuntimeError):
        recipe.atomic_write(path, failing_write)
    assert torch.load(path, weights_only=False) == {"iteration": 1}
    assert not list(tmp_path.glob(".*.tmp"))
