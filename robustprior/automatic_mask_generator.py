"""Automatic mask generation over a point grid, for RobustSAM and plain SAM alike.

This is ``segment_anything.SamAutomaticMaskGenerator`` (point grid, batched prompts, predicted-IoU
and stability filters, box NMS, optional crops and small-region removal) driven by a
:class:`RobustSAMPredictor`, so each batch of ``points_per_batch`` prompts is one decoder forward.

Nothing is computed that the generator discards: SAM's generator draws and upsamples the three
masks of every grid point and only then drops those whose predicted IoU is below
``pred_iou_thresh``. The predicted IoU comes from the decoder's transformer alone
(:meth:`RobustSAM.run_transformer`), so here the masks (for RobustSAM the expensive per-prompt robust
mask feature) are drawn and upsampled only for the points with at least one mask above the
threshold, and only those masks are upsampled. Every prompt is decoded on its own, so the records
are the same as SAM's generator gives.

``progress=True`` shows a bar over those batches (automatic masks on a CPU take minutes).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.amg import (MaskData, batched_mask_to_box, calculate_stability_score,
                                        generate_crop_boxes, is_box_near_crop_edge, mask_to_rle_pytorch,
                                        uncrop_masks)
from tqdm.auto import tqdm

from .modeling.robust_sam import DecoderPath, RobustSAM
from .predictor import RobustSAMPredictor, as_rgb_uint8


class RobustSAMAutomaticMaskGenerator(SamAutomaticMaskGenerator):
    """``SamAutomaticMaskGenerator`` on a :class:`RobustSAM`; ``path`` picks RobustSAM or SAM.

    Keyword arguments are SAM's (``points_per_side=32``, ``points_per_batch=64``,
    ``pred_iou_thresh=0.88``, ``stability_score_thresh=0.95``, ``box_nms_thresh=0.7``,
    ``min_mask_region_area=0``, ``output_mode="binary_mask"``, ...). Note that SAM's thresholds give
    the bundled tiny models no mask at all: their own settings are in
    ``robustprior.load.load_model(...)[1].generator_settings(path)``.
    """

    def __init__(self, model: RobustSAM, path: DecoderPath = "robust", progress: bool = False, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.predictor = RobustSAMPredictor(model, path=path)
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

    @torch.no_grad()
    def _process_batch(self, points: np.ndarray, im_size: tuple[int, ...], crop_box: list[int],
                       orig_size: tuple[int, ...]) -> MaskData:
        """SAM's batch step (multimask output of each point, predicted-IoU and stability filters,
        boxes, crop-edge filter, RLE), with masks drawn only where the predicted IoU passes."""
        predictor, model = self.predictor, self.predictor.model
        orig_h, orig_w = orig_size
        coords = torch.as_tensor(predictor.transform.apply_coords(points, im_size), dtype=torch.float,
                                 device=predictor.device)[:, None, :]
        labels = torch.ones(coords.shape[:2], dtype=torch.int, device=coords.device)
        sparse, dense = model.encode_prompts(points=(coords, labels))
        transformer = model.run_transformer(predictor.features, sparse, dense, path=predictor.path)
        iou_preds = transformer.iou_predictions[:, 1:]  # the three multimask outputs, P x 3
        keep = iou_preds > self.pred_iou_thresh if self.pred_iou_thresh > 0.0 else torch.ones_like(iou_preds, dtype=torch.bool)
        drawn = keep.any(dim=1)  # points with at least one mask that survives the IoU filter
        point_index, mask_index = keep[drawn].nonzero(as_tuple=True)
        data = MaskData(iou_preds=iou_preds[drawn][point_index, mask_index],
                        points=torch.as_tensor(points)[drawn.cpu()][point_index.cpu()])
        if len(point_index):
            if predictor.path == "robust" and predictor.image_part is None:
                predictor.image_part = model.robust_image_part(predictor.features)
            low_res = model.draw_masks(predictor.features, transformer.select(drawn),
                                       image_part=predictor.image_part).mask_logits[:, 1:]
            low_res = low_res[point_index, mask_index][:, None]
            masks = model.postprocess_masks(low_res, predictor.input_size, predictor.original_size)[:, 0]
        else:
            masks = torch.zeros((0, *predictor.original_size), device=predictor.device)
        data["masks"] = masks

        # From here on exactly SAM's steps.
        data["stability_score"] = calculate_stability_score(data["masks"], model.mask_threshold,
                                                            self.stability_score_offset)
        if self.stability_score_thresh > 0.0:
            data.filter(data["stability_score"] >= self.stability_score_thresh)
        data["masks"] = data["masks"] > model.mask_threshold
        data["boxes"] = batched_mask_to_box(data["masks"])
        keep_mask = ~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
        if not torch.all(keep_mask):
            data.filter(keep_mask)
        data["masks"] = uncrop_masks(data["masks"], crop_box, orig_h, orig_w)
        data["rles"] = mask_to_rle_pytorch(data["masks"])
        del data["masks"]
        if self._bar is not None:
            self._bar.update()
        return data


RobustAutomaticMaskGenerator = RobustSAMAutomaticMaskGenerator  # the name before 0.2; kept for one release
