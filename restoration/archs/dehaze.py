"""SAM-guided dehazing (Jin et al. 2023, "Let Segment Anything Help Image Dehaze"), reimplemented.

The paper (no public code) concatenates the SAM masks of the hazy image, coded as one grayscale
channel, to the hazy RGB input of a standard backbone ("channel expansion"). Here the backbone is a
compact NAFBlock U-Net (:class:`~restoration.archs.nafnet.NAFNet`, not one of the paper's U-Net /
Uformer / Restormer backbones) and the prior is one of

* ``"none"``: hazy RGB only (the baseline);
* ``"grayscale"``: + 1 channel :func:`~robustprior.data.structure.grayscale_segment_coding` (the paper);
* ``"structure"``: + the 3-channel :func:`~robustprior.data.structure.structure_map`: each region filled
  with the hazy image's mean colour there, a fixed (not learned) map. This is *not* SAM-Deblur's
  prior: SAM-Deblur feeds a learned Mask Average Pooling unit (:class:`~restoration.archs.SAMDeblurNet`);
* ``"features"``: the grayscale channel, plus a latent prior feature map (e.g. RobustSAM's robust
  mask feature or the SAM image embedding), normalised per position and injected at every encoder
  level through a 1x1 conv initialised to zero (:class:`~restoration.archs.nafnet.FeatureInjection`),
  so at initialisation it is exactly the ``"grayscale"`` network.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from restoration.archs.nafnet import FeatureInjection, NAFNet
from restoration.archs.prior_batch import PriorBatch, required_entry
from robustprior.data.structure import grayscale_segment_coding, structure_map

PRIOR_CHANNELS = {"none": 0, "grayscale": 1, "structure": 3, "features": 1}


class SAMGuidedDehazeNet(nn.Module):
    """Hazy RGB (+ mask prior channels) -> dehazed RGB through a NAFBlock U-Net with global residual.

    ``forward(lq, prior=None)``: ``lq`` B x 3 x H x W in [0, 1]; ``prior`` (:data:`~restoration.archs.PriorBatch`)
    with ``label_map`` B x H x W (every prior but ``"none"``, which ignores the prior), ``features``
    B x ``prior_channels`` x h x w covering the image at any resolution (``"features"``) and
    ``grey_scale`` B (the grayscale coding's ``num_segments``, the same for the whole run so that a
    region keeps its grey level in every crop and tile; absent: each sample's largest label). Returns
    B x 3 x H x W.
    """

    def __init__(
        self,
        prior: Literal["none", "grayscale", "structure", "features"] = "grayscale",
        width: int = 32,
        enc_blocks: Sequence[int] = (1, 1, 2, 2),
        middle_blocks: int = 2,
        dec_blocks: Sequence[int] = (1, 1, 1, 1),
        prior_channels: int | None = None,
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
        self.prior_injections = (FeatureInjection(prior_channels, self.backbone.encoder_channels)
                                 if prior == "features" else None)

    def forward(self, lq: torch.Tensor, prior: PriorBatch | None = None) -> torch.Tensor:
        if self.prior == "none":
            return self.backbone.restore(lq)
        name = type(self).__name__
        label_map = required_entry(prior, "label_map", name, self.prior)
        if self.prior == "structure":
            return self.backbone.restore(torch.cat([lq, structure_map(lq, label_map)], dim=1))
        network_input = torch.cat([lq, grey_coding(label_map, prior.get("grey_scale")).to(lq.dtype)], dim=1)
        if self.prior_injections is None:
            return self.backbone.restore(network_input)
        features = required_entry(prior, "features", name, self.prior)
        return self.backbone.restore(network_input, encoder_injections=self.prior_injections.inject(features, lq.dtype))


def grey_coding(label_map: torch.Tensor, grey_scale: torch.Tensor | int | None) -> torch.Tensor:
    """:func:`~robustprior.data.structure.grayscale_segment_coding` of B x H x W labels with a scale per
    sample (B tensor), one for all (int) or each sample's largest label (None): B x 1 x H x W."""
    if grey_scale is None or isinstance(grey_scale, int):
        return grayscale_segment_coding(label_map, grey_scale)
    scales = grey_scale.reshape(-1).tolist()
    if len(scales) != label_map.shape[0]:
        raise ValueError(f"grey_scale has {len(scales)} entries for a batch of {label_map.shape[0]}")
    if len(set(scales)) == 1:
        return grayscale_segment_coding(label_map, int(scales[0]))
    return torch.cat([grayscale_segment_coding(label_map[i : i + 1], int(scale)) for i, scale in enumerate(scales)])
