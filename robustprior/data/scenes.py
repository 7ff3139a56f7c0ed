"""A seeded world of layered, textured scenes with exact ground truth.

The world
---------
A scene is a stack of flat layers painted back to front onto an ``H x W`` canvas:

* a **background** layer: a crop of a real photo that fills the canvas, with its own
  image-plane velocity (``camera_motion``, px/frame);
* ``K`` **objects**, each a closed outline (ellipse, random polygon, star, or a thin
  bar/curve a few pixels wide) filled with a colour-jittered crop of a real photo and
  moving with its own constant image-plane velocity (px/frame; velocities are what the
  camera sees, so they already include the camera's contribution).

Objects are painted in order ``1..K``: a later object occludes earlier ones. Depth is
consistent with that order: objects get depths drawn from ``object_depth_range`` and
sorted far to near, each with a gentle planar tilt (at most ``depth_tilt`` metres across
the object); the background is farther than every object and recedes linearly from
``background_depth_range[0]`` at the bottom row to ``background_depth_range[1]`` at the
top row, like a ground plane running to the horizon.

Ground truth at time 0 (``Scene``)
----------------------------------
* ``image``: ``H x W x 3`` uint8 RGB;
* ``instances``: ``H x W`` int32, 0 = background, ``k`` = the k-th painted object, so
  ``masks[k - 1] = instances == k`` is that object's exact *visible* mask. Every object
  keeps at least ``min_object_area`` visible pixels (placements that would break this
  are redrawn);
* ``depth``: ``H x W`` float32 metres-like;
* ``motion`` (``K x 2``) and ``camera_motion`` (2,): velocities ``(vx, vy)`` in px/frame;
* ``boxes``: ``K x 4`` float32 ``[x_min, y_min, x_max, y_max]`` of the visible masks, with
  exclusive maxima (COCO ``[x, y, w, h]`` is ``[x_min, y_min, x_max - x_min, y_max - y_min]``).

Degradations
------------
* Haze (``render_hazy``) follows the atmospheric scattering model
  ``I = J t + A (1 - t)``, ``t = exp(-beta d)`` with ``J`` the clear image in [0, 1],
  ``d`` the depth map and ``A`` the airlight. Depth units are chosen so RESIDE's outdoor
  ranges (``beta`` 0.04-0.2, ``A`` 0.8-1.0) give visible but never total haze: objects at
  2-7 m keep transmissions of 0.25-0.92 and the background at 8-12 m 0.09-0.73.
* Motion blur (``render_motion_blur``) re-renders the scene at ``n_frames`` consecutive
  times centred on ``center_time``, every layer translated by ``velocity * time``
  (sub-pixel: outlines are rasterised with 1/16 px precision, textures translated with
  bilinear ``cv2.warpAffine``), keeping the painting order; the blurred image is the mean
  of the frames after undoing a display gamma (``gamma=2.2``, "linear-ish" averaging;
  ``gamma=1`` is plain averaging) and the sharp image is the middle frame (index
  ``n_frames // 2``, at exactly ``center_time``). Optional camera motion moves every layer
  together: a random walk (``camera_shake``) or a steady pan (``camera_pan`` px per frame, in
  direction ``camera_pan_angle`` or a seeded one).

Determinism: the same seed, config and texture source give byte-identical arrays (on
the same OpenCV and scikit-image builds). Textures come from a ``TextureBank``: by default
scikit-image's bundled colour photos, which every installation has, so the default scene
world is the same on every machine ("one world"); a folder of photos is used only when a
config names it (``SceneConfig.texture_source``), never found implicitly.

Writers save datasets in the real on-disk layouts: COCO-style instances
(``write_instance_dataset``), RESIDE SOTS (``write_sots_dataset``) and GoPro
(``write_gopro_dataset``).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

SHAPE_KINDS: tuple[str, ...] = ("ellipse", "polygon", "star", "thin")
SKIMAGE_PHOTO_NAMES: tuple[str, ...] = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
)
DEFAULT_TEXTURE_SOURCE = "skimage"  # the one default world: photos every installation ships
PHOTO_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
# RESIDE's haze grid: OTS/SOTS-outdoor airlights and scattering coefficients.
RESIDE_AIRLIGHTS: tuple[float, ...] = (0.8, 0.85, 0.9, 0.95, 1.0)
RESIDE_BETAS: tuple[float, ...] = (0.04, 0.06, 0.08, 0.1, 0.12, 0.16, 0.2)
SOTS_FIRST_INDEX: dict[str, int] = {"outdoor": 1, "indoor": 1400}
INSTANCE_FOLDER = "instances"  # beside hazy/ + gt/ (SOTS) and blur/ + sharp/ (GoPro): the true instance maps
SOTS_DEFAULT_HAZY_PER_CLEAR: dict[str, int] = {"outdoor": 1, "indoor": 10}
OUTLINE_SUBPIXEL_BITS = 4  # cv2.fillPoly fixed-point precision: 1/16 px


# ----------------------------------------------------------------------------- textures
def _fit_max_side(photo: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale an ``h x w x 3`` photo so its longer side is at most ``max_side``."""
    scale = max_side / max(photo.shape[:2])
    if scale >= 1.0:
        return photo
    size = (max(1, round(photo.shape[1] * scale)), max(1, round(photo.shape[0] * scale)))
    return cv2.resize(photo, size, interpolation=cv2.INTER_AREA)


class TextureBank:
    """Real colour photos (``h x w x 3`` uint8 RGB) that object and background textures are cut from.

    Photos are loaded lazily and cached, downscaled so their longer side is at most ``max_side``.
    """

    def __init__(
        self, loaders: Sequence[Callable[[], np.ndarray]], names: Sequence[str], source: str, max_side: int = 640
    ):
        if not loaders:
            raise ValueError(f"texture source {source} holds no photos")
        self._loaders = list(loaders)
        self.names = list(names)
        self.source = source
        self.max_side = max_side
        self._photos: dict[int, np.ndarray] = {}

    @classmethod
    def from_folder(cls, folder: str | Path, max_side: int = 640) -> TextureBank:
        """Every image file directly inside ``folder`` (sorted by name)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"texture folder {folder} does not exist")
        paths = sorted(path for path in folder.iterdir() if path.suffix.lower() in PHOTO_EXTENSIONS)
        if not paths:
            raise ValueError(f"texture folder {folder} holds no image files")

        def make_loader(path: Path) -> Callable[[], np.ndarray]:
            def load() -> np.ndarray:
                photo = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if photo is None:
                    raise ValueError(f"cannot read texture photo {path}")
                return cv2.cvtColor(photo, cv2.COLOR_BGR2RGB)

            return load

        return cls([make_loader(path) for path in paths], [path.name for path in paths], str(folder), max_side)

    @classmethod
    def from_skimage(cls, max_side: int = 640) -> TextureBank:
        """scikit-image's bundled colour photos (astronaut, chelsea, coffee, ...)."""
        import skimage.data

        def make_loader(name: str) -> Callable[[], np.ndarray]:
            return lambda: np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])

        return cls([make_loader(name) for name in SKIMAGE_PHOTO_NAMES], SKIMAGE_PHOTO_NAMES, "skimage", max_side)

    @classmethod
    def load(cls, source: str | Path | None = None) -> TextureBank:
        """A cached bank: ``None`` or ``"skimage"`` = scikit-image's photos (the default world), or a folder.

        The default never depends on what lies beside the checkout: a folder is used only when named."""
        return _cached_texture_bank(DEFAULT_TEXTURE_SOURCE if source is None else str(source))

    def __len__(self) -> int:
        return len(self._loaders)

    def photo(self, index: int) -> np.ndarray:
        """Photo ``index`` as ``h x w x 3`` uint8 RGB (cached)."""
        if index not in self._photos:
            self._photos[index] = _fit_max_side(self._loaders[index](), self.max_side)
        return self._photos[index]

    def sample(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """A random crop of a random photo resized to ``height x width x 3`` uint8, randomly mirrored."""
        photo = self.photo(int(rng.integers(len(self))))
        photo_height, photo_width = photo.shape[:2]
        aspect = width / height
        largest_height = min(photo_height, photo_width / aspect)
        crop_height = max(2, int(rng.uniform(0.3, 1.0) * largest_height))
        crop_width = max(2, min(photo_width, round(crop_height * aspect)))
        top = int(rng.integers(0, photo_height - crop_height + 1))
        left = int(rng.integers(0, photo_width - crop_width + 1))
        crop = photo[top : top + crop_height, left : left + crop_width]
        shrinking = crop_height > height
        texture = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        if rng.random() < 0.5:
            texture = texture[:, ::-1]
        return np.ascontiguousarray(texture)


@functools.lru_cache(maxsize=8)
def _cached_texture_bank(source: str) -> TextureBank:
    return TextureBank.from_skimage() if source == "skimage" else TextureBank.from_folder(source)


# ----------------------------------------------------------------------------- config and scene
@dataclass(frozen=True)
class SceneConfig:
    """Parameters of the scene world (sizes in pixels, depths in metres-like units, speeds in px/frame)."""

    image_size: tuple[int, int] = (256, 256)  # (H, W)
    object_count_range: tuple[int, int] = (2, 6)  # inclusive; fewer if placements keep failing
    shape_kinds: tuple[str, ...] = SHAPE_KINDS
    object_size_range: tuple[float, float] = (0.08, 0.25)  # object radius as a fraction of min(H, W)
    min_object_area: int = 64  # minimum visible pixels of every object
    placement_attempts: int = 25  # redraws of an object before it is dropped
    object_depth_range: tuple[float, float] = (2.0, 7.0)
    background_depth_range: tuple[float, float] = (8.0, 12.0)  # (bottom row, top row)
    depth_tilt: float = 0.15  # largest depth change across one object
    max_object_speed: float = 2.5
    static_object_probability: float = 0.2  # chance an object does not move
    max_camera_speed: float = 1.0  # background velocity magnitude
    color_jitter: float = 0.25  # per-channel gains drawn from [1 - j, 1 + j]
    tint_strength_range: tuple[float, float] = (0.1, 0.4)  # blend towards a random flat colour
    texture_source: str | None = None  # TextureBank.load source: None (= "skimage", the default world) or a folder

    def __post_init__(self) -> None:
        height, width = self.image_size
        if height < 8 or width < 8:
            raise ValueError(f"image_size {self.image_size} is too small (min 8 x 8)")
        low, high = self.object_count_range
        if not 0 <= low <= high:
            raise ValueError(f"object_count_range {self.object_count_range} must satisfy 0 <= low <= high")
        unknown = set(self.shape_kinds) - set(SHAPE_KINDS)
        if not self.shape_kinds or unknown:
            raise ValueError(f"shape_kinds {self.shape_kinds} must be a non-empty subset of {SHAPE_KINDS}")
        if self.min_object_area < 1:
            raise ValueError("min_object_area must be at least 1")
        if max(self.object_depth_range) >= min(self.background_depth_range):
            raise ValueError("objects must be nearer than the background (object_depth_range < background_depth_range)")


@dataclass(frozen=True, eq=False)
class SceneObject:
    """One object layer at time 0: outline, texture and motion."""

    kind: str
    outline: np.ndarray  # N x 2 float64 polygon vertices (x, y) in canvas pixels
    texture: np.ndarray  # h x w x 3 uint8, covers the outline's bounding box
    texture_origin: tuple[int, int]  # canvas (x, y) of texture[0, 0]
    velocity: tuple[float, float]  # (vx, vy) px/frame
    depth: float  # depth at the outline's centroid
    depth_gradient: tuple[float, float]  # depth change per pixel along (x, y)


@dataclass(frozen=True, eq=False)
class Scene:
    """A generated scene and its ground truth at time 0 (see the module docstring)."""

    image: np.ndarray  # H x W x 3 uint8 RGB
    instances: np.ndarray  # H x W int32, 0 = background, k = k-th painted object
    depth: np.ndarray  # H x W float32
    objects: tuple[SceneObject, ...]
    background: np.ndarray  # H x W x 3 uint8 background texture
    camera_motion: tuple[float, float]  # background (vx, vy) px/frame
    seed: int

    @property
    def object_count(self) -> int:
        return len(self.objects)

    @property
    def masks(self) -> np.ndarray:
        """K x H x W bool visible masks; ``masks[k] = instances == k + 1``."""
        ids = np.arange(1, self.object_count + 1, dtype=np.int32)
        return self.instances[None] == ids[:, None, None]

    @property
    def motion(self) -> np.ndarray:
        """K x 2 float32 object velocities (vx, vy) in px/frame."""
        return np.array([obj.velocity for obj in self.objects], dtype=np.float32).reshape(-1, 2)

    @property
    def kinds(self) -> list[str]:
        return [obj.kind for obj in self.objects]

    @property
    def boxes(self) -> np.ndarray:
        """K x 4 float32 ``[x_min, y_min, x_max, y_max]`` of the visible masks (maxima exclusive)."""
        boxes = np.zeros((self.object_count, 4), dtype=np.float32)
        for index, mask in enumerate(self.masks):
            rows = np.flatnonzero(mask.any(axis=1))
            columns = np.flatnonzero(mask.any(axis=0))
            boxes[index] = (columns[0], rows[0], columns[-1] + 1, rows[-1] + 1)
        return boxes

    def with_motion(
        self,
        object_velocities: Sequence[Sequence[float]] | np.ndarray | None = None,
        camera_motion: Sequence[float] | None = None,
    ) -> Scene:
        """The same scene (identical time-0 ground truth) with new K x 2 object and/or camera velocities."""
        objects = self.objects
        if object_velocities is not None:
            velocities = np.asarray(object_velocities, dtype=np.float64).reshape(-1, 2)
            if len(velocities) != self.object_count:
                raise ValueError(f"expected {self.object_count} velocities, got {len(velocities)}")
            objects = tuple(
                dataclasses.replace(obj, velocity=(float(vx), float(vy))) for obj, (vx, vy) in zip(objects, velocities)
            )
        camera = self.camera_motion if camera_motion is None else (float(camera_motion[0]), float(camera_motion[1]))
        return dataclasses.replace(self, objects=objects, camera_motion=camera)


# ----------------------------------------------------------------------------- rendering
def _rasterize(outline: np.ndarray, offset: np.ndarray, height: int, width: int) -> np.ndarray:
    """H x W bool mask of the polygon ``outline + offset`` (1/16 px vertex precision)."""
    canvas = np.zeros((height, width), dtype=np.uint8)
    points = np.rint((outline + offset) * (1 << OUTLINE_SUBPIXEL_BITS)).astype(np.int32)
    cv2.fillPoly(canvas, [points.reshape(-1, 1, 2)], 1, lineType=cv2.LINE_8, shift=OUTLINE_SUBPIXEL_BITS)
    return canvas.astype(bool)


def _place_texture(texture: np.ndarray, origin: np.ndarray, height: int, width: int) -> np.ndarray:
    """H x W x 3 canvas with ``texture[0, 0]`` at canvas point ``origin`` (x, y); bilinear, mirrored borders."""
    matrix = np.array([[1.0, 0.0, origin[0]], [0.0, 1.0, origin[1]]])
    return cv2.warpAffine(texture, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def _object_layer(obj: SceneObject, offset: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Object ``obj`` translated by ``offset``: (H x W x 3 uint8 texture canvas, H x W bool mask)."""
    mask = _rasterize(obj.outline, offset, height, width)
    texture = _place_texture(obj.texture, np.asarray(obj.texture_origin, dtype=np.float64) + offset, height, width)
    return texture, mask


def _velocity(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def _compose(scene: Scene, time: float, shake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Paint every layer at ``time`` (plus a global ``shake`` offset): (H x W x 3 uint8, H x W int32)."""
    height, width = scene.instances.shape
    image = _place_texture(scene.background, _velocity(scene.camera_motion) * time + shake, height, width)
    instances = np.zeros((height, width), dtype=np.int32)
    for instance_id, obj in enumerate(scene.objects, start=1):
        texture, mask = _object_layer(obj, _velocity(obj.velocity) * time + shake, height, width)
        image[mask] = texture[mask]
        instances[mask] = instance_id
    return image, instances


def render_frame(scene: Scene, time: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The scene at ``time`` (frames): (H x W x 3 uint8 image, H x W int32 instance map)."""
    return _compose(scene, time, np.zeros(2))


def render_object(scene: Scene, index: int, time: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Object ``index`` (0-based, instance id ``index + 1``) alone, ignoring occlusion.

    Returns (H x W x 3 uint8 texture, zero outside the object; H x W bool full mask).
    """
    height, width = scene.instances.shape
    obj = scene.objects[index]
    texture, mask = _object_layer(obj, _velocity(obj.velocity) * time, height, width)
    return np.where(mask[..., None], texture, 0).astype(np.uint8), mask


def transmission(scene: Scene, beta: float) -> np.ndarray:
    """H x W float64 transmission ``t = exp(-beta * depth)``."""
    return np.exp(-beta * scene.depth.astype(np.float64))


def render_hazy(scene: Scene, beta: float, airlight: float) -> np.ndarray:
    """H x W x 3 uint8 hazy image ``I = J t + A (1 - t)`` with ``J = image / 255``, rounded to the nearest level."""
    clear = scene.image.astype(np.float64) / 255.0
    transmission_map = transmission(scene, beta)[..., None]
    hazy = clear * transmission_map + airlight * (1.0 - transmission_map)
    return np.clip(np.rint(hazy * 255.0), 0, 255).astype(np.uint8)


def pan_velocity(camera_pan: float, seed: int = 0, angle: float | None = None) -> tuple[float, float]:
    """The steady pan ``(vx, vy)`` px/frame of :func:`render_motion_frames`: speed ``camera_pan`` in
    direction ``angle`` (degrees, 0 = +x, 90 = +y, i.e. down the image), or, when ``angle`` is None,
    a direction uniform in [0, 360) drawn from ``seed``; ``(0, 0)`` when ``camera_pan`` is 0."""
    if camera_pan < 0:
        raise ValueError(f"camera_pan must be non-negative, got {camera_pan}")
    if camera_pan == 0:
        return 0.0, 0.0
    angle = np.random.default_rng([seed, 1]).uniform(0.0, 2.0 * np.pi) if angle is None else np.deg2rad(angle)
    return float(camera_pan * np.cos(angle)), float(camera_pan * np.sin(angle))


def render_motion_frames(
    scene: Scene, n_frames: int, seed: int = 0, center_time: float = 0.0, camera_shake: float = 0.0,
    camera_pan: float = 0.0, camera_pan_angle: float | None = None,
) -> np.ndarray:
    """N x H x W x 3 uint8 frames at times ``center_time + i - n_frames // 2``.

    ``camera_shake`` > 0 adds a seeded random walk (std ``camera_shake`` px per frame) moving
    every layer together, anchored so the middle frame is unshaken. ``camera_pan`` > 0 adds a
    steady pan of every layer together, ``camera_pan`` px per frame in the direction
    ``pan_velocity(camera_pan, seed, camera_pan_angle)`` (frame ``i`` shifted by
    ``(i - n_frames // 2)`` times that velocity): a
    uniform, learnable blur of ``camera_pan * (n_frames - 1)`` px on top of the scene's own motion.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be at least 1, got {n_frames}")
    if camera_shake < 0:
        raise ValueError(f"camera_shake must be non-negative, got {camera_shake}")
    middle = n_frames // 2
    steps = np.zeros((n_frames, 2))
    if camera_shake > 0:
        steps = np.random.default_rng(seed).normal(0.0, camera_shake, size=(n_frames, 2))
    shake_path = np.cumsum(steps, axis=0)
    shake_path -= shake_path[middle]
    shake_path += (np.arange(n_frames) - middle)[:, None] * np.array(pan_velocity(camera_pan, seed, camera_pan_angle))
    frames = [_compose(scene, center_time + index - middle, shake_path[index])[0] for index in range(n_frames)]
    return np.stack(frames)


def average_frames(frames: np.ndarray, gamma: float = 2.2) -> np.ndarray:
    """H x W x 3 uint8 mean of N x H x W x 3 uint8 frames taken in ``(x / 255) ** gamma`` space."""
    linear = (frames.astype(np.float64) / 255.0) ** gamma
    mean = linear.mean(axis=0) ** (1.0 / gamma)
    return np.clip(np.rint(mean * 255.0), 0, 255).astype(np.uint8)


def render_motion_blur(
    scene: Scene,
    n_frames: int,
    seed: int = 0,
    center_time: float = 0.0,
    gamma: float = 2.2,
    camera_shake: float = 0.0,
    camera_pan: float = 0.0,
    camera_pan_angle: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(blurred, sharp) H x W x 3 uint8: the gamma-aware mean of ``render_motion_frames`` and its middle frame."""
    frames = render_motion_frames(scene, n_frames, seed, center_time, camera_shake, camera_pan, camera_pan_angle)
    return average_frames(frames, gamma), frames[n_frames // 2]


# ----------------------------------------------------------------------------- generation
def _outline(kind: str, rng: np.random.Generator, height: int, width: int, config: SceneConfig) -> np.ndarray:
    """N x 2 float64 vertices (x, y) of a random shape of ``kind``."""
    radius = rng.uniform(*config.object_size_range) * min(height, width)
    center = np.array([rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height])
    rotation = rng.uniform(0.0, 2.0 * np.pi)
    if kind == "ellipse":
        angles = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)
        local = np.stack([radius * np.cos(angles), radius * rng.uniform(0.4, 1.0) * np.sin(angles)], axis=1)
    elif kind == "polygon":
        vertex_count = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0.0, 2.0 * np.pi, vertex_count))
        radii = radius * rng.uniform(0.55, 1.0, vertex_count)
        local = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    elif kind == "star":
        point_count = int(rng.integers(4, 9))
        angles = np.linspace(0.0, 2.0 * np.pi, 2 * point_count, endpoint=False)
        radii = np.where(np.arange(2 * point_count) % 2 == 0, radius, radius * rng.uniform(0.35, 0.6))
        local = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    elif kind == "thin":
        length = radius * rng.uniform(1.6, 2.6)
        half_width = rng.uniform(1.0, 2.5)
        bend = rng.uniform(-0.4, 0.4) * length if rng.random() < 0.5 else 0.0  # straight bar or curve
        parameter = np.linspace(0.0, 1.0, 32)[:, None]
        start, control, end = np.array([-length / 2, 0.0]), np.array([0.0, 2.0 * bend]), np.array([length / 2, 0.0])
        centerline = (1 - parameter) ** 2 * start + 2 * (1 - parameter) * parameter * control + parameter**2 * end
        tangent = np.gradient(centerline, axis=0)
        normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1) / np.linalg.norm(tangent, axis=1, keepdims=True)
        local = np.concatenate([centerline + half_width * normal, (centerline - half_width * normal)[::-1]])
    else:
        raise ValueError(f"unknown shape kind {kind!r}; expected one of {SHAPE_KINDS}")
    cosine, sine = np.cos(rotation), np.sin(rotation)
    return local @ np.array([[cosine, sine], [-sine, cosine]]) + center


def _jitter_colors(
    texture: np.ndarray, rng: np.random.Generator, config: SceneConfig, strength: float = 1.0
) -> np.ndarray:
    """``h x w x 3`` uint8 texture with random per-channel gains, brightness and a flat-colour tint."""
    jitter = config.color_jitter * strength
    gains = rng.uniform(1.0 - jitter, 1.0 + jitter, 3)
    brightness = rng.uniform(-40.0, 40.0) * strength
    tint_color = rng.uniform(0.0, 255.0, 3)
    tint = rng.uniform(*config.tint_strength_range) * strength
    jittered = texture.astype(np.float32) * gains + brightness
    jittered = (1.0 - tint) * jittered + tint * tint_color
    return np.clip(np.rint(jittered), 0, 255).astype(np.uint8)


def _random_velocity(rng: np.random.Generator, max_speed: float) -> tuple[float, float]:
    """A velocity uniform in the disk of radius ``max_speed``."""
    speed = max_speed * np.sqrt(rng.random())
    angle = rng.uniform(0.0, 2.0 * np.pi)
    return float(speed * np.cos(angle)), float(speed * np.sin(angle))


def _place_outline(
    rng: np.random.Generator, instances: np.ndarray, placed_count: int, config: SceneConfig
) -> tuple[str, np.ndarray, np.ndarray] | None:
    """Draw shapes until one keeps every object's visible area >= min_object_area: (kind, outline, mask) or None."""
    height, width = instances.shape
    for _ in range(config.placement_attempts):
        kind = str(config.shape_kinds[int(rng.integers(len(config.shape_kinds)))])
        outline = _outline(kind, rng, height, width, config)
        mask = _rasterize(outline, np.zeros(2), height, width)
        candidate = np.where(mask, placed_count + 1, instances)
        visible_areas = np.bincount(candidate.ravel(), minlength=placed_count + 2)[1:]
        if visible_areas.min() >= config.min_object_area:
            return kind, outline, mask
    return None


def _depth_map(instances: np.ndarray, objects: Sequence[SceneObject], config: SceneConfig) -> np.ndarray:
    """H x W float32 depth: receding background plane plus each object's tilted plane."""
    height, width = instances.shape
    bottom, top = config.background_depth_range
    rows = np.linspace(top, bottom, height, dtype=np.float64)[:, None]
    depth = np.broadcast_to(rows, (height, width)).copy()
    row_grid, column_grid = np.mgrid[0:height, 0:width]
    for instance_id, obj in enumerate(objects, start=1):
        mask = instances == instance_id
        center_x, center_y = obj.outline.mean(axis=0)
        gradient_x, gradient_y = obj.depth_gradient
        depth[mask] = obj.depth + gradient_x * (column_grid[mask] - center_x) + gradient_y * (row_grid[mask] - center_y)
    return depth.astype(np.float32)


def generate_scene(seed: int, config: SceneConfig | None = None, textures: TextureBank | None = None) -> Scene:
    """A random scene from ``seed`` (a non-negative int).

    ``textures`` defaults to ``TextureBank.load(config.texture_source)``.
    """
    config = config or SceneConfig()
    textures = textures or TextureBank.load(config.texture_source)
    rng = np.random.default_rng(seed)
    height, width = config.image_size
    background = _jitter_colors(textures.sample(rng, height, width), rng, config, strength=0.5)
    camera_motion = _random_velocity(rng, config.max_camera_speed)
    target_count = int(rng.integers(config.object_count_range[0], config.object_count_range[1] + 1))
    depths = np.sort(rng.uniform(*config.object_depth_range, target_count))[::-1]

    objects: list[SceneObject] = []
    instances = np.zeros((height, width), dtype=np.int32)
    for depth in depths:
        placement = _place_outline(rng, instances, len(objects), config)
        if placement is None:
            continue
        kind, outline, mask = placement
        left, top = np.floor(outline.min(axis=0)).astype(int)
        right, bottom = np.ceil(outline.max(axis=0)).astype(int) + 1
        texture = _jitter_colors(textures.sample(rng, bottom - top, right - left), rng, config)
        extent = float(np.linalg.norm(outline.max(axis=0) - outline.min(axis=0)))
        tilt_angle = rng.uniform(0.0, 2.0 * np.pi)
        tilt = config.depth_tilt * rng.random() / max(extent, 1.0)
        static = rng.random() < config.static_object_probability
        velocity = (0.0, 0.0) if static else _random_velocity(rng, config.max_object_speed)
        objects.append(
            SceneObject(
                kind=kind,
                outline=outline,
                texture=texture,
                texture_origin=(int(left), int(top)),
                velocity=velocity,
                depth=float(depth),
                depth_gradient=(float(tilt * np.cos(tilt_angle)), float(tilt * np.sin(tilt_angle))),
            )
        )
        instances[mask] = len(objects)

    scene = Scene(
        image=np.zeros((height, width, 3), dtype=np.uint8),
        instances=instances,
        depth=_depth_map(instances, objects, config),
        objects=tuple(objects),
        background=background,
        camera_motion=camera_motion,
        seed=seed,
    )
    image, rendered_instances = render_frame(scene)
    assert np.array_equal(rendered_instances, instances), "time-0 rendering must reproduce the placement instance map"
    return dataclasses.replace(scene, image=image)


# ----------------------------------------------------------------------------- writers
def derive_seed(seed: int, *indices: int) -> int:
    """A child seed for item ``indices`` of a dataset generated from ``seed`` (stable across runs)."""
    return int(np.random.SeedSequence([seed, *indices]).generate_state(1, dtype=np.uint32)[0])


def _scene_block(seed: int, indices: range, texture_source: str | None
                 ) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """Scenes ``derive_seed(seed, i)`` for ``i`` in ``indices`` (one worker's share of :func:`generate_scene_arrays`)."""
    textures = TextureBank.load(texture_source)
    scenes = [generate_scene(derive_seed(seed, index), textures=textures) for index in indices]
    return (np.stack([scene.image for scene in scenes]), np.stack([scene.instances.astype(np.uint8) for scene in scenes]),
            [scene.kinds for scene in scenes])


def generate_scene_arrays(seed: int, count: int, description: str = "generating scenes", workers: int = 1,
                          texture_source: str | None = None) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """Scenes ``generate_scene(derive_seed(seed, i))`` for ``i < count`` as arrays: images
    ``N x H x W x 3`` uint8, instance maps ``N x H x W`` uint8 (0 = background, k = k-th object) and
    each scene's shape kinds (the k-th object's kind at index k - 1).

    ``workers > 1`` generates blocks of 64 scenes in parallel processes; each scene depends on its
    seed alone, so the arrays are the same as with one process."""
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    blocks = [range(start, min(start + 64, count)) for start in range(0, count, 64)]
    if workers > 1 and len(blocks) > 1:
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            parts = list(tqdm(pool.map(_scene_block, [seed] * len(blocks), blocks, [texture_source] * len(blocks)),
                              total=len(blocks), desc=description, mininterval=5))
    else:
        parts = [_scene_block(seed, indices, texture_source) for indices in tqdm(blocks, desc=description, mininterval=5)]
    return (np.concatenate([part[0] for part in parts]), np.concatenate([part[1] for part in parts]),
            [kinds for part in parts for kinds in part[2]])


def _prepare_output(folder: Path, owned_paths: Sequence[Path], overwrite: bool) -> None:
    """Create ``folder``; if it is non-empty, refuse, or with ``overwrite`` delete the paths this writer owns."""
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"refusing to write into non-empty folder {folder}; pass overwrite=True to replace it"
            )
        for path in owned_paths:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    folder.mkdir(parents=True, exist_ok=True)


def _write_image(path: Path, image: np.ndarray) -> None:
    """Write an H x W x 3 RGB or H x W single-channel array (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write image {path}")


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=1) + "\n")


SCENE_MARKER = "robustprior_scenes.json"
"""The file every writer below puts at the top of the folder it writes: images anywhere under a folder
holding it are generated scenes (the bundled tiny models' own domain); a user's photo never is."""


def _write_scene_marker(folder: Path, writer: str, seed: int) -> None:
    _write_json(folder / SCENE_MARKER, {"generator": "robustprior.data.scenes", "writer": writer, "seed": seed})


def is_generated_scene_file(path: str | Path) -> bool:
    """Whether ``path`` lies inside a folder written by this module's dataset writers (a folder
    above it holds :data:`SCENE_MARKER`). ``skimage:NAME`` samples and other files are not."""
    text = str(path)
    if text.startswith("skimage:"):
        return False
    return any((folder / SCENE_MARKER).is_file() for folder in Path(text).resolve().parents)


def _reside_number(value: float) -> str:
    """RESIDE file-name number: two decimals, trailing zeros dropped (0.80 -> "0.8", 1.00 -> "1")."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _write_instance_block(root: Path, seed: int, indices: range, config: SceneConfig | None,
                          textures: TextureBank | None, texture_source: str | None) -> list[tuple[dict, list[dict]]]:
    """Write scenes ``indices`` of an instance dataset; returns each scene's COCO image entry and its
    annotations (ids still to be numbered), in index order."""
    if textures is None and texture_source is not None:
        textures = TextureBank.load(texture_source)
    entries = []
    for index in indices:
        scene_seed = derive_seed(seed, index)
        scene = generate_scene(scene_seed, config, textures)
        name = f"{index + 1:06d}"
        _write_image(root / "images" / f"{name}.png", scene.image)
        id_dtype = np.uint8 if scene.object_count < 255 else np.uint16
        _write_image(root / "instances" / f"{name}.png", scene.instances.astype(id_dtype))
        height, width = scene.instances.shape
        image = {"id": index + 1, "file_name": f"{name}.png", "height": height, "width": width, "scene_seed": scene_seed}
        annotations = []
        if scene.object_count:
            encoded = mask_utils.encode(np.asfortranarray(scene.masks.transpose(1, 2, 0).astype(np.uint8)))
            for instance_id, (rle, kind) in enumerate(zip(encoded, scene.kinds), start=1):
                annotations.append({
                    "image_id": index + 1,
                    "category_id": 1,
                    "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                    "instance_id": instance_id,
                    "kind": kind,
                })
        entries.append((image, annotations))
    return entries


def write_instance_dataset(
    root: str | Path,
    n_images: int,
    seed: int,
    config: SceneConfig | None = None,
    textures: TextureBank | None = None,
    overwrite: bool = False,
    progress: bool = True,
    workers: int = 1,
) -> Path:
    """Write ``root/images/NAME.png``, ``root/instances/NAME.png`` and COCO ``root/annotations.json``.

    Instance PNGs hold the instance-ID map (0 = background; uint8 when K < 255, else uint16).
    Annotations carry an RLE mask (pycocotools), bbox ``[x, y, w, h]``, area, ``iscrowd`` 0,
    the single category ``object``, plus ``instance_id`` and shape ``kind``; each image entry
    records its ``scene_seed``. ``workers > 1`` writes blocks of 32 scenes in parallel processes
    (with the default texture source when ``textures`` is None); every scene depends on its seed
    alone, so the files are the same as with one process.
    """
    root = Path(root)
    _prepare_output(root, [root / "images", root / "instances", root / "annotations.json", root / SCENE_MARKER],
                    overwrite)
    blocks = [range(start, min(start + 32, n_images)) for start in range(0, n_images, 32)]
    description = f"instance scenes -> {root}"
    if workers > 1 and len(blocks) > 1:
        source = None if textures is None else str(textures.source)
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(_write_instance_block, root, seed, block, config, None, source) for block in blocks]
            parts = [future.result() for future in tqdm(futures, desc=description, disable=not progress, unit="block")]
    else:
        parts = [_write_instance_block(root, seed, block, config, textures, None)
                 for block in tqdm(blocks, desc=description, disable=not progress, unit="block")]
    images, annotations = [], []
    for image, scene_annotations in (entry for part in parts for entry in part):
        images.append(image)
        for annotation in scene_annotations:
            annotations.append({"id": len(annotations) + 1, **annotation})
    coco = {
        "info": {"description": f"robustprior.data.scenes instance dataset, seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
    }
    _write_json(root / "annotations.json", coco)
    _write_scene_marker(root, "write_instance_dataset", seed)
    return root


def write_sots_dataset(
    root: str | Path,
    n_clear: int,
    seed: int,
    split: str = "outdoor",
    hazy_per_clear: int | None = None,
    config: SceneConfig | None = None,
    textures: TextureBank | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a RESIDE SOTS split; returns ``root``.

    ``outdoor``: ``root/outdoor/hazy/0001_A_BETA.jpg`` (A and beta as used, RESIDE number format)
    with ``root/outdoor/gt/0001.png``; default one hazy image per clear one.
    ``indoor``: ``root/indoor/hazy/1400_k.png`` (k = haze level 1..n) with ``root/indoor/gt/1400.png``;
    default ten per clear one. Airlight and beta are drawn without repetition per clear image from
    RESIDE's outdoor grid; ``root/SPLIT/generation.json`` records every hazy image's parameters and
    each clear image's scene seed. ``root/SPLIT/instances/0001.png`` (16-bit, 0 = background, k = the
    k-th object) holds each clear image's true instance map, named like its ``gt`` image.
    """
    if split not in SOTS_FIRST_INDEX:
        raise ValueError(f"split must be one of {sorted(SOTS_FIRST_INDEX)}, got {split!r}")
    hazy_per_clear = SOTS_DEFAULT_HAZY_PER_CLEAR[split] if hazy_per_clear is None else hazy_per_clear
    haze_grid = [(airlight, beta) for airlight in RESIDE_AIRLIGHTS for beta in RESIDE_BETAS]
    if not 1 <= hazy_per_clear <= len(haze_grid):
        raise ValueError(f"hazy_per_clear must be in 1..{len(haze_grid)}, got {hazy_per_clear}")
    root = Path(root)
    split_folder = root / split
    _prepare_output(split_folder, [split_folder], overwrite)
    record: dict[str, dict] = {"seed": seed, "scene_seeds": {}, "hazy": {}}
    for index in tqdm(range(n_clear), desc=f"SOTS {split} -> {root}", disable=not progress):
        scene_seed = derive_seed(seed, index)
        scene = generate_scene(scene_seed, config, textures)
        number = index + SOTS_FIRST_INDEX[split]
        name = f"{number:04d}" if split == "outdoor" else str(number)
        gt_name = f"{name}.png"
        _write_image(split_folder / "gt" / gt_name, scene.image)
        _write_image(split_folder / INSTANCE_FOLDER / gt_name, scene.instances.astype(np.uint16))
        record["scene_seeds"][name] = scene_seed
        haze_rng = np.random.default_rng(derive_seed(seed, index, 1))
        for level, grid_index in enumerate(haze_rng.choice(len(haze_grid), hazy_per_clear, replace=False), start=1):
            airlight, beta = haze_grid[grid_index]
            if split == "outdoor":
                hazy_name = f"{name}_{_reside_number(airlight)}_{_reside_number(beta)}.jpg"
            else:
                hazy_name = f"{name}_{level}.png"
            _write_image(split_folder / "hazy" / hazy_name, render_hazy(scene, beta, airlight))
            record["hazy"][hazy_name] = {"gt": gt_name, "airlight": airlight, "beta": beta}
    _write_json(split_folder / "generation.json", record)
    _write_scene_marker(split_folder, "write_sots_dataset", seed)
    return root


def write_gopro_dataset(
    root: str | Path,
    n_sequences: int,
    frames_per_sequence: int,
    seed: int,
    split: str = "test",
    blur_frames: int = 7,
    camera_shake: float = 0.3,
    camera_pan: float = 0.0,
    camera_pan_angle: float | None = None,
    config: SceneConfig | None = None,
    textures: TextureBank | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a GoPro split ``root/SPLIT/GOPR0001_11_00/{blur,blur_gamma,sharp}/000001.png``; returns ``root``.

    Each sequence is one scene; output frame ``j`` (0-based) averages ``blur_frames`` sub-frames
    centred on time ``j * blur_frames`` (consecutive, non-overlapping windows). ``blur`` is the plain
    mean (gamma 1), ``blur_gamma`` the mean in gamma-2.2 linear space, ``sharp`` the middle sub-frame,
    ``instances`` (16-bit, 0 = background, k = the k-th object) the sharp frame's true instance map.
    ``camera_shake`` / ``camera_pan`` / ``camera_pan_angle``: :func:`render_motion_frames`'s random
    walk and steady pan (px per sub-frame; angle in degrees, None = a seeded direction per output
    frame). Object count and speeds come from ``config`` (``object_count_range``, ``max_object_speed``,
    ``max_camera_speed``).
    ``root/SPLIT/generation.json`` records each sequence's scene seed.
    """
    root = Path(root)
    split_folder = root / split
    _prepare_output(split_folder, [split_folder], overwrite)
    record: dict[str, dict] = {"seed": seed, "blur_frames": blur_frames, "camera_shake": camera_shake,
                               "camera_pan": camera_pan, "camera_pan_angle": camera_pan_angle, "sequences": {}}
    progress_bar = tqdm(total=n_sequences * frames_per_sequence, desc=f"GoPro {split} -> {root}", disable=not progress)
    for sequence_index in range(n_sequences):
        scene_seed = derive_seed(seed, sequence_index)
        scene = generate_scene(scene_seed, config, textures)
        sequence_name = f"GOPR{sequence_index + 1:04d}_11_00"
        record["sequences"][sequence_name] = {"scene_seed": scene_seed}
        for frame_index in range(frames_per_sequence):
            frames = render_motion_frames(
                scene,
                blur_frames,
                seed=derive_seed(seed, sequence_index, frame_index),
                center_time=float(frame_index * blur_frames),
                camera_shake=camera_shake,
                camera_pan=camera_pan,
                camera_pan_angle=camera_pan_angle,
            )
            frame_name = f"{frame_index + 1:06d}.png"
            sequence_folder = split_folder / sequence_name
            _write_image(sequence_folder / "blur" / frame_name, average_frames(frames, gamma=1.0))
            _write_image(sequence_folder / "blur_gamma" / frame_name, average_frames(frames, gamma=2.2))
            _write_image(sequence_folder / "sharp" / frame_name, frames[blur_frames // 2])
            sharp_instances = render_frame(scene, float(frame_index * blur_frames))[1]  # the middle sub-frame is unshaken
            _write_image(sequence_folder / INSTANCE_FOLDER / frame_name, sharp_instances.astype(np.uint16))
            progress_bar.update()
    progress_bar.close()
    _write_json(split_folder / "generation.json", record)
    _write_scene_marker(split_folder, "write_gopro_dataset", seed)
    return root
