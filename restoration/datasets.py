"""Paired restoration data with SAM / RobustSAM structure priors attached to every item.

The priors of the **degraded inputs** (lq images) are computed once, before training, through the
prior's disk cache (:meth:`robustprior.priors.SAMPrior.precompute`); :class:`PriorIndex` then maps
each lq file to its cache file (found by the image's content hash), and :class:`PriorPairedDataset`
loads it per item:

* ``prior["label_map"]``: H x W int64 regions (0 = uncovered) at the lq image's resolution, from the
  prior's masks by the grouping rule ``prior.grouping`` (:mod:`restoration.mask_groups`);
* ``prior["features"]`` (optional): a latent map of the prior (``mask_feature`` or ``embedding``),
  C x h x w; the prior cache stores a latent map (float16) only when ``prior.features`` names it;
* ``prior["grey_scale"]`` (optional): the run's grey-level scale of the grayscale coding (int64 scalar).

Together they are the :data:`restoration.archs.PriorBatch` every network takes as ``network(lq, prior)``.

Training crops and flips are the :class:`~restoration.paired_data.PairedImageDataset`'s own: the
dataset's augmentation is re-run with the same ``(seed, epoch, index)`` on a stack of the label map
and two pixel-coordinate channels, so the label map is cropped, mirror-padded, flipped and
transposed exactly like the image, and the coordinate channels say where every output pixel came
from. Latent features are bilinearly sampled at those source coordinates (at the crop's pixel grid);
at test time they are resampled over the image at their own density
(:func:`~robustprior.data.structure.resample_prior_features`).

SAM's features cover the model's padded square input: an H x W image is resized so that its long
side fills the square, so the feature map covers the image-plane square ``[0, S) x [0, S)`` with
``S = max(H, W)``, the image occupying its top-left part.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from restoration.control_priors import CONTROL_DESCRIPTIONS, CONTROL_PRIOR_KINDS, prepare_control_priors
from restoration.mask_groups import GROUPINGS
from restoration.paired_data import PairedImageDataset, read_rgb
from restoration.prior_index import PriorIndex
from robustprior.data.structure import resample_prior_features
from robustprior.priors import RobustSAMPrior, SAMPrior
from robustprior.training.config import Field, Section, validate_config

PRIOR_KINDS: tuple[str, ...] = ("none", "sam", "robustsam", *CONTROL_PRIOR_KINDS)
PRIOR_CLASSES: dict[str, type[SAMPrior] | type[RobustSAMPrior]] = {"sam": SAMPrior, "robustsam": RobustSAMPrior}
FEATURE_NAMES: tuple[str, ...] = ("mask_feature", "embedding")
GENERATOR_SETTINGS: tuple[str, ...] = (
    "points_per_side",
    "pred_iou_thresh",
    "stability_score_thresh",
    "box_nms_thresh",
    "min_mask_region_area",
    "points_per_batch",
)


def _check_grey_scale(value: int | str) -> None:
    if isinstance(value, str) and value != "auto":
        raise ValueError(f"must be a number of grey levels (>= 1) or auto, got {value!r}")
    if isinstance(value, int) and value < 1:
        raise ValueError(f"must be >= 1, got {value}")


NO_MASKS_WARNING = r".*: no masks for "  # robustprior.priors' warning for images that got no mask

PRIOR_SCHEMA = Section({
    "kind": Field(str, "none", choices=PRIOR_KINDS),
    "checkpoint": Field(str, "tiny", doc='"tiny" (bundled), a known name (sam_vit_h, robustsam_vit_h, ...) or a file'),
    "model_type": Field(str, None, doc="inferred from the checkpoint when null"),
    "points_per_side": Field(int, 32, at_least=1, doc="automatic mask generator settings (SAM's defaults)"),
    "pred_iou_thresh": Field(float, 0.88),
    "stability_score_thresh": Field(float, 0.95),
    "box_nms_thresh": Field(float, 0.7, at_least=0, at_most=1),
    "min_mask_region_area": Field(int, 0, at_least=0),
    "points_per_batch": Field(int, 64, at_least=1),
    "cache_dir": Field(str, None, doc="null: <run folder>/prior_cache"),
    "features": Field(str, None, choices=FEATURE_NAMES,
                      doc="the latent map handed to a 'features' network; the prior cache keeps only this one "
                          "(float16), none when null"),
    "num_segments": Field((int, str), "auto", check=_check_grey_scale,
                          doc="grey-level scale of the grayscale coding; auto: the most regions of any image of "
                              "this run (differs between prior rows: give a number to compare rows on one scale)"),
    "grouping": Field(str, "smallest", choices=GROUPINGS, doc="masks -> regions (restoration.mask_groups)"),
    "shuffle_seed": Field(int, 0, doc="shuffled_masks: the seed of the derangement pairing the images"),
})
DEFAULT_PRIOR_OPTIONS: dict[str, Any] = validate_config({}, PRIOR_SCHEMA)


# ----------------------------------------------------------------------------- prior index
class LazyImages(Sequence[np.ndarray]):
    """Image files read on access as H x W x 3 uint8 RGB (:func:`read_rgb`), so that a whole data set
    can be handed to ``precompute`` without holding it in memory."""

    def __init__(self, paths: Sequence[str | Path]) -> None:
        self.paths = [Path(path) for path in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        return read_rgb(self.paths[index])

    def __iter__(self) -> Iterator[np.ndarray]:
        return (read_rgb(path) for path in self.paths)


def complete_prior_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """A ``prior`` options section validated against :data:`PRIOR_SCHEMA`, defaults filled in
    (:class:`~robustprior.training.ConfigError` naming an unknown key and the closest valid one)."""
    return validate_config(options or {}, PRIOR_SCHEMA, source="prior options")


def build_prior_extractor(
    options: Mapping[str, Any], cache_dir: str | Path, device: str | torch.device = "cpu"
) -> SAMPrior | RobustSAMPrior:
    """The SAM (``kind: sam``) or RobustSAM (``kind: robustsam``) prior extractor of ``options``, caching in ``cache_dir``."""
    prior_class = PRIOR_CLASSES[options["kind"]]
    settings = {name: options[name] for name in GENERATOR_SETTINGS}
    keep = (options["features"],) if options["features"] else ()  # latent maps cached only when asked for
    return prior_class.from_pretrained(
        options["checkpoint"], model_type=options["model_type"], device=device, cache_dir=cache_dir,
        keep_features=keep, **settings
    )


def describe_prior_model(kind: str, checkpoint: str | Path | None) -> str:
    """Human-readable name of the model behind a prior: :func:`robustprior.load.describe_checkpoint`
    for the prior's decoder path (what ``from_pretrained`` loads; nothing is built or downloaded)."""
    if kind == "none":
        return "none"
    if kind in CONTROL_PRIOR_KINDS:
        return CONTROL_DESCRIPTIONS[kind]
    from robustprior.load import describe_checkpoint

    return describe_checkpoint(checkpoint, "sam" if kind == "sam" else "robust")


def prepare_priors(
    options: Mapping[str, Any],
    lq_paths: Sequence[str | Path],
    cache_dir: str | Path,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> PriorIndex:
    """Compute (or find in the cache) the priors of every lq image, once; returns their index.

    Under ``torch.distributed`` each rank computes its share of the images (``paths[rank::world]``),
    then every rank indexes all of them (all cache hits). Cache files are written atomically, one per
    image, so ranks never write the same file.
    """
    options = complete_prior_options(options)
    if options["kind"] == "none":
        raise ValueError("prior kind 'none' has no priors to prepare")
    if options["kind"] in CONTROL_PRIOR_KINDS:
        return prepare_control_priors(options, lq_paths, cache_dir, progress=progress)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    unique_paths = list(dict.fromkeys(str(path) for path in lq_paths))
    extractor = build_prior_extractor(options, cache_dir, device)
    extractor.precompute(LazyImages(unique_paths[rank::world_size]), progress=progress)
    if distributed:
        dist.barrier()
    with warnings.catch_warnings():  # every image's "no masks" was told above (by the rank that computed it)
        warnings.filterwarnings("ignore", message=NO_MASKS_WARNING, category=RuntimeWarning)
        files = extractor.precompute(LazyImages(unique_paths), progress=False)
    description = {
        "kind": options["kind"],
        "model": describe_prior_model(options["kind"], options["checkpoint"]),
        "checkpoint": str(options["checkpoint"]),
        "fingerprint": extractor.fingerprint,
        "settings": {name: options[name] for name in GENERATOR_SETTINGS},
        "grouping": options["grouping"],
        "features": options["features"],  # the latent map a 'features' network reads (None: none)
        "cache_folder": str(extractor.cache_folder),
    }
    return PriorIndex(options["kind"], dict(zip(unique_paths, files)), options["features"], description,
                      grouping=options["grouping"])


# ----------------------------------------------------------------------------- geometry
def feature_square(image_size: tuple[int, int]) -> tuple[int, int]:
    """The image-plane square ``(S, S)``, ``S = max(H, W)``, that a SAM feature map covers."""
    side = max(image_size)
    return side, side


def image_covering_features(features: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """The part of a C x h x w SAM feature map over the H x W image, at the map's own density: C x h' x w'."""
    height, width = image_size
    square = feature_square(image_size)
    output_size = (
        max(1, round(height * features.shape[-2] / square[0])),
        max(1, round(width * features.shape[-1] / square[1])),
    )
    return resample_prior_features(features[None], square, output_size, region=(0.0, 0.0, height, width))[0]


def sample_features_at(features: torch.Tensor, rows: np.ndarray, columns: np.ndarray, image_size: tuple[int, int]) -> torch.Tensor:
    """Bilinear samples of a C x h x w SAM feature map at the centres of image pixels ``(rows, columns)``.

    ``rows`` / ``columns``: h' x w' integer pixel coordinates in the H x W image (e.g. the source of
    every pixel of an augmented crop). Returns C x h' x w' (border replicated).
    """
    square_height, square_width = feature_square(image_size)
    grid_y = torch.from_numpy((2.0 * (rows + 0.5) / square_height - 1.0).astype(np.float32))
    grid_x = torch.from_numpy((2.0 * (columns + 0.5) / square_width - 1.0).astype(np.float32))
    grid = torch.stack((grid_x, grid_y), dim=-1)[None].to(features.dtype)
    return F.grid_sample(features[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]


# ----------------------------------------------------------------------------- dataset
class PriorPairedDataset(PairedImageDataset):
    """:class:`PairedImageDataset` items plus the lq image's prior, augmented identically.

    ``opt`` as :class:`PairedImageDataset`; ``priors`` None gives plain items. Items add ``prior``
    (module docstring): ``label_map`` (H x W int64), and when the index says so ``features``
    (training: C x crop x crop, sampled at the crop's pixels; test: C x h' x w' over the image) and
    ``grey_scale``.
    """

    def __init__(self, opt: dict[str, Any], priors: PriorIndex | None = None) -> None:
        super().__init__(opt)
        self.priors = priors
        if priors is not None:
            missing = [str(lq) for lq, _ in self.pairs if str(lq) not in priors.files]
            if missing:
                raise ValueError(f"{len(missing)} lq image(s) have no prepared {priors.kind} prior, e.g. {missing[0]}")

    def augment_prior(self, label_map: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Apply item ``index``'s crop and flips to an H x W label map (current epoch).

        Returns the augmented label map and, for each of its pixels, the source row and column in
        the full image (all crop x crop; int64).
        """
        height, width = label_map.shape
        rows, columns = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
        stack = np.stack([label_map, rows, columns], axis=-1).astype(np.float64)  # exact for any label / size
        augmented, _ = self.augment(stack, stack, index)
        label_map, rows, columns = (np.ascontiguousarray(np.rint(augmented[..., c]).astype(np.int64)) for c in range(3))
        return label_map, rows, columns

    def __getitem__(self, index: int) -> dict[str, Any]:
        """As :meth:`PairedImageDataset.__getitem__`, plus ``prior`` (a :data:`~restoration.archs.PriorBatch` item)."""
        item = super().__getitem__(index)
        if self.priors is None:
            return item
        stored = self.priors.load(item["lq_path"])
        full_labels = self.priors.label_map(stored)
        image_size = full_labels.shape
        features = getattr(stored, self.priors.feature) if self.priors.feature else None
        prior: dict[str, torch.Tensor] = {}
        if self.phase == "train":
            label_map, rows, columns = self.augment_prior(full_labels, index)
            if features is not None:
                prior["features"] = sample_features_at(features.float(), rows, columns, image_size)
        else:
            label_map = full_labels
            if features is not None:
                prior["features"] = image_covering_features(features.float(), image_size)
        if label_map.shape != tuple(item["lq"].shape[-2:]):
            raise ValueError(f"the prior of {item['lq_path']} ({image_size}) does not fit the image "
                             f"({tuple(item['lq'].shape[-2:])}): was the file changed after its prior was computed?")
        prior["label_map"] = torch.from_numpy(np.ascontiguousarray(label_map, dtype=np.int64))
        if self.priors.grey_scale is not None:
            prior["grey_scale"] = torch.tensor(self.priors.grey_scale, dtype=torch.int64)
        item["prior"] = prior
        return item
