"""Selective convolution: the first step of Anti-Degradation Mask Feature Generation (AMFG).

Two branches see the same input: one normalises with BatchNorm (keeps the statistics of the
whole training distribution), the other with InstanceNorm (removes per-image degradation
statistics such as a global colour cast or contrast change). A coarse spatial attention decides,
per channel and per image region, how much of each branch to keep.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BranchAttention(nn.Module):
    """Softmax attention over the two branches, computed on a coarse ``grid x grid`` layout.

    Input ``B x C x H x W`` (the sum of both branch outputs); output two weights of the same
    shape that sum to one element-wise (nearest-upsampled from ``B x C x grid x grid``).
    """

    def __init__(self, channels: int, reduction: int = 16, grid: int = 4) -> None:
        super().__init__()
        self.grid = grid
        pooled = channels * grid * grid
        hidden = max(1, pooled // reduction)
        self.pool = nn.AdaptiveAvgPool2d((grid, grid))
        self.squeeze = nn.Linear(pooled, hidden, bias=False)
        self.batch_norm_logits = nn.Linear(hidden, pooled)
        self.instance_norm_logits = nn.Linear(hidden, pooled)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        hidden = F.relu(self.squeeze(self.pool(x).reshape(b, -1)))
        logits = torch.stack(
            (self.batch_norm_logits(hidden), self.instance_norm_logits(hidden))
        ).view(2, b, c, self.grid, self.grid)
        weights = logits.softmax(dim=0)
        weights = F.interpolate(weights.flatten(0, 1), size=(h, w), mode="nearest").view(2, b, c, h, w)
        return weights[0], weights[1]


class SelectiveConvolution(nn.Module):
    """BN branch (BatchNorm -> LeakyReLU -> 3x3 conv) and IN branch (InstanceNorm -> LeakyReLU ->
    3x3 conv), merged by :class:`BranchAttention`. ``B x C x H x W -> B x C x H x W``."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.batch_norm = nn.BatchNorm2d(channels)
        self.instance_norm = nn.InstanceNorm2d(channels)
        self.batch_norm_conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.instance_norm_conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.attention = BranchAttention(channels, reduction=reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_norm_branch = self.batch_norm_conv(F.leaky_relu(self.batch_norm(x)))
        instance_norm_branch = self.instance_norm_conv(F.leaky_relu(self.instance_norm(x)))
        weight_bn, weight_in = self.attention(batch_norm_branch + instance_norm_branch)
        return batch_norm_branch * weight_bn + instance_norm_branch * weight_in
