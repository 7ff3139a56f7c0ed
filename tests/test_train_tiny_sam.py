"""Smoke test of recipes/train_tiny_sam.py: a few iterations, atomic checkpoints, exact resume."""
from __future__ import annotations

import csv
import importlib.util
import json
import math
from collections import Counter
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from robustprior.scenes import TextureBank, derive_seed, generate_scene

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_recipe() -> ModuleType:
    """Import ``recipes/train_tiny_sam.py`` (the recipes folder is not a package)."""
    spec = importlib.util.spec_from_file_location("train_tiny_sam", REPO_ROOT / "recipes" / "train_tiny_sam.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recipe() -> ModuleType:
    return load_recipe()


@pytest.fixture
def small_config(recipe: ModuleType) -> dict:
    """The shipped config shrunk to 4 train scenes, 2 x 2 prompts and 3 iterations."""
    config = recipe.load_config(REPO_ROOT / "recipes" / "configs" / "tiny_sam.yaml")
    config["data"].update(train_scenes=4, test_scenes=1, quick_eval_scenes=1)
    config["batch"].update(images=2, prompts_per_image=2)
    config["optimizer"].update(iterations=3, warmup_iterations=1)
    config["logging"].update(quick_eval_every=1000, log_every=1)
    return config


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
    checkpoint_path = interrupted / recipe.CHECKPOINT_NAME
    assert torch.load(checkpoint_path, map_location="cpu", weights_only=False)["iteration"] == 2
    assert not list(interrupted.glob(".*.tmp")), "temporary checkpoint files must be moved into place"
    assert not (interrupted / "metrics.json").exists()

    def interrupted_save(payload: object, file: str) -> None:
        Path(file).write_bytes(b"partial")
        raise KeyboardInterrupt("interrupted while writing the checkpoint")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "save", interrupted_save)
        with pytest.raises(KeyboardInterrupt):
            recipe.train(small_config, interrupted, resume=True, export=False)
    assert torch.load(checkpoint_path, map_location="cpu", weights_only=False)["iteration"] == 2
    assert not list(interrupted.glob(".*.tmp")), "an interrupted write must leave no temporary file"

    resumed = recipe.train(small_config, interrupted, resume=True, export=False)
    assert resumed["iteration"] == 3
    assert loss_at(interrupted, 1) == loss_at(tmp_path / "full", 1)
    assert loss_at(interrupted, 3) == pytest.approx(loss_at(tmp_path / "full", 3), rel=1e-6)


def test_export_writes_loadable_weights_and_card(recipe: ModuleType, small_config: dict, tmp_path: Path) -> None:
    from robustprior.checkpoint import load_model, read_state_dict

    small_config["export"] = {"weights": str(tmp_path / "sam_tiny.safetensors"),
                              "model_card": str(tmp_path / "sam_tiny.md")}
    metrics = {"single_point_iou": 0.5, "single_point_oracle_iou": 0.6, "token0_iou": 0.4, "box_iou": 0.7,
               "objects": 3}
    summary = {"metrics": metrics, "iterations": 3, "train_seconds": 1.0, "median_step_seconds": 0.3,
               "train_scenes": 4, "test_scenes": 1, "git_commit": "abc"}
    recipe.export_model(recipe.trainable_model("tiny", aligned_attention=True), small_config, summary)

    model = load_model(tmp_path / "sam_tiny.safetensors")
    assert torch.equal(model.robust.output_tokens.weight, model.mask_decoder.mask_tokens.weight)
    metadata = read_state_dict(tmp_path / "sam_tiny.safetensors")[1]
    assert metadata["trained_by"] == "recipes/train_tiny_sam.py"
    assert metadata["single_point_iou"] == "0.5000"
    assert "| 0.5000 |" in (tmp_path / "sam_tiny.md").read_text()


def test_extended_schedule_history_and_export_of_finished_run(recipe: ModuleType, small_config: dict,
                                                              tmp_path: Path) -> None:
    from robustprior.checkpoint import load_model

    small_config["export"] = {"weights": str(tmp_path / "w.safetensors"), "model_card": str(tmp_path / "w.md")}
    run = tmp_path / "run"
    recipe.train(small_config, run, stop_after=2, export=False)
    with pytest.raises(ValueError, match="stopped at iteration 2 of 3"):
        recipe.export_finished_run(run)
    assert recipe.train(small_config, run, resume=True, iterations=4, threads=1, export=False)["iteration"] == 4

    state = torch.load(run / recipe.CHECKPOINT_NAME, map_location="cpu", weights_only=False)
    assert state["config"]["history"] == [
        {"start_iteration": 0, "schedule_iterations": 3, "threads": small_config["threads"]},
        {"start_iteration": 2, "schedule_iterations": 4, "threads": 1},
    ]
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
    exported = load_model(tmp_path / "w.safetensors")
    trained = state["model"]["mask_decoder.iou_prediction_head.layers.0.weight"]
    assert torch.allclose(exported.state_dict()["mask_decoder.iou_prediction_head.layers.0.weight"], trained,
                          atol=1e-2, rtol=1e-2)  # float16 file


def test_evaluation_per_shape_kind_matches_object_by_object_clicks(recipe: ModuleType) -> None:
    """Each object's single click, decoded on its own, averaged per kind of that object."""
    from robustprior.metrics import mask_iou
    from robustprior.prompts import center_point

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
