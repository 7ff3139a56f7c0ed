"""Feature cache: the frozen SAM image encoder runs once per (image, degradation, seed).

SAM's encoder is frozen during RobustSAM training, so its outputs for a clear image and for each
degraded copy never change. They are stored as float16 safetensors files, one per image key,
under ``ROOT/<model id>/<key[:2]>/<key>.safetensors`` beside a ``manifest.json``. The model id
hashes the encoder's weights and the encoder-relevant config; each file also records its model id
and key, and a file whose record does not match is rebuilt, never used; so is a file whose tensors no
longer match the checksum written with them (:mod:`robustprior.io.tensor_checksum`; with a warning) or
that carries none (an older version's file). Writes are atomic (temporary file + rename), so
concurrent DDP ranks and interrupted runs cannot leave half files.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open

from robustprior.io.atomic import save_safetensors_atomically, write_text_atomically
from ...modeling.robust_sam import ImageFeatures, RobustSAM
from robustprior.io.tensor_checksum import CHECKSUM_KEY, ChecksumError, load_checked, with_checksum

ENCODER_CONFIG_FIELDS = ("model_type", "encoder", "image_size", "patch_size", "encoder_dim", "encoder_depth",
                         "encoder_heads", "global_attention_indexes", "window_size", "transformer_dim")


def image_hash(image: np.ndarray) -> str:
    """SHA-256 of an image's shape, dtype and bytes."""
    digest = hashlib.sha256(f"{image.shape}|{image.dtype}|".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def encoder_fingerprint(model: RobustSAM) -> str:
    """A short id of everything that determines the encoder's outputs: its weights and config."""
    digest = hashlib.sha256()
    config = {field: model.config.get(field) for field in ENCODER_CONFIG_FIELDS}
    digest.update(json.dumps(config, sort_keys=True, default=list).encode())
    for name, tensor in sorted(model.image_encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    digest.update(model.pixel_mean.cpu().numpy().tobytes() + model.pixel_std.cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class FeatureCache:
    """Encoder outputs on disk for one model; :meth:`features` encodes only what is missing."""

    def __init__(self, root: str | Path, model: RobustSAM) -> None:
        self.model = model
        self.model_id = encoder_fingerprint(model)
        self.directory = Path(root) / self.model_id
        self.directory.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        manifest = self.directory / "manifest.json"
        if not manifest.exists():
            write_text_atomically(manifest, json.dumps(
                {"model_id": self.model_id, "config": model.config, "created": time.strftime("%Y-%m-%dT%H:%M:%S")},
                indent=2, default=list))

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> tuple[ImageFeatures, dict[str, str]] | None:
        """The cached ``1 x ...`` features and metadata of ``key``, or None when absent or not ours
        (another model's or image's, unreadable, or changed since it was written: with a warning)."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
            if metadata.get("model_id") != self.model_id or metadata.get("key") != key:
                return None  # written by another model or for another image: rebuild
            if CHECKSUM_KEY not in metadata:
                return None  # an older version's file: rebuild
            tensors, metadata = load_checked(path)
        except ChecksumError as error:
            warnings.warn(f"re-encoding cached features: {error}", RuntimeWarning, stacklevel=2)
            return None
        except (SafetensorError, OSError, ValueError):
            return None  # unreadable (e.g. a crash mid-copy by another tool): rebuild
        metadata.pop(CHECKSUM_KEY)  # the same record as a freshly encoded entry's
        features = ImageFeatures(tensors["embedding"].float()[None], tensors["complementary"].float()[None])
        return features, metadata

    def put(self, key: str, features: ImageFeatures, metadata: dict[str, str] | None = None) -> None:
        """Store one image's features (``1 x ...``) as float16, atomically."""
        tensors = {
            "embedding": features.embedding[0].detach().to(torch.float16).cpu().contiguous(),
            "complementary": features.complementary[0].detach().to(torch.float16).cpu().contiguous(),
        }
        save_safetensors_atomically(tensors, self.path(key),
                                    with_checksum(tensors, {**(metadata or {}), "model_id": self.model_id, "key": key}))

    @torch.no_grad()
    def features(
        self,
        keys: Sequence[str],
        make_inputs: Callable[[list[int]], tuple[torch.Tensor, list[dict[str, str]]]],
    ) -> tuple[ImageFeatures, list[dict[str, str]]]:
        """Features for ``keys`` (``B x ...``), encoding only the missing ones.

        ``make_inputs(indices)`` returns the preprocessed ``len(indices) x 3 x S x S`` images and a
        metadata dict for each missing key (e.g. the degradation applied); it is only called on a miss,
        so cached images are neither degraded nor encoded again.
        """
        found = [self.get(key) for key in keys]
        missing = [i for i, entry in enumerate(found) if entry is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            images, metadata = make_inputs(missing)
            encoded = self.model.encode_image(images.to(self.model.device))
            for position, index in enumerate(missing):
                single = ImageFeatures(encoded.embedding[position : position + 1],
                                       encoded.complementary[position : position + 1])
                self.put(keys[index], single, metadata[position])
                # read back through float16 so cached and fresh runs see identical numbers
                found[index] = (ImageFeatures(single.embedding.half().float(), single.complementary.half().float()),
                                {**metadata[position], "model_id": self.model_id, "key": keys[index]})
        device = self.model.device
        embedding = torch.cat([entry[0].embedding for entry in found]).to(device)
        complementary = torch.cat([entry[0].complementary for entry in found]).to(device)
        return ImageFeatures(embedding, complementary), [entry[1] for entry in found]
