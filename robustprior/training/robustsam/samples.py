"""Turning dataset items into model-ready tensors: resize to the model frame, prompts, targets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from ...modeling.robust_sam import RobustSAM


@dataclass
class PromptBatch:
    """P prompts of one kind with their targets, in the model input frame.

    All prompts of a batch have the same shape (the prompt encoder needs it), so a mixed batch of
    items becomes one ``PromptBatch`` per prompt kind (:meth:`SamplePreparer.prompt_groups`).
    """

    point_coords: torch.Tensor | None  # P x N x 2
    point_labels: torch.Tensor | None  # P x N
    boxes: torch.Tensor | None  # P x 4
    targets: torch.Tensor  # P x 4h x 4w in {0, 1}, ground truth at the low-res mask resolution
    pixel_weights: torch.Tensor  # P x 4h x 4w, 0 on ignored and padded pixels
    image_index: torch.Tensor | None = None  # P long: which image of the batch each prompt belongs to
    multimask: bool = False  # ambiguous single points: scored by the best of the three multimask outputs
    kind: str = "points"

    def __len__(self) -> int:
        return self.targets.shape[0]

    def to(self, device: torch.device | str) -> "PromptBatch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PromptBatch(move(self.point_coords), move(self.point_labels), move(self.boxes),
                           move(self.targets), move(self.pixel_weights), move(self.image_index), self.multimask,
                           self.kind)


class SamplePreparer:
    """Resizes images, prompts and masks the way SAM's predictor does (long side to ``image_size``)."""

    def __init__(self, model: RobustSAM) -> None:
        self.image_size = model.image_size
        self.low_res = model.prompt_encoder.mask_input_size[0]
        self.transform = ResizeLongestSide(self.image_size)
        self.pixel_mean, self.pixel_std = model.pixel_mean.cpu(), model.pixel_std.cpu()

    def image_tensor(self, image: np.ndarray) -> torch.Tensor:
        """``H x W x 3`` uint8 -> normalised, padded ``3 x S x S`` (what ``RobustSAM.preprocess`` gives)."""
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

    def prompts(self, items: Sequence[dict[str, Any]], image_index: Sequence[int] | None = None) -> PromptBatch:
        """One batch of items whose prompts have one shape (all points of one count, or all boxes);
        ``image_index`` (default ``0..len-1``) says which encoded image each item's prompt belongs to."""
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
        if coords and boxes:
            raise ValueError("a PromptBatch holds one prompt kind; use prompt_groups for a mixed batch")
        as_tensor = lambda values, dtype: torch.as_tensor(np.stack(values), dtype=dtype) if values else None  # noqa: E731
        kinds = {item.get("prompt_kind", "box" if "box" in item else "points") for item in items}
        kind = kinds.pop() if len(kinds) == 1 else "points"
        index = torch.arange(len(items)) if image_index is None else torch.as_tensor(list(image_index), dtype=torch.long)
        return PromptBatch(as_tensor(coords, torch.float32), as_tensor(labels, torch.int64), as_tensor(boxes, torch.float32),
                           as_tensor(targets, torch.float32), as_tensor(weights, torch.float32), index,
                           multimask=kind == "single_point", kind=kind)

    def prompt_groups(self, items: Sequence[dict[str, Any]]) -> list[PromptBatch]:
        """The items' prompts as one :class:`PromptBatch` per prompt kind (in order of first
        appearance); each batch's ``image_index`` points back at the item's position."""
        by_kind: dict[tuple[str, int], list[int]] = {}
        for position, item in enumerate(items):
            kind = item.get("prompt_kind", "box" if "box" in item else "points")
            shape = len(item["point_coords"]) if "point_coords" in item else 0
            by_kind.setdefault((kind, shape), []).append(position)
        return [self.prompts([items[i] for i in positions], positions) for positions in by_kind.values()]
