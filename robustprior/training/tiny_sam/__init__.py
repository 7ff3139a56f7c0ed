"""Train the tiny SAM base (the SAM parts of ``build_robust_sam("tiny")``) from scratch.

Data: the scene world (:mod:`robustprior.data.scenes`), pre-generated once into a cache under the output
folder. Training follows SAM: each step takes B images and P prompts per image (one positive point,
a few points with an optional negative, or a jittered box, all drawn from a random object's exact
mask), with focal + dice losses on the logits upsampled to the image size against the exact masks
(``loss.full_resolution``; else on the 128 x 128 low-resolution logits against the masks
area-averaged to that size) and an MSE loss between the predicted and the actual IoU. Single points
use the three multimask outputs and back-propagate only the lowest-loss one; boxes and multi-point
prompts use token 0.

Usage::

    python recipes/train_tiny_sam.py --config robustprior/configs/tiny_sam.yaml --output runs/tiny_sam
        [--resume [--config C --allow-config-change] | --overwrite] [--device cuda] [--workers 8] [--fit-minutes 8]

On a GPU (``--device cuda``, bfloat16 autocast) the recipe runs unchanged; ``--workers`` generates
the scenes in parallel processes (the same scenes as one process); ``--fit-minutes M`` times the
first steps and sets the schedule length to what fits in M minutes (recorded in the config's
history, so the model card's reproduce command names the exact iteration count).

The output folder is a run of :mod:`robustprior.training` (:class:`~robustprior.training.Run`):
``config.yaml``, the scene cache, ``checkpoints/`` (atomic; weights in safetensors, optimizer,
schedule and RNG states loadable with ``weights_only=True``; ``--resume`` continues exactly),
``losses.csv``, ``evaluations.csv`` and ``metrics.json``; at the end the weights and model card
named in the config's ``export`` section.

Modules: :mod:`.config` (schema), :mod:`.batches` (scenes, prompts, per-step batches),
:mod:`.objective` (loss), :mod:`.evaluation`, :mod:`.model`, :mod:`.loop` (:func:`train`),
:mod:`.export` (weights and model card), :mod:`.cli`.
"""
from __future__ import annotations

from ..distributed import resolve_device
from ..provenance import git_commit
from .batches import PAD_LABEL, PromptGroup, TrainingBatches, cached_scenes, sample_prompt_groups, training_batches
from .config import DEFAULT_CONFIG, SCHEMA, load_config
from .evaluation import evaluate, held_out_scenes
from .export import export_finished_run, export_model, model_card, per_kind_table, reproduce_commands
from .loop import (EVALUATION_COLUMNS, FIT_PROBE, LOSS_COLUMNS, RUN_KIND, fitted_iterations, schedule_spec, train)
from .model import align_decoder_attention, parameter_groups, trainable_model
from .objective import actual_iou, focal_and_dice, group_losses, training_step_loss

__all__ = [
    "DEFAULT_CONFIG", "EVALUATION_COLUMNS", "FIT_PROBE", "LOSS_COLUMNS", "PAD_LABEL", "RUN_KIND", "SCHEMA",
    "PromptGroup", "TrainingBatches", "actual_iou", "align_decoder_attention", "cached_scenes", "evaluate",
    "export_finished_run", "export_model", "fitted_iterations", "focal_and_dice", "git_commit", "group_losses",
    "held_out_scenes", "load_config", "model_card", "parameter_groups", "per_kind_table", "reproduce_commands",
    "resolve_device", "sample_prompt_groups", "schedule_spec", "train", "trainable_model", "training_batches",
    "training_step_loss",
]
