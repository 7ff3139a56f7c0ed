"""Capture the *complementary* (early) feature of SAM-family image encoders.

RobustSAM fuses the output of the first global-attention ViT block (vit_b block 2, vit_l 5,
vit_h 7) with the final embedding. The pip ``segment-anything`` encoder returns only the final
embedding, so we read that block's output with a forward hook. For MobileSAM's TinyViT (``vit_t``)
we follow light HQ-SAM and use the output of ``layers[1]`` (B x 4096 x 160 tokens at 1024 input,
i.e. a 64 x 64 grid with 160 channels), the first stage whose grid matches the embedding's.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def first_global_attention_block(image_encoder: nn.Module) -> nn.Module:
    """The first block of a ``segment_anything`` ViT whose attention is global (window 0)."""
    for block in image_encoder.blocks:
        if block.window_size == 0:
            return block
    raise ValueError("the image encoder has no global-attention block to take the early feature from")


class EarlyFeatureHook:
    """Forward hook that stores a layer's output as a channels-first ``B x C x h x w`` map."""

    def __init__(self, layer: nn.Module) -> None:
        self.feature: torch.Tensor | None = None
        self.handle = layer.register_forward_hook(self._store)

    def _store(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if output.dim() == 3:  # TinyViT stage output: B x (h*w) x C tokens
            side = math.isqrt(output.shape[1])
            output = output.reshape(output.shape[0], side, side, output.shape[2])
        self.feature = output.permute(0, 3, 1, 2)  # channels-last B x h x w x C -> B x C x h x w

    def pop(self) -> torch.Tensor:
        """Return the feature of the last forward and forget it."""
        if self.feature is None:
            raise RuntimeError("the image encoder has not run since the early feature was last read")
        feature, self.feature = self.feature, None
        return feature
