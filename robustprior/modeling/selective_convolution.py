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

from .layer_norm import is_channels_last


class BranchAttention(nn.Module):
    """Softmax attention over the two branches, computed on a coarse ``grid x grid`` layout.

    Input ``B x C x H x W`` (the sum of both branch outputs). :meth:`coarse` gives the two weights
    on the grid (``2 x B x C x grid x grid``, summing to one); ``forward`` nearest-upsamples them
    to two ``B x C x H x W`` maps; :meth:`merge` applies them to the two branches without
    materialising the full-size maps when ``H`` and ``W`` are multiples of ``grid``.
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

    def coarse(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x H x W -> 2 x B x C x grid x grid`` softmax weights (BN branch first)."""
        b, c = x.shape[:2]
        hidden = F.relu(self.squeeze(self.pool(x).reshape(b, -1)))
        logits = torch.stack((self.batch_norm_logits(hidden), self.instance_norm_logits(hidden)))
        return logits.view(2, b, c, self.grid, self.grid).softmax(dim=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        weights = F.interpolate(self.coarse(x).flatten(0, 1), size=(h, w), mode="nearest").view(2, b, c, h, w)
        return weights[0], weights[1]

    def merge(self, batch_norm_branch: torch.Tensor, instance_norm_branch: torch.Tensor) -> torch.Tensor:
        """``weight_bn * batch_norm_branch + weight_in * instance_norm_branch`` (both ``B x C x H x W``)."""
        b, c, h, w = batch_norm_branch.shape
        g = self.grid
        if h % g or w % g:
            weight_bn, weight_in = self(batch_norm_branch + instance_norm_branch)
            return batch_norm_branch * weight_bn + instance_norm_branch * weight_in
        coarse = self.coarse(batch_norm_branch + instance_norm_branch)
        if is_channels_last(batch_norm_branch) and is_channels_last(instance_norm_branch):
            # the same products on the B x H x W x C storage order, so nothing is copied to NCHW
            weights = coarse.permute(0, 1, 3, 4, 2)[:, :, :, None, :, None, :]
            blocks = (b, g, h // g, g, w // g, c)
            merged = (batch_norm_branch.permute(0, 2, 3, 1).reshape(blocks) * weights[0]
                      + instance_norm_branch.permute(0, 2, 3, 1).reshape(blocks) * weights[1])
            return merged.reshape(b, h, w, c).permute(0, 3, 1, 2)
        weights = coarse[:, :, :, :, None, :, None]
        blocks = (b, c, g, h // g, g, w // g)  # nearest upsampling by whole blocks = a broadcast over them
        merged = batch_norm_branch.reshape(blocks) * weights[0] + instance_norm_branch.reshape(blocks) * weights[1]
        return merged.reshape(b, c, h, w)


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
        return self.attention.merge(batch_norm_branch, instance_norm_branch)
