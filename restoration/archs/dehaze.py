"""SAM-guided dehazing (Jin et al. 2023, "Let Segment Anything Help Image Dehaze"), reimplemented.

The paper (no public code) concatenates the SAM masks of the hazy image, coded as one grayscale
channel, to the hazy RGB input of a standard backbone ("channel expansion"). Here the backbone is a
compact NAFBlock U-Net (:class:`~restoration.archs.nafnet.NAFNet`, not one of the paper's U-Net /
Uformer / Restormer backbones) and the prior is one of

* ``"none"``: hazy RGB only (the baseline);
* ``"grayscale"``: + 1 channel :func:`~robustprior.data.structure.grayscale_segment_coding` (the paper);
* ``"structure"``: + the 3-channel :func:`~robustprior.data.structure.structure_map` (as in SAM-Deblur);
* ``"features"``: the grayscale channel, plus a latent prior feature map (e.g. RobustSAM's robust
  mask feature or the SAM image embedding) injected at every encoder level through a 1x1 conv
  initialised to zero, so at initialisation it is exactly the ``"grayscale"`` network.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from restoration.archs import register_arch
from restoration.archs.nafnet import NAFNet
from robustprior.data.structure import grayscale_segment_coding, structure_map

PRIOR_CHANNELS = {"none": 0, "grayscale": 1, "structure": 3, "features": 1}


@register_arch
class SAMGuidedDehazeNet(nn.Module):
    """Hazy RGB (+ mask prior channels) -> dehazed RGB through a NAFBlock U-Net with global residual.

    ``forward(image, label_map=None, prior_features=None)``: image B x 3 x H x W in [0, 1];
    ``label_map`` B x H x W integer (needed by every prior but ``"none"``, which ignores it);
    ``prior_features`` B x ``prior_channels`` x h x w covering the image at any resolution (needed by
    ``"features"``, ignored otherwise); ``num_segments``: the grey-level scale of the grayscale coding
    (default: each sample's largest label; pass the full image's when running on tiles). Returns
    B x 3 x H x W.
    """

    def __init__(
        self,
        prior: Literal["none", "grayscale", "structure", "features"] = "grayscale",
        width: int = 32,
        enc_blocks: Sequence[int] = (1, 1, 2, 2),
        middle_blocks: int = 2,
        dec_blocks: Sequence[int] = (1, 1, 1, 1),
        prior_channels: int = 32,
        local_pool: bool = False,
        train_size: int = 256,
    ) -> None:
        super().__init__()
        if prior not in PRIOR_CHANNELS:
            raise ValueError(f"prior must be one of {sorted(PRIOR_CHANNELS)}, got {prior!r}")
        self.prior = prior
        # The backbone is built first so that, for one seed, "features" and "grayscale" share its weights.
        self.backbone = NAFNet(
            width, enc_blocks, middle_blocks, dec_blocks, 3 + PRIOR_CHANNELS[prior], 3, local_pool, train_size
        )
        self.prior_injections = None
        if prior == "features":
            self.prior_injections = nn.ModuleList(
                nn.Conv2d(prior_channels, channels, kernel_size=1) for channels in self.backbone.encoder_channels
            )
            for injection in self.prior_injections:
                nn.init.zeros_(injection.weight)
                nn.init.zeros_(injection.bias)

    def forward(
        self,
        image: torch.Tensor,
        label_map: torch.Tensor | None = None,
        prior_features: torch.Tensor | None = None,
        num_segments: int | None = None,
    ) -> torch.Tensor:
        if self.prior == "none":
            return self.backbone(image)
        if label_map is None:
            raise ValueError(f"prior={self.prior!r} needs a label_map (pass zeros for an image without masks)")
        if self.prior == "structure":
            return self.backbone(torch.cat([image, structure_map(image, label_map)], dim=1))
        network_input = torch.cat([image, grayscale_segment_coding(label_map, num_segments).to(image.dtype)], dim=1)
        if self.prior_injections is None:
            return self.backbone(network_input)
        if prior_features is None:
            raise ValueError("prior='features' needs prior_features (B x prior_channels x h x w)")
        # 1x1 conv at the prior's own resolution, then resampling in the backbone: both are linear
        # and bilinear weights sum to one, so this equals resampling first and is far cheaper.
        injections = [injection(prior_features.to(image.dtype)) for injection in self.prior_injections]
        return self.backbone(network_input, encoder_injections=injections)
