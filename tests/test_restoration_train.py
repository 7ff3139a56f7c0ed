"""restoration.train / restoration.datasets: atomic checkpoints, exact resume, aligned prior crops,
evaluation against the saved outputs."""
from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from restoration.datasets import PriorIndex, PriorPairedDataset, image_covering_features
from restoration.metrics import psnr, ssim
from restoration.paired_data import read_rgb
from restoration.train import CHECKPOINT_NAME, RestorationTrainer, RunExistsError, psnr_loss
from robustprior.priors import StructurePrior
from robustprior.data.scenes import SceneConfig, write_gopro_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def gopro_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A handful of generated GoPro-like pairs: 4 train, 2 test, 48 x 48."""
    root = tmp_path_factory.mktemp("gopro")
    config = SceneConfig(image_size=(48, 48), object_count_range=(2, 3))
    write_gopro_dataset(root, 2, 2, seed=3, split="train", blur_frames=3, config=config, progress=False)
    write_gopro_dataset(root, 1, 2, seed=4, split="test", blur_frames=3, config=config, progress=False)
    return root


def tiny_options(gopro_root: Path, cache_dir: Path, total_iter: int = 3) -> dict:
    """A tiny SAMDeblurNet with the tiny SAM prior (random-init when the bundled weights are absent)."""
    return {
        "name": "tiny_deblur",
        "manual_seed": 7,
        "network_g": {"type": "SAMDeblurNet", "prior": "structure", "width": 4, "enc_blocks": [1, 1],
                      "middle_blocks": 1, "dec_blocks": [1, 1]},
        "datasets": {
            "train": {"layout": "gopro", "dataroot": str(gopro_root), "split": "train", "crop_size": 32,
                      "use_flip": True, "use_rot": True},
            "test": {"layout": "gopro", "dataroot": str(gopro_root), "split": "test"},
        },
        "train": {"total_iter": total_iter, "batch_size": 2, "save_freq": 1, "log_freq": 1},
        "prior": {"kind": "sam", "checkpoint": "tiny", "points_per_side": 2, "pred_iou_thresh": 0.0,
                  "stability_score_thresh": 0.0, "cache_dir": str(cache_dir)},
    }


@pytest.fixture(scope="module")
def uninterrupted(gopro_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[RestorationTrainer, Path]:
    """Three iterations in one go (checkpoint every iteration)."""
    cache_dir = tmp_path_factory.mktemp("cache")
    run_dir = tmp_path_factory.mktemp("runs") / "whole"
    trainer = RestorationTrainer(tiny_options(gopro_root, cache_dir), run_dir, progress=False)
    trainer.fit()
    return trainer, cache_dir


def test_psnr_loss_is_negative_psnr_of_the_mse() -> None:
    restored, target = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.1)
    expected = 10.0 / math.log(10.0) * math.log(0.01 + 1e-8)
    assert psnr_loss(restored, target).item() == pytest.approx(expected, rel=1e-6)


def test_training_writes_atomic_checkpoints(uninterrupted: tuple[RestorationTrainer, Path],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    trainer, _ = uninterrupted
    checkpoint = trainer.run_dir / CHECKPOINT_NAME
    payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert payload["iteration"] == 3 and set(payload) >= {"network", "optimizer", "scheduler", "rng", "prior"}
    assert not [path for path in trainer.run_dir.iterdir() if path.name.endswith(".tmp")]
    before = checkpoint.read_bytes()

    def interrupted_save(obj: object, path: str) -> None:  # half a file, then a crash
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint()
    assert checkpoint.read_bytes() == before  # the previous checkpoint survives intact
    assert not [path for path in trainer.run_dir.iterdir() if path.name.endswith(".tmp")]


def test_resume_continues_exactly(uninterrupted: tuple[RestorationTrainer, Path], gopro_root: Path,
                                  tmp_path: Path) -> None:
    whole, cache_dir = uninterrupted
    options = tiny_options(gopro_root, cache_dir)
    run_dir = tmp_path / "interrupted"
    first = RestorationTrainer(options, run_dir, progress=False)
    first.fit(until=2)
    assert first.iteration == 2
    del first
    with pytest.raises(RunExistsError, match=str(run_dir)):
        RestorationTrainer(options, run_dir, progress=False)
    resumed = RestorationTrainer(options, run_dir, resume=True, progress=False)
    assert resumed.iteration == 2
    resumed.fit()
    assert resumed.iteration == 3
    expected, found = whole.network.state_dict(), resumed.network.state_dict()
    assert all(torch.equal(expected[name], found[name]) for name in expected)
    final_rng = [torch.load(folder / CHECKPOINT_NAME, weights_only=False)["rng"][0]["torch"] for folder in (whole.run_dir, run_dir)]
    assert torch.equal(*final_rng)  # mask dropout drew the same random numbers
    rows = (run_dir / "train_log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3"]  # no duplicated rows after the resume


def test_evaluation_matches_metrics_on_saved_outputs(uninterrupted: tuple[RestorationTrainer, Path]) -> None:
    trainer, _ = uninterrupted
    results = trainer.run()  # already trained: evaluates and writes results.json
    metrics = results["metrics"]
    assert metrics["num_images"] == 2
    for record in metrics["per_image"]:
        restored = read_rgb(trainer.run_dir / record["output"])
        target = read_rgb(record["gt_path"])
        assert record["psnr"] == psnr(restored, target)
        assert record["ssim"] == ssim(restored, target)
    assert metrics["psnr"] == pytest.approx(np.mean([r["psnr"] for r in metrics["per_image"]]), abs=0)
    stored = json.loads((trainer.run_dir / "results.json").read_text())
    assert stored["metrics"]["psnr"] == metrics["psnr"] and stored["prior"]["kind"] == "sam"


# ----------------------------------------------------------------------------- aligned prior crops
BLOCK = 8


def write_synthetic_pair(root: Path, height: int, width: int) -> tuple[Path, np.ndarray]:
    """A flat GoPro pair whose colours encode (block label, row, column); returns the lq path and label map."""
    rows, columns = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    label_map = (rows // BLOCK) * (width // BLOCK) + columns // BLOCK + 1
    image = np.stack([label_map * 7, rows * 4, columns * 4], axis=-1).astype(np.uint8)
    for folder in ("blur", "sharp"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / folder / "000001.png"), image[..., ::-1])
    return root / "blur" / "000001.png", label_map


def ramp_features(side: int, cells: int) -> torch.Tensor:
    """2 x cells x cells features over the side x side square: channel 0 = image y, channel 1 = image x of each cell centre."""
    centres = (torch.arange(cells, dtype=torch.float32) + 0.5) * side / cells
    return torch.stack([centres[:, None].expand(cells, cells), centres[None, :].expand(cells, cells)])


@pytest.fixture
def synthetic_index(tmp_path: Path) -> tuple[Path, np.ndarray, PriorIndex]:
    height, width = 40, 56
    lq_path, label_map = write_synthetic_pair(tmp_path / "data", height, width)
    num_masks = int(label_map.max())
    masks = np.stack([label_map == k + 1 for k in range(num_masks)])
    features = ramp_features(max(height, width), 14)
    prior = StructurePrior(masks=masks, label_map=label_map.astype(np.int64),
                           structure_map=np.zeros((height, width, 3), np.uint8), embedding=features,
                           mask_feature=features, scores=np.ones(num_masks, np.float32))
    prior_file = prior.save(tmp_path / "prior.safetensors")
    index = PriorIndex("sam", {str(lq_path): prior_file}, feature="embedding", description={"fingerprint": "synthetic"})
    return tmp_path / "data", label_map, index


@pytest.mark.parametrize("crop_size", [24, 48])  # 48 > 40: mirror padding before the crop
def test_prior_crops_align_with_image_crops(synthetic_index: tuple[Path, np.ndarray, PriorIndex], crop_size: int) -> None:
    root, _, index = synthetic_index
    dataset = PriorPairedDataset({"layout": "gopro", "dataroot": str(root), "phase": "train", "crop_size": crop_size,
                                  "use_flip": True, "use_rot": True, "seed": 1}, index)
    transposed = 0
    for epoch in range(12):
        dataset.set_epoch(epoch)
        item = dataset[0]
        encoded = np.rint(item["lq"].numpy() * 255.0).astype(np.int64)
        rows, columns = encoded[1] // 4, encoded[2] // 4
        assert torch.equal(item["label_map"], torch.from_numpy(encoded[0] // 7))
        features = item["prior_features"].numpy()
        interior = (rows >= 2) & (columns >= 2) & (columns <= 53)  # off the replicated border of the 4-px cells
        assert np.allclose(features[0][interior], rows[interior] + 0.5, atol=1e-2)
        assert np.allclose(features[1][interior], columns[interior] + 0.5, atol=1e-2)
        transposed += int(rows[0, 1] != rows[0, 0])  # rows change along a crop row only when transposed
    assert 0 < transposed < 12


def test_test_items_carry_full_priors(synthetic_index: tuple[Path, np.ndarray, PriorIndex]) -> None:
    root, label_map, index = synthetic_index
    item = PriorPairedDataset({"layout": "gopro", "dataroot": str(root), "phase": "test"}, index)[0]
    assert torch.equal(item["label_map"], torch.from_numpy(label_map))
    features = item["prior_features"]
    assert tuple(features.shape) == (2, 10, 14)  # 40 x 56 image, 4-px cells
    assert torch.allclose(features, image_covering_features(ramp_features(56, 14), (40, 56)))
    assert torch.allclose(features[0, :, 0], (torch.arange(10) + 0.5) * 4)


def test_a_network_without_prior_refuses_prior_options(gopro_root: Path, tmp_path: Path) -> None:
    options = tiny_options(gopro_root, tmp_path / "cache")
    options["network_g"]["prior"] = "none"
    with pytest.raises(ValueError, match="takes no prior"):
        RestorationTrainer(copy.deepcopy(options), tmp_path / "run", progress=False)


def test_two_rank_ddp_matches_one_process(gopro_root: Path, tmp_path: Path) -> None:
    """torchrun with 2 gloo ranks (batch split between them) trains the same weights as one process."""
    options = tiny_options(gopro_root, tmp_path / "cache", total_iter=2)
    options["network_g"]["prior"] = "none"  # no mask dropout: the two runs draw no per-rank random numbers
    options["prior"] = {"kind": "none"}
    options_file = tmp_path / "options.yaml"
    options_file.write_text(yaml.safe_dump(options))
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "restoration.train", "--opt", str(options_file), "--output", str(tmp_path / "ddp"),
               "--device", "cpu", "--no-progress"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment, cwd=REPO_ROOT)
    assert completed.returncode == 0, completed.stderr[-2000:]
    single = RestorationTrainer(options, tmp_path / "single", device="cpu", progress=False)
    single.fit()
    distributed = torch.load(tmp_path / "ddp" / CHECKPOINT_NAME, weights_only=False)
    assert distributed["world_size"] == 2 and len(distributed["rng"]) == 2
    for name, tensor in single.network.state_dict().items():
        assert torch.allclose(distributed["network"][name], tensor, atol=1e-6), name


def test_feature_prior_network_trains_and_evaluates_tiled(gopro_root: Path, tmp_path: Path) -> None:
    """Grayscale coding + RobustSAM mask features (sampled on crops, resampled per tile) end to end."""
    options = tiny_options(gopro_root, tmp_path / "cache", total_iter=2)
    options["network_g"] = {"type": "SAMGuidedDehazeNet", "prior": "features", "width": 4, "enc_blocks": [1, 1],
                            "middle_blocks": 1, "dec_blocks": [1, 1], "prior_channels": 16}
    options["prior"].update(kind="robustsam", features="mask_feature")
    options["val"] = {"tile": 32, "overlap": 8}  # 48 x 48 test images: 2 x 2 tiles
    trainer = RestorationTrainer(options, tmp_path / "run", progress=False)
    item = trainer.train_set[0]
    assert tuple(item["prior_features"].shape) == (16, 32, 32) and tuple(item["label_map"].shape) == (32, 32)
    results = trainer.run()
    assert results["iterations"] == 2 and trainer.num_segments >= 1
    assert math.isfinite(results["metrics"]["psnr"])
