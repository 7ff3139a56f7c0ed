"""The learning curve of RobustSAM training: robust minus SAM point IoU on fixed held-out scenes.

Training alone cannot say whether the robust path is getting better than SAM's decoder: the loss falls
while held-out IoU first drops below SAM, recovers, then overfits a small cached set. This module measures,
every ``curve.every`` iterations, the paper's Table 2 quantities in miniature on held-out images that
training never sees: single-mask point IoU (one positive point at each instance's interior centre, as
:func:`robustprior.evaluation.evaluate.evaluate_segmentation`), averaged over the degraded kinds
("Degrade") and on the clear image ("Clear"), for the robust path and for SAM's path of the same model.

The frozen encoder's features of every (image, kind) are computed once and kept in memory, so a
measurement costs only decoder passes; SAM's path is frozen too, so its scores are measured once. The
robust-minus-SAM gain comes with a paired 95 % t interval over images (each image's gain averaged over
its instances and kinds), so a curve point says "above SAM" only when the interval does.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from robustprior.data.datasets import CLEAR_KIND
from robustprior.data.degrade import DEGRADATIONS, degradation_seed, degrade
from robustprior.data.prompts import center_point
from robustprior.data.sources import build_instance_source
from robustprior.evaluation.metrics import mask_iou
from ...modeling.robust_sam import ImageFeatures, RobustSAM
from .samples import SamplePreparer

CURVE_LOG = "curve.csv"
CURVE_PLOT = "curve.png"
CURVE_COLUMNS = ("iteration", "robust_degrade", "sam_degrade", "robust_clear", "sam_clear", "gain_degrade",
                 "gain_degrade_low", "gain_degrade_high", "gain_clear", "gain_clear_low", "gain_clear_high")


@dataclass
class _HeldOutImage:
    """One held-out image: its instances and, per kind, the encoded degraded copy."""

    masks: np.ndarray  # K x H x W bool
    ignore: np.ndarray | None  # H x W bool
    points: torch.Tensor  # K x 1 x 2, model input frame
    features: dict[str, ImageFeatures]  # kind -> 1 x ... encoder outputs
    input_size: tuple[int, int]


def paired_interval(differences: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of paired differences and its two-sided t interval: ``(mean, low, high)``; with fewer than
    two values the interval is the mean itself."""
    values = np.asarray(differences, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


class LearningCurve:
    """Held-out point IoU of both decoder paths of ``model`` on the images of one data section.

    ``spec``: the config's ``curve`` section (``data``: a data section of held-out images; ``kinds``:
    ``all`` or a list including ``identity``; ``seed``, ``severity``, ``reference_size``: the
    evaluation's degradation protocol; ``min_area``: smallest instance evaluated)."""

    def __init__(self, model: RobustSAM, spec: Mapping[str, Any], progress: bool = False) -> None:
        self.model = model
        kinds = DEGRADATIONS if spec["kinds"] == "all" else tuple(spec["kinds"])
        unknown = sorted(set(kinds) - set(DEGRADATIONS))
        if unknown:
            raise ValueError(f"curve.kinds: unknown degradation kind(s) {unknown}; kinds: {', '.join(DEGRADATIONS)}")
        if CLEAR_KIND not in kinds or len(kinds) < 2:
            raise ValueError(f"curve.kinds must include {CLEAR_KIND} and at least one degradation, got {list(kinds)}")
        self.kinds = tuple(kinds)
        self.preparer = SamplePreparer(model)
        source = build_instance_source(spec["data"], None, section="curve.data", progress=progress)
        self.images: list[_HeldOutImage] = []
        for index in range(len(source)):
            record = source[index]
            areas = record.masks.reshape(len(record.masks), -1).sum(axis=1)
            masks = record.masks[areas >= spec["min_area"]]
            if not len(masks):
                continue
            size = masks.shape[1:]
            points = np.stack([center_point(mask) for mask in masks]).astype(np.float32)
            points = torch.as_tensor(self.preparer.transform.apply_coords(points, size))[:, None, :]
            features = {}
            for kind in self.kinds:
                image = degrade(record.image, kind, degradation_seed(spec["seed"], record.name, kind),
                                spec["severity"], spec["reference_size"])
                features[kind] = self._encode(image)
            input_size = self.preparer.transform.get_preprocess_shape(size[0], size[1], model.image_size)
            self.images.append(_HeldOutImage(masks.astype(bool), record.ignore, points, features, input_size))
        if not self.images:
            raise ValueError(f"curve.data has no instance with at least {spec['min_area']} pixels")
        self._sam_scores: dict[str, np.ndarray] | None = None

    @torch.no_grad()
    def _encode(self, image: np.ndarray) -> ImageFeatures:
        tensor = self.preparer.image_tensor(image)[None].to(self.model.device)
        features = self.model.encode_image(tensor)
        return ImageFeatures(features.embedding.cpu(), features.complementary.cpu())

    @property
    def instance_count(self) -> int:
        return sum(len(image.masks) for image in self.images)

    @torch.no_grad()
    def scores(self, path: str) -> dict[str, np.ndarray]:
        """``{kind: per-image mean IoU (N,)}`` of decoder path ``path`` (``robust`` or ``sam``), in [0, 1]."""
        was_training = self.model.training
        self.model.eval()
        device = self.model.device
        per_kind: dict[str, list[float]] = {kind: [] for kind in self.kinds}
        try:
            for image in self.images:
                points = image.points.to(device)
                labels = torch.ones(points.shape[:2], dtype=torch.int, device=device)
                sparse, dense = self.model.encode_prompts(points=(points, labels))
                for kind in self.kinds:
                    output = self.model.decode(image.features[kind].to(device), sparse, dense,
                                               multimask_output=False, path=path)
                    logits = self.model.postprocess_masks(output.mask_logits, image.input_size, image.masks.shape[1:])
                    predicted = (logits[:, 0] > self.model.mask_threshold).cpu().numpy()
                    per_kind[kind].append(float(np.mean(mask_iou(predicted, image.masks, ignore=image.ignore))))
        finally:
            self.model.train(was_training)
        return {kind: np.asarray(values) for kind, values in per_kind.items()}

    @torch.no_grad()
    def ceiling(self) -> dict[str, float]:
        """What restoring each decoder input can give at most (issue item "measure the ceiling").

        SAM's frozen decoder on every degraded copy, per prompt, with one of its two per-prompt inputs taken
        from the CLEAR image's decoder pass: the mask feature (the upscaled image tokens the classifiers
        read: what AMFG and the fusion refine) or the output tokens (what AOTG refines). Returns Degrade
        point IoU in percent for ``sam`` (nothing restored), ``clear_mask_feature``, ``clear_tokens`` and
        ``both`` (= the clear image's masks scored against the same instances)."""
        was_training = self.model.training
        self.model.eval()
        device = self.model.device
        decoder = self.model.mask_decoder
        scores: dict[str, list[float]] = {name: [] for name in ("sam", "clear_mask_feature", "clear_tokens", "both")}

        def classify(tokens: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
            classifier = decoder.output_hypernetworks_mlps[0](tokens[:, 0])  # single-mask token: P x D/8
            return torch.einsum("pc,pchw->phw", classifier, feature)[:, None]

        try:
            for image in self.images:
                points = image.points.to(device)
                labels = torch.ones(points.shape[:2], dtype=torch.int, device=device)
                sparse, dense = self.model.encode_prompts(points=(points, labels))
                passes = {}
                for kind in self.kinds:
                    out = self.model.run_transformer(image.features[kind].to(device), sparse, dense, path="sam")
                    passes[kind] = (out.mask_tokens, self.model.upscale(out.image_tokens).contiguous())
                clear_tokens, clear_feature = passes[CLEAR_KIND]
                for kind in self.kinds:
                    if kind == CLEAR_KIND:
                        continue
                    tokens, feature = passes[kind]
                    variants = {"sam": (tokens, feature), "clear_mask_feature": (tokens, clear_feature),
                                "clear_tokens": (clear_tokens, feature), "both": (clear_tokens, clear_feature)}
                    for name, (token_input, feature_input) in variants.items():
                        logits = self.model.postprocess_masks(classify(token_input, feature_input), image.input_size,
                                                              image.masks.shape[1:])
                        predicted = (logits[:, 0] > self.model.mask_threshold).cpu().numpy()
                        scores[name].append(float(np.mean(mask_iou(predicted, image.masks, ignore=image.ignore))))
        finally:
            self.model.train(was_training)
        return {name: round(100 * float(np.mean(values)), 3) for name, values in scores.items()}

    def measure(self, iteration: int) -> dict[str, float | int]:
        """One curve point (a :data:`CURVE_COLUMNS` row, IoU in percent)."""
        if self._sam_scores is None:  # SAM's path is frozen: measured once
            self._sam_scores = self.scores("sam")
        robust = self.scores("robust")
        row: dict[str, float | int] = {"iteration": iteration}
        per_image: dict[str, dict[str, np.ndarray]] = {}
        for path, scores in (("robust", robust), ("sam", self._sam_scores)):
            degraded = np.mean([scores[kind] for kind in self.kinds if kind != CLEAR_KIND], axis=0)
            per_image[path] = {"degrade": degraded, "clear": scores[CLEAR_KIND]}
            row[f"{path}_degrade"] = round(100 * float(degraded.mean()), 3)
            row[f"{path}_clear"] = round(100 * float(scores[CLEAR_KIND].mean()), 3)
        for part in ("degrade", "clear"):
            mean, low, high = paired_interval(100 * (per_image["robust"][part] - per_image["sam"][part]))
            row.update({f"gain_{part}": round(mean, 3), f"gain_{part}_low": round(low, 3),
                        f"gain_{part}_high": round(high, 3)})
        return row


def plot_curve(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "",
               stages: Mapping[int, str] | None = None) -> Path:
    """Draw the curve (robust and SAM IoU; robust minus SAM with its 95 % interval) into a PNG;
    ``stages``: ``{iteration: label}`` of schedule boundaries, drawn as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = {column: np.asarray([float(row[column]) for row in rows]) for column in CURVE_COLUMNS}
    steps = values["iteration"]
    figure, (absolute, gain) = plt.subplots(1, 2, figsize=(11, 4))
    for part, color in (("degrade", "tab:red"), ("clear", "tab:blue")):
        absolute.plot(steps, values[f"robust_{part}"], "-o", color=color, markersize=3, label=f"RobustSAM {part}")
        absolute.plot(steps, values[f"sam_{part}"], "--", color=color, label=f"SAM {part}")
        gain.plot(steps, values[f"gain_{part}"], "-o", color=color, markersize=3, label=f"{part}: robust - SAM")
        gain.fill_between(steps, values[f"gain_{part}_low"], values[f"gain_{part}_high"], color=color, alpha=0.15)
    gain.axhline(0.0, color="black", linewidth=0.8)
    for iteration, label in (stages or {}).items():
        for axis in (absolute, gain):
            axis.axvline(iteration, color="grey", linestyle=":", linewidth=1)
        gain.annotate(label, (iteration, 1), xycoords=("data", "axes fraction"), fontsize=7, color="grey",
                      xytext=(2, -10), textcoords="offset points")
    absolute.set(xlabel="iteration", ylabel="held-out point IoU (%)", title="IoU")
    gain.set(xlabel="iteration", ylabel="IoU points", title="robust minus SAM (95 % interval over images)")
    absolute.legend(fontsize=8)
    gain.legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial.png")
    figure.savefig(partial, dpi=100)
    plt.close(figure)
    partial.replace(path)
    return path
