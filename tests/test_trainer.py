"""RobustSAM training: learning happens, resume is exact, DDP ranks agree, outputs are protected."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from robustprior.trainer import RobustSamTrainer, merge_config


def _config(tmp_path: Path, iterations: int, **train) -> dict:
    return {
        "seed": 3,
        "device": "cpu",
        "model": {"type": "tiny", "checkpoint": None},
        "data": {"train": {"format": "scenes", "n_images": 6, "seed": 11, "root": str(tmp_path / "scenes_train")},
                 "val": {"format": "scenes", "n_images": 3, "seed": 12, "root": str(tmp_path / "scenes_val")},
                 "min_area": 64, "instances_per_image": 2},
        "degradations": {"kinds": ["identity", "gauss_noise", "motion_blur", "fog"], "variants_per_image": 2},
        "feature_cache": {"enabled": True, "dir": str(tmp_path / "feature_cache")},
        "train": {"iterations": iterations, "batch_size": 2, "lr": 1e-3, "log_every": 1, "val_every": 1000,
                  "checkpoint_every": 2, **train},
    }


def _without_validation(config: dict) -> dict:
    return merge_config(config, {"data": {"val": None}})


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    straight = RobustSamTrainer(_without_validation(_config(tmp_path, 4)), tmp_path / "straight")
    straight.train()
    interrupted = RobustSamTrainer(_without_validation(_config(tmp_path, 2)), tmp_path / "interrupted")
    interrupted.train()
    resumed = RobustSamTrainer(_without_validation(_config(tmp_path, 4)), tmp_path / "interrupted", resume=True)
    assert resumed.state.iteration == 2
    resumed.train()
    assert resumed.robust_state_hash() == straight.robust_state_hash()
    rows = (tmp_path / "interrupted" / "log.csv").read_text().strip().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3", "4"]


def test_existing_run_is_not_overwritten(tmp_path: Path) -> None:
    RobustSamTrainer(_without_validation(_config(tmp_path, 1)), tmp_path / "run").train()
    before = (tmp_path / "run" / "final.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):
        RobustSamTrainer(_without_validation(_config(tmp_path, 1)), tmp_path / "run")
    assert (tmp_path / "run" / "final.safetensors").read_bytes() == before


def test_training_lowers_loss_and_raises_degraded_iou(tmp_path: Path) -> None:
    """A short run on two generated scenes (a learning check, not generalisation): the total loss
    falls and the robust path's IoU on degraded copies rises well above the untrained robust path."""
    config = _config(tmp_path, 100, lr=1e-3, val_every=100)
    config["data"]["train"].update(n_images=2, root=str(tmp_path / "two_scenes"))
    config["data"]["instances_per_image"] = 1
    config["data"]["val"] = config["data"]["train"]
    trainer = RobustSamTrainer(config, tmp_path / "learn")
    before = trainer.validate()["val_iou_robust"]
    metrics = trainer.train()
    rows = [line.split(",") for line in (tmp_path / "learn" / "log.csv").read_text().splitlines()]
    header = rows[0]
    total = [float(row[header.index("total")]) for row in rows[1:]]
    assert sum(total[-10:]) / 10 < 0.5 * sum(total[:10]) / 10
    assert metrics["val_iou_robust"] > before + 0.3
    assert metrics["feature_cache"]["hits"] > metrics["feature_cache"]["misses"]


def test_ddp_two_processes_agree(tmp_path: Path) -> None:
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(_without_validation(_config(tmp_path, 3))))
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               "-m", "robustprior.cli", "train", str(config_path), "--output", str(tmp_path / "ddp")]
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["ranks_agree"]
    assert len(metrics["rank_weight_hashes"]) == 2 and metrics["iterations"] == 3


def test_cache_command_encodes_every_variant_once(tmp_path: Path, capsys) -> None:
    from robustprior.cli import main

    config = _without_validation(_config(tmp_path, 1))
    config["data"]["train"].update(n_images=2, root=str(tmp_path / "two_scenes"))
    config["data"]["instances_per_image"] = 1
    config_path = tmp_path / "cache.yaml"
    config_path.write_text(yaml.safe_dump(config))
    assert main(["cache", str(config_path), "--output", str(tmp_path / "run")]) == 0
    # 2 clear images + 2 images x 2 degraded variants, each encoded exactly once (clear ones reused)
    assert "6 encoded," in capsys.readouterr().out
    assert main(["cache", str(config_path), "--output", str(tmp_path / "run")]) == 0
    assert "0 encoded" in capsys.readouterr().out


def test_changed_degradation_code_invalidates_only_degraded_features(tmp_path: Path, monkeypatch) -> None:
    """Cached degraded features are keyed by DEGRADATIONS_VERSION: after a bump the 4 degraded copies are
    encoded again while the 2 clear images still come from the cache (clear features are looked up once
    per variant: 4 lookups)."""
    from robustprior import trainer as trainer_module

    config = _without_validation(_config(tmp_path, 1))
    config["data"]["train"].update(n_images=2, root=str(tmp_path / "two_scenes"))
    config["data"]["instances_per_image"] = 1
    assert RobustSamTrainer(config, tmp_path / "first").fill_cache(progress=False) == {"hits": 2, "misses": 6}
    assert RobustSamTrainer(config, tmp_path / "again").fill_cache(progress=False) == {"hits": 8, "misses": 0}
    monkeypatch.setattr(trainer_module, "DEGRADATIONS_VERSION", trainer_module.DEGRADATIONS_VERSION + 1)
    assert RobustSamTrainer(config, tmp_path / "bumped").fill_cache(progress=False) == {"hits": 4, "misses": 4}


def test_robust_init_sam_starts_the_robust_path_as_sams_decoder(tmp_path: Path) -> None:
    import torch

    from robustprior.load import build_robust_sam
    from robustprior.checkpoint import save_checkpoint
    from robustprior.trainer import load_base_model

    torch.manual_seed(0)
    base = tmp_path / "base.safetensors"
    save_checkpoint(build_robust_sam("tiny", random_init=True), base)
    default = load_base_model({"type": "tiny", "checkpoint": str(base)})
    started = load_base_model({"type": "tiny", "checkpoint": str(base), "robust_init": "sam"})
    torch.testing.assert_close(started.robust.robust_mlp.state_dict(),
                               started.mask_decoder.output_hypernetworks_mlps[0].state_dict())
    assert not torch.equal(default.robust.robust_mlp.layers[0].weight, default.mask_decoder.output_hypernetworks_mlps[0].layers[0].weight)
    assert all(not p.requires_grad for p in started.sam_parameters())
    assert all(p.requires_grad for p in started.robust.parameters())
    with pytest.raises(ValueError, match="robust_init"):
        load_base_model({"type": "tiny", "checkpoint": None, "robust_init": "hq"})


def test_paper_consistency_step_against_a_hand_computation() -> None:
    """Each term of the paper objective, recomputed from the modules: the refined degraded features against
    the ORIGINAL SAM's clear features (relative MSE), tokens after AOTG against SAM's clear tokens."""
    import torch

    from robustprior.load import build_robust_sam
    from robustprior.losses import LossWeights, relative_mse
    from robustprior.trainer import RobustTrainingStep
    from robustprior.training_samples import PromptBatch

    torch.manual_seed(0)
    model = build_robust_sam("tiny", random_init=True).start_robust_path_from_sam()
    with torch.no_grad():  # perturb the robust parts so that no term is trivially zero
        for parameter in model.robust.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    model.eval()
    images = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        clear = model.encode_image(images)
        degraded = model.encode_image(images + 0.5 * torch.randn_like(images))
    prompts = PromptBatch(point_coords=torch.tensor([[[60.0, 70.0]], [[100.0, 30.0]], [[200.0, 150.0]]]),
                          point_labels=torch.ones(3, 1, dtype=torch.long), boxes=None,
                          targets=(torch.rand(3, 128, 128) > 0.5).float(), pixel_weights=torch.ones(3, 128, 128),
                          image_index=torch.tensor([0, 1, 1]), multimask=False)
    weights = LossWeights(mask_feature=10, token=1, dice=1, focal=20, distill=2)
    terms = RobustTrainingStep(model, weights, "paper")(clear, degraded, [prompts])

    sparse, dense = model.encode_prompts(points=(prompts.point_coords, prompts.point_labels))

    def sam_transformer(features, mask_tokens):  # segment-anything's own transformer and upscaling
        decoder = model.mask_decoder
        output_tokens = torch.cat((decoder.iou_token.weight, mask_tokens))
        tokens = torch.cat((output_tokens[None].expand(3, -1, -1), sparse), dim=1)
        source = features.embedding[prompts.image_index] + dense
        hidden, image_tokens = decoder.transformer(source, model.prompt_encoder.get_dense_pe(), tokens)
        upscaled = decoder.output_upscaling(image_tokens.transpose(1, 2).reshape(source.shape))
        return hidden[:, 1:5], upscaled

    with torch.no_grad():
        clear_tokens, clear_upscaled = sam_transformer(clear, model.mask_decoder.mask_tokens.weight)
        robust_tokens, degraded_upscaled = sam_transformer(degraded, model.robust.output_tokens.weight)
        fusion = model.robust.fusion
        expected = {
            "mfc_mask_feature": relative_mse(fusion.mask_feature_amfg(degraded_upscaled), clear_upscaled),
            "mfc_embedding": relative_mse(fusion.embedding_amfg(degraded.embedding), clear.embedding),
            "mfc_complementary": relative_mse(fusion.complementary_amfg(degraded.complementary), clear.complementary),
            "token": relative_mse(model.robust.token_generation(robust_tokens), clear_tokens),
        }
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms["mask_feature"], sum(expected[n] for n in expected if n.startswith("mfc_")),
                               rtol=1e-4, atol=1e-6)
    total = (10 * terms["mask_feature"] + terms["token"] + terms["dice"] + 20 * terms["focal"] + 2 * terms["distill"])
    torch.testing.assert_close(terms["total"], total)


def test_images_with_several_prompts_are_encoded_once(tmp_path: Path) -> None:
    config = _without_validation(_config(tmp_path, 2, batch_size=2, prompts_per_image=3, grad_share_every=1))
    config["data"]["instances_per_image"] = None
    config["data"]["min_area"] = 1
    config["data"].update(prompt="mixed", prompt_mix={"points": 1, "box": 1, "single_point": 1})
    trainer = RobustSamTrainer(config, tmp_path / "grouped")
    indices = trainer._rank_indices()
    records = [trainer.train_set.pairs[index][0] for index in indices]
    assert len(set(records)) == 2 and max(records.count(r) for r in records) <= 3 and len(indices) > 2
    clear, degraded, groups, kinds = trainer._batch(trainer.train_set, indices, 0)
    assert len(clear) == len(degraded) == len(kinds) == 2
    assert sorted(int(i) for group in groups for i in group.image_index) == sorted(
        [sorted(set(records), key=records.index).index(record) for record in records])
    trainer.train()
    rows = (tmp_path / "grouped" / "log.csv").read_text().strip().splitlines()
    header = rows[0].split(",")
    shares = [name for name in header if name.startswith("share_")]
    assert {"share_dice", "share_focal", "share_mask_feature", "share_token"} <= set(shares)
    last = rows[-1].split(",")
    assert abs(sum(float(last[header.index(name)]) for name in shares) - 1) < 1e-3
