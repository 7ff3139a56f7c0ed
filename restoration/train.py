"""Training and evaluation of restoration networks with SAM / RobustSAM structure priors, on the run engine.

Driven by an options dict (YAML, BasicSR's vocabulary) validated against
:data:`restoration.config.SCHEMA` before any work (an unknown key, a wrong type or an out-of-range
value is one error naming the key and the closest valid one; keys of BasicSR files that are not
used are listed in one warning)::

    name: deblur_gopro
    manual_seed: 0
    network_g: {type: SegNAFNetLocal, width: 32, enc_blk_nums: [1, 1, 1, 28], ...}   # restoration.config
    datasets:
      train: {dataroot_lq: GoPro/train, dataroot_gt: GoPro/train, layout: gopro, gt_size: 256, use_flip: true,
              use_rot: true, batch_size_per_gpu: 8, num_worker_per_gpu: 4}
      val:   {dataroot_lq: GoPro/test, dataroot_gt: GoPro/test, layout: gopro}
    train:
      total_iter: 300000
      optim_g: {type: AdamW, lr: 1.0e-3, weight_decay: 1.0e-3, betas: [0.9, 0.9]}
      scheduler: {type: TrueCosineAnnealingLR, eta_min: 1.0e-7}
      pixel_opt: {type: PSNRLoss}            # 10/ln10 * log(MSE + 1e-8) (NAFNet, SAM-Deblur) | L1Loss
      grad_clip: null
    val: {val_freq: null, save_img: true, tile: 512, overlap: 32, ssim: basicsr}
    logger: {print_freq: 10, save_checkpoint_freq: 1000}
    prior: {kind: robustsam, checkpoint: robustsam_vit_h, points_per_side: 32, grouping: smallest, ...}

Every network is called as ``network(lq, prior)`` (:mod:`restoration.archs`), the prior batch made
by the dataset (:class:`restoration.datasets.PriorPairedDataset`). Priors are computed for the
degraded inputs once, through the prior's disk cache, before training
(:func:`restoration.datasets.prepare_priors`).

The run folder is a :class:`robustprior.training.Run` of kind ``restoration``: created, resumed or
overwritten only when it carries the run marker (``--overwrite`` keeps ``prior_cache/``); a resume
with options that differ from the run's is refused unless ``--allow-config-change`` (``--iterations``
is an allowed, recorded override); checkpoints are safetensors weights plus a ``weights_only`` state
file (optimizer, schedule, every rank's RNG states: a resumed run continues exactly); the CSV logs
are cut back to the checkpoint on resume. The data layout is checked before the folder is touched.
SIGINT / SIGTERM during training (:mod:`robustprior.training.interrupt`) finish the current step, write
a checkpoint and stop with one line and exit status 130 / 143; ``--resume`` continues from there.
Outputs: ``config.yaml``, ``checkpoints/``, ``train_log.csv``, ``val_log.csv``, ``results.json`` and
``images/`` (restored test images). Command line::

    python -m restoration.train -opt OPTIONS.yml [--output DIR] [--resume [--allow-config-change] | --overwrite]
        [--force_yml train:total_iter=20 datasets:train:batch_size_per_gpu=2 ...]
    torchrun --nproc_per_node 4 -m restoration.train -opt OPTIONS.yml      # DDP (NCCL on GPU, gloo on CPU)
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from restoration.archs import PriorBatch, build_network, prior_to
from restoration.config import SCHEMA, network_prior, split_recipe_keys, validate_options
from restoration.datasets import PriorIndex, PriorPairedDataset, image_covering_features, prepare_priors
from restoration.metrics import MetricAccumulator, psnr, tensor_to_uint8
from restoration.paired_data import list_pairs, read_rgb_float
from restoration.tiling import tiled_forward
from robustprior.io.allocator import keep_freed_memory
from robustprior.io.atomic import write_text_atomically
from robustprior.training.checkpoints import load_training_checkpoint
from robustprior.training.config import UnusedKeysWarning, merge_config, read_config_file
from robustprior.training.distributed import DistributedContext, resolve_device, setup_distributed
from robustprior.training.errors import (CheckpointError, ConfigError, RunExistsError,
                                         exit_on_setup_error)
from robustprior.training.interrupt import (Interrupted, deferred_stop, interruption, stop_on_signals, stop_requested,
                                            stop_with_parent)

from robustprior.training.rng import seed_everything
from robustprior.training.run_folder import RUN_MARKER, Run
from robustprior.training.schedules import LearningRateSchedule, ScheduleSpec

__all__ = ["RUN_KIND", "RESULTS_NAME", "RestorationTrainer", "RunExistsError", "TrainedRun", "check_options", "load_options",
           "dataset_options", "parse_forced_options",
           "load_trained_run", "restore_image", "setup_distributed", "psnr_loss", "l1_loss", "write_json",
           "DistributedContext"]

RUN_KIND = "restoration"
RESULTS_NAME = "results.json"
TRAIN_LOG, VAL_LOG = "train_log.csv", "val_log.csv"
TRAIN_COLUMNS = ("iteration", "epoch", "lr", "loss", "train_seconds")
VAL_COLUMNS = ("iteration", "psnr", "ssim")
PRIOR_CACHE_NAME = "prior_cache"  # default cache folder inside a run folder; kept by --overwrite
PSNR_LOSS_SCALE = 10.0 / math.log(10.0)
GREY_CODED = {"SAMGuidedDehazeNet": ("grayscale", "features")}  # networks (and priors) that read prior["grey_scale"]


# ----------------------------------------------------------------------------- options and helpers
def load_options(path: str | Path) -> dict[str, Any]:
    """A YAML options (or recipe config) file as written, its recipe keys included
    (:func:`robustprior.training.config.read_config_file`: the one reader of every config kind);
    :func:`check_options` validates it."""
    return read_config_file(path)


def dataset_options(options: Mapping[str, Any], phase: str) -> dict[str, Any]:
    """The :class:`~restoration.datasets.PriorPairedDataset` options of phase ``train`` or ``val`` of
    validated options (the evaluation set without crops or flips)."""
    section = dict(options["datasets"][phase])
    section.update(seed=options["manual_seed"], phase=phase)
    if phase != "train":
        section.update(gt_size=None, use_flip=False, use_rot=False)
    return section


def parse_forced_options(assignments: Sequence[str]) -> dict[str, Any]:
    """BasicSR's ``--force_yml`` assignments (``train:total_iter=20``, ``network_g:enc_blk_nums=[1, 1]``;
    values read as YAML) as a nested override mapping (:func:`robustprior.training.merge_config`)."""
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, separator, text = assignment.partition("=")
        if not separator or not key:
            raise ConfigError(f"--force_yml takes KEY:SUBKEY=VALUE, got {assignment!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"--force_yml {assignment!r}: the value is not YAML ({error})") from None
        *parents, leaf = key.split(":")
        target = overrides
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--force_yml {assignment!r}: {parent} is given a value and keys")
        target[leaf] = value
    return overrides


def write_json(path: str | Path, content: Any) -> None:
    """Pretty JSON to ``path``, atomically (``inf``/``nan`` written as Python's json does)."""
    write_text_atomically(path, json.dumps(content, indent=2, default=str) + "\n")


def psnr_loss(restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SAM-Deblur's / NAFNet's PSNR loss, ``10/ln10 * log(MSE + 1e-8)`` per image, averaged: B x C x H x W -> scalar."""
    mse = (restored - target).pow(2).flatten(1).mean(dim=1)
    return PSNR_LOSS_SCALE * torch.log(mse + 1e-8).mean()


def l1_loss(restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error: B x C x H x W -> scalar."""
    return (restored - target).abs().mean()


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"PSNRLoss": psnr_loss, "L1Loss": l1_loss}


def check_options_agree(options: Mapping[str, Any]) -> None:
    """Network and prior options that contradict each other: a :class:`ConfigError`."""
    wanted, kind = network_prior(options["network_g"]), options["prior"]["kind"]
    if wanted == "none" and kind != "none":
        raise ConfigError(f"prior.kind is {kind!r} but the network takes no prior (network_g.prior: none); "
                          "set prior.kind: none")
    if wanted != "none" and kind == "none":
        raise ConfigError(f"the network's prior is {wanted!r}: set prior.kind to sam or robustsam")
    if wanted == "features" and options["prior"]["features"] is None:
        raise ConfigError("a 'features' network needs prior.features: mask_feature or embedding")
    if wanted != "features" and options["prior"]["features"] is not None:
        raise ConfigError(f"prior.features is {options['prior']['features']!r} but the network's prior is {wanted!r} "
                          "(only network_g.prior: features reads latent maps); set prior.features: null")


def check_data(options: Mapping[str, Any]) -> None:
    """List the pairs of every data section: a wrong layout or split is a one-line
    :class:`~restoration.paired_data.DataLayoutError` before any run folder is made."""
    for phase in ("train", "val"):
        section = options["datasets"][phase]
        if section is not None:
            list_pairs(section["layout"], section["dataroot_lq"], section["dataroot_gt"], section["blur_dir"],
                       section["filename_tmpl"])


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Everything that can be checked before any work, in one call (a recipe calls it for every row
    before it writes anything): the schema (:func:`restoration.config.validate_options`), network and
    prior agreeing (:func:`check_options_agree`) and the data layout (:func:`check_data`). Returns the
    validated options; raises a :class:`~robustprior.training.RunSetupError` (one message)."""
    validated = validate_options(options)
    check_options_agree(validated)
    check_data(validated)
    return validated


def size_multiple(network: nn.Module) -> int:
    """The input-size multiple of a U-Net (``2**levels``), for tiling."""
    backbone = getattr(network, "backbone", network)
    return 2 ** getattr(backbone, "num_levels", 0)


def epoch_batches(num_items: int, batch_size: int, epoch: int, seed: int) -> list[list[int]]:
    """The global batches of one epoch: ``max(1, num_items // batch_size)`` batches drawn from seeded
    permutations of the items (concatenated while the data set is smaller than one batch)."""
    num_batches = max(1, num_items // batch_size)
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x5A3D]))
    order: list[int] = []
    while len(order) < num_batches * batch_size:
        order.extend(rng.permutation(num_items).tolist())
    return [order[batch * batch_size : (batch + 1) * batch_size] for batch in range(num_batches)]


def write_rgb_png(path: Path, image: np.ndarray) -> None:
    """Write an H x W x 3 uint8 RGB image as PNG (lossless)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1])):
        raise OSError(f"could not write {path}")


def prior_batch(label_map: torch.Tensor | None, features: torch.Tensor | None,
                grey_scale: int | None) -> PriorBatch | None:
    """The :data:`~restoration.archs.PriorBatch` of B x H x W labels, B x C x h x w features and a run's
    grey-level scale (None when there is no prior)."""
    prior: dict[str, torch.Tensor] = {}
    if label_map is not None:
        prior["label_map"] = label_map
        if grey_scale is not None:
            prior["grey_scale"] = torch.full((label_map.shape[0],), grey_scale, dtype=torch.int64,
                                             device=label_map.device)
    if features is not None:
        prior["features"] = features
    return prior or None  # type: ignore[return-value]


@torch.no_grad()
def restore_image(network: nn.Module, image: torch.Tensor, label_map: torch.Tensor | None = None,
                  features: torch.Tensor | None = None, *, grey_scale: int | None = None, tile: int | None = None,
                  overlap: int = 32, device: torch.device | str = "cpu") -> torch.Tensor:
    """Restore one image with an eval-mode ``network``: 1 x 3 x H x W -> 1 x 3 x H x W on the CPU.

    ``label_map`` 1 x H x W (the prior's regions, :meth:`restoration.datasets.PriorIndex.label_map`);
    ``features`` 1 x C x h x w over the image; ``grey_scale`` the run's grey-level scale. Images with a
    side above ``tile`` run as overlapping tiles (:func:`restoration.tiling.tiled_forward`)."""
    def model_function(image_part: torch.Tensor, labels: torch.Tensor | None,
                       feature_part: torch.Tensor | None) -> torch.Tensor:
        return network(image_part, prior_batch(labels, feature_part, grey_scale))

    if tile and max(image.shape[-2:]) > tile:
        return tiled_forward(model_function, image.cpu(), label_map, features, tile=tile, overlap=overlap,
                             multiple=size_multiple(network), device=device)
    inputs = [tensor.to(device) if tensor is not None else None for tensor in (image, label_map, features)]
    return model_function(*inputs).cpu()


def schedule_spec(train_options: Mapping[str, Any]) -> ScheduleSpec:
    """``CosineAnnealingLR`` from ``lr`` to ``eta_min`` over the run, or a constant rate
    (:mod:`robustprior.training.schedules`)."""
    scheduler = train_options["scheduler"]
    if scheduler["type"] == "constant":
        return ScheduleSpec("constant")
    ratio = min(1.0, scheduler["eta_min"] / train_options["optim_g"]["lr"])
    return ScheduleSpec("cosine", min_lr_ratio=ratio)


# ----------------------------------------------------------------------------- trainer
class RestorationTrainer:
    """Trains ``network_g`` on ``datasets.train`` and evaluates it on ``datasets.test`` (module docstring).

    ``options``: validated here (:class:`ConfigError` before any work). ``resume`` / ``overwrite``:
    the run-folder policy of :class:`robustprior.training.Run` (``resume`` on a missing or empty folder
    starts the run, as a recipe resumed before this row began needs); a resume whose options differ from the
    run's is refused unless ``allow_config_change``; ``iterations`` overrides ``train.total_iter`` (an
    allowed override, recorded). ``device``: None/"auto", "cpu", "cuda", "cuda:N" (a missing GPU is an
    error; under ``torchrun`` each rank takes its local GPU). ``progress``: progress bars (rank 0 only).
    The run folder stays locked until :meth:`run` ends or :meth:`close`.
    """

    def __init__(
        self,
        options: Mapping[str, Any],
        run_dir: str | Path,
        *,
        resume: bool = False,
        overwrite: bool = False,
        device: str | torch.device | None = None,
        progress: bool = True,
        allow_config_change: bool = False,
        iterations: int | None = None,
    ) -> None:
        given = check_options(options)
        self.context = setup_distributed(device)
        self.device = self.context.device
        self.run_dir = Path(run_dir)
        self.progress = progress and self.context.is_main
        started = (self.run_dir / RUN_MARKER).exists() or (self.run_dir.is_dir() and any(self.run_dir.iterdir()))
        if resume and not started:
            if self.context.is_main:  # e.g. a recipe resumed before this row started
                print(f"[restoration] nothing to resume in {self.run_dir}: starting the run", file=sys.stderr)
            resume = False
        self.run_folder = Run.open(self.run_dir, kind=RUN_KIND, schema=SCHEMA, config=given, resume=resume,
                                   overwrite=overwrite, allow_config_change=allow_config_change,
                                   overrides={} if iterations is None else {"train.total_iter": iterations},
                                   keep=(PRIOR_CACHE_NAME,), logs={TRAIN_LOG: TRAIN_COLUMNS, VAL_LOG: VAL_COLUMNS},
                                   context=self.context)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ setup
    def _build(self) -> None:
        self.options = copy.deepcopy(self.run_folder.config)
        seed = self.options["manual_seed"]
        seed_everything(seed)  # the same on every rank: a randomly initialised prior model, then the network
        self.priors = self._prepare_priors()
        self.network_options = self._network_options()
        seed_everything(seed)
        self.network = build_network(self.network_options).to(self.device)
        self.iteration, self.train_seconds = 0, 0.0
        state = self.run_folder.checkpoint.state if self.run_folder.resumed else {}
        self.grey_scale: int | None = state["grey_scale"] if self.run_folder.resumed else self._grey_level_scale()
        if self.priors is not None:
            self.priors.grey_scale = self.grey_scale
        seed_everything(seed + self.context.rank)  # per-rank streams for training (mask dropout)
        self.train_set, self.test_set = self._build_datasets()
        train_options = self.options["train"]
        pixel_opt = train_options["pixel_opt"]
        loss, weight = LOSSES[pixel_opt["type"]], pixel_opt["loss_weight"]
        self.loss_function = loss if weight == 1.0 else (lambda restored, target: weight * loss(restored, target))
        settings = train_options["optim_g"]
        optimizer_class = {"AdamW": torch.optim.AdamW, "Adam": torch.optim.Adam}[settings["type"]]
        self.optimizer = optimizer_class([p for p in self.network.parameters() if p.requires_grad], lr=settings["lr"],
                                         weight_decay=settings["weight_decay"], betas=tuple(settings["betas"]))
        self.schedule = LearningRateSchedule(self.optimizer, schedule_spec(train_options), train_options["total_iter"])
        if self.run_folder.resumed:
            self._restore(state)
        self.model: nn.Module = self.context.wrap(self.network)

    def _network_options(self) -> dict[str, Any]:
        """``network_g`` with a 'features' network's ``prior_channels`` taken from the prior's latent map
        (a different number given in the options is a :class:`ConfigError`)."""
        options = dict(self.options["network_g"])
        if network_prior(options) != "features" or self.priors is None:
            return options
        channels = self.priors.feature_channels()
        given = options.get("prior_channels")
        if given is not None and given != channels:
            raise ConfigError(f"network_g.prior_channels is {given}, but the prior's {self.priors.feature} has "
                              f"{channels} channels; leave prior_channels out to take it from the prior")
        options["prior_channels"] = channels
        return options

    @property
    def num_segments(self) -> int | None:
        """The run's grey-level scale of the grayscale coding (None for networks without it)."""
        return self.grey_scale

    def _prepare_priors(self) -> PriorIndex | None:
        """Compute the lq priors of train and test once (rank-sharded), through the prior's cache."""
        prior_options = self.options["prior"]
        if prior_options["kind"] == "none":
            return None
        lq_paths = [lq for phase in ("train", "val") if self.options["datasets"][phase]
                    for lq, _ in PriorPairedDataset(self._dataset_options(phase)).pairs]
        cache_dir = prior_options["cache_dir"] or self.run_dir / PRIOR_CACHE_NAME
        return prepare_priors(prior_options, lq_paths, cache_dir, self.device, progress=self.progress)

    def _dataset_options(self, phase: str) -> dict[str, Any]:
        return dataset_options(self.options, phase)

    def _build_datasets(self) -> tuple[PriorPairedDataset | None, PriorPairedDataset]:
        train_set = None
        if self.options["datasets"]["train"]:
            train_set = PriorPairedDataset(self._dataset_options("train"), self.priors)
        return train_set, PriorPairedDataset(self._dataset_options("val"), self.priors)

    def _grey_level_scale(self) -> int | None:
        """The run-wide grey-level scale of the grayscale coding (None for networks without it).

        One scale for all images, crops, tiles and batches keeps a region's grey level fixed; a
        number in ``prior.num_segments`` is also the same for every prior row; ``auto`` takes the
        most regions of any train or test image of this run."""
        network_options = self.options["network_g"]
        if network_prior(network_options) not in GREY_CODED.get(network_options["type"], ()):
            return None
        configured = self.options["prior"]["num_segments"]
        assert self.priors is not None
        most = self.priors.max_segments(progress=self.progress)
        if configured == "auto":
            return max(1, most)
        if most > configured:
            raise ConfigError(f"prior.num_segments is {configured}, but an image of this run has {most} regions: "
                              f"raise prior.num_segments to at least {most} (the same for every prior row)")
        return int(configured)

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        """What a checkpoint holds besides the weights (all loadable with ``weights_only=True``)."""
        return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "train_seconds": self.train_seconds, "grey_scale": self.grey_scale,
                "prior_fingerprint": self.priors.description.get("fingerprint") if self.priors is not None else None,
                "prior": self.priors.description if self.priors is not None else {"kind": "none"},
                "network": self.network_options, "world_size": self.context.world_size}

    def save_checkpoint(self) -> None:
        """A checkpoint of the current iteration (every rank calls it: the RNG states are gathered)."""
        self.run_folder.save_checkpoint(self.iteration, self.network.state_dict(), self._state())

    def _restore(self, state: Mapping[str, Any]) -> None:
        """Continue from the run's checkpoint; refuses one made with another prior model."""
        current = self.priors.description.get("fingerprint") if self.priors is not None else None
        if state.get("prior_fingerprint") != current:
            raise CheckpointError(
                f"{self.run_dir} was trained with prior model fingerprint {state.get('prior_fingerprint')}, now it is "
                f"{current} (did the prior checkpoint change?); pass --overwrite to start again")
        try:
            self.network.load_state_dict(self.run_folder.checkpoint.weights)
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as error:
            raise CheckpointError(f"the checkpoint in {self.run_dir} does not fit the network and optimizer of these "
                                  f"options ({str(error).splitlines()[0]})") from None
        self.schedule.load_state_dict(state["schedule"], total_iterations=self.options["train"]["total_iter"])
        self.iteration = self.run_folder.start_iteration
        self.train_seconds = float(state["train_seconds"])
        self.run_folder.restore_rng(reseed=self.options["manual_seed"] + self.context.rank + self.iteration)
        if self.context.is_main:
            print(f"[restoration] resuming {self.run_dir} at iteration {self.iteration}", file=sys.stderr)

    def close(self) -> None:
        """Release the run folder's lock."""
        self.run_folder.close()

    # ------------------------------------------------------------------ training
    def _batches_for_rank(self, epoch: int, first: int, count: int) -> list[list[int]]:
        """This rank's share of global batches ``first .. first + count - 1`` of ``epoch``."""
        per_rank = self.options["datasets"]["train"]["batch_size_per_gpu"]
        total_batch = per_rank * self.context.world_size
        batches = epoch_batches(len(self.train_set), total_batch, epoch, self.options["manual_seed"])
        start = self.context.rank * per_rank
        return [batch[start : start + per_rank] for batch in batches[first : first + count]]

    def _step(self, batch: Mapping[str, Any]) -> float:
        """One optimisation step on a collated batch; returns the loss."""
        lq, gt = batch["lq"].to(self.device, non_blocking=True), batch["gt"].to(self.device, non_blocking=True)
        restored = self.model(lq, prior_to(batch.get("prior"), self.device))
        loss = self.loss_function(restored, gt)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_clip = self.options["train"]["grad_clip"]
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), grad_clip)
        self.optimizer.step()
        self.schedule.step()
        return float(loss.detach())

    def fit(self, until: int | None = None) -> None:
        """Train up to ``train.total_iter`` iterations (or stop early at iteration ``until``, with a checkpoint)."""
        if self.train_set is None:
            raise ConfigError("options have no datasets.train")
        train_options = self.options["train"]
        total = train_options["total_iter"]
        stop = total if until is None else min(int(until), total)
        total_batch = self.options["datasets"]["train"]["batch_size_per_gpu"] * self.context.world_size
        batches_per_epoch = max(1, len(self.train_set) // total_batch)
        logger = self.options["logger"]
        log_freq, save_freq = logger["print_freq"], logger["save_checkpoint_freq"] or stop
        val_freq = self.options["val"]["val_freq"]
        losses: list[float] = []
        self.network.train()
        bar = tqdm(total=stop, initial=self.iteration, desc=f"train {self.options['name']}", unit="it",
                   disable=not self.progress, dynamic_ncols=True)
        # one process: a stop signal ends the step, a checkpoint is written, then Interrupted (several ranks
        # would have to agree on the step: there the signal interrupts at once, as without the engine)
        with deferred_stop() if self.context.world_size == 1 else contextlib.nullcontext():
            self._fit_loop(stop, batches_per_epoch, log_freq, save_freq, val_freq, losses, bar)
        bar.close()

    def _fit_loop(self, stop: int, batches_per_epoch: int, log_freq: int, save_freq: int, val_freq: int | None,
                  losses: list[float], bar: tqdm) -> None:
        """The steps of :meth:`fit`; after a step, a recorded stop signal writes a checkpoint and stops."""
        while self.iteration < stop:
            epoch, first = divmod(self.iteration, batches_per_epoch)
            self.train_set.set_epoch(epoch)
            loader = DataLoader(
                self.train_set,
                batch_sampler=self._batches_for_rank(epoch, first, min(batches_per_epoch - first, stop - self.iteration)),
                num_workers=self.options["datasets"]["train"]["num_worker_per_gpu"],
                pin_memory=self.device.type == "cuda",
                generator=torch.Generator().manual_seed(self.options["manual_seed"]),  # leaves the global RNG alone
            )
            for batch in loader:
                started = time.perf_counter()
                losses.append(self._step(batch))
                self.iteration += 1
                self.train_seconds += time.perf_counter() - started
                bar.update()
                if self.iteration % log_freq == 0 or self.iteration == stop:
                    mean_loss = self.context.mean(sum(losses) / len(losses))
                    losses = []
                    bar.set_postfix(loss=f"{mean_loss:.4f}")
                    if self.context.is_main:
                        self.run_folder.log(TRAIN_LOG).append([{
                            "iteration": self.iteration, "epoch": epoch, "lr": self.schedule.lr,
                            "loss": mean_loss, "train_seconds": round(self.train_seconds, 3)}])
                if val_freq and self.iteration % val_freq == 0 and self.iteration != stop:
                    self._validate()
                saved = self.iteration % save_freq == 0 or self.iteration == stop
                if saved:
                    self.save_checkpoint()
                if stop_requested() is not None:
                    if not saved:
                        self.save_checkpoint()
                    bar.close()
                    raise interruption()

    def _validate(self) -> None:
        """Periodic evaluation on (the first ``val.max_images`` of) the test set, logged to ``val_log.csv``."""
        metrics = self.evaluate(image_folder=None, max_images=self.options["val"]["max_images"])
        if metrics is not None:
            self.run_folder.log(VAL_LOG).append([{"iteration": self.iteration, "psnr": metrics["psnr"],
                                           "ssim": metrics["ssim"]}])
        self.network.train()

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def restore(
        self, image: torch.Tensor, label_map: torch.Tensor | None = None, prior_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Restore one image with the (eval-mode) network: :func:`restore_image` with this run's
        grey-level scale and ``val.tile`` / ``val.overlap``."""
        return restore_image(self.network, image, label_map, prior_features, grey_scale=self.grey_scale,
                             tile=self.options["val"]["tile"], overlap=self.options["val"]["overlap"],
                             device=self.device)

    @torch.no_grad()
    def evaluate(self, image_folder: str | None = "images", max_images: int | None = None) -> dict[str, Any] | None:
        """PSNR / SSIM (:class:`~restoration.metrics.MetricAccumulator`, SSIM of kind ``val.ssim``) on the
        full test images, on rank 0.

        Restored images are written as PNG to ``run_dir / image_folder / <key>.png`` unless
        ``image_folder`` is None. Returns ``MetricAccumulator.to_dict()`` on rank 0 (None on other
        ranks); per-image records add ``lq_path``, ``gt_path``, ``output``, ``segments`` and the
        degraded input's own ``input_psnr`` / ``input_ssim`` (ground truth cropped by the one crop
        rule, :func:`restoration.paired_data.match_clean_size`).
        """
        metrics = None
        if self.context.is_main:
            self.network.eval()
            accumulator = MetricAccumulator(ssim_kind=self.options["val"]["ssim"])
            count = len(self.test_set) if max_images is None else min(int(max_images), len(self.test_set))
            for index in tqdm(range(count), desc=f"test {self.options['name']}", unit="image", disable=not self.progress):
                item = self.test_set[index]
                prior = item.get("prior", {})
                label_map = prior["label_map"][None] if "label_map" in prior else None
                features = prior["features"][None] if "features" in prior else None
                restored = tensor_to_uint8(self.restore(item["lq"][None], label_map, features))
                target, degraded = tensor_to_uint8(item["gt"]), tensor_to_uint8(item["lq"])
                record = accumulator.update(restored, target, name=item["key"])
                record.update(lq_path=item["lq_path"], gt_path=item["gt_path"],
                              segments=int(label_map.max()) if label_map is not None else None,
                              input_psnr=psnr(degraded, target),
                              input_ssim=accumulator.score_ssim(degraded, target))
                if image_folder is not None:
                    output = Path(image_folder) / f"{item['key']}.png"
                    write_rgb_png(self.run_dir / output, restored)
                    record["output"] = output.as_posix()
            metrics = accumulator.to_dict()
        self.context.barrier()
        return metrics

    def results(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """What ``results.json`` holds: metrics plus everything needed to state the protocol."""
        train_options = self.options["train"]
        datasets = self.options["datasets"]
        prior = self.priors.description if self.priors is not None else {"kind": "none", "model": "none"}
        return {
            "name": self.options["name"],
            "iterations": self.iteration,
            "metrics": dict(metrics),
            "ssim_kind": self.options["val"]["ssim"],
            "network": self.network_options,
            "prior": prior,
            "num_segments": self.grey_scale,
            "train": {
                "total_iter": train_options["total_iter"],
                "batch_size": (datasets["train"] or {}).get("batch_size_per_gpu", 0) * self.context.world_size,
                "crop_size": (datasets["train"] or {}).get("gt_size"),
                "loss": train_options["pixel_opt"]["type"],
                "grad_clip": train_options["grad_clip"],
                "optimizer": train_options["optim_g"],
                "scheduler": train_options["scheduler"],
                "num_pairs": len(self.train_set) if self.train_set is not None else 0,
                "train_seconds": round(self.train_seconds, 1),
            },
            "test": {"dataroot_lq": datasets["val"]["dataroot_lq"], "dataroot_gt": datasets["val"]["dataroot_gt"],
                     "num_pairs": len(self.test_set)},
            "device": str(self.device),
            "world_size": self.context.world_size,
        }

    def run(self, until: int | None = None) -> dict[str, Any] | None:
        """Train (unless already done), evaluate on the test set, write ``results.json``; returns it on
        rank 0. Releases the run folder at the end."""
        try:
            if self.train_set is not None:
                self.fit(until)
            save_images = self.options["val"]["save_img"]
            metrics = self.evaluate(image_folder="images" if save_images else None)
            if metrics is None:
                return None
            results = self.results(metrics)
            write_json(self.run_dir / RESULTS_NAME, results)
            return results
        finally:
            self.close()


# ----------------------------------------------------------------------------- a trained run
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


# ----------------------------------------------------------------------------- command line
@exit_on_setup_error
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train and evaluate a restoration network with SAM/RobustSAM priors.")
    parser.add_argument("-opt", "--opt", required=True, help="YAML options file (BasicSR's vocabulary, restoration/options/)")
    parser.add_argument("--force_yml", nargs="+", default=[], metavar="KEY:SUBKEY=VALUE",
                        help="override option values (BasicSR's form), e.g. train:total_iter=20")
    parser.add_argument("--output", help="run folder (default: runs/<name>)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the run in the output folder")
    group.add_argument("--overwrite", action="store_true", help="replace the run in the output folder")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="with --resume: continue with options that differ from the run's (recorded)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")
    parser.add_argument("--iterations", type=int, help="override train.total_iter (allowed on --resume, recorded)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    keep_freed_memory()  # robustprior.io.allocator: freed tensors stay in the process
    options, _ = split_recipe_keys(load_options(args.opt))
    with warnings.catch_warnings(record=True) as caught:  # unused keys: one line on stderr, not a traceback-like warning
        warnings.simplefilter("always", UnusedKeysWarning)
        options = validate_options(merge_config(options, parse_forced_options(args.force_yml)), source=str(args.opt))
    for warning in caught:
        if issubclass(warning.category, UnusedKeysWarning):
            print(f"warning: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    run_dir = Path(args.output or Path("runs") / str(options.get("name", SCHEMA.fields["name"].default)))
    with stop_on_signals():
        try:
            stop_with_parent()  # started by a recipe: stop (with a checkpoint) when it dies
            trainer = RestorationTrainer(options, run_dir, resume=args.resume, overwrite=args.overwrite,
                                         device=args.device, progress=not args.no_progress,
                                         allow_config_change=args.allow_config_change, iterations=args.iterations)
            results = trainer.run()
        except Interrupted as stop:
            print(f"[restoration] interrupted ({stop.name}); resume with --resume", file=sys.stderr, flush=True)
            return stop.exit_status
    if results is not None:
        metrics = results["metrics"]
        print(f"{results['name']}: PSNR {metrics['psnr']:.3f} dB, SSIM ({results['ssim_kind']}) {metrics['ssim']:.4f} "
              f"on {metrics['num_images']} images -> {run_dir / RESULTS_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
