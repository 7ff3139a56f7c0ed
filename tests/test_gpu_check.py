"""benchmarks/gpu_check.py: the --small CPU run of all six parts (the CI check of the prepared GPU
script), a failing part recorded while the others run, and an isolated part killed at its limit."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, float]:
    output = tmp_path_factory.mktemp("gpu_check") / "report"
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, str(SCRIPT), "--small", "--device", "cpu", "--output", str(output)],
                               capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    return completed, output, time.perf_counter() - started


def test_small_run_passes_every_part(small_run) -> None:
    completed, output, _ = small_run
    report = json.loads((output / "report.json").read_text())
    failures = {part: entry.get("error") for part, entry in report["parts"].items() if entry["status"] != "ok"}
    assert completed.returncode == 0 and not failures, (failures, completed.stdout[-3000:], completed.stderr[-3000:])
    assert list(report["parts"]) == ["table1", "priors", "training", "restoration", "ddp", "correctness"]
    assert sorted(path.name for path in output.iterdir()) == ["report.json", "report.md"]  # nothing else in the output
    assert "| table1 | ok |" in completed.stdout and "| correctness | ok |" in completed.stdout  # the summary table


def test_small_run_numbers_hang_together(small_run) -> None:
    _, output, _ = small_run
    parts = {part: entry["results"] for part, entry in json.loads((output / "report.json").read_text())["parts"].items()}
    table1 = parts["table1"]
    assert table1["tiny"]["checkpoint"]["format"] == "robustsam-official"  # written in the release's format, read back
    for precision in ("fp32", "bf16"):
        row = table1["tiny"][precision]
        assert row["time_ratio"] == pytest.approx(row["robust"]["median_ms"] / row["sam"]["median_ms"])
        assert row["sam"]["runs"] == row["robust"]["runs"] >= 1
    for variant in ("sam_thresholds", "every_mask"):
        rows = parts["priors"][variant]
        assert rows["RobustSAMPrior"]["cache_bytes_per_frame"] > 0
        assert rows["robust_over_sam"] == pytest.approx(rows["RobustSAMPrior"]["seconds_per_frame"]
                                                        / rows["SAMPrior"]["seconds_per_frame"])
    training = parts["training"]["tiny"]
    assert training["feature_cache"]["fill_cache_counts"]["misses"] > 0 and training["feature_cache"]["cache_bytes"] > 0
    for task in ("deblur", "dehaze"):
        assert all(parts["restoration"][task][precision]["iterations"] >= 1 for precision in ("fp32", "bf16"))
    restore = parts["restoration"]["deblur"]["restore"]
    assert restore["full_frame"]["output_finite"] and restore["tiled"]["output_finite"]
    worker = parts["ddp"]["worker"]
    assert worker["backend"] == "gloo" and worker["metrics"]["iterations"] == 2 and worker["all_reduce_error"] == 0
    # on the CPU the device is the CPU: the float64 reference is the informative comparison
    assert parts["correctness"]["deblur"]["device_vs_cpu_float64"] < 1e-5
    markdown = (output / "report.md").read_text()
    assert "## table1: ok" in markdown and "1.036x" in markdown


def test_a_failing_part_is_recorded_and_the_others_run(gpu_check, tmp_path: Path, monkeypatch) -> None:
    def broken(check) -> None:
        check.record("partial", 1)
        raise ValueError("planted failure")

    def fine(check) -> None:
        check.record("value", 2)
        check.headline = "fine"

    monkeypatch.setitem(gpu_check.PART_FUNCTIONS, "table1", broken)
    monkeypatch.setitem(gpu_check.PART_FUNCTIONS, "priors", fine)
    output = tmp_path / "report"
    status = gpu_check.main(["--small", "--device", "cpu", "--isolate", "no", "--parts", "table1,priors",
                             "--output", str(output), "--work", str(tmp_path / "work")])
    report = json.loads((output / "report.json").read_text())
    assert status == 1
    assert report["parts"]["table1"]["status"] == "failed" and "planted failure" in report["parts"]["table1"]["error"]
    assert report["parts"]["table1"]["results"]["partial"] == 1  # what it measured before failing is kept
    assert report["parts"]["priors"]["status"] == "ok" and report["parts"]["priors"]["results"] == {"value": 2}
    with pytest.raises(SystemExit, match="exists"):  # a report is never overwritten silently
        gpu_check.main(["--small", "--device", "cpu", "--parts", "priors", "--output", str(output)])


def test_an_isolated_part_is_killed_at_its_hard_limit(gpu_check, tmp_path: Path) -> None:
    args = gpu_check.parse_args(["--small", "--device", "cpu", "--output", str(tmp_path / "report")])
    started = time.perf_counter()
    entry = gpu_check.run_part_isolated("ddp", args, tmp_path, budget=0.5, grace=1.0)
    assert entry["status"] == "killed" and "hard limit" in entry["error"]
    assert time.perf_counter() - started < 15


def test_full_scale_refuses_the_cpu(gpu_check) -> None:
    with pytest.raises(SystemExit, match="need a GPU"):
        gpu_check._resolve_device("cpu", small=False)
