"""The RobustSAM training's learning curve: held-out robust minus SAM point IoU (robustsam/curve.py)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from robustprior.data.sources import build_instance_source
from robustprior.evaluation.evaluate import evaluate_segmentation
from robustprior.io.checkpoint import save_checkpoint
from robustprior.load import build_robust_sam
from robustprior.training.robustsam import RobustSAMTrainer, load_base_model
from robustprior.training.robustsam.curve import LearningCurve, paired_interval

KINDS = ["identity", "gauss_noise", "brightness"]


def _base(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "base.safetensors"
    save_checkpoint(build_robust_sam("tiny", random_init=True), path)
    return path


def _spec(tmp_path: Path) -> dict:
    return {"every": 2, "data": {"format": "scenes", "n_images": 2, "seed": 21, "root": str(tmp_path / "held_out")},
            "kinds": KINDS, "seed": 0, "severity": 1.0, "reference_size": None, "min_area": 64}


def test_paired_interval_is_the_t_interval_of_the_differences() -> None:
    differences = [1.0, 3.0, 2.0, 6.0]
    mean, low, high = paired_interval(differences)
    sd = math.sqrt(sum((value - 3.0) ** 2 for value in differences) / 3)  # 2.1602
    half = 3.182446305284263 * sd / 2.0  # t(0.975, 3) * sd / sqrt(4)
    assert mean == 3.0 and low == pytest.approx(3.0 - half) and high == pytest.approx(3.0 + half)
    assert paired_interval([0.5]) == (0.5, 0.5, 0.5)


def test_curve_scores_are_the_evaluations_and_a_sam_started_robust_path_gains_nothing(tmp_path: Path) -> None:
    """Per-kind point IoU from cached features equals robustprior eval's on the same images; with
    ``robust_init: sam`` the robust path gives SAM's masks up to upsampling, so the first curve point is ~0."""
    model = load_base_model({"type": "tiny", "checkpoint": str(_base(tmp_path)), "robust_init": "sam"}).eval()
    spec = _spec(tmp_path)
    curve = LearningCurve(model, spec)
    scores = curve.scores("sam")
    source = build_instance_source(spec["data"], None, section="curve.data", progress=False)
    reference = evaluate_segmentation(model, source, kinds=KINDS, prompt_types=("point",), paths=("sam",),
                                      seed=0, min_area=64, progress=False)
    instances = reference.instance_iou("sam", "point")
    for kind in KINDS:
        # the evaluation averages over instances, the curve per image first: compare per instance counts
        counts = [len(image.masks) for image in curve.images]
        per_image = np.split(np.asarray(instances[kind]), np.cumsum(counts)[:-1])
        # random weights put many logits at the threshold: a pixel may flip between decoder batchings
        np.testing.assert_allclose(scores[kind], [values.mean() for values in per_image], atol=1e-4)
    row = curve.measure(0)
    # the SAM-started robust logits have SAM's signs at low resolution (x / rms(x)); only the bilinear
    # upsampling to the image moves a few boundary pixels
    assert abs(row["gain_degrade"]) < 0.5 and abs(row["gain_clear"]) < 0.5
    assert row["gain_degrade_low"] <= row["gain_degrade"] <= row["gain_degrade_high"]


def test_training_draws_the_curve_and_the_image_stage_trains_only_the_per_image_amfgs(tmp_path: Path) -> None:
    config = {
        "manual_seed": 3, "device": "cpu",
        "model": {"type": "tiny", "checkpoint": str(_base(tmp_path)), "robust_init": "sam"},
        "data": {"train": {"format": "scenes", "n_images": 4, "seed": 11, "root": str(tmp_path / "train")},
                 "val": None, "min_area": 64, "instances_per_image": 2},
        "degradations": {"kinds": ["identity", "gauss_noise"], "variants_per_image": 1},
        "feature_cache": {"enabled": True, "dir": str(tmp_path / "cache")},
        "train": {"total_iter": 3, "batch_size_per_gpu": 2, "lr": 1e-3, "log_every": 1, "checkpoint_every": 10,
                  "image_stage_iterations": 2},
        "curve": _spec(tmp_path),
    }
    trainer = RobustSAMTrainer(config, tmp_path / "run")
    fusion = trainer.model.robust.fusion
    before = {name: value.clone() for name, value in trainer.model.robust.state_dict().items()}
    trainer.train(stop_after=2)
    after = trainer.model.robust.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith(("fusion.embedding_amfg.", "fusion.complementary_amfg.")) for name in changed)
    assert any(name.startswith("fusion.embedding_amfg.") for name in changed)
    trainer.close()
    resumed = RobustSAMTrainer(None, tmp_path / "run", resume=True)
    resumed.train()  # iteration 3 trains the whole objective
    assert not torch.equal(before["fusion.mask_feature_conv.0.weight"],
                           resumed.model.robust.state_dict()["fusion.mask_feature_conv.0.weight"])
    assert fusion is not resumed.model.robust.fusion
    with open(tmp_path / "run" / "curve.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["iteration"]) for row in rows] == [0, 2, 3]
    assert abs(float(rows[0]["gain_degrade"])) < 0.5
    assert (tmp_path / "run" / "curve.png").stat().st_size > 10_000


def test_ceiling_recomputes_sams_scores_and_the_clear_inputs_give_the_clear_masks(tmp_path: Path) -> None:
    """The ceiling's own classifier pass reproduces SAM's decoder (nothing restored = SAM's Degrade IoU), and
    restoring both per-prompt inputs to the clear image's gives exactly the clear image's IoU."""
    model = load_base_model({"type": "tiny", "checkpoint": str(_base(tmp_path)), "robust_init": "sam"}).eval()
    curve = LearningCurve(model, _spec(tmp_path))
    sam = curve.scores("sam")
    ceiling = curve.ceiling()
    degraded = np.mean([sam[kind] for kind in KINDS if kind != "identity"], axis=0)
    assert ceiling["sam"] == pytest.approx(100 * degraded.mean(), abs=0.01)
    assert ceiling["both"] == pytest.approx(100 * sam["identity"].mean(), abs=0.01)
    assert set(ceiling) == {"sam", "clear_mask_feature", "clear_tokens", "both"}


def test_evaluation_names_the_training_iteration_of_its_weights(tmp_path: Path) -> None:
    from robustprior.evaluation.evaluate import weights_iteration

    model = build_robust_sam("tiny", random_init=True)
    save_checkpoint(model, tmp_path / "best.safetensors", {"iteration": "600"})
    save_checkpoint(model, tmp_path / "final.safetensors", {"iterations": "1200"})
    save_checkpoint(model, tmp_path / "plain.safetensors")
    assert weights_iteration(tmp_path / "best.safetensors") == 600
    assert weights_iteration(tmp_path / "final.safetensors") == 1200
    assert weights_iteration(tmp_path / "plain.safetensors") is None
    assert weights_iteration(tmp_path / "official.pth") is None and weights_iteration(None) is None


def test_sweep_summary_tabulates_every_run_with_a_curve(tmp_path: Path) -> None:
    from robustprior.training.robustsam.curve import CURVE_COLUMNS
    from robustprior.training.robustsam.sweep import summarize

    for name, gain in (("lr_0.001", 1.5), ("staged", -2.25)):
        (tmp_path / name).mkdir()
        with open(tmp_path / name / "curve.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, CURVE_COLUMNS)
            writer.writeheader()
            for iteration in (0, 40):
                writer.writerow({column: 0.0 for column in CURVE_COLUMNS} | {"iteration": iteration, "gain_degrade": gain})
    (tmp_path / "not_a_run").mkdir()
    text = summarize(tmp_path)
    assert "| lr_0.001 | 40 | +1.50 [+0.00, +0.00] |" in text and "| staged | 0 | -2.25" in text
    assert "not_a_run" not in text and (tmp_path / "curves.png").is_file() and (tmp_path / "summary.md").read_text() == text
