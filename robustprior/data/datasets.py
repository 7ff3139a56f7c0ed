"""Instance-segmentation sources and the RobustSAM training/evaluation dataset.

Sources (``InstanceMaskFolder``, ``CocoInstances``) turn files into ``InstanceRecord`` objects
(an RGB image plus its instance masks). ``RobustSegmentationDataset`` indexes (image, instance)
pairs of a source once, and turns each pair into a training item: the clear image, a degraded
copy from an injected degradation callable, the instance mask and a point or box prompt.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as coco_mask
from torch.utils.data import Dataset

from robustprior.data.image_io import read_rgb_image  # re-exported: datasets.read_rgb_image is the same function
from robustprior.data.prompts import center_point, jitter_box, mask_to_box, sample_points

__all__ = [
    "CLEAR_KIND",
    "CocoInstances",
    "Degradation",
    "InstanceMaskFolder",
    "InstanceRecord",
    "InstanceSource",
    "PROMPT_KINDS",
    "RobustSegmentationDataset",
    "collate_segmentation",
    "read_label_png",
    "read_rgb_image",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
VOID_LABEL = 255  # uint8 VOC-style masks: "void" pixels (object boundaries, unlabelled areas)
CLEAR_KIND = "identity"  # degradation name of an undegraded image (as in robustprior.data.degrade)

Degradation = Callable[[np.ndarray, int], tuple[np.ndarray, str]]

PROMPT_KINDS: tuple[str, ...] = ("points", "box", "single_point", "center_point")
"""Prompt kinds of :class:`RobustSegmentationDataset` items:

* ``points``: ``n_points`` positive points drawn inside the mask (the release trains with 3), unambiguous
  enough to train the single-mask output;
* ``box``: the tight box, jittered by ``box_jitter`` x its sides;
* ``single_point``: ONE random point inside the mask, ambiguous (part or whole?): trained, as SAM is,
  with the best of the three multimask outputs;
* ``center_point``: the evaluation protocol's point (the interior centre, :func:`center_point`), deterministic.
"""


@dataclass
class InstanceRecord:
    """One image with its instances.

    ``image``: HxWx3 uint8 RGB. ``masks``: KxHxW bool, one per instance. ``ignore``: HxW bool of
    pixels excluded from training/evaluation (void labels, crowd regions), or None when no pixel is
    ignored. ``instance_ids``: K ids (mask values for PNG sources, annotation ids for COCO).
    """

    image: np.ndarray
    masks: np.ndarray
    ignore: np.ndarray | None
    name: str
    instance_ids: tuple[int, ...]


class InstanceSource(Protocol):
    """What ``RobustSegmentationDataset`` needs from a source of instance records."""

    names: tuple[str, ...]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> InstanceRecord: ...

    def instance_areas(self, index: int) -> np.ndarray:
        """Pixel areas (K int64) of record ``index``'s masks, in record order, without decoding the image."""
        ...


def read_label_png(path: str | Path) -> np.ndarray:
    """Reads a label PNG (instance or class indices) as HxW uint8 or uint16.

    Palette PNGs give their raw palette indices, not the colours. Raises ValueError naming the
    path for missing/corrupt files and for colour (RGB/RGBA) label images.
    """
    path = Path(path)
    try:
        with Image.open(path) as label_image:
            mode = label_image.mode
            labels = np.array(label_image)
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"cannot read label image {path}: {error}") from error
    if mode in ("P", "L"):
        return labels.astype(np.uint8, copy=False)
    if mode.startswith("I;16"):
        return labels.astype(np.uint16)
    if mode == "I" and labels.size and labels.min() >= 0 and labels.max() <= np.iinfo(np.uint16).max:
        return labels.astype(np.uint16)
    raise ValueError(f"label image {path} has mode {mode}; expected single-channel indices (P, L or 16-bit)")


def _check_shape(path: Path, shape: tuple[int, ...], expected_shape: tuple[int, ...]) -> None:
    """Raises ValueError naming ``path`` when the height and width of ``shape`` differ from ``expected_shape``'s."""
    if tuple(shape[:2]) != tuple(expected_shape[:2]):
        raise ValueError(f"{path} has size {tuple(shape[:2])} (HxW), expected {tuple(expected_shape[:2])}")


class InstanceMaskFolder:
    """Images ``root/image_dir/NAME.(png|jpg|jpeg)`` with instance-ID PNGs ``root/mask_dir/NAME.png``.

    Instance PNGs are uint8 or uint16 (palette PNGs are read as indices): 0 is background, every
    other value one instance; in uint8 masks 255 is void and becomes ``ignore``. When
    ``ignore_dir`` is given, its PNGs ``NAME.png`` (e.g. VOC ``SegmentationClass``) add their 255
    pixels outside every instance to ``ignore`` as well. ``names`` restricts/orders the records;
    by default every image in ``image_dir``, sorted. A missing mask file raises ValueError at
    construction, a size mismatch when the record is loaded.
    """

    def __init__(
        self,
        root: str | Path,
        image_dir: str = "images",
        mask_dir: str = "instances",
        ignore_dir: str | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.image_dir = self.root / image_dir
        self.mask_dir = self.root / mask_dir
        self.ignore_dir = None if ignore_dir is None else self.root / ignore_dir
        if not self.image_dir.is_dir():
            raise ValueError(f"image directory {self.image_dir} does not exist")
        images_by_name = self._images_by_name()
        if names is None:
            names = sorted(images_by_name)
        missing_images = [name for name in names if name not in images_by_name]
        if missing_images:
            raise ValueError(f"no image in {self.image_dir} for {missing_images[:5]}")
        self.names = tuple(names)
        self.image_paths = tuple(images_by_name[name] for name in self.names)
        self.mask_paths = tuple(self.mask_dir / f"{name}.png" for name in self.names)
        for mask_path in self.mask_paths:
            if not mask_path.is_file():
                raise ValueError(f"instance mask file {mask_path} is missing")

    @classmethod
    def voc(cls, root: str | Path, split: str | None = None) -> "InstanceMaskFolder":
        """PASCAL VOC layout: ``JPEGImages`` + ``SegmentationObject`` (+ ``SegmentationClass`` void).

        Records are the names in ``ImageSets/Segmentation/{split}.txt`` when ``split`` is given,
        otherwise every PNG in ``SegmentationObject``, sorted.
        """
        root = Path(root)
        if split is not None:
            split_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
            names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        else:
            names = sorted(path.stem for path in (root / "SegmentationObject").glob("*.png"))
        ignore_dir = "SegmentationClass" if (root / "SegmentationClass").is_dir() else None
        return cls(root, "JPEGImages", "SegmentationObject", ignore_dir=ignore_dir, names=names)

    def _images_by_name(self) -> dict[str, Path]:
        """Maps each image stem in ``image_dir`` to its file; duplicated stems raise ValueError."""
        images_by_name: dict[str, Path] = {}
        for path in sorted(self.image_dir.iterdir()):
            if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
                continue
            if path.stem in images_by_name:
                raise ValueError(f"two images named {path.stem}: {images_by_name[path.stem]} and {path}")
            images_by_name[path.stem] = path
        return images_by_name

    def __len__(self) -> int:
        return len(self.names)

    def _instance_values(self, labels: np.ndarray) -> np.ndarray:
        """The instance ids present in an instance-ID image (sorted, without background/void)."""
        values = np.unique(labels)
        values = values[values != 0]
        if labels.dtype == np.uint8:
            values = values[values != VOID_LABEL]
        return values

    def instance_areas(self, index: int) -> np.ndarray:
        """Pixel areas (K int64) of record ``index``'s instances, in instance-id order."""
        labels = read_label_png(self.mask_paths[index])
        values, counts = np.unique(labels, return_counts=True)
        keep = np.isin(values, self._instance_values(labels))
        return counts[keep].astype(np.int64)

    def __getitem__(self, index: int) -> InstanceRecord:
        image = read_rgb_image(self.image_paths[index])
        mask_path = self.mask_paths[index]
        labels = read_label_png(mask_path)
        _check_shape(mask_path, labels.shape, image.shape)
        values = self._instance_values(labels)
        masks = labels[None, :, :] == values[:, None, None]
        ignore = labels == VOID_LABEL if labels.dtype == np.uint8 else np.zeros(labels.shape, dtype=bool)
        if self.ignore_dir is not None:
            ignore_path = self.ignore_dir / f"{self.names[index]}.png"
            if ignore_path.is_file():
                class_labels = read_label_png(ignore_path)
                _check_shape(ignore_path, class_labels.shape, image.shape)
                ignore |= (class_labels == VOID_LABEL) & ~masks.any(axis=0)
        return InstanceRecord(
            image=image,
            masks=masks,
            ignore=ignore if ignore.any() else None,
            name=self.names[index],
            instance_ids=tuple(int(value) for value in values),
        )


def _annotation_rle(segmentation: Any, height: int, width: int) -> dict:
    """A COCO annotation's segmentation (polygons, uncompressed or compressed RLE) as one compressed RLE."""
    if isinstance(segmentation, list):
        # Polygons with fewer than 3 points enclose nothing; pycocotools would also misread a
        # 4-number polygon as a bounding box.
        polygons = [polygon for polygon in segmentation if len(polygon) >= 6]
        if not polygons:
            return coco_mask.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
        return coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        return coco_mask.frPyObjects(segmentation, height, width)
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, bytes)):
        counts = segmentation["counts"]
        return {"size": list(segmentation["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}
    raise ValueError(f"unsupported COCO segmentation of type {type(segmentation).__name__}")


class CocoInstances:
    """Instances from a COCO-format JSON (polygons, uncompressed or compressed RLE).

    Records follow the order of the JSON's ``images``; a record's name is its file name's stem
    (stems must be unique). ``iscrowd`` annotations are not instances: their regions become
    ``ignore``. Images are read from ``image_root / file_name``.
    """

    def __init__(self, annotation_json: str | Path, image_root: str | Path) -> None:
        self.annotation_json = Path(annotation_json)
        self.image_root = Path(image_root)
        with self.annotation_json.open() as handle:
            content = json.load(handle)
        self.images: tuple[dict, ...] = tuple(content["images"])
        annotations_by_image: dict[int, list[dict]] = {image["id"]: [] for image in self.images}
        for annotation in content.get("annotations", []):
            if annotation["image_id"] not in annotations_by_image:
                raise ValueError(
                    f"annotation {annotation.get('id')} in {self.annotation_json} refers to "
                    f"unknown image id {annotation['image_id']}"
                )
            annotations_by_image[annotation["image_id"]].append(annotation)
        self.annotations = tuple(annotations_by_image[image["id"]] for image in self.images)
        self.names = tuple(Path(image["file_name"]).stem for image in self.images)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"image file names in {self.annotation_json} do not have unique stems")

    def __len__(self) -> int:
        return len(self.images)

    def _selected_annotations(self, index: int, crowd: bool) -> list[dict]:
        """Record ``index``'s crowd (``crowd=True``) or instance (``crowd=False``) annotations."""
        return [annotation for annotation in self.annotations[index] if bool(annotation.get("iscrowd", 0)) == crowd]

    def _rles(self, index: int, crowd: bool) -> list[dict]:
        """Compressed RLEs of record ``index``'s crowd (``crowd=True``) or instance annotations."""
        image = self.images[index]
        return [
            _annotation_rle(annotation["segmentation"], image["height"], image["width"])
            for annotation in self._selected_annotations(index, crowd)
        ]

    def instance_areas(self, index: int) -> np.ndarray:
        """Pixel areas (K int64) of record ``index``'s non-crowd instances, in annotation order."""
        return np.array([coco_mask.area(rle) for rle in self._rles(index, crowd=False)], dtype=np.int64)

    def __getitem__(self, index: int) -> InstanceRecord:
        image_entry = self.images[index]
        height, width = image_entry["height"], image_entry["width"]
        image_path = self.image_root / image_entry["file_name"]
        image = read_rgb_image(image_path)
        _check_shape(image_path, image.shape, (height, width))
        instance_rles = self._rles(index, crowd=False)
        if instance_rles:
            masks = np.moveaxis(coco_mask.decode(instance_rles), 2, 0).astype(bool)
        else:
            masks = np.zeros((0, height, width), dtype=bool)
        crowd_rles = self._rles(index, crowd=True)
        ignore = coco_mask.decode(coco_mask.merge(crowd_rles)).astype(bool) if crowd_rles else None
        return InstanceRecord(
            image=image,
            masks=masks,
            ignore=ignore if ignore is not None and ignore.any() else None,
            name=self.names[index],
            instance_ids=tuple(int(annotation["id"]) for annotation in self._selected_annotations(index, crowd=False)),
        )


class RobustSegmentationDataset(Dataset):
    """(image, instance) pairs of a source as RobustSAM items (clear + degraded image, mask, prompt).

    The index is built once: records (optionally only ``names``, in source order) x instances
    with at least ``min_area`` pixels, keeping per image the ``instances_per_image`` largest
    (ties: record order; None keeps all). Each item draws its randomness from a seed derived
    from ``(seed, epoch, index)`` with ``np.random.SeedSequence``; ``degradation(clear, item_seed)``
    must return ``(degraded HxWx3 uint8, kind name)`` and None means no degradation
    (kind ``CLEAR_KIND``). Item keys: ``clear_image``, ``degraded_image`` (HxWx3 uint8),
    ``degradation`` (str), ``mask`` (HxW bool), ``ignore`` (HxW bool), ``name``, ``instance_id``,
    ``seed``, ``prompt_kind`` (one of :data:`PROMPT_KINDS`) and either ``point_coords`` (N x 2
    float32, (x, y)) + ``point_labels`` (N int64) or ``box`` (4 float32, XYXY inclusive).

    ``prompt`` is one of :data:`PROMPT_KINDS`, or ``"mixed"``: each item then draws its kind from
    ``prompt_mix`` (``{kind: weight}``, e.g. ``{"points": 2, "box": 1, "single_point": 1}``).
    """

    def __init__(
        self,
        source: InstanceSource,
        degradation: Degradation | None,
        prompt: str = "points",
        n_points: int = 3,
        box_jitter: float = 0.1,
        seed: int = 0,
        min_area: int = 1,
        instances_per_image: int | None = 1,
        names: Sequence[str] | None = None,
        prompt_mix: dict[str, float] | None = None,
    ) -> None:
        if prompt not in (*PROMPT_KINDS, "mixed"):
            raise ValueError(f"prompt must be one of {', '.join(PROMPT_KINDS)} or mixed, got {prompt!r}")
        if n_points < 1:
            raise ValueError(f"n_points must be at least 1, got {n_points}")
        if instances_per_image is not None and instances_per_image < 1:
            raise ValueError(f"instances_per_image must be at least 1 or None, got {instances_per_image}")
        self.prompt_kinds, self.prompt_weights = self._prompt_distribution(prompt, prompt_mix)
        self.source = source
        self.degradation = degradation
        self.prompt = prompt
        self.n_points = n_points
        self.box_jitter = box_jitter
        self.seed = seed
        self.min_area = max(1, min_area)
        self.instances_per_image = instances_per_image
        self.epoch = 0
        self.pairs = self._build_index(self._record_indices(names))

    @staticmethod
    def _prompt_distribution(prompt: str, prompt_mix: dict[str, float] | None) -> tuple[tuple[str, ...], np.ndarray]:
        """The prompt kinds an item can get and their probabilities."""
        if prompt != "mixed":
            if prompt_mix:
                raise ValueError(f"prompt_mix is only used with prompt: mixed (prompt is {prompt!r})")
            return (prompt,), np.ones(1)
        if not prompt_mix:
            raise ValueError("prompt: mixed needs prompt_mix, e.g. {points: 2, box: 1, single_point: 1}")
        unknown = sorted(set(prompt_mix) - set(PROMPT_KINDS))
        if unknown:
            raise ValueError(f"prompt_mix has unknown kind(s) {', '.join(unknown)}; allowed: {', '.join(PROMPT_KINDS)}")
        weights = np.array([float(prompt_mix[kind]) for kind in prompt_mix])
        if (weights < 0).any() or not np.isfinite(weights).all() or weights.sum() <= 0:
            raise ValueError(f"prompt_mix weights must be finite, >= 0 and not all zero, got {prompt_mix}")
        return tuple(prompt_mix), weights / weights.sum()

    def _record_indices(self, names: Sequence[str] | None) -> list[int]:
        """Source indices of the selected records, in source order."""
        if names is None:
            return list(range(len(self.source)))
        wanted = set(names)
        unknown = sorted(wanted - set(self.source.names))
        if unknown:
            raise ValueError(f"names not in the source: {unknown[:5]}")
        return [index for index, name in enumerate(self.source.names) if name in wanted]

    def _build_index(self, record_indices: list[int]) -> tuple[tuple[int, int], ...]:
        """(record index, instance position) pairs passing the area filter and per-image cap."""
        pairs: list[tuple[int, int]] = []
        for record_index in record_indices:
            areas = self.source.instance_areas(record_index)
            kept = [position for position in np.argsort(-areas, kind="stable") if areas[position] >= self.min_area]
            if self.instances_per_image is not None:
                kept = kept[: self.instances_per_image]
            pairs.extend((record_index, int(position)) for position in sorted(kept))
        return tuple(pairs)

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose prompts/degradations ``__getitem__`` produces."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def _seed_sequence(self, index: int) -> np.random.SeedSequence:
        return np.random.SeedSequence([self.seed, self.epoch, index])

    def item_seed(self, index: int) -> int:
        """The integer seed passed to the degradation for item ``index`` in the current epoch."""
        return int(self._seed_sequence(index).generate_state(1, dtype=np.uint32)[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.pairs):
            raise IndexError(f"index {index} out of range for {len(self.pairs)} items")
        record_index, position = self.pairs[index]
        record = self.source[record_index]
        mask = record.masks[position]
        clear = record.image
        item_seed = self.item_seed(index)
        prompt_rng = np.random.default_rng(self._seed_sequence(index).spawn(1)[0])
        if self.degradation is None:
            degraded, kind = clear.copy(), CLEAR_KIND
        else:
            degraded, kind = self.degradation(clear, item_seed)
            if degraded.shape != clear.shape or degraded.dtype != np.uint8:
                raise ValueError(
                    f"degradation returned {degraded.shape} {degraded.dtype}; expected {clear.shape} uint8"
                )
        item: dict[str, Any] = {
            "clear_image": clear,
            "degraded_image": degraded,
            "degradation": kind,
            "mask": mask,
            "ignore": record.ignore if record.ignore is not None else np.zeros(mask.shape, dtype=bool),
            "name": record.name,
            "instance_id": record.instance_ids[position],
            "seed": item_seed,
        }
        kind = self.prompt_kinds[0]
        if len(self.prompt_kinds) > 1:
            kind = self.prompt_kinds[int(prompt_rng.choice(len(self.prompt_kinds), p=self.prompt_weights))]
        item["prompt_kind"] = kind
        if kind in ("points", "single_point"):
            count = self.n_points if kind == "points" else 1
            item["point_coords"], item["point_labels"] = sample_points(mask, count, prompt_rng)
        elif kind == "center_point":
            item["point_coords"], item["point_labels"] = center_point(mask)[None], np.ones(1, dtype=np.int64)
        else:
            box = mask_to_box(mask)
            if self.box_jitter > 0:
                box = jitter_box(box, prompt_rng, self.box_jitter, image_size=mask.shape)
            item["box"] = box
        return item


PROMPT_KEYS = ("point_coords", "point_labels", "box")


def collate_segmentation(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batches dataset items: prompt arrays are stacked into tensors (``point_coords`` B x N x 2
    float32, ``point_labels`` B x N int64, ``box`` B x 4 float32), ``seed`` becomes a B int64
    tensor, and everything else (variable-size images, masks, names) stays a list of length B.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    if len({frozenset(item) & set(PROMPT_KEYS) for item in batch}) > 1:
        raise ValueError("cannot stack the prompts of a batch that mixes points and boxes (prompt: mixed); "
                         "group the items by 'prompt_kind' first")
    collated: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        if key in PROMPT_KEYS:
            collated[key] = torch.from_numpy(np.stack(values))
        elif key == "seed":
            collated[key] = torch.tensor(values, dtype=torch.int64)
        else:
            collated[key] = values
    return collated
