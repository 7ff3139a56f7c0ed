"""The prior cache keeps latent maps only when asked for them, in float16 (issue 13, latent priors)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from robustprior.priors import SAMPrior

pytestmark = pytest.mark.usefixtures("single_thread")

SETTINGS = {"points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def stored(path: Path) -> dict[str, torch.dtype]:
    with safe_open(str(path), framework="pt") as handle:
        return {name: handle.get_tensor(name).dtype for name in handle.keys()}


def test_latent_maps_are_cached_only_when_asked_for(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    bare = SAMPrior.from_pretrained("tiny", cache_dir=tmp_path, keep_features=(), **SETTINGS)
    (path,) = bare.precompute([image], progress=False)
    assert not {"embedding", "mask_feature"} & set(stored(path))
    prior = bare(image)  # a cache hit
    assert prior.embedding is None and prior.mask_feature is None and prior.num_masks > 0
    small = path.stat().st_size

    one = SAMPrior.from_pretrained("tiny", cache_dir=tmp_path, keep_features=("mask_feature",), **SETTINGS)
    assert one.fingerprint == bare.fingerprint  # the same cache folder: the file is computed again, with the map
    (again,) = one.precompute([image], progress=False)
    assert again == path and stored(path)["mask_feature"] == torch.float16 and "embedding" not in stored(path)
    assert path.stat().st_size > small
    with_map = one(image)
    assert with_map.embedding is None and with_map.mask_feature.dtype == torch.float32
    np.testing.assert_array_equal(with_map.label_map, prior.label_map)
    assert bare(image).mask_feature is not None  # a file with more than asked for is a hit

    everything = SAMPrior.from_pretrained("tiny", cache_dir=tmp_path, **SETTINGS)  # default: both, as before
    assert everything(image).embedding is not None and stored(path)["embedding"] == torch.float16
    with pytest.raises(ValueError, match="unknown latent map"):
        SAMPrior.from_pretrained("tiny", cache_dir=tmp_path, keep_features=("features",), **SETTINGS)
