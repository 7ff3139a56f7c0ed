"""Degradation engine: the 15 image degradations of RobustSAM's training data, plus identity.

Every kind is a small function ``kind(image, rng, severity) -> image`` working on an HxWx3
uint8 RGB image, vectorised with numpy/OpenCV. :func:`degrade` validates the input, seeds
``np.random.default_rng(seed)`` and dispatches; :class:`RandomDegradation` is the random
compose used for training. Random parameters come only from that generator (never from
numpy's global state or OpenCV's RNG), so ``(image, kind, seed, severity)`` fixes the output
byte for byte.

At ``severity=1`` the parameter ranges are those of the official release's ``augment.py``;
``severity=0`` gives (near) the input and larger values degrade more. ``U(a, b)`` is a
uniform draw.

=================== ============================================================ ============================
kind                parameters at severity 1                                     what severity ``s`` scales
=================== ============================================================ ============================
identity            none (returns a copy)                                        nothing
snow                snow point U(0.3, 0.7): HLS lightness below                  threshold, flake opacity x s
                    ``255/2 * point + 255/3`` is multiplied by 2.5
                    (albumentations RandomSnow); snowflakes cover 35 % of the
                    image, flake size U(0.6, 0.8), speed U(0.007, 0.03), tilt
                    U(-30, 30) deg (imgaug Snowflakes)
fog                 fog coef U(0.1, 0.2): ``round(1000 * coef)`` white haze      every opacity x s
                    blobs of radius ``coef * min(H, W) / 3``, each with alpha
                    0.08, blurred (albumentations RandomFog); plus a fractal
                    cloud layer of opacity ``2 * coef * (0.5 + noise)`` and grey
                    level U(220, 255) (imgaug Fog); layers built at <= 128 px
                    and upsampled
rain                drop size U(0.4, 0.5), speed U(0.05, 0.1), streaks cover     streak opacity x s
                    U(0.03, 0.14) of the image, tilt U(-15, 15) deg
                    (imgaug Rain)
gauss_noise         variance U(250, 260), independent per channel                standard deviation x s
iso_noise           color shift U(0.4, 0.5), intensity U(0.7, 0.8)               intensity x s
                    (albumentations ISONoise); alias ``ISO_noise``
impulse_noise       multiplicative noise: every element x U(1.4, 1.5)            ``multiplier - 1`` x s
                    (albumentations MultiplicativeNoise, elementwise,
                    per channel)
resampling_blur     downscale 4x (area), upscale back (bilinear)                 factor ``1 + 3 s``
motion_blur         line kernel of length U(3, 35) px, angle U(0, 180) deg       length x s
zoom_blur           zooms ``arange(1, 1.33, step)``, step U(0.05, 0.07),         ``max - 1`` and step x s
                    averaged with the image (imagecorruptions zoom_blur)
color_jitter        brightness, saturation factors U(0.3, 1.7), contrast         ``factor - 1`` and hue x s
                    U(0.7, 1.3), hue shift U(-0.7, 0.7) turns (wraps), applied
                    in random order (torchvision ColorJitter)
compression         JPEG quality, integer U{5..10}                               quality ``100 - s(100 - q)``
                                                                                 (s = 0: a copy)
elastic_transform   alpha 100, sigma 10: displacement = Gaussian-blurred         alpha x s
                    U(-1, 1) field x alpha (albumentations ElasticTransform)
frosted_glass_blur  Gaussian blur sigma 0.7, then 2 rounds of random pixel       sigma x s, displacement
                    displacement up to 3 px, then blur again                     ``round(3 s)``
brightness          ``x * f``, f U(0.6, 0.8)                                     ``f = 1 - s (1 - f)``
contrast            ``(x - 128) * c + 128``, c U(1.6, 1.7)                       ``c = 1 + s (c - 1)``
=================== ============================================================ ============================

All outputs are rounded to the nearest integer and clipped to [0, 255].

Reference size. The release's spatial parameters are pixel lengths chosen for photos that SAM
resizes to 1024 px: a 35-px motion blur on a 256-px image is four times stronger relative to the
objects than on a 1024-px one. ``reference_size`` (``degrade``, ``RandomDegradation``) scales every
*spatial* length by ``spatial_scale = max(H, W) / reference_size``: the motion-blur length, the
elastic smoothing ``sigma`` and displacement (see :func:`elastic_transform`), and the frosted-glass
blur ``sigma`` and pixel displacement (rounded, at least 1 px when severity > 0). ``None`` (the default) keeps the
release's raw pixel sizes. Kinds whose parameters are already relative to the image (fog, rain and
snow layers, zoom and resampling factors) or per pixel (noise, colour, JPEG quality) are unchanged.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence

import cv2
import numpy as np

__all__ = [
    "DEGRADATIONS",
    "DEGRADATIONS_VERSION",
    "RandomDegradation",
    "SPATIAL_KINDS",
    "brightness",
    "color_jitter",
    "compression",
    "contrast",
    "degrade",
    "displace_pixels",
    "elastic_transform",
    "fog",
    "frosted_glass_blur",
    "gauss_noise",
    "identity",
    "impulse_noise",
    "iso_noise",
    "motion_blur",
    "rain",
    "resampling_blur",
    "snow",
    "spatial_scale",
    "zoom_blur",
]

_ALIASES = {"ISO_noise": "iso_noise"}

DegradationFunction = Callable[[np.ndarray, np.random.Generator, float], np.ndarray]


# --------------------------------------------------------------------------- helpers


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Rounds to the nearest integer, clips to [0, 255] and casts to uint8."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation ``sigma`` px (reflected borders); no-op for sigma <= 0."""
    if sigma <= 0:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT_101)


def _blend_towards(image: np.ndarray, level: float, opacity: np.ndarray) -> np.ndarray:
    """Per-pixel alpha blend of ``image`` (HxWx3) towards the grey ``level``; ``opacity`` is HxW."""
    alpha = np.clip(opacity, 0.0, 1.0)[..., None]
    return image.astype(np.float32) * (1.0 - alpha) + np.float32(level) * alpha


def _line_kernel(length: float, angle_degrees: float) -> np.ndarray:
    """Normalised kernel of a straight line ``length`` px long through the centre.

    ``angle_degrees`` is measured from the x axis towards +y (image rows, i.e. downwards).
    Sub-pixel lengths and angles are rendered with bilinear weights, so the blur strength
    changes smoothly with ``length``; a length of 0 gives the identity kernel.
    """
    radius = math.ceil(length / 2) + 1
    kernel = np.zeros((2 * radius + 1, 2 * radius + 1), np.float32)
    offsets = np.linspace(-length / 2, length / 2, max(2, math.ceil(4 * length)))
    angle = math.radians(angle_degrees)
    columns = radius + offsets * math.cos(angle)
    rows = radius + offsets * math.sin(angle)
    column0, row0 = np.floor(columns).astype(int), np.floor(rows).astype(int)
    column_fraction, row_fraction = columns - column0, rows - row0
    for row_step, row_weight in ((0, 1 - row_fraction), (1, row_fraction)):
        for column_step, column_weight in ((0, 1 - column_fraction), (1, column_fraction)):
            np.add.at(kernel, (row0 + row_step, column0 + column_step), row_weight * column_weight)
    return kernel / kernel.sum()


def _fractal_noise(height: int, width: int, rng: np.random.Generator, octaves: int = 4) -> np.ndarray:
    """Smooth HxW float32 noise in [0, 1]: octaves of bicubically upsampled uniform grids."""
    total = np.zeros((height, width), np.float32)
    for octave in range(octaves):
        cells = 4 * 2**octave
        grid = rng.random((cells, cells), dtype=np.float32)
        total += cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC) / 2**octave
    span = float(total.max() - total.min())
    return (total - total.min()) / span if span > 0 else np.zeros_like(total)


def _particle_layer(
    height: int,
    width: int,
    rng: np.random.Generator,
    coverage: float,
    particle_size: float,
    speed: float,
    tilt_degrees: float,
) -> np.ndarray:
    """HxW float32 opacity in [0, 1] of falling particles (snowflakes, raindrops), imgaug-style.

    Particles are seeded on a grid downscaled by ``1 - particle_size`` (so each spans about
    ``1 / (1 - particle_size)`` px), each with a Beta(0.5, 0.5) opacity, smeared into streaks
    of ``speed * min(H, W)`` px tilted ``tilt_degrees`` from vertical, then upsampled. The seed
    probability is ``coverage / streak length`` so that about ``coverage`` of the image lies
    under a particle whatever the image size and speed; overlapping streaks add up.
    """
    downscale = float(np.clip(1.0 - particle_size, 0.01, 1.0))
    small_height, small_width = max(1, round(height * downscale)), max(1, round(width * downscale))
    streak_length = speed * min(small_height, small_width)
    seed_probability = coverage / max(1.0, streak_length)
    seeds = rng.random((small_height, small_width)) < seed_probability
    opacity = np.where(seeds, rng.beta(0.5, 0.5, (small_height, small_width)), 0.0).astype(np.float32)
    streak = _line_kernel(streak_length, 90.0 + tilt_degrees) * max(1.0, streak_length)
    opacity = cv2.filter2D(opacity, -1, streak, borderType=cv2.BORDER_CONSTANT)
    opacity = cv2.resize(opacity, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(opacity, 0.0, 1.0)


def displace_pixels(image: np.ndarray, rng: np.random.Generator, max_displacement: int) -> np.ndarray:
    """Each output pixel copies the input pixel at a random offset in ``[-d, d]^2``, ``d = max_displacement``.

    Works on any HxW or HxWxC array. Offsets are drawn independently per pixel (uniform
    integers) and the source coordinates are clipped at the borders. This is the vectorised
    counterpart of the release's per-pixel loop that swaps every pixel with a random
    neighbour: a gather rather than a chain of swaps, so a pixel may be copied more than once,
    but no value ever travels further than ``d`` px per call.
    """
    if max_displacement < 0:
        raise ValueError(f"max_displacement must be >= 0, got {max_displacement}")
    height, width = image.shape[:2]
    row_offsets = rng.integers(-max_displacement, max_displacement + 1, (height, width), dtype=np.int32)
    column_offsets = rng.integers(-max_displacement, max_displacement + 1, (height, width), dtype=np.int32)
    rows = np.clip(np.arange(height, dtype=np.int32)[:, None] + row_offsets, 0, height - 1)
    columns = np.clip(np.arange(width, dtype=np.int32)[None, :] + column_offsets, 0, width - 1)
    # np.take on flat pixel indices is several times faster than image[rows, columns]
    pixels = image.reshape(height * width, *image.shape[2:])
    return np.take(pixels, rows * width + columns, axis=0)


# --------------------------------------------------------------------------- degradations


def identity(image: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Returns a copy of the image."""
    return image.copy()


def snow(image: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Snow-covered ground (dark HLS lightness x 2.5 below a threshold) plus falling snowflakes."""
    snow_point = rng.uniform(0.3, 0.7)
    threshold = severity * (snow_point * 255 / 2 + 255 / 3)
    hls = cv2.cvtColor(image, cv2.COLOR_RGB2HLS).astype(np.float32)
    whitened = hls[..., 1] < threshold
    hls[..., 1] = np.where(whitened, np.minimum(hls[..., 1] * 2.5, 255), hls[..., 1])
    ground = np.where(whitened[..., None], cv2.cvtColor(_to_uint8(hls), cv2.COLOR_HLS2RGB), image)
    height, width = image.shape[:2]
    flakes = _particle_layer(
        height,
        width,
        rng,
        coverage=0.35,
        particle_size=rng.uniform(0.6, 0.8),
        speed=rng.uniform(0.007, 0.03),
        tilt_degrees=rng.uniform(-30, 30),
    )
    return _to_uint8(_blend_towards(ground, 255, severity * flakes))


def fog(image: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """White haze blobs (albumentations RandomFog) under a fractal grey cloud layer (imgaug Fog).

    Both opacity layers are smooth, so they are computed on a grid of at most 128 px on the
    short side (blob radius and blur scaled with it) and upsampled bilinearly.
    """
    height, width = image.shape[:2]
    scale = min(1.0, 128 / min(height, width))
    layer_height, layer_width = max(1, round(height * scale)), max(1, round(width * scale))
    fog_coef = rng.uniform(0.1, 0.2)
    blob_alpha = 0.08
    blob_count = round(1000 * fog_coef)
    blob_radius = max(1, round(fog_coef * min(layer_height, layer_width) / 3))
    centres = np.zeros((layer_height, layer_width), np.float32)
    blob_rows = rng.integers(0, layer_height, blob_count)
    blob_columns = rng.integers(0, layer_width, blob_count)
    np.add.at(centres, (blob_rows, blob_columns), 1.0)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * blob_radius + 1,) * 2).astype(np.float32)
    blobs_over_pixel = np.maximum(cv2.filter2D(centres, -1, disk, borderType=cv2.BORDER_CONSTANT), 0.0)
    haze = 1.0 - (1.0 - min(1.0, severity * blob_alpha)) ** blobs_over_pixel
    haze = _gaussian_blur(haze, min(layer_height, layer_width) / 30)
    cloud = severity * 2 * fog_coef * (0.5 + _fractal_noise(layer_height, layer_width, rng))
    haze, cloud = (
        cv2.resize(layer, (width, height), interpolation=cv2.INTER_LINEAR) for layer in (haze, cloud)
    )
    hazy = _blend_towards(image, 255, haze)
    return _to_uint8(_blend_towards(hazy, rng.uniform(220, 255), cloud))


def rain(image: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Falling rain streaks blended towards white."""
    height, width = image.shape[:2]
    streaks = _particle_layer(
        height,
        width,
        rng,
        coverage=rng.uniform(0.03, 0.14),
        particle_size=rng.uniform(0.4, 0.5),
        speed=rng.uniform(0.05, 0.1),
        tilt_degrees=rng.uniform(-15, 15),
    )
    return _to_uint8(_blend_towards(image, 255, severity * streaks))


def gauss_noise(image: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Additive zero-mean Gaussian noise, variance ``U(250, 260) * severity**2``, independent per channel."""
    standard_deviation = math.sqrt(rng.uniform(250, 260)) * severity
    noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(standard_deviation)
    return _to_uint8(image.astype(np.float32) + noise)


def iso_noise(image: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Camera sensor noise: Gaussian hue jitter and Poisson lightness noise in HLS space.

    Hue noise has standard deviation ``color_shift * 360 * intensity`` degrees; lightness gains
    ``Poisson(std(L) * intensity * 255) / 255 * (1 - L)`` (L in [0, 1]), as albumentations' ISONoise.
    """
    color_shift = rng.uniform(0.4, 0.5)
    intensity = rng.uniform(0.7, 0.8) * severity
    hls = cv2.cvtColor(image.astype(np.float32) / 255, cv2.COLOR_RGB2HLS)
    hue, lightness = hls[..., 0], hls[..., 1]
    lightness_noise = rng.poisson(float(lightness.std()) * intensity * 255, lightness.shape) / 255
    hue_noise = rng.normal(0.0, color_shift * 360 * intensity, hue.shape)
    hls[..., 0] = np.mod(hue + hue_noise, 360)
    hls[..., 1] = np.clip(lightness + lightness_noise * (1 - lightness), 0, 1)
    return _to_uint8(cv2.cvtColor(hls, cv2.COLOR_HLS2RGB) * 255)


def impulse_noise(image: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Multiplicative noise: each pixel and channel is multiplied by ``1 + severity * (U(1.4, 1.5) - 1)``.

    The release calls this kind impulse noise but configures it as multiplicative noise with
    multipliers in [1.4, 1.5] (albumentations MultiplicativeNoise, elementwise, per channel).
    """
    multiplier = 1.0 + np.float32(severity) * (rng.uniform(1.4, 1.5, image.shape).astype(np.float32) - 1.0)
    return _to_uint8(image.astype(np.float32) * multiplier)


def resampling_blur(image: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Downscales by ``1 + 3 * severity`` (area averaging) and upscales back (bilinear). Not random."""
    height, width = image.shape[:2]
    factor = 1.0 + 3.0 * severity
    small_size = (max(1, round(width / factor)), max(1, round(height / factor)))
    small = cv2.resize(image, small_size, interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def motion_blur(image: np.ndarray, rng: np.random.Generator, severity: float, spatial_scale: float = 1.0) -> np.ndarray:
    """Blur along a random straight line of length ``U(3, 35) * severity * spatial_scale`` px and angle U(0, 180) deg."""
    length = rng.uniform(3, 35) * severity * spatial_scale
    kernel = _line_kernel(length, rng.uniform(0, 180))
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


def zoom_blur(image: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Average of the image and centre zooms ``arange(1, 1 + 0.33 s, step s)``, step U(0.05, 0.07)."""
    step = rng.uniform(0.05, 0.07) * severity
    if step <= 0:
        return image.copy()
    height, width = image.shape[:2]
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    zoom_factors = np.arange(1.0, 1.0 + 0.33 * severity, step)
    total = image.astype(np.float32)
    for factor in zoom_factors:
        zoom = np.float32([[factor, 0, (1 - factor) * centre_x], [0, factor, (1 - factor) * centre_y]])
        total += cv2.warpAffine(
            image, zoom, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
        )
    return _to_uint8(total / (len(zoom_factors) + 1))


def color_jitter(image: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Brightness, contrast, saturation and hue jitter in a random order, as torchvision's ColorJitter.

    Factors ``1 + severity * (U(1 - j, 1 + j) - 1)`` with j = 0.7 (brightness, saturation) and
    0.3 (contrast); the hue shift ``severity * U(-0.7, 0.7)`` is in turns of the colour wheel and
    wraps around (torchvision caps hue at 0.5; a shift of 0.7 equals -0.3). Contrast blends with
    the mean grey level, saturation with the per-pixel grey (ITU-R 601 luma); each step clips.
    """
    brightness_factor = 1 + severity * (rng.uniform(0.3, 1.7) - 1)
    contrast_factor = 1 + severity * (rng.uniform(0.7, 1.3) - 1)
    saturation_factor = 1 + severity * (rng.uniform(0.3, 1.7) - 1)
    hue_shift_turns = severity * rng.uniform(-0.7, 0.7)

    def grey(rgb: np.ndarray) -> np.ndarray:
        return (rgb @ np.float32([0.299, 0.587, 0.114]))[..., None]

    def adjust_brightness(rgb: np.ndarray) -> np.ndarray:
        return rgb * brightness_factor

    def adjust_contrast(rgb: np.ndarray) -> np.ndarray:
        mean_grey = grey(rgb).mean()
        return (rgb - mean_grey) * contrast_factor + mean_grey

    def adjust_saturation(rgb: np.ndarray) -> np.ndarray:
        pixel_grey = grey(rgb)
        return (rgb - pixel_grey) * saturation_factor + pixel_grey

    def shift_hue(rgb: np.ndarray) -> np.ndarray:
        hsv = cv2.cvtColor(rgb / 255, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = np.mod(hsv[..., 0] + 360 * hue_shift_turns, 360)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255

    adjustments = (adjust_brightness, adjust_contrast, adjust_saturation, shift_hue)
    jittered = image.astype(np.float32)
    for index in rng.permutation(len(adjustments)):
        jittered = np.clip(adjustments[index](jittered), 0, 255).astype(np.float32)
    return _to_uint8(jittered)


def compression(image: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """JPEG round trip (4:2:0 chroma) at quality ``round(100 - severity * (100 - q))``, q integer in [5, 10].

    The quality is clipped to [1, 100]. Severity 0 returns an unchanged copy: even quality 100
    loses colour detail to chroma subsampling.
    """
    release_quality = int(rng.integers(5, 11))
    if severity == 0:
        return image.copy()
    quality = int(np.clip(round(100 - severity * (100 - release_quality)), 1, 100))
    encoded_ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not encoded_ok:
        raise RuntimeError("OpenCV failed to JPEG-encode the image")
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def elastic_transform(image: np.ndarray, rng: np.random.Generator, severity: float,
                      spatial_scale: float = 1.0) -> np.ndarray:
    """Elastic warp: displacement = Gaussian blur (sigma ``10 k``) of per-pixel U(-1, 1) noise x
    ``100 * severity * k**2`` px, ``k = spatial_scale``.

    Sampling is bilinear with reflected borders (albumentations/Simard et al. convention). The
    ``k**2``: a field of the release's parameters on a 1/k times larger image, shrunk to this one, has
    k times shorter displacements, but blurring per-pixel noise with a k times smaller sigma leaves
    1/k times larger values (fewer pixels averaged), so alpha shrinks by k twice.
    """
    height, width = image.shape[:2]
    alpha, sigma = 100.0 * severity * spatial_scale**2, 10.0 * spatial_scale
    column_shift, row_shift = (
        _gaussian_blur(rng.uniform(-1, 1, (height, width)).astype(np.float32), sigma) * np.float32(alpha)
        for _ in range(2)
    )
    rows, columns = np.indices((height, width), dtype=np.float32)
    return cv2.remap(
        image,
        columns + column_shift,
        rows + row_shift,
        interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )


def frosted_glass_blur(image: np.ndarray, rng: np.random.Generator, severity: float,
                       spatial_scale: float = 1.0) -> np.ndarray:
    """Blur (sigma ``0.7 s k``), displace pixels twice by up to ``round(3 s k)`` px, blur again
    (``k = spatial_scale``; the displacement is at least 1 px when ``s k > 0``).

    Vectorised version of the release's glass blur; see :func:`displace_pixels`.
    """
    sigma, iterations = 0.7 * severity * spatial_scale, 2
    max_displacement = round(3 * severity * spatial_scale)
    if severity * spatial_scale > 0:
        max_displacement = max(1, max_displacement)
    glass = _gaussian_blur(image.astype(np.float32), sigma)
    for _ in range(iterations):
        glass = displace_pixels(glass, rng, max_displacement)
    return _to_uint8(_gaussian_blur(glass, sigma))


def brightness(image: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Scales intensities by ``max(0, 1 - severity * (1 - f))``, f ~ U(0.6, 0.8)."""
    factor = max(0.0, 1.0 - severity * (1.0 - rng.uniform(0.6, 0.8)))
    return _to_uint8(image.astype(np.float32) * np.float32(factor))


def contrast(image: np.ndarray, rng: np.random.Generator, severity: float) -> np.ndarray:
    """``(x - 128) * c + 128`` with ``c = 1 + severity * (U(1.6, 1.7) - 1)``."""
    gain = 1.0 + severity * (rng.uniform(1.6, 1.7) - 1.0)
    return _to_uint8((image.astype(np.float32) - 128) * np.float32(gain) + 128)


_DEGRADATION_FUNCTIONS: dict[str, DegradationFunction] = {
    "identity": identity,
    "snow": snow,
    "fog": fog,
    "rain": rain,
    "gauss_noise": gauss_noise,
    "iso_noise": iso_noise,
    "impulse_noise": impulse_noise,
    "resampling_blur": resampling_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "color_jitter": color_jitter,
    "compression": compression,
    "elastic_transform": elastic_transform,
    "frosted_glass_blur": frosted_glass_blur,
    "brightness": brightness,
    "contrast": contrast,
}
DEGRADATIONS: tuple[str, ...] = tuple(_DEGRADATION_FUNCTIONS)
"""The 16 kinds, identity first, in the order of the module table."""

SPATIAL_KINDS: frozenset[str] = frozenset({"motion_blur", "elastic_transform", "frosted_glass_blur"})
"""Kinds with pixel-length parameters, scaled by ``reference_size`` (module docstring)."""

DEGRADATIONS_VERSION = 1
"""Bump whenever any kind's output for a given (image, seed, severity) changes: cached features of
degraded images (:mod:`robustprior.training.robustsam`) are keyed by it, so old entries stop being used."""


# --------------------------------------------------------------------------- public entry points


def _canonical_kind(kind: str) -> str:
    """Resolves aliases; raises ValueError listing the valid kinds for an unknown one."""
    canonical = _ALIASES.get(kind, kind)
    if canonical not in _DEGRADATION_FUNCTIONS:
        aliases = ", ".join(f"{alias!r} -> {target!r}" for alias, target in _ALIASES.items())
        raise ValueError(
            f"unknown degradation kind {kind!r}; valid kinds: {', '.join(DEGRADATIONS)} (aliases: {aliases})"
        )
    return canonical


def _validated_image(image: np.ndarray) -> np.ndarray:
    """Checks for an HxWx3 uint8 RGB array and returns it C-contiguous."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected an HxWx3 uint8 RGB numpy array, got {type(image).__name__}")
    expected = "an HxWx3 uint8 RGB image is expected"
    if image.ndim != 3 or image.shape[2] != 3:
        hint = ""
        if image.ndim == 2:
            hint = " (grayscale? stack it to RGB with np.repeat(image[..., None], 3, axis=2))"
        elif image.ndim == 3 and image.shape[2] == 4:
            hint = " (RGBA? drop the alpha channel with image[..., :3])"
        raise ValueError(f"got an image of shape {image.shape}; {expected}{hint}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"got an empty image of shape {image.shape}; {expected}")
    if image.dtype != np.uint8:
        hint = ""
        if np.issubdtype(image.dtype, np.floating):
            hint = " (float in [0, 1]? convert with (image * 255).round().astype(np.uint8))"
        raise ValueError(f"got an image of dtype {image.dtype}; {expected}{hint}")
    return np.ascontiguousarray(image)


def spatial_scale(image_shape: Sequence[int], reference_size: float | None) -> float:
    """``max(H, W) / reference_size`` for an ``H x W (x C)`` image, or 1 when ``reference_size`` is None."""
    if reference_size is None:
        return 1.0
    if not math.isfinite(reference_size) or reference_size <= 0:
        raise ValueError(f"reference_size must be a positive number of pixels or None, got {reference_size!r}")
    return max(image_shape[0], image_shape[1]) / float(reference_size)


def _apply(kind: str, image: np.ndarray, rng: np.random.Generator, severity: float, scale: float) -> np.ndarray:
    """One canonical kind; ``scale`` reaches only the kinds with spatial parameters."""
    function = _DEGRADATION_FUNCTIONS[kind]
    return function(image, rng, severity, scale) if kind in SPATIAL_KINDS else function(image, rng, severity)


def _validated_severity(severity: float) -> float:
    """Checks that severity is a finite number >= 0."""
    if not math.isfinite(severity) or severity < 0:
        raise ValueError(f"severity must be a finite number >= 0, got {severity!r}")
    return float(severity)


def degrade(image: np.ndarray, kind: str, seed: int, severity: float = 1.0,
            reference_size: float | None = None) -> np.ndarray:
    """Applies degradation ``kind`` to an HxWx3 uint8 RGB image; returns a new array of the same shape.

    Random parameters are drawn from ``np.random.default_rng(seed)``, so the result depends only
    on the arguments. ``severity`` scales the strength (see the module table): 1 reproduces the
    release's ranges, 0 gives (near) the input. ``reference_size`` scales pixel lengths to the
    image (module docstring; None: the release's raw pixels). Raises ValueError for an unknown
    kind, an image that is not HxWx3 uint8, a negative or non-finite severity or a non-positive
    reference size; TypeError for a non-array.
    """
    kind = _canonical_kind(kind)
    image = _validated_image(image)
    severity = _validated_severity(severity)
    return _apply(kind, image, np.random.default_rng(seed), severity, spatial_scale(image.shape, reference_size))


class RandomDegradation:
    """Random compose for training: applies 1..``max_ops`` distinct kinds drawn from ``kinds``.

    ``p_identity`` is the probability of returning the image unchanged (named "identity"); with
    ``None`` identity is just one more equally likely kind when it is in ``kinds``. ``severity``
    is a fixed value or a ``(low, high)`` range drawn uniformly per op. The number of ops is
    uniform in ``1..max_ops`` (capped by the number of non-identity kinds). ``reference_size``
    scales pixel lengths to each image (module docstring).
    """

    def __init__(
        self,
        kinds: Sequence[str] = DEGRADATIONS,
        p_identity: float | None = None,
        severity: float | tuple[float, float] = 1.0,
        max_ops: int = 1,
        reference_size: float | None = None,
    ) -> None:
        canonical_kinds = list(dict.fromkeys(_canonical_kind(kind) for kind in kinds))
        if not canonical_kinds:
            raise ValueError("kinds must name at least one degradation")
        self.kinds = tuple(canonical_kinds)
        self.operations = tuple(kind for kind in canonical_kinds if kind != "identity")
        if p_identity is None:
            p_identity = 1 / len(canonical_kinds) if "identity" in canonical_kinds else 0.0
        if not 0.0 <= p_identity <= 1.0:
            raise ValueError(f"p_identity must be in [0, 1], got {p_identity}")
        if p_identity < 1.0 and not self.operations:
            raise ValueError("p_identity < 1 needs at least one kind other than 'identity'")
        self.p_identity = float(p_identity)
        low, high = severity if isinstance(severity, (tuple, list)) else (severity, severity)
        _validated_severity(low)
        _validated_severity(high)
        if low > high:
            raise ValueError(f"severity range must have low <= high, got {severity}")
        self.severity_range = (float(low), float(high))
        if max_ops < 1:
            raise ValueError(f"max_ops must be >= 1, got {max_ops}")
        self.max_ops = int(max_ops)
        spatial_scale((1, 1), reference_size)  # validates
        self.reference_size = None if reference_size is None else float(reference_size)

    def __repr__(self) -> str:
        # reference_size appears only when set, so the feature-cache keys of raw-pixel runs are unchanged
        reference = "" if self.reference_size is None else f", reference_size={self.reference_size}"
        return (
            f"{type(self).__name__}(kinds={self.kinds}, p_identity={self.p_identity}, "
            f"severity={self.severity_range}, max_ops={self.max_ops}{reference})"
        )

    def plan(self, seed: int) -> list[tuple[str, float, int]]:
        """The ``(kind, severity, op_seed)`` operations ``seed`` selects (empty for identity), without
        touching any image; ``__call__`` applies exactly this plan."""
        rng = np.random.default_rng(seed)
        if rng.random() < self.p_identity:
            return []
        op_count = int(rng.integers(1, min(self.max_ops, len(self.operations)) + 1))
        chosen_indices = rng.choice(len(self.operations), op_count, replace=False)
        operations = []
        for index in chosen_indices:
            op_severity = rng.uniform(*self.severity_range)
            op_seed = int(rng.integers(2**63 - 1))
            operations.append((self.operations[index], float(op_severity), op_seed))
        return operations

    def name(self, seed: int) -> str:
        """The applied kinds joined with "+" (or "identity") for ``seed``."""
        return "+".join(kind for kind, _, _ in self.plan(seed)) or "identity"

    def __call__(self, image: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
        """Returns the degraded image and the applied kinds joined with "+" (or "identity")."""
        image = _validated_image(image)
        operations = self.plan(seed)
        if not operations:
            return image.copy(), "identity"
        degraded = image
        scale = spatial_scale(image.shape, self.reference_size)
        for kind, op_severity, op_seed in operations:
            degraded = _apply(kind, degraded, np.random.default_rng(op_seed), op_severity, scale)
        return degraded, "+".join(kind for kind, _, _ in operations)


def degradation_seed(seed: int, name: str, kind: str) -> int:
    """The evaluation protocol's ``degrade`` seed of image ``name`` under ``kind``: independent of which
    kinds / images are evaluated (Table 2 evaluation and the training's learning curve share it)."""
    name_key = zlib.crc32(name.encode("utf-8"))
    return int(np.random.SeedSequence([seed, name_key, DEGRADATIONS.index(kind)]).generate_state(1)[0])
