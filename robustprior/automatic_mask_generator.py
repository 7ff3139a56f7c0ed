"""Automatic mask generation over a point grid, for RobustSAM and plain SAM alike.

This is ``segment_anything.SamAutomaticMaskGenerator`` (point grid, batched prompts, predicted-IoU
and stability filters, box NMS, optional crops and small-region removal) driven by a
:class:`RobustSamPredictor`, so each batch of ``points_per_batch`` prompts is one decoder forward.
``progress=True`` shows a bar over those batches (automatic masks on a CPU take minutes).
"""
from __future__ import annotations

import math
from typing import Any

from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.amg import generate_crop_boxes
from tqdm.auto import tqdm

from .modeling.robust_sam import DecoderPath, RobustSam
from .predictor import RobustSamPredictor, as_rgb_uint8


class RobustAutomaticMaskGenerator(SamAutomaticMaskGenerator):
    """``SamAutomaticMaskGenerator`` on a :class:`RobustSam`; ``path`` picks RobustSAM or SAM.

    Keyword arguments are SAM's (``points_per_side=32``, ``points_per_batch=64``,
    ``pred_iou_thresh=0.88``, ``stability_score_thresh=0.95``, ``box_nms_thresh=0.7``,
    ``min_mask_region_area=0``, ``output_mode="binary_mask"``, ...). Note that SAM's thresholds give
    the bundled tiny models no mask at all: their own settings are in
    ``robustprior.load.load_model(...)[1].generator_settings(path)``.
    """

    def __init__(self, model: RobustSam, path: DecoderPath = "robust", progress: bool = False, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.predictor = RobustSamPredictor(model, path=path)
        self.progress = progress
        self._bar: tqdm | None = None

    def generate(self, image) -> list[dict[str, Any]]:
        """Masks for an ``H x W x 3`` uint8 RGB image (grayscale / RGBA converted); see SAM's docs."""
        image = as_rgb_uint8(image)
        if not self.progress:
            return super().generate(image)
        crop_boxes, layers = generate_crop_boxes(image.shape[:2], self.crop_n_layers, self.crop_overlap_ratio)
        batches = sum(math.ceil(len(self.point_grids[layer]) / self.points_per_batch) for layer in layers)
        with tqdm(total=batches, desc=f"automatic masks ({self.predictor.path} path)", unit="batch",
                  leave=False) as self._bar:
            try:
                return super().generate(image)
            finally:
                self._bar = None

    def _process_batch(self, *args: Any, **kwargs: Any):
        data = super()._process_batch(*args, **kwargs)
        if self._bar is not None:
            self._bar.update()
        return data
