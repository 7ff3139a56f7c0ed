"""The tiny-SAM recipe's loss: focal + dice on the mask logits (multimask minimum for single points)
and the MSE of the predicted IoU."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from robustprior.evaluation.metrics import mask_iou
from ...modeling.robust_sam import ImageFeatures, RobustSAM
from .. import losses
from .batches import PromptGroup


def focal_and_dice(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mask sigmoid focal loss (pixel mean; ``alpha < 0``: no class weighting) and dice loss
    (:func:`robustprior.training.losses.focal_and_dice`): logits ``P x M x H x W``, targets
    ``P x 1 x H x W`` -> two ``P x M`` tensors."""
    masks = logits.shape[:2]
    focal, dice = losses.focal_and_dice(logits.flatten(0, 1), targets.expand_as(logits).flatten(0, 1),
                                        alpha=alpha if alpha >= 0 else None, gamma=gamma)
    return focal.view(masks), dice.view(masks)


def actual_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of ``logits > 0`` (``P x M x H x W``) with ``targets >= 0.5`` (``P x 1 x H x W``) -> ``P x M``
    (float32; 0 where both masks are empty: an IoU target that a missed object cannot satisfy)."""
    predicted = logits > 0
    truth = (targets >= 0.5).expand_as(predicted)
    scores = mask_iou(predicted.flatten(0, 1), truth.flatten(0, 1), empty=0.0)
    return scores.view(predicted.shape[:2]).float()


def group_losses(model: RobustSAM, features: ImageFeatures, group: PromptGroup, weights: dict
                 ) -> dict[str, torch.Tensor]:
    """Summed (over prompts) focal, dice and IoU-MSE terms of one prompt group. With
    ``weights["full_resolution"]`` the ``P x 4 x 128 x 128`` low-resolution logits are upsampled
    bilinearly to the image size (as :meth:`RobustSAM.postprocess_masks` does at inference) and
    compared with the exact masks; otherwise they are compared at 128 x 128 with the masks
    area-averaged to that size (soft targets). The soft targets of objects narrower than two
    low-resolution pixels sit near 0.5, whose optimum is a logit near 0: a coin flip after
    thresholding. At full resolution a one-pixel ridge of positive logits covers a 2-pixel bar.

    All four mask tokens are decoded. Token 0 is supervised for multi-point and box prompts, and with
    weight ``single_point_token0`` for single points; single points also supervise the lowest-loss
    multimask token (1..3) and the IoU prediction of all three."""
    points = (group.point_coords, group.point_labels) if group.point_coords is not None else None
    sparse, dense = model.encode_prompts(points=points, boxes=group.boxes)
    output = model.decode(features, sparse, dense, image_index=group.image_index, multimask_output=None, path="sam")
    logits = output.mask_logits.float()
    targets = group.targets.float()  # converted here, on the model's device (loader workers only make arrays)
    if weights.get("full_resolution", False):
        logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    else:
        targets = F.adaptive_avg_pool2d(targets, logits.shape[-2:])  # soft targets at the low resolution
    focal, dice = focal_and_dice(logits, targets, weights["focal_alpha"], weights["focal_gamma"])
    mask_loss = weights["focal"] * focal + weights["dice"] * dice  # P x 4

    prompts = len(group)
    mask_weights = torch.zeros(prompts, 4, device=logits.device)
    iou_weights = torch.zeros(prompts, 4, device=logits.device)
    mask_weights[:, 0] = 1.0
    iou_weights[:, 0] = 1.0
    if group.single_point is not None and bool(group.single_point.any()):
        single = group.single_point
        best = mask_loss[:, 1:].detach().argmin(dim=1) + 1
        chosen = torch.zeros(prompts, 4, device=logits.device).scatter_(1, best[:, None], 1.0)
        mask_weights[single] = chosen[single]
        mask_weights[single, 0] = weights["single_point_token0"]
        iou_weights[single] = torch.tensor([weights["single_point_token0"], 1.0, 1.0, 1.0], device=logits.device)
    target_iou = actual_iou(logits.detach(), targets)
    iou_error = (output.iou_predictions.float() - target_iou) ** 2
    return {
        "focal": (mask_weights * focal).sum(),
        "dice": (mask_weights * dice).sum(),
        "iou_mse": (iou_weights * iou_error).sum(),
        "mask_loss": (mask_weights * mask_loss).sum(),
    }


def training_step_loss(model: RobustSAM, images: torch.Tensor, groups: list[PromptGroup], config: dict
                       ) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss of one step (mean over prompts) for ``images`` (``B x H x W x 3`` uint8)."""
    weights = config["loss"]
    device = next(model.parameters()).device
    pixels = images.to(device).permute(0, 3, 1, 2).float()
    groups = [group.to(device) for group in groups]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config["train"]["bf16_autocast"]):
        features = model.encode_image(model.preprocess(pixels))
        terms = [group_losses(model, features, group, weights) for group in groups]
    prompts = sum(len(group) for group in groups)
    summed = {name: sum(term[name] for term in terms) / prompts for name in terms[0]}
    loss = summed["mask_loss"] + weights["iou"] * summed["iou_mse"]
    logged = {"loss": loss.item(), **{name: summed[name].item() for name in ("focal", "dice", "iou_mse")}}
    return loss, logged

