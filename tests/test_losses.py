"""Loss functions against independent computations."""
from __future__ import annotations

import torch
from torchvision.ops import sigmoid_focal_loss as torchvision_focal

from robustprior.training.losses import LossWeights, dice_loss, focal_and_dice, robust_sam_losses, sigmoid_focal_loss


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


def test_focal_and_dice_of_one_sigmoid_equal_the_separate_losses() -> None:
    """The SAM-tiny recipe's per-mask terms: the same numbers as the two losses (which RobustSAM uses),
    and without class weighting torchvision's focal loss with ``alpha < 0``."""
    torch.manual_seed(0)
    logits = 3 * torch.randn(5, 12, 12)
    targets = torch.rand(5, 12, 12)  # soft targets (area-averaged masks)
    focal, dice = focal_and_dice(logits, targets)
    assert torch.equal(focal, sigmoid_focal_loss(logits, targets, reduction="none"))
    assert torch.equal(dice, dice_loss(logits, targets, reduction="none"))
    unweighted, _ = focal_and_dice(logits, targets, alpha=None)
    torch.testing.assert_close(unweighted, torchvision_focal(logits, targets, alpha=-1, reduction="none").mean((1, 2)))
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, alpha=None), unweighted.mean())


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


# --------------------------------------------------------------------------- the paper's terms and ours
from robustprior.training.losses import (  # noqa: E402
    distillation_loss,
    paper_consistency,
    relative_mse,
    segmentation_losses,
    weighted_total,
)


def test_relative_mse_hand_case_and_scale_freedom() -> None:
    student = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    target = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    # mean((s - t)^2) = 1/4, mean(t^2) = 30/4 -> 1/30
    torch.testing.assert_close(relative_mse(student, target), torch.tensor(1 / 30))
    torch.testing.assert_close(relative_mse(1000 * student, 1000 * target), torch.tensor(1 / 30))


def test_paper_consistency_sums_each_refined_feature_against_its_clear_feature() -> None:
    torch.manual_seed(1)
    refined = {"mask_feature": torch.randn(3, 4, 8, 8, requires_grad=True),
               "complementary": torch.randn(2, 6, 4, 4, requires_grad=True)}
    clear = {"mask_feature": torch.randn(3, 4, 8, 8, requires_grad=True), "complementary": 5 * torch.randn(2, 6, 4, 4)}
    tokens, clear_tokens = torch.randn(3, 4, 16, requires_grad=True), torch.randn(3, 4, 16, requires_grad=True)
    terms = paper_consistency(refined, clear, tokens, clear_tokens)
    by_hand = {name: ((refined[name] - clear[name]) ** 2).mean() / (clear[name] ** 2).mean() for name in refined}
    torch.testing.assert_close(terms["mfc_mask_feature"], by_hand["mask_feature"])
    torch.testing.assert_close(terms["mfc_complementary"], by_hand["complementary"])
    torch.testing.assert_close(terms["mask_feature"], by_hand["mask_feature"] + by_hand["complementary"])
    torch.testing.assert_close(terms["token"], ((tokens - clear_tokens) ** 2).mean() / (clear_tokens ** 2).mean())
    (terms["mask_feature"] + terms["token"]).backward()
    assert clear["mask_feature"].grad is None and clear_tokens.grad is None
    assert refined["mask_feature"].grad is not None and tokens.grad is not None


def test_segmentation_loss_takes_token_0_or_the_best_multimask_output() -> None:
    target = torch.zeros(1, 4, 4)
    target[0, :2] = 1  # top half
    right = torch.where(target > 0, 20.0, -20.0)  # a near-perfect mask
    wrong = -right
    # prompt 0 (single-mask): token 0 is wrong even though token 2 is right -> it is scored by token 0
    # prompt 1 (multimask): tokens 1 and 3 are wrong, token 2 right -> scored by token 2
    logits = torch.stack([torch.stack([wrong[0], wrong[0], right[0], wrong[0]]),
                          torch.stack([right[0], wrong[0], right[0], wrong[0]])])
    targets = torch.cat([target, target])
    terms = segmentation_losses(logits, targets, torch.tensor([False, True]), LossWeights())
    expected_dice = (dice_loss(wrong, target) + dice_loss(right, target)) / 2
    expected_focal = (sigmoid_focal_loss(wrong, target) + sigmoid_focal_loss(right, target)) / 2
    torch.testing.assert_close(terms["dice"], expected_dice)
    torch.testing.assert_close(terms["focal"], expected_focal)


def test_segmentation_loss_without_multimask_is_the_single_mask_loss() -> None:
    torch.manual_seed(2)
    logits, targets = torch.randn(3, 4, 8, 8), (torch.rand(3, 8, 8) > 0.5).float()
    terms = segmentation_losses(logits, targets, torch.zeros(3, dtype=torch.bool), LossWeights())
    torch.testing.assert_close(terms["dice"], dice_loss(logits[:, 0], targets))
    torch.testing.assert_close(terms["focal"], torchvision_focal(logits[:, 0], targets, reduction="mean"))


def test_distillation_is_cross_entropy_against_the_teachers_probabilities() -> None:
    student, teacher = torch.tensor([0.0, 2.0]), torch.tensor([0.0, -1.0])
    p, q = torch.sigmoid(teacher), torch.sigmoid(student)
    expected = -(p * torch.log(q) + (1 - p) * torch.log(1 - q)).mean()
    torch.testing.assert_close(distillation_loss(student, teacher), expected)
    # minimal (its gradient vanishes) where the student equals the teacher
    matched = teacher.clone().requires_grad_(True)
    distillation_loss(matched, teacher).backward()
    torch.testing.assert_close(matched.grad, torch.zeros(2))


def test_weighted_total_skips_zero_weights() -> None:
    terms = {"mask_feature": torch.tensor(2.0), "token": torch.tensor(3.0), "dice": torch.tensor(0.5),
             "focal": torch.tensor(0.1), "distill": torch.tensor(float("nan")), "mfc_mask_feature": torch.tensor(9.0)}
    total = weighted_total(terms, LossWeights(mask_feature=10, token=1, dice=1, focal=20, distill=0))
    torch.testing.assert_close(total, torch.tensor(20 + 3 + 0.5 + 2.0))
