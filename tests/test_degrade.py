"""Tests of the degradation engine (robustprior.data.degrade)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from robustprior.data.degrade import DEGRADATIONS, RandomDegradation, degrade, displace_pixels

NON_RANDOM_KINDS = {"identity", "resampling_blur"}
RANDOM_KINDS = [kind for kind in DEGRADATIONS if kind not in NON_RANDOM_KINDS]
CHANGING_KINDS = [kind for kind in DEGRADATIONS if kind != "identity"]
# Kinds whose damage (PSNR drop against the clean image) grows with severity for every seed.
# color_jitter draws factors either side of 1 and frosted glass rounds its integer displacement,
# so neither is monotone in PSNR.
MONOTONE_KINDS = [kind for kind in CHANGING_KINDS if kind not in {"color_jitter", "frosted_glass_blur"}]


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB (inf for identical images)."""
    mean_squared_error = np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2)
    return float("inf") if mean_squared_error == 0 else float(10 * np.log10(255**2 / mean_squared_error))


@pytest.fixture(scope="module")
def textured_image() -> np.ndarray:
    """Astronaut resized to 96x128 (non-square on purpose), read-only so mutation fails loudly."""
    image = cv2.resize(data.astronaut(), (128, 96), interpolation=cv2.INTER_AREA)
    image.setflags(write=False)
    return image


def constant_image(level: int, height: int = 64, width: int = 80) -> np.ndarray:
    return np.full((height, width, 3), level, np.uint8)


# --------------------------------------------------------------------------- every kind


def test_kind_list() -> None:
    assert len(DEGRADATIONS) == 16
    assert len(set(DEGRADATIONS)) == 16
    assert DEGRADATIONS[0] == "identity"


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_deterministic_and_shape_kept(kind: str, textured_image: np.ndarray) -> None:
    first = degrade(textured_image, kind, seed=7)
    second = degrade(textured_image, kind, seed=7)
    assert first.shape == textured_image.shape
    assert first.dtype == np.uint8
    assert first.tobytes() == second.tobytes()


@pytest.mark.parametrize("kind", RANDOM_KINDS)
def test_different_seeds_differ(kind: str, textured_image: np.ndarray) -> None:
    assert not np.array_equal(degrade(textured_image, kind, seed=0), degrade(textured_image, kind, seed=1))


@pytest.mark.parametrize("kind", CHANGING_KINDS)
def test_image_is_changed(kind: str, textured_image: np.ndarray) -> None:
    for seed in range(3):
        assert not np.array_equal(degrade(textured_image, kind, seed=seed), textured_image)


def test_identity_returns_equal_copy(textured_image: np.ndarray) -> None:
    result = degrade(textured_image, "identity", seed=0)
    assert np.array_equal(result, textured_image)
    assert result is not textured_image
    assert not np.shares_memory(result, textured_image)


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_non_contiguous_input_matches_contiguous(kind: str, textured_image: np.ndarray) -> None:
    mirrored_view = textured_image[:, ::-1]
    contiguous_copy = np.ascontiguousarray(mirrored_view)
    assert np.array_equal(degrade(mirrored_view, kind, 3), degrade(contiguous_copy, kind, 3))


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_tiny_images(kind: str) -> None:
    tiny = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for image in (tiny, tiny[:1, :1]):
        result = degrade(image, kind, seed=0)
        assert result.shape == image.shape and result.dtype == np.uint8


def test_iso_noise_alias(textured_image: np.ndarray) -> None:
    assert np.array_equal(degrade(textured_image, "ISO_noise", 5), degrade(textured_image, "iso_noise", 5))


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_brightness_closed_form(seed: int, textured_image: np.ndarray) -> None:
    factor = np.random.default_rng(seed).uniform(0.6, 0.8)
    expected = np.clip(np.rint(textured_image * factor), 0, 255)
    result = degrade(textured_image, "brightness", seed)
    assert np.abs(result.astype(np.float64) - expected).max() <= 1
    bright = textured_image >= 50
    ratio = result[bright] / textured_image[bright].astype(np.float64)
    assert ratio.min() >= 0.6 - 0.5 / 50 and ratio.max() <= 0.8 + 0.5 / 50


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contrast_closed_form(seed: int, textured_image: np.ndarray) -> None:
    gain = np.random.default_rng(seed).uniform(1.6, 1.7)
    assert 1.6 <= gain <= 1.7
    expected = np.clip(np.rint((textured_image.astype(np.float64) - 128) * gain + 128), 0, 255)
    result = degrade(textured_image, "contrast", seed)
    assert np.abs(result.astype(np.float64) - expected).max() <= 1


def test_resampling_blur_keeps_constant_image() -> None:
    image = constant_image(77, 61, 83)
    assert np.array_equal(degrade(image, "resampling_blur", 0), image)


def test_resampling_blur_removes_fine_detail() -> None:
    checkerboard = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    result = degrade(np.repeat(checkerboard[..., None], 3, axis=2), "resampling_blur", 0)
    assert result.std() < 0.1 * checkerboard.std()


@pytest.mark.parametrize("seed", [0, 1])
def test_gauss_noise_variance_on_mid_grey(seed: int) -> None:
    image = constant_image(128, 96, 128)
    configured_variance = np.random.default_rng(seed).uniform(250, 260)
    noise = degrade(image, "gauss_noise", seed).astype(np.float64) - 128
    assert np.abs(noise).max() < 127  # no clipping
    standard_error = configured_variance * np.sqrt(2 / noise.size)
    assert abs(noise.var() - (configured_variance + 1 / 12)) < 5 * standard_error
    assert abs(noise.mean()) < 0.5
    channels = noise.reshape(-1, 3).T
    assert np.abs(np.corrcoef(channels)[np.triu_indices(3, 1)]).max() < 0.05  # independent per channel


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_motion_blur_preserves_constant_image(seed: int) -> None:
    image = constant_image(201)
    result = degrade(image, "motion_blur", seed)
    assert result.mean() == pytest.approx(201, abs=0.01)
    assert np.array_equal(result, image)


def test_motion_blur_smears_an_impulse_along_a_line() -> None:
    image = np.zeros((71, 71, 3), np.uint8)
    image[35, 35] = 255
    result = degrade(image, "motion_blur", 0)[..., 0]
    rows, columns = np.nonzero(result)
    assert 1 < rows.size
    extent = np.hypot(rows.max() - rows.min(), columns.max() - columns.min())
    assert extent <= 35 + 2  # kernel length is at most 35 px at severity 1


@pytest.mark.parametrize("seed", [0, 1])
def test_compression_is_a_low_quality_jpeg(seed: int, textured_image: np.ndarray) -> None:
    quality = int(np.random.default_rng(seed).integers(5, 11))
    assert 5 <= quality <= 10
    result = degrade(textured_image, "compression", seed)
    bgr = cv2.cvtColor(textured_image, cv2.COLOR_RGB2BGR)
    _, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert np.array_equal(result, cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    _, encoded_high = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    high_quality = cv2.cvtColor(cv2.imdecode(encoded_high, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert psnr(result, textured_image) < psnr(high_quality, textured_image) - 10


@pytest.mark.parametrize("kind", ["frosted_glass_blur", "elastic_transform", "zoom_blur"])
def test_geometric_kinds_keep_constant_image(kind: str) -> None:
    image = constant_image(93)
    assert np.array_equal(degrade(image, kind, 4), image)


def test_displace_pixels_moves_within_bound() -> None:
    rows, columns = np.indices((120, 200))
    coordinates = np.stack([rows, columns], axis=-1)  # each pixel holds its own (row, column)
    displaced = displace_pixels(coordinates, np.random.default_rng(0), 3)
    row_shift = displaced[..., 0] - rows
    column_shift = displaced[..., 1] - columns
    assert np.abs(row_shift).max() == 3 and np.abs(column_shift).max() == 3
    assert (row_shift != 0).mean() > 0.5  # most pixels actually move
    assert displaced[..., 0].min() >= 0 and displaced[..., 0].max() <= 119  # clipped at the borders
    assert displaced[..., 1].min() >= 0 and displaced[..., 1].max() <= 199
    assert set(np.unique(row_shift)) == set(range(-3, 4))  # all offsets are used


def test_displace_pixels_keeps_an_impulse_near_its_origin() -> None:
    impulse = np.zeros((41, 41, 3), np.float32)
    impulse[20, 20] = 1.0
    for seed in range(20):
        rows, columns, _ = np.nonzero(displace_pixels(impulse, np.random.default_rng(seed), 3))
        assert np.all(np.abs(rows - 20) <= 3) and np.all(np.abs(columns - 20) <= 3)


def test_displace_pixels_zero_displacement_is_identity() -> None:
    image = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    assert np.array_equal(displace_pixels(image, np.random.default_rng(1), 0), image)
    with pytest.raises(ValueError, match="max_displacement"):
        displace_pixels(image, np.random.default_rng(1), -1)


# --------------------------------------------------------------------------- severity


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_zero_severity_is_near_identity(kind: str, textured_image: np.ndarray) -> None:
    assert psnr(degrade(textured_image, kind, 0, severity=0.0), textured_image) > 45


@pytest.mark.parametrize("kind", MONOTONE_KINDS)
def test_higher_severity_degrades_more(kind: str, textured_image: np.ndarray) -> None:
    for seed in range(2):
        quality = [
            psnr(degrade(textured_image, kind, seed, severity), textured_image) for severity in (0.5, 1, 2)
        ]
        assert quality[0] > quality[1] > quality[2], quality


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("bad_image", "expected_message"),
    [
        (np.zeros((32, 32), np.uint8), r"shape \(32, 32\).*HxWx3 uint8 RGB.*grayscale"),
        (np.zeros((32, 32, 4), np.uint8), r"shape \(32, 32, 4\).*HxWx3 uint8 RGB.*RGBA"),
        (np.zeros((32, 32, 1), np.uint8), r"shape \(32, 32, 1\).*HxWx3 uint8 RGB"),
        (np.zeros((32, 32, 3), np.float32), r"dtype float32.*HxWx3 uint8 RGB"),
        (np.zeros((32, 32, 3), np.uint16), r"dtype uint16.*HxWx3 uint8 RGB"),
        (np.zeros((0, 32, 3), np.uint8), r"empty"),
    ],
)
def test_bad_images_raise(bad_image: np.ndarray, expected_message: str) -> None:
    with pytest.raises(ValueError, match=expected_message):
        degrade(bad_image, "gauss_noise", 0)


def test_unknown_kind_lists_valid_kinds(textured_image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown degradation kind 'blur'.*gauss_noise.*frosted_glass_blur"):
        degrade(textured_image, "blur", 0)


@pytest.mark.parametrize("severity", [-0.1, float("nan"), float("inf")])
def test_bad_severity_raises(severity: float, textured_image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="severity"):
        degrade(textured_image, "motion_blur", 0, severity=severity)


# --------------------------------------------------------------------------- RandomDegradation


def test_random_degradation_deterministic_and_valid(textured_image: np.ndarray) -> None:
    augment = RandomDegradation()
    names = set()
    for seed in range(40):
        image, name = augment(textured_image, seed)
        again, same_name = augment(textured_image, seed)
        assert name == same_name and image.tobytes() == again.tobytes()
        assert name in DEGRADATIONS
        assert image.shape == textured_image.shape and image.dtype == np.uint8
        names.add(name)
    assert len(names) >= 8


def test_random_degradation_name_matches_what_was_applied(textured_image: np.ndarray) -> None:
    augment = RandomDegradation(kinds=["contrast", "brightness"])
    names = set()
    for seed in range(10):
        image, name = augment(textured_image, seed)
        names.add(name)
        # brightness scales every pixel by 0.6-0.8; contrast keeps pixels at 128 near 128
        darkened = image[textured_image > 0] <= 0.8 * textured_image[textured_image > 0] + 0.5
        assert darkened.all() == (name == "brightness")
    assert names == {"contrast", "brightness"}


def test_random_degradation_identity_probability(textured_image: np.ndarray) -> None:
    always = RandomDegradation(p_identity=1.0)
    never = RandomDegradation(p_identity=0.0)
    for seed in range(10):
        image, name = always(textured_image, seed)
        assert name == "identity" and np.array_equal(image, textured_image)
        assert never(textured_image, seed)[1] != "identity"


def test_random_degradation_several_ops(textured_image: np.ndarray) -> None:
    kinds = ("gauss_noise", "motion_blur", "ISO_noise")
    augment = RandomDegradation(kinds=kinds, max_ops=3, severity=(0.5, 1.5))
    op_counts = set()
    for seed in range(30):
        _, name = augment(textured_image, seed)
        ops = name.split("+")
        assert len(set(ops)) == len(ops) and set(ops) <= {"gauss_noise", "motion_blur", "iso_noise"}
        op_counts.add(len(ops))
    assert op_counts == {1, 2, 3}


@pytest.mark.parametrize(
    "arguments",
    [
        {"kinds": []},
        {"kinds": ["snowfall"]},
        {"kinds": ["identity"], "p_identity": 0.5},
        {"p_identity": 1.5},
        {"severity": -1.0},
        {"severity": (2.0, 1.0)},
        {"max_ops": 0},
    ],
)
def test_random_degradation_bad_arguments(arguments: dict) -> None:
    with pytest.raises(ValueError):
        RandomDegradation(**arguments)


# --------------------------------------------------------------------------- reference size
from robustprior.data.degrade import SPATIAL_KINDS, elastic_transform, motion_blur, spatial_scale  # noqa: E402


def test_reference_size_of_the_image_itself_changes_nothing(textured_image: np.ndarray) -> None:
    side = max(textured_image.shape[:2])
    for kind in DEGRADATIONS:
        np.testing.assert_array_equal(degrade(textured_image, kind, 5, reference_size=side),
                                      degrade(textured_image, kind, 5))


def test_reference_size_scales_only_spatial_kinds(textured_image: np.ndarray) -> None:
    side = max(textured_image.shape[:2])
    assert spatial_scale(textured_image.shape, 4 * side) == 0.25
    for kind in DEGRADATIONS:
        scaled = degrade(textured_image, kind, 5, reference_size=4 * side)
        if kind in SPATIAL_KINDS:
            assert psnr(scaled, textured_image) > psnr(degrade(textured_image, kind, 5), textured_image)
        else:
            np.testing.assert_array_equal(scaled, degrade(textured_image, kind, 5))


def test_scaled_motion_blur_is_the_release_blur_with_a_shorter_line(textured_image: np.ndarray) -> None:
    # the motion-blur length is U(3, 35) * severity * scale, so scale 1/2 equals severity 1/2
    side = max(textured_image.shape[:2])
    np.testing.assert_array_equal(degrade(textured_image, "motion_blur", 9, reference_size=2 * side),
                                  motion_blur(textured_image, np.random.default_rng(9), 0.5))


def test_scaled_elastic_transform_scales_alpha_and_sigma(textured_image: np.ndarray) -> None:
    # by hand: displacement = GaussianBlur(U(-1, 1), sigma 10 k) * 100 k^2
    k, seed = 0.5, 4
    rng = np.random.default_rng(seed)
    height, width = textured_image.shape[:2]
    shifts = [cv2.GaussianBlur(rng.uniform(-1, 1, (height, width)).astype(np.float32), (0, 0), sigmaX=10 * k,
                               borderType=cv2.BORDER_REFLECT_101) * np.float32(100 * k * k) for _ in range(2)]
    rows, columns = np.indices((height, width), dtype=np.float32)
    expected = cv2.remap(textured_image, columns + shifts[0], rows + shifts[1], interpolation=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT_101)
    np.testing.assert_array_equal(elastic_transform(textured_image, np.random.default_rng(seed), 1.0, k), expected)
    np.testing.assert_array_equal(degrade(textured_image, "elastic_transform", seed, reference_size=2 * max(height, width)),
                                  expected)


def test_random_degradation_reference_size(textured_image: np.ndarray) -> None:
    side = max(textured_image.shape[:2])
    raw = RandomDegradation(["motion_blur"], p_identity=0.0)
    scaled = RandomDegradation(["motion_blur"], p_identity=0.0, reference_size=2 * side)
    assert "reference_size" not in repr(raw) and "reference_size" in repr(scaled)
    _, _, op_seed = scaled.plan(3)[0]
    np.testing.assert_array_equal(scaled(textured_image, 3)[0],
                                  degrade(textured_image, "motion_blur", op_seed, reference_size=2 * side))
    with pytest.raises(ValueError, match="reference_size"):
        RandomDegradation(reference_size=0)
