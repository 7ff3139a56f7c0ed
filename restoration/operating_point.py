"""Both prior rows at their own automatic-mask operating point, chosen on the recipe's degraded inputs.

The automatic mask generator keeps a mask when its predicted IoU exceeds ``pred_iou_thresh`` and its
stability score (the IoU of the mask thresholded at logit -1 and +1) reaches ``stability_score_thresh``.
One pair of thresholds for both decoder paths puts RobustSAM at SAM's operating point: its IoU
predictions come from SAM's head after a transformer pass with the robust tokens, and its robust mask
feature is layer-normalised per pixel, so its logits (and with them every stability score) live on
another scale than SAM's. The same threshold then means a different thing on each path.

The rule (``recipe.amg_operating_point: per_path``): for each path separately, the thresholds are
chosen by :func:`robustprior.evaluation.amg_settings.search_amg_settings`, the rule the bundled models'
stored settings come from, but on the recipe's own degraded **training** inputs at the recipe's image
size (the first :data:`CALIBRATION_IMAGES` training images with the generator's instance maps; never a
test image): every (predicted-IoU, stability) pair of the grid is applied to the unfiltered candidate
masks, scored against the true instances (a mask matches an object at IoU >= 0.5; F1 of precision and
recall), and the best F1 among the pairs that give every image a mask wins (ties: the stricter pair).
The point grid (``points_per_side``), box NMS and minimum region area stay the recipe's, the same for
both paths, so both rows get the same number of prompts and the same grey-level scale.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from restoration.control_priors import instance_map_path, instance_masks, read_instance_map
from restoration.paired_data import read_rgb
from robustprior.evaluation.amg_settings import PRED_IOU_GRID, STABILITY_GRID, SettingsScore, search_amg_settings

CALIBRATION_IMAGES = 8
OPERATING_POINTS: tuple[str, ...] = ("config", "per_path")
RULE = ("per decoder path, the (pred_iou_thresh, stability_score_thresh) pair with the best F1 at mask IoU >= 0.5 "
        "against the true instances, among the pairs that give every image a mask (ties: the stricter pair), on "
        "the recipe's first {count} degraded training images at the recipe's size "
        "(restoration.operating_point; points per side, box NMS and min area: the recipe's)")
PATHS = {"sam": "sam", "robustsam": "robust"}


def calibration_paths(train_lq_paths: Sequence[str | Path], count: int = CALIBRATION_IMAGES) -> list[str]:
    """The first ``count`` distinct training inputs (sorted by path): the calibration images."""
    paths = sorted(dict.fromkeys(str(path) for path in train_lq_paths))
    if not paths:
        raise ValueError("the operating point needs degraded training images, got none")
    missing = [path for path in paths[:count] if not instance_map_path(path).is_file()]
    if missing:
        raise ValueError(f"the per-path operating point needs the generator's instance maps (generated data); "
                         f"{missing[0]} has none: use recipe.amg_operating_point: config on real data")
    return paths[:count]


def choose_operating_points(prior_options: Mapping[str, Mapping[str, Any]], train_lq_paths: Sequence[str | Path],
                            count: int = CALIBRATION_IMAGES, progress: bool = False) -> dict[str, Any]:
    """The thresholds of each prior row (``prior_options``: ``{"sam": ..., "robustsam": ...}``, those rows'
    prior options) by the module's rule on the calibration images.

    Returns ``settings`` (``{row: {"pred_iou_thresh": ..., "stability_score_thresh": ...}}``), ``scores``
    (``{row: the chosen pair's SettingsScore as a dict}``), ``images`` (the calibration files) and ``rule``."""
    from robustprior.load import load_model

    paths = calibration_paths(train_lq_paths, count)
    images = [read_rgb(path) for path in paths]
    objects = [instance_masks(read_instance_map(instance_map_path(path))) for path in paths]
    settings: dict[str, dict[str, float]] = {}
    scores: dict[str, dict[str, Any]] = {}
    for row, options in prior_options.items():
        if row not in PATHS:
            raise ValueError(f"operating points are chosen for the sam and robustsam rows, got {row!r}")
        model, _ = load_model(options["checkpoint"], options.get("model_type"), decoder_path=PATHS[row])
        chosen, all_scores = search_amg_settings(
            model.eval(), PATHS[row], images, objects, points_per_side_grid=(int(options["points_per_side"]),),
            box_nms_thresh=float(options["box_nms_thresh"]), pred_iou_grid=PRED_IOU_GRID,
            stability_grid=STABILITY_GRID, progress=progress)
        settings[row] = {"pred_iou_thresh": chosen["pred_iou_thresh"],
                         "stability_score_thresh": chosen["stability_score_thresh"]}
        scores[row] = _score_of(all_scores, chosen).to_dict()
    return {"settings": settings, "scores": scores, "images": paths, "rule": RULE.format(count=len(paths))}


def _score_of(scores: Sequence[SettingsScore], chosen: Mapping[str, Any]) -> SettingsScore:
    return next(score for score in scores if score.pred_iou_thresh == chosen["pred_iou_thresh"]
                and score.stability_score_thresh == chosen["stability_score_thresh"])
