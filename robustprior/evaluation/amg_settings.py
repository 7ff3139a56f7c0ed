"""Automatic-mask-generator settings that give masks: stored with a model, measured on its own domain.

SAM's automatic mask generator keeps a mask only when its predicted IoU exceeds ``pred_iou_thresh``
(SAM: 0.88) and its stability score reaches ``stability_score_thresh`` (SAM: 0.95). Those values
fit SAM ViT-H on natural photos; the bundled tiny models never reach them, so with SAM's defaults
they return no mask at all. Each bundled model therefore carries its own settings, per decoder path,
in its safetensors metadata (key :data:`METADATA_KEY`, JSON ``{"sam": {...}, "robust": {...}}``)
and in its model card; :func:`robustprior.load.load_model` reads them and the priors and the
``robustprior segment`` command use them unless told otherwise.

How they are chosen (:func:`search_amg_settings`): on a handful of held-out generated scenes, the
generator runs ONCE per grid size with no filter at all (every point's three masks, their predicted
IoU and stability score); every threshold pair is then applied offline exactly as the generator
applies it (predicted-IoU filter, stability filter, box NMS by predicted IoU: identical to a run
with those thresholds, tested), and scored against the scenes' exact object masks: a kept mask
matches an object at IoU >= 0.5; precision = matched masks / kept masks, recall = matched objects /
objects, F1 their harmonic mean. Among the settings that give every scene at least one mask, the
best F1 wins; any setting within :data:`F1_TOLERANCE` of it on a coarser point grid wins instead
(cost grows with the square of ``points_per_side``), and remaining ties go to the stricter thresholds.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from segment_anything.utils.amg import MaskData, rle_to_mask
from torchvision.ops.boxes import batched_nms
from tqdm.auto import tqdm

from robustprior.io.amg_settings import (  # noqa: F401  (the stored settings; re-exported)
    METADATA_KEY,
    SAM_DEFAULTS,
    SETTING_NAMES,
    describe_thresholds,
    settings_from_metadata,
    settings_metadata,
    validate_settings,
)

MATCH_IOU = 0.5


# ----------------------------------------------------------------------------- measurement
@torch.no_grad()
def capture_candidates(generator, image: np.ndarray) -> MaskData:
    """Every mask the generator proposes for ``image`` before any filter (all points x 3 masks).

    ``generator`` is a :class:`robustprior.automatic_mask_generator.RobustSAMAutomaticMaskGenerator`;
    its thresholds are switched off for the call (predicted IoU 0, stability 0, box NMS 1.0, no
    small-region removal) and restored afterwards. Returns numpy ``MaskData`` with ``rles``,
    ``boxes`` (XYXY), ``iou_preds``, ``stability_score`` and ``points``.
    """
    saved = (generator.pred_iou_thresh, generator.stability_score_thresh, generator.box_nms_thresh)
    generator.pred_iou_thresh, generator.stability_score_thresh, generator.box_nms_thresh = 0.0, 0.0, 1.0
    try:
        return generator._generate_masks(image)
    finally:
        generator.pred_iou_thresh, generator.stability_score_thresh, generator.box_nms_thresh = saved


def apply_thresholds(candidates: MaskData, pred_iou_thresh: float, stability_score_thresh: float,
                     box_nms_thresh: float, min_mask_region_area: int = 0) -> list[np.ndarray]:
    """The H x W bool masks a generator with these thresholds keeps from ``candidates`` (one crop),
    in the generator's output order: its filters (``iou > t`` when ``t > 0``, ``stability >= s`` when
    ``s > 0``), box NMS ranked by predicted IoU, then small-region removal."""
    from segment_anything import SamAutomaticMaskGenerator

    iou = torch.as_tensor(candidates["iou_preds"])
    stability = torch.as_tensor(candidates["stability_score"])
    keep = torch.ones(len(iou), dtype=torch.bool)
    if pred_iou_thresh > 0.0:
        keep &= iou > pred_iou_thresh
    if stability_score_thresh > 0.0:
        keep &= stability >= stability_score_thresh
    index = torch.nonzero(keep).flatten()
    if len(index) == 0:
        return []
    boxes = torch.as_tensor(candidates["boxes"])[index].float()
    kept = index[batched_nms(boxes, iou[index], torch.zeros(len(index)), iou_threshold=box_nms_thresh)]
    data = MaskData(rles=[candidates["rles"][i] for i in kept.tolist()], boxes=torch.as_tensor(candidates["boxes"])[kept])
    if min_mask_region_area > 0:
        data = SamAutomaticMaskGenerator.postprocess_small_regions(data, min_mask_region_area, box_nms_thresh)
    return [rle_to_mask(rle) for rle in data["rles"]]


@dataclass(frozen=True)
class SettingsScore:
    """How one setting does over the measured scenes (``counts``: masks kept per scene)."""

    points_per_side: int
    pred_iou_thresh: float
    stability_score_thresh: float
    counts: tuple[int, ...]
    precision: float
    recall: float
    f1: float
    mean_best_iou: float  # mean over objects of the best IoU of any kept mask

    @property
    def mean_masks(self) -> float:
        return float(np.mean(self.counts))

    @property
    def min_masks(self) -> int:
        return int(min(self.counts))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean_masks": self.mean_masks, "min_masks": self.min_masks}


def iou_matrix(masks: Sequence[np.ndarray], objects: np.ndarray) -> np.ndarray:
    """``M x K`` IoU of ``M`` H x W bool masks against ``K x H x W`` bool object masks."""
    if len(masks) == 0 or len(objects) == 0:
        return np.zeros((len(masks), len(objects)))
    predicted = np.stack(masks).reshape(len(masks), -1).astype(np.float32)
    truth = objects.reshape(len(objects), -1).astype(np.float32)
    intersection = predicted @ truth.T
    union = predicted.sum(1)[:, None] + truth.sum(1)[None, :] - intersection
    return np.where(union > 0, intersection / np.maximum(union, 1.0), 0.0)


def score_setting(kept_per_scene: Sequence[Sequence[np.ndarray]], objects_per_scene: Sequence[np.ndarray],
                  points_per_side: int, pred_iou_thresh: float, stability_score_thresh: float) -> SettingsScore:
    """Precision / recall / F1 at IoU >= 0.5 and mean best IoU per object (module docstring)."""
    matched_masks = matched_objects = total_masks = total_objects = 0
    best_ious: list[float] = []
    for kept, objects in zip(kept_per_scene, objects_per_scene):
        ious = iou_matrix(kept, objects)
        total_masks += len(kept)
        total_objects += len(objects)
        if len(kept):
            matched_masks += int((ious.max(axis=1) >= MATCH_IOU).sum()) if len(objects) else 0
        if len(objects):
            best = ious.max(axis=0) if len(kept) else np.zeros(len(objects))
            matched_objects += int((best >= MATCH_IOU).sum())
            best_ious.extend(best.tolist())
    precision = matched_masks / total_masks if total_masks else 0.0
    recall = matched_objects / total_objects if total_objects else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return SettingsScore(points_per_side, pred_iou_thresh, stability_score_thresh,
                         tuple(len(kept) for kept in kept_per_scene),
                         precision, recall, f1, float(np.mean(best_ious)) if best_ious else 0.0)


F1_TOLERANCE = 0.01


def choose_setting(scores: Sequence[SettingsScore]) -> SettingsScore:
    """Among settings that give every scene at least one mask: the coarsest point grid with an F1
    within :data:`F1_TOLERANCE` of the best, its best F1, then the stricter thresholds."""
    usable = [score for score in scores if score.min_masks > 0]
    if not usable:
        raise ValueError("no setting of the grid gives every scene a mask: extend the grid downwards")
    best_f1 = max(score.f1 for score in usable)
    grid = min(score.points_per_side for score in usable if score.f1 >= best_f1 - F1_TOLERANCE)
    return max((score for score in usable if score.points_per_side == grid),
               key=lambda s: (round(s.f1, 9), s.pred_iou_thresh, s.stability_score_thresh))


PRED_IOU_GRID: tuple[float, ...] = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9)
STABILITY_GRID: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.95)


POINTS_PER_SIDE_GRID: tuple[int, ...] = (8, 16)


def search_amg_settings(
    model,
    path: str,
    images: Sequence[np.ndarray],
    objects: Sequence[np.ndarray],
    points_per_side_grid: Sequence[int] = POINTS_PER_SIDE_GRID,
    box_nms_thresh: float = 0.7,
    pred_iou_grid: Sequence[float] = PRED_IOU_GRID,
    stability_grid: Sequence[float] = STABILITY_GRID,
    progress: bool = True,
) -> tuple[dict[str, Any], list[SettingsScore]]:
    """Measure the settings grid for ``model`` on decoder ``path`` over ``images`` with their
    ``K x H x W`` bool ``objects``; returns the chosen settings and every setting's score."""
    from robustprior.automatic_mask_generator import RobustSAMAutomaticMaskGenerator

    scores = []
    for points_per_side in points_per_side_grid:
        generator = RobustSAMAutomaticMaskGenerator(model, path=path, points_per_side=points_per_side)
        candidates = [capture_candidates(generator, image) for image in tqdm(
            images, desc=f"candidate masks ({path} path, {points_per_side}x{points_per_side} points)",
            disable=not progress)]
        for pred_iou_thresh in pred_iou_grid:
            for stability_score_thresh in stability_grid:
                kept = [apply_thresholds(c, pred_iou_thresh, stability_score_thresh, box_nms_thresh) for c in candidates]
                scores.append(score_setting(kept, objects, points_per_side, pred_iou_thresh, stability_score_thresh))
    best = choose_setting(scores)
    settings = validate_settings({"points_per_side": best.points_per_side, "pred_iou_thresh": best.pred_iou_thresh,
                                  "stability_score_thresh": best.stability_score_thresh,
                                  "box_nms_thresh": box_nms_thresh, "min_mask_region_area": 0})
    return settings, scores


# ----------------------------------------------------------------------------- the bundled models' own domain
MEASURE_SEED = 3000  # a seed stream no bundled model was trained or evaluated on (0, 1, 1000, 2000 are)


def measure_on_scenes(model, paths: Sequence[str] = ("sam", "robust"), n_scenes: int = 8, seed: int = MEASURE_SEED,
                      points_per_side_grid: Sequence[int] = POINTS_PER_SIDE_GRID, progress: bool = True
                      ) -> tuple[dict[str, dict[str, Any]], dict[str, list[SettingsScore]]]:
    """:func:`search_amg_settings` for each decoder path on ``n_scenes`` generated scenes
    ``generate_scene(derive_seed(seed, i))`` (default :class:`~robustprior.data.scenes.SceneConfig`, 256 px);
    returns the chosen settings and all scores, per path."""
    from robustprior.data.scenes import TextureBank, derive_seed, generate_scene

    textures = TextureBank.load(None)
    scenes = [generate_scene(derive_seed(seed, index), textures=textures) for index in range(n_scenes)]
    images, objects = [scene.image for scene in scenes], [scene.masks for scene in scenes]
    chosen, scores = {}, {}
    for path in paths:
        chosen[path], scores[path] = search_amg_settings(model, path, images, objects,
                                                         points_per_side_grid=points_per_side_grid, progress=progress)
    return chosen, scores


def _score_for(scores: Sequence[SettingsScore], settings: Mapping[str, Any]) -> SettingsScore | None:
    return next((s for s in scores if s.points_per_side == settings["points_per_side"]
                 and s.pred_iou_thresh == settings["pred_iou_thresh"]
                 and s.stability_score_thresh == settings["stability_score_thresh"]), None)


def card_section(chosen: Mapping[str, Mapping[str, Any]], scores: Mapping[str, Sequence[SettingsScore]],
                 n_scenes: int, seed: int = MEASURE_SEED, command: str | None = None) -> str:
    """The model card's ``## Automatic mask settings`` section (Markdown) for :func:`measure_on_scenes`'s result."""
    labels = {"sam": "SAM path", "robust": "RobustSAM path"}
    lines = [
        "## Automatic mask settings",
        "",
        f"Stored in the weights' metadata (`{METADATA_KEY}`) and used by `SAMPrior` / `RobustSAMPrior.from_pretrained` "
        "and `robustprior segment` unless told otherwise. SAM's own defaults (predicted IoU 0.88, stability 0.95) "
        "give this model (almost) no mask (last column). Chosen on "
        f"{n_scenes} held-out generated scenes (`generate_scene(derive_seed({seed}, i))`, 256 px) by "
        "`robustprior.evaluation.amg_settings.measure_on_scenes`: best F1 at mask IoU >= 0.5 against the scenes' objects "
        "among the settings that give every scene a mask, on the coarsest point grid "
        f"({', '.join(str(n) for n in sorted({s.points_per_side for path_scores in scores.values() for s in path_scores}))} "
        f"points per side tried) within {F1_TOLERANCE} of the best F1 (the photo background has no ground truth, so "
        "precision counts its masks as misses).",
        "",
        "| path | points per side | pred IoU thresh | stability thresh | box NMS | min area | masks per scene "
        "(min-max) | precision | recall | F1 | SAM defaults: masks per scene |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path, settings in chosen.items():
        score = _score_for(scores[path], settings)
        sam_default = _score_for(scores[path], {**settings, "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95})
        lines.append(
            f"| {labels[path]} | {settings['points_per_side']} | {settings['pred_iou_thresh']} | "
            f"{settings['stability_score_thresh']} | {settings['box_nms_thresh']} | {settings['min_mask_region_area']} | "
            f"{score.mean_masks:.1f} ({min(score.counts)}-{max(score.counts)}) | {score.precision:.2f} | "
            f"{score.recall:.2f} | {score.f1:.2f} | "
            + ("-" if sam_default is None else f"{sam_default.mean_masks:.1f}") + " |")
    if command:
        lines += ["", f"Reproduce: `{command}`."]
    return "\n".join(lines) + "\n"


def replace_card_section(card: str, section: str) -> str:
    """``card`` (Markdown) with the ``## ...`` section that ``section`` starts with replaced by it
    (appended when the card has no such section)."""
    heading = section.split("\n", 1)[0]
    if not heading.startswith("## "):
        raise ValueError(f"a card section starts with a '## ' heading, got {heading!r}")
    if f"\n{heading}\n" not in f"\n{card}":
        return card.rstrip("\n") + "\n\n" + section
    before, rest = f"\n{card}".split(f"\n{heading}\n", 1)
    following = rest.find("\n## ")
    after = "" if following < 0 else rest[following + 1:]
    return before[1:] + ("\n" if before[1:] else "") + section + ("\n" + after if after else "")


def measure_for_bundle(model, paths: Sequence[str], n_scenes: int = 8, command: str | None = None,
                       progress: bool = True) -> tuple[dict[str, str], str]:
    """What an exporter of a bundled model needs: the metadata entry of the settings measured on
    generated scenes for ``paths`` (``("sam",)`` for a SAM-only model such as SAM-tiny,
    ``("sam", "robust")`` for RobustSAM-tiny) and the model card's section."""
    chosen, scores = measure_on_scenes(model, paths, n_scenes, progress=progress)
    return settings_metadata(chosen), card_section(chosen, scores, n_scenes, command=command)
