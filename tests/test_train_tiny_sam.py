"""Smoke test of the SAM-tiny recipe (robustprior.training.tiny_sam, run by recipes/train_tiny_sam.py):
a few iterations, atomic checkpoints, exact resume."""
from __future__ import annotations

import copy
import csv
import importlib
import json
import math
from collections import Counter
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from robustprior.io.atomic import is_temporary
from robustprior.data.scenes import TextureBank, derive_seed, generate_scene
from robustprior.training import load_training_checkpoint, save_training_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def recipe() -> ModuleType:
    """The recipe's library (``recipes/train_tiny_sam.py`` is its command line)."""
    return importlib.import_module("robustprior.training.tiny_sam")


def temporary_files(folder: Path) -> list[Path]:
    """Temporary files of atomic writes anywhere below ``folder``."""
    return [path for path in folder.rglob("*") if is_temporary(path.name)]


@pytest.fixture
def small_config(recipe: ModuleType) -> dict:
    """The shipped config shrunk to 4 train scenes, 2 x 2 prompts and 3 iterations."""
    config = recipe.load_config(REPO_ROOT / "robustprior" / "configs" / "tiny_sam.yaml")
    config["data"].update(train_scenes=4, test_scenes=1, quick_eval_scenes=1)
    config["batch"].update(images=2, prompts_per_image=2)
    config["train"].update(total_iter=3, warmup_iter=1)
    config["logging"].update(quick_eval_every=1000, log_every=1)
    return config


def as_a_run_of_0_4(run: Path) -> dict:
    """Rewrite the run's config.yaml and its checkpoint's config with the key names of robustprior 0.4.0
    (``seed``, ``optimizer.iterations``, ``optimizer.warmup_iterations``); returns that config."""
    checkpoint = load_training_checkpoint(run)
    old = copy.deepcopy(checkpoint.state["config"])
    old["seed"] = old.pop("manual_seed")
    train = old.pop("train")
    train["iterations"], train["warmup_iterations"] = train.pop("total_iter"), train.pop("warmup_iter")
    old["optimizer"] = train
    (run / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    save_training_checkpoint(run, checkpoint.iteration, checkpoint.weights, {**checkpoint.state, "config": old})
    return old


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
    assert load_training_checkpoint(interrupted).iteration == 2
    assert not temporary_files(interrupted), "temporary checkpoint files must be moved into place"
    assert not (interrupted / "metrics.json").exists()

    def interrupted_save(payload: object, file: str) -> None:
        Path(file).write_bytes(b"partial")
        raise KeyboardInterrupt("interrupted while writing the checkpoint")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "save", interrupted_save)
        with pytest.raises(KeyboardInterrupt):
            recipe.train(small_config, interrupted, resume=True, export=False)
    assert load_training_checkpoint(interrupted).iteration == 2
    assert not temporary_files(interrupted), "an interrupted write must leave no temporary file"

    as_a_run_of_0_4(interrupted)  # saved before BasicSR's names: resumes with the same values, no config change
    resumed = recipe.train(small_config, interrupted, resume=True, export=False)
    assert resumed["iteration"] == 3 and not (interrupted / "config_changes.yaml").exists()
    rewritten = yaml.safe_load((interrupted / "config.yaml").read_text())
    assert rewritten["manual_seed"] == 0 and rewritten["train"]["total_iter"] == 3 and "optimizer" not in rewritten
    assert loss_at(interrupted, 1) == loss_at(tmp_path / "full", 1)
    assert loss_at(interrupted, 3) == pytest.approx(loss_at(tmp_path / "full", 3), rel=1e-6)


def test_export_writes_loadable_weights_and_card(recipe: ModuleType, small_config: dict, tmp_path: Path) -> None:
    from robustprior.io.checkpoint import read_state_dict
    from robustprior.load import load_model

    small_config["export"] = {"weights": str(tmp_path / "sam_tiny.safetensors"),
                              "model_card": str(tmp_path / "sam_tiny.md")}
    metrics = {"single_point_iou": 0.5, "single_point_oracle_iou": 0.6, "token0_iou": 0.4, "box_iou": 0.7,
               "objects": 3}
    summary = {"metrics": metrics, "iterations": 3, "train_seconds": 1.0, "median_step_seconds": 0.3,
               "train_scenes": 4, "test_scenes": 1, "git_commit": "abc"}
    recipe.export_model(recipe.trainable_model("tiny", aligned_attention=True), small_config, summary)

    model = load_model(tmp_path / "sam_tiny.safetensors", decoder_path="sam")[0]
    assert torch.equal(model.robust.output_tokens.weight, model.mask_decoder.mask_tokens.weight)
    metadata = read_state_dict(tmp_path / "sam_tiny.safetensors")[1]
    assert metadata["trained_by"] == "recipes/train_tiny_sam.py"
    assert metadata["single_point_iou"] == "0.5000"
    assert "| 0.5000 |" in (tmp_path / "sam_tiny.md").read_text()


def test_extended_schedule_history_and_export_of_finished_run(recipe: ModuleType, small_config: dict,
                                                              tmp_path: Path) -> None:
    from robustprior.load import load_model

    small_config["export"] = {"weights": str(tmp_path / "w.safetensors"), "model_card": str(tmp_path / "w.md")}
    run = tmp_path / "run"
    recipe.train(small_config, run, stop_after=2, export=False)
    with pytest.raises(ValueError, match="stopped at iteration 2 of 3"):
        recipe.export_finished_run(run)
    assert recipe.train(small_config, run, resume=True, iterations=4, threads=1, export=False)["iteration"] == 4

    checkpoint = load_training_checkpoint(run)
    assert checkpoint.state["config"]["history"] == [
        {"start_iteration": 0, "schedule_iterations": 3, "threads": small_config["threads"], "device": "cpu"},
        {"start_iteration": 2, "schedule_iterations": 4, "threads": 1, "device": "cpu"},
    ]
    as_a_run_of_0_4(run)  # a run finished before BasicSR's names exports as well
    recipe.export_finished_run(run, reevaluate=True)
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    scene = generate_scene(derive_seed(small_config["data"]["test_seed"], 0), textures=TextureBank.load(None))
    assert metrics["objects_per_kind"] == dict(sorted(Counter(scene.kinds).items()))  # 1 held-out scene
    per_kind_total = sum(metrics["objects_per_kind"][k] * iou for k, iou in metrics["single_point_iou_per_kind"].items())
    assert per_kind_total / metrics["objects"] == pytest.approx(metrics["single_point_iou"])
    card = (tmp_path / "w.md").read_text()
    assert "Single click (as above) per shape kind:" in card
    assert f"--output runs/tiny_sam --iterations 3 --threads {small_config['threads']}\n" in card
    assert "--output runs/tiny_sam --resume --iterations 4 --threads 1\n" in card
    exported = load_model(tmp_path / "w.safetensors", decoder_path="sam")[0]
    trained = checkpoint.weights["mask_decoder.iou_prediction_head.layers.0.weight"]
    assert torch.allclose(exported.state_dict()["mask_decoder.iou_prediction_head.layers.0.weight"], trained,
                          atol=1e-2, rtol=1e-2)  # float16 file


def test_evaluation_per_shape_kind_matches_object_by_object_clicks(recipe: ModuleType) -> None:
    """Each object's single click, decoded on its own, averaged per kind of that object."""
    from robustprior.evaluation.metrics import mask_iou
    from robustprior.data.prompts import center_point

    torch.manual_seed(0)
    model = recipe.trainable_model("tiny").eval()
    images, instances, kinds = recipe.held_out_scenes(5, 2)
    metrics = recipe.evaluate(model, images, instances, kinds)
    expected: dict[str, list[float]] = {}
    with torch.no_grad():
        for image, instance_map, scene_kinds in zip(images, instances, kinds):
            features = model.encode_image(model.preprocess(torch.from_numpy(image).permute(2, 0, 1)[None].float()))
            for object_id in np.unique(instance_map)[1:]:
                truth = instance_map == object_id
                point = torch.from_numpy(center_point(truth))[None, None].float()
                sparse, dense = model.encode_prompts(points=(point, torch.ones(1, 1, dtype=torch.long)))
                out = model.decode(features, sparse, dense, multimask_output=True, path="sam")
                best = int(out.iou_predictions[0].argmax())
                predicted = model.postprocess_masks(out.mask_logits, truth.shape, truth.shape)[0, best] > 0
                expected.setdefault(scene_kinds[object_id - 1], []).append(float(mask_iou(predicted.numpy(), truth)))
    assert metrics["objects_per_kind"] == {kind: len(v) for kind, v in sorted(expected.items())}
    for kind, ious in expected.items():
        assert metrics["single_point_iou_per_kind"][kind] == pytest.approx(np.mean(ious), abs=1e-6)


def test_fitted_iterations_closed_form(recipe: ModuleType) -> None:
    """10 slow start-up steps (1 s) and 30 steps of 0.5 s, 2 minutes: 95 s are left for steps of
    0.5 s x 1.03, i.e. 184 more."""
    assert recipe.fitted_iterations([1.0] * 10 + [0.5] * 30, 2.0) == 40 + int(95 / 0.515)
    assert recipe.fitted_iterations([1.0] * 40, 0.1) == 41  # out of time: still one more step


def test_fit_minutes_fixes_and_records_the_schedule(recipe: ModuleType, small_config: dict, tmp_path: Path) -> None:
    small_config["batch"].update(images=1, prompts_per_image=1)
    small_config["train"].update(total_iter=10_000, warmup_iter=50)
    result = recipe.train(small_config, tmp_path / "run", fit_minutes=0.02, export=False,
                          config_path="robustprior/configs/tiny_sam.yaml")
    state = load_training_checkpoint(tmp_path / "run").state
    entry = state["config"]["history"][-1]
    assert result["iteration"] == entry["schedule_iterations"] == state["config"]["train"]["total_iter"]
    assert recipe.FIT_PROBE[1] < result["iteration"] < 10_000  # set from the timed steps, not the config's
    assert entry["config"] == "robustprior/configs/tiny_sam.yaml"
    with pytest.raises(ValueError, match="fresh run"):
        recipe.train(small_config, tmp_path / "run", resume=True, fit_minutes=1.0)


def test_training_batches_do_not_depend_on_workers_or_start(recipe: ModuleType, small_config: dict) -> None:
    """Step i is the same made in this process, by 2 loader workers, or reached from another start."""
    from robustprior.data.scenes import generate_scene_arrays

    images, instances, _ = generate_scene_arrays(0, 6)
    here = recipe.training_batches(images, instances, small_config, 3, workers=1)
    loaders = recipe.training_batches(images, instances, small_config, 3, workers=2)
    from_zero = recipe.training_batches(images, instances, small_config, 0, workers=1)
    for _ in range(3):
        next(from_zero)
    for step in range(4):
        reference = next(here)
        for images_k, groups_k in (next(loaders), next(from_zero)):
            assert np.array_equal(np.asarray(images_k), reference[0]), step
            assert len(groups_k) == len(reference[1])
            for group, expected in zip(groups_k, reference[1]):
                for name, value in expected.__dict__.items():
                    assert (value is None and getattr(group, name) is None) or torch.equal(getattr(group, name), value)
    first, second = next(here), next(here)
    assert not np.array_equal(first[0], second[0]) or not torch.equal(first[1][0].targets, second[1][0].targets)


def test_full_resolution_loss_is_the_loss_of_the_inference_masks(recipe: ModuleType) -> None:
    """With ``full_resolution`` the training loss is computed on the logits that
    ``postprocess_masks`` (what evaluation thresholds) gives, against the exact masks."""
    torch.manual_seed(0)
    model = recipe.trainable_model("tiny").eval()
    images, instances, _ = recipe.held_out_scenes(5, 1)
    rng = np.random.default_rng(0)
    batch = {"prompt_mix": {"box": 1.0}, "prompts_per_image": 2, "negative_probability": 0.0, "box_jitter": 0.0}
    (group,) = recipe.sample_prompt_groups(instances, rng, batch)
    weights = {"full_resolution": True, "focal": 20.0, "dice": 1.0, "focal_alpha": -1.0, "focal_gamma": 2.0,
               "single_point_token0": 0.5}
    with torch.no_grad():
        features = model.encode_image(model.preprocess(torch.from_numpy(images).permute(0, 3, 1, 2).float()))
        terms = recipe.group_losses(model, features, group, weights)
        sparse, dense = model.encode_prompts(boxes=group.boxes)
        output = model.decode(features, sparse, dense, image_index=group.image_index, multimask_output=None,
                              path="sam")
        logits = model.postprocess_masks(output.mask_logits, (256, 256), (256, 256))[:, :1]

    def focal_and_dice(logits: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
        probabilities = logits.sigmoid()
        cross_entropy = -(truth * torch.log(probabilities) + (1 - truth) * torch.log(1 - probabilities))
        correct = probabilities * truth + (1 - probabilities) * (1 - truth)
        focal = ((1 - correct) ** 2 * cross_entropy).mean(dim=(-2, -1))
        overlap = (probabilities * truth).sum(dim=(-2, -1))
        dice = 1 - (2 * overlap + 1) / (probabilities.sum(dim=(-2, -1)) + truth.sum(dim=(-2, -1)) + 1)
        return focal.sum().item(), dice.sum().item()

    focal, dice = focal_and_dice(logits, group.targets.float())
    assert terms["focal"].item() == pytest.approx(focal, rel=1e-4)
    assert terms["dice"].item() == pytest.approx(dice, rel=1e-4)
    # without it: the 128 x 128 logits against the share of object pixels in each 2 x 2 block
    low_resolution = recipe.group_losses(model, features, group, {**weights, "full_resolution": False})
    focal, dice = focal_and_dice(output.mask_logits[:, :1], F.avg_pool2d(group.targets.float(), 2))
    assert low_resolution["focal"].item() == pytest.approx(focal, rel=1e-4)
    assert low_resolution["dice"].item() == pytest.approx(dice, rel=1e-4)


def test_device_choice(recipe: ModuleType) -> None:
    assert recipe.resolve_device("cpu") == torch.device("cpu")
    assert recipe.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        recipe.resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            recipe.resolve_device("cuda")


def test_git_commit_of_a_shipped_copy_comes_from_the_environment(recipe: ModuleType,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROBUSTPRIOR_GIT_COMMIT", raising=False)
    here = recipe.git_commit()
    assert here == "unknown" or len(here) == 40
    monkeypatch.setenv("ROBUSTPRIOR_GIT_COMMIT", "0123abc")
    assert recipe.git_commit() == "0123abc"


def test_killed_before_the_first_checkpoint_the_resumed_log_has_each_row_once(recipe: ModuleType,
                                                                              small_config: dict,
                                                                              tmp_path: Path) -> None:
    """Rows 1-3 are logged, then the process dies writing its first checkpoint: ``--resume`` starts
    again from iteration 0 and the log holds each iteration exactly once."""
    run = tmp_path / "run"

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("killed while writing the first checkpoint")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("robustprior.training.run_folder.save_training_checkpoint", killed)
        with pytest.raises(KeyboardInterrupt):
            recipe.train(small_config, run, export=False)
    assert load_training_checkpoint(run) is None
    assert [int(row["iteration"]) for row in csv.DictReader(open(run / "losses.csv"))] == [1, 2, 3]
    with pytest.raises(Exception, match="already holds a tiny_sam run"):
        recipe.train(small_config, run, export=False)  # neither --resume nor --overwrite: refused
    assert recipe.train(None, run, resume=True, export=False)["iteration"] == 3
    assert [int(row["iteration"]) for row in csv.DictReader(open(run / "losses.csv"))] == [1, 2, 3]


def test_resume_with_another_config_is_refused_before_any_work(recipe: ModuleType, small_config: dict,
                                                               tmp_path: Path) -> None:
    from robustprior.training import ConfigChangeError

    run = tmp_path / "run"
    recipe.train(small_config, run, stop_after=1, export=False)
    config_yaml = (run / "config.yaml").read_text()
    changed = {**small_config, "manual_seed": 7, "train": {**small_config["train"], "lr": 0.01}}
    with pytest.raises(ConfigChangeError, match=r"manual_seed: 0 -> 7\n  train.lr: 0.0008 -> 0.01\n"):
        recipe.train(changed, run, resume=True, export=False)
    assert (run / "config.yaml").read_text() == config_yaml
    assert load_training_checkpoint(run).iteration == 1


def test_command_line_errors_are_messages_not_tracebacks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from robustprior.training.tiny_sam.cli import main

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.md").write_text("keep me")
    text = (REPO_ROOT / "robustprior" / "configs" / "tiny_sam.yaml").read_text()
    bad = {"typo.yaml": text.replace("  weight_decay: 0.05", "  weight_decy: 0.05"),
           "zero.yaml": text.replace("  log_every: 10", "  log_every: 0").replace("  images: 4", "  images: 0"),
           "tpu.yaml": text.replace("threads: 1 ", "device: tpu\nthreads: 1 "),
           "old.yaml": text.replace("manual_seed: 0", "seed: 0")}
    for name, content in bad.items():
        (tmp_path / name).write_text(content)
    cases = [
        (["--config", str(tmp_path / "typo.yaml"), "--output", str(tmp_path / "a")],
         "unknown key 'train.weight_decy' (did you mean 'train.weight_decay'?)"),
        (["--config", str(tmp_path / "old.yaml"), "--output", str(tmp_path / "a")],
         "unknown key 'seed' (renamed: use 'manual_seed')"),
        (["--config", str(tmp_path / "zero.yaml"), "--output", str(tmp_path / "a")],
         "'batch.images' must be >= 1, got 0"),
        (["--config", str(tmp_path / "tpu.yaml"), "--output", str(tmp_path / "a")],
         "device must be auto, cpu or cuda (or cuda:N), got 'tpu'"),
        (["--output", str(mine), "--overwrite"], "is not a robustprior run folder"),
        (["--output", str(mine / "notes.md")], "is a file, not a folder"),
        (["--output", str(tmp_path / "none"), "--resume"], "there is no run in"),
        (["--output", str(tmp_path / "none"), "--export-only"], "has no checkpoint"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--output", str(tmp_path / "gpu"), "--device", "cuda"], "PyTorch sees no CUDA device"))
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2, argv
        error = capsys.readouterr().err
        assert error.startswith("error: ") and message in error and "Traceback" not in error, (argv, error)
    assert (mine / "notes.md").read_text() == "keep me" and sorted(p.name for p in mine.iterdir()) == ["notes.md"]
    assert not (tmp_path / "a").exists() and not (tmp_path / "gpu").exists(), "nothing is created before the checks"
