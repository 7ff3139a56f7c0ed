"""SAM / RobustSAM structure priors for image restoration, with an on-disk cache.

A :class:`StructurePrior` bundles what restoration networks take from a segmentation model for one
image: the automatic masks, their label map and structure map (SAM-Deblur's image-domain prior) and
two latent feature maps (the encoder's embedding and a mask-feature map). :class:`SAMPrior` (plain
SAM decoder path) and :class:`RobustSAMPrior` (RobustSAM path) extract it with ONE image-encoder
forward per image, and with ``cache_dir`` store it under a fingerprint of the model and settings so
that a changed model never reuses stale priors; each cache file carries a checksum of its tensors, and
a file changed since it was written is recomputed with a warning. Automatic-mask settings not given
default to those stored with the model (:mod:`robustprior.io.amg_settings`)::

    prior = RobustSAMPrior.from_pretrained("tiny", cache_dir="priors_cache")
    result = prior(image)            # H x W x 3 uint8 -> StructurePrior
    prior.precompute(image_paths)    # fill the cache for a data set
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from robustprior.io.amg_settings import SAM_DEFAULTS, describe_thresholds, validate_settings
from robustprior.io.atomic import save_safetensors_atomically, write_text_atomically
from .automatic_mask_generator import RobustSAMAutomaticMaskGenerator
from robustprior.data.image_io import load_image
from .modeling.robust_sam import DecoderPath, ImageFeatures, RobustSAM
from .predictor import RobustSAMPredictor, as_rgb_uint8
from robustprior.data.structure import masks_to_label_map, structure_map
from robustprior.io.tensor_checksum import load_checked, update_with_tensors, with_checksum

if TYPE_CHECKING:
    from .load import ModelSource

FILE_FORMAT = "robustprior.structure_prior"
FILE_FORMAT_VERSION = "2"  # bump when the stored content or its computation changes: invalidates caches
# version 2: the header carries a checksum of the tensors (robustprior.io.tensor_checksum)
FLOAT16_MAX = float(torch.finfo(torch.float16).max)
FEATURE_NAMES = ("embedding", "mask_feature")  # the latent maps a prior can keep (keep_features)


@dataclass(eq=False)
class StructurePrior:
    """The structure prior of one ``H x W`` image (``K`` masks; ``D x h x w`` embedding grid).

    ``embedding`` and ``mask_feature`` are CPU float32 tensors covering the model's padded square
    input (as SAM's embeddings do), or None when the prior was asked not to keep them
    (``keep_features``); everything else is at the image's resolution.
    """

    masks: np.ndarray  # K x H x W bool: automatic masks, sorted by area (largest first)
    label_map: np.ndarray  # H x W int64: masks_to_label_map(masks); 0 = uncovered
    structure_map: np.ndarray  # H x W x 3 uint8: each region filled with the image's mean colour there
    embedding: torch.Tensor | None  # D x h x w float32: the encoder's final embedding (None: not kept)
    mask_feature: torch.Tensor | None  # D/8 x 4h x 4w float32: see SAMPrior / RobustSAMPrior (None: not kept)
    scores: np.ndarray  # K float32: the predicted IoU of each mask

    @property
    def num_masks(self) -> int:
        return int(self.masks.shape[0])

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The prior as CPU tensors, e.g. to batch into a restoration model: ``masks`` K x H x W bool,
        ``label_map`` H x W int64, ``structure_map`` H x W x 3 uint8, ``embedding`` D x h x w,
        ``mask_feature`` D/8 x 4h x 4w and ``scores`` K (float32)."""
        tensors = {
            "masks": torch.from_numpy(self.masks),
            "label_map": torch.from_numpy(self.label_map),
            "structure_map": torch.from_numpy(self.structure_map),
            "embedding": self.embedding,
            "mask_feature": self.mask_feature,
            "scores": torch.from_numpy(self.scores),
        }
        return {name: tensor for name, tensor in tensors.items() if tensor is not None}

    def save(self, path: str | Path, metadata: Mapping[str, str] | None = None) -> Path:
        """Write the prior as safetensors, atomically (temporary file + ``os.replace``).

        Masks are stored bit-packed, the label map in the smallest integer type that holds K (uint8,
        int16 or int32) and the features as float16 (float32 when a value does not fit in float16).
        ``metadata`` adds string entries to the header, which also carries a checksum of the tensors.
        """
        path = Path(path)
        tensors = self._storage_tensors()
        save_safetensors_atomically(tensors, path, with_checksum(tensors, self._storage_metadata(metadata)))
        return path

    @classmethod
    def load(cls, path: str | Path) -> StructurePrior:
        """Read a prior written by :meth:`save`; anything else (including a file whose tensors no
        longer match their checksum) raises ``ValueError``."""
        return _read_prior_file(Path(path))[0]

    def _storage_metadata(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        height, width = self.label_map.shape
        metadata = {"format": FILE_FORMAT, "format_version": FILE_FORMAT_VERSION,
                    "height": str(height), "width": str(width)}
        return {**metadata, **(extra or {})}

    def _storage_tensors(self) -> dict[str, torch.Tensor]:
        """The compact on-disk form: packed masks, small-integer label map, float16 features (those kept)."""
        packed = np.packbits(self.masks.reshape(self.num_masks, self.label_map.size), axis=1)  # K x ceil(H*W / 8)
        tensors = {
            "masks_packed": torch.from_numpy(np.ascontiguousarray(packed)),
            "label_map": torch.from_numpy(self.label_map.astype(_smallest_label_dtype(self.num_masks))),
            "structure_map": torch.from_numpy(np.ascontiguousarray(self.structure_map)),
            "scores": torch.from_numpy(self.scores.astype(np.float32)),
        }
        for name in FEATURE_NAMES:
            if getattr(self, name) is not None:
                tensors[name] = _compact_float(getattr(self, name))
        return tensors

    @classmethod
    def _from_storage(cls, tensors: Mapping[str, torch.Tensor], height: int, width: int) -> StructurePrior:
        """Inverse of :meth:`_storage_tensors`; checks that the parts fit together."""
        missing = {"masks_packed", "label_map", "structure_map", "scores"} - set(tensors)
        if missing:
            raise ValueError(f"missing tensors {sorted(missing)}")
        packed = tensors["masks_packed"].numpy()
        scores = tensors["scores"].numpy().astype(np.float32)
        label_map = tensors["label_map"].numpy().astype(np.int64)
        image_map = tensors["structure_map"].numpy()
        if (packed.ndim != 2 or packed.dtype != np.uint8 or packed.shape[1] != -(-height * width // 8)
                or scores.shape != (packed.shape[0],) or label_map.shape != (height, width)
                or image_map.shape != (height, width, 3) or image_map.dtype != np.uint8
                or any(tensors[name].ndim != 3 for name in FEATURE_NAMES if name in tensors)):
            raise ValueError("the stored tensors do not describe one H x W image")
        masks = np.unpackbits(packed, axis=1, count=height * width).astype(bool).reshape(-1, height, width)
        features = {name: tensors[name].float() if name in tensors else None for name in FEATURE_NAMES}
        return cls(masks=masks, label_map=label_map, structure_map=image_map, scores=scores, **features)


def _smallest_label_dtype(num_masks: int) -> type[np.integer]:
    """The smallest safetensors-storable integer type holding labels 0..num_masks."""
    return next(dtype for dtype in (np.uint8, np.int16, np.int32) if num_masks <= np.iinfo(dtype).max)


def _compact_float(tensor: torch.Tensor) -> torch.Tensor:
    """float16 copy of a feature tensor, or float32 when some value would overflow float16."""
    tensor = tensor.detach().cpu().contiguous()
    if tensor.numel() and float(tensor.abs().max()) > FLOAT16_MAX:
        return tensor.float()
    return tensor.half()


def _read_prior_file(path: Path) -> tuple[StructurePrior, dict[str, str]]:
    """A stored prior and its header metadata; ``ValueError`` for a missing, corrupt or foreign file."""
    if not path.is_file():
        raise FileNotFoundError(f"no structure prior file at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        if metadata.get("format") != FILE_FORMAT or metadata.get("format_version") != FILE_FORMAT_VERSION:
            raise ValueError(f"not a version-{FILE_FORMAT_VERSION} structure prior file "
                             f"(format {metadata.get('format')!r}, version {metadata.get('format_version')!r})")
        tensors, metadata = load_checked(path)
        prior = StructurePrior._from_storage(tensors, int(metadata["height"]), int(metadata["width"]))
    except Exception as error:  # safetensors raises its own error types for truncated or garbled files
        raise ValueError(f"cannot read structure prior {path}: {error}") from error
    return prior, metadata


def image_hash(image: np.ndarray) -> str:
    """sha256 (hex, first 32 characters) of an ``H x W x 3`` uint8 RGB image's shape and bytes."""
    digest = hashlib.sha256(f"{image.shape}|{image.dtype}".encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()[:32]


class _FeatureRecordingPredictor(RobustSAMPredictor):
    """A predictor that keeps the features of the image it last encoded after ``reset_image``.

    The automatic mask generator calls ``set_image`` on each crop and ``reset_image`` when the crop
    is done, which drops ``features``; this predictor records them as they are computed, so the
    prior reads the very encoding the masks were decoded from instead of encoding the image again.
    """

    def __init__(self, model: RobustSAM, path: DecoderPath) -> None:
        super().__init__(model, path=path)
        self.recorded: list[tuple[tuple[int, int], ImageFeatures]] = []

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_size: tuple[int, ...]) -> None:
        super().set_torch_image(transformed_image, original_size)
        self.recorded.append((self.original_size, self.features))

    def pop_single_encoding(self, image_size: tuple[int, int]) -> ImageFeatures:
        """The features of the one encoding of an ``image_size`` image since the last call."""
        recorded, self.recorded = self.recorded, []
        if len(recorded) != 1 or recorded[0][0] != tuple(image_size):
            raise RuntimeError(f"expected one encoding of the whole {image_size} image, got "
                               f"{[size for size, _ in recorded]}")
        return recorded[0][1]


class _AutomaticMaskPrior(ABC):
    """Structure priors from the automatic mask generator on one decoder path (see subclasses)."""

    path: ClassVar[DecoderPath]

    def __init__(
        self,
        model: RobustSAM,
        *,
        points_per_side: int | None = None,
        pred_iou_thresh: float | None = None,
        stability_score_thresh: float | None = None,
        box_nms_thresh: float | None = None,
        min_mask_region_area: int | None = None,
        points_per_batch: int = 64,
        cache_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        source: ModelSource | None = None,
        generated_scenes: bool = False,
        keep_features: Sequence[str] | None = None,
    ) -> None:
        """``model`` is put in eval mode (and moved to ``device`` when given). The automatic mask
        generator's settings left at None come from ``source`` (the settings stored with the model
        for this decoder path, see :mod:`robustprior.evaluation.amg_settings`), else from SAM's defaults.
        ``cache_dir`` enables the disk cache. ``source`` (from :func:`robustprior.load.load_model`)
        also lets a bundled scene-world model say, in one line, when it meets input that is not a
        generated scene; ``generated_scenes=True`` tells it that every input is one (e.g. arrays
        from :func:`robustprior.data.scenes.generate_scene`). ``keep_features``: the latent maps
        (``embedding``, ``mask_feature``) priors keep in memory and in the cache (None: both; ``()``:
        neither, which keeps a 720p cache file to its masks); a cached file without a map asked for is
        computed again."""
        unknown = set(keep_features or ()) - set(FEATURE_NAMES)
        if unknown:
            raise ValueError(f"keep_features: unknown latent map(s) {sorted(unknown)}; known: {', '.join(FEATURE_NAMES)}")
        self.keep_features = FEATURE_NAMES if keep_features is None else tuple(keep_features)
        self.model = (model if device is None else model.to(device)).eval()
        self.source = source
        self.generated_scenes = generated_scenes
        defaults = source.generator_settings(self.path) if source is not None else SAM_DEFAULTS
        given = {"points_per_side": points_per_side, "pred_iou_thresh": pred_iou_thresh,
                 "stability_score_thresh": stability_score_thresh, "box_nms_thresh": box_nms_thresh,
                 "min_mask_region_area": min_mask_region_area}
        settings = validate_settings({**defaults, **{k: v for k, v in given.items() if v is not None}},
                                     f"{type(self).__name__} settings")
        self.settings: dict[str, Any] = {**settings, "points_per_batch": points_per_batch}
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.generator = RobustSAMAutomaticMaskGenerator(self.model, path=self.path, **self.settings)
        self.generator.predictor = _FeatureRecordingPredictor(self.model, self.path)
        self._fingerprint_memo: tuple[tuple, str] | None = None

    @classmethod
    def from_pretrained(cls, checkpoint: str | Path | None = "tiny", *, model_type: str | None = None,
                        device: str | torch.device | None = None, allow_untrained_robust: bool = False,
                        **kwargs: Any) -> _AutomaticMaskPrior:
        """A prior on :func:`robustprior.load.load_model` (``"tiny"``, a known name or a file) for
        this prior's decoder path; ``kwargs`` go to the constructor (settings left out or None:
        the model's own, see the constructor)."""
        from .load import load_model

        model, source = load_model(checkpoint, model_type, decoder_path=cls.path, device=device or "cpu",
                                   allow_untrained_robust=allow_untrained_robust)
        return cls(model, device=device, source=source, **kwargs)

    # ------------------------------------------------------------------ fingerprint
    @property
    def fingerprint(self) -> str:
        """16 hex characters of sha256 over the prior class, decoder path, settings, model config
        and every state-dict tensor (name, dtype, shape, bytes).

        The hash is memoised while no tensor is replaced or modified in place; PyTorch's version
        counters see in-place updates (``load_state_dict``, optimiser steps, ``p.add_()``) but not
        writes through ``p.data``: build a new prior object after such edits.
        """
        state = self.model.state_dict()
        change_key = tuple((name, tensor.data_ptr(), tensor._version) for name, tensor in state.items())
        if self._fingerprint_memo is None or self._fingerprint_memo[0] != change_key:
            self._fingerprint_memo = (change_key, self._hash_model(state))
        return self._fingerprint_memo[1]

    def _hash_model(self, state: Mapping[str, torch.Tensor]) -> str:
        description = {"prior": type(self).__name__, "path": self.path, "settings": self.settings,
                       "config": self.model.config, "format_version": FILE_FORMAT_VERSION}
        digest = hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode())
        update_with_tensors(digest, state)
        return digest.hexdigest()[:16]

    # ------------------------------------------------------------------ extraction
    def __call__(self, image: np.ndarray) -> StructurePrior:
        """The prior of an ``H x W x 3`` uint8 RGB image (grayscale / RGBA converted).

        With a cache, a valid stored prior is returned without running the model; otherwise it is
        computed and stored. Cached or not, its features then carry the stored (float16) precision,
        so a cache hit returns exactly what the first call returned. No mask at all is a warning
        naming the settings (the structure map is then the image itself).
        """
        self._check_domain([None])
        prior = self._prior_of(as_rgb_uint8(image))
        if prior.num_masks == 0:
            self._warn_no_masks(1, 1)
        return prior

    def precompute(self, images: Iterable[np.ndarray | str | Path], progress: bool = True) -> list[Path]:
        """Fill the cache for ``images`` (arrays, image files or ``skimage:NAME``, or a sequence of
        arrays with a ``paths`` attribute naming their files, such as
        :class:`restoration.datasets.LazyImages`) and return their cache files
        (``cache_folder / <image hash>.safetensors``).

        Images with a valid cache file (checksum included) are not computed again; the progress bar
        counts computed and cached ones. Images that got no mask are counted in one warning.
        """
        if self.cache_dir is None:
            raise ValueError("precompute needs a cache: create the prior with cache_dir=...")
        paths_attribute = getattr(images, "paths", None)
        self._check_domain(paths_attribute if paths_attribute is not None else
                           [item if isinstance(item, (str, Path)) else None for item in images]
                           if isinstance(images, Sequence) else [None])
        total = len(images) if hasattr(images, "__len__") else None
        paths: list[Path] = []
        counts = {"computed": 0, "cached": 0}
        empty = 0
        with tqdm(images, total=total, desc=f"{type(self).__name__} priors", unit="image", disable=not progress) as bar:
            for item in bar:
                image = load_image(item)[0] if isinstance(item, (str, Path)) else as_rgb_uint8(item)
                digest = image_hash(image)
                cached = self._read_cache(digest, image.shape[:2])
                if cached is not None:
                    counts["cached"] += 1
                    empty += cached.num_masks == 0
                else:
                    empty += self._store(self._compute(image), digest).num_masks == 0
                    counts["computed"] += 1
                paths.append(self._cache_file(digest))
                bar.set_postfix(counts)
        if empty:
            self._warn_no_masks(empty, len(paths))
        return paths

    def _prior_of(self, image: np.ndarray) -> StructurePrior:
        """Cached, or computed (and stored when there is a cache)."""
        if self.cache_dir is None:
            return self._compute(image)
        digest = image_hash(image)
        cached = self._read_cache(digest, image.shape[:2])
        return cached if cached is not None else self._store(self._compute(image), digest)

    def _check_domain(self, inputs: Sequence[str | Path | None]) -> None:
        """The bundled scene-world models say once when they meet input that is not a generated scene."""
        if self.source is not None and not self.generated_scenes:
            self.source.warn_outside_domain(self.path, inputs)

    def _warn_no_masks(self, empty: int, total: int) -> None:
        what = "the image" if total == 1 else f"{empty} of {total} images"
        warnings.warn(f"{type(self).__name__}: no masks for {what} with {describe_thresholds(self.settings)}; "
                      "the label map is empty and the structure map is the image itself: lower pred_iou_thresh / "
                      "stability_score_thresh (the bundled models carry settings that give masks on generated "
                      "scenes: see their model cards)", RuntimeWarning, stacklevel=3)

    @torch.no_grad()
    def _compute(self, image: np.ndarray) -> StructurePrior:
        """Run the generator (which encodes the image once) and derive every part of the prior."""
        predictor: _FeatureRecordingPredictor = self.generator.predictor
        predictor.recorded = []
        records = self.generator.generate(image)
        features = predictor.pop_single_encoding(image.shape[:2])
        height, width = image.shape[:2]
        order = np.argsort([-record["area"] for record in records], kind="stable")
        masks = np.stack([records[i]["segmentation"] for i in order]) if records else np.zeros((0, height, width), bool)
        scores = np.array([records[i]["predicted_iou"] for i in order], dtype=np.float32)
        label_map = masks_to_label_map(masks)
        keep = self.keep_features
        return StructurePrior(
            masks=masks,
            label_map=label_map,
            structure_map=structure_map(image, label_map),
            embedding=features.embedding[0].detach().float().cpu() if "embedding" in keep else None,
            mask_feature=self._mask_feature(features)[0].detach().float().cpu() if "mask_feature" in keep else None,
            scores=scores,
        )

    @abstractmethod
    def _mask_feature(self, features: ImageFeatures) -> torch.Tensor:
        """The ``1 x D/8 x 4h x 4w`` latent mask feature of one encoded image."""

    # ------------------------------------------------------------------ cache
    @property
    def cache_folder(self) -> Path:
        """``cache_dir / fingerprint``: the cache of this model and these settings."""
        if self.cache_dir is None:
            raise ValueError("this prior has no cache_dir")
        return self.cache_dir / self.fingerprint

    def cache_path(self, image: np.ndarray) -> Path:
        """Where the prior of ``image`` is cached (grayscale / RGBA converted first)."""
        return self._cache_file(image_hash(as_rgb_uint8(image)))

    def _cache_file(self, digest: str) -> Path:
        return self.cache_folder / f"{digest}.safetensors"

    def _cache_metadata(self, digest: str) -> dict[str, str]:
        """Header entries that tie a cache file to this model, these settings and one image."""
        return {"fingerprint": self.fingerprint, "image_sha256": digest}

    def _read_cache(self, digest: str, image_size: tuple[int, int]) -> StructurePrior | None:
        """The cached prior, or None: absent, or unusable (corrupt, another model's or image's file),
        which warns and lets the caller recompute and overwrite it."""
        cache_file = self._cache_file(digest)
        if not cache_file.is_file():
            return None
        try:
            prior, metadata = _read_prior_file(cache_file)
        except ValueError as error:
            warnings.warn(f"recomputing the structure prior: {error}", RuntimeWarning, stacklevel=3)
            return None
        expected = self._cache_metadata(digest)
        found = {key: metadata.get(key) for key in expected}
        if found != expected or prior.label_map.shape != tuple(image_size):
            warnings.warn(f"recomputing the structure prior: {cache_file} was written for another model or "
                          f"image ({found}, size {prior.label_map.shape})", RuntimeWarning, stacklevel=3)
            return None
        if any(getattr(prior, name) is None for name in self.keep_features):
            return None  # stored without a latent map now asked for: computed again, with it
        return prior

    def _store(self, prior: StructurePrior, digest: str) -> StructurePrior:
        """Write ``prior`` to the cache and return it as stored (features at storage precision)."""
        self._write_manifest()
        tensors = prior._storage_tensors()
        save_safetensors_atomically(tensors, self._cache_file(digest),
                                    with_checksum(tensors, prior._storage_metadata(self._cache_metadata(digest))))
        return StructurePrior._from_storage(tensors, *prior.label_map.shape)

    def _write_manifest(self) -> None:
        """``manifest.json`` in the fingerprint folder, describing what its priors were made with."""
        manifest_path = self.cache_folder / "manifest.json"
        if manifest_path.is_file():
            return
        manifest = {
            "fingerprint": self.fingerprint,
            "prior": type(self).__name__,
            "path": self.path,
            "settings": self.settings,
            "model_config": self.model.config,
            "format_version": FILE_FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_text_atomically(manifest_path, json.dumps(manifest, indent=2, default=str))


class SAMPrior(_AutomaticMaskPrior):
    """Plain-SAM structure prior (decoder path ``"sam"``): the baseline.

    ``mask_feature`` is SAM's own upscaled feature space with no prompt:
    ``mask_decoder.output_upscaling(embedding + prompt_encoder.no_mask_embed)``, i.e. what SAM's
    mask classifiers read, before the two-way transformer mixes in any prompt.
    """

    path: ClassVar[DecoderPath] = "sam"

    def _mask_feature(self, features: ImageFeatures) -> torch.Tensor:
        no_mask = self.model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return self.model.mask_decoder.output_upscaling(features.embedding + no_mask)


class RobustSAMPrior(_AutomaticMaskPrior):
    """RobustSAM structure prior (decoder path ``"robust"``).

    ``mask_feature`` is the per-image part of RobustSAM's robust mask feature:
    ``robust.fusion.image_features(embedding, complementary, robust=True)``, the AMFG-cleaned early
    (complementary) feature plus the AMFG-cleaned final embedding, each upsampled 4x.
    """

    path: ClassVar[DecoderPath] = "robust"

    def _mask_feature(self, features: ImageFeatures) -> torch.Tensor:
        return self.model.robust_image_part(features)
