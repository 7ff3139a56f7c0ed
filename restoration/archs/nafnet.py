"""NAFNet (Chen et al. 2022) and SAM-Deblur (Li et al. 2023): NAFNet with a Mask Average Pooling unit.

NAFNet is a U-Net of NAFBlocks without nonlinear activations:

* NAFBlock: ``x + beta * [LayerNorm2d -> 1x1 conv (x2) -> 3x3 depthwise conv -> SimpleGate ->
  Simplified Channel Attention -> 1x1 conv]``, then ``+ gamma * [LayerNorm2d -> 1x1 conv (x2) ->
  SimpleGate -> 1x1 conv]``; ``beta`` and ``gamma`` start at zero so every block starts as the identity.
* SimpleGate splits the channels into two halves and multiplies them; Simplified Channel Attention
  multiplies the features by a 1x1 conv of their (global) average.
* Downsampling: 2x2 stride-2 conv doubling the channels; upsampling: 1x1 conv + PixelShuffle(2)
  halving them; encoder skips are added (not concatenated); global residual ``input RGB + net``.

Padding: an H x W image is padded at the bottom/right to a multiple of ``2**levels`` and the output
cropped back. ``pad_mode="replicate"`` (the default) repeats the border pixels; ``pad_mode="zeros"``
pads with zeros as the released NAFNet and SAM-Deblur do (``check_image_size``), so their released
weights give their outputs at any size (:mod:`restoration.archs.released`).

Test-time local pooling (TLC, Chu et al. 2022; used by SAM-Deblur at full resolution): a net trained
on ``train_size`` crops sees global statistics of ``train_size`` windows in its channel attention;
on a larger test image the global average becomes a local average over a window of
``int(1.5 * train_size)`` input pixels, i.e. ``int(1.5 * train_size) // 2**level`` feature pixels
at a level downsampled ``2**level`` times. Enable it with ``local_pool=True`` or
:meth:`NAFNet.set_local_pool`; where the window covers the whole feature map it is the global average.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

PAD_MODES: tuple[str, ...] = ("replicate", "zeros")

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d  # per-pixel layer norm over channels, B x C x H x W
from torch import nn

from restoration.archs.prior_batch import PriorBatch, required_entry
from restoration.mask_groups import DROPOUT_MODES, drop_mask_groups
from robustprior.data.structure import region_mean_pool, resample_prior_features


def simple_gate(x: torch.Tensor) -> torch.Tensor:
    """NAFNet's SimpleGate: B x 2C x H x W -> B x C x H x W, product of the two channel halves."""
    first, second = x.chunk(2, dim=1)
    return first * second


def local_average_pool(x: torch.Tensor, window: int) -> torch.Tensor:
    """Stride-1 average over ``window x window`` neighbourhoods, B x C x H x W -> B x C x H x W.

    Each pixel averages the window centred on it (offset ``(window - 1) // 2``), shifted to stay inside
    the map at the borders (the TLC convention: the valid pooling output, edge-replicated). A window
    at least as large as the map along both axes gives the global mean, returned as B x C x 1 x 1.
    Summed-area table in float64: O(1) per pixel whatever the window.
    """
    _, _, height, width = x.shape
    window_height, window_width = min(window, height), min(window, width)
    if window_height == height and window_width == width:
        return x.mean(dim=(2, 3), keepdim=True)
    integral = F.pad(x.double().cumsum(2).cumsum(3), (1, 0, 1, 0))

    def window_bounds(size: int, window_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = (torch.arange(size, device=x.device) - (window_size - 1) // 2).clamp(0, size - window_size)
        return start, start + window_size

    top, bottom = window_bounds(height, window_height)
    left, right = window_bounds(width, window_width)
    rows_bottom, rows_top = integral[:, :, bottom], integral[:, :, top]
    total = rows_bottom[..., right] - rows_bottom[..., left] - rows_top[..., right] + rows_top[..., left]
    return (total / (window_height * window_width)).to(x.dtype)


class SimplifiedChannelAttention(nn.Module):
    """``x * conv1x1(average(x))``, B x C x H x W; global average, or local over ``pool_window`` pixels.

    ``downscale``: how many input pixels one feature pixel spans (2**level), to size local windows.
    """

    def __init__(self, channels: int, downscale: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.downscale = downscale
        self.pool_window: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_window is None:
            pooled = x.mean(dim=(2, 3), keepdim=True)
        else:
            pooled = local_average_pool(x, self.pool_window)
        return x * self.conv(pooled)


class NAFBlock(nn.Module):
    """Nonlinear-activation-free block (see module docstring). B x C x H x W -> B x C x H x W."""

    def __init__(self, channels: int, expansion: int = 2, ffn_expansion: int = 2, downscale: int = 1) -> None:
        super().__init__()
        hidden, ffn_hidden = channels * expansion, channels * ffn_expansion
        self.norm1 = LayerNorm2d(channels)
        self.expand = nn.Conv2d(channels, hidden, kernel_size=1)
        self.depthwise = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.channel_attention = SimplifiedChannelAttention(hidden // 2, downscale)
        self.project = nn.Conv2d(hidden // 2, channels, kernel_size=1)
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.norm2 = LayerNorm2d(channels)
        self.ffn_expand = nn.Conv2d(channels, ffn_hidden, kernel_size=1)
        self.ffn_project = nn.Conv2d(ffn_hidden // 2, channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attended = self.channel_attention(simple_gate(self.depthwise(self.expand(self.norm1(x)))))
        x = x + self.beta * self.project(attended)
        return x + self.gamma * self.ffn_project(simple_gate(self.ffn_expand(self.norm2(x))))


def _stage(channels: int, num_blocks: int, downscale: int) -> nn.Sequential:
    """``num_blocks`` NAFBlocks of a level whose pixels span ``downscale`` input pixels."""
    return nn.Sequential(*(NAFBlock(channels, downscale=downscale) for _ in range(num_blocks)))


class NAFNet(nn.Module):
    """NAFNet U-Net: B x in_channels x H x W (the first ``out_channels`` being the image) -> B x out_channels x H x W.

    Defaults are SAM-Deblur's NAFNet (width 32, encoder blocks [1, 1, 1, 28], middle 1, decoder
    [1, 1, 1, 1]; ``dec_blocks`` counts the blocks of each level like ``enc_blocks``, finest level
    first). Any H x W: the input is padded at the bottom/right to a multiple of ``2**len(enc_blocks)``
    (``pad_mode``, module docstring) and the output cropped back. ``local_pool``/``train_size``:
    test-time local pooling (module docstring).
    """

    def __init__(
        self,
        width: int = 32,
        enc_blocks: Sequence[int] = (1, 1, 1, 28),
        middle_blocks: int = 1,
        dec_blocks: Sequence[int] = (1, 1, 1, 1),
        in_channels: int = 3,
        out_channels: int = 3,
        local_pool: bool = False,
        train_size: int = 256,
        pad_mode: Literal["replicate", "zeros"] = "replicate",
    ) -> None:
        super().__init__()
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {', '.join(PAD_MODES)}, got {pad_mode!r}")
        if len(enc_blocks) != len(dec_blocks):
            raise ValueError(f"enc_blocks {list(enc_blocks)} and dec_blocks {list(dec_blocks)} differ in length")
        if in_channels < out_channels:
            raise ValueError("the global residual adds the first out_channels input channels: need more in_channels")
        self.out_channels = out_channels
        self.pad_mode = pad_mode
        self.num_levels = len(enc_blocks)
        self.intro = nn.Conv2d(in_channels, width, kernel_size=3, padding=1)
        self.encoders, self.downs = nn.ModuleList(), nn.ModuleList()
        channels = width
        for level, num_blocks in enumerate(enc_blocks):
            self.encoders.append(_stage(channels, num_blocks, 2**level))
            self.downs.append(nn.Conv2d(channels, 2 * channels, kernel_size=2, stride=2))
            channels *= 2
        self.middle = _stage(channels, middle_blocks, 2**self.num_levels)
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        for level, num_blocks in reversed(list(enumerate(dec_blocks))):
            up = nn.Sequential(nn.Conv2d(channels, 2 * channels, kernel_size=1, bias=False), nn.PixelShuffle(2))
            self.ups.append(up)
            channels //= 2
            self.decoders.append(_stage(channels, num_blocks, 2**level))
        self.ending = nn.Conv2d(width, out_channels, kernel_size=3, padding=1)
        self.encoder_channels = [width * 2**level for level in range(self.num_levels)]
        self.set_local_pool(local_pool, train_size)

    def set_local_pool(self, enabled: bool, train_size: int = 256) -> None:
        """Channel attention pools globally, or (``enabled``) over ``int(1.5 * train_size)`` input pixels."""
        for module in self.modules():
            if isinstance(module, SimplifiedChannelAttention):
                module.pool_window = max(1, int(1.5 * train_size) // module.downscale) if enabled else None

    prior = "none"

    def forward(self, lq: torch.Tensor, prior: PriorBatch | None = None) -> torch.Tensor:
        """The plain NAFNet: B x in_channels x H x W -> B x out_channels x H x W (``prior`` is ignored)."""
        return self.restore(lq)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B x C x H x W) padded at the bottom/right to a multiple of ``2**num_levels`` (``pad_mode``)."""
        multiple = 2**self.num_levels
        pad_height, pad_width = -x.shape[-2] % multiple, -x.shape[-1] % multiple
        if not (pad_height or pad_width):
            return x
        mode = "constant" if self.pad_mode == "zeros" else "replicate"
        return F.pad(x, (0, pad_width, 0, pad_height), mode=mode)

    def restore(self, x: torch.Tensor, encoder_injections: Sequence[torch.Tensor] | None = None,
                image_size: tuple[int, int] | None = None) -> torch.Tensor:
        """B x in_channels x H x W -> B x out_channels x H x W (the backbone call of the prior networks).

        ``encoder_injections``: optional one map per encoder level, B x ``encoder_channels[level]`` x
        h x w at any resolution, covering the (unpadded) input; each is bilinearly resampled onto its
        level's grid and added to the features entering that level's blocks. ``image_size``: the
        ``(H, W)`` of the image in the top-left of ``x`` when the caller has already padded ``x``
        (:meth:`pad`); the output is cropped to it.
        """
        height, width = image_size if image_size is not None else x.shape[-2:]
        padded = self.pad(x)
        if encoder_injections is not None and len(encoder_injections) != self.num_levels:
            raise ValueError(f"need {self.num_levels} encoder injections, got {len(encoder_injections)}")
        padded_region = (0.0, 0.0, float(padded.shape[-2]), float(padded.shape[-1]))
        features = self.intro(padded)
        skips = []
        for level, (encoder, down) in enumerate(zip(self.encoders, self.downs)):
            if encoder_injections is not None:
                features = features + resample_prior_features(
                    encoder_injections[level], (height, width), tuple(features.shape[-2:]), padded_region
                )
            features = encoder(features)
            skips.append(features)
            features = down(features)
        features = self.middle(features)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips)):
            features = decoder(up(features) + skip)
        restored = self.ending(features) + padded[:, : self.out_channels]
        return restored[..., :height, :width]


class FeatureInjection(nn.ModuleList):
    """A latent prior feature map added to every encoder level of a :class:`NAFNet`.

    The B x C x h x w features are first normalised at every position over their C channels (zero
    mean, unit variance; no learned scale: a SAM embedding and a mask feature differ in scale by
    orders of magnitude, and a per-position normalisation is the same on a crop, a tile or the whole
    image), then mapped by one 1x1 conv per level to that level's channels. The convs start at zero,
    so a network with injection starts as the same network without it. Iterating yields the convs.
    """

    def __init__(self, prior_channels: int, encoder_channels: Sequence[int]) -> None:
        if prior_channels is None or int(prior_channels) < 1:
            raise ValueError(f"prior_channels must be the latent map's channel count (>= 1), got {prior_channels!r}")
        super().__init__(nn.Conv2d(int(prior_channels), channels, kernel_size=1) for channels in encoder_channels)
        self.prior_channels = int(prior_channels)
        for conv in self:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def inject(self, features: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
        """One B x encoder_channels[level] x h x w map per level (the backbone resamples them)."""
        if features.ndim != 4 or features.shape[1] != self.prior_channels:
            raise ValueError(f"prior features must be B x {self.prior_channels} x h x w (network_g.prior_channels), "
                             f"got {tuple(features.shape)}")
        normalised = F.layer_norm(features.float().movedim(1, -1), (self.prior_channels,)).movedim(-1, 1).to(dtype)
        # 1x1 conv at the prior's own resolution, then resampling in the backbone: both are linear
        # and bilinear weights sum to one, so this equals resampling first and is far cheaper.
        return [conv(normalised) for conv in self]


class MaskAveragePooling(nn.Module):
    """SAM-Deblur's Mask Average Pooling (MAP) unit: B x 3 x H x W image + B x H x W labels -> B x 2 x H x W.

    A 3x3 conv and a 1x1 conv map the image to ``out_channels`` channels; each channel is then
    replaced inside every mask region by its mean there, and uncovered pixels by the mean over all
    uncovered pixels (:func:`~robustprior.data.structure.region_mean_pool`).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 2) -> None:
        super().__init__()
        self.spatial_conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.pointwise_conv = nn.Conv2d(out_channels, out_channels, kernel_size=1)

    def forward(self, image: torch.Tensor, label_map: torch.Tensor) -> torch.Tensor:
        return region_mean_pool(self.pointwise_conv(self.spatial_conv(image)), label_map, uncovered="mean")


class SAMDeblurNet(nn.Module):
    """SAM-Deblur: the MAP unit's channels concatenated with the blurry RGB, restored by NAFNet.

    ``prior="structure"``: NAFNet with a (3 + ``structure_channels``)-channel intro conv fed
    ``[lq, MAP(lq, prior["label_map"])]``; during training (``self.training``) masks are dropped first
    with rate ``mask_dropout`` (:func:`~restoration.mask_groups.drop_mask_groups`, global torch RNG;
    ``mask_dropout_mode``: ``independent`` Bernoulli per region, or SAM-Deblur's ``exact``
    ``int(p * M)`` groups). ``prior="features"``: the same, plus the prior's latent map
    (``prior["features"]``, ``prior_channels`` channels) injected at every encoder level
    (:class:`FeatureInjection`, zero at initialisation). ``prior="none"``: the plain NAFNet baseline on
    RGB; the prior is ignored. Other arguments as :class:`NAFNet`; with ``pad_mode="zeros"`` the MAP
    unit pools the zero-padded image, the padding uncovered (label 0), as SAM-Deblur's ``SegNAFNet``
    does. Forward: B x 3 x H x W (+ prior) -> B x 3 x H x W.
    """

    def __init__(
        self,
        prior: Literal["structure", "features", "none"] = "structure",
        width: int = 32,
        enc_blocks: Sequence[int] = (1, 1, 1, 28),
        middle_blocks: int = 1,
        dec_blocks: Sequence[int] = (1, 1, 1, 1),
        structure_channels: int = 2,
        mask_dropout: float = 0.5,
        mask_dropout_mode: Literal["independent", "exact"] = "independent",
        local_pool: bool = False,
        train_size: int = 256,
        prior_channels: int | None = None,
        pad_mode: Literal["replicate", "zeros"] = "replicate",
    ) -> None:
        super().__init__()
        if prior not in ("structure", "features", "none"):
            raise ValueError(f"prior must be 'structure', 'features' or 'none', got {prior!r}")
        if not 0.0 <= mask_dropout <= 1.0:
            raise ValueError(f"mask_dropout must lie in [0, 1], got {mask_dropout}")
        if mask_dropout_mode not in DROPOUT_MODES:
            raise ValueError(f"mask_dropout_mode must be one of {', '.join(DROPOUT_MODES)}, got {mask_dropout_mode!r}")
        self.prior = prior
        self.mask_dropout = mask_dropout
        self.mask_dropout_mode = mask_dropout_mode
        uses_masks = prior != "none"
        self.mask_average_pooling = MaskAveragePooling(3, structure_channels) if uses_masks else None
        extra_channels = structure_channels if uses_masks else 0
        self.backbone = NAFNet(
            width, enc_blocks, middle_blocks, dec_blocks, 3 + extra_channels, 3, local_pool, train_size, pad_mode
        )
        self.prior_injections = (FeatureInjection(prior_channels, self.backbone.encoder_channels)
                                 if prior == "features" else None)

    def forward(self, lq: torch.Tensor, prior: PriorBatch | None = None) -> torch.Tensor:
        if self.mask_average_pooling is None:
            return self.backbone.restore(lq)
        name = type(self).__name__
        label_map = required_entry(prior, "label_map", name, self.prior)
        if self.training and self.mask_dropout > 0:
            label_map = drop_mask_groups(label_map, self.mask_dropout, self.mask_dropout_mode)
        image_size = (lq.shape[-2], lq.shape[-1])
        if self.backbone.pad_mode == "zeros":  # SAM-Deblur pools the padded image; the padding is uncovered
            lq = self.backbone.pad(lq)
            label_map = F.pad(label_map, (0, lq.shape[-1] - image_size[1], 0, lq.shape[-2] - image_size[0]))
        network_input = torch.cat([lq, self.mask_average_pooling(lq, label_map)], dim=1)
        injections = None
        if self.prior_injections is not None:
            features = required_entry(prior, "features", name, self.prior)
            injections = self.prior_injections.inject(features, lq.dtype)
        return self.backbone.restore(network_input, encoder_injections=injections, image_size=image_size)
