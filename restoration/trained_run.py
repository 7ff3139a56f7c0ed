"""A finished restoration run read back without training: what its folder holds and its network at work.

:mod:`restoration.train` writes a run folder (a :class:`robustprior.training.Run` of kind
:data:`RUN_KIND`) holding ``config.yaml``, ``checkpoints/``, :data:`TRAIN_LOG`, :data:`VAL_LOG`,
:data:`RESULTS_NAME`, ``images/`` and (by default) the prior cache :data:`PRIOR_CACHE_NAME`.
:func:`load_trained_run` reads its config and latest checkpoint (safetensors weights, ``weights_only``
state) and writes nothing; :func:`results_record` says what :data:`RESULTS_NAME` holds;
:class:`TrainedRun` computes the priors of new images with the run's own prior model and restores them. Readers of finished runs (:mod:`restoration.restore`,
:mod:`restoration.prior_swap`, :mod:`restoration.prior_reliance`, :mod:`restoration.report`) import
this module, never the trainer.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from restoration.archs import build_network
from restoration.config import validate_options
from restoration.datasets import PriorIndex, image_covering_features, prepare_priors
from restoration.inference import restore_image
from restoration.metrics import tensor_to_uint8
from restoration.paired_data import read_rgb_float
from robustprior.training.checkpoints import load_training_checkpoint
from robustprior.training.distributed import resolve_device
from robustprior.training.errors import CheckpointError

__all__ = ["PRIOR_CACHE_NAME", "RESULTS_NAME", "RUN_KIND", "TRAIN_LOG", "VAL_LOG", "TrainedRun", "load_trained_run",
           "results_record"]

RUN_KIND = "restoration"
RESULTS_NAME = "results.json"
TRAIN_LOG, VAL_LOG = "train_log.csv", "val_log.csv"
PRIOR_CACHE_NAME = "prior_cache"  # default cache folder inside a run folder; kept by --overwrite


@dataclass
class TrainedRun:
    """A trained run read back without training (:func:`load_trained_run`): its eval-mode ``network``,
    validated ``options``, ``grey_scale``, ``iteration`` and ``prior`` description."""

    folder: Path
    network: nn.Module
    options: dict[str, Any]
    grey_scale: int | None
    iteration: int
    prior: dict[str, Any]
    prior_fingerprint: str | None
    device: torch.device

    def prepare_priors(self, lq_paths: Sequence[str | Path], cache_dir: str | Path,
                       progress: bool = True) -> PriorIndex | None:
        """The priors of new images with the run's prior model and settings (None without a prior); a
        prior model that is not the one the run was trained with is a :class:`CheckpointError`."""
        if self.options["prior"]["kind"] == "none":
            return None
        index = prepare_priors(self.options["prior"], lq_paths, cache_dir, self.device, progress=progress)
        if index.description.get("fingerprint") != self.prior_fingerprint:
            raise CheckpointError(f"the prior model now gives fingerprint {index.description.get('fingerprint')}, but "
                                  f"{self.folder} was trained with {self.prior_fingerprint}: not the same prior model")
        index.grey_scale = self.grey_scale
        return index

    def restore_file(self, path: str | Path, priors: PriorIndex | None = None, *, tile: int | None = None,
                     overlap: int | None = None, zero_prior: bool = False) -> np.ndarray:
        """The restored H x W x 3 uint8 RGB image of an image file (its prior from ``priors``), as
        overlapping ``tile`` x ``tile`` windows when a side exceeds ``tile`` (None: the run's ``val.tile``;
        0: never tiled) with ``overlap`` (None: the run's ``val.overlap``). ``zero_prior``: the label map
        (all 0: one region) and latent features (all 0) zeroed, to measure how much the network reads them."""
        image = torch.from_numpy(np.ascontiguousarray(read_rgb_float(path).transpose(2, 0, 1)))[None]
        label_map = features = None
        if priors is not None:
            stored = priors.load(path)
            labels = priors.label_map(stored)
            label_map = torch.from_numpy(labels)[None]
            if priors.feature is not None:
                features = image_covering_features(getattr(stored, priors.feature).float(), labels.shape)[None]
            if zero_prior:
                label_map = torch.zeros_like(label_map)
                features = None if features is None else torch.zeros_like(features)
        tile = self.options["val"]["tile"] if tile is None else tile
        overlap = self.options["val"]["overlap"] if overlap is None else overlap
        restored = restore_image(self.network, image, label_map, features, grey_scale=self.grey_scale,
                                 tile=tile or None, overlap=overlap, device=self.device)
        return tensor_to_uint8(restored)


def load_trained_run(run_dir: str | Path, device: str | torch.device | None = "auto") -> TrainedRun:
    """Read a trained run (its config and latest checkpoint; safetensors weights, ``weights_only`` state)
    without opening it for training: nothing in the folder is written."""
    run_dir = Path(run_dir)
    checkpoint = load_training_checkpoint(run_dir)
    if checkpoint is None:
        raise CheckpointError(f"{run_dir} holds no checkpoint of a trained run")
    state = checkpoint.state
    options = validate_options(state["config"], source=f"the options saved in {run_dir}")
    device = resolve_device(device)
    network = build_network(state["network"])
    try:
        network.load_state_dict(checkpoint.weights)
    except RuntimeError as error:
        raise CheckpointError(f"the weights in {run_dir} do not fit its network ({str(error).splitlines()[0]})") from None
    return TrainedRun(run_dir, network.to(device).eval(), options, state["grey_scale"], checkpoint.iteration,
                      dict(state["prior"]), state["prior_fingerprint"], device)


def results_record(options: Mapping[str, Any], metrics: Mapping[str, Any], *, iteration: int,
                   network: Mapping[str, Any], prior: Mapping[str, Any] | None, grey_scale: int | None,
                   world_size: int, num_train_pairs: int, num_test_pairs: int, train_seconds: float,
                   device: torch.device | str) -> dict[str, Any]:
    """What :data:`RESULTS_NAME` holds: the test ``metrics`` (:meth:`restoration.metrics.MetricAccumulator.to_dict`)
    of a run with validated ``options`` after ``iteration`` iterations, plus everything needed to state
    the protocol (``network``: the built network's options; ``prior``: the prior's description, None
    without a prior; ``grey_scale``: the run's grey-level scale)."""
    train_options, datasets = options["train"], options["datasets"]
    return {
        "name": options["name"],
        "iterations": iteration,
        "metrics": dict(metrics),
        "ssim_kind": options["val"]["ssim"],
        "network": network,
        "prior": prior if prior is not None else {"kind": "none", "model": "none"},
        "num_segments": grey_scale,
        "train": {
            "total_iter": train_options["total_iter"],
            "batch_size": (datasets["train"] or {}).get("batch_size_per_gpu", 0) * world_size,
            "crop_size": (datasets["train"] or {}).get("gt_size"),
            "loss": train_options["pixel_opt"]["type"],
            "grad_clip": train_options["grad_clip"],
            "optimizer": train_options["optim_g"],
            "scheduler": train_options["scheduler"],
            "num_pairs": num_train_pairs,
            "train_seconds": round(train_seconds, 1),
        },
        "test": {"dataroot_lq": datasets["val"]["dataroot_lq"], "dataroot_gt": datasets["val"]["dataroot_gt"],
                 "num_pairs": num_test_pairs},
        "device": str(device),
        "world_size": world_size,
    }
