"""SAMPrior / RobustSAMPrior / StructurePrior: consistency with the model, one encoding per image, cache."""
from __future__ import annotations

import shutil
import warnings

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from robustprior.data.structure import masks_to_label_map, structure_map
from robustprior import RobustSAMPrior, SAMPrior, StructurePrior
from robustprior.load import build_robust_sam
from robustprior.predictor import RobustSAMPredictor

# Permissive thresholds so that a random-init model yields masks (one point: 3 masks); few points keep it fast.
SETTINGS = {"points_per_side": 1, "pred_iou_thresh": -100.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}


def make_model(seed: int = 0):
    """A random-init tiny RobustSAM, shrunk further (128 px input, 2 encoder blocks) for speed."""
    torch.manual_seed(seed)
    return build_robust_sam("tiny", random_init=True, image_size=128, encoder_depth=2, global_attention_indexes=(1,))


class ForwardCounter:
    """Counts forwards of the image encoder and of the decoder (its IoU head runs once per decode)."""

    def __init__(self, model) -> None:
        self.encoder = 0
        self.decoder = 0
        self.handles = [
            model.image_encoder.register_forward_hook(lambda *_: self._count("encoder")),
            model.mask_decoder.iou_prediction_head.register_forward_hook(lambda *_: self._count("decoder")),
        ]

    def _count(self, part: str) -> None:
        setattr(self, part, getattr(self, part) + 1)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@pytest.fixture(scope="module")
def model():
    return make_model(0)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return cv2.resize(data.astronaut(), (128, 96), interpolation=cv2.INTER_AREA)  # 96 x 128, non-square


@pytest.fixture()
def counter(model):
    counter = ForwardCounter(model)
    yield counter
    counter.remove()


@pytest.fixture(scope="module")
def robust_run(model, image):
    """One uncached RobustSAMPrior call and the number of encoder forwards it made."""
    counter = ForwardCounter(model)
    result = RobustSAMPrior(model, **SETTINGS)(image)
    counter.remove()
    return result, counter.encoder


@pytest.fixture(scope="module")
def sam_result(model, image) -> StructurePrior:
    return SAMPrior(model, **SETTINGS)(image)


def assert_same_prior(first: StructurePrior, second: StructurePrior) -> None:
    np.testing.assert_array_equal(first.masks, second.masks)
    np.testing.assert_array_equal(first.label_map, second.label_map)
    np.testing.assert_array_equal(first.structure_map, second.structure_map)
    np.testing.assert_array_equal(first.scores, second.scores)
    assert torch.equal(first.embedding, second.embedding)
    assert torch.equal(first.mask_feature, second.mask_feature)


# ---------------------------------------------------------------------- extraction
def test_prior_shapes_and_consistency(model, robust_run, image) -> None:
    result, _ = robust_run
    height, width = image.shape[:2]
    assert result.num_masks >= 2
    assert result.masks.shape == (result.num_masks, height, width) and result.masks.dtype == bool
    areas = result.masks.sum(axis=(1, 2))
    assert np.all(np.diff(areas) <= 0), "masks must be sorted by area, largest first"
    assert result.scores.shape == (result.num_masks,) and result.scores.dtype == np.float32
    assert result.label_map.dtype == np.int64
    np.testing.assert_array_equal(result.label_map, masks_to_label_map(result.masks))
    assert result.structure_map.shape == (height, width, 3) and result.structure_map.dtype == np.uint8
    np.testing.assert_array_equal(result.structure_map, structure_map(image, result.label_map))
    channels, grid = model.config["transformer_dim"], model.config["image_size"] // model.config["patch_size"]
    assert result.embedding.shape == (channels, grid, grid) and result.embedding.dtype == torch.float32
    assert result.mask_feature.shape == (channels // 8, 4 * grid, 4 * grid)
    assert result.mask_feature.dtype == torch.float32


def test_features_match_the_model(model, image, robust_run, sam_result) -> None:
    result, _ = robust_run
    predictor = RobustSAMPredictor(model)
    predictor.set_image(image)
    features = predictor.features
    assert torch.equal(result.embedding, features.embedding[0])
    assert torch.equal(sam_result.embedding, features.embedding[0])
    with torch.no_grad():
        robust_feature = model.robust.fusion.image_features(features.embedding, features.complementary, robust=True)
        no_mask = model.prompt_encoder.no_mask_embed.weight[..., None, None]
        sam_feature = model.mask_decoder.output_upscaling(features.embedding + no_mask)
    assert torch.equal(result.mask_feature, robust_feature[0])
    assert torch.equal(sam_result.mask_feature, sam_feature[0])
    assert not torch.allclose(result.mask_feature, sam_result.mask_feature, atol=1e-3)


def test_masks_come_from_the_chosen_decoder_path(robust_run, sam_result) -> None:
    result, _ = robust_run
    assert not np.array_equal(result.scores, sam_result.scores)


def test_image_encoder_runs_once_per_call(robust_run, model, image, counter) -> None:
    assert robust_run[1] == 1
    SAMPrior(model, **SETTINGS)(image)
    assert counter.encoder == 1


def test_no_masks_gives_the_input_as_structure_map_and_a_warning(model, image, tmp_path) -> None:
    with pytest.warns(RuntimeWarning, match=r"no masks for the image with points_per_side=1, pred_iou_thresh=1000000000.0"):
        result = SAMPrior(model, **{**SETTINGS, "pred_iou_thresh": 1e9})(image)
    assert result.masks.shape == (0, *image.shape[:2]) and result.scores.shape == (0,)
    assert not result.label_map.any()
    np.testing.assert_array_equal(result.structure_map, image)
    loaded = StructurePrior.load(result.save(tmp_path / "empty.safetensors"))
    assert loaded.masks.shape == result.masks.shape


# ---------------------------------------------------------------------- inputs
def test_grayscale_and_rgba_inputs(model, image, sam_result) -> None:
    prior = SAMPrior(model, **SETTINGS)
    rgba = np.concatenate([image, np.full((*image.shape[:2], 1), 7, np.uint8)], axis=2)
    assert_same_prior(prior(rgba), sam_result)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    gray_result = prior(gray)
    assert gray_result.masks.shape[1:] == gray.shape
    np.testing.assert_array_equal(gray_result.structure_map[..., 0], gray_result.structure_map[..., 2])
    assert_same_prior(prior(gray[..., None]), gray_result)


def test_invalid_inputs_raise(model, image) -> None:
    prior = SAMPrior(model, **SETTINGS)
    with pytest.raises(ValueError, match="uint8"):
        prior(image.astype(np.float32) / 255)
    with pytest.raises(ValueError, match="shape"):
        prior(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match="cache"):
        prior.precompute([image])


# ---------------------------------------------------------------------- storage
def test_save_load_roundtrip(robust_run, tmp_path) -> None:
    result, _ = robust_run
    path = result.save(tmp_path / "prior.safetensors")
    loaded = StructurePrior.load(path)
    np.testing.assert_array_equal(loaded.masks, result.masks)
    np.testing.assert_array_equal(loaded.label_map, result.label_map)
    np.testing.assert_array_equal(loaded.structure_map, result.structure_map)
    np.testing.assert_array_equal(loaded.scores, result.scores)
    for name in ("embedding", "mask_feature"):
        stored, original = getattr(loaded, name), getattr(result, name)
        assert stored.dtype == torch.float32
        torch.testing.assert_close(stored, original.half().float(), rtol=0, atol=0)
    tensors = loaded.to_tensors()
    assert tensors["masks"].dtype == torch.bool and tensors["label_map"].dtype == torch.int64
    assert tensors["structure_map"].shape == (*result.label_map.shape, 3)
    # Compact: packed masks and float16 features take less than the bool masks and float32 features.
    unpacked_bytes = result.masks.nbytes + 4 * (result.embedding.numel() + result.mask_feature.numel())
    assert path.stat().st_size < unpacked_bytes
    (tmp_path / "other.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read"):
        StructurePrior.load(tmp_path / "other.safetensors")


# ---------------------------------------------------------------------- fingerprint and cache
def test_fingerprint_depends_on_weights_path_and_settings(model) -> None:
    fingerprint = SAMPrior(model, **SETTINGS).fingerprint
    assert len(fingerprint) == 16
    assert SAMPrior(make_model(0), **SETTINGS).fingerprint == fingerprint
    assert SAMPrior(make_model(1), **SETTINGS).fingerprint != fingerprint
    assert RobustSAMPrior(model, **SETTINGS).fingerprint != fingerprint
    assert SAMPrior(model, **{**SETTINGS, "points_per_side": 2}).fingerprint != fingerprint


def test_cache_hit_returns_stored_prior_without_running_the_model(model, image, robust_run, counter, tmp_path) -> None:
    prior = RobustSAMPrior(model, **SETTINGS, cache_dir=tmp_path)
    first = prior(image)
    cache_file = prior.cache_path(image)
    assert cache_file.parent == tmp_path / prior.fingerprint and cache_file.is_file()
    assert (cache_file.parent / "manifest.json").is_file()
    assert counter.encoder == 1
    second = prior(image)
    assert (counter.encoder, counter.decoder) == (1, 1), "a cache hit must not run the model"
    assert_same_prior(first, second)
    # The cached prior equals the uncached one up to float16 storage of the features.
    uncached, _ = robust_run
    np.testing.assert_array_equal(second.masks, uncached.masks)
    torch.testing.assert_close(second.mask_feature, uncached.mask_feature, rtol=1e-3, atol=1e-3)
    # A fresh prior object on the same weights reuses the cache as well.
    assert_same_prior(RobustSAMPrior(model, **SETTINGS, cache_dir=tmp_path)(image), first)
    assert counter.encoder == 1


def test_changed_model_gets_a_new_fingerprint_and_recomputes(image, tmp_path) -> None:
    model = make_model(0)
    counter = ForwardCounter(model)
    prior = SAMPrior(model, **SETTINGS, cache_dir=tmp_path)
    prior(image)
    old_fingerprint = prior.fingerprint
    with torch.no_grad():
        model.robust.output_tokens.weight[0, 0] += 1e-3  # one robust weight, in place
    assert prior.fingerprint != old_fingerprint
    prior(image)
    assert counter.encoder == 2
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([old_fingerprint, prior.fingerprint])
    counter.remove()


def test_cache_file_of_another_model_is_never_used(image, tmp_path) -> None:
    first_prior = SAMPrior(make_model(0), **SETTINGS, cache_dir=tmp_path)
    second_model = make_model(1)
    second_prior = SAMPrior(second_model, **SETTINGS, cache_dir=tmp_path)
    first_result = first_prior(image)
    foreign = second_prior.cache_path(image)
    foreign.parent.mkdir(parents=True)
    shutil.copy(first_prior.cache_path(image), foreign)  # planted where the second model would look
    counter = ForwardCounter(second_model)
    with pytest.warns(RuntimeWarning, match="another model"):
        second_result = second_prior(image)
    assert counter.encoder == 1
    assert not torch.equal(second_result.embedding, first_result.embedding)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same_prior(second_prior(image), second_result)  # the planted file was replaced
    assert counter.encoder == 1
    counter.remove()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "same-length"])
def test_corrupt_cache_file_is_recomputed_with_a_warning(model, image, counter, tmp_path, damage,
                                                         flip_tensor_bytes) -> None:
    prior = SAMPrior(model, **SETTINGS, cache_dir=tmp_path)
    first = prior(image)
    cache_file = prior.cache_path(image)
    content = cache_file.read_bytes()
    if damage == "same-length":
        flip_tensor_bytes(cache_file)
        assert len(cache_file.read_bytes()) == len(content) and cache_file.read_bytes() != content
    else:
        cache_file.write_bytes(b"\x00garbage" * 8 if damage == "garbage" else content[: len(content) // 2])
    with pytest.warns(RuntimeWarning, match="recomputing"):
        recomputed = prior(image)
    assert counter.encoder == 2
    assert_same_prior(recomputed, first)
    assert_same_prior(StructurePrior.load(cache_file), first)


def test_precompute_recomputes_a_same_length_corruption(model, image, counter, tmp_path, flip_tensor_bytes) -> None:
    prior = SAMPrior(model, **SETTINGS, cache_dir=tmp_path)
    [path] = prior.precompute([image], progress=False)
    flip_tensor_bytes(path)
    with pytest.raises(ValueError, match="changed after it was written"):
        StructurePrior.load(path)
    with pytest.warns(RuntimeWarning, match="changed after it was written"):
        assert prior.precompute([image], progress=False) == [path]
    assert counter.encoder == 2
    StructurePrior.load(path)  # rewritten intact


def test_precompute_skips_cached_images(model, image, counter, tmp_path, capsys) -> None:
    prior = SAMPrior(model, **SETTINGS, cache_dir=tmp_path / "cache")
    image_file = tmp_path / "flipped.png"
    cv2.imwrite(str(image_file), np.ascontiguousarray(image[:, ::-1, ::-1]))  # RGB flipped, written as BGR
    images = [image, image[:64, :64].copy(), image_file]
    prior(image)
    capsys.readouterr()
    paths = prior.precompute(images)
    assert counter.encoder == 3, "the already cached image must be skipped"
    assert "computed=2" in capsys.readouterr().err
    assert paths == [prior.cache_path(image), prior.cache_path(image[:64, :64]), prior.cache_path(image[:, ::-1])]
    assert all(path.is_file() for path in paths)
    assert prior.precompute(images, progress=False) == paths
    assert counter.encoder == 3
    assert_same_prior(prior(image[:, ::-1]), StructurePrior.load(paths[2]))
    assert counter.encoder == 3


def test_top_level_import_stays_light_and_exports_the_priors() -> None:
    import subprocess
    import sys

    import robustprior

    code = "import sys, robustprior; assert 'torch' not in sys.modules, 'import robustprior pulled in torch'"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr
    assert (robustprior.SAMPrior, robustprior.RobustSAMPrior, robustprior.StructurePrior) == (
        SAMPrior, RobustSAMPrior, StructurePrior)
    with pytest.raises(AttributeError):
        robustprior.NoSuchPrior  # noqa: B018


# ---------------------------------------------------------------------- the bundled models meet other input
HONESTY = ("warning: the bundled RobustSAM-tiny model was trained on generated scenes; on real photos use "
           "--checkpoint robustsam_vit_b (or _l / _h; downloaded once)")


@pytest.mark.filterwarnings("ignore:RobustSAMPrior. no masks")
def test_bundled_prior_warns_once_off_domain_and_never_on_generated_scenes(image, tmp_path, monkeypatch, capsys) -> None:
    from restoration.datasets import LazyImages  # arrays that know their files: how recipes hand over data
    from robustprior import load
    from robustprior.data.scenes import SceneConfig, write_instance_dataset

    monkeypatch.setattr(load, "_warned_domains", set())
    root = write_instance_dataset(tmp_path / "scenes", 2, seed=3, config=SceneConfig(image_size=(64, 64)), progress=False)
    scene_files = sorted((root / "images").iterdir())
    prior = RobustSAMPrior.from_pretrained("tiny", points_per_side=1, cache_dir=tmp_path / "cache")
    prior.precompute(scene_files, progress=False)
    prior.precompute(LazyImages(scene_files), progress=False)
    RobustSAMPrior.from_pretrained("tiny", points_per_side=1, generated_scenes=True)(image)
    assert capsys.readouterr().err == ""
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), image)
    prior.precompute(LazyImages([photo]), progress=False)
    prior(image)
    assert capsys.readouterr().err == HONESTY + "\n"  # one line, however often it happens
