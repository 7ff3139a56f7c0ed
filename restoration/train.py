"""Training and evaluation of restoration networks with SAM / RobustSAM structure priors.

Driven by a basicsr-style options dict (YAML)::

    name: deblur_gopro
    manual_seed: 0
    network_g: {type: SAMDeblurNet, prior: structure, width: 32, ...}   # any ARCH_REGISTRY entry
    datasets:
      train: {layout: gopro, dataroot: data/GoPro, split: train, crop_size: 256, use_flip: true, use_rot: true, num_workers: 4}
      test:  {layout: gopro, dataroot: data/GoPro, split: test}
    train:
      total_iter: 300000
      batch_size: 8                          # total over all DDP ranks
      optim_g: {type: AdamW, lr: 1.0e-3, weight_decay: 1.0e-3, betas: [0.9, 0.9]}
      scheduler: {type: CosineAnnealingLR, eta_min: 1.0e-7}
      loss: psnr                             # psnr (10/ln10 * log(MSE + 1e-8), SAM-Deblur) | l1
      grad_clip: null
    val: {val_freq: null, tile: 512, overlap: 32, save_images: true}
    prior: {kind: robustsam, checkpoint: robustsam_vit_h, points_per_side: 32, ...}

Priors are computed for the degraded inputs once, through the prior's disk cache, before training
(:func:`restoration.datasets.prepare_priors`). Outputs in the run folder: ``options.yaml``,
``checkpoint.pt`` (atomic; network, optimizer, scheduler and every rank's RNG states: ``--resume``
continues exactly), ``train_log.csv``, ``val_log.csv``, ``results.json`` and ``images/`` (restored
test images). Command line::

    python -m restoration.train --opt OPTIONS.yaml [--output DIR] [--resume | --overwrite] [--device cuda]
    torchrun --nproc_per_node 4 -m restoration.train --opt OPTIONS.yaml      # DDP (NCCL on GPU, gloo on CPU)
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import restoration.archs  # noqa: F401  (registers the networks in ARCH_REGISTRY)
from restoration.archs import SAMDeblurNet, SAMGuidedDehazeNet
from robustprior.training.csv_log import append_csv, truncate_csv
from restoration.datasets import PriorIndex, PriorPairedDataset, complete_prior_options, prepare_priors
from restoration.metrics import MetricAccumulator, tensor_to_uint8
from restoration.tiling import tiled_forward
from restoration._basicsr import ARCH_REGISTRY
from robustprior.io.atomic import save_torch_atomically, write_text_atomically
from robustprior.training import merge_config

CHECKPOINT_NAME = "checkpoint.pt"
OPTIONS_NAME = "options.yaml"
RESULTS_NAME = "results.json"
TRAIN_LOG = "train_log.csv"
VAL_LOG = "val_log.csv"
PRIOR_CACHE_NAME = "prior_cache"  # default cache folder inside a run folder; kept by --overwrite
PSNR_LOSS_SCALE = 10.0 / math.log(10.0)
DEFAULT_OPTIONS: dict[str, Any] = {
    "name": "restoration",
    "manual_seed": 0,
    "network_g": {"type": "SAMDeblurNet"},
    "datasets": {"train": None, "test": None},
    "train": {
        "total_iter": 1000,
        "batch_size": 8,
        "optim_g": {"type": "AdamW", "lr": 1e-3, "weight_decay": 1e-3, "betas": [0.9, 0.9]},
        "scheduler": {"type": "CosineAnnealingLR", "eta_min": 1e-7},
        "loss": "psnr",
        "grad_clip": None,
        "log_freq": 10,
        "save_freq": 1000,
    },
    "val": {"val_freq": None, "max_images": None, "tile": None, "overlap": 32, "save_images": True},
    "prior": {"kind": "none"},
}


class RunExistsError(FileExistsError):
    """The run folder already holds a run and neither resuming nor overwriting was asked for."""


# ----------------------------------------------------------------------------- options and helpers
def load_options(path: str | Path) -> dict[str, Any]:
    """A YAML options file as a dict."""
    with open(path) as handle:
        return yaml.safe_load(handle) or {}


def complete_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` over :data:`DEFAULT_OPTIONS`, with the prior section completed and validated."""
    completed = merge_config(DEFAULT_OPTIONS, dict(options))
    completed["prior"] = complete_prior_options(completed["prior"])
    if completed["train"]["loss"] not in LOSSES:
        raise ValueError(f"train.loss must be one of {sorted(LOSSES)}, got {completed['train']['loss']!r}")
    if not completed["datasets"].get("test"):
        raise ValueError("options need datasets.test (the evaluation data)")
    return completed


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


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"psnr": psnr_loss, "l1": l1_loss}


def build_network(network_options: Mapping[str, Any]) -> nn.Module:
    """``ARCH_REGISTRY.get(type)(**rest)`` of a basicsr ``network_g`` section."""
    arguments = dict(network_options)
    return ARCH_REGISTRY.get(arguments.pop("type"))(**arguments)


def network_prior(network: nn.Module) -> str:
    """The prior a network consumes: its ``prior`` attribute (``"none"`` for networks without one)."""
    return getattr(network, "prior", "none")


def size_multiple(network: nn.Module) -> int:
    """The input-size multiple of a U-Net (``2**levels``), for tiling."""
    backbone = getattr(network, "backbone", network)
    return 2 ** getattr(backbone, "num_levels", 0)


def forward_network(
    network: nn.Module,
    image: torch.Tensor,
    label_map: torch.Tensor | None = None,
    prior_features: torch.Tensor | None = None,
    num_segments: int | None = None,
    bare: nn.Module | None = None,
) -> torch.Tensor:
    """Call ``network`` (maybe DDP-wrapped; ``bare`` is the inner module) with the inputs it takes.

    ``image`` B x 3 x H x W; ``label_map`` B x H x W; ``prior_features`` B x C x h x w. Returns B x 3 x H x W.
    """
    inner = bare if bare is not None else network
    if isinstance(inner, SAMGuidedDehazeNet):
        return network(image, label_map, prior_features, num_segments)
    if isinstance(inner, SAMDeblurNet):
        return network(image, label_map)
    return network(image)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states of this process (Python, numpy, torch CPU and CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


# ----------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistributedContext:
    """Rank, world size and device of this process (world size 1 without ``torchrun``)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def mean(self, value: float) -> float:
        """The mean of a scalar over the ranks."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """``None``/``"auto"``: this rank's GPU when CUDA is available, else the CPU; ``"cuda"``: this rank's GPU."""
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def setup_distributed(device: str | torch.device | None = None) -> DistributedContext:
    """Join the ``torchrun`` process group (once; NCCL for CUDA, gloo on CPU) and pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        # Rank 0 evaluates alone while the others wait: allow long evaluations.
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=4))
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistributedContext(rank, dist.get_world_size() if dist.is_initialized() else 1, resolved)


# ----------------------------------------------------------------------------- run folder
def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> bool:
    """Make ``run_dir`` ready; returns whether a checkpoint will be resumed.

    An occupied folder is an error (:class:`RunExistsError`) unless ``resume`` (with a checkpoint:
    continue it; without one, nothing to continue: start afresh) or ``overwrite`` (delete the run,
    keeping a default ``prior_cache`` folder).
    """
    checkpoint = run_dir / CHECKPOINT_NAME
    if resume and checkpoint.is_file():
        return True
    entries = [path for path in run_dir.iterdir() if path.name != PRIOR_CACHE_NAME] if run_dir.is_dir() else []
    if entries and not (resume or overwrite):
        raise RunExistsError(
            f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to replace it"
        )
    if entries and resume:
        print(f"[restoration] no {CHECKPOINT_NAME} in {run_dir}: nothing to resume, starting afresh", file=sys.stderr)
    for path in entries:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    return False


# ----------------------------------------------------------------------------- trainer
class RestorationTrainer:
    """Trains ``network_g`` on ``datasets.train`` and evaluates it on ``datasets.test`` (module docstring).

    ``device``: None/"auto", "cpu", "cuda", ... (under ``torchrun`` each rank takes its local GPU).
    ``progress``: show progress bars (rank 0 only).
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
    ) -> None:
        self.context = setup_distributed(device)
        self.device = self.context.device
        self.options = complete_options(options)
        self.run_dir = Path(run_dir)
        self.progress = progress and self.context.is_main
        refusal = None
        if self.context.is_main:
            try:
                prepare_run_dir(self.run_dir, resume, overwrite)
            except RunExistsError as error:
                refusal = str(error)
        refusal = self.context.all_gather(refusal)[0]  # also the barrier after rank 0's preparation
        if refusal is not None:
            raise RunExistsError(refusal)
        resuming = resume and (self.run_dir / CHECKPOINT_NAME).is_file()

        seed = int(self.options["manual_seed"])
        seed_everything(seed)  # the same on every rank: network init, and a randomly initialised prior model
        self.network = build_network(self.options["network_g"]).to(self.device)
        self.priors = self._prepare_priors()
        seed_everything(seed + self.context.rank)  # per-rank streams for training (mask dropout)
        self.train_set, self.test_set = self._build_datasets()
        train_options = self.options["train"]
        self.loss_function = LOSSES[train_options["loss"]]
        self.optimizer = self._build_optimizer()
        self.scheduler = self._build_scheduler()
        self.iteration = 0
        self.train_seconds = 0.0
        self.num_segments: int | None = None
        if resuming:
            self.load_checkpoint()
        else:
            self.num_segments = self._grey_level_scale()
        self.model: nn.Module = self.network
        if self.context.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.network, device_ids=device_ids)
        if self.context.is_main:
            write_text_atomically(self.run_dir / OPTIONS_NAME, yaml.safe_dump(self.options, sort_keys=False))

    # ------------------------------------------------------------------ setup
    def _prepare_priors(self) -> PriorIndex | None:
        """Check that network and prior options agree; compute the lq priors of train and test once."""
        prior_options = self.options["prior"]
        wanted = network_prior(self.network)
        if wanted == "none":
            if prior_options["kind"] != "none":
                raise ValueError(f"prior.kind is {prior_options['kind']!r} but the network takes no prior (prior: none)")
            return None
        if prior_options["kind"] == "none":
            raise ValueError(f"the network's prior is {wanted!r}: set prior.kind to 'sam' or 'robustsam'")
        if wanted == "features" and prior_options["features"] is None:
            raise ValueError("a 'features' network needs prior.features: mask_feature or embedding")
        lq_paths = [
            lq
            for phase in ("train", "test")
            if self.options["datasets"].get(phase)
            for lq, _ in PriorPairedDataset(self._dataset_options(phase)).pairs
        ]
        cache_dir = prior_options["cache_dir"] or self.run_dir / PRIOR_CACHE_NAME
        return prepare_priors(prior_options, lq_paths, cache_dir, self.device, progress=self.progress)

    def _dataset_options(self, phase: str) -> dict[str, Any]:
        options = {"seed": int(self.options["manual_seed"]), **self.options["datasets"][phase], "phase": phase}
        if phase == "test":
            options.update(crop_size=None, use_flip=False, use_rot=False)
        return options

    def _build_datasets(self) -> tuple[PriorPairedDataset | None, PriorPairedDataset]:
        train_set = None
        if self.options["datasets"].get("train"):
            train_set = PriorPairedDataset(self._dataset_options("train"), self.priors)
        return train_set, PriorPairedDataset(self._dataset_options("test"), self.priors)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        settings = dict(self.options["train"]["optim_g"])
        optimizer_class = getattr(torch.optim, settings.pop("type"))
        if "betas" in settings:
            settings["betas"] = tuple(settings["betas"])
        return optimizer_class([p for p in self.network.parameters() if p.requires_grad], **settings)

    def _build_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        settings = dict(self.options["train"]["scheduler"] or {"type": "constant"})
        kind = settings.pop("type")
        if kind == "CosineAnnealingLR":
            total = int(self.options["train"]["total_iter"])
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(1, total), **settings)
        if kind == "constant":
            return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)
        raise ValueError(f"train.scheduler.type must be CosineAnnealingLR or constant, got {kind!r}")

    def _grey_level_scale(self) -> int | None:
        """The dataset-wide ``num_segments`` of the grayscale coding (None for networks without it).

        One scale for all images, crops, tiles and batches keeps a segment's grey level fixed;
        ``prior.num_segments: auto`` takes the most masks of any train or test image.
        """
        if not isinstance(self.network, SAMGuidedDehazeNet) or self.network.prior not in ("grayscale", "features"):
            return None
        configured = self.options["prior"]["num_segments"]
        if configured != "auto":
            return int(configured)
        assert self.priors is not None
        return max(1, self.priors.max_segments(progress=self.progress))

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    def save_checkpoint(self) -> None:
        """Write ``checkpoint.pt`` atomically (rank 0), with every rank's RNG states."""
        rng_states = self.context.all_gather(capture_rng_state())
        if self.context.is_main:
            payload = {
                "iteration": self.iteration,
                "train_seconds": self.train_seconds,
                "network": self.network.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng_states,
                "world_size": self.context.world_size,
                "num_segments": self.num_segments,
                "prior": self.priors.description if self.priors is not None else {"kind": "none"},
                "options": self.options,
            }
            save_torch_atomically(payload, self.checkpoint_path)
        self.context.barrier()

    def load_checkpoint(self) -> None:
        """Restore everything :meth:`save_checkpoint` wrote; refuses a checkpoint made with another prior model."""
        payload = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        saved_prior = payload["prior"].get("fingerprint")
        current_prior = self.priors.description.get("fingerprint") if self.priors is not None else None
        if saved_prior != current_prior:
            raise ValueError(
                f"{self.run_dir} was trained with prior model fingerprint {saved_prior}, now it is {current_prior} "
                "(did the prior checkpoint change?); pass --overwrite to start again"
            )
        changed = sorted(key for key in self.options if payload["options"].get(key) != self.options[key])
        if changed and self.context.is_main:
            print(f"[restoration] resuming with changed option sections {changed} (scheduler keeps its saved state)",
                  file=sys.stderr)
        self.network.load_state_dict(payload["network"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.iteration = int(payload["iteration"])
        self.train_seconds = float(payload["train_seconds"])
        self.num_segments = payload["num_segments"]
        if len(payload["rng"]) == self.context.world_size:
            restore_rng_state(payload["rng"][self.context.rank])
        else:
            print(f"[restoration] checkpoint from {len(payload['rng'])} rank(s), now {self.context.world_size}: "
                  "reseeding (the continuation is not bit-exact)", file=sys.stderr)
            seed_everything(int(self.options["manual_seed"]) + self.context.rank + self.iteration)
        if self.context.is_main:
            print(f"[restoration] resuming {self.run_dir} at iteration {self.iteration}", file=sys.stderr)
            for name in (TRAIN_LOG, VAL_LOG):
                truncate_csv(self.run_dir / name, self.iteration)

    # ------------------------------------------------------------------ training
    def _batches_for_rank(self, epoch: int, first: int, count: int) -> list[list[int]]:
        """This rank's share of global batches ``first .. first + count - 1`` of ``epoch``."""
        total_batch = int(self.options["train"]["batch_size"])
        per_rank = total_batch // self.context.world_size
        batches = epoch_batches(len(self.train_set), total_batch, epoch, int(self.options["manual_seed"]))
        start = self.context.rank * per_rank
        return [batch[start : start + per_rank] for batch in batches[first : first + count]]

    def _step(self, batch: Mapping[str, Any]) -> float:
        """One optimisation step on a collated batch; returns the loss."""
        to_device = lambda key: batch[key].to(self.device, non_blocking=True) if key in batch else None  # noqa: E731
        restored = forward_network(
            self.model, to_device("lq"), to_device("label_map"), to_device("prior_features"), self.num_segments,
            bare=self.network,
        )
        loss = self.loss_function(restored, to_device("gt"))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_clip = self.options["train"]["grad_clip"]
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), float(grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())

    def fit(self, until: int | None = None) -> None:
        """Train up to ``train.total_iter`` iterations (or stop early at iteration ``until``, with a checkpoint)."""
        if self.train_set is None:
            raise ValueError("options have no datasets.train")
        train_options = self.options["train"]
        total = int(train_options["total_iter"])
        stop = total if until is None else min(int(until), total)
        total_batch = int(train_options["batch_size"])
        if total_batch % self.context.world_size:
            raise ValueError(f"train.batch_size {total_batch} is not divisible by the {self.context.world_size} ranks")
        batches_per_epoch = max(1, len(self.train_set) // total_batch)
        log_freq, save_freq = int(train_options["log_freq"]), int(train_options["save_freq"] or stop)
        val_freq = self.options["val"]["val_freq"]
        losses: list[float] = []
        self.network.train()
        bar = tqdm(total=stop, initial=self.iteration, desc=f"train {self.options['name']}", unit="it",
                   disable=not self.progress, dynamic_ncols=True)
        while self.iteration < stop:
            epoch, first = divmod(self.iteration, batches_per_epoch)
            self.train_set.set_epoch(epoch)
            loader = DataLoader(
                self.train_set,
                batch_sampler=self._batches_for_rank(epoch, first, min(batches_per_epoch - first, stop - self.iteration)),
                num_workers=int(self.options["datasets"]["train"].get("num_workers", 0)),
                pin_memory=self.device.type == "cuda",
                generator=torch.Generator().manual_seed(int(self.options["manual_seed"])),  # leaves the global RNG alone
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
                        append_csv(self.run_dir / TRAIN_LOG, {
                            "iteration": self.iteration, "epoch": epoch, "lr": self.scheduler.get_last_lr()[0],
                            "loss": mean_loss, "train_seconds": round(self.train_seconds, 3),
                        })
                if val_freq and self.iteration % int(val_freq) == 0 and self.iteration != stop:
                    self._validate()
                if self.iteration % save_freq == 0 or self.iteration == stop:
                    self.save_checkpoint()
        bar.close()

    def _validate(self) -> None:
        """Periodic evaluation on (the first ``val.max_images`` of) the test set, logged to ``val_log.csv``."""
        metrics = self.evaluate(image_folder=None, max_images=self.options["val"]["max_images"])
        if metrics is not None:
            append_csv(self.run_dir / VAL_LOG, {"iteration": self.iteration, "psnr": metrics["psnr"], "ssim": metrics["ssim"]})
        self.network.train()

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def restore(
        self, image: torch.Tensor, label_map: torch.Tensor | None = None, prior_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Restore one image with the (eval-mode) network: 1 x 3 x H x W -> 1 x 3 x H x W on the CPU.

        ``label_map`` 1 x H x W; ``prior_features`` 1 x C x h x w over the image. Images with a side
        above ``val.tile`` run as overlapping tiles (:func:`restoration.tiling.tiled_forward`).
        """
        def model_function(image_part: torch.Tensor, *prior_parts: torch.Tensor | None) -> torch.Tensor:
            return forward_network(self.network, image_part, *prior_parts, num_segments=self.num_segments)

        tile = self.options["val"]["tile"]
        if tile and max(image.shape[-2:]) > int(tile):
            return tiled_forward(model_function, image.cpu(), label_map, prior_features, tile=int(tile),
                                 overlap=int(self.options["val"]["overlap"]), multiple=size_multiple(self.network),
                                 device=self.device)
        inputs = [tensor.to(self.device) if tensor is not None else None for tensor in (image, label_map, prior_features)]
        return model_function(*inputs).cpu()

    @torch.no_grad()
    def evaluate(self, image_folder: str | None = "images", max_images: int | None = None) -> dict[str, Any] | None:
        """PSNR / SSIM (:class:`~restoration.metrics.MetricAccumulator`) on the full test images, on rank 0.

        Restored images are written as PNG to ``run_dir / image_folder / <key>.png`` unless
        ``image_folder`` is None. Returns ``MetricAccumulator.to_dict()`` (per-image records add
        ``lq_path``, ``gt_path``, ``output`` and ``segments``) on rank 0, None on other ranks.
        """
        metrics = None
        if self.context.is_main:
            self.network.eval()
            accumulator = MetricAccumulator()
            count = len(self.test_set) if max_images is None else min(int(max_images), len(self.test_set))
            for index in tqdm(range(count), desc=f"test {self.options['name']}", unit="image", disable=not self.progress):
                item = self.test_set[index]
                label_map = item["label_map"][None] if "label_map" in item else None
                features = item["prior_features"][None] if "prior_features" in item else None
                restored = tensor_to_uint8(self.restore(item["lq"][None], label_map, features))
                record = accumulator.update(restored, tensor_to_uint8(item["gt"]), name=item["key"])
                record.update(lq_path=item["lq_path"], gt_path=item["gt_path"],
                              segments=int(label_map.max()) if label_map is not None else None)
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
        return {
            "name": self.options["name"],
            "iterations": self.iteration,
            "metrics": dict(metrics),
            "network": self.options["network_g"],
            "prior": self.priors.description if self.priors is not None else {"kind": "none", "model": "none"},
            "num_segments": self.num_segments,
            "train": {
                "total_iter": train_options["total_iter"],
                "batch_size": train_options["batch_size"],
                "crop_size": (datasets.get("train") or {}).get("crop_size"),
                "loss": train_options["loss"],
                "optimizer": train_options["optim_g"],
                "scheduler": train_options["scheduler"],
                "num_pairs": len(self.train_set) if self.train_set is not None else 0,
                "train_seconds": round(self.train_seconds, 1),
            },
            "test": {"dataroot": datasets["test"]["dataroot"], "split": datasets["test"].get("split"),
                     "num_pairs": len(self.test_set)},
            "device": str(self.device),
            "world_size": self.context.world_size,
        }

    def run(self, until: int | None = None) -> dict[str, Any] | None:
        """Train (unless already done), evaluate on the test set, write ``results.json``; returns it on rank 0."""
        if self.train_set is not None:
            self.fit(until)
        save_images = bool(self.options["val"]["save_images"])
        metrics = self.evaluate(image_folder="images" if save_images else None)
        if metrics is None:
            return None
        results = self.results(metrics)
        write_json(self.run_dir / RESULTS_NAME, results)
        return results


# ----------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train and evaluate a restoration network with SAM/RobustSAM priors.")
    parser.add_argument("--opt", required=True, help="YAML options file")
    parser.add_argument("--output", help="run folder (default: runs/<name>)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the run in the output folder")
    group.add_argument("--overwrite", action="store_true", help="replace the run in the output folder")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")
    parser.add_argument("--iterations", type=int, help="override train.total_iter")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    options = load_options(args.opt)
    if args.iterations is not None:
        options = merge_config(options, {"train": {"total_iter": args.iterations}})
    run_dir = Path(args.output or Path("runs") / options.get("name", DEFAULT_OPTIONS["name"]))
    try:
        trainer = RestorationTrainer(options, run_dir, resume=args.resume, overwrite=args.overwrite,
                                     device=args.device, progress=not args.no_progress)
    except RunExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    results = trainer.run()
    if results is not None:
        metrics = results["metrics"]
        print(f"{results['name']}: PSNR {metrics['psnr']:.3f} dB, SSIM {metrics['ssim']:.4f} on "
              f"{metrics['num_images']} images -> {run_dir / RESULTS_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
