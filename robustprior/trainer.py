"""RobustSAM training: frozen SAM, the paper's losses, feature cache, DDP, exact resume.

Losses (:mod:`robustprior.losses`): ``train.consistency: paper`` (default) compares each AMFG output
and the AOTG tokens on the degraded image with the ORIGINAL SAM's features and tokens on the clear
image (Eq. 1, relative MSE); ``release`` keeps the official code's fused-feature MSE. Prompts
(``data.prompt``): the release's 3 points, jittered boxes, single ambiguous points trained with
SAM's best-of-three loss, or a ``mixed`` draw of them (``data.prompt_mix``); validation uses the
evaluation protocol's centre point (``data.val_prompt``). ``train.grad_share_every: N`` logs, every
N iterations, each weighted term's gradient norm on the robust parameters (``grad_<term>`` columns
of ``log.csv``), so a run shows which loss drives it.

``robustprior train CONFIG.yaml --output DIR`` (or ``torchrun --nproc_per_node N -m robustprior.cli
train ...`` for DDP; gloo on CPU, NCCL on GPU). Each item pairs a clear image (teacher: SAM's own
decoder) with a degraded copy (student: the robust path). Degraded copies are drawn from a fixed set
of ``variants_per_image`` seeds per image (epoch ``e`` uses variant ``e % V``), like the release's
pre-rendered degradation folders, so the encoder features can be cached and reused across epochs.

What is saved under DIR: ``config.yaml``; ``log.csv`` (every logged step) and ``val_log.csv``; ``checkpoints/last.pt``
(atomic, everything needed to resume exactly); ``best.safetensors`` (best validation degraded IoU);
``final.safetensors``; ``metrics.json``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from tqdm import tqdm

from .atomic import save_torch_atomically
from .csv_log import append_csv, truncate_csv
from .checkpoint import save_checkpoint
from .datasets import RobustSegmentationDataset
from .degrade import DEGRADATIONS, DEGRADATIONS_VERSION, RandomDegradation
from .feature_cache import FeatureCache, image_hash
from .load import load_model
from .losses import CONSISTENCY_MODES, TERM_NAMES, LossWeights, distillation_loss, paper_consistency, \
    release_consistency, segmentation_losses, weighted_total
from .modeling.robust_sam import ImageFeatures, RobustSam
from .training_samples import PromptBatch, SamplePreparer

DEFAULT_CONFIG: dict[str, Any] = {
    "seed": 0,
    "device": "auto",
    "model": {"type": "tiny", "checkpoint": None, "fourier_mode": "paper", "token_mode": None, "robust_init": "default"},
    "data": {"prompt": "points", "prompt_mix": None, "n_points": 3, "box_jitter": 0.1, "min_area": 64,
             "instances_per_image": None, "val_prompt": "center_point", "workers": 1},
    "degradations": {"kinds": "all", "p_identity": None, "severity": 1.0, "variants_per_image": 16,
                     "reference_size": None},
    "feature_cache": {"enabled": True, "dir": None},
    "train": {
        "iterations": 1000, "batch_size": 2, "prompts_per_image": 1, "optimizer": "adam", "lr": 5e-4, "weight_decay": 1e-5,
        "schedule": "constant", "step_size": 1000, "gamma": 0.5, "warmup": 0, "grad_clip": 1.0, "amp": True,
        "consistency": "paper",
        "loss_weights": {"mask_feature": 1.0, "token": 1.0, "dice": 1.0, "focal": 20.0, "distill": 0.0},
        "grad_share_every": 0,
        "log_every": 10, "val_every": 200, "checkpoint_every": 100, "val_kinds": None,
    },
}


def merge_config(base: dict, override: dict) -> dict:
    """Recursive dict merge (override wins); unknown top-level sections are kept."""
    merged = copy.deepcopy(base)
    for key, value in (override or {}).items():
        merged[key] = merge_config(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def load_config(path: str | Path) -> dict:
    with open(path) as handle:
        return merge_config(DEFAULT_CONFIG, yaml.safe_load(handle) or {})


ROBUST_INITS = ("default", "sam")


def load_base_model(model_config: dict) -> RobustSam:
    """The model to train: a RobustSAM built from ``model.type`` with ``model.checkpoint`` (SAM /
    MobileSAM / official / ours) loaded; SAM frozen.

    ``model.robust_init``: ``"default"`` keeps the robust parts as built or loaded (ROT copied from
    SAM's tokens, the rest random); ``"sam"`` starts the whole robust path as SAM's decoder
    (:meth:`RobustSam.start_robust_path_from_sam`)."""
    robust_init = model_config.get("robust_init", "default")
    if robust_init not in ROBUST_INITS:
        raise ValueError(f"model.robust_init must be one of {ROBUST_INITS}, got {robust_init!r}")
    checkpoint = model_config.get("checkpoint")
    model, _ = load_model(checkpoint, model_config["type"], decoder_path=None, allow_untrained_robust=True,
                          random_init=checkpoint is None, fourier_mode=model_config.get("fourier_mode"),
                          token_mode=model_config.get("token_mode"))
    if robust_init == "sam":
        model.start_robust_path_from_sam()
    return model.freeze_sam()


class RobustTrainingStep(nn.Module):
    """One forward of the training objective; wrapped in DDP so gradients are averaged.

    Every prompt group (one prompt kind each, :meth:`SamplePreparer.prompt_groups`) is decoded on the
    clear image by SAM (teacher, no gradient) and on the degraded image by the robust path, all four
    output tokens; the loss terms are computed once over all prompts (:mod:`robustprior.losses`)."""

    def __init__(self, model: RobustSam, weights: LossWeights, consistency: str = "paper") -> None:
        super().__init__()
        if consistency not in CONSISTENCY_MODES:
            raise ValueError(f"train.consistency must be one of {CONSISTENCY_MODES}, got {consistency!r}")
        self.model = model
        self.weights = weights
        self.consistency = consistency

    def forward(self, clear: ImageFeatures, degraded: ImageFeatures, groups: list[PromptBatch]) -> dict[str, torch.Tensor]:
        model, paper = self.model, self.consistency == "paper"
        fusion = model.robust.fusion
        image_part, refined_images = None, {}
        if paper:  # the per-image AMFG outputs, once for all groups
            embedding, complementary = fusion.refine_image_features(degraded.embedding, degraded.complementary)
            image_part = fusion.upsample_image_features(embedding, complementary)
            refined_images = {"embedding": embedding, "complementary": complementary}
        parts: dict[str, list[torch.Tensor]] = {}
        for prompts in groups:
            points = (prompts.point_coords, prompts.point_labels) if prompts.point_coords is not None else None
            sparse, dense = model.encode_prompts(points=points, boxes=prompts.boxes)
            with torch.no_grad():
                teacher = model.decode(clear, sparse, dense, prompts.image_index, multimask_output=None, path="sam",
                                       fused=not paper)
            student = model.decode(degraded, sparse, dense, prompts.image_index, multimask_output=None, path="robust",
                                   image_part=image_part, keep_refined=paper)
            group = {
                "logits": student.mask_logits.float(), "teacher_logits": teacher.mask_logits.float(),
                "targets": prompts.targets, "pixel_weights": prompts.pixel_weights,
                "multimask": torch.full((len(prompts),), prompts.multimask, dtype=torch.bool),
                "clear_tokens": teacher.mask_tokens.float(),
            }
            if paper:
                group.update(robust_tokens=student.refined["robust_tokens"].float(),
                             refined_mask_feature=student.refined["mask_feature"].float(),
                             clear_mask_feature=teacher.mask_feature.float())
            else:
                group.update(robust_tokens=student.mask_tokens.float(), robust_feature=student.mask_feature.float(),
                             clear_feature=teacher.fused_feature.float())
            for name, value in group.items():
                parts.setdefault(name, []).append(value)
        batch = {name: torch.cat(values) for name, values in parts.items()}
        if paper:
            terms = paper_consistency(
                {"mask_feature": batch["refined_mask_feature"],
                 **{name: value.float() for name, value in refined_images.items()}},
                {"mask_feature": batch["clear_mask_feature"], "embedding": clear.embedding.float(),
                 "complementary": clear.complementary.float()},
                batch["robust_tokens"], batch["clear_tokens"])
        else:
            terms = release_consistency(batch["robust_feature"], batch["clear_feature"], batch["robust_tokens"],
                                        batch["clear_tokens"])
        terms.update(segmentation_losses(batch["logits"], batch["targets"], batch["multimask"], self.weights,
                                         batch["pixel_weights"]))
        if self.weights.distill:
            terms["distill"] = distillation_loss(batch["logits"], batch["teacher_logits"])
        terms["total"] = weighted_total(terms, self.weights)
        terms["logits"] = batch["logits"][:, 0].detach()
        return terms


@dataclass
class TrainingState:
    iteration: int = 0
    epoch: int = 0
    position: int = 0  # index into the epoch's permutation of the global batch start
    best_iou: float = -1.0


class RobustSamTrainer:
    """Train the robust parts of a RobustSAM per a config (see :data:`DEFAULT_CONFIG`)."""

    def __init__(self, config: dict, output_dir: str | Path, resume: bool = False, overwrite: bool = False) -> None:
        self.config = merge_config(DEFAULT_CONFIG, config)
        self.output_dir = Path(output_dir)
        self._setup_distributed()
        self._check_output_dir(resume, overwrite)
        seed = int(self.config["seed"])
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)

        self.model = load_base_model(self.config["model"]).to(self.device)
        self.model.train()
        self.preparer = SamplePreparer(self.model)
        train_config = self.config["train"]
        self.weights = LossWeights(**train_config["loss_weights"])
        self.step_module = RobustTrainingStep(self.model, self.weights, train_config["consistency"])
        self.wrapped = self.step_module
        if self.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(self.step_module, device_ids=device_ids)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        optimizer_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[train_config["optimizer"].lower()]
        self.optimizer = optimizer_class(trainable, lr=float(train_config["lr"]), weight_decay=float(train_config["weight_decay"]))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)

        self.degradation = self._build_degradation()
        self.train_set, self.val_set = self._build_datasets()
        cache_config = self.config["feature_cache"]
        self.cache = None
        if cache_config.get("enabled", True):
            cache_dir = cache_config.get("dir") or (self.output_dir / "feature_cache")
            self.cache = FeatureCache(cache_dir, self.model)
        self.state = TrainingState()
        self._item_groups: list[list[int]] | None = None
        # grad_/share_ columns of log.csv (blank until the first measurement), fixed so every row has them
        weighted = [name for name in TERM_NAMES if getattr(self.weights, name)]
        self._last_gradient_norms: dict[str, float | str] = (
            {f"{prefix}_{name}": "" for prefix in ("grad", "share") for name in weighted}
            if int(train_config.get("grad_share_every") or 0) else {})
        if resume and self.checkpoint_path.exists():
            self._load_checkpoint()
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / "config.yaml", "w") as handle:
                yaml.safe_dump(self.config, handle, sort_keys=False)

    # ------------------------------------------------------------------ setup
    def _setup_distributed(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        wanted = self.config.get("device", "auto")
        use_cuda = torch.cuda.is_available() and wanted in ("auto", "cuda")
        self.device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
        if use_cuda:
            torch.cuda.set_device(self.device)
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        self.is_main = self.rank == 0

    def _check_output_dir(self, resume: bool, overwrite: bool) -> None:
        existing = [p for p in ("checkpoints", "final.safetensors", "log.csv") if (self.output_dir / p).exists()]
        if existing and not (resume or overwrite):
            raise FileExistsError(
                f"{self.output_dir} already holds a run ({', '.join(existing)}); pass --resume to continue it or "
                "--overwrite to start again"
            )
        if overwrite and not resume and self.is_main:
            for name in ("checkpoints/last.pt", "log.csv", "val_log.csv", "final.safetensors", "best.safetensors",
                         "metrics.json"):
                (self.output_dir / name).unlink(missing_ok=True)

    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / "checkpoints" / "last.pt"

    def _lr_factor(self, iteration: int) -> float:
        config = self.config["train"]
        warmup = int(config.get("warmup", 0))
        if iteration < warmup:
            return (iteration + 1) / warmup
        schedule = config["schedule"]
        if schedule == "constant":
            return 1.0
        if schedule == "step":
            return float(config["gamma"]) ** (iteration // int(config["step_size"]))
        if schedule == "cosine":
            total = max(1, int(config["iterations"]) - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (iteration - warmup) / total)))
        raise ValueError(f"unknown schedule {schedule!r}; expected constant, step or cosine")

    def _build_degradation(self) -> RandomDegradation:
        config = self.config["degradations"]
        kinds = DEGRADATIONS if config["kinds"] in ("all", None) else tuple(config["kinds"])
        return RandomDegradation(kinds, p_identity=config.get("p_identity"), severity=config.get("severity", 1.0),
                                 reference_size=config.get("reference_size"))

    def _build_datasets(self) -> tuple[RobustSegmentationDataset, RobustSegmentationDataset | None]:
        from .data_config import build_instance_source

        data = self.config["data"]
        cache_root = None  # generated scenes without a root go to the shared data cache
        workers = int(data.get("workers") or 1)
        options = dict(n_points=data["n_points"], box_jitter=data["box_jitter"], min_area=data["min_area"],
                       instances_per_image=data["instances_per_image"])
        train_source = build_instance_source(data["train"], cache_root, workers=workers)
        train = RobustSegmentationDataset(train_source, None, seed=int(self.config["seed"]), prompt=data["prompt"],
                                          prompt_mix=data.get("prompt_mix"), **options)
        if len(train) < self.world_size * int(self.config["train"]["batch_size"]):
            raise ValueError(f"the training set has {len(train)} items, fewer than one global batch")
        val = None
        if data.get("val"):
            val = RobustSegmentationDataset(build_instance_source(data["val"], cache_root, workers=workers), None,
                                            seed=int(self.config["seed"]) + 1, prompt=data.get("val_prompt", "center_point"),
                                            **options)
        return train, val

    # ------------------------------------------------------------------ data
    @staticmethod
    def _degradation_seed(dataset: RobustSegmentationDataset, index: int, variant: int) -> int:
        """Seed of variant ``variant`` of the image behind item ``index`` (shared by its instances)."""
        record = dataset.pairs[index][0]
        sequence = np.random.SeedSequence([dataset.seed, record, variant])
        return int(sequence.generate_state(1, dtype=np.uint32)[0])

    def _encode(self, keys: list[str], images: list, metadata: list[dict]) -> tuple[ImageFeatures, list[dict]]:
        """Features of lazily produced images (``images[i]()`` -> H x W x 3 uint8), cached when enabled."""

        def make_inputs(indices: list[int]) -> tuple[torch.Tensor, list[dict]]:
            tensors = torch.stack([self.preparer.image_tensor(images[i]()) for i in indices])
            return tensors, [metadata[i] for i in indices]

        if self.cache is not None:
            return self.cache.features(keys, make_inputs)
        with torch.no_grad():
            tensors, meta = make_inputs(list(range(len(keys))))
            return self.model.encode_image(tensors.to(self.device)), meta

    def _batch(self, dataset: RobustSegmentationDataset, indices: list[int], variant: int):
        """Clear features, degraded features, prompt groups and degradation names for dataset items.

        Items of the same image share one clear and one degraded encoding (the degradation seed
        depends on the image and the variant only); each prompt's ``image_index`` points at it."""
        items = [dataset[i] for i in indices]
        records = [dataset.pairs[i][0] for i in indices]
        unique = list(dict.fromkeys(records))  # images in order of first appearance
        first = [records.index(record) for record in unique]
        clear_images = [items[position]["clear_image"] for position in first]
        clear_keys = [image_hash(image) for image in clear_images]
        spec = f"v{DEGRADATIONS_VERSION}|{self.degradation!r}"  # code version + kinds / severity / identity share
        seeds = [self._degradation_seed(dataset, indices[position], variant) for position in first]
        degraded_keys = [hashlib.sha256(f"{key}|{spec}|{seed}".encode()).hexdigest() for key, seed in zip(clear_keys, seeds)]
        degraded_images = [lambda image=image, seed=seed: self.degradation(image, seed)[0]
                           for image, seed in zip(clear_images, seeds)]
        kinds = [self.degradation.name(seed) for seed in seeds]
        clear, _ = self._encode(clear_keys, [lambda image=image: image for image in clear_images],
                                [{"kind": "identity"}] * len(unique))
        degraded, _ = self._encode(degraded_keys, degraded_images, [{"kind": kind} for kind in kinds])
        groups = self.preparer.prompt_groups(items)
        image_of_item = torch.tensor([unique.index(record) for record in records])
        for group in groups:
            group.image_index = image_of_item[group.image_index]
        return clear, degraded, [group.to(self.device) for group in groups], kinds

    def _rank_indices(self) -> list[int]:
        """This rank's items of the next global batch; advances epoch/position (drop-last).

        With ``train.prompts_per_image: K > 1`` a batch is ``batch_size`` images (a permutation of the
        images per epoch), each with up to K of its instances drawn for the epoch; otherwise
        ``batch_size`` items of a permutation of all (image, instance) items."""
        batch = int(self.config["train"]["batch_size"])
        per_image = int(self.config["train"].get("prompts_per_image") or 1)
        global_batch = batch * self.world_size
        units = self._items_by_image() if per_image > 1 else None
        count = len(units) if units is not None else len(self.train_set)
        if self.state.position + global_batch > count:
            self.state.epoch += 1
            self.state.position = 0
        generator = torch.Generator().manual_seed(int(self.config["seed"]) * 1_000_003 + self.state.epoch)
        permutation = torch.randperm(count, generator=generator).tolist()
        chosen = permutation[self.state.position : self.state.position + global_batch]
        self.state.position += global_batch
        chosen = chosen[self.rank :: self.world_size]
        if units is None:
            return chosen
        indices = []
        for unit in chosen:
            items = units[unit]
            rng = np.random.default_rng([int(self.config["seed"]), self.state.epoch, unit])
            indices.extend(sorted(rng.choice(items, size=min(per_image, len(items)), replace=False).tolist()))
        return indices

    def _items_by_image(self) -> list[list[int]]:
        """The training items grouped by image (record), in record order."""
        if self._item_groups is None:
            groups: dict[int, list[int]] = {}
            for index, (record, _) in enumerate(self.train_set.pairs):
                groups.setdefault(record, []).append(index)
            self._item_groups = list(groups.values())
        return self._item_groups

    def fill_cache(self, progress: bool = True) -> dict[str, int]:
        """Encode every training/validation image and all its degradation variants into the cache."""
        if self.cache is None:
            raise ValueError("the feature cache is disabled in this config (feature_cache.enabled: false)")
        variants = int(self.config["degradations"]["variants_per_image"])
        batch = int(self.config["train"]["batch_size"])
        datasets = [d for d in (self.train_set, self.val_set) if d is not None]
        jobs = [(d, start, variant) for d in datasets for variant in range(variants if d is self.train_set else 1)
                for start in range(0, len(d), batch)]
        for dataset, start, variant in tqdm(jobs, desc="feature cache", disable=not (progress and self.is_main)):
            self._batch(dataset, list(range(start, min(start + batch, len(dataset)))), variant)
        return {"hits": self.cache.hits, "misses": self.cache.misses}

    # ------------------------------------------------------------------ checkpoints
    def _sync_buffers(self) -> None:
        """Give every rank rank 0's BatchNorm running statistics (each rank updated them with its
        own batches; DDP only re-broadcasts them at the next forward)."""
        if self.world_size > 1:
            for buffer in self.model.robust.buffers():
                dist.broadcast(buffer, src=0)

    def _save_checkpoint(self) -> None:
        self._sync_buffers()
        if not self.is_main:
            return
        save_torch_atomically({
            "state": self.state.__dict__,
            "robust": self.model.robust.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "config": self.config,
        }, self.checkpoint_path)

    def _load_checkpoint(self) -> None:
        payload = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        self.state = TrainingState(**payload["state"])
        self.model.robust.load_state_dict(payload["robust"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        torch.set_rng_state(payload["torch_rng"])
        if self.is_main:
            print(f"[robustprior] resuming {self.output_dir} at iteration {self.state.iteration}")
            self._truncate_log(self.state.iteration)

    def _truncate_log(self, iteration: int) -> None:
        """Drop log rows written after the checkpoint we resume from (they will be redone)."""
        for name in ("log.csv", "val_log.csv"):
            truncate_csv(self.output_dir / name, iteration)

    def _log(self, row: dict[str, float], name: str = "log.csv") -> None:
        if self.is_main:
            append_csv(self.output_dir / name, row)

    # ------------------------------------------------------------------ loops
    def _autocast(self):
        if self.device.type == "cuda" and self.config["train"].get("amp", True):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean single-mask IoU on the validation set's degraded copies (variant 0), robust vs SAM path,
        with the validation prompts (``data.val_prompt``, by default the evaluation's centre point)."""
        if self.val_set is None:
            return {}
        self.model.eval()
        scores: dict[str, list[float]] = {"robust": [], "sam": []}
        batch = int(self.config["train"]["batch_size"])
        for start in range(0, len(self.val_set), batch):
            indices = list(range(start, min(start + batch, len(self.val_set))))
            _, degraded, groups, _ = self._batch(self.val_set, indices, variant=0)
            for prompts in groups:
                points = (prompts.point_coords, prompts.point_labels) if prompts.point_coords is not None else None
                sparse, dense = self.model.encode_prompts(points=points, boxes=prompts.boxes)
                for path in scores:
                    logits = self.model.decode(degraded, sparse, dense, prompts.image_index, path=path).mask_logits[:, 0]
                    predicted, target, valid = logits > 0, prompts.targets > 0.5, prompts.pixel_weights > 0
                    intersection = (predicted & target & valid).flatten(1).sum(1).float()
                    union = ((predicted | target) & valid).flatten(1).sum(1).float()
                    scores[path].extend(torch.where(union > 0, intersection / union.clamp_min(1), 1.0).tolist())
        self.model.train()
        return {f"val_iou_{path}": float(np.mean(values)) for path, values in scores.items()}

    def train(self) -> dict[str, Any]:
        config = self.config["train"]
        total = int(config["iterations"])
        variants = int(self.config["degradations"]["variants_per_image"])
        progress = tqdm(total=total, initial=self.state.iteration, disable=not self.is_main, desc="train", dynamic_ncols=True)
        started = time.time()
        while self.state.iteration < total:
            indices = self._rank_indices()
            self.train_set.set_epoch(self.state.epoch)
            clear, degraded, groups, kinds = self._batch(self.train_set, indices, self.state.epoch % variants)
            with self._autocast():
                terms = self.wrapped(clear, degraded, groups)
            self.optimizer.zero_grad(set_to_none=True)
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            share_every = int(config.get("grad_share_every") or 0)
            gradient_norms = {}
            if share_every and (self.state.iteration + 1) % share_every == 0 and self.world_size == 1:
                gradient_norms = self._gradient_norms(terms, trainable)
            terms["total"].backward()
            for parameter in trainable:  # as the release does, a NaN gradient is zeroed rather than applied
                if parameter.grad is not None:
                    torch.nan_to_num_(parameter.grad, nan=0.0, posinf=0.0, neginf=0.0)
            if config.get("grad_clip"):
                torch.nn.utils.clip_grad_norm_(trainable, float(config["grad_clip"]))
            self.optimizer.step()
            self.scheduler.step()
            self.state.iteration += 1
            values = {name: float(terms[name].detach()) for name in ("total", *TERM_NAMES) if name in terms}
            values.update({name: float(terms[name].detach()) for name in terms if name.startswith("mfc_")})
            progress.update(1)
            progress.set_postfix({k: f"{v:.3g}" for k, v in values.items()})
            if self.state.iteration % int(config["log_every"]) == 0 or self.state.iteration == total:
                self._log({"iteration": self.state.iteration, "epoch": self.state.epoch,
                           "lr": self.optimizer.param_groups[0]["lr"], **values, **self._last_gradient_norms,
                           "elapsed_s": round(time.time() - started, 2)})
            if self.val_set is not None and (self.state.iteration % int(config["val_every"]) == 0
                                             or self.state.iteration == total):
                self._validate_and_keep_best()
            if gradient_norms:
                self._last_gradient_norms.update(gradient_norms)
            if self.state.iteration % int(config["checkpoint_every"]) == 0 or self.state.iteration == total:
                self._save_checkpoint()
        progress.close()
        return self._finish(time.time() - started)

    def _gradient_norms(self, terms: dict[str, torch.Tensor], parameters: list[nn.Parameter]) -> dict[str, float]:
        """Gradient norm of each weighted loss term on the trainable parameters (``grad_<term>``), and
        each term's share of their sum (``share_<term>``): which loss drives training."""
        norms = {}
        for name in TERM_NAMES:
            weight = getattr(self.weights, name)
            if name not in terms or not weight:
                continue
            gradients = torch.autograd.grad(weight * terms[name], parameters, retain_graph=True, allow_unused=True)
            squares = [g.float().pow(2).sum() for g in gradients if g is not None]
            norms[name] = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
        total = sum(norms.values()) or 1.0
        return {**{f"grad_{name}": round(value, 6) for name, value in norms.items()},
                **{f"share_{name}": round(value / total, 4) for name, value in norms.items()}}

    def _validate_and_keep_best(self) -> None:
        if not self.is_main:
            if self.world_size > 1:
                dist.barrier()
            return
        metrics = self.validate()
        self._log({"iteration": self.state.iteration, "epoch": self.state.epoch, **metrics}, "val_log.csv")
        if metrics["val_iou_robust"] > self.state.best_iou:
            self.state.best_iou = metrics["val_iou_robust"]
            save_checkpoint(self.model, self.output_dir / "best.safetensors",
                            {"iteration": str(self.state.iteration), "val_iou_robust": f"{self.state.best_iou:.6f}"})
        if self.world_size > 1:
            dist.barrier()

    def robust_state_hash(self) -> str:
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.robust.state_dict().items()):
            digest.update(name.encode() + tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def _finish(self, seconds: float) -> dict[str, Any]:
        self._sync_buffers()
        hashes = [self.robust_state_hash()]
        if self.world_size > 1:
            gathered: list[str] = [""] * self.world_size
            dist.all_gather_object(gathered, hashes[0])
            hashes = gathered
        metrics: dict[str, Any] = {
            "iterations": self.state.iteration, "epochs": self.state.epoch, "seconds": round(seconds, 2),
            "world_size": self.world_size, "rank_weight_hashes": hashes, "ranks_agree": len(set(hashes)) == 1,
            "best_val_iou_robust": self.state.best_iou,
        }
        if self.cache is not None:
            metrics["feature_cache"] = {"hits": self.cache.hits, "misses": self.cache.misses, "dir": str(self.cache.directory)}
        if self.val_set is not None and self.is_main:
            metrics.update(self.validate())
        if self.is_main:
            save_checkpoint(self.model, self.output_dir / "final.safetensors", {"iterations": str(self.state.iteration)})
            with open(self.output_dir / "metrics.json", "w") as handle:
                json.dump(metrics, handle, indent=2)
            print(f"[robustprior] training done: {self.output_dir / 'final.safetensors'} ({json.dumps(metrics)})")
        if self.world_size > 1:
            dist.barrier()
        return metrics
