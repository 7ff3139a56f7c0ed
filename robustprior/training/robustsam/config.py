"""The RobustSAM trainer's config schema (``robustprior/configs/robustsam_tiny.yaml``).

Every key the trainer reads is declared here with its default; an unknown key, a wrong type or an
out-of-range value is one :class:`~robustprior.training.ConfigError` before any work, naming the key
and the closest valid one. The data sections ``data.train`` / ``data.val`` are checked by
:func:`robustprior.data.sources.check_source_config` (their keys depend on their ``format``).

Key names are BasicSR's wherever BasicSR has the key with the same meaning (the vocabulary of
``restoration/options``): ``manual_seed`` (the run's global seed), ``train.total_iter``,
``train.warmup_iter`` (linear warmup iterations) and ``train.batch_size_per_gpu`` (the batch of each
process: one process per GPU under ``torchrun``; the global batch is it times the process count).
They were ``seed``, ``train.iterations``, ``train.warmup`` and ``train.batch_size`` before
(the schema's ``former`` entries): a config given with an earlier name is refused in one line naming the new key
(``unknown key 'train.iterations' (renamed: use 'train.total_iter')``); a run folder saved with them
resumes, its config read with the names of now and rewritten with them
(:func:`robustprior.training.config.migrate_config`).

Kept under our names, on purpose:

* ``data.workers``: BasicSR's ``num_worker_per_gpu`` is the DataLoader workers of each GPU; ours
  counts the processes that write the generated scenes once (on the main process) *and* those that
  make batches ahead without the feature cache, so the BasicSR name would misstate it.
* ``train.lr`` / ``weight_decay`` / ``optimizer`` and ``schedule`` / ``step_size`` / ``gamma``:
  BasicSR nests them in ``train.optim_g`` and ``train.scheduler`` (with its own scheduler types);
  the sections are not restructured.
* ``train.log_every`` / ``val_every`` / ``checkpoint_every``: BasicSR keeps these in other sections
  (``logger.print_freq``, ``val.val_freq``, ``logger.save_checkpoint_freq``); they stay in ``train``.
* Seeds that are not the run's global seed (``data.train.seed`` of generated scenes,
  ``curve.seed`` of the curve's degradations) are not BasicSR's ``manual_seed`` and keep ``seed``.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from robustprior.modeling.build import MODEL_CONFIGS
from robustprior.data.sources import check_source_config
from robustprior.data.datasets import PROMPT_KINDS, RobustSegmentationDataset
from robustprior.data.degrade import DEGRADATIONS, RandomDegradation
from ...modeling.anti_degradation_output_tokens import TOKEN_MODES
from ...modeling.fourier_degradation_suppression import FOURIER_MODES
from ..config import REQUIRED, Field, Section, load_config as load_checked_config
from ..distributed import check_device_name
from ..losses import CONSISTENCY_MODES
from ..schedules import SCHEDULE_KINDS, ScheduleSpec

RUN_KIND = "robustsam"
FEATURE_CACHE_FOLDER = "feature_cache"  # the cache's default place in a run folder; --overwrite keeps it
ROBUST_INITS = ("default", "sam")
OPTIMIZERS = ("adam", "adamw")


def _check_data_source(section: dict) -> None:
    check_source_config(section, section="the section")


def _check_prompt_mix(mix: dict) -> None:
    unknown = sorted(set(mix) - set(PROMPT_KINDS))
    if unknown:
        raise ValueError(f"unknown prompt kind(s) {', '.join(map(str, unknown))}; kinds: {', '.join(PROMPT_KINDS)}")


def _check_prompts(data: dict) -> None:
    """``prompt: mixed`` needs ``prompt_mix`` (valid weights), and only it takes one."""
    RobustSegmentationDataset._prompt_distribution(data["prompt"], data["prompt_mix"])


def _check_kinds(kinds: str | list) -> None:
    if isinstance(kinds, str) and kinds != "all":
        raise ValueError(f"must be all or a list of degradation kinds, got {kinds!r}")


def _check_degradations(degradations: dict) -> None:
    """The kinds, identity share, severity and reference size as :class:`RandomDegradation` takes them."""
    build_degradation(degradations)


def build_degradation(degradations: Mapping[str, Any]) -> RandomDegradation:
    """The training degradation of a validated ``degradations`` section."""
    kinds = DEGRADATIONS if degradations["kinds"] == "all" else tuple(degradations["kinds"])
    return RandomDegradation(kinds, p_identity=degradations["p_identity"], severity=degradations["severity"],
                             reference_size=degradations["reference_size"])


MODEL_SCHEMA = Section({
    "type": Field(str, "tiny", choices=tuple(MODEL_CONFIGS), doc="robustprior.modeling.build registry name"),
    "checkpoint": Field(str, None, doc="SAM / MobileSAM / official RobustSAM / robustprior weights; null: random"),
    "fourier_mode": Field(str, "paper", choices=FOURIER_MODES),
    "token_mode": Field(str, None, choices=TOKEN_MODES, doc="null: release for official checkpoints, else paper"),
    "robust_init": Field(str, "default", choices=ROBUST_INITS,
                         doc="sam: the robust path starts as SAM's decoder (RobustSAM.start_robust_path_from_sam)"),
})

SCHEMA = Section({
    "manual_seed": Field(int, 0, at_least=0, doc="the run's global seed (weights, batch order, degradations)"),
    "device": Field(str, "auto", check=check_device_name),
    "model": MODEL_SCHEMA,
    "data": Section({
        "train": Field(dict, REQUIRED, check=_check_data_source, doc="a data section (robustprior.data.sources)"),
        "val": Field(dict, None, check=_check_data_source, doc="a data section; null: no validation"),
        "prompt": Field(str, "points", choices=(*PROMPT_KINDS, "mixed")),
        "prompt_mix": Field(dict, None, check=_check_prompt_mix, doc="{kind: weight} for prompt: mixed"),
        "n_points": Field(int, 3, at_least=1),
        "box_jitter": Field(float, 0.1, at_least=0),
        "min_area": Field(int, 64, at_least=1),
        "instances_per_image": Field(int, None, at_least=1, doc="null: every instance"),
        "val_prompt": Field(str, "center_point", choices=PROMPT_KINDS),
        "workers": Field(int, 1, at_least=1, doc="processes writing generated scenes and, without the feature cache, "
                                                 "making the training batches ahead (robustsam.loader)"),
    }, check=_check_prompts),
    "degradations": Section({
        "kinds": Field((str, list), "all", items=str, check=_check_kinds, doc="all, or a list of kinds"),
        "p_identity": Field(float, None, at_least=0, at_most=1, doc="null: identity is one more kind"),
        "severity": Field((float, list), 1.0, items=float, length=2, doc="a value or a [low, high] range"),
        "variants_per_image": Field(int, 16, at_least=1, doc="degraded copies per image, cycled over epochs"),
        "reference_size": Field(float, None, above=0, doc="pixel sizes scaled to the image; null: raw"),
    }, check=_check_degradations),
    "feature_cache": {
        "enabled": Field(bool, True),
        "dir": Field(str, None, doc="null: OUTPUT/feature_cache"),
    },
    "train": Section({
        "total_iter": Field(int, 1000, at_least=1, doc="training iterations (the schedule's length)"),
        "fit_minutes": Field(float, None, above=0,
                             doc="a fresh run times its first steps and fixes total_iter so training ends within "
                                 "this many minutes (recorded in the run's config); null: total_iter as given"),
        "batch_size_per_gpu": Field(int, 2, at_least=1,
                                    doc="images (prompts_per_image > 1) or items per process (one per GPU)"),
        "prompts_per_image": Field(int, 1, at_least=1),
        "optimizer": Field(str, "adam", choices=OPTIMIZERS),
        "lr": Field(float, 5e-4, above=0),
        "weight_decay": Field(float, 1e-5, at_least=0),
        "schedule": Field(str, "constant", choices=SCHEDULE_KINDS),
        "step_size": Field(int, 1000, at_least=1, doc="step schedule: iterations between decays after the warmup"),
        "gamma": Field(float, 0.5, above=0, doc="step schedule: decay factor"),
        "warmup_iter": Field(int, 0, at_least=0, doc="linear warmup iterations; 0: none"),
        "grad_clip": Field(float, 1.0, at_least=0, doc="gradient-norm clip; 0 or null: none"),
        "amp": Field(bool, True, doc="bfloat16 autocast on GPUs"),
        "cpu_amp": Field(bool, False, doc="bfloat16 autocast on CPUs too (fast where the CPU has bf16 instructions)"),
        "image_stage_iterations": Field(int, 0, at_least=0,
                                        doc="first N iterations train only the per-image AMFGs towards the clear "
                                            "image's encoder features (paper consistency; no decoder pass)"),
        "consistency": Field(str, "paper", choices=CONSISTENCY_MODES),
        "loss_weights": {name: Field(float, default, at_least=0) for name, default in
                         (("mask_feature", 1.0), ("token", 1.0), ("dice", 1.0), ("focal", 20.0), ("distill", 0.0))},
        "grad_share_every": Field(int, 0, at_least=0, doc="log each term's gradient share every N; 0: never"),
        "log_every": Field(int, 10, at_least=1),
        "val_every": Field(int, 200, at_least=1),
        "checkpoint_every": Field(int, 100, at_least=1),
    }, former={"iterations": "total_iter", "warmup": "warmup_iter", "batch_size": "batch_size_per_gpu"}),
    "curve": Section({  # the learning curve (robustprior.training.robustsam.curve), measured on rank 0
        "every": Field(int, 0, at_least=0, doc="measure every N iterations, at the start and at the end; 0: never"),
        "data": Field(dict, {"format": "scenes", "n_images": 8, "seed": 7000}, check=_check_data_source,
                      doc="held-out images (seed 7000: neither training, validation nor evaluation use it)"),
        "kinds": Field((str, list), "all", items=str, check=_check_kinds, doc="all, or a list with identity"),
        "seed": Field(int, 0, at_least=0, doc="degradation seeds derive from (seed, image name, kind)"),
        "severity": Field(float, 1.0, above=0),
        "reference_size": Field(float, None, above=0, doc="null: raw pixel sizes, as Table 2's evaluation"),
        "min_area": Field(int, 64, at_least=1),
    }),
}, former={"seed": "manual_seed"})


def load_config(path: str | Path) -> dict:
    """A training YAML file validated against :data:`SCHEMA` (defaults filled in)."""
    return load_checked_config(path, SCHEMA)


def schedule_spec(train: Mapping[str, Any]) -> ScheduleSpec:
    """The learning-rate schedule of a validated ``train`` section: ``constant`` / ``cosine`` (to 0) /
    ``step``, after ``warmup_iter`` linear warmup iterations (:mod:`robustprior.training.schedules`)."""
    return ScheduleSpec(train["schedule"], warmup_iterations=train["warmup_iter"], step_size=train["step_size"],
                        gamma=train["gamma"])
