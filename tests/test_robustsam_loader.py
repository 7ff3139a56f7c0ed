"""Fresh degraded batches made ahead by worker processes (robustsam/loader.py) and train.fit_minutes."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from robustprior.training import ConfigError, load_training_checkpoint
from robustprior.training.distributed import DistributedContext
from robustprior.training.robustsam import RobustSAMTrainer, SCHEMA, SamplePreparer, TrainingData, TrainingState
from robustprior.training.robustsam import trainer as trainer_module
from robustprior.training.robustsam.loader import (BatchJob, BatchLoader, image_degradation_seed, normalise_images,
                                                   prepare_batch)
from robustprior.training.robustsam.model import load_base_model
from robustprior.training.config import validate_config
from robustprior.training.robustsam.trainer import fit_iterations

KINDS = ["identity", "gauss_noise", "motion_blur", "fog"]


def _config(tmp_path: Path, **train) -> dict:
    return validate_config({
        "manual_seed": 3, "device": "cpu",
        "model": {"type": "tiny", "checkpoint": None},
        "data": {"train": {"format": "scenes", "n_images": 5, "seed": 11, "root": str(tmp_path / "scenes")},
                 "prompt": "mixed", "prompt_mix": {"points": 2, "box": 1, "single_point": 1},
                 "min_area": 64, "workers": 1},
        "degradations": {"kinds": KINDS, "variants_per_image": 1000},
        "feature_cache": {"enabled": False},
        "train": {"total_iter": 4, "batch_size_per_gpu": 2, "prompts_per_image": 2, "lr": 1e-3, "log_every": 1,
                  "checkpoint_every": 2, **train},
    }, SCHEMA)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> TrainingData:
    torch.manual_seed(0)
    config = _config(tmp_path_factory.mktemp("loader"))
    model = load_base_model(config["model"])
    return TrainingData(config, model, None, DistributedContext(0, 1, torch.device("cpu")))


def _jobs(data: TrainingData, state: TrainingState):
    ahead = dataclasses.replace(state)
    while True:
        indices = data.rank_indices(ahead)
        yield BatchJob(indices, ahead.epoch % 1000, ahead.epoch, ahead.position)


def _same(first, second) -> bool:
    if isinstance(first, torch.Tensor):
        return isinstance(second, torch.Tensor) and first.dtype == second.dtype and torch.equal(first, second)
    if dataclasses.is_dataclass(first):
        return all(_same(getattr(first, field.name), getattr(second, field.name))
                   for field in dataclasses.fields(first))
    if isinstance(first, (list, tuple)):
        return len(first) == len(second) and all(_same(a, b) for a, b in zip(first, second))
    return first == second


def test_normalised_batch_is_each_image_tensor_and_zero_padding() -> None:
    """The device-side normalisation of padded uint8 images equals SamplePreparer.image_tensor per image
    (normalise, then pad with zeros), for images of different shapes in one batch."""
    from robustprior.load import build_robust_sam

    preparer = SamplePreparer(build_robust_sam("tiny", random_init=True))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size, dtype=np.uint8) for size in ((256, 256, 3), (120, 256, 3), (256, 77, 3))]
    resized = [preparer.transform.apply_image(image) for image in images]
    padded = torch.zeros(len(images), 256, 256, 3, dtype=torch.uint8)
    for position, picture in enumerate(resized):
        padded[position, : picture.shape[0], : picture.shape[1]] = torch.from_numpy(picture)
    normalised = normalise_images(padded, [picture.shape[:2] for picture in resized], preparer.pixel_mean,
                                  preparer.pixel_std)
    expected = torch.stack([preparer.image_tensor(image) for image in images])
    assert normalised.shape == (3, 3, 256, 256) and torch.equal(normalised, expected)
    assert (normalised[1, :, 120:] == 0).all() and not torch.signbit(normalised[2, :, :, 77:]).any()


def test_prepared_batch_holds_the_items_images_degradations_and_prompts(data: TrainingData) -> None:
    data.train_set.set_epoch(1)
    indices = data.rank_indices(TrainingState(epoch=1))
    prepared = prepare_batch(data.train_set, data.degradation, data.preparer, indices, variant=7)
    records = list(dict.fromkeys(data.train_set.pairs[index][0] for index in indices))
    assert prepared.clear.shape == (len(records), 256, 256, 3) and prepared.clear.dtype == torch.uint8
    for position, record in enumerate(records):
        index = next(i for i in indices if data.train_set.pairs[i][0] == record)
        clear = data.train_set[index]["clear_image"]
        seed = image_degradation_seed(data.train_set, index, 7)
        assert seed == TrainingData.degradation_seed(data.train_set, index, 7)
        degraded = data.degradation(clear, seed)[0]
        h, w = prepared.sizes[position]
        resized = torch.from_numpy(data.preparer.transform.apply_image(clear))
        assert torch.equal(prepared.clear[position, :h, :w], resized)
        assert torch.equal(prepared.degraded[position, :h, :w],
                           torch.from_numpy(data.preparer.transform.apply_image(degraded)))
        assert prepared.kinds[position] == data.degradation.name(seed)
    expected = data.preparer.prompt_groups([data.train_set[index] for index in indices])
    assert [group.kind for group in prepared.groups] == [group.kind for group in expected]
    for group, reference in zip(prepared.groups, expected):
        assert torch.equal(group.targets, reference.targets)
        items = [indices[int(i)] for i in reference.image_index]
        assert group.image_index.tolist() == [records.index(data.train_set.pairs[i][0]) for i in items]


def test_batches_are_the_same_with_one_and_with_several_workers(data: TrainingData) -> None:
    """Worker processes make the very batches of the main process, in order, across epoch boundaries."""
    start = TrainingState(iteration=3, epoch=1, position=2)
    inline = iter(BatchLoader(data.train_set, data.degradation, data.preparer, _jobs(data, start), workers=1))
    expected = [next(inline) for _ in range(5)]
    parallel = iter(BatchLoader(data.train_set, data.degradation, data.preparer, _jobs(data, start), workers=2))
    made = [next(parallel) for _ in range(5)]
    del parallel
    assert [batch.job.epoch for batch in made] == [1, 2, 2, 3, 3]  # 5 images, 2 per batch, drop-last
    assert all(_same(first, second) for first, second in zip(expected, made))
    # the trainer's sequence: batch() of the state advanced by rank_indices, as the loop did before the loader
    state = dataclasses.replace(start)
    for batch in made:
        indices = data.rank_indices(state)
        assert (batch.job.indices, batch.job.epoch, batch.job.position) == (indices, state.epoch, state.position)


def test_training_batches_without_the_cache_encode_the_prepared_images(data: TrainingData) -> None:
    batches = data.training_batches(TrainingState())
    job, (clear, degraded, groups, kinds) = next(batches)
    batches.close()
    data.train_set.set_epoch(job.epoch)
    prepared = prepare_batch(data.train_set, data.degradation, data.preparer, job.indices, job.variant)
    with torch.no_grad():
        alone = data.model.encode_image(torch.stack([data.preparer.image_tensor(image.numpy()[:h, :w])
                                                     for image, (h, w) in zip(prepared.degraded, prepared.sizes)]))
    torch.testing.assert_close(degraded.embedding, alone.embedding, rtol=1e-4, atol=1e-5)
    assert clear.embedding.shape == degraded.embedding.shape and kinds == prepared.kinds


def test_fit_iterations_by_hand() -> None:
    # 100 s left (budget 160, 60 spent, 40 iterations done) at 1 s (+3 %) per step: 97 steps take 99.91 s
    assert fit_iterations(160, 60, 40, 1.0) == 40 + 97
    # a 10 s curve point every 50 iterations and one at the end: up to 100, 2 points (80 s for steps: all 60 fit);
    # above 100, 3 points (70 s): 67 steps take 69.01 s (length 107), 68 take 70.04 s
    assert fit_iterations(160, 60, 40, 1.0, curve_every=50, curve_seconds=10) == 107
    assert fit_iterations(160, 60, 40, 1.0, curve_every=50, curve_seconds=10, margin=0.0) == 110  # 70 s + 3 x 10 s
    assert fit_iterations(50, 60, 40, 1.0) == 40  # already over budget: stop where it stands


def test_fit_minutes_fixes_the_length_in_the_config_and_resume_keeps_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(trainer_module, "FIT_PROBE", (1, 2))  # time step 2, fix the length after it
    calls = []

    def fitted(budget, elapsed, done, step, curve_every=0, curve_seconds=0.0):
        calls.append((budget, elapsed, done, step, curve_every))
        return 3

    monkeypatch.setattr(trainer_module, "fit_iterations", fitted)
    config = _config(tmp_path, total_iter=1000, fit_minutes=0.5, schedule="cosine")
    with pytest.raises(ConfigError, match="fit_minutes or an iteration count"):
        RobustSAMTrainer(config, tmp_path / "both", iterations=7)
    trainer = RobustSAMTrainer(config, tmp_path / "run")
    assert trainer.train(stop_after=2) == {"iterations": 2}
    trainer.close()
    assert len(calls) == 1 and calls[0][0] == 30.0 and calls[0][2] == 2 and calls[0][3] > 0 and calls[0][1] > 0
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["total_iter"] == 3
    checkpoint = load_training_checkpoint(tmp_path / "run")
    assert checkpoint.iteration == 2 and checkpoint.state["config"]["train"]["total_iter"] == 3
    assert checkpoint.state["training"]["fitted"] and checkpoint.state["schedule"]["total_iterations"] == 3
    # resuming with the YAML the run started from: the fitted length, no new fit, no config change
    resumed = RobustSAMTrainer(config, tmp_path / "run", resume=True)
    assert resumed.train()["iterations"] == 3 and len(calls) == 1
    assert not (tmp_path / "run" / "config_changes.yaml").exists()
