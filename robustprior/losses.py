"""RobustSAM's training losses (paper Sec. 3.2.4; release weights as defaults).

total = w_mf * MaskFeatureConsistency + w_tok * TokenConsistency + w_dice * Dice + w_focal * Focal

* Mask Feature Consistency: MSE between the robust path's fused mask feature (degraded image)
  and the clear path's fused feature (the release compares the fused features; the paper writes
  the complementary and final-embedding terms separately).
* Token Consistency: MSE between the Robust Output Tokens after the two-way transformer
  (degraded image) and SAM's mask tokens after the transformer (clear image).
* Segmentation: Dice + sigmoid Focal (gamma 2, alpha 0.25) against the ground-truth mask.

Consistency targets come from the clear (teacher) path and are detached, as the paper's teacher
formulation implies (the release does not detach them).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossWeights:
    mask_feature: float = 100.0
    token: float = 2.0
    dice: float = 1.0
    focal: float = 20.0


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
                       alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Mean focal loss over ``P x H x W`` logits and {0, 1} targets; ``weights`` (same shape) masks
    out ignored pixels."""
    probabilities = logits.sigmoid()
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_true = probabilities * targets + (1 - probabilities) * (1 - targets)
    alpha_factor = alpha * targets + (1 - alpha) * (1 - targets)
    loss = alpha_factor * (1 - p_true) ** gamma * cross_entropy
    if weights is None:
        return loss.mean()
    return (loss * weights).sum() / weights.sum().clamp_min(1.0)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
              smooth: float = 1.0) -> torch.Tensor:
    """Mean over prompts of ``1 - (2|p t| + s) / (|p| + |t| + s)`` for ``P x H x W`` inputs."""
    probabilities = logits.sigmoid()
    if weights is not None:
        probabilities, targets = probabilities * weights, targets * weights
    intersection = (probabilities * targets).flatten(1).sum(1)
    total = probabilities.flatten(1).sum(1) + targets.flatten(1).sum(1)
    return (1 - (2 * intersection + smooth) / (total + smooth)).mean()


def robust_sam_losses(
    mask_logits: torch.Tensor,
    targets: torch.Tensor,
    robust_feature: torch.Tensor,
    clear_feature: torch.Tensor,
    robust_tokens: torch.Tensor,
    clear_tokens: torch.Tensor,
    weights: LossWeights = LossWeights(),
    pixel_weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """All loss terms (unweighted) and ``total`` (weighted). Logits/targets ``P x H x W``, features
    ``P x C x H x W``, tokens ``P x T x D``."""
    terms = {
        "mask_feature": F.mse_loss(robust_feature, clear_feature.detach()),
        "token": F.mse_loss(robust_tokens, clear_tokens.detach()),
        "dice": dice_loss(mask_logits, targets, pixel_weights),
        "focal": sigmoid_focal_loss(mask_logits, targets, pixel_weights),
    }
    terms["total"] = sum(getattr(weights, name) * value for name, value in terms.items())
    return terms
