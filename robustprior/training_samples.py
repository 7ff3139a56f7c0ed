"""Turning dataset items into model-ready tensors: resize to the model frame, prompts, targets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from .modeling.robust_sam import RobustSam


@dataclass
class PromptBatch:
    """Prompts and targets for B items (one prompt each), in the model input frame."""

    point_coords: torch.Tensor | None  # B x N x 2
    point_labels: torch.Tensor | None  # B x N
    boxes: torch.Tensor | None  # B x 4
    targets: torch.Tensor  # B x 4h x 4w in {0, 1}, ground truth at the low-res mask resolution
    pixel_weights: torch.Tensor  # B x 4h x 4w, 0 on ignored and padded pixels

    def to(self, device: torch.device | str) -> "PromptBatch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PromptBatch(move(self.point_coords), move(self.point_labels), move(self.boxes),
                           move(self.targets), move(self.pixel_weights))


class SamplePreparer:
    """Resizes images, prompts and masks the way SAM's predictor does (long side to ``image_size``)."""

    def __init__(self, model: RobustSam) -> None:
        self.image_size = model.image_size
        self.low_res = model.prompt_encoder.mask_input_size[0]
        self.transform = ResizeLongestSide(self.image_size)
        self.pixel_mean, self.pixel_std = model.pixel_mean.cpu(), model.pixel_std.cpu()

    def image_tensor(self, image: np.ndarray) -> torch.Tensor:
        """``H x W x 3`` uint8 -> normalised, padded ``3 x S x S`` (what ``RobustSam.preprocess`` gives)."""
        resized = torch.as_tensor(self.transform.apply_image(image)).permute(2, 0, 1).float()
        normalised = (resized - self.pixel_mean) / self.pixel_std
        h, w = normalised.shape[-2:]
        return torch.nn.functional.pad(normalised, (0, self.image_size - w, 0, self.image_size - h))

    def _low_res(self, mask: np.ndarray) -> np.ndarray:
        """``H x W`` {0,1} -> fraction covered per low-res pixel (``4h x 4w``), padding included."""
        h, w = self.transform.get_preprocess_shape(mask.shape[0], mask.shape[1], self.image_size)
        resized = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        padded = np.zeros((self.image_size, self.image_size), np.float32)
        padded[:h, :w] = resized
        return cv2.resize(padded, (self.low_res, self.low_res), interpolation=cv2.INTER_AREA)

    def prompts(self, items: Sequence[dict[str, Any]]) -> PromptBatch:
        coords, labels, boxes, targets, weights = [], [], [], [], []
        for item in items:
            size = item["mask"].shape
            if "point_coords" in item:
                coords.append(self.transform.apply_coords(np.asarray(item["point_coords"], np.float32), size))
                labels.append(np.asarray(item["point_labels"]))
            else:
                boxes.append(self.transform.apply_boxes(np.asarray(item["box"], np.float32)[None], size)[0])
            targets.append(self._low_res(item["mask"]) >= 0.5)
            valid = np.ones(size, np.float32)
            if item.get("ignore") is not None:
                valid[item["ignore"]] = 0
            weights.append(self._low_res(valid) >= 0.5)
        as_tensor = lambda values, dtype: torch.as_tensor(np.stack(values), dtype=dtype) if values else None  # noqa: E731
        return PromptBatch(as_tensor(coords, torch.float32), as_tensor(labels, torch.int64), as_tensor(boxes, torch.float32),
                           as_tensor(targets, torch.float32), as_tensor(weights, torch.float32))
