"""The encoder feature cache: hits skip the encoder, other models' files are never used."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from robustprior.load import build_robust_sam
from robustprior.training.robustsam.feature_cache import FeatureCache, encoder_fingerprint, image_hash


class EncoderCounter:
    def __init__(self, model) -> None:
        self.calls = 0
        model.image_encoder.register_forward_hook(lambda *args: setattr(self, "calls", self.calls + 1))


def _inputs(model, images):
    def make(indices):
        tensors = torch.stack([model.preprocess(torch.as_tensor(images[i]).permute(2, 0, 1)[None].float())[0]
                               for i in indices])
        return tensors, [{"kind": "identity"} for _ in indices]
    return make


def test_cache_hit_skips_the_encoder_and_matches_fresh_features(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_robust_sam("tiny", random_init=True)
    counter = EncoderCounter(model)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(3)]
    keys = [image_hash(image) for image in images]
    cache = FeatureCache(tmp_path, model)
    first, _ = cache.features(keys, _inputs(model, images))
    assert counter.calls == 1 and cache.misses == 3
    second, metadata = cache.features(keys, _inputs(model, images))
    assert counter.calls == 1 and cache.hits == 3
    assert torch.equal(first.embedding, second.embedding) and torch.equal(first.complementary, second.complementary)
    assert metadata[0]["kind"] == "identity"
    with torch.no_grad():
        fresh = model.encode_image(_inputs(model, images)([0, 1, 2])[0])
    torch.testing.assert_close(second.embedding, fresh.embedding, atol=2e-3, rtol=2e-3)  # float16 storage


def test_another_model_never_reads_these_files(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_robust_sam("tiny", random_init=True)
    image = np.full((256, 256, 3), 128, np.uint8)
    key = image_hash(image)
    FeatureCache(tmp_path, model).features([key], _inputs(model, [image]))
    other = build_robust_sam("tiny", random_init=True)
    with torch.no_grad():
        other.image_encoder.neck[0].weight.add_(0.01)
    assert encoder_fingerprint(other) != encoder_fingerprint(model)
    counter = EncoderCounter(other)
    other_cache = FeatureCache(tmp_path, other)
    assert other_cache.get(key) is None
    other_cache.features([key], _inputs(other, [image]))
    assert counter.calls == 1


def test_a_file_recorded_for_another_key_is_rebuilt(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_robust_sam("tiny", random_init=True)
    images = [np.full((256, 256, 3), v, np.uint8) for v in (10, 200)]
    keys = [image_hash(image) for image in images]
    cache = FeatureCache(tmp_path, model)
    cache.features(keys, _inputs(model, images))
    cache.path(keys[1]).write_bytes(cache.path(keys[0]).read_bytes())  # a swapped/corrupted entry
    assert cache.get(keys[1]) is None
    cache.path(keys[0]).write_bytes(b"garbage")
    assert cache.get(keys[0]) is None


def test_same_length_corruption_is_re_encoded_with_a_warning(tmp_path: Path, flip_tensor_bytes) -> None:
    torch.manual_seed(0)
    model = build_robust_sam("tiny", random_init=True)
    counter = EncoderCounter(model)
    image = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    key = image_hash(image)
    cache = FeatureCache(tmp_path, model)
    first, _ = cache.features([key], _inputs(model, [image]))
    size = cache.path(key).stat().st_size
    flip_tensor_bytes(cache.path(key))
    assert cache.path(key).stat().st_size == size
    with pytest.warns(RuntimeWarning, match="changed after it was written"):
        again, _ = cache.features([key], _inputs(model, [image]))
    assert counter.calls == 2 and torch.equal(again.embedding, first.embedding)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.get(key) is not None  # rewritten intact
