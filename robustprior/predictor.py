"""``RobustSAMPredictor``: the ``segment_anything.SamPredictor`` interface for RobustSAM.

Set an image once (the encoder runs once), then ask for masks with any number of prompts.
``predict_torch`` decodes N prompts for the image in ONE batched forward. ``path="sam"`` gives the
plain-SAM baseline on the same weights (SAM's own tokens and classifiers); ``path="robust"`` (the
default) is RobustSAM. ``return_features=True`` also returns the latent priors.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from .modeling.robust_sam import DecoderPath, ImageFeatures, RobustSAM

VALID_POINT_LABELS = (0, 1)


@dataclass
class PromptFeatures:
    """Latent priors for N prompts on one image."""

    mask_feature: torch.Tensor  # N x D/8 x 4h x 4w: robust mask feature (robust path) / SAM's upscaled embedding
    tokens: torch.Tensor  # N x T x D: robust output tokens (robust path) / SAM's mask tokens after the transformer
    image_embedding: torch.Tensor  # 1 x D x h x w: the encoder's final embedding


def as_rgb_uint8(image: np.ndarray, image_format: str = "RGB") -> np.ndarray:
    """Validate a user image and return it as ``H x W x 3`` uint8 RGB.

    Grayscale (``H x W`` or ``H x W x 1``) is replicated to three channels and RGBA loses its alpha;
    anything that is not uint8 (16-bit, float), empty or of another shape is a ``ValueError``.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        hint = " (16-bit image: convert to 8 bits first, e.g. (image >> 8).astype(np.uint8))" if image.dtype == np.uint16 else ""
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}{hint}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an H x W x 3 RGB image (grayscale and RGBA are converted), got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"the image is empty (shape {image.shape})")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    if image_format not in ("RGB", "BGR"):
        raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    if image_format == "BGR":
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


def check_point_prompt(coords: np.ndarray, labels: np.ndarray | None, image_size: tuple[int, int]) -> None:
    """``ValueError`` naming the problem unless ``coords`` is a non-empty N x 2 array of finite (x, y)
    pixels inside an ``image_size`` = (H, W) image and ``labels`` holds N values in {0, 1}."""
    coords = np.asarray(coords)
    if labels is None:
        raise ValueError("point_labels must be given with point_coords")
    labels = np.asarray(labels)
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] == 0:
        raise ValueError(f"point_coords must be a non-empty N x 2 array of (x, y), got shape {coords.shape}")
    if labels.shape != (coords.shape[0],):
        raise ValueError(f"point_labels must have shape ({coords.shape[0]},), got {labels.shape}")
    if not np.all(np.isin(labels, VALID_POINT_LABELS)):
        raise ValueError(f"point labels must be 1 (foreground) or 0 (background), got {np.unique(labels).tolist()}")
    _check_inside(coords, "point", image_size)


def check_box_prompt(box: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """The box as 4 float32 ``[x0, y0, x1, y1]``; ``ValueError`` unless it has 4 finite values in XYXY
    order inside an ``image_size`` = (H, W) image."""
    box = np.asarray(box, dtype=np.float32).reshape(-1)
    if box.shape != (4,):
        raise ValueError(f"box must be [x0, y0, x1, y1], got {box.size} values")
    if box[2] < box[0] or box[3] < box[1]:
        raise ValueError(f"box {box.tolist()} has x1 < x0 or y1 < y0 (expected XYXY)")
    _check_inside(box.reshape(2, 2), "box", image_size)
    return box


def _check_inside(coords: np.ndarray, what: str, image_size: tuple[int, int]) -> None:
    height, width = image_size
    if not np.all(np.isfinite(coords)):
        raise ValueError(f"{what} coordinates must be finite")
    outside = (coords[:, 0] < 0) | (coords[:, 0] > width) | (coords[:, 1] < 0) | (coords[:, 1] > height)
    if outside.any():
        raise ValueError(f"{what} coordinates {coords[outside].tolist()} lie outside the {width} x {height} (W x H) image")


class RobustSAMPredictor:
    """Prompted segmentation with a :class:`RobustSAM` (``path="robust"``) or its SAM (``path="sam"``)."""

    def __init__(self, model: RobustSAM, path: DecoderPath = "robust") -> None:
        if path not in ("robust", "sam"):
            raise ValueError(f"path must be 'robust' or 'sam', got {path!r}")
        self.model = model
        self.path = path
        self.transform = ResizeLongestSide(model.image_size)
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_image(self) -> None:
        self.features: ImageFeatures | None = None
        self.image_part: torch.Tensor | None = None  # robust path's per-image fusion part, computed once
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self.is_image_set = False

    @torch.no_grad()
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode an ``H x W x 3`` uint8 image (grayscale / RGBA converted; see :func:`as_rgb_uint8`)."""
        image = as_rgb_uint8(image, image_format)
        resized = self.transform.apply_image(image)
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None].float()
        self.set_torch_image(tensor, image.shape[:2])

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_size: tuple[int, ...]) -> None:
        """Encode a ``1 x 3 x H x W`` float image in [0, 255] already resized with ``self.transform``."""
        if transformed_image.dim() != 4 or transformed_image.shape[:2] != (1, 3):
            raise ValueError(f"expected a 1 x 3 x H x W image, got {tuple(transformed_image.shape)}")
        if max(transformed_image.shape[-2:]) != self.model.image_size:
            raise ValueError(f"the long side must be {self.model.image_size}; resize with predictor.transform")
        self.reset_image()
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.input_size = tuple(transformed_image.shape[-2:])
        self.features = self.model.encode_image(self.model.preprocess(transformed_image))
        self.is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        """The ``1 x D x h x w`` image embedding of the current image."""
        self._require_image()
        return self.features.embedding

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("an image must be set with .set_image(...) before mask prediction")

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        return_features: bool = False,
    ):
        """One prompt in original-image pixels: points ``N x 2`` (x, y) with labels ``N``, a box
        ``[x0, y0, x1, y1]``, and/or a ``1 x 4h x 4w`` low-res mask from an earlier call.

        Returns ``masks`` (C x H x W), ``iou_predictions`` (C), ``low_res_logits`` (C x 4h x 4w) as
        numpy arrays, plus :class:`PromptFeatures` when ``return_features``.
        """
        self._require_image()
        if point_coords is None and box is None and mask_input is None:
            raise ValueError("no prompt given: pass point_coords/point_labels, a box, or a mask_input")
        coords_torch = labels_torch = box_torch = mask_torch = None
        if point_coords is not None:
            point_coords = np.asarray(point_coords, dtype=np.float32)
            point_labels = None if point_labels is None else np.asarray(point_labels)
            check_point_prompt(point_coords, point_labels, self.original_size)
            coords = self.transform.apply_coords(point_coords, self.original_size)
            coords_torch = torch.as_tensor(coords, dtype=torch.float, device=self.device)[None]
            labels_torch = torch.as_tensor(point_labels, dtype=torch.int, device=self.device)[None]
        if box is not None:
            box = check_box_prompt(box, self.original_size)
            box_torch = torch.as_tensor(self.transform.apply_boxes(box, self.original_size), device=self.device)
        if mask_input is not None:
            mask_torch = torch.as_tensor(mask_input, dtype=torch.float, device=self.device)[None]
        outputs = self.predict_torch(
            coords_torch, labels_torch, box_torch, mask_torch, multimask_output,
            return_logits=return_logits, return_features=return_features,
        )
        # under bf16 autocast the scores and logits are bfloat16, which numpy has no type for: float32
        arrays = tuple((t[0].detach().float() if t.is_floating_point() else t[0].detach()).cpu().numpy()
                       for t in outputs[:3])
        return (*arrays, outputs[3]) if return_features else arrays

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        return_features: bool = False,
    ):
        """N prompts in ONE forward, in the model's input frame (``self.transform`` applied):
        points ``N x P x 2`` with labels ``N x P``, boxes ``N x 4``, masks ``N x 1 x 4h x 4w``.

        Returns masks ``N x C x H x W`` (bool unless ``return_logits``), IoU predictions ``N x C``,
        low-res logits ``N x C x 4h x 4w`` and, with ``return_features``, :class:`PromptFeatures`.
        """
        self._require_image()
        counts = set()
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be given with point_coords")
            if point_coords.dim() != 3 or point_coords.shape[-1] != 2 or point_coords.shape[1] == 0:
                raise ValueError(f"point_coords must be N x P x 2 with P >= 1, got {tuple(point_coords.shape)}")
            if point_labels.shape != point_coords.shape[:2]:
                raise ValueError(f"point_labels must be N x P = {tuple(point_coords.shape[:2])}, got {tuple(point_labels.shape)}")
            counts.add(point_coords.shape[0])
        if boxes is not None:
            if boxes.dim() != 2 or boxes.shape[-1] != 4:
                raise ValueError(f"boxes must be N x 4 (XYXY), got {tuple(boxes.shape)}")
            counts.add(boxes.shape[0])
        if mask_input is not None:
            if mask_input.dim() != 4 or mask_input.shape[1] != 1:
                raise ValueError(f"mask_input must be N x 1 x H x W, got {tuple(mask_input.shape)}")
            counts.add(mask_input.shape[0])
        if not counts:
            raise ValueError("no prompt given: pass points, boxes or mask_input")
        if len(counts) > 1 or 0 in counts:
            raise ValueError(f"points, boxes and masks must hold the same non-zero number of prompts, got {sorted(counts)}")

        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = self.model.encode_prompts(points=points, boxes=boxes, masks=mask_input)
        if self.path == "robust" and self.image_part is None:
            self.image_part = self.model.robust_image_part(self.features)
        output = self.model.decode(self.features, sparse, dense, multimask_output=multimask_output, path=self.path,
                                   image_part=self.image_part)
        masks = self.model.postprocess_masks(output.mask_logits, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        if not return_features:
            return masks, output.iou_predictions, output.mask_logits
        features = PromptFeatures(output.mask_feature, output.mask_tokens, self.features.embedding)
        return masks, output.iou_predictions, output.mask_logits, features


RobustSamPredictor = RobustSAMPredictor  # the name before 0.2; kept for one release
