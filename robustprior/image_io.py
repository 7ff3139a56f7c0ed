"""Reading images the way every robustprior command expects them: ``H x W x 3`` uint8 RGB."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def to_rgb_uint8(image: np.ndarray, source: str = "image") -> np.ndarray:
    """Normalise a decoded array to ``H x W x 3`` uint8 RGB (input channel order RGB).

    Grayscale is replicated, RGBA loses its alpha, 16-bit is scaled by 255/65535 and rounded.
    """
    if image.dtype == np.uint16:
        image = np.round(image.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
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
    """Read an image file as ``H x W x 3`` uint8 RGB; unreadable or corrupt files raise ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ValueError(f"cannot decode image {path}: the file is corrupt or not an image")
    if image.ndim == 3 and image.shape[2] == 3:
        image = image[:, :, ::-1]
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, [2, 1, 0, 3]]
    return to_rgb_uint8(image, str(path))


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
