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
    # about 30 CPU seconds; the budgets are scaled so that a heavily shared CI machine does not cut a part short
    command = [sys.executable, str(SCRIPT), "--small", "--device", "cpu", "--output", str(output),
               "--budget-scale", "4", "--max-minutes", "30"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=REPO_ROOT)
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
                             "--threads", "0",  # leave this process's torch threads alone
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


def test_an_isolated_part_reports_what_it_measured(gpu_check, tmp_path: Path) -> None:
    """The GPU's default mode: a part in its own process, its entry read back by the parent."""
    args = gpu_check.parse_args(["--small", "--device", "cpu", "--output", str(tmp_path / "report")])
    entry = gpu_check.run_part_isolated("correctness", args, tmp_path, budget=240, grace=60)
    assert entry["status"] == "ok" and entry["isolated"], entry.get("output_tail")
    assert entry["results"]["deblur"]["device_vs_cpu_float64"] < 1e-5 and len(entry["checks"]) == 6


def test_full_scale_refuses_the_cpu(gpu_check) -> None:
    with pytest.raises(SystemExit, match="need a GPU"):
        gpu_check._resolve_device("cpu", small=False)


def test_full_scale_configs_pass_the_schemas(gpu_check, tmp_path: Path) -> None:
    """The full-scale options and trainer configs the GPU run will use are valid (checked without a GPU;
    the data are generated small, the options keep the full-scale batch, crops and networks)."""
    import torch

    from restoration.config import check_options
    from robustprior.training.config import validate_config
    from robustprior.training.robustsam.config import SCHEMA

    sizes = gpu_check.dataclasses.replace(gpu_check.FULL, frame=(72, 128), sots_size=(48, 64))
    check = gpu_check.Check("restoration", torch.device("cpu"), sizes, False, tmp_path, deadline=0.0)
    for task in ("deblur", "dehaze"):
        options = check_options(gpu_check._restoration_options(check, task, {"pred_iou_thresh": 0.5}))
        assert options["datasets"]["train"]["batch_size_per_gpu"] == 32 and options["datasets"]["train"]["gt_size"] == 256
        assert options["network_g"]["width"] == 32
    assert check_options(gpu_check._restoration_options(check, "deblur", {}))["network_g"]["enc_blocks"] == [1, 1, 1, 28]
    for model_type in gpu_check.FULL.training_models:
        config = validate_config(check.training_config(model_type, tmp_path / "weights.pth", 6, True, 2), SCHEMA)
        assert config["train"]["amp"] and config["model"]["type"] == model_type


def test_official_format_checkpoint_loads_back(gpu_check, tmp_path: Path) -> None:
    """The random official-format files are read back as what they claim to be, with the same tensors."""
    import torch

    from robustprior.load import load_model

    check = gpu_check.Check("table1", torch.device("cpu"), gpu_check.SMALL, True, tmp_path, deadline=0.0)
    official, sam = check.checkpoint("tiny", "robustsam"), check.checkpoint("tiny", "sam")
    assert any(key.startswith("mask_decoder.custom_robust_token") for key in torch.load(official, weights_only=True))
    model, source = load_model(official, announce=False)
    assert source.kind == "official" and source.checkpoint_format == "robustsam-official"
    base, sam_source = load_model(sam, decoder_path="sam", announce=False)
    assert sam_source.kind == "sam-only"
    shared = [key for key in base.state_dict() if not key.startswith("robust.")]
    assert all(torch.equal(base.state_dict()[key], model.state_dict()[key]) for key in shared)
