"""The tiny-SAM recipe's config schema (``robustprior/configs/tiny_sam*.yaml``).

Key names are BasicSR's where BasicSR has the key with the same meaning (as the RobustSAM trainer's,
:mod:`robustprior.training.robustsam.config`): ``manual_seed`` (the run's global seed) and the
``train`` section with ``total_iter`` and ``warmup_iter`` (linear warmup iterations). They were
``seed``, ``optimizer``, ``optimizer.iterations`` and ``optimizer.warmup_iterations`` before (the
schema's ``former`` entries): a config given with an earlier name is refused in one line naming the
new key; a run folder saved with them resumes, its config read with the names of now and rewritten
with them (:func:`robustprior.training.config.migrate_config`).

Kept under our names: ``batch.images`` (images per step of the one training process, each with
``batch.prompts_per_image`` prompts: BasicSR's ``batch_size_per_gpu`` counts samples per GPU of a
``datasets.train`` section, a different structure); ``train.lr`` / ``weight_decay`` / ``betas``
(BasicSR's ``train.optim_g``) and the cosine's ``min_lr_ratio`` (BasicSR's ``train.scheduler``): the
sections are not restructured; ``logging`` (BasicSR's ``logger``, with other keys); the scene seeds
``data.train_seed`` / ``data.test_seed``, which are not the run's global seed.
"""
from __future__ import annotations

from pathlib import Path

from robustprior.modeling.build import MODEL_CONFIGS, ModelConfig
from ..config import Field, Section, load_config as load_checked_config
from ..distributed import check_device_name

DEFAULT_CONFIG = "robustprior/configs/tiny_sam.yaml"  # the CPU recipe, as run records name it
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[2] / "configs" / "tiny_sam.yaml"  # ships in the package


def _check_model_overrides(overrides: dict) -> None:
    unknown = sorted(set(overrides) - set(ModelConfig.__dataclass_fields__) - {"model_type"})
    if unknown:
        raise ValueError(f"unknown ModelConfig field(s) {unknown}; fields: {sorted(ModelConfig.__dataclass_fields__)}")


def _check_betas(betas: list[float]) -> None:
    if not all(0.0 <= beta < 1.0 for beta in betas):
        raise ValueError(f"Adam's betas must lie in [0, 1), got {betas}")


def _check_prompt_mix(mix: dict) -> None:
    if sum(mix.values()) <= 0:
        raise ValueError("at least one prompt kind needs a probability above 0")


def _check_counts(config: dict) -> None:
    data, batch = config["data"], config["batch"]
    if batch["images"] > data["train_scenes"]:
        raise ValueError(f"batch.images ({batch['images']}) exceeds data.train_scenes ({data['train_scenes']}): "
                         "a step draws its images without replacement")
    if data["quick_eval_scenes"] > data["test_scenes"]:
        raise ValueError(f"data.quick_eval_scenes ({data['quick_eval_scenes']}) exceeds data.test_scenes "
                         f"({data['test_scenes']})")


SCHEMA = Section({
    "model_type": Field(str, "tiny", choices=tuple(MODEL_CONFIGS), doc="robustprior.modeling.build registry name"),
    "model_overrides": Field(dict, None, check=_check_model_overrides, doc="ModelConfig fields to change"),
    "aligned_attention_init": Field(bool, False, doc="decoder attention starts with W_k = W_q"),
    "manual_seed": Field(int, 0, at_least=0, doc="the run's global seed (weights, batch order)"),
    "device": Field(str, "cpu", check=check_device_name),
    "threads": Field(int, 1, at_least=1, doc="torch CPU threads of the training process"),
    "data": {
        "train_seed": Field(int, 0, at_least=0),
        "train_scenes": Field(int, 1500, at_least=1),
        "test_seed": Field(int, 1, at_least=0),
        "test_scenes": Field(int, 64, at_least=1),
        "quick_eval_scenes": Field(int, 16, at_least=1),
        "flip_augmentation": Field(bool, True),
    },
    "batch": {
        "images": Field(int, 4, at_least=1),
        "prompts_per_image": Field(int, 8, at_least=1),
        "prompt_mix": Section({
            "single_point": Field(float, 0.0, at_least=0),
            "multi_point": Field(float, 0.0, at_least=0),
            "box": Field(float, 0.0, at_least=0),
        }, check=_check_prompt_mix),
        "negative_probability": Field(float, 0.5, at_least=0, at_most=1),
        "box_jitter": Field(float, 0.1, at_least=0),
    },
    "train": Section({
        "total_iter": Field(int, 1300, at_least=1, doc="training iterations (the cosine schedule's length)"),
        "lr": Field(float, 8e-4, above=0),
        "weight_decay": Field(float, 0.05, at_least=0),
        "betas": Field(list, [0.9, 0.999], items=float, length=2, check=_check_betas),
        "warmup_iter": Field(int, 50, at_least=0, doc="linear warmup iterations"),
        "min_lr_ratio": Field(float, 0.02, at_least=0, at_most=1),
        "gradient_clip": Field(float, 1.0, above=0),
        "bf16_autocast": Field(bool, True),
    }, former={"iterations": "total_iter", "warmup_iterations": "warmup_iter"}),
    "loss": {
        "full_resolution": Field(bool, False),
        "focal": Field(float, 20.0, at_least=0),
        "dice": Field(float, 1.0, at_least=0),
        "iou": Field(float, 1.0, at_least=0),
        "focal_alpha": Field(float, -1.0, at_most=1, doc="< 0: no class weighting"),
        "focal_gamma": Field(float, 2.0, at_least=0),
        "single_point_token0": Field(float, 0.5, at_least=0),
    },
    "logging": {
        "checkpoint_minutes": Field(float, 4.0, above=0),
        "quick_eval_every": Field(int, 250, at_least=1),
        "log_every": Field(int, 10, at_least=1),
    },
    "export": {
        "weights": Field(str, "robustprior/weights/sam_tiny.safetensors"),
        "model_card": Field(str, "robustprior/weights/sam_tiny.md"),
    },
    "history": Field(list, [], items=dict, internal=True,
                     doc="one entry per training invocation (written by training, for the model card)"),
}, check=_check_counts, former={"seed": "manual_seed", "optimizer": "train"})


def load_config(path: str | Path) -> dict:
    """The YAML recipe config, validated against :data:`SCHEMA` (defaults filled in)."""
    return load_checked_config(path, SCHEMA)
