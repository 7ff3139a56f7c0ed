"""restoration.train on the run engine: safe checkpoints, exact resume, config checks before any work,
the run-folder policy, aligned prior crops, evaluation against the saved outputs."""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import signal
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
from restoration.paired_data import DataLayoutError, read_rgb
from restoration.train import RestorationTrainer
from robustprior.priors import StructurePrior
from robustprior.training import (CheckpointError, ConfigChangeError, ConfigError, RunExistsError, RunFolderError,
                                  load_training_checkpoint, merge_config)
from robustprior.training.checkpoints import CHECKPOINT_FOLDER, POINTER_NAME
from robustprior.training.interrupt import Interrupted, stop_on_signals

REPO_ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def gopro_root(small_gopro) -> Path:
    """A handful of generated GoPro-like pairs: 4 train, 2 test, 48 x 48."""
    return small_gopro(2, 2)


def tiny_options(gopro_root: Path, cache_dir: Path, total_iter: int = 3) -> dict:
    """A tiny SAMDeblurNet with the tiny SAM prior (random-init when the bundled weights are absent)."""
    return {
        "name": "tiny_deblur",
        "manual_seed": 7,
        "network_g": {"type": "SAMDeblurNet", "prior": "structure", "width": 4, "enc_blk_nums": [1, 1],
                      "middle_blk_num": 1, "dec_blk_nums": [1, 1]},
        "datasets": {
            "train": {"layout": "gopro", "dataroot_lq": str(gopro_root / "train"), "dataroot_gt": str(gopro_root / "train"),
                      "gt_size": 32, "use_flip": True, "use_rot": True, "batch_size_per_gpu": 2},
            "val": {"layout": "gopro", "dataroot_lq": str(gopro_root / "test"), "dataroot_gt": str(gopro_root / "test")},
        },
        "train": {"total_iter": total_iter},
        "logger": {"save_checkpoint_freq": 1, "print_freq": 1},
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


def temporaries(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if ".tmp" in path.name]


def test_training_writes_safe_atomic_checkpoints(uninterrupted: tuple[RestorationTrainer, Path],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    trainer, _ = uninterrupted
    checkpoint = load_training_checkpoint(trainer.run_dir)  # safetensors + torch.load(weights_only=True)
    assert checkpoint.iteration == 3
    assert set(checkpoint.state) >= {"optimizer", "schedule", "rng", "prior_fingerprint", "config", "grey_scale"}
    assert all(torch.equal(checkpoint.weights[name], tensor) for name, tensor in trainer.network.state_dict().items())
    assert not temporaries(trainer.run_dir)
    pointer = (trainer.run_dir / CHECKPOINT_FOLDER / POINTER_NAME).read_bytes()

    def interrupted_save(obj: object, path: str) -> None:  # half a file, then a crash
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint()
    monkeypatch.undo()
    assert (trainer.run_dir / CHECKPOINT_FOLDER / POINTER_NAME).read_bytes() == pointer  # the previous one survives
    assert load_training_checkpoint(trainer.run_dir).iteration == 3
    assert not temporaries(trainer.run_dir)


class PlantedCode:
    """Unpickling this runs ``touch <marker>``: what a planted checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_checkpoint_is_refused_without_running_its_code(gopro_root: Path, tmp_path: Path) -> None:
    options = tiny_options(gopro_root, tmp_path / "cache", total_iter=2)
    run_dir = tmp_path / "run"
    trainer = RestorationTrainer(options, run_dir, progress=False)
    trainer.fit(until=1)
    trainer.close()
    pointer_path = run_dir / CHECKPOINT_FOLDER / POINTER_NAME
    pointer = json.loads(pointer_path.read_text())
    state_path = run_dir / CHECKPOINT_FOLDER / pointer["state"]["name"]
    marker = tmp_path / "PWNED"
    torch.save({"format": "robustprior-training-checkpoint", "payload": PlantedCode(marker)}, state_path)
    pointer["state"].update(bytes=state_path.stat().st_size, sha256=hashlib.sha256(state_path.read_bytes()).hexdigest())
    pointer_path.write_text(json.dumps(pointer))  # a consistent pointer: only the unpickling can refuse it
    with pytest.raises(CheckpointError, match="run code"):
        RestorationTrainer(options, run_dir, resume=True, progress=False)
    assert not marker.exists()


def test_resume_continues_exactly(uninterrupted: tuple[RestorationTrainer, Path], gopro_root: Path,
                                  tmp_path: Path) -> None:
    whole, cache_dir = uninterrupted
    options = tiny_options(gopro_root, cache_dir)
    run_dir = tmp_path / "interrupted"
    first = RestorationTrainer(options, run_dir, progress=False)
    first.fit(until=2)
    assert first.iteration == 2
    first.close()  # as a killed process would
    with pytest.raises(RunExistsError, match=str(run_dir)):
        RestorationTrainer(options, run_dir, progress=False)
    resumed = RestorationTrainer(options, run_dir, resume=True, progress=False)
    assert resumed.iteration == 2
    resumed.fit()
    assert resumed.iteration == 3
    expected, found = whole.network.state_dict(), resumed.network.state_dict()
    assert all(torch.equal(expected[name], found[name]) for name in expected)
    final_rng = [load_training_checkpoint(folder).state["rng"][0]["torch"] for folder in (whole.run_dir, run_dir)]
    assert torch.equal(*final_rng)  # mask dropout drew the same random numbers
    rows = (run_dir / "train_log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3"]  # no duplicated rows after the resume
    resumed.close()


def test_a_stop_signal_checkpoints_the_step_and_resume_continues_exactly(
        uninterrupted: tuple[RestorationTrainer, Path], gopro_root: Path, tmp_path: Path) -> None:
    whole, cache_dir = uninterrupted
    options = tiny_options(gopro_root, cache_dir)
    options.setdefault("logger", {})["save_checkpoint_freq"] = 1000  # no checkpoint but the one the signal asks for
    run_dir = tmp_path / "stopped"
    trainer = RestorationTrainer(options, run_dir, progress=False)
    step = trainer._step

    def step_then_signal(batch):
        loss = step(batch)
        if trainer.iteration == 1:  # during the second step (iteration counts finished steps)
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    trainer._step = step_then_signal
    with pytest.raises(Interrupted) as stop, stop_on_signals():
        trainer.run()
    assert stop.value.exit_status == 143 and trainer.iteration == 2
    assert load_training_checkpoint(run_dir).iteration == 2  # the step finished, then its checkpoint
    resumed = RestorationTrainer(options, run_dir, resume=True, progress=False)
    resumed.fit()
    expected, found = whole.network.state_dict(), resumed.network.state_dict()
    assert all(torch.equal(expected[name], found[name]) for name in expected)
    resumed.close()


def test_resume_with_other_options_is_refused_unless_allowed(gopro_root: Path, tmp_path: Path) -> None:
    options = tiny_options(gopro_root, tmp_path / "cache", total_iter=2)
    run_dir = tmp_path / "run"
    trainer = RestorationTrainer(options, run_dir, progress=False)
    trainer.fit(until=1)
    trainer.close()
    saved_config = (run_dir / "config.yaml").read_text()
    changed = copy.deepcopy(options)
    changed["manual_seed"] = 8
    changed["train"]["optim_g"] = {"lr": 5e-4}
    with pytest.raises(ConfigChangeError, match=r"manual_seed: 7 -> 8") as refusal:
        RestorationTrainer(changed, run_dir, resume=True, progress=False)
    assert "train.optim_g.lr" in str(refusal.value)
    assert (run_dir / "config.yaml").read_text() == saved_config  # the run's config is untouched
    allowed = RestorationTrainer(changed, run_dir, resume=True, allow_config_change=True, progress=False)
    assert allowed.iteration == 1 and allowed.options["manual_seed"] == 8
    allowed.close()
    recorded = yaml.safe_load((run_dir / "config_changes.yaml").read_text())
    assert recorded[-1]["changes"]["manual_seed"] == {"from": 7, "to": 8}
    # the checkpoint still holds the options it was trained with: the original ones plus an explicit override
    longer = RestorationTrainer(options, run_dir, resume=True, iterations=4, progress=False)
    assert longer.options["train"]["total_iter"] == 4
    longer.close()


@pytest.mark.parametrize("section, key, typo, suggestion", [
    ("train", "total_iter", "total_itr", "train.total_iter"),
    ("datasets.train", "gt_size", "gt_sise", "datasets.train.gt_size"),
    ("datasets.train", "batch_size_per_gpu", "batch_size_per_pgu", "datasets.train.batch_size_per_gpu"),
    ("network_g", "width", "widht", "network_g.width"),
])
def test_a_typo_key_is_refused_before_any_work(gopro_root: Path, tmp_path: Path, section: str, key: str,
                                               typo: str, suggestion: str) -> None:
    options = tiny_options(gopro_root, tmp_path / "cache")
    target = options
    for part in section.split("."):
        target = target[part]
    target[typo] = target.pop(key, 2)
    with pytest.raises(ConfigError, match=f"did you mean '{suggestion}'"):
        RestorationTrainer(options, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("change, message", [
    ({"datasets": {"train": {"batch_size_per_gpu": 0}}}, "'datasets.train.batch_size_per_gpu' must be >= 1"),
    ({"logger": {"print_freq": 0}}, "'logger.print_freq' must be >= 1"),
    ({"train": {"scheduler": {"type": "linear"}}}, "must be one of CosineAnnealingLR, TrueCosineAnnealingLR, constant; got linear"),
    ({"train": {"pixel_opt": {"type": "PSNR"}}}, "did you mean 'PSNRLoss'"),
    ({"train": {"warmup_iter": 100}}, "warm-up is not implemented"),
    ({"train": {"total_iter": "many"}}, "'train.total_iter' must be an integer"),
])
def test_wrong_types_and_ranges_are_one_message(gopro_root: Path, tmp_path: Path, change: dict, message: str) -> None:
    from robustprior.training import merge_config
    options = merge_config(tiny_options(gopro_root, tmp_path / "cache"), change)
    with pytest.raises(ConfigError, match=message):
        RestorationTrainer(options, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_overwrite_refuses_a_folder_that_is_not_a_run(gopro_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    (folder / "photos").mkdir(parents=True)
    (folder / "notes.md").write_text("keep me")
    with pytest.raises(RunFolderError, match="not a robustprior run folder"):
        RestorationTrainer(tiny_options(gopro_root, tmp_path / "cache"), folder, overwrite=True, progress=False)
    assert (folder / "notes.md").read_text() == "keep me" and (folder / "photos").is_dir()


def test_a_wrong_layout_is_one_line_before_the_run_folder(gopro_root: Path, tmp_path: Path) -> None:
    options = tiny_options(gopro_root, tmp_path / "cache")
    options["datasets"]["train"]["dataroot_lq"] = str(gopro_root)  # the GoPro root, not a split folder of sequences
    with pytest.raises(DataLayoutError) as error:
        RestorationTrainer(options, tmp_path / "run", progress=False)
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()
    options = tiny_options(gopro_root, tmp_path / "cache")
    options["datasets"]["val"]["layout"] = "sots"
    with pytest.raises(DataLayoutError, match="hazy"):
        RestorationTrainer(options, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_evaluation_matches_metrics_on_saved_outputs(uninterrupted: tuple[RestorationTrainer, Path]) -> None:
    trainer, _ = uninterrupted
    results = trainer.run()  # already trained: evaluates and writes results.json
    metrics = results["metrics"]
    assert metrics["num_images"] == 2 and results["ssim_kind"] == "basicsr"
    for record in metrics["per_image"]:
        restored = read_rgb(trainer.run_dir / record["output"])
        target = read_rgb(record["gt_path"])
        assert record["psnr"] == psnr(restored, target)
        assert record["ssim"] == ssim(restored, target)
        assert record["input_psnr"] == psnr(read_rgb(record["lq_path"]), target)
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
    dataset = PriorPairedDataset({"layout": "folders", "dataroot_lq": str(root / "blur"), "dataroot_gt": str(root / "sharp"),
                                  "phase": "train", "gt_size": crop_size, "use_flip": True, "use_rot": True, "seed": 1}, index)
    transposed = 0
    for epoch in range(12):
        dataset.set_epoch(epoch)
        item = dataset[0]
        encoded = np.rint(item["lq"].numpy() * 255.0).astype(np.int64)
        rows, columns = encoded[1] // 4, encoded[2] // 4
        assert torch.equal(item["prior"]["label_map"], torch.from_numpy(encoded[0] // 7))
        features = item["prior"]["features"].numpy()
        interior = (rows >= 2) & (columns >= 2) & (columns <= 53)  # off the replicated border of the 4-px cells
        assert np.allclose(features[0][interior], rows[interior] + 0.5, atol=1e-2)
        assert np.allclose(features[1][interior], columns[interior] + 0.5, atol=1e-2)
        transposed += int(rows[0, 1] != rows[0, 0])  # rows change along a crop row only when transposed
    assert 0 < transposed < 12


def test_test_items_carry_full_priors(synthetic_index: tuple[Path, np.ndarray, PriorIndex]) -> None:
    root, label_map, index = synthetic_index
    item = PriorPairedDataset({"dataroot_lq": str(root / "blur"), "dataroot_gt": str(root / "sharp"), "phase": "test"}, index)[0]
    assert torch.equal(item["prior"]["label_map"], torch.from_numpy(label_map))
    features = item["prior"]["features"]
    assert tuple(features.shape) == (2, 10, 14)  # 40 x 56 image, 4-px cells
    assert torch.allclose(features, image_covering_features(ramp_features(56, 14), (40, 56)))
    assert torch.allclose(features[0, :, 0], (torch.arange(10) + 0.5) * 4)


def test_a_network_without_prior_refuses_prior_options(gopro_root: Path, tmp_path: Path) -> None:
    options = tiny_options(gopro_root, tmp_path / "cache")
    options["network_g"]["prior"] = "none"
    with pytest.raises(ConfigError, match="takes no prior"):
        RestorationTrainer(copy.deepcopy(options), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_two_rank_ddp_matches_one_process(gopro_root: Path, tmp_path: Path) -> None:
    """torchrun with 2 gloo ranks (batch split between them) trains the same weights as one process."""
    options = tiny_options(gopro_root, tmp_path / "cache", total_iter=2)
    options["network_g"]["prior"] = "none"  # no mask dropout: the two runs draw no per-rank random numbers
    options["prior"] = {"kind": "none"}
    options_file = tmp_path / "options.yaml"  # batch_size_per_gpu 1 on each of 2 ranks: the one process's batch of 2
    options_file.write_text(yaml.safe_dump(merge_config(options, {"datasets": {"train": {"batch_size_per_gpu": 1}}})))
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "restoration.train", "-opt", str(options_file), "--output", str(tmp_path / "ddp"),
               "--device", "cpu", "--no-progress"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment, cwd=REPO_ROOT)
    assert completed.returncode == 0, completed.stderr[-2000:]
    single = RestorationTrainer(options, tmp_path / "single", device="cpu", progress=False)
    single.fit()
    single.close()
    distributed = load_training_checkpoint(tmp_path / "ddp")
    assert distributed.state["world_size"] == 2 and len(distributed.state["rng"]) == 2
    for name, tensor in single.network.state_dict().items():
        assert torch.allclose(distributed.weights[name], tensor, atol=1e-6), name


def test_feature_prior_network_trains_and_evaluates_tiled(gopro_root: Path, tmp_path: Path) -> None:
    """Grayscale coding + RobustSAM mask features (sampled on crops, resampled per tile) end to end."""
    options = tiny_options(gopro_root, tmp_path / "cache", total_iter=2)
    options["network_g"] = {"type": "SAMGuidedDehazeNet", "prior": "features", "width": 4, "enc_blk_nums": [1, 1],
                            "middle_blk_num": 1, "dec_blk_nums": [1, 1]}  # prior_channels: from the prior
    options["prior"].update(kind="robustsam", features="mask_feature", num_segments=40)
    options["val"] = {"tile": 32, "overlap": 8, "ssim": "gaussian3d"}  # 48 x 48 test images: 2 x 2 tiles
    trainer = RestorationTrainer(options, tmp_path / "run", progress=False)
    prior = trainer.train_set[0]["prior"]
    assert tuple(prior["features"].shape) == (16, 32, 32) and tuple(prior["label_map"].shape) == (32, 32)
    assert int(prior["grey_scale"]) == 40  # the configured scale, the same for every prior row
    results = trainer.run()
    assert results["iterations"] == 2 and results["num_segments"] == 40 and results["ssim_kind"] == "gaussian3d"
    assert results["network"]["prior_channels"] == 16 and results["prior"]["features"] == "mask_feature"
    assert "3-D Gaussian" in results["metrics"]["protocol"]
    assert math.isfinite(results["metrics"]["psnr"])


@pytest.mark.parametrize("name", ["deblur_gopro", "dehaze_sots"])
def test_the_full_scale_option_files_validate(name: str) -> None:
    from restoration.config import load_options_file

    options = load_options_file(REPO_ROOT / "restoration" / "options" / f"{name}.yaml")
    if name == "deblur_gopro":  # SAM-Deblur's own choices
        assert options["prior"]["grouping"] == "summed_grey"
        assert options["network_g"]["mask_dropout"] == 0.5 and options["network_g"]["mask_dropout_mode"] == "exact"
        assert options["train"]["grad_clip"] == 0.01
        assert (options["datasets"]["train"]["batch_size_per_gpu"], options["train"]["total_iter"]) == (32, 200000)
    else:  # one grey-level scale, whichever prior row
        assert options["prior"]["num_segments"] == 255


def test_the_deblur_network_reads_latent_features_sized_by_the_prior(gopro_root: Path, tmp_path: Path) -> None:
    options = tiny_options(gopro_root, tmp_path / "cache", total_iter=1)
    options["network_g"]["prior"] = "features"
    options["prior"]["features"] = "embedding"
    trainer = RestorationTrainer(options, tmp_path / "run", progress=False)
    channels = trainer.train_set[0]["prior"]["features"].shape[0]
    assert trainer.network.prior_injections.prior_channels == channels
    results = trainer.run()
    assert results["network"]["prior_channels"] == channels and math.isfinite(results["metrics"]["psnr"])
    options["network_g"]["prior_channels"] = channels + 1
    with pytest.raises(ConfigError, match=f"prior_channels is {channels + 1}, but the prior's embedding has {channels}"):
        RestorationTrainer(options, tmp_path / "other", progress=False)


def test_a_trained_run_restores_new_images_without_writing_to_it(gopro_root: Path, tmp_path: Path) -> None:
    from restoration.trained_run import load_trained_run

    cache_dir = tmp_path / "cache"
    trainer = RestorationTrainer(tiny_options(gopro_root, cache_dir, total_iter=1), tmp_path / "run", progress=False)
    results = trainer.run()
    before = sorted((path, path.stat().st_mtime_ns) for path in (tmp_path / "run").rglob("*"))
    trained = load_trained_run(tmp_path / "run", device="cpu")
    assert trained.iteration == 1 and not trained.network.training
    record = results["metrics"]["per_image"][0]
    priors = trained.prepare_priors([record["lq_path"]], cache_dir, progress=False)
    restored = trained.restore_file(record["lq_path"], priors)
    np.testing.assert_array_equal(restored, read_rgb(tmp_path / "run" / record["output"]))
    assert sorted((path, path.stat().st_mtime_ns) for path in (tmp_path / "run").rglob("*")) == before


def test_resume_of_a_row_that_never_started_starts_it(gopro_root: Path, tmp_path: Path) -> None:
    options = tiny_options(gopro_root, tmp_path / "cache", total_iter=1)
    trainer = RestorationTrainer(options, tmp_path / "never", resume=True, progress=False)
    assert trainer.iteration == 0
    trainer.close()


def test_a_larger_ground_truth_is_cropped_for_training_and_scoring(tmp_path: Path) -> None:
    """RESIDE ITS style: clean images with a border; evaluation scores input and output on the crop."""
    rng = np.random.default_rng(0)
    for index in range(2):
        clean = rng.integers(0, 256, (44, 52, 3), dtype=np.uint8)
        hazy = (0.6 * clean[6:38, 5:47] + 80).astype(np.uint8)  # (44 - 32) // 2 = 6, (52 - 42) // 2 = 5
        for phase in ("train", "test"):
            for folder, image in (("hazy", hazy), ("clear", clean)):
                (tmp_path / phase / folder).mkdir(parents=True, exist_ok=True)
                name = f"{index + 1}_1_0.9.png" if folder == "hazy" else f"{index + 1}.png"
                cv2.imwrite(str(tmp_path / phase / folder / name), image)
    options = {
        "network_g": {"type": "SAMGuidedDehazeNet", "prior": "none", "width": 4, "enc_blk_nums": [1, 1],
                      "middle_blk_num": 1, "dec_blk_nums": [1, 1]},
        "datasets": {"train": {"layout": "sots", "dataroot_lq": str(tmp_path / "train" / "hazy"),
                               "dataroot_gt": str(tmp_path / "train" / "clear"), "gt_size": 16, "batch_size_per_gpu": 2},
                     "test": {"layout": "sots", "dataroot_lq": str(tmp_path / "test" / "hazy"),  # test: read as val
                              "dataroot_gt": str(tmp_path / "test" / "clear")}},
        "train": {"total_iter": 1},
    }
    results = RestorationTrainer(options, tmp_path / "run", progress=False).run()
    from restoration.paired_data import read_pair
    for record in results["metrics"]["per_image"]:
        lq, gt = read_pair(record["lq_path"], record["gt_path"])
        assert lq.shape == gt.shape == (32, 42, 3)
        assert record["input_psnr"] == psnr(lq, gt) and record["psnr"] == psnr(read_rgb(tmp_path / "run" / record["output"]), gt)
