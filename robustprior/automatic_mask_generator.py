"""Automatic mask generation over a point grid, for RobustSAM and plain SAM alike.

This is ``segment_anything.SamAutomaticMaskGenerator`` (point grid, batched prompts, predicted-IoU
and stability filters, box NMS, optional crops and small-region removal) driven by a
:class:`RobustSamPredictor`, so each batch of ``points_per_batch`` prompts is one decoder forward.
"""
from __future__ import annotations

from typing import Any

from segment_anything import SamAutomaticMaskGenerator

from .modeling.robust_sam import DecoderPath, RobustSam
from .predictor import RobustSamPredictor, as_rgb_uint8


class RobustAutomaticMaskGenerator(SamAutomaticMaskGenerator):
    """``SamAutomaticMaskGenerator`` on a :class:`RobustSam`; ``path`` picks RobustSAM or SAM.

    Keyword arguments are SAM's (``points_per_side=32``, ``points_per_batch=64``,
    ``pred_iou_thresh=0.88``, ``stability_score_thresh=0.95``, ``box_nms_thresh=0.7``,
    ``min_mask_region_area=0``, ``output_mode="binary_mask"``, ...).
    """

    def __init__(self, model: RobustSam, path: DecoderPath = "robust", **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.predictor = RobustSamPredictor(model, path=path)

    def generate(self, image) -> list[dict[str, Any]]:
        """Masks for an ``H x W x 3`` uint8 RGB image (grayscale / RGBA converted); see SAM's docs."""
        return super().generate(as_rgb_uint8(image))
