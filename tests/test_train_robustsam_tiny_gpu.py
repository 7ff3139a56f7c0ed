"""The one-command GPU run of RobustSAM-tiny (recipes/train_robustsam_tiny_gpu.py, robustsam/gpu_run.py),
checked with --small on the CPU so that it is known to work before it meets a GPU."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from robustprior.load import load_model
from robustprior.training.robustsam import gpu_run

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPE = REPO_ROOT / "recipes" / "train_robustsam_tiny_gpu.py"


def test_small_run_trains_evaluates_and_writes_at_most_eight_small_files(tmp_path: Path) -> None:
    output, work = tmp_path / "out", tmp_path / "work"
    completed = subprocess.run([sys.executable, str(RECIPE), "--small", "--output", str(output), "--work", str(work)],
                               cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    recipe = gpu_run
    names = sorted(path.name for path in output.iterdir())
    assert names == sorted(recipe.OUTPUT_FILES) and len(names) <= 8
    assert all((output / name).stat().st_size <= 16 * 2**20 for name in names)
    # the run: fresh degraded images made by two worker processes on the CPU, no feature cache
    config = yaml.safe_load((output / "config.yaml").read_text())
    assert config["device"] == "cpu" and not config["feature_cache"]["enabled"] and config["data"]["workers"] == 2
    assert not (work / "run" / "feature_cache").exists() and (work / "run" / "checkpoints").is_dir()
    with open(output / "curve.csv", newline="") as handle:
        assert [int(row["iteration"]) for row in csv.DictReader(handle)] == [0, 2]
    # the weights: float16 in the bundled format, trained robust parts, the evaluated file
    with safe_open(str(output / recipe.WEIGHTS_NAME), framework="pt") as handle:
        metadata = handle.metadata()
        assert {handle.get_tensor(key).dtype for key in handle.keys()} <= {torch.float16, torch.int64}
    assert metadata["robust_parts"] == "trained" and metadata["iterations"] == "2"
    model, _ = load_model(output / recipe.WEIGHTS_NAME, announce=False)
    final, _ = load_model(work / "run" / "final.safetensors", announce=False, allow_untrained_robust=True)
    for name, tensor in final.robust.state_dict().items():
        expected = tensor.half().float() if tensor.is_floating_point() else tensor
        torch.testing.assert_close(model.robust.state_dict()[name], expected)
    # the report: both held-out seed sets, both prompts, the numbers of the Table 2 evaluation it ran
    report = json.loads((output / "report.json").read_text())
    assert set(report["evaluation"]) == {"1000", "5000"} and report["training"]["iterations"] == 2
    assert 0 < report["training"]["batch_seconds"] < report["training"]["seconds"]
    for seed, info in report["evaluation"].items():
        evaluated = json.loads((work / f"eval_{seed}" / "report.json").read_text())
        assert evaluated["protocol"]["checkpoint"] == str(output / recipe.WEIGHTS_NAME)
        assert evaluated["kinds"] == recipe.SMALL_KINDS
        for prompt in ("point", "box"):
            for row, cells in evaluated["paired"][prompt].items():
                assert info["paired"][prompt][row]["diff"] == pytest.approx(100 * cells["diff"])
                assert info["paired"][prompt][row]["low"] == pytest.approx(100 * cells["low"])
    paired = {int(seed): info["paired"] for seed, info in report["evaluation"].items()}
    assert report["verdict"] == recipe.verdict(paired)
    text = (output / "report.md").read_text()
    assert "| 1000 | point |" in text and "| 5000 | box |" in text and "Target (issue 21" in text


def _paired(point_degrade: tuple[float, float], point_clear: float, box_degrade: float) -> dict:
    diff, low = point_degrade
    return {"point": {"Degrade": {"diff": diff, "low": low, "high": diff + 1}, "Clear": {"diff": point_clear}},
            "box": {"Degrade": {"diff": box_degrade}}}


def test_verdict_needs_every_part_of_the_target_on_every_seed_set() -> None:
    verdict = gpu_run.verdict
    good = _paired((4.5, 2.5), -0.4, 1.0)
    assert verdict({1000: good, 5000: good})["met"]
    assert not verdict({1000: good, 5000: _paired((3.9, 2.5), 0.0, 1.0)})["met"]  # gain below +4
    assert not verdict({1000: good, 5000: _paired((4.5, 1.9), 0.0, 1.0)})["met"]  # interval reaches below +2
    assert not verdict({1000: _paired((4.5, 2.5), -0.6, 1.0), 5000: good})["met"]  # Clear more than 0.5 below
    assert verdict({1000: _paired((4.5, 2.5), 1.5, 1.0), 5000: good})["met"]  # a Clear gain is no failure
    failed = verdict({1000: good, 5000: _paired((4.5, 2.5), 0.0, -0.1)})  # boxes the other way
    assert not failed["met"] and failed["checks"]["5000"] == {
        "point_degrade_gain": True, "point_degrade_low": True, "point_clear_within": True,
        "box_degrade_positive": False}


def test_no_gpu_and_a_used_output_folder_are_errors_before_any_work(tmp_path: Path, monkeypatch) -> None:
    recipe = gpu_run
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match=r"--device cuda: no CUDA GPU is visible"):
        recipe.main(["--output", str(tmp_path / "out"), "--work", str(tmp_path / "work")])
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="exists and is not an empty folder"):
        recipe.main(["--small", "--output", str(used), "--work", str(tmp_path / "work")])
    assert (used / "notes.txt").read_text() == "mine" and not (tmp_path / "out").exists()
    assert not (tmp_path / "work").exists()
