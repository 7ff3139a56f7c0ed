"""Reading images the way every robustprior command expects them: ``H x W x 3`` uint8 RGB.

Float images (32-bit TIFF, PFM, ...) must hold samples in [0, 1]: NaN / Inf, or values outside
[0, 1], are refused with one line naming the file and the range found (:func:`check_float_samples`),
never clipped or cast silently.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def read_native_rgb(path: str | Path) -> np.ndarray:
    """``H x W x 3`` RGB in the file's own sample type (uint8, uint16 or float32); alpha dropped,
    grayscale tripled. Decoded with ``cv2.IMREAD_UNCHANGED`` (full bit depth, no EXIF rotation)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    encoded = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED) if encoded.size else None
    if image is None:
        raise ValueError(f"cannot decode image file {path} (corrupt or not an image)")
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        raise ValueError(f"image file {path} has unsupported sample type {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    channels = image.shape[2]
    if channels in (1, 2):  # gray, gray + alpha
        return np.repeat(image[..., :1], 3, axis=2)
    if channels in (3, 4):  # BGR, BGRA
        return np.ascontiguousarray(image[..., 2::-1])
    raise ValueError(f"image file {path} has {channels} channels; expected 1-4")


def check_float_samples(image: np.ndarray, source: str = "image") -> None:
    """A float image must hold finite samples in [0, 1] (the range every reader here maps to 0-255);
    otherwise a one-line ``ValueError`` naming ``source`` (integer images pass unchecked)."""
    if not np.issubdtype(image.dtype, np.floating):
        return
    finite = np.isfinite(image)
    if not finite.all():
        bad = int(image.size - finite.sum())
        raise ValueError(f"{source} has {bad} NaN or infinite float sample(s); refusing it (fix or re-save the image "
                         "as 8/16-bit)")
    low, high = float(image.min(initial=0.0)), float(image.max(initial=0.0))
    if low < 0.0 or high > 1.0:
        raise ValueError(f"{source} has float samples in [{low:g}, {high:g}], outside [0, 1]; refusing it rather than "
                         "clipping (scale it to [0, 1] or save it as 8/16-bit)")


def to_rgb_uint8(image: np.ndarray, source: str = "image") -> np.ndarray:
    """Normalise a decoded RGB array to ``H x W x 3`` uint8.

    Grayscale is replicated, RGBA loses its alpha, 16-bit becomes ``round(v / 257)`` (the inverse of
    the usual 8 -> 16 bit ``v * 257``), float samples (checked: :func:`check_float_samples`) are scaled by 255.
    """
    if image.dtype == np.uint16:
        image = np.rint(image / 257.0).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        check_float_samples(image, source)
        image = np.rint(image * 255.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"{source}: unsupported pixel type {image.dtype} (expected 8- or 16-bit)")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"{source}: unsupported image shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def read_rgb_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``H x W x 3`` uint8 RGB (see :func:`to_rgb_uint8`); a missing file raises
    ``FileNotFoundError``, an unreadable or corrupt one ``ValueError`` naming it."""
    return to_rgb_uint8(read_native_rgb(path), str(path))


def load_image(spec: str | Path) -> tuple[np.ndarray, str]:
    """An image file, or ``skimage:NAME`` for one of scikit-image's bundled samples; returns the
    ``H x W x 3`` uint8 RGB image and a name stem for outputs."""
    text = str(spec)
    if text.startswith("skimage:"):
        from skimage import data

        name = text.split(":", 1)[1]
        loader = getattr(data, name, None)
        if loader is None or not callable(loader):
            raise ValueError(f"scikit-image has no sample image {name!r}")
        return to_rgb_uint8(np.asarray(loader()), text), name
    return read_rgb_image(spec), Path(spec).stem
