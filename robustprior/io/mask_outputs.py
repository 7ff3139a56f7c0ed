"""Writing automatic masks the way segment-anything's ``scripts/amg.py`` does.

* ``binary_mask``: a folder per image holding ``0.png``, ``1.png``, ... (one 0/255 mask each) and
  ``metadata.csv`` with amg.py's columns (:data:`METADATA_COLUMNS`);
* ``coco_rle``: one JSON list per image of the generator's records, masks as COCO RLE
  (``{"size": [H, W], "counts": "..."}``), with ``area``, ``bbox`` (XYWH), ``predicted_iou``,
  ``point_coords``, ``stability_score`` and ``crop_box``.
"""
from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from robustprior.io.atomic import atomic_path

OUTPUT_MODES = ("binary_mask", "coco_rle")
METADATA_COLUMNS = ("id", "area", "bbox_x0", "bbox_y0", "bbox_w", "bbox_h", "point_input_x", "point_input_y",
                    "predicted_iou", "stability_score", "crop_box_x0", "crop_box_y0", "crop_box_w", "crop_box_h")
_MASK_FILE = re.compile(r"^\d+\.png$")


def write_png(path: Path, image: np.ndarray) -> None:
    """Write an ``H x W`` (gray) or ``H x W x 3`` RGB uint8/uint16 image as PNG (atomically)."""
    if image.ndim == 3:
        image = image[:, :, ::-1]
    with atomic_path(path, suffix=".png") as temporary:
        if not cv2.imwrite(temporary, image):
            raise OSError(f"could not write {path}")


def metadata_row(index: int, record: Mapping[str, Any]) -> list[str]:
    """One ``metadata.csv`` row of a generator record (columns :data:`METADATA_COLUMNS`)."""
    return [str(index), str(record["area"]), *map(str, record["bbox"]), *map(str, record["point_coords"][0]),
            str(record["predicted_iou"]), str(record["stability_score"]), *map(str, record["crop_box"])]


def record_mask(record: Mapping[str, Any]) -> np.ndarray:
    """The ``H x W`` bool mask of a record in either output mode."""
    segmentation = record["segmentation"]
    if isinstance(segmentation, np.ndarray):
        return segmentation.astype(bool)
    return mask_utils.decode({"size": segmentation["size"], "counts": segmentation["counts"].encode()}).astype(bool)


def clear_mask_folder(folder: Path) -> None:
    """Remove what :func:`write_mask_folder` writes (``N.png`` and ``metadata.csv``), nothing else."""
    if folder.is_dir():
        for path in folder.iterdir():
            if _MASK_FILE.match(path.name) or path.name == "metadata.csv":
                path.unlink()


def write_mask_folder(folder: Path, records: Sequence[Mapping[str, Any]]) -> Path:
    """``folder/N.png`` (mask N as 0/255) and ``folder/metadata.csv`` for ``binary_mask`` records."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [list(METADATA_COLUMNS)]
    for index, record in enumerate(records):
        write_png(folder / f"{index}.png", record_mask(record).astype(np.uint8) * 255)
        rows.append(metadata_row(index, record))
    with atomic_path(folder / "metadata.csv") as temporary, open(temporary, "w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    return folder / "metadata.csv"


def write_coco_rle(path: Path, records: Sequence[Mapping[str, Any]]) -> Path:
    """``path`` (JSON): the ``coco_rle`` records as the generator returns them."""
    with atomic_path(path, suffix=".json") as temporary:
        Path(temporary).write_text(json.dumps(list(records)))
    return path
