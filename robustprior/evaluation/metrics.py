"""Segmentation metrics: mask IoU / Dice / pixel accuracy, COCO mask AP for box prompts, and the
per-degradation meter behind RobustSAM's "Degrade / Clear / Average" tables.

Mask arguments are boolean numpy arrays or torch tensors, either HxW (one mask; the metric is a
Python float) or NxHxW (a batch; the metric is an N-vector, numpy float64 for numpy inputs and a
float64 tensor when any input is a tensor). ``ignore`` (HxW or NxHxW bool) removes pixels from
both prediction and ground truth before counting.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from robustprior.data.datasets import CLEAR_KIND

MaskArray = np.ndarray | torch.Tensor
METRIC_NAMES = ("IoU", "Dice", "PA")


def _is_boolean(array: MaskArray) -> bool:
    return array.dtype == torch.bool if isinstance(array, torch.Tensor) else array.dtype == np.bool_


def _prepared_masks(
    pred: MaskArray, gt: MaskArray, ignore: MaskArray | None
) -> tuple[MaskArray, MaskArray, MaskArray | None]:
    """Validates shapes/dtypes; converts everything to torch (on ``pred``'s or ``gt``'s device) when
    any input is a tensor, and broadcasts ``ignore`` to ``pred``'s shape."""
    inputs = [pred, gt] + ([] if ignore is None else [ignore])
    tensors = [array for array in inputs if isinstance(array, torch.Tensor)]
    if tensors:
        device = tensors[0].device
        inputs = [torch.as_tensor(array, device=device) for array in inputs]
    else:
        inputs = [np.asarray(array) for array in inputs]
    for label, array in zip(("pred", "gt", "ignore"), inputs):
        if not _is_boolean(array):
            raise ValueError(f"{label} must be boolean (threshold scores first), got dtype {array.dtype}")
    pred, gt = inputs[0], inputs[1]
    if tuple(pred.shape) != tuple(gt.shape) or pred.ndim not in (2, 3):
        raise ValueError(f"pred and gt must both be HxW or NxHxW, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    if ignore is None:
        return pred, gt, None
    ignore = inputs[2]
    if tuple(ignore.shape) not in (tuple(pred.shape), tuple(pred.shape[-2:])):
        raise ValueError(f"ignore of shape {tuple(ignore.shape)} does not fit masks of shape {tuple(pred.shape)}")
    if isinstance(ignore, torch.Tensor):
        return pred, gt, ignore.expand(pred.shape)
    return pred, gt, np.broadcast_to(ignore, pred.shape)


def _pixel_count(array: MaskArray) -> MaskArray:
    """Number of True pixels per mask (over the last two axes)."""
    return array.sum(axis=(-2, -1))


def _safe_ratio(numerator: MaskArray, denominator: MaskArray, batched: bool, empty: float = 1.0) -> float | MaskArray:
    """numerator / denominator in float64, ``empty`` where the denominator is 0; a float unless batched."""
    if isinstance(numerator, torch.Tensor):
        numerator, denominator = numerator.double(), denominator.double()
        ratio = torch.where(denominator > 0, numerator / denominator.clamp(min=1), torch.full_like(numerator, empty))
        return ratio if batched else float(ratio)
    numerator, denominator = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    ratio = np.where(denominator > 0, numerator / np.maximum(denominator, 1), empty)
    return ratio if batched else float(ratio)


def segmentation_scores(
    pred: MaskArray, gt: MaskArray, ignore: MaskArray | None = None
) -> dict[str, float | MaskArray]:
    """IoU, Dice and pixel accuracy ("PA") of ``pred`` against ``gt`` in one pass.

    IoU = |P & G| / |P | G| and Dice = 2 |P & G| / (|P| + |G|), both 1.0 when P and G are empty;
    PA = fraction of non-ignored pixels where P == G, 1.0 when every pixel is ignored.
    """
    pred, gt, ignore = _prepared_masks(pred, gt, ignore)
    if ignore is not None:
        valid = ~ignore
        pred, gt = pred & valid, gt & valid
        valid_count = _pixel_count(valid)
    else:
        valid_count = _pixel_count(torch.ones_like(pred) if isinstance(pred, torch.Tensor) else np.ones_like(pred))
    intersection = _pixel_count(pred & gt)
    agreement = valid_count - _pixel_count(pred ^ gt)
    batched = pred.ndim == 3
    return {
        "IoU": _safe_ratio(intersection, _pixel_count(pred | gt), batched),
        "Dice": _safe_ratio(2 * intersection, _pixel_count(pred) + _pixel_count(gt), batched),
        "PA": _safe_ratio(agreement, valid_count, batched),
    }


def mask_iou(pred: MaskArray, gt: MaskArray, ignore: MaskArray | None = None, empty: float = 1.0
             ) -> float | MaskArray:
    """Intersection over union (HxW -> float, NxHxW -> N values); ``empty`` (1.0: they agree) when
    both masks are empty. The one mask IoU of the project: evaluation, training validation and the
    SAM-tiny recipe's IoU-prediction target (``empty=0.0``) use it."""
    pred, gt, ignore = _prepared_masks(pred, gt, ignore)
    if ignore is not None:
        pred, gt = pred & ~ignore, gt & ~ignore
    return _safe_ratio(_pixel_count(pred & gt), _pixel_count(pred | gt), pred.ndim == 3, empty)


def dice(pred: MaskArray, gt: MaskArray, ignore: MaskArray | None = None) -> float | MaskArray:
    """Dice coefficient 2|P&G|/(|P|+|G|) (HxW -> float, NxHxW -> N values); 1.0 when both are empty."""
    return segmentation_scores(pred, gt, ignore)["Dice"]


def pixel_accuracy(pred: MaskArray, gt: MaskArray, ignore: MaskArray | None = None) -> float | MaskArray:
    """Fraction of non-ignored pixels where pred == gt (HxW -> float, NxHxW -> N values)."""
    return segmentation_scores(pred, gt, ignore)["PA"]


def _as_numpy(array: MaskArray | Sequence[float]) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def paired_bootstrap_interval(
    differences: np.ndarray, n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of paired ``differences`` (N values, one per resampling unit) and its percentile
    bootstrap interval: ``(mean, low, high)``, units resampled with replacement ``n_resamples`` times."""
    differences = np.asarray(differences, dtype=np.float64).ravel()
    if differences.size == 0:
        raise ValueError("no paired differences to bootstrap")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, 1000):  # chunks keep the index matrix small
        stop = min(start + 1000, n_resamples)
        means[start:stop] = differences[rng.integers(0, differences.size, (stop - start, differences.size))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(differences.mean()), float(low), float(high)


@dataclass
class ImagePredictions:
    """Predicted masks for one image: ``masks`` KxHxW bool, ``scores`` K confidences (e.g. SAM's
    predicted IoU). With box prompts, K is the image's number of ground-truth instances."""

    masks: MaskArray
    scores: MaskArray | Sequence[float]


def _encoded(mask: np.ndarray) -> dict:
    """Compressed COCO RLE of an HxW bool mask (pycocotools needs Fortran-ordered uint8)."""
    return coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))


def _coco_annotation(rle: dict, annotation_id: int, image_id: int, iscrowd: int) -> dict:
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": 1,
        "segmentation": rle,
        "area": float(coco_mask.area(rle)),
        "bbox": coco_mask.toBbox(rle).tolist(),
        "iscrowd": iscrowd,
    }


def box_prompt_ap(
    predictions: Sequence[ImagePredictions],
    ground_truth: Sequence[MaskArray],
    ignore: Sequence[MaskArray | None] | None = None,
) -> dict[str, float]:
    """Class-agnostic COCO mask AP (pycocotools ``COCOeval``, ``iouType="segm"``).

    ``ground_truth[i]`` holds image i's KxHxW bool instance masks and ``predictions[i]`` its
    predicted masks with scores; ``ignore[i]`` (HxW bool or None) becomes a crowd region, so
    predictions falling inside it are neither true nor false positives. All instances share one
    category and every prediction is kept (maxDets = the largest per-image count, at least 100).
    Returns ``{"AP": ..., "AP50": ..., "AP75": ...}`` as fractions in [0, 1].
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} prediction entries for {len(ground_truth)} images")
    if ignore is not None and len(ignore) != len(ground_truth):
        raise ValueError(f"{len(ignore)} ignore entries for {len(ground_truth)} images")
    images, annotations, detections = [], [], []
    most_detections_per_image = 0
    for image_index, (prediction, gt_masks) in enumerate(zip(predictions, ground_truth)):
        image_id = image_index
        gt_masks = _as_numpy(gt_masks).astype(bool)
        predicted_masks = _as_numpy(prediction.masks).astype(bool)
        scores = _as_numpy(prediction.scores).astype(np.float64).reshape(-1)
        if gt_masks.ndim != 3 or predicted_masks.ndim != 3:
            raise ValueError(
                f"image {image_index}: masks must be KxHxW, got {gt_masks.shape} and {predicted_masks.shape}"
            )
        height, width = gt_masks.shape[1:]
        if predicted_masks.shape[0] != scores.size or predicted_masks.shape[1:] != (height, width):
            raise ValueError(
                f"image {image_index}: {predicted_masks.shape} predicted masks with {scores.size} scores "
                f"do not fit ground truth of size {(height, width)}"
            )
        images.append({"id": image_id, "height": height, "width": width})
        crowd = None if ignore is None else ignore[image_index]
        regions = [(mask, 0) for mask in gt_masks] + ([] if crowd is None else [(_as_numpy(crowd).astype(bool), 1)])
        for mask, iscrowd in regions:
            # COCOeval records matches by annotation id and reads id 0 as "unmatched": ids start at 1.
            annotations.append(_coco_annotation(_encoded(mask), len(annotations) + 1, image_id, iscrowd))
        most_detections_per_image = max(most_detections_per_image, scores.size)
        detections.extend(
            {"image_id": image_id, "category_id": 1, "segmentation": _encoded(mask), "score": float(score)}
            for mask, score in zip(predicted_masks, scores)
        )
    if not any(annotation["iscrowd"] == 0 for annotation in annotations):
        raise ValueError("box_prompt_ap needs at least one ground-truth instance")
    if not detections:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
        coco_gt.createIndex()
        coco_detections = coco_gt.loadRes(detections)
        evaluator = COCOeval(coco_gt, coco_detections, iouType="segm")
        evaluator.params.imgIds = [image["id"] for image in images]
        evaluator.params.catIds = [1]
        evaluator.params.areaRng = [[0.0, 1e10]]
        evaluator.params.areaRngLbl = ["all"]
        evaluator.params.maxDets = [max(100, most_detections_per_image)]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, 0, 0, 0]  # IoU thresholds x recall levels
    thresholds = evaluator.params.iouThrs

    def mean_precision(rows: np.ndarray) -> float:
        values = rows[rows > -1]
        return float(values.mean()) if values.size else float("nan")

    return {
        "AP": mean_precision(precision),
        "AP50": mean_precision(precision[np.isclose(thresholds, 0.5)]),
        "AP75": mean_precision(precision[np.isclose(thresholds, 0.75)]),
    }


class SegmentationMeter:
    """Accumulates IoU / Dice / PA per degradation kind.

    ``table()`` gives RobustSAM's summary rows: "Degrade" = mean over the non-clear kinds of each
    kind's mean, "Clear" = the ``clear_kind`` mean, "Average" = mean over all kinds (clear
    included) of each kind's mean; a row with no data is NaN.
    """

    def __init__(self, clear_kind: str = CLEAR_KIND) -> None:
        self.clear_kind = clear_kind
        self.reset()

    def reset(self) -> None:
        """Forgets every accumulated score."""
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}
        self.samples: dict[str, list[float]] = {}  # per kind, each sample's IoU in update order

    def update(self, kind: str, pred: MaskArray, gt: MaskArray, ignore: MaskArray | None = None) -> None:
        """Adds the scores of one (HxW) or several (NxHxW) predictions made under degradation ``kind``."""
        scores = segmentation_scores(pred, gt, ignore)
        per_metric = np.stack([np.atleast_1d(_as_numpy(scores[name])) for name in METRIC_NAMES])
        self.sums[kind] = self.sums.get(kind, np.zeros(len(METRIC_NAMES))) + per_metric.sum(axis=1)
        self.counts[kind] = self.counts.get(kind, 0) + per_metric.shape[1]
        self.samples.setdefault(kind, []).extend(per_metric[METRIC_NAMES.index("IoU")].tolist())

    def per_kind(self) -> dict[str, dict[str, float]]:
        """``{kind: {"IoU", "Dice", "PA": means, "count": samples}}`` in order of first update."""
        summary: dict[str, dict[str, float]] = {}
        for kind, sums in self.sums.items():
            summary[kind] = dict(zip(METRIC_NAMES, (sums / self.counts[kind]).tolist()))
            summary[kind]["count"] = self.counts[kind]
        return summary

    def table(self) -> dict[str, dict[str, float]]:
        """``{"Degrade" | "Clear" | "Average": {"IoU", "Dice", "PA": mean}}`` (fractions)."""
        means = {kind: self.sums[kind] / self.counts[kind] for kind in self.sums}
        groups = {
            "Degrade": [value for kind, value in means.items() if kind != self.clear_kind],
            "Clear": [value for kind, value in means.items() if kind == self.clear_kind],
            "Average": list(means.values()),
        }
        missing = np.full(len(METRIC_NAMES), np.nan)
        return {
            row: dict(zip(METRIC_NAMES, (np.mean(values, axis=0) if values else missing).tolist()))
            for row, values in groups.items()
        }

    def to_dict(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{"per_kind": per_kind(), "table": table()}`` (fractions)."""
        return {"per_kind": self.per_kind(), "table": self.table()}

    def to_markdown(self, include_kinds: bool = False) -> str:
        """The summary table in percent (per-kind rows first when ``include_kinds``), as Markdown."""
        rows = dict(self.per_kind()) if include_kinds else {}
        rows.update(self.table())
        header = "| | " + " | ".join(f"{name} (%)" for name in METRIC_NAMES) + " |"
        lines = [header, "|---" * (len(METRIC_NAMES) + 1) + "|"]
        for label, values in rows.items():
            lines.append(f"| {label} | " + " | ".join(f"{100 * values[name]:.2f}" for name in METRIC_NAMES) + " |")
        return "\n".join(lines)
