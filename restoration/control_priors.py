"""Control priors for the Table 8 recipes: the generator's true instance masks, right or shuffled.

* ``gt_masks``: each degraded image's true instance map (the scene generator's exact visible masks),
  the ceiling of what a segmentation prior can give the restoration network;
* ``shuffled_masks``: the true instance map of an image of another scene (a seeded derangement of the
  scenes, :func:`shuffled_sources`; resized with nearest neighbour to this image's size): equally clean masks that describe the wrong image,
  i.e. what a wrong prior costs.

Both are stored as :class:`robustprior.priors.StructurePrior` files in the prior cache, so
:class:`~restoration.datasets.PriorIndex` and the datasets read them like SAM priors. Real datasets
have no instance maps, so the control rows exist only for generated data
(:func:`robustprior.data.scenes.write_sots_dataset` / ``write_gopro_dataset`` write ``instances/``).
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from restoration.paired_data import read_rgb
from restoration.prior_index import PriorIndex
from robustprior.data.scenes import INSTANCE_FOLDER
from robustprior.data.structure import masks_to_label_map, structure_map
from robustprior.priors import StructurePrior

CONTROL_PRIOR_KINDS: tuple[str, ...] = ("gt_masks", "shuffled_masks")
CONTROL_DESCRIPTIONS = {"gt_masks": "ground-truth instance masks (the scene generator's)",
                        "shuffled_masks": "another image's ground-truth instance masks (shuffled)"}


class MissingInstanceMapsError(ValueError):
    """A control row was asked for on data without the generator's instance maps."""


def instance_map_path(lq_path: str | Path) -> Path:
    """Where the generator put the true instance map of a degraded image.

    SOTS ``.../hazy/0001_0.8_0.2.jpg`` -> ``.../instances/0001.png`` (the clear image's name: the part
    before the first ``_``); GoPro ``.../SEQUENCE/blur/000001.png`` -> ``.../SEQUENCE/instances/000001.png``.
    """
    lq_path = Path(lq_path)
    stem = lq_path.stem.split("_")[0] if lq_path.parent.name == "hazy" else lq_path.stem
    return lq_path.parent.parent / INSTANCE_FOLDER / f"{stem}.png"


def has_instance_maps(lq_paths: Sequence[str | Path]) -> bool:
    """True when every degraded image has its generator instance map (and there is at least one image)."""
    return bool(lq_paths) and all(instance_map_path(path).is_file() for path in lq_paths)


def read_instance_map(path: str | Path) -> np.ndarray:
    """H x W int64 instance map (0 = background, k = the k-th object) from a 8/16-bit single-channel PNG."""
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ValueError(f"{path}: not a readable image")
    if array.ndim != 2:
        raise ValueError(f"{path}: an instance map must have one channel, got shape {array.shape}")
    return array.astype(np.int64)


def instance_masks(instances: np.ndarray) -> np.ndarray:
    """K x H x W bool masks of the objects present in ``instances``, largest first (as priors sort them)."""
    ids = [value for value in np.unique(instances) if value != 0]
    masks = np.stack([instances == value for value in ids]) if ids else np.zeros((0, *instances.shape), dtype=bool)
    return masks[np.argsort([-int(mask.sum()) for mask in masks], kind="stable")] if ids else masks


def shuffled_partners(names: Sequence[str], seed: int) -> dict[str, str]:
    """A seeded derangement: each name mapped to another name, none to itself."""
    names = list(dict.fromkeys(str(name) for name in names))
    if len(names) < 2:
        raise ValueError(f"shuffled masks need at least 2 scenes, got {len(names)}")
    order = np.random.default_rng(seed).permutation(len(names))
    # a cyclic shift of a random order: every name gets the next one's
    return {names[order[index]]: names[order[(index + 1) % len(names)]] for index in range(len(names))}


def scene_key(lq_path: str | Path) -> str:
    """The scene a degraded image shows: SOTS hazy images of one clear image, and GoPro frames of one
    sequence, share a scene (their masks are nearly the same, so shuffling pairs scenes, not files)."""
    lq_path = Path(lq_path)
    if lq_path.parent.name == "hazy":
        return str(lq_path.parent.parent / lq_path.stem.split("_")[0])
    return str(lq_path.parent.parent)


def shuffled_sources(lq_paths: Sequence[str | Path], seed: int) -> dict[str, str]:
    """For each degraded image, the image whose instance map it gets as ``shuffled_masks``: scenes are
    deranged (:func:`shuffled_partners`), and the i-th image of a scene takes the (i mod n)-th of its
    partner scene's n images, so no image gets masks of its own scene."""
    scenes: dict[str, list[str]] = {}
    for path in dict.fromkeys(str(path) for path in lq_paths):
        scenes.setdefault(scene_key(path), []).append(path)
    partners = shuffled_partners(list(scenes), seed)
    return {path: scenes[partners[scene]][index % len(scenes[partners[scene]])]
            for scene, paths in scenes.items() for index, path in enumerate(paths)}


def _resize_nearest(instances: np.ndarray, height: int, width: int) -> np.ndarray:
    if instances.shape == (height, width):
        return instances
    return cv2.resize(instances.astype(np.int32), (width, height), interpolation=cv2.INTER_NEAREST).astype(np.int64)


def control_prior(image: np.ndarray, instances: np.ndarray) -> StructurePrior:
    """The :class:`StructurePrior` of ``image`` (H x W x 3 uint8) whose masks are ``instances`` (H x W)."""
    masks = instance_masks(instances)
    label_map = masks_to_label_map(masks) if len(masks) else np.zeros(instances.shape, dtype=np.int64)
    return StructurePrior(masks=masks, label_map=label_map.astype(np.int64),
                          structure_map=structure_map(image, label_map), embedding=None, mask_feature=None,
                          scores=np.ones(len(masks), dtype=np.float32))


def prepare_control_priors(options: Mapping[str, Any], lq_paths: Sequence[str | Path], cache_dir: str | Path,
                           progress: bool = True) -> PriorIndex:
    """Write the control priors (``options["kind"]`` in :data:`CONTROL_PRIOR_KINDS`) of every lq image
    into ``cache_dir/<kind>[_seed<S>]/`` and return their :class:`~restoration.prior_index.PriorIndex`.

    ``shuffled_masks`` pairs the images with :func:`shuffled_partners` (seed ``options["shuffle_seed"]``).
    """
    kind = options["kind"]
    if kind not in CONTROL_PRIOR_KINDS:
        raise ValueError(f"control prior kind must be one of {CONTROL_PRIOR_KINDS}, got {kind!r}")
    paths = list(dict.fromkeys(str(path) for path in lq_paths))
    missing = [path for path in paths if not instance_map_path(path).is_file()]
    if missing:
        raise MissingInstanceMapsError(
            f"the {kind} control row needs the scene generator's instance maps, and {len(missing)} of {len(paths)} "
            f"images have none (e.g. {instance_map_path(missing[0])}); generated data has them, real data does not")
    seed = int(options.get("shuffle_seed", 0))
    partners = shuffled_sources(paths, seed) if kind == "shuffled_masks" else {path: path for path in paths}
    folder = Path(cache_dir) / (kind if kind == "gt_masks" else f"{kind}_seed{seed}")
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for path in tqdm(paths, desc=f"{kind} priors", disable=not progress):
        image = read_rgb(path)
        source = instance_map_path(partners[path])
        instances = _resize_nearest(read_instance_map(source), *image.shape[:2])
        key = hashlib.sha256(f"{path}|{source}|{image.shape}".encode()).hexdigest()[:32]
        target = folder / f"{key}.safetensors"
        try:
            StructurePrior.load(target)
        except (ValueError, OSError):
            control_prior(image, instances).save(target, {"kind": kind, "instances": str(source)})
        files[path] = target
    description = {"kind": kind, "model": CONTROL_DESCRIPTIONS[kind] + (f", seed {seed}" if kind == "shuffled_masks" else ""),
                   "checkpoint": None, "fingerprint": kind if kind == "gt_masks" else f"{kind}_seed{seed}",
                   "settings": None, "grouping": options.get("grouping", "smallest"), "features": None,
                   "cache_folder": str(folder)}
    return PriorIndex(kind, files, None, description, grouping=options.get("grouping", "smallest"))
