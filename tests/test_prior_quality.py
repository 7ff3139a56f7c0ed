"""restoration.prior_quality (best IoU of true instances against a prior's masks) and
restoration.prior_reliance (test-time zeroing of a trained run's prior)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from restoration.control_priors import instance_map_path
from restoration.datasets import prepare_priors
from restoration.paired_data import pair_gopro
from restoration.prior_quality import best_ious, prior_quality
from restoration.prior_reliance import prior_reliance
from restoration.train import RestorationTrainer
from restoration.trained_run import RESULTS_NAME
from robustprior.data.scenes import SceneConfig, write_gopro_dataset

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def test_best_ious_hand_computed() -> None:
    true = np.zeros((2, 4, 4), bool)
    true[0, :2, :2] = True          # 4 px
    true[1, 2:, :] = True           # 8 px
    prior = np.zeros((2, 4, 4), bool)
    prior[0, :2, :3] = True         # 6 px, 4 shared with true[0]: IoU 4/6
    prior[1, 3:, :] = True          # 4 px inside true[1]: IoU 4/8
    assert best_ious(true, prior) == pytest.approx([4 / 6, 0.5])
    assert best_ious(true, prior[:0]).tolist() == [0.0, 0.0]
    assert best_ious(true[:0], prior).shape == (0,)


@pytest.fixture(scope="module")
def gopro_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gopro")
    config = SceneConfig(image_size=(48, 48), object_count_range=(2, 3))
    write_gopro_dataset(root, 2, 2, seed=3, split="train", blur_frames=3, camera_shake=0.0, config=config,
                        progress=False)
    write_gopro_dataset(root, 2, 1, seed=4, split="test", blur_frames=3, camera_shake=0.0, config=config,
                        progress=False)
    return root


def test_the_true_masks_score_one_and_shuffled_ones_less(gopro_root: Path, tmp_path: Path) -> None:
    lq_paths = [lq for lq, _ in pair_gopro(gopro_root, "test")]
    index = prepare_priors({"kind": "gt_masks"}, lq_paths, tmp_path, progress=False)
    truth = prior_quality(index, lq_paths)
    assert truth["mean_best_iou"] == pytest.approx(1.0) and truth["images"] == 2
    assert truth["masks_per_image"] >= 2 and truth["instances"] >= 4
    wrong = prior_quality(prepare_priors({"kind": "shuffled_masks"}, lq_paths, tmp_path, progress=False), lq_paths)
    assert wrong["mean_best_iou"] < 0.9
    moved = instance_map_path(lq_paths[0]).rename(tmp_path / "moved.png")
    try:  # without instance maps there is no IoU, only the mask count
        assert prior_quality(index, lq_paths) == {**truth, "mean_best_iou": None, "instances": 0}
    finally:
        moved.rename(instance_map_path(lq_paths[0]))


def _options(root: Path, prior: str) -> dict:
    return {
        "name": f"reliance_{prior}", "manual_seed": 1,
        "network_g": {"type": "SAMDeblurNet", "prior": "structure" if prior != "none" else "none", "width": 4,
                      "enc_blk_nums": [1], "middle_blk_num": 1, "dec_blk_nums": [1]},
        "datasets": {"train": {"layout": "gopro", "dataroot_lq": str(root / "train"), "dataroot_gt": str(root / "train"),
                               "gt_size": 32, "batch_size_per_gpu": 2},
                     "val": {"layout": "gopro", "dataroot_lq": str(root / "test"), "dataroot_gt": str(root / "test")}},
        "train": {"total_iter": 4, "optim_g": {"lr": 3e-3}},
        "logger": {"save_checkpoint_freq": 4, "print_freq": 2},
        "prior": {"kind": prior},
    }


def test_zeroing_the_prior_of_a_trained_run(gopro_root: Path, tmp_path: Path) -> None:
    RestorationTrainer(_options(gopro_root, "gt_masks"), tmp_path / "gt", progress=False).run()
    reliance = prior_reliance(tmp_path / "gt")
    recorded = json.loads((tmp_path / "gt" / RESULTS_NAME).read_text())["metrics"]["psnr"]
    assert reliance["images"] == 2
    assert reliance["psnr"] == pytest.approx(recorded, abs=1e-6)  # the same evaluation as the trainer's
    assert reliance["psnr_zeroed"] != reliance["psnr"]  # the structure map reaches the output
    assert reliance["cost_db"] == pytest.approx(reliance["psnr"] - reliance["psnr_zeroed"])
    RestorationTrainer(_options(gopro_root, "none"), tmp_path / "none", progress=False).run()
    with pytest.raises(ValueError, match="trained without a prior"):
        prior_reliance(tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="has no results.json"):
        prior_reliance(tmp_path / "missing")
