"""Overlays of masks and prompts on images (for the CLI and reports)."""
from __future__ import annotations

import cv2
import numpy as np


def distinct_colors(count: int, seed: int = 0) -> np.ndarray:
    """``count x 3`` uint8 RGB colours, well spread in hue, reproducible."""
    if count == 0:
        return np.zeros((0, 3), dtype=np.uint8)
    rng = np.random.default_rng(seed)
    hues = (np.arange(count) * 0.618033988749895 + rng.random()) % 1.0
    hsv = np.stack([hues * 179, np.full(count, 200), np.full(count, 255)], axis=1).astype(np.uint8)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]


def overlay_masks(
    image: np.ndarray,
    masks: np.ndarray,
    alpha: float = 0.5,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
) -> np.ndarray:
    """Blend ``K x H x W`` bool masks (each its own colour, outlined) over an ``H x W x 3`` uint8 image,
    and draw point prompts (green = foreground, red = background) and a box prompt."""
    out = image.astype(np.float32).copy()
    for mask, color in zip(masks, distinct_colors(len(masks))):
        out[mask] = (1 - alpha) * out[mask] + alpha * color
    out = out.round().astype(np.uint8)
    for mask, color in zip(masks, distinct_colors(len(masks))):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), 2)
    radius = max(3, round(max(image.shape[:2]) / 150))
    if points is not None:
        for (x, y), label in zip(np.asarray(points), np.ones(len(points)) if labels is None else labels):
            color = (0, 255, 0) if label == 1 else (255, 0, 0)
            cv2.circle(out, (round(x), round(y)), radius, color, -1)
            cv2.circle(out, (round(x), round(y)), radius, (255, 255, 255), 1)
    if box is not None:
        x0, y0, x1, y1 = (round(v) for v in np.asarray(box).reshape(-1))
        cv2.rectangle(out, (x0, y0), (x1, y1), (0, 128, 255), 2)
    return out
