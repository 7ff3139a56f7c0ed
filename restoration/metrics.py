"""PSNR / SSIM for restoration results, computed by BasicSR's reference implementations.

Inputs are uint8 H x W x 3 **RGB** numpy arrays. BasicSR's ``calculate_psnr`` / ``calculate_ssim``
(``input_order="HWC"``) work on whatever channel order they get when comparing all channels (PSNR
over all channels; SSIM per channel with an 11x11 Gaussian window, sigma 1.5, valid region, then
averaged), but their Y-channel conversion (``test_y_channel=True``) assumes **BGR** order, as BasicSR
reads images with OpenCV; this module reverses the channels to BGR before calling them, so the
Y channel is the BT.601 luma of the RGB image.

SSIM comes in two kinds (``val.ssim``; every result names the one used):

* ``basicsr``: BasicSR's ``calculate_ssim`` (the restoration literature's protocol, the default);
* ``gaussian3d``: SAM-Deblur's (NAFNet fork's) 3-D Gaussian SSIM, :func:`ssim_3d`: the H x W x 3
  image is one volume, filtered by an 11 x 11 x 11 Gaussian (sigma 1.5, normalised over the window)
  across rows, columns *and the 3 channels jointly*, with edge-replicating padding (so the map has
  the image's size, no valid-region crop); ``C1 = (0.01 * 255)^2``, ``C2 = (0.03 * 255)^2``; the
  score is the mean of the SSIM map. It reads higher than BasicSR's on the same images.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from restoration._basicsr import calculate_psnr, calculate_ssim

METRIC_PROTOCOL = "BasicSR 1.4.2 calculate_psnr/calculate_ssim on uint8 RGB, crop border 0, all RGB channels"
SSIM_KINDS: tuple[str, ...] = ("basicsr", "gaussian3d")
SSIM_DESCRIPTIONS = {
    "basicsr": "BasicSR calculate_ssim (per channel, 11x11 Gaussian sigma 1.5, valid region, channel mean)",
    "gaussian3d": "SAM-Deblur's 3-D Gaussian SSIM (11x11x11 Gaussian sigma 1.5 over rows, columns and the 3 "
                  "channels jointly, edge-replicated borders, map mean)",
}
GAUSSIAN_RADIUS, GAUSSIAN_SIGMA = 5, 1.5


def _check_pair(restored: np.ndarray, target: np.ndarray) -> None:
    for name, image in (("restored", restored), ("target", target)):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            found = f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}"
            raise ValueError(f"{name} must be a uint8 H x W x 3 RGB numpy array, got {found}")
    if restored.shape != target.shape:
        raise ValueError(f"shapes differ: restored {restored.shape}, target {target.shape}")


def _basicsr_metric(
    metric: Callable[..., float], restored: np.ndarray, target: np.ndarray, crop_border: int, test_y_channel: bool
) -> float:
    _check_pair(restored, target)
    # RGB -> BGR: only the Y-channel conversion cares, but the order is made right unconditionally.
    bgr_restored, bgr_target = np.ascontiguousarray(restored[..., ::-1]), np.ascontiguousarray(target[..., ::-1])
    value = metric(bgr_restored, bgr_target, crop_border=crop_border, input_order="HWC", test_y_channel=test_y_channel)
    return float(value)


def psnr(restored: np.ndarray, target: np.ndarray, crop_border: int = 0, test_y_channel: bool = False) -> float:
    """PSNR in dB (peak 255) of two uint8 H x W x 3 RGB images; ``inf`` for identical images (BasicSR's convention)."""
    return _basicsr_metric(calculate_psnr, restored, target, crop_border, test_y_channel)


def ssim(restored: np.ndarray, target: np.ndarray, crop_border: int = 0, test_y_channel: bool = False) -> float:
    """SSIM of two uint8 H x W x 3 RGB images (per channel, then averaged; 1.0 for identical images)."""
    return _basicsr_metric(calculate_ssim, restored, target, crop_border, test_y_channel)


def _gaussian_window() -> torch.Tensor:
    """The normalised 11-tap Gaussian (sigma 1.5), float64."""
    offsets = torch.arange(-GAUSSIAN_RADIUS, GAUSSIAN_RADIUS + 1, dtype=torch.float64)
    weights = torch.exp(-(offsets**2) / (2 * GAUSSIAN_SIGMA**2))
    return weights / weights.sum()


def _gaussian_filter_3d(volume: torch.Tensor) -> torch.Tensor:
    """Separable 11-tap Gaussian over every axis of an H x W x C float64 volume, edges replicated."""
    window = _gaussian_window()
    for axis in range(3):
        moved = volume.movedim(axis, -1)
        shape = moved.shape
        rows = moved.reshape(-1, 1, shape[-1])
        padded = torch.nn.functional.pad(rows, (GAUSSIAN_RADIUS, GAUSSIAN_RADIUS), mode="replicate")
        filtered = torch.nn.functional.conv1d(padded, window.view(1, 1, -1))
        volume = filtered.reshape(shape).movedim(-1, axis)
    return volume


def ssim_3d(restored: np.ndarray, target: np.ndarray) -> float:
    """SAM-Deblur's 3-D Gaussian SSIM of two uint8 H x W x 3 RGB images (module docstring)."""
    _check_pair(restored, target)
    first = torch.from_numpy(restored.astype(np.float64))
    second = torch.from_numpy(target.astype(np.float64))
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mean1, mean2 = _gaussian_filter_3d(first), _gaussian_filter_3d(second)
    variance1 = _gaussian_filter_3d(first * first) - mean1**2
    variance2 = _gaussian_filter_3d(second * second) - mean2**2
    covariance = _gaussian_filter_3d(first * second) - mean1 * mean2
    ssim_map = ((2 * mean1 * mean2 + c1) * (2 * covariance + c2)) / (
        (mean1**2 + mean2**2 + c1) * (variance1 + variance2 + c2))
    return float(ssim_map.mean())


def tensor_to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """1 x 3 x H x W or 3 x H x W float RGB in [0, 1] -> H x W x 3 uint8 RGB.

    Values are clamped to [0, 1], scaled by 255 and rounded half to even (``torch.round``, the same
    rule as the ``numpy.round`` of BasicSR's ``tensor2img``), computed in float64.
    """
    if tensor.ndim == 4:
        if tensor.shape[0] != 1:
            raise ValueError(f"a batched tensor must hold one image, got batch {tensor.shape[0]}")
        tensor = tensor[0]
    if tensor.ndim != 3 or tensor.shape[0] != 3 or not tensor.dtype.is_floating_point:
        raise ValueError(f"need a float 3 x H x W (or 1 x 3 x H x W) tensor, got {tensor.dtype} {tuple(tensor.shape)}")
    scaled = torch.round(tensor.detach().to("cpu", torch.float64).clamp(0.0, 1.0) * 255.0)
    return scaled.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


class MetricAccumulator:
    """Collects PSNR and SSIM per image under one protocol; means over images.

    A mean PSNR is ``inf`` when any image was restored exactly (the per-image list shows which).
    """

    def __init__(self, crop_border: int = 0, test_y_channel: bool = False, ssim_kind: str = "basicsr") -> None:
        if ssim_kind not in SSIM_KINDS:
            raise ValueError(f"ssim_kind must be one of {', '.join(SSIM_KINDS)}, got {ssim_kind!r}")
        if ssim_kind == "gaussian3d" and (crop_border or test_y_channel):
            raise ValueError("the 3-D Gaussian SSIM is defined on all RGB channels without a crop border")
        self.crop_border = crop_border
        self.test_y_channel = test_y_channel
        self.ssim_kind = ssim_kind
        self.per_image: list[dict[str, float | str]] = []

    @property
    def protocol(self) -> str:
        if self.crop_border == 0 and not self.test_y_channel:
            base = METRIC_PROTOCOL
        else:
            channels = "Y channel (BT.601 of RGB)" if self.test_y_channel else "all RGB channels"
            base = f"BasicSR 1.4.2 calculate_psnr/calculate_ssim on uint8 RGB, crop border {self.crop_border}, {channels}"
        if self.ssim_kind == "basicsr":
            return base
        return base.replace("calculate_psnr/calculate_ssim", "calculate_psnr") + f"; SSIM: {SSIM_DESCRIPTIONS['gaussian3d']}"

    def score_ssim(self, restored: np.ndarray, target: np.ndarray) -> float:
        """SSIM of one uint8 RGB pair under this accumulator's kind."""
        if self.ssim_kind == "gaussian3d":
            return ssim_3d(restored, target)
        return ssim(restored, target, self.crop_border, self.test_y_channel)

    def update(self, restored: np.ndarray, target: np.ndarray, name: str | None = None) -> dict[str, float | str]:
        """Score one uint8 H x W x 3 RGB pair; returns (and stores) ``{"name", "psnr", "ssim"}``."""
        record: dict[str, float | str] = {
            "name": name if name is not None else f"image_{len(self.per_image):04d}",
            "psnr": psnr(restored, target, self.crop_border, self.test_y_channel),
            "ssim": self.score_ssim(restored, target),
        }
        self.per_image.append(record)
        return record

    def mean(self) -> dict[str, float]:
        """``{"psnr": mean, "ssim": mean}`` over the images seen (NaN when none)."""
        count = len(self.per_image)
        if not count:
            return {"psnr": math.nan, "ssim": math.nan}
        return {key: sum(float(record[key]) for record in self.per_image) / count for key in ("psnr", "ssim")}

    def to_dict(self) -> dict[str, object]:
        """Protocol, image count, means and the per-image records, ready for JSON (``inf`` aside)."""
        return {
            "protocol": self.protocol,
            "ssim_kind": self.ssim_kind,
            "num_images": len(self.per_image),
            **self.mean(),
            "per_image": list(self.per_image),
        }
