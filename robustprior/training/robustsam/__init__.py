"""RobustSAM training on the run engine: frozen SAM, the paper's losses, feature cache, DDP, exact resume.

Losses (:mod:`robustprior.training.losses`): ``train.consistency: paper`` (default) compares each AMFG
output and the AOTG tokens on the degraded image with the ORIGINAL SAM's features and tokens on the
clear image (Eq. 1, relative MSE); ``release`` keeps the official code's fused-feature MSE. Prompts
(``data.prompt``): the release's 3 points, jittered boxes, single ambiguous points trained with SAM's
best-of-three loss, or a ``mixed`` draw of them (``data.prompt_mix``); validation uses the evaluation
protocol's centre point (``data.val_prompt``). ``train.grad_share_every: N`` logs, every N
iterations, each weighted term's gradient norm on the robust parameters (``grad_<term>`` columns of
``log.csv``), so a run shows which loss drives it.

Usage::

    robustprior train CONFIG.yaml --output DIR [--resume [--allow-config-change] | --overwrite] [--iterations N]
    torchrun --nproc_per_node N -m robustprior.cli train CONFIG.yaml --output DIR     # DDP (gloo on CPU, NCCL on GPU)
    robustprior cache CONFIG.yaml --output DIR                                       # fill the feature cache first

The output folder is a run of :mod:`robustprior.training` (:class:`~robustprior.training.Run`, kind
``robustsam``): ``config.yaml`` (the validated config; ``--resume`` with another config is refused
unless ``--allow-config-change``, and every change is recorded in ``config_changes.yaml``);
``log.csv`` (every logged step) and ``val_log.csv``, cut back to the checkpoint on resume;
``checkpoints/`` (atomic; the robust parts' weights in safetensors, optimizer, schedule, training
position and every rank's RNG states loadable with ``weights_only=True``; ``--resume`` continues
exactly); ``feature_cache/`` (unless ``feature_cache.dir``; kept by ``--overwrite``);
``best.safetensors`` (best validation degraded IoU); ``final.safetensors``; ``metrics.json``.

Modules: :mod:`.config` (schema), :mod:`.model` (the starting model), :mod:`.samples` (items to
model-ready prompts and targets), :mod:`.feature_cache`, :mod:`.batches` (datasets, degradations,
batches of cached features), :mod:`.objective` (the loss of one batch), :mod:`.trainer` (the loop,
validation, :func:`~.trainer.fill_feature_cache`), :mod:`.export` (a finished run as float16 weights
plus a model card), :mod:`.ablation` (the levers trained and evaluated side by side), :mod:`.loader`
(fresh degraded batches made ahead by worker processes, without the feature cache), :mod:`.gpu_run`
(the one-command GPU run, ``recipes/train_robustsam_tiny_gpu.py``).
"""
from __future__ import annotations

from .batches import TrainingData, TrainingState, build_datasets, feature_cache_dir
from .config import (FEATURE_CACHE_FOLDER, MODEL_SCHEMA, ROBUST_INITS, RUN_KIND, SCHEMA, build_degradation, load_config,
                     schedule_spec)
from .feature_cache import FeatureCache, encoder_fingerprint, image_hash
from .model import load_base_model
from .objective import RobustTrainingStep
from .samples import PromptBatch, SamplePreparer
from .trainer import TRAIN_LOG, VAL_COLUMNS, VAL_LOG, RobustSAMTrainer, fill_feature_cache

__all__ = [
    "FEATURE_CACHE_FOLDER", "MODEL_SCHEMA", "ROBUST_INITS", "RUN_KIND", "SCHEMA", "TRAIN_LOG", "VAL_COLUMNS", "VAL_LOG",
    "FeatureCache", "PromptBatch", "RobustSAMTrainer", "RobustTrainingStep", "SamplePreparer", "TrainingData",
    "TrainingState", "build_datasets", "build_degradation", "encoder_fingerprint", "feature_cache_dir",
    "fill_feature_cache", "image_hash", "load_base_model", "load_config", "schedule_spec",
]
