"""Label maps, structure maps, MAP pooling, grayscale coding, mask dropout, prior resampling."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robustprior.data.structure import (
    drop_masks,
    grayscale_segment_coding,
    masks_to_label_map,
    region_mean_pool,
    resample_prior_features,
    structure_map,
)

# Mask A: rows 0-2 x cols 0-2 (9 px); mask B: rows 2-3 x cols 2-3 (4 px); they share pixel (2, 2).
MASK_A = np.zeros((4, 4), dtype=bool)
MASK_A[0:3, 0:3] = True
MASK_B = np.zeros((4, 4), dtype=bool)
MASK_B[2:4, 2:4] = True
# Image: red = 10 * raster index, green = 255 - red, blue = 7.
RED = np.arange(16, dtype=np.float64).reshape(4, 4) * 10
IMAGE = np.stack([RED, 255 - RED, np.full((4, 4), 7.0)], axis=-1)
# Region A (8 px, B took (2, 2)): red 0+10+20+40+50+60+80+90 = 350 -> 43.75; region B: 100+110+140+150 -> 125.
EXPECTED_RED = np.array(
    [
        [43.75, 43.75, 43.75, 30.0],
        [43.75, 43.75, 43.75, 70.0],
        [43.75, 43.75, 125.0, 125.0],
        [120.0, 130.0, 125.0, 125.0],
    ]
)
EXPECTED_GREEN = np.array(
    [
        [211.25, 211.25, 211.25, 225.0],
        [211.25, 211.25, 211.25, 185.0],
        [211.25, 211.25, 130.0, 130.0],
        [135.0, 125.0, 130.0, 130.0],
    ]
)


def test_label_map_smallest_mask_wins_whatever_the_order() -> None:
    label_map = masks_to_label_map(np.stack([MASK_A, MASK_B]))
    expected = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 2, 2], [0, 0, 2, 2]])
    assert label_map.dtype == np.int64
    np.testing.assert_array_equal(label_map, expected)
    # Listing the small mask first: labels follow the input order (k + 1), the small mask still wins.
    swapped = masks_to_label_map(np.stack([MASK_B, MASK_A]))
    np.testing.assert_array_equal(swapped, np.array([[2, 2, 2, 0], [2, 2, 2, 0], [2, 2, 1, 1], [0, 0, 1, 1]]))
    tensor_labels = masks_to_label_map(torch.from_numpy(np.stack([MASK_A, MASK_B])))
    assert isinstance(tensor_labels, torch.Tensor) and tensor_labels.dtype == torch.int64
    np.testing.assert_array_equal(tensor_labels.numpy(), expected)


def test_label_map_empty_and_invalid() -> None:
    np.testing.assert_array_equal(masks_to_label_map(np.zeros((0, 3, 5), dtype=bool)), np.zeros((3, 5), dtype=np.int64))
    assert masks_to_label_map(torch.zeros(0, 2, 2, dtype=torch.bool)).shape == (2, 2)
    with pytest.raises(ValueError, match="K x H x W"):
        masks_to_label_map(np.zeros((4, 4), dtype=bool))
    with pytest.raises(TypeError):
        masks_to_label_map([[[True]]])  # type: ignore[arg-type]


def test_structure_map_hand_computed() -> None:
    label_map = masks_to_label_map(np.stack([MASK_A, MASK_B]))
    filled = structure_map(IMAGE, label_map)
    np.testing.assert_allclose(filled[..., 0], EXPECTED_RED)
    np.testing.assert_allclose(filled[..., 1], EXPECTED_GREEN)
    np.testing.assert_allclose(filled[..., 2], 7.0)
    uncovered = label_map == 0
    np.testing.assert_array_equal(filled[uncovered], IMAGE[uncovered])
    # uint8: means rounded (43.75 -> 44, 211.25 -> 211).
    filled_uint8 = structure_map(IMAGE.astype(np.uint8), label_map)
    assert filled_uint8.dtype == np.uint8
    assert filled_uint8[0, 0].tolist() == [44, 211, 7] and filled_uint8[3, 3].tolist() == [125, 130, 7]
    np.testing.assert_array_equal(filled_uint8[uncovered], IMAGE.astype(np.uint8)[uncovered])


def test_structure_map_numpy_and_torch_agree() -> None:
    generator = np.random.default_rng(0)
    image = generator.random((2, 11, 13, 3)).astype(np.float32)
    masks = generator.random((2, 5, 11, 13)) > 0.6
    label_maps = np.stack([masks_to_label_map(m) for m in masks])
    expected = np.stack([structure_map(i, l) for i, l in zip(image, label_maps)])
    result = structure_map(torch.from_numpy(image).permute(0, 3, 1, 2), torch.from_numpy(label_maps))
    np.testing.assert_allclose(result.permute(0, 2, 3, 1).numpy(), expected, atol=1e-6)
    single = structure_map(torch.from_numpy(image[0]).permute(2, 0, 1), torch.from_numpy(label_maps[0]))
    np.testing.assert_allclose(single.permute(1, 2, 0).numpy(), expected[0], atol=1e-6)


def _slow_region_mean_pool(features: torch.Tensor, label_map: torch.Tensor) -> torch.Tensor:
    pooled = torch.empty_like(features)
    for sample in range(features.shape[0]):
        for label in label_map[sample].unique():
            inside = label_map[sample] == label
            pooled[sample][:, inside] = features[sample][:, inside].mean(dim=1, keepdim=True)
    return pooled


def test_region_mean_pool_matches_loop_and_uncovered_mean() -> None:
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, 3, 9, 7, generator=generator)
    label_map = torch.randint(0, 6, (2, 9, 7), generator=generator)
    label_map[1][label_map[1] == 4] = 0  # a label missing from one sample only
    pooled = region_mean_pool(features, label_map)
    torch.testing.assert_close(pooled, _slow_region_mean_pool(features, label_map), atol=1e-6, rtol=0)
    for sample in range(2):
        uncovered = label_map[sample] == 0
        expected = features[sample][:, uncovered].mean(dim=1)
        torch.testing.assert_close(pooled[sample][:, uncovered], expected[:, None].expand(-1, int(uncovered.sum())))
    kept = region_mean_pool(features, label_map, uncovered="keep")
    uncovered = label_map[:, None].expand_as(features) == 0
    torch.testing.assert_close(kept[uncovered], features[uncovered])


def test_region_mean_pool_gradient() -> None:
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(1, 2, 5, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    label_map = torch.randint(0, 4, (1, 5, 6), generator=generator)
    assert torch.autograd.gradcheck(lambda f: region_mean_pool(f, label_map), (features,))
    # d(sum(w * pooled)) / d feature = mean of w over the feature's region.
    weights = torch.randn(1, 2, 5, 6, dtype=torch.float64, generator=generator)
    (region_mean_pool(features, label_map) * weights).sum().backward()
    torch.testing.assert_close(features.grad, _slow_region_mean_pool(weights, label_map))


def test_region_mean_pool_rejects_bad_label_maps() -> None:
    with pytest.raises(ValueError, match="does not match"):
        region_mean_pool(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(TypeError):
        region_mean_pool(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="non-negative"):
        region_mean_pool(torch.zeros(1, 2, 4, 4), -torch.ones(1, 4, 4, dtype=torch.long))


def test_grayscale_segment_coding() -> None:
    label_map = torch.tensor([[[0, 1, 2], [3, 3, 0]], [[0, 0, 0], [0, 0, 0]]])
    coding = grayscale_segment_coding(label_map)
    assert coding.shape == (2, 1, 2, 3) and coding.dtype == torch.float32
    # Sample 0: 3 segments -> 85, 170, 255; sample 1: nothing covered.
    expected = torch.tensor([[[0, 85, 170], [255, 255, 0]], [[0, 0, 0], [0, 0, 0]]], dtype=torch.float32)[:, None] / 255
    torch.testing.assert_close(coding, expected)
    # A crop keeps the full image's levels when given its segment count (1 segment alone would be 255).
    torch.testing.assert_close(grayscale_segment_coding(label_map[:1, :, :2], num_segments=3), expected[:1, :, :, :2])
    with pytest.raises(ValueError, match="exceeds"):
        grayscale_segment_coding(label_map, num_segments=2)


def test_drop_masks_deterministic_and_whole_regions() -> None:
    # 5000 regions of 2 pixels in each of two samples.
    label_map = (torch.arange(10000).reshape(1, 100, 100) // 2 + 1).repeat(2, 1, 1)
    dropped = drop_masks(label_map, 0.3, torch.Generator().manual_seed(0))
    again = drop_masks(label_map, 0.3, torch.Generator().manual_seed(0))
    other = drop_masks(label_map, 0.3, torch.Generator().manual_seed(1))
    assert torch.equal(dropped, again) and not torch.equal(dropped, other)
    assert bool(((dropped == 0) | (dropped == label_map)).all())
    pairs = dropped.reshape(2, -1, 2)
    assert torch.equal(pairs[..., 0] == 0, pairs[..., 1] == 0)  # regions dropped whole
    fraction = (pairs[..., 0] == 0).double().mean(dim=1)
    assert torch.allclose(fraction, torch.full((2,), 0.3, dtype=torch.float64), atol=0.03)  # ~4.5 sigma
    assert not torch.equal(dropped[0], dropped[1])  # independent per sample
    assert torch.equal(drop_masks(label_map, 0.0), label_map)
    assert not drop_masks(label_map, 1.0).any()
    with pytest.raises(ValueError):
        drop_masks(label_map, 1.5)


def test_resample_prior_features_geometry() -> None:
    features = torch.randn(1, 4, 8, 10, generator=torch.Generator().manual_seed(3))
    full = resample_prior_features(features, (32, 40), (16, 20))
    torch.testing.assert_close(full, F.interpolate(features, size=(16, 20), mode="bilinear", align_corners=False))
    # A window's sampling is the matching crop of the whole image's sampling on the same grid.
    window = resample_prior_features(features, (32, 40), (5, 7), region=(6.0, 10.0, 10.0, 14.0))
    torch.testing.assert_close(window, full[..., 3:8, 5:12], atol=1e-6, rtol=0)
