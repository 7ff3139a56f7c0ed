"""Prompt sampling from instance masks: points, boxes and deterministic evaluation points.

Coordinate convention (shared by every function here, and the one SAM's predictor expects):
a point is ``(x, y)`` = (column, row) in pixels of the original image, and the pixel at
``mask[row, column]`` is addressed by the integer coordinates ``(column, row)`` (no ``+ 0.5``
shift). Boxes are ``[x0, y0, x1, y1]`` (XYXY) with *inclusive* corners: ``x1``/``y1`` are the
largest column/row index covered by the mask, as in ``segment_anything.utils.amg``'s
``batched_mask_to_box``. Point labels follow SAM: 1 = foreground, 0 = background.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

POSITIVE_LABEL = 1
NEGATIVE_LABEL = 0


def _as_binary_mask(mask: np.ndarray) -> np.ndarray:
    """Checks that ``mask`` is a 2-D boolean array and returns it."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.bool_:
        raise ValueError(f"expected an HxW boolean mask, got shape {mask.shape} and dtype {mask.dtype}")
    return mask


def _sample_pixels(region: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Samples ``count`` (x, y) pixel coordinates uniformly from the True pixels of ``region``.

    Sampling is without replacement when the region has at least ``count`` pixels, with
    replacement otherwise. Returns ``count x 2`` float32.
    """
    rows, columns = np.nonzero(region)
    chosen = rng.choice(rows.size, size=count, replace=rows.size < count)
    return np.stack([columns[chosen], rows[chosen]], axis=1).astype(np.float32)


def sample_points(
    mask: np.ndarray, n: int, rng: np.random.Generator, n_negative: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Samples point prompts for one instance.

    ``mask`` is HxW bool. Returns ``coords`` ((n + n_negative) x 2 float32, (x, y) pixel
    coordinates, positives first) and ``labels`` ((n + n_negative,) int64, 1 for the ``n``
    points drawn uniformly inside the mask, 0 for the ``n_negative`` points drawn uniformly
    outside it). Raises ValueError when the mask is empty, or when negatives are requested
    from a mask that covers the whole image.
    """
    mask = _as_binary_mask(mask)
    if n < 0 or n_negative < 0 or n + n_negative == 0:
        raise ValueError(f"need a positive number of points, got n={n}, n_negative={n_negative}")
    if not mask.any():
        raise ValueError("cannot sample points from an empty mask")
    positive = _sample_pixels(mask, n, rng)
    coordinate_blocks = [positive]
    if n_negative > 0:
        if mask.all():
            raise ValueError("cannot sample negative points: the mask covers the whole image")
        coordinate_blocks.append(_sample_pixels(~mask, n_negative, rng))
    coords = np.concatenate(coordinate_blocks, axis=0)
    labels = np.concatenate(
        [np.full(n, POSITIVE_LABEL, dtype=np.int64), np.full(n_negative, NEGATIVE_LABEL, dtype=np.int64)]
    )
    return coords, labels


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """Tight XYXY box ``[x0, y0, x1, y1]`` (float32, inclusive max indices) of an HxW bool mask.

    Raises ValueError for an empty mask.
    """
    mask = _as_binary_mask(mask)
    occupied_columns = np.flatnonzero(mask.any(axis=0))
    occupied_rows = np.flatnonzero(mask.any(axis=1))
    if occupied_columns.size == 0:
        raise ValueError("cannot compute the box of an empty mask")
    return np.array(
        [occupied_columns[0], occupied_rows[0], occupied_columns[-1], occupied_rows[-1]], dtype=np.float32
    )


def jitter_box(
    box: np.ndarray, rng: np.random.Generator, scale: float = 0.1, *, image_size: tuple[int, int]
) -> np.ndarray:
    """Perturbs an XYXY box for training.

    Each x coordinate moves by a uniform offset in ``[-scale * width, scale * width]`` and each
    y coordinate by one in ``[-scale * height, scale * height]`` (width/height of the input box).
    The result is clipped to the image (``image_size`` = (height, width); inclusive pixel
    range ``[0, width - 1] x [0, height - 1]``) and its corners are re-ordered so that
    ``x0 <= x1`` and ``y0 <= y1``. Returns float32 of shape (4,).
    """
    box = np.asarray(box, dtype=np.float64)
    if box.shape != (4,):
        raise ValueError(f"expected an XYXY box of shape (4,), got {box.shape}")
    if scale < 0:
        raise ValueError(f"scale must be non-negative, got {scale}")
    height, width = image_size
    box_width = box[2] - box[0]
    box_height = box[3] - box[1]
    spread = scale * np.array([box_width, box_height, box_width, box_height])
    moved = box + rng.uniform(-1.0, 1.0, size=4) * spread
    moved[[0, 2]] = np.clip(moved[[0, 2]], 0, width - 1)
    moved[[1, 3]] = np.clip(moved[[1, 3]], 0, height - 1)
    x0, x1 = sorted(moved[[0, 2]])
    y0, y1 = sorted(moved[[1, 3]])
    return np.array([x0, y0, x1, y1], dtype=np.float32)


def center_point(mask: np.ndarray) -> np.ndarray:
    """The mask pixel farthest from the mask boundary, as (x, y) float32 of shape (2,).

    Distances are Euclidean distances to the nearest pixel outside the mask, with everything
    outside the image counting as outside. Ties (e.g. the central 2x2 block of an even-sided
    rectangle) go to the tied pixel nearest the tied pixels' mean, then to the first in row-major
    order, so the result is deterministic. Raises ValueError for an empty mask.
    """
    mask = _as_binary_mask(mask)
    if not mask.any():
        raise ValueError("cannot find the centre of an empty mask")
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    rows, columns = np.nonzero(distance == distance.max())
    offsets = (rows - rows.mean()) ** 2 + (columns - columns.mean()) ** 2
    best = int(np.argmin(offsets))
    return np.array([columns[best], rows[best]], dtype=np.float32)
