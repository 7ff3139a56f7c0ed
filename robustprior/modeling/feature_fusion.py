"""HQ-SAM-style fusion of the AMFG outputs into the robust mask feature (paper Sec. 3.2.1).

robust mask feature = conv_block(AMFG(mask feature))
                    + upsample(AMFG(complementary feature))
                    + upsample(AMFG(final image embedding))

all at ``transformer_dim / 8`` channels and 4x the embedding resolution (32 x 256 x 256 for SAM at
1024). With ``robust=False`` the AMFG steps are skipped: that is the clear (teacher) path's fused
feature that the mask-feature consistency loss compares against, as in the official release.
"""
from __future__ import annotations

import torch
from torch import nn

from .anti_degradation_mask_features import AntiDegradationMaskFeatures
from .fourier_degradation_suppression import FourierMode
from .layer_norm import ChannelLayerNorm2d


def _upsample_4x(in_channels: int, hidden_channels: int, out_channels: int) -> nn.Sequential:
    """Two stride-2 transposed convolutions with LayerNorm2d + GELU between: 4x resolution."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, hidden_channels, kernel_size=2, stride=2),
        ChannelLayerNorm2d(hidden_channels),
        nn.GELU(),
        nn.ConvTranspose2d(hidden_channels, out_channels, kernel_size=2, stride=2),
    )


class RobustFeatureFusion(nn.Module):
    """Three AMFG blocks and the layers that bring their outputs to the mask-feature resolution."""

    def __init__(
        self,
        transformer_dim: int,
        encoder_dim: int,
        reduction: int = 16,
        fourier_mode: FourierMode = "paper",
    ) -> None:
        super().__init__()
        mask_channels = transformer_dim // 8
        self.mask_feature_amfg = AntiDegradationMaskFeatures(mask_channels, reduction, fourier_mode)
        self.mask_feature_conv = nn.Sequential(
            nn.Conv2d(mask_channels, 2 * mask_channels, kernel_size=3, padding=1),
            ChannelLayerNorm2d(2 * mask_channels),
            nn.GELU(),
            nn.Conv2d(2 * mask_channels, mask_channels, kernel_size=3, padding=1),
        )
        self.complementary_amfg = AntiDegradationMaskFeatures(encoder_dim, reduction, fourier_mode)
        self.complementary_upsample = _upsample_4x(encoder_dim, transformer_dim, mask_channels)
        self.embedding_amfg = AntiDegradationMaskFeatures(transformer_dim, reduction, fourier_mode)
        self.embedding_upsample = _upsample_4x(transformer_dim, transformer_dim, mask_channels)

    @torch.no_grad()
    def start_as_mask_feature(self) -> None:
        """Set weights so that the robust mask feature of a ``P x D/8 x H x W`` mask feature ``x``
        is ``x / rms(x)`` (root mean square over channels, per pixel): the same sign as ``x``
        against any classifier, hence SAM's masks when the classifier is SAM's.

        Every AMFG starts as the identity; the two upsampling branches end in zero so they add
        nothing yet (their last layers still get gradients); the 3x3 conv block maps ``x`` to
        ``[x, -x]``, whose LayerNorm2d is ``[x, -x] / rms(x)``, and ``GELU(z) - GELU(-z) = z``
        brings it back to ``x / rms(x)``."""
        for amfg in (self.mask_feature_amfg, self.complementary_amfg, self.embedding_amfg):
            amfg.start_as_identity()
        for upsample in (self.complementary_upsample, self.embedding_upsample):
            upsample[-1].weight.zero_()
            upsample[-1].bias.zero_()
        expand, norm, _, reduce = self.mask_feature_conv
        channels = reduce.out_channels
        index = torch.arange(channels)
        for conv in (expand, reduce):
            conv.weight.zero_()
            conv.bias.zero_()
        expand.weight[index, index, 1, 1] = 1.0
        expand.weight[index + channels, index, 1, 1] = -1.0
        norm.weight.fill_(1.0)
        norm.bias.zero_()
        reduce.weight[index, index, 1, 1] = 1.0
        reduce.weight[index, index + channels, 1, 1] = -1.0

    def refine_image_features(
        self, image_embedding: torch.Tensor, complementary_feature: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """AMFG of the per-image features: ``B x D x h x w`` embedding and ``B x C_enc x h x w`` early
        feature -> the refined maps of the same shapes (what the paper's consistency loss compares
        with the clear image's features)."""
        return self.embedding_amfg(image_embedding), self.complementary_amfg(complementary_feature)

    def upsample_image_features(self, image_embedding: torch.Tensor, complementary_feature: torch.Tensor) -> torch.Tensor:
        """``B x D x h x w`` and ``B x C_enc x h x w`` -> their summed upsampled maps ``B x D/8 x 4h x 4w``."""
        return self.embedding_upsample(image_embedding) + self.complementary_upsample(complementary_feature)

    def image_features(
        self, image_embedding: torch.Tensor, complementary_feature: torch.Tensor, robust: bool = True
    ) -> torch.Tensor:
        """Per-image part: ``B x D x h x w`` embedding and ``B x C_enc x h x w`` early feature
        -> ``B x D/8 x 4h x 4w``."""
        if robust:
            image_embedding, complementary_feature = self.refine_image_features(image_embedding, complementary_feature)
        return self.upsample_image_features(image_embedding, complementary_feature)

    def mask_features(self, upscaled_embedding: torch.Tensor, robust: bool = True) -> torch.Tensor:
        """Per-prompt part: the decoder's ``P x D/8 x 4h x 4w`` upscaled embedding -> same shape."""
        if robust:
            upscaled_embedding = self.mask_feature_amfg(upscaled_embedding)
        return self.mask_feature_conv(upscaled_embedding)
