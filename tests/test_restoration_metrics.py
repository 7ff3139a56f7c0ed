"""PSNR / SSIM through BasicSR, checked against scikit-image's independent implementations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from restoration.metrics import METRIC_PROTOCOL, MetricAccumulator, psnr, ssim, tensor_to_uint8

SKIMAGE_SSIM = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "data_range": 255}


def _pair(seed: int = 0, noise: float = 12.0) -> tuple[np.ndarray, np.ndarray]:
    rows, columns = np.mgrid[0:48, 0:64]
    clean = np.stack([128 + 100 * np.sin(columns / 7), 128 + 80 * np.cos(rows / 5), 2.0 * (rows + columns)], axis=-1)
    noisy = clean + np.random.default_rng(seed).normal(0.0, noise, clean.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8), np.clip(clean, 0, 255).astype(np.uint8)


def test_psnr_and_ssim_match_scikit_image() -> None:
    restored, target = _pair()
    # Same float64 formulas (SSIM: 11x11 Gaussian sigma 1.5 on the valid region, per channel then
    # mean, in both), so the only differences are summation order: 1e-9 is ~1e5 x the observed gap.
    assert psnr(restored, target) == pytest.approx(peak_signal_noise_ratio(target, restored, data_range=255), abs=1e-9)
    expected_ssim = structural_similarity(target, restored, channel_axis=-1, **SKIMAGE_SSIM)
    assert ssim(restored, target) == pytest.approx(expected_ssim, abs=1e-9)
    assert 0.2 < ssim(restored, target) < 0.95  # a real, non-degenerate comparison


def test_y_channel_is_luma_of_rgb() -> None:
    restored, target = _pair(seed=1)
    luma_restored, luma_target = rgb2ycbcr(restored)[..., 0], rgb2ycbcr(target)[..., 0]
    # BasicSR converts to Y in float32 (scikit-image in float64): ~3e-7 dB / 1e-8 apart. Feeding
    # BasicSR RGB instead of BGR would be off by ~7e-3 dB on these images.
    assert psnr(restored, target, test_y_channel=True) == pytest.approx(
        peak_signal_noise_ratio(luma_target, luma_restored, data_range=255), abs=1e-5
    )
    assert ssim(restored, target, test_y_channel=True) == pytest.approx(
        structural_similarity(luma_target, luma_restored, **SKIMAGE_SSIM), abs=1e-6
    )


def test_crop_border_and_identical_images() -> None:
    restored, target = _pair(seed=2)
    assert psnr(restored, target, crop_border=4) == pytest.approx(
        peak_signal_noise_ratio(target[4:-4, 4:-4], restored[4:-4, 4:-4], data_range=255), abs=1e-9
    )
    assert psnr(target, target) == math.inf
    assert ssim(target, target) == pytest.approx(1.0, abs=1e-12)


def test_input_validation() -> None:
    restored, target = _pair()
    with pytest.raises(ValueError, match="uint8"):
        psnr(restored.astype(np.float32), target)
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(restored[:-1], target)


def test_tensor_to_uint8() -> None:
    values = torch.tensor([0.0, 1.0, -0.2, 1.3, 0.5, 0.25, 0.75, 100 / 255, 0.3])
    image = values.reshape(1, 3, 1, 3)
    converted = tensor_to_uint8(image)
    assert converted.shape == (1, 3, 3) and converted.dtype == np.uint8
    # Clamped, x255, rounded: 127.5 -> 128, 63.75 -> 64, 191.25 -> 191; 0.3 is 0.30000001 in
    # float32, so 76.500003 -> 77.
    expected = np.array([0, 255, 0, 255, 128, 64, 191, 100, 77], dtype=np.uint8).reshape(3, 1, 3).transpose(1, 2, 0)
    np.testing.assert_array_equal(converted, expected)
    np.testing.assert_array_equal(tensor_to_uint8(image[0]), expected)
    rgb = torch.rand(3, 5, 6, generator=torch.Generator().manual_seed(0))
    expected_rgb = np.round(rgb.double().numpy() * 255).astype(np.uint8).transpose(1, 2, 0)
    np.testing.assert_array_equal(tensor_to_uint8(rgb), expected_rgb)
    with pytest.raises(ValueError):
        tensor_to_uint8(torch.rand(2, 3, 4, 4))


def test_metric_accumulator() -> None:
    accumulator = MetricAccumulator()
    pairs = [_pair(seed=3), _pair(seed=4, noise=4.0)]
    records = [accumulator.update(restored, target, name=f"img{i}") for i, (restored, target) in enumerate(pairs)]
    assert [r["name"] for r in accumulator.per_image] == ["img0", "img1"] and records[1]["psnr"] > records[0]["psnr"]
    mean = accumulator.mean()
    assert mean["psnr"] == pytest.approx(np.mean([psnr(r, t) for r, t in pairs]))
    assert mean["ssim"] == pytest.approx(np.mean([ssim(r, t) for r, t in pairs]))
    summary = accumulator.to_dict()
    assert summary["protocol"] == METRIC_PROTOCOL and summary["num_images"] == 2 and summary["psnr"] == mean["psnr"]
    assert "crop border 4, Y channel" in MetricAccumulator(crop_border=4, test_y_channel=True).protocol
    assert math.isnan(MetricAccumulator().mean()["psnr"])


def _ssim_3d_with_scipy(restored: np.ndarray, target: np.ndarray) -> float:
    """SAM-Deblur's 3-D Gaussian SSIM written with scipy.ndimage: one H x W x 3 volume, an 11-tap
    Gaussian (sigma 1.5, radius 5) along every axis, edges replicated, mean of the map."""
    from scipy.ndimage import gaussian_filter

    def blur(volume: np.ndarray) -> np.ndarray:
        return gaussian_filter(volume, sigma=1.5, mode="nearest", truncate=5 / 1.5)

    x, y = restored.astype(np.float64), target.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    return float((((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean())


def test_3d_gaussian_ssim_matches_an_independent_computation() -> None:
    from restoration.metrics import ssim_3d

    restored, target = _pair(seed=2, noise=20.0)
    assert ssim_3d(restored, target) == pytest.approx(_ssim_3d_with_scipy(restored, target), abs=1e-9)
    small = np.random.default_rng(1).integers(0, 256, (7, 9, 3)).astype(np.uint8)  # smaller than the window
    assert ssim_3d(small, target[:7, :9]) == pytest.approx(_ssim_3d_with_scipy(small, target[:7, :9]), abs=1e-9)
    assert ssim_3d(target, target) == pytest.approx(1.0, abs=1e-12)
    assert abs(ssim_3d(restored, target) - ssim(restored, target)) > 1e-3  # not BasicSR's per-channel SSIM


def test_accumulator_names_the_ssim_it_used() -> None:
    restored, target = _pair()
    from restoration.metrics import ssim_3d

    accumulator = MetricAccumulator(ssim_kind="gaussian3d")
    record = accumulator.update(restored, target)
    assert record["ssim"] == ssim_3d(restored, target)
    summary = accumulator.to_dict()
    assert summary["ssim_kind"] == "gaussian3d" and "3-D Gaussian" in summary["protocol"]
    assert MetricAccumulator().to_dict()["ssim_kind"] == "basicsr"
    with pytest.raises(ValueError, match="ssim_kind"):
        MetricAccumulator(ssim_kind="ms-ssim")
