"""RobustSAMPredictor and automatic masks: batching, input validation, features, SAM equivalence."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from robustprior.automatic_mask_generator import RobustSAMAutomaticMaskGenerator
from robustprior.load import build_robust_sam
from robustprior.predictor import RobustSAMPredictor


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_robust_sam("tiny", random_init=True)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return data.astronaut()[::2, ::3].copy()  # 256 x 171, non-square


@pytest.fixture()
def predictor(model, image) -> RobustSAMPredictor:
    predictor = RobustSAMPredictor(model)
    predictor.set_image(image)
    return predictor


def test_predict_shapes(predictor, image) -> None:
    masks, scores, logits = predictor.predict(np.array([[50, 60]]), np.array([1]), multimask_output=True)
    assert masks.shape == (3, *image.shape[:2]) and masks.dtype == bool
    assert scores.shape == (3,) and logits.shape == (3, 128, 128)
    masks, scores, logits = predictor.predict(box=np.array([10, 20, 120, 200]), multimask_output=False)
    assert masks.shape == (1, *image.shape[:2])


def test_predict_under_bf16_autocast_returns_float32_arrays(predictor) -> None:
    """bfloat16 outputs (GPU or CPU autocast) come back as float32 numpy arrays, close to the float32 run's."""
    reference = predictor.predict(np.array([[50, 60]]), np.array([1]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        masks, scores, logits = predictor.predict(np.array([[50, 60]]), np.array([1]))
    assert masks.dtype == bool and scores.dtype == np.float32 and logits.dtype == np.float32
    assert np.abs(scores - reference[1]).max() < 0.1


def test_many_prompts_in_one_forward_equal_single_calls(predictor) -> None:
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 170, size=(6, 2, 2)).astype(np.float32)
    labels = np.array([[1, 1], [1, 0], [1, 1], [0, 1], [1, 1], [1, 0]])
    boxes = np.sort(rng.uniform(0, 170, size=(6, 2, 2)), axis=1).reshape(6, 4).astype(np.float32)
    transform = predictor.transform
    coords = torch.as_tensor(transform.apply_coords(points, predictor.original_size))
    box_torch = torch.as_tensor(transform.apply_boxes(boxes, predictor.original_size))
    _, scores, logits = predictor.predict_torch(coords, torch.as_tensor(labels), box_torch, multimask_output=True)
    for i in range(6):
        _, single_scores, single_logits = predictor.predict(points[i], labels[i], boxes[i], multimask_output=True)
        np.testing.assert_allclose(logits[i].numpy(), single_logits, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(scores[i].numpy(), single_scores, atol=1e-5, rtol=1e-5)


def test_sam_path_matches_segment_anything_predictor(model, image) -> None:
    from segment_anything import SamPredictor
    from segment_anything.modeling import Sam

    sam_predictor = SamPredictor(Sam(model.image_encoder, model.prompt_encoder, model.mask_decoder).eval())
    sam_predictor.set_image(image)
    ours = RobustSAMPredictor(model, path="sam")
    ours.set_image(image)
    prompt = dict(point_coords=np.array([[80.0, 100.0]]), point_labels=np.array([1]), box=np.array([20, 30, 150, 220]))
    expected_masks, expected_scores, expected_logits = sam_predictor.predict(**prompt)
    masks, scores, logits = ours.predict(**prompt)
    np.testing.assert_allclose(logits, expected_logits, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5, rtol=1e-5)
    assert (masks != expected_masks).mean() < 1e-3  # threshold ties only


def test_return_features(predictor) -> None:
    masks, scores, logits, features = predictor.predict(np.array([[40, 40]]), np.array([1]), return_features=True)
    assert features.mask_feature.shape == (1, 16, 128, 128)
    assert features.tokens.shape == (1, 4, 128)
    assert features.image_embedding.shape == (1, 128, 32, 32)


def test_grayscale_and_rgba_are_converted(model, image) -> None:
    gray = image[:, :, 1]
    reference = RobustSAMPredictor(model)
    reference.set_image(np.repeat(gray[:, :, None], 3, axis=2))
    for variant in (gray, gray[:, :, None]):
        predictor = RobustSAMPredictor(model)
        predictor.set_image(variant)
        assert torch.equal(predictor.get_image_embedding(), reference.get_image_embedding())
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 7, np.uint8)], axis=2)
    predictor, plain = RobustSAMPredictor(model), RobustSAMPredictor(model)
    predictor.set_image(rgba)
    plain.set_image(image)
    assert torch.equal(predictor.get_image_embedding(), plain.get_image_embedding())


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((20, 20, 3), np.float32), "uint8"),
        (np.zeros((20, 20, 3), np.uint16), "16-bit"),
        (np.zeros((20, 20, 2), np.uint8), "H x W x 3"),
        (np.zeros((0, 20, 3), np.uint8), "empty"),
        (np.zeros((2, 20, 20, 3), np.uint8), "H x W x 3"),
    ],
)
def test_bad_images(model, bad, message) -> None:
    with pytest.raises(ValueError, match=message):
        RobustSAMPredictor(model).set_image(bad)


@pytest.mark.parametrize(
    "prompt, message",
    [
        ({}, "no prompt"),
        ({"point_coords": np.zeros((0, 2)), "point_labels": np.zeros(0)}, "non-empty"),
        ({"point_coords": np.array([[10, 10]])}, "point_labels must be given"),
        ({"point_coords": np.array([[10, 10]]), "point_labels": np.array([1, 1])}, "shape"),
        ({"point_coords": np.array([[10, 10]]), "point_labels": np.array([2])}, "foreground"),
        ({"point_coords": np.array([[500, 10]]), "point_labels": np.array([1])}, "outside"),
        ({"point_coords": np.array([[-1, 10]]), "point_labels": np.array([1])}, "outside"),
        ({"point_coords": np.array([[np.nan, 10]]), "point_labels": np.array([1])}, "finite"),
        ({"box": np.array([50, 50, 10, 10])}, "XYXY"),
        ({"box": np.array([0, 0, 100, 400])}, "outside"),
        ({"box": np.array([0, 0, 100])}, "x0, y0, x1, y1"),
    ],
)
def test_bad_prompts(predictor, prompt, message) -> None:
    with pytest.raises(ValueError, match=message):
        predictor.predict(**prompt)


def test_bad_batched_prompts(predictor) -> None:
    with pytest.raises(ValueError, match="same non-zero number"):
        predictor.predict_torch(torch.zeros(2, 1, 2), torch.ones(2, 1), boxes=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="N x P x 2"):
        predictor.predict_torch(torch.zeros(2, 2), torch.ones(2))


def test_predict_before_set_image(model) -> None:
    with pytest.raises(RuntimeError, match="set_image"):
        RobustSAMPredictor(model).predict(np.array([[1, 1]]), np.array([1]))


def test_automatic_masks_for_both_paths(model, image) -> None:
    results: dict[str, np.ndarray] = {}
    for path in ("robust", "sam"):
        generator = RobustSAMAutomaticMaskGenerator(model, path=path, points_per_side=4, pred_iou_thresh=-10,
                                                 stability_score_thresh=0, box_nms_thresh=1.0)
        records = generator.generate(image)
        assert records and {"segmentation", "area", "bbox", "predicted_iou", "stability_score"} <= set(records[0])
        assert records[0]["segmentation"].shape == image.shape[:2]
        results[path] = np.array([r["segmentation"] for r in records])
    assert results["robust"].shape != results["sam"].shape or (results["robust"] != results["sam"]).any()


@pytest.mark.parametrize("path", ["robust", "sam"])
def test_automatic_masks_equal_segment_anythings_generator(path) -> None:
    """Drawing masks only for points whose predicted IoU passes gives exactly the records of SAM's own
    batch step (which draws and upsamples every mask first), on the bundled tiny models and a scene."""
    from segment_anything import SamAutomaticMaskGenerator

    from robustprior.load import load_model
    from robustprior.data.scenes import generate_scene

    model = load_model("robustsam_tiny")[0]
    scene = generate_scene(5).image
    settings = dict(points_per_side=6, pred_iou_thresh=0.6, stability_score_thresh=0.3, points_per_batch=16)
    ours = RobustSAMAutomaticMaskGenerator(model, path=path, **settings)
    reference = RobustSAMAutomaticMaskGenerator(model, path=path, **settings)
    reference._process_batch = lambda *args: SamAutomaticMaskGenerator._process_batch(reference, *args)
    got, expected = ours.generate(scene), reference.generate(scene)
    assert len(expected) > 0 and len(got) == len(expected)
    for record, twin in zip(got, expected):
        assert np.array_equal(record["segmentation"], twin["segmentation"])
        assert record["predicted_iou"] == pytest.approx(twin["predicted_iou"], abs=1e-6)
        assert record["stability_score"] == pytest.approx(twin["stability_score"], abs=1e-6)
        assert record["point_coords"] == twin["point_coords"] and record["bbox"] == twin["bbox"]


@pytest.mark.parametrize("path", ["robust", "sam"])
def test_automatic_masks_do_not_depend_on_points_per_batch(path) -> None:
    """``points_per_batch`` only trades memory for passes (the Table 8 smoke presets use 16 to stay small):
    the records are the same with batches of 8 points (the last one of 4) as with one of 36."""
    from robustprior.load import load_model
    from robustprior.data.scenes import generate_scene

    model = load_model("robustsam_tiny")[0]
    scene = generate_scene(7).image
    records = [RobustSAMAutomaticMaskGenerator(model, path=path, points_per_side=6, pred_iou_thresh=0.5,
                                               stability_score_thresh=0.3, points_per_batch=batch).generate(scene)
               for batch in (36, 8)]
    whole, split = (sorted(found, key=lambda record: (record["point_coords"], -record["predicted_iou"]))
                    for found in records)
    assert len(whole) > 0 and len(whole) == len(split)
    for record, twin in zip(whole, split):
        assert np.array_equal(record["segmentation"], twin["segmentation"])
        assert record["predicted_iou"] == pytest.approx(twin["predicted_iou"], abs=1e-5)
        assert record["stability_score"] == pytest.approx(twin["stability_score"], abs=1e-5)
