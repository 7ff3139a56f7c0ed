"""The tiny-SAM recipe's held-out evaluation: single click (SAM's protocol), token 0 and tight box."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from robustprior.evaluation.metrics import mask_iou
from ...modeling.robust_sam import RobustSAM
from robustprior.data.prompts import center_point, mask_to_box
from robustprior.data.scenes import generate_scene_arrays


def held_out_scenes(seed: int, count: int, workers: int = 1) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """The held-out scenes (small enough to regenerate every run)."""
    return generate_scene_arrays(seed, count, "generating held-out scenes", workers)


@torch.no_grad()
def evaluate(model: RobustSAM, images: np.ndarray, instances: np.ndarray, kinds: list[list[str]] | None = None,
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

