"""Anti-Degradation Mask Feature Generation (AMFG), paper Sec. 3.2.1.

``AMFG(x) = conv3x3(FDS(SE(concat(x, SelectiveConv(x)))))``: C -> 2C -> 2C -> 2C -> C channels.
"""
from __future__ import annotations

import torch
from torch import nn

from .fourier_degradation_suppression import FourierDegradationSuppression, FourierMode
from .selective_convolution import SelectiveConvolution


class SqueezeExcitation(nn.Module):
    """Channel attention: global average pool -> MLP (reduction r) -> sigmoid -> rescale.

    ``B x C x H x W -> B x C x H x W``.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.excitation = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.excitation(x.mean(dim=(2, 3)))
        return x * weights[:, :, None, None]


class AntiDegradationMaskFeatures(nn.Module):
    """AMFG on one feature map, ``B x C x H x W -> B x C x H x W``.

    Steps, in the paper's order: selective IN/BN convolution with attention merge; concatenation
    with the input (input first, as in the official release); squeeze-and-excitation on the 2C
    channels; Fourier Degradation Suppression; 3x3 convolution back to C channels.
    """

    def __init__(self, channels: int, reduction: int = 16, fourier_mode: FourierMode = "paper") -> None:
        super().__init__()
        self.selective_convolution = SelectiveConvolution(channels, reduction=reduction)
        self.channel_attention = SqueezeExcitation(2 * channels, reduction=reduction)
        self.fourier_suppression = FourierDegradationSuppression(2 * channels, mode=fourier_mode)
        self.output_conv = nn.Conv2d(2 * channels, channels, kernel_size=3, padding=1)

    @torch.no_grad()
    def start_as_identity(self, attention_bias: float = 4.0) -> None:
        """Set weights so that ``AMFG(x) == x`` while every part still receives gradients.

        Squeeze-excitation gives the constant scale ``s = sigmoid(attention_bias)``, the Fourier
        block's amplitude conv is the identity (so the block returns its input), and the output
        conv reads the input's channels divided by ``s`` and the selective-convolution channels
        with zero weight."""
        excitation = self.channel_attention.excitation[2]
        excitation.weight.zero_()
        excitation.bias.fill_(attention_bias)
        amplitude = self.fourier_suppression.amplitude_conv
        amplitude.weight.copy_(torch.eye(amplitude.in_channels)[:, :, None, None])
        amplitude.bias.zero_()
        channels = self.output_conv.out_channels
        self.output_conv.weight.zero_()
        self.output_conv.bias.zero_()
        index = torch.arange(channels)
        self.output_conv.weight[index, index, 1, 1] = 1.0 / torch.sigmoid(torch.tensor(attention_bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.cat((x, self.selective_convolution(x)), dim=1)
        features = self.fourier_suppression(self.channel_attention(features))
        return self.output_conv(features)
