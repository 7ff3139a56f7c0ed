"""robustprior.training.robustsam.export (recipes/export_robustsam_tiny.py): float16 bundle of a finished run and its model card."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from robustprior.training.robustsam.export import evaluation_table, export  # noqa: E402
from robustprior.load import build_robust_sam, load_model  # noqa: E402
from robustprior.io.checkpoint import save_checkpoint  # noqa: E402


def hand_report() -> dict:
    """A report.json in `robustprior eval`'s layout with hand-picked values."""
    def table(degrade: float, clear: float) -> dict:
        return {"table": {"Degrade": {"IoU": degrade, "PA": 0.9}, "Clear": {"IoU": clear, "PA": 0.95},
                          "Average": {"IoU": (15 * degrade + clear) / 16, "PA": None}}}
    return {"protocol": {"images": 3, "instances": 7, "severity": 1.0}, "kinds": ["identity", "fog"],
            "results": {"sam": {"point": table(0.5, 0.7)}, "robust": {"point": table(0.6, 0.695)}}}


@pytest.fixture
def finished_run(tmp_path: Path) -> Path:
    """A run folder as `robustprior train` leaves it (random robust parts, hand metrics)."""
    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(0)
    save_checkpoint(build_robust_sam("tiny", random_init=True), run / "final.safetensors", {"iterations": "12"})
    save_checkpoint(build_robust_sam("tiny", random_init=True), run / "best.safetensors", {"iteration": "8"})  # other weights
    shutil.copy(REPO_ROOT / "robustprior" / "configs" / "robustsam_tiny.yaml", run / "config.yaml")
    (run / "metrics.json").write_text(json.dumps({"iterations": 12, "seconds": 90.0, "val_iou_robust": 0.61,
                                                  "val_iou_sam": 0.52, "best_val_iou_robust": 0.63}))
    return run


def test_evaluation_table_in_percent() -> None:
    table = evaluation_table(hand_report())
    assert "| SAM-tiny | 50.00 | 90.00 | 70.00 | 95.00 | 51.25 | - |" in table
    assert "| RobustSAM-tiny | 60.00 | 90.00 | 69.50 | 95.00 | 60.59 | - |" in table


def test_export_writes_float16_weights_and_card(finished_run: Path, tmp_path: Path) -> None:
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    (evaluation / "report.json").write_text(json.dumps(hand_report()))
    settings = {"sam": {"points_per_side": 8, "pred_iou_thresh": 0.7, "stability_score_thresh": 0.5},
                "robust": {"points_per_side": 8, "pred_iou_thresh": 0.6, "stability_score_thresh": 0.5}}
    weights, card = export(finished_run, tmp_path / "bundle" / "robustsam_tiny.safetensors", evaluation,
                           amg_settings=settings)
    source = load_model(weights)[1]
    assert source.generator_settings("robust")["pred_iou_thresh"] == 0.6 and source.robust_trained
    assert source.generator_settings("sam") == {**settings["sam"], "box_nms_thresh": 0.7, "min_mask_region_area": 0}

    def assert_float16_copy(source: Path, exported_path: Path) -> None:
        original, exported = load_model(source)[0], load_model(exported_path)[0]
        for name, tensor in original.state_dict().items():
            if tensor.is_floating_point():
                assert torch.equal(exported.state_dict()[name], tensor.half().float()), name

    assert_float16_copy(finished_run / "best.safetensors", weights)  # the default: best validation checkpoint
    assert weights.stat().st_size < 0.6 * (finished_run / "best.safetensors").stat().st_size
    text = card.read_text()
    assert card == weights.with_suffix(".md")
    assert "RobustSAM 0.6100, SAM 0.5200; best RobustSAM 0.6300" in text
    assert "(`best.safetensors`, iteration 8)" in text
    assert "| RobustSAM-tiny | 60.00 |" in text
    # iterations run (metrics.json), batch and recipe from the run's config.yaml
    assert "12 iterations of 4 images x up to 4 prompts" in text and "paper consistency" in text
    assert "scaled to a 512-px reference" in text
    assert "initialised as SAM's decoder" in text  # model.robust_init of the run's config

    final_weights, final_card = export(finished_run, tmp_path / "final.safetensors", which="final",
                                       amg_settings=settings)
    assert_float16_copy(finished_run / "final.safetensors", final_weights)
    assert "the final iteration" in final_card.read_text()
    # a run saved with the key names of 0.4.0 (seed, train.iterations / batch_size / warmup): the same card
    text = (finished_run / "config.yaml").read_text()
    for now, then in (("manual_seed:", "seed:"), ("  total_iter:", "  iterations:"),
                      ("  batch_size_per_gpu:", "  batch_size:"), ("  warmup_iter:", "  warmup:")):
        assert now in text
        text = text.replace(now, then)
    (finished_run / "config.yaml").write_text(text)
    old_card = export(finished_run, tmp_path / "old" / "final.safetensors", which="final", amg_settings=settings)[1]
    assert old_card.read_text() == final_card.read_text()


def test_export_refuses_unfinished_run_and_missing_report(finished_run: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no report.json"):
        export(finished_run, tmp_path / "w.safetensors", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="'best' or 'final'"):
        export(finished_run, tmp_path / "w.safetensors", which="last")
    (finished_run / "best.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="use --which final"):
        export(finished_run, tmp_path / "w.safetensors")
    (finished_run / "final.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has not finished"):
        export(finished_run, tmp_path / "w.safetensors")
    assert not (tmp_path / "w.safetensors").exists()
