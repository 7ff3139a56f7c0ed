"""Train the tiny SAM base (the SAM parts of ``build_robust_sam("tiny")``) from scratch.

Data: the scene world (:mod:`robustprior.scenes`), pre-generated once into a cache under the output
folder. Training follows SAM: each step takes B images and P prompts per image (one positive point,
a few points with an optional negative, or a jittered box, all drawn from a random object's exact
mask), with focal + dice losses on the logits upsampled to the image size against the exact masks
(``loss.full_resolution``; else on the 128 x 128 low-resolution logits against the masks
area-averaged to that size) and an MSE loss between the predicted and the actual IoU. Single points use the three multimask outputs and
back-propagate only the lowest-loss one; boxes and multi-point prompts use token 0.

Usage::

    python recipes/train_tiny_sam.py --config recipes/configs/tiny_sam.yaml --output runs/tiny_sam [--resume]
        [--device cuda] [--workers 8] [--fit-minutes 8]

On a GPU (``--device cuda``, bfloat16 autocast) the recipe runs unchanged; ``--workers`` generates
the scenes in parallel processes (the same scenes as one process); ``--fit-minutes M`` times the
first steps and sets the schedule length to what fits in M minutes (recorded in the config's
history, so the model card's reproduce command names the exact iteration count).

Outputs in ``--output``: ``config.yaml``, the scene cache, ``checkpoint.pt`` (atomic, with optimizer,
scheduler and RNG states; ``--resume`` continues exactly), ``losses.csv``, ``evaluations.csv`` and
``metrics.json``; at the end the weights and model card named in the config's ``export`` section.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from segment_anything.modeling.transformer import Attention
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipes.provenance import git_commit  # noqa: E402
from robustprior.atomic import atomic_path, save_torch_atomically, write_text_atomically  # noqa: E402
from robustprior.load import build_robust_sam  # noqa: E402
from robustprior.checkpoint import save_checkpoint  # noqa: E402
from robustprior.metrics import mask_iou  # noqa: E402
from robustprior.modeling.robust_sam import ImageFeatures, RobustSam  # noqa: E402
from robustprior.prompts import center_point, jitter_box, mask_to_box, sample_points  # noqa: E402
from robustprior.scenes import TextureBank, generate_scene_arrays  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_NAME = "checkpoint.pt"
DEFAULT_CONFIG = "recipes/configs/tiny_sam.yaml"  # the CPU recipe
LOSS_COLUMNS = ("iteration", "lr", "loss", "focal", "dice", "iou_mse", "seconds")
EVALUATION_COLUMNS = ("iteration", "objects", "single_point_iou", "single_point_oracle_iou", "token0_iou", "box_iou")
PAD_LABEL = -1  # SAM's label for a padding point (ignored by the prompt encoder)


# ----------------------------------------------------------------------------- files
def load_config(path: str | Path) -> dict:
    """The YAML recipe config as a dict."""
    with open(path) as handle:
        return yaml.safe_load(handle)


# ----------------------------------------------------------------------------- scenes
def cached_scenes(folder: Path, seed: int, count: int, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The training scenes, generated once into ``folder/scenes_seed{seed}_n{count}.npz``."""
    path = folder / f"scenes_seed{seed}_n{count}.npz"
    source = str(TextureBank.load(None).source)
    if path.is_file():
        with np.load(path) as cache:
            if str(cache["texture_source"]) == source:
                return cache["images"], cache["instances"]
    images, instances, _ = generate_scene_arrays(seed, count, "generating train scenes", workers)
    with atomic_path(path, suffix=".npz") as temporary:
        np.savez(temporary, images=images, instances=instances, texture_source=np.array(source))
    return images, instances


# ----------------------------------------------------------------------------- prompts
@dataclass
class PromptGroup:
    """Prompts of one kind for a training step (P prompts over B images)."""

    image_index: torch.Tensor  # P long: which image of the batch
    targets: torch.Tensor  # P x 1 x H x W bool: the object's exact mask
    point_coords: torch.Tensor | None = None  # P x N x 2 (x, y), padded with PAD_LABEL points
    point_labels: torch.Tensor | None = None  # P x N int
    boxes: torch.Tensor | None = None  # P x 4 XYXY
    single_point: torch.Tensor | None = None  # P bool: one positive point (multimask supervision)

    def __len__(self) -> int:
        return self.image_index.shape[0]

    def to(self, device: torch.device) -> PromptGroup:
        """The group with every tensor on ``device``."""
        moved = {name: None if value is None else value.to(device, non_blocking=True)
                 for name, value in self.__dict__.items()}
        return PromptGroup(**moved)


def sample_prompt_groups(instances: np.ndarray, rng: np.random.Generator, batch: dict) -> list[PromptGroup]:
    """Draw ``prompts_per_image`` prompts per image of ``instances`` (``B x H x W``): a point group
    (single and multi-point prompts) and a box group; empty groups are left out."""
    kinds = list(batch["prompt_mix"])
    probabilities = np.array([batch["prompt_mix"][kind] for kind in kinds], dtype=np.float64)
    probabilities /= probabilities.sum()
    height, width = instances.shape[1:]
    points: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, bool]] = []
    boxes: list[tuple[int, np.ndarray, np.ndarray]] = []
    for image_index, instance_map in enumerate(instances):
        object_ids = np.unique(instance_map)
        object_ids = object_ids[object_ids > 0]
        if object_ids.size == 0:
            continue
        for _ in range(batch["prompts_per_image"]):
            mask = instance_map == rng.choice(object_ids)
            kind = kinds[rng.choice(len(kinds), p=probabilities)]
            if kind == "box":
                box = jitter_box(mask_to_box(mask), rng, batch["box_jitter"], image_size=(height, width))
                boxes.append((image_index, mask, box))
            elif kind == "single_point":
                coords, labels = sample_points(mask, 1, rng)
                points.append((image_index, mask, coords, labels, True))
            else:
                negatives = int(rng.random() < batch["negative_probability"] and not mask.all())
                coords, labels = sample_points(mask, int(rng.integers(2, 4)), rng, n_negative=negatives)
                points.append((image_index, mask, coords, labels, False))
    groups = []
    if points:
        longest = max(len(labels) for _, _, _, labels, _ in points)
        coords = np.zeros((len(points), longest, 2), dtype=np.float32)
        labels = np.full((len(points), longest), PAD_LABEL, dtype=np.int64)
        for row, (_, _, point_coords, point_labels, _) in enumerate(points):
            coords[row, : len(point_labels)] = point_coords
            labels[row, : len(point_labels)] = point_labels
        groups.append(PromptGroup(
            image_index=torch.tensor([entry[0] for entry in points]),
            targets=torch.from_numpy(np.stack([entry[1] for entry in points])[:, None]),
            point_coords=torch.from_numpy(coords),
            point_labels=torch.from_numpy(labels),
            single_point=torch.tensor([entry[4] for entry in points]),
        ))
    if boxes:
        groups.append(PromptGroup(
            image_index=torch.tensor([entry[0] for entry in boxes]),
            targets=torch.from_numpy(np.stack([entry[1] for entry in boxes])[:, None]),
            boxes=torch.from_numpy(np.stack([entry[2] for entry in boxes])),
        ))
    return groups


class TrainingBatches(torch.utils.data.IterableDataset):
    """The training steps' inputs from ``start`` on: step ``i`` draws its images, flips and prompts
    with ``np.random.default_rng([seed, i])``, so a step's batch does not depend on which process
    made it or on earlier steps (exact resume; identical with any number of loader workers, which
    take the steps round-robin, the order a ``DataLoader`` returns them in)."""

    def __init__(self, images: np.ndarray, instances: np.ndarray, config: dict, start: int) -> None:
        self.images, self.instances = images, instances
        self.batch, self.flips = config["batch"], config["data"]["flip_augmentation"]
        self.seed, self.start = int(config["seed"]), start

    def step(self, index: int) -> tuple[np.ndarray, list[PromptGroup]]:
        """Step ``index``: images ``B x H x W x 3`` uint8 and their prompt groups."""
        rng = np.random.default_rng([self.seed, index])
        chosen = rng.choice(len(self.images), size=self.batch["images"], replace=False)
        images, instances = self.images[chosen], self.instances[chosen]
        if self.flips:
            if rng.random() < 0.5:
                images, instances = images[:, :, ::-1], instances[:, :, ::-1]
            if rng.random() < 0.5:
                images, instances = images[:, ::-1], instances[:, ::-1]
        return np.ascontiguousarray(images), sample_prompt_groups(np.ascontiguousarray(instances), rng, self.batch)

    def __iter__(self):
        """Steps as ``(images, [group fields as dicts])``: plain containers, which loader workers can
        send whatever module this file was imported as."""
        info = torch.utils.data.get_worker_info()
        index, stride = (self.start, 1) if info is None else (self.start + info.id, info.num_workers)
        while True:
            images, groups = self.step(index)
            yield images, [dict(group.__dict__) for group in groups]
            index += stride


def training_batches(images: np.ndarray, instances: np.ndarray, config: dict, start: int, workers: int):
    """Iterator over the steps of :class:`TrainingBatches` from ``start`` on, as ``(images,
    [PromptGroup])`` with images a ``B x H x W x 3`` uint8 tensor, made by ``workers`` processes
    (``workers <= 1``: in this process)."""
    dataset = TrainingBatches(images, instances, config, start)
    stream = iter(dataset) if workers <= 1 else iter(torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=workers, prefetch_factor=4))
    return ((torch.as_tensor(images), [PromptGroup(**fields) for fields in groups]) for images, groups in stream)


# ----------------------------------------------------------------------------- losses
def focal_and_dice(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mask sigmoid focal loss (pixel mean; ``alpha < 0``: no class weighting) and dice loss:
    logits ``P x M x H x W``, targets ``P x 1 x H x W`` -> two ``P x M`` tensors."""
    targets = targets.expand_as(logits)
    probabilities = logits.sigmoid()
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    correct = probabilities * targets + (1 - probabilities) * (1 - targets)
    focal = (1 - correct) ** gamma * cross_entropy
    if alpha >= 0:
        focal = (alpha * targets + (1 - alpha) * (1 - targets)) * focal
    focal = focal.mean(dim=(-2, -1))
    overlap = (probabilities * targets).sum(dim=(-2, -1))
    dice = 1 - (2 * overlap + 1) / (probabilities.sum(dim=(-2, -1)) + targets.sum(dim=(-2, -1)) + 1)
    return focal, dice


def actual_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of ``logits > 0`` (``P x M x H x W``) with ``targets >= 0.5`` (``P x 1 x H x W``) -> ``P x M``."""
    predicted = logits > 0
    truth = targets >= 0.5
    intersection = (predicted & truth).sum(dim=(-2, -1)).float()
    union = (predicted | truth).sum(dim=(-2, -1)).float()
    return intersection / union.clamp(min=1)


def group_losses(model: RobustSam, features: ImageFeatures, group: PromptGroup, weights: dict
                 ) -> dict[str, torch.Tensor]:
    """Summed (over prompts) focal, dice and IoU-MSE terms of one prompt group. With
    ``weights["full_resolution"]`` the ``P x 4 x 128 x 128`` low-resolution logits are upsampled
    bilinearly to the image size (as :meth:`RobustSam.postprocess_masks` does at inference) and
    compared with the exact masks; otherwise they are compared at 128 x 128 with the masks
    area-averaged to that size (soft targets). The soft targets of objects narrower than two
    low-resolution pixels sit near 0.5, whose optimum is a logit near 0: a coin flip after
    thresholding. At full resolution a one-pixel ridge of positive logits covers a 2-pixel bar.

    All four mask tokens are decoded. Token 0 is supervised for multi-point and box prompts, and with
    weight ``single_point_token0`` for single points; single points also supervise the lowest-loss
    multimask token (1..3) and the IoU prediction of all three."""
    points = (group.point_coords, group.point_labels) if group.point_coords is not None else None
    sparse, dense = model.encode_prompts(points=points, boxes=group.boxes)
    output = model.decode(features, sparse, dense, image_index=group.image_index, multimask_output=None, path="sam")
    logits = output.mask_logits.float()
    targets = group.targets.float()  # converted here, on the model's device (loader workers only make arrays)
    if weights.get("full_resolution", False):
        logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    else:
        targets = F.adaptive_avg_pool2d(targets, logits.shape[-2:])  # soft targets at the low resolution
    focal, dice = focal_and_dice(logits, targets, weights["focal_alpha"], weights["focal_gamma"])
    mask_loss = weights["focal"] * focal + weights["dice"] * dice  # P x 4

    prompts = len(group)
    mask_weights = torch.zeros(prompts, 4, device=logits.device)
    iou_weights = torch.zeros(prompts, 4, device=logits.device)
    mask_weights[:, 0] = 1.0
    iou_weights[:, 0] = 1.0
    if group.single_point is not None and bool(group.single_point.any()):
        single = group.single_point
        best = mask_loss[:, 1:].detach().argmin(dim=1) + 1
        chosen = torch.zeros(prompts, 4, device=logits.device).scatter_(1, best[:, None], 1.0)
        mask_weights[single] = chosen[single]
        mask_weights[single, 0] = weights["single_point_token0"]
        iou_weights[single] = torch.tensor([weights["single_point_token0"], 1.0, 1.0, 1.0], device=logits.device)
    target_iou = actual_iou(logits.detach(), targets)
    iou_error = (output.iou_predictions.float() - target_iou) ** 2
    return {
        "focal": (mask_weights * focal).sum(),
        "dice": (mask_weights * dice).sum(),
        "iou_mse": (iou_weights * iou_error).sum(),
        "mask_loss": (mask_weights * mask_loss).sum(),
    }


def training_step_loss(model: RobustSam, images: torch.Tensor, groups: list[PromptGroup], config: dict
                       ) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss of one step (mean over prompts) for ``images`` (``B x H x W x 3`` uint8)."""
    weights = config["loss"]
    device = next(model.parameters()).device
    pixels = images.to(device).permute(0, 3, 1, 2).float()
    groups = [group.to(device) for group in groups]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config["optimizer"]["bf16_autocast"]):
        features = model.encode_image(model.preprocess(pixels))
        terms = [group_losses(model, features, group, weights) for group in groups]
    prompts = sum(len(group) for group in groups)
    summed = {name: sum(term[name] for term in terms) / prompts for name in terms[0]}
    loss = summed["mask_loss"] + weights["iou"] * summed["iou_mse"]
    logged = {"loss": loss.item(), **{name: summed[name].item() for name in ("focal", "dice", "iou_mse")}}
    return loss, logged


# ----------------------------------------------------------------------------- evaluation
def held_out_scenes(seed: int, count: int, workers: int = 1) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """The held-out scenes (small enough to regenerate every run)."""
    return generate_scene_arrays(seed, count, "generating held-out scenes", workers)


@torch.no_grad()
def evaluate(model: RobustSam, images: np.ndarray, instances: np.ndarray, kinds: list[list[str]] | None = None,
             images_per_batch: int = 8) -> dict[str, Any]:
    """Single-click, token-0 and box IoU over every object of the scenes (``N x H x W x 3`` / ``N x H x W``).

    Single point: the object's ``center_point``, multimask output, the mask with the highest
    predicted IoU (SAM's protocol); the oracle best of the three is reported too. Token 0: the same
    click, single output. Box: the tight ``mask_to_box`` box, single output. With ``kinds`` (each
    scene's shape kinds, as :func:`generate_scene_arrays` returns them) the single-click IoU is also
    broken down by shape kind: ``single_point_iou_per_kind`` and ``objects_per_kind``."""
    model.eval()
    device = next(model.parameters()).device
    scores: dict[str, list[float]] = {"single_point_iou": [], "single_point_oracle_iou": [], "token0_iou": [],
                                      "box_iou": []}
    object_kinds: list[str] = []
    height, width = images.shape[1:3]
    for start in range(0, len(images), images_per_batch):
        chunk = images[start : start + images_per_batch]
        pixels = torch.from_numpy(np.ascontiguousarray(chunk)).to(device).permute(0, 3, 1, 2).float()
        features = model.encode_image(model.preprocess(pixels))
        masks, image_index = [], []
        for offset, instance_map in enumerate(instances[start : start + images_per_batch]):
            for object_id in np.unique(instance_map)[1:]:
                masks.append(instance_map == object_id)
                image_index.append(offset)
                if kinds is not None:
                    object_kinds.append(kinds[start + offset][object_id - 1])
        if not masks:
            continue
        truth = np.stack(masks)
        index = torch.tensor(image_index, device=device)
        centers = torch.from_numpy(np.stack([center_point(mask) for mask in masks]))[:, None].to(device)
        labels = torch.ones(len(masks), 1, dtype=torch.long, device=device)
        sparse, dense = model.encode_prompts(points=(centers, labels))
        clicks = model.decode(features, sparse, dense, image_index=index, multimask_output=None, path="sam")
        click_masks = (model.postprocess_masks(clicks.mask_logits, (height, width), (height, width)) > 0).cpu()
        ious = np.stack([mask_iou(click_masks[:, token].numpy(), truth) for token in range(4)], axis=1)
        chosen = clicks.iou_predictions[:, 1:].argmax(dim=1).cpu().numpy() + 1
        scores["single_point_iou"] += ious[np.arange(len(masks)), chosen].tolist()
        scores["single_point_oracle_iou"] += ious[:, 1:].max(axis=1).tolist()
        scores["token0_iou"] += ious[:, 0].tolist()
        boxes = torch.from_numpy(np.stack([mask_to_box(mask) for mask in masks])).to(device)
        sparse, dense = model.encode_prompts(boxes=boxes)
        boxed = model.decode(features, sparse, dense, image_index=index, multimask_output=False, path="sam")
        box_masks = (model.postprocess_masks(boxed.mask_logits, (height, width), (height, width))[:, 0] > 0).cpu()
        scores["box_iou"] += np.atleast_1d(mask_iou(box_masks.numpy(), truth)).tolist()
    results: dict[str, Any] = {name: float(np.mean(values)) for name, values in scores.items()}
    results["objects"] = len(scores["box_iou"])
    if kinds is not None:
        clicks_by_kind: dict[str, list[float]] = {}
        for kind, iou in zip(object_kinds, scores["single_point_iou"]):
            clicks_by_kind.setdefault(kind, []).append(iou)
        results["single_point_iou_per_kind"] = {kind: float(np.mean(v)) for kind, v in sorted(clicks_by_kind.items())}
        results["objects_per_kind"] = {kind: len(v) for kind, v in sorted(clicks_by_kind.items())}
    return results


# ----------------------------------------------------------------------------- optimisation
def parameter_groups(model: RobustSam, weight_decay: float) -> list[dict]:
    """SAM parameters, without weight decay for biases, norms and position embeddings."""
    decayed, plain = [], []
    for name, parameter in model.named_parameters():
        if name.startswith("robust.") or not parameter.requires_grad:
            continue
        no_decay = parameter.ndim <= 1 or "pos_embed" in name or "rel_pos" in name or "point_embeddings" in name
        (plain if no_decay else decayed).append(parameter)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def warmup_cosine(optimizer_config: dict) -> Any:
    """LR multiplier: linear warmup over ``warmup_iterations`` steps, then cosine down to
    ``min_ratio`` at ``iterations`` (read at every step, so ``--fit-minutes`` can set the length
    during the warmup)."""
    warmup, min_ratio = optimizer_config["warmup_iterations"], optimizer_config["min_lr_ratio"]

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        total = optimizer_config["iterations"]
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return multiplier


def align_decoder_attention(model: RobustSam) -> None:
    """Initialise every key projection of SAM's two-way transformer as a copy of its query projection.

    With ``W_k = W_q`` the attention score between a prompt token and an image position contains
    ``PE(point)^T W^T W PE(position)``, a bump at the prompt's location, so the decoder starts with a
    locality prior. From the default independent initialisation that bilinear form must first be
    learned, and the from-scratch model sat in the all-background minimum (dice flat) for hundreds of
    iterations."""
    with torch.no_grad():
        for module in model.mask_decoder.transformer.modules():
            if isinstance(module, Attention):
                module.k_proj.weight.copy_(module.q_proj.weight)
                module.k_proj.bias.copy_(module.q_proj.bias)


def trainable_model(model_type: str, aligned_attention: bool = False, overrides: dict | None = None) -> RobustSam:
    """A fresh model whose SAM parameters train (the robust parts stay frozen and untouched);
    ``aligned_attention`` applies :func:`align_decoder_attention`; ``overrides`` change single
    :class:`robustprior.build.ModelConfig` fields (architecture experiments)."""
    model = build_robust_sam(model_type, random_init=True, **(overrides or {}))
    for parameter in model.sam_parameters():
        parameter.requires_grad_(True)
    if aligned_attention:
        align_decoder_attention(model)
    return model


def append_rows(path: Path, columns: tuple[str, ...], rows: list[dict], keep_until: int | None = None) -> None:
    """Append ``rows`` to a CSV (header on creation); ``keep_until`` first drops rows past that iteration."""
    existing = []
    if path.is_file():
        with open(path, newline="") as handle:
            existing = list(csv.DictReader(handle))
    if keep_until is not None:
        existing = [row for row in existing if int(row["iteration"]) <= keep_until]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(existing + rows)


# ----------------------------------------------------------------------------- training
def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"`` (an error without a GPU)."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda (--device or the config's device): PyTorch sees no CUDA device; "
                           "pass --device cpu")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


FIT_PROBE = (10, 40)  # --fit-minutes times the steps after the first 10 and fixes the length at step 40


def fitted_iterations(step_seconds: list[float], minutes: float, skip: int = FIT_PROBE[0]) -> int:
    """Schedule length that fits ``minutes`` of training after the steps timed in ``step_seconds``:
    those steps plus what the remaining time allows at the median step time (the first ``skip``
    steps, with their one-off start-up costs, left out of the median), plus 3 % for evaluations
    and checkpoints."""
    per_step = float(np.median(step_seconds[skip:])) * 1.03
    return len(step_seconds) + max(1, int((minutes * 60 - sum(step_seconds)) / per_step))


def train(config: dict, output: str | Path, resume: bool = False, iterations: int | None = None,
          stop_after: int | None = None, export: bool = True, threads: int | None = None,
          device: str | None = None, workers: int = 1, fit_minutes: float | None = None,
          config_path: str | None = None) -> dict:
    """Run (or resume) the recipe; returns ``{"iteration", "last_loss", "metrics", ...}``.

    ``iterations`` overrides the schedule length (resuming with a longer one restarts the cosine
    from where the longer schedule stands); ``threads`` overrides ``config["threads"]``;
    ``stop_after`` ends the run early at that iteration with a checkpoint (as an interruption
    would); ``export`` writes the weights and model card named in ``config["export"]`` after the
    final evaluation. ``device`` overrides ``config["device"]``; ``workers`` processes generate the
    scenes and make the training batches (:func:`training_batches`); ``fit_minutes`` (a fresh run only) sets the schedule length at step 40 from the timed
    steps 11-40 (:func:`fitted_iterations`). Every call appends ``{start_iteration,
    schedule_iterations, threads, device}`` (and ``config_path``, the YAML file a fresh run was
    read from) to ``config["history"]`` (saved in the checkpoint) for the model card."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    checkpoint_path = output / CHECKPOINT_NAME
    state = None
    if resume:
        if not checkpoint_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint_path}")
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        config = state["config"]
    if fit_minutes is not None and state is not None:
        raise ValueError("--fit-minutes sets the length of a fresh run; resume with --iterations instead")
    config = copy.deepcopy(config)
    if iterations is not None:
        config["optimizer"]["iterations"] = iterations
    if threads is not None:
        config["threads"] = threads
    if device is not None:
        config["device"] = device
    run_device = resolve_device(config.get("device", "cpu"))
    # one entry per invocation, so the model card can print the exact commands that made the weights
    history_entry = {"start_iteration": 0 if state is None else int(state["iteration"]),
                     "schedule_iterations": int(config["optimizer"]["iterations"]), "threads": int(config["threads"]),
                     "device": run_device.type}
    if state is None and config_path is not None:
        history_entry["config"] = str(config_path)
    config.setdefault("history", []).append(history_entry)
    torch.set_num_threads(config["threads"])
    write_text_atomically(output / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    data, optimizer_config = config["data"], config["optimizer"]
    total = optimizer_config["iterations"]
    torch.manual_seed(config["seed"])
    random.seed(config["seed"])
    train_images, train_instances = cached_scenes(output, data["train_seed"], data["train_scenes"], workers)
    test_images, test_instances, test_kinds = held_out_scenes(data["test_seed"], data["test_scenes"], workers)
    quick = slice(0, data["quick_eval_scenes"])

    model = trainable_model(config["model_type"], config["aligned_attention_init"], config.get("model_overrides"))
    model.to(run_device)
    optimizer = torch.optim.AdamW(parameter_groups(model, optimizer_config["weight_decay"]),
                                  lr=optimizer_config["lr"], betas=tuple(optimizer_config["betas"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(optimizer_config))
    iteration, elapsed = 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])  # moves the moments to the parameters' device
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        iteration, elapsed = state["iteration"], state["elapsed_seconds"]
    loss_log, evaluation_log = output / "losses.csv", output / "evaluations.csv"
    append_rows(loss_log, LOSS_COLUMNS, [], keep_until=iteration)
    append_rows(evaluation_log, EVALUATION_COLUMNS, [], keep_until=iteration)

    def checkpoint() -> None:
        save_torch_atomically({
            "config": config, "iteration": iteration, "elapsed_seconds": elapsed,
            "model": {name: tensor.cpu() for name, tensor in model.state_dict().items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
        }, checkpoint_path)

    logging = config["logging"]
    end = total if stop_after is None else min(total, stop_after)
    pending: list[dict] = []
    last_checkpoint = time.monotonic()
    last_loss = float("nan")
    probe: list[float] = []  # step seconds for --fit-minutes
    progress = tqdm(total=total, initial=iteration, desc="train", mininterval=10, dynamic_ncols=False)
    batches = training_batches(train_images, train_instances, config, iteration, workers)
    model.train()
    while iteration < end:
        started = time.monotonic()
        images, groups = next(batches)
        loss, logged = training_step_loss(model, images, groups, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.sam_parameters(), optimizer_config["gradient_clip"])
        learning_rate = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        iteration += 1
        if run_device.type == "cuda":
            torch.cuda.synchronize()  # honest step times
        seconds = time.monotonic() - started
        elapsed += seconds
        if fit_minutes is not None:
            probe.append(seconds)
            if iteration == FIT_PROBE[1]:
                total = max(fitted_iterations(probe, fit_minutes), optimizer_config["warmup_iterations"] + 1)
                optimizer_config["iterations"] = history_entry["schedule_iterations"] = total
                end = total if stop_after is None else min(total, stop_after)
                progress.total = total
                write_text_atomically(output / "config.yaml", yaml.safe_dump(config, sort_keys=False))
                progress.write(f"--fit-minutes {fit_minutes}: {total} iterations")
        last_loss = logged["loss"]
        pending.append({"iteration": iteration, "lr": f"{learning_rate:.3e}", "seconds": f"{seconds:.3f}",
                        **{name: f"{value:.6f}" for name, value in logged.items()}})
        progress.update(1)
        progress.set_postfix({name: f"{value:.3f}" for name, value in logged.items()} | {"s/it": f"{seconds:.2f}"},
                             refresh=False)
        due_checkpoint = time.monotonic() - last_checkpoint > 60 * logging["checkpoint_minutes"] or iteration == end
        if iteration % logging["log_every"] == 0 or due_checkpoint:
            append_rows(loss_log, LOSS_COLUMNS, pending)
            pending = []
        if iteration % logging["quick_eval_every"] == 0 and iteration < total:
            scores = evaluate(model, test_images[quick], test_instances[quick])
            model.train()
            append_rows(evaluation_log, EVALUATION_COLUMNS, [{"iteration": iteration, **scores}])
            progress.write(f"[{iteration}] quick eval: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        if due_checkpoint:
            checkpoint()
            last_checkpoint = time.monotonic()
    progress.close()
    result = {"iteration": iteration, "last_loss": last_loss, "elapsed_seconds": elapsed}
    if iteration < total:
        return result

    metrics = evaluate(model, test_images, test_instances, test_kinds)
    append_rows(evaluation_log, EVALUATION_COLUMNS,
                [{"iteration": iteration, **{name: metrics[name] for name in EVALUATION_COLUMNS[1:]}}])
    with open(loss_log, newline="") as handle:
        losses = list(csv.DictReader(handle))
    step_time = float(np.median([float(row["seconds"]) for row in losses])) if losses else float("nan")
    summary = {
        "metrics": metrics, "iterations": iteration, "train_seconds": elapsed, "median_step_seconds": step_time,
        "train_scenes": data["train_scenes"], "test_scenes": data["test_scenes"], "git_commit": git_commit(),
    }
    write_text_atomically(output / "metrics.json", json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    if export:
        export_model(model, config, summary)
    return {**result, "metrics": metrics}


# ----------------------------------------------------------------------------- export
def export_model(model: RobustSam, config: dict, summary: dict) -> None:
    """Write the fp16 safetensors weights and the model card named in ``config["export"]``."""
    model.cpu()
    with torch.no_grad():
        model.robust.output_tokens.weight.copy_(model.mask_decoder.mask_tokens.weight)
    metrics = summary["metrics"]
    weights_path = REPO_ROOT / config["export"]["weights"]
    metadata = {
        "trained_by": "recipes/train_tiny_sam.py",
        "git_commit": summary["git_commit"],
        "iterations": str(summary["iterations"]),
        "train_scenes": str(summary["train_scenes"]),
        **{name: f"{value:.4f}" if isinstance(value, float) else json.dumps(value) if isinstance(value, dict) else str(value)
           for name, value in metrics.items()},
    }
    save_checkpoint(model, weights_path, extra_metadata=metadata, dtype=torch.float16)
    card_path = REPO_ROOT / config["export"]["model_card"]
    write_text_atomically(card_path, model_card(config, summary, weights_path))
    for path in (weights_path, card_path):
        path.chmod(0o644)  # the atomic writers' temporary files are private (0600); bundled files are not


def export_finished_run(output: str | Path, reevaluate: bool = False) -> None:
    """Export the weights and model card of a finished run in ``output`` (one trained with ``--no-export``).

    ``reevaluate``: first re-run the held-out evaluation of the final weights and rewrite
    ``metrics.json`` with it (e.g. after the evaluation gained a breakdown)."""
    output = Path(output)
    state = torch.load(output / CHECKPOINT_NAME, map_location="cpu", weights_only=False)
    config = state["config"]
    if state["iteration"] < config["optimizer"]["iterations"]:
        raise ValueError(f"{output} stopped at iteration {state['iteration']} of {config['optimizer']['iterations']}; "
                         "finish it with --resume first")
    summary = json.loads((output / "metrics.json").read_text())
    if summary["iterations"] != state["iteration"]:
        raise ValueError(f"{output / 'metrics.json'} is for iteration {summary['iterations']}, the checkpoint for "
                         f"{state['iteration']}")
    model = trainable_model(config["model_type"], overrides=config.get("model_overrides"))
    model.load_state_dict(state["model"])
    if reevaluate:
        data = config["data"]
        summary["metrics"] = evaluate(model, *held_out_scenes(data["test_seed"], data["test_scenes"]))
        write_text_atomically(output / "metrics.json", json.dumps(summary, indent=2))
    export_model(model.eval(), config, summary)


def reproduce_commands(config: dict) -> str:
    """The commands that re-run a run's schedule history (one per invocation)."""
    commands = []
    for entry in config.get("history") or [{"start_iteration": 0,
                                            "schedule_iterations": config["optimizer"]["iterations"],
                                            "threads": config["threads"]}]:
        command = "python recipes/train_tiny_sam.py"
        if entry["start_iteration"] > 0:
            command += " --output runs/tiny_sam --resume"
        else:
            command += f" --config {entry.get('config', DEFAULT_CONFIG)} --output runs/tiny_sam"
        command += f" --iterations {entry['schedule_iterations']} --threads {entry['threads']}"
        if entry.get("device", "cpu") != "cpu":
            command += f" --device {entry['device']}"
        commands.append(command)
    return "\n".join(commands)


def per_kind_table(metrics: dict) -> str:
    """The card's single-click IoU per shape kind (empty when the run's metrics have no breakdown)."""
    if "single_point_iou_per_kind" not in metrics:
        return ""
    rows = [f"| {kind} | {metrics['objects_per_kind'][kind]} | {iou:.4f} |"
            for kind, iou in metrics["single_point_iou_per_kind"].items()]
    return "\n".join(["", "Single click (as above) per shape kind:", "", "| shape | objects | IoU |", "|---|---|---|",
                      *rows, ""])


def model_card(config: dict, summary: dict, weights_path: Path) -> str:
    """The markdown model card of an exported run."""
    data, batch, metrics = config["data"], config["batch"], summary["metrics"]
    size_kib = weights_path.stat().st_size / 1024
    return f"""# sam_tiny: the tiny SAM base, trained from scratch

`{weights_path.name}` holds a full `RobustSam` of type `tiny` ({size_kib:.0f} KiB, float16; loading casts to
float32): SAM parts (image encoder, prompt encoder, mask decoder) trained by `recipes/train_tiny_sam.py`; the
robust parts are fresh (untrained), with the Robust Output Tokens copied from SAM's mask tokens, as when a
SAM checkpoint is loaded. Load it with `robustprior.load.load_model("sam_tiny", decoder_path="sam")` (its RobustSAM path is refused: untrained).

## Data

The scene world of `robustprior.scenes` (default `SceneConfig`: 256 x 256, 2-6 textured objects on a photo
background, textures from the shared photos). Train: {data['train_scenes']} scenes
`generate_scene(derive_seed({data['train_seed']}, i))`, random flips. Held-out test: {data['test_scenes']} scenes
`generate_scene(derive_seed({data['test_seed']}, i))` ({metrics['objects']} objects), a different seed stream.

## Training

{summary['iterations']} iterations of {batch['images']} images x {batch['prompts_per_image']} prompts
(mix {batch['prompt_mix']}), AdamW lr {config['optimizer']['lr']} (warmup {config['optimizer']['warmup_iterations']},
cosine), weight decay {config['optimizer']['weight_decay']}, gradient clip {config['optimizer']['gradient_clip']},
bf16 autocast {config['optimizer']['bf16_autocast']}, decoder attention initialised with `W_k = W_q`
(`aligned_attention_init: {config['aligned_attention_init']}`); loss {config['loss']['focal']} x focal + {config['loss']['dice']} x dice
(+ IoU MSE) {"on the logits upsampled to 256 x 256 against the exact masks" if config['loss'].get('full_resolution')
             else "on the 128 x 128 logits against area-averaged masks"}, multimask min-loss for single points.
Architecture: `tiny`{f" with {config['model_overrides']}" if config.get('model_overrides') else ""}.
Wall time {summary['train_seconds'] / 60:.1f} min of training on {", ".join(sorted({entry.get("device", "cpu") for entry in config.get("history", [])}) or ["cpu"])}
(CPU threads: {config['threads']}; median step {summary['median_step_seconds']:.3f} s).
Git commit `{summary['git_commit']}`. Full config: `{(config.get("history") or [{}])[0].get("config", DEFAULT_CONFIG)}`.

Reproduce (one command per invocation of the run; a resume with a longer `--iterations` continues the
cosine schedule of that length from where it stands, i.e. a warm restart):

```
{reproduce_commands(config)}
```

## Held-out metrics (mean IoU over {metrics['objects']} objects)

| prompt | IoU |
|---|---|
| single click at `center_point`, multimask, highest predicted IoU | {metrics['single_point_iou']:.4f} |
| same click, oracle best of the 3 masks | {metrics['single_point_oracle_iou']:.4f} |
| same click, single output (token 0) | {metrics['token0_iou']:.4f} |
| tight box, single output | {metrics['box_iou']:.4f} |
{per_kind_table(metrics)}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--output", default="runs/tiny_sam")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUTPUT/checkpoint.pt (with the config stored in it)")
    parser.add_argument("--iterations", type=int, help="override the schedule length")
    parser.add_argument("--stop-after", type=int, help="stop (with a checkpoint) at this iteration")
    parser.add_argument("--threads", type=int, help="override the config's CPU thread count")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override the config's device")
    parser.add_argument("--workers", type=int, default=1, help="processes that generate the scenes")
    parser.add_argument("--fit-minutes", type=float,
                        help="fresh runs: set the schedule length to what fits in this many minutes of training")
    parser.add_argument("--no-export", action="store_true", help="do not write the weights and model card")
    parser.add_argument("--export-only", action="store_true",
                        help="only export the finished run in --output (trained with --no-export)")
    parser.add_argument("--reevaluate", action="store_true",
                        help="with --export-only: re-run the held-out evaluation first and rewrite metrics.json")
    arguments = parser.parse_args()
    if arguments.reevaluate and not arguments.export_only:
        parser.error("--reevaluate goes with --export-only (training always evaluates its final weights)")
    if arguments.export_only:
        export_finished_run(arguments.output, reevaluate=arguments.reevaluate)
        return
    train(load_config(arguments.config), arguments.output, resume=arguments.resume, iterations=arguments.iterations,
          stop_after=arguments.stop_after, export=not arguments.no_export, threads=arguments.threads,
          device=arguments.device, workers=arguments.workers, fit_minutes=arguments.fit_minutes,
          config_path=None if arguments.resume else arguments.config)


if __name__ == "__main__":
    main()
