"""The pixel losses (restoration.losses) against hand computations."""
from __future__ import annotations

import math

import pytest
import torch

from restoration.losses import LOSSES, l1_loss, pixel_loss, psnr_loss


def test_psnr_loss_is_negative_psnr_of_the_mse() -> None:
    restored, target = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.1)
    expected = 10.0 / math.log(10.0) * math.log(0.01 + 1e-8)
    assert psnr_loss(restored, target).item() == pytest.approx(expected, rel=1e-6)


def test_psnr_loss_averages_the_log_of_each_image_mse() -> None:
    # image 0 off by 0.1 everywhere (MSE 0.01), image 1 off by 0.5 on half its pixels (MSE 0.125)
    restored = torch.zeros(2, 1, 2, 2)
    target = torch.tensor([[[[0.1, 0.1], [0.1, 0.1]]], [[[0.5, 0.0], [0.0, 0.5]]]])
    per_image = [math.log10(0.01 + 1e-8), math.log10(0.125 + 1e-8)]
    expected = 10.0 * sum(per_image) / 2  # not 10 log10 of the batch MSE (0.0675)
    assert psnr_loss(restored, target).item() == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(10.0 * math.log10(0.0675), rel=1e-3)


def test_l1_loss_is_the_mean_absolute_error() -> None:
    restored = torch.tensor([[[[0.0, 1.0], [0.5, 0.25]]]])
    target = torch.tensor([[[[0.5, 0.0], [0.5, 1.0]]]])
    assert l1_loss(restored, target).item() == pytest.approx((0.5 + 1.0 + 0.0 + 0.75) / 4)


def test_pixel_loss_takes_the_type_and_weight_of_pixel_opt() -> None:
    restored, target = torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.2)
    assert pixel_loss({"type": "L1Loss", "loss_weight": 1.0}) is l1_loss
    assert pixel_loss({"type": "L1Loss", "loss_weight": 0.5})(restored, target).item() == pytest.approx(0.1)
    assert pixel_loss({"type": "PSNRLoss", "loss_weight": 2.0})(restored, target).item() == pytest.approx(
        2.0 * 10.0 * math.log10(0.04 + 1e-8), rel=1e-6)
    assert set(LOSSES) == {"PSNRLoss", "L1Loss"}
