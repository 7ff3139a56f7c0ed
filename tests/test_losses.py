"""Loss functions against independent computations."""
from __future__ import annotations

import torch
from torchvision.ops import sigmoid_focal_loss as torchvision_focal

from robustprior.losses import LossWeights, dice_loss, robust_sam_losses, sigmoid_focal_loss


def test_focal_matches_torchvision() -> None:
    torch.manual_seed(0)
    logits = 3 * torch.randn(4, 16, 16)
    targets = (torch.rand(4, 16, 16) > 0.6).float()
    expected = torchvision_focal(logits, targets, alpha=0.25, gamma=2.0, reduction="mean")
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets), expected)


def test_focal_pixel_weights_ignore_pixels() -> None:
    logits, targets = torch.randn(1, 4, 4), (torch.rand(1, 4, 4) > 0.5).float()
    weights = torch.zeros(1, 4, 4)
    weights[0, :2] = 1
    expected = torchvision_focal(logits[:, :2], targets[:, :2], reduction="mean")
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, weights), expected)


def test_dice_hand_case() -> None:
    # sigmoid(+inf) = 1 on the left half, 0 on the right; target is the top half of a 2x2 mask
    logits = torch.tensor([[[100.0, -100.0], [100.0, -100.0]]])
    targets = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # intersection 1, |p| = 2, |t| = 2, smooth 1 -> 1 - 3/5
    torch.testing.assert_close(dice_loss(logits, targets), torch.tensor(0.4), atol=1e-6, rtol=0)


def test_total_is_the_weighted_sum_and_targets_are_detached() -> None:
    torch.manual_seed(0)
    robust_feature = torch.randn(2, 4, 8, 8, requires_grad=True)
    clear_feature = torch.randn(2, 4, 8, 8, requires_grad=True)
    tokens, clear_tokens = torch.randn(2, 4, 16, requires_grad=True), torch.randn(2, 4, 16, requires_grad=True)
    logits, targets = torch.randn(2, 8, 8, requires_grad=True), (torch.rand(2, 8, 8) > 0.5).float()
    weights = LossWeights(mask_feature=100, token=2, dice=1, focal=20)
    terms = robust_sam_losses(logits, targets, robust_feature, clear_feature, tokens, clear_tokens, weights)
    expected = (100 * ((robust_feature - clear_feature) ** 2).mean() + 2 * ((tokens - clear_tokens) ** 2).mean()
                + dice_loss(logits, targets) + 20 * torchvision_focal(logits, targets, reduction="mean"))
    torch.testing.assert_close(terms["total"], expected)
    terms["total"].backward()
    assert clear_feature.grad is None and clear_tokens.grad is None
    assert robust_feature.grad is not None and tokens.grad is not None
