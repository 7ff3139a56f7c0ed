"""Automatic-mask-generator settings stored with a model: their names, SAM's defaults, validation, and
their safetensors metadata entry (key :data:`METADATA_KEY`, JSON ``{"sam": {...}, "robust": {...}}``).

:func:`robustprior.load.load_model` reads them from a checkpoint; how they are measured and chosen
is :mod:`robustprior.evaluation.amg_settings`.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

METADATA_KEY = "amg_settings"
SETTING_NAMES: tuple[str, ...] = (
    "points_per_side", "pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "min_mask_region_area",
)
SAM_DEFAULTS: dict[str, Any] = {
    "points_per_side": 32, "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95, "box_nms_thresh": 0.7,
    "min_mask_region_area": 0,
}
"""segment-anything's own ``SamAutomaticMaskGenerator`` defaults: used for models without settings."""


def validate_settings(settings: Mapping[str, Any], where: str = "automatic-mask settings") -> dict[str, Any]:
    """``settings`` completed by :data:`SAM_DEFAULTS`; an unknown key or an out-of-range value is a ``ValueError``."""
    unknown = set(settings) - set(SETTING_NAMES)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: {list(SETTING_NAMES)}")
    completed = {**SAM_DEFAULTS, **settings}
    if not (isinstance(completed["points_per_side"], int) and completed["points_per_side"] >= 1):
        raise ValueError(f"{where}: points_per_side must be a positive integer, got {completed['points_per_side']!r}")
    if not (isinstance(completed["min_mask_region_area"], int) and completed["min_mask_region_area"] >= 0):
        raise ValueError(f"{where}: min_mask_region_area must be a non-negative integer, "
                         f"got {completed['min_mask_region_area']!r}")
    for name in ("stability_score_thresh", "box_nms_thresh"):
        if not 0.0 <= float(completed[name]) <= 1.0:
            raise ValueError(f"{where}: {name} must lie in [0, 1], got {completed[name]!r}")
    completed["pred_iou_thresh"] = float(completed["pred_iou_thresh"])
    completed["stability_score_thresh"] = float(completed["stability_score_thresh"])
    completed["box_nms_thresh"] = float(completed["box_nms_thresh"])
    return completed


def settings_from_metadata(metadata: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The per-decoder-path settings stored in a checkpoint's metadata (``{}`` when there are none)."""
    if METADATA_KEY not in metadata:
        return {}
    try:
        stored = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise ValueError(f"the checkpoint's {METADATA_KEY} metadata is not JSON: {error}") from error
    if not isinstance(stored, dict) or not set(stored) <= {"sam", "robust"}:
        raise ValueError(f"the checkpoint's {METADATA_KEY} metadata must map 'sam' / 'robust' to settings")
    return {path: validate_settings(values, f"{METADATA_KEY}[{path!r}]") for path, values in stored.items()}


def settings_metadata(per_path: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """The metadata entry that stores ``{"sam": settings, "robust": settings}`` (validated)."""
    checked = {path: {name: validate_settings(values)[name] for name in SETTING_NAMES} for path, values in per_path.items()}
    if not set(checked) <= {"sam", "robust"}:
        raise ValueError(f"settings are stored per decoder path ('sam', 'robust'), got {sorted(checked)}")
    return {METADATA_KEY: json.dumps(checked, sort_keys=True)}


def describe_thresholds(settings: Mapping[str, Any]) -> str:
    """``points_per_side=16, pred_iou_thresh=0.5, ...`` for warnings and reports."""
    return ", ".join(f"{name}={settings[name]}" for name in SETTING_NAMES if name in settings)
