"""How good is a structure prior on the degraded test inputs? Masks per image, and how well its masks
match the true instances (where the generator wrote them).

``mean_best_iou``: for every true instance of every image, the IoU of the prior mask that overlaps it
best (0 when none does), averaged over all instances pooled across images: the segment-level recall of
the prior's masks.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from restoration.control_priors import has_instance_maps, instance_map_path, instance_masks, read_instance_map


def best_ious(true_masks: np.ndarray, prior_masks: np.ndarray) -> np.ndarray:
    """T: for each of ``true_masks`` (T x H x W bool), its best IoU against ``prior_masks`` (K x H x W bool)."""
    if len(true_masks) == 0:
        return np.zeros(0)
    if len(prior_masks) == 0:
        return np.zeros(len(true_masks))
    true_flat = true_masks.reshape(len(true_masks), -1).astype(np.float64)
    prior_flat = prior_masks.reshape(len(prior_masks), -1).astype(np.float64)
    intersection = true_flat @ prior_flat.T
    union = true_flat.sum(1)[:, None] + prior_flat.sum(1)[None, :] - intersection
    return np.where(union > 0, intersection / np.maximum(union, 1), 0.0).max(axis=1)


def prior_quality(index: Any, lq_paths: Sequence[str | Path]) -> dict[str, Any]:
    """``images``, ``masks_per_image`` (mean), ``mean_best_iou`` and ``instances`` (None / 0 without the
    generator's instance maps) of the priors in ``index`` (a :class:`~restoration.datasets.PriorIndex`)."""
    paths = list(dict.fromkeys(str(path) for path in lq_paths))
    if not paths:
        raise ValueError("prior_quality needs at least one image")
    counts, scores = [], []
    with_instances = has_instance_maps(paths)
    for path in paths:
        prior = index.load(path)
        counts.append(prior.num_masks)
        if with_instances:
            true_masks = instance_masks(read_instance_map(instance_map_path(path)))
            if true_masks.shape[1:] != prior.masks.shape[1:]:
                raise ValueError(f"{path}: instance map {true_masks.shape[1:]} and prior {prior.masks.shape[1:]} differ in size")
            scores.extend(best_ious(true_masks, prior.masks).tolist())
    return {"images": len(paths), "masks_per_image": float(np.mean(counts)),
            "mean_best_iou": float(np.mean(scores)) if scores else None, "instances": len(scores)}
