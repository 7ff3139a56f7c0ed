"""The pixel losses of restoration training (``train.pixel_opt.type``, :data:`restoration.config.PIXEL_LOSSES`)."""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["LOSSES", "PSNR_LOSS_SCALE", "l1_loss", "pixel_loss", "psnr_loss"]

PSNR_LOSS_SCALE = 10.0 / math.log(10.0)


def psnr_loss(restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SAM-Deblur's / NAFNet's PSNR loss, ``10/ln10 * log(MSE + 1e-8)`` per image, averaged: B x C x H x W -> scalar."""
    mse = (restored - target).pow(2).flatten(1).mean(dim=1)
    return PSNR_LOSS_SCALE * torch.log(mse + 1e-8).mean()


def l1_loss(restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error: B x C x H x W -> scalar."""
    return (restored - target).abs().mean()


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: dict[str, Loss] = {"PSNRLoss": psnr_loss, "L1Loss": l1_loss}


def pixel_loss(pixel_opt: Mapping[str, Any]) -> Loss:
    """The loss of a validated ``train.pixel_opt`` section: ``LOSSES[type]`` times ``loss_weight``."""
    loss, weight = LOSSES[pixel_opt["type"]], pixel_opt["loss_weight"]
    return loss if weight == 1.0 else (lambda restored, target: weight * loss(restored, target))
