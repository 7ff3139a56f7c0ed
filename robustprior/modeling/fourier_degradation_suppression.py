"""Fourier Degradation Suppression (FDS), the frequency-domain step of AMFG.

Degradations such as haze, noise or blur mostly live in the amplitude spectrum while structure
lives in the phase. FDS takes the 2-D FFT over H, W, applies a learned 1x1 convolution to the
amplitude, keeps the phase, and returns the real part of the inverse FFT (no fftshift, no
residual), as the paper and the official GitHub code since 2024-07-16 do.

``mode="identity"`` reproduces the PyPI ``robust-segment-anything`` 1.0.0 package, whose block
computes the modified spectrum and then returns its input unchanged; it exists only so that
package can serve as a parity oracle. The 1x1 convolution is kept in both modes so the
checkpoints have the same keys.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .layer_norm import is_channels_last

FourierMode = Literal["paper", "identity"]
FOURIER_MODES: tuple[str, ...] = ("paper", "identity")


class FourierDegradationSuppression(nn.Module):
    """``B x C x H x W -> B x C x H x W``: ``real(ifft2(conv1x1(|F|) * exp(i angle(F))))``, F = fft2(x).

    Computed as ``irfft2(F * conv1x1(|F|) / |F|)`` on the half spectrum (the same numbers without
    the angle, cosine and sine)."""

    def __init__(self, channels: int, mode: FourierMode = "paper") -> None:
        super().__init__()
        if mode not in FOURIER_MODES:
            raise ValueError(f"unknown Fourier mode {mode!r}; expected one of {FOURIER_MODES}")
        self.mode = mode
        self.amplitude_conv = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "identity":
            return x
        # The spectrum of a real map is Hermitian, and so is the rebuilt one (the 1x1 conv acts on each
        # frequency's amplitudes, which are symmetric; the phase stays antisymmetric), so the real
        # FFT's half spectrum gives exactly real(ifft2(...)) at half the memory and work.
        # Half-precision FFTs are limited; always transform in float32.
        height, width = x.shape[-2:]
        spectrum = torch.fft.rfft2(x.float().contiguous(), dim=(-2, -1))  # FFTs want rows contiguous
        magnitude = spectrum.abs()
        amplitude = self.amplitude_conv(magnitude)
        # amplitude * exp(i * phase) = spectrum * (amplitude / |spectrum|): no angle, cos or sin. Where the
        # spectrum is exactly 0 its phase is 0 (torch.angle(0) = 0), so the rebuilt value is the amplitude.
        nonzero = magnitude > 0
        ratio = amplitude / torch.where(nonzero, magnitude, torch.ones_like(magnitude))
        rebuilt = torch.complex(spectrum.real * ratio + torch.where(nonzero, torch.zeros_like(amplitude), amplitude),
                                spectrum.imag * ratio)
        output = torch.fft.irfft2(rebuilt, s=(height, width), dim=(-2, -1)).to(x.dtype)
        return output.contiguous(memory_format=torch.channels_last) if is_channels_last(x) else output

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
