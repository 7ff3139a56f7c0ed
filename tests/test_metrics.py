"""Tests of robustprior.evaluation.metrics against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask

from robustprior.evaluation.metrics import (
    ImagePredictions,
    SegmentationMeter,
    box_prompt_ap,
    dice,
    mask_iou,
    pixel_accuracy,
    segmentation_scores,
)

SHAPE = (20, 30)
RECALL_POINTS = 101  # COCO interpolates precision at recall 0, 0.01, ..., 1


def rectangle_mask(rows: tuple[int, int], columns: tuple[int, int], shape: tuple[int, int] = SHAPE) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0] : rows[1], columns[0] : columns[1]] = True
    return mask


# Rows 2..9 x columns 3..12 (8 x 10 = 80 px) and rows 5..14 x columns 8..19 (10 x 12 = 120 px):
# they share rows 5..9 x columns 8..12 = 5 x 5 = 25 px, so the union is 80 + 120 - 25 = 175 px.
FIRST = rectangle_mask((2, 10), (3, 13))
SECOND = rectangle_mask((5, 15), (8, 20))


def test_overlapping_rectangles_by_hand():
    assert mask_iou(FIRST, SECOND) == pytest.approx(25 / 175)
    assert dice(FIRST, SECOND) == pytest.approx(2 * 25 / (80 + 120))
    # disagreement = 175 - 25 = 150 of the 600 pixels
    assert pixel_accuracy(FIRST, SECOND) == pytest.approx(1 - 150 / 600)
    assert isinstance(mask_iou(FIRST, SECOND), float)


def test_iou_agrees_with_pycocotools():
    rng = np.random.default_rng(0)
    pred, gt = rng.random(SHAPE) < 0.3, rng.random(SHAPE) < 0.5
    encoded = [coco_mask.encode(np.asfortranarray(mask.astype(np.uint8))) for mask in (pred, gt)]
    reference = coco_mask.iou([encoded[0]], [encoded[1]], [0])[0, 0]
    assert mask_iou(pred, gt) == pytest.approx(reference)


def test_empty_masks_conventions():
    empty = np.zeros(SHAPE, dtype=bool)
    assert mask_iou(empty, empty) == 1.0 and dice(empty, empty) == 1.0 and pixel_accuracy(empty, empty) == 1.0
    assert mask_iou(empty, FIRST) == 0.0 and dice(FIRST, empty) == 0.0
    everything = np.ones(SHAPE, dtype=bool)
    assert pixel_accuracy(FIRST, SECOND, ignore=everything) == 1.0


def test_iou_of_two_empty_masks_is_the_given_value():
    empty = np.zeros((2, 5, 5), dtype=bool)
    pair = np.stack([empty[0], np.ones((5, 5), dtype=bool)])
    assert mask_iou(empty, empty, empty=0.0).tolist() == [0.0, 0.0]
    assert mask_iou(torch.as_tensor(pair), torch.as_tensor(pair), empty=0.0).tolist() == [0.0, 1.0]
    assert mask_iou(pair, empty).tolist() == [1.0, 0.0]


def test_batched_equals_per_item_for_numpy_and_torch():
    rng = np.random.default_rng(1)
    pred = rng.random((4, *SHAPE)) < 0.4
    gt = rng.random((4, *SHAPE)) < 0.4
    gt[3] = False
    pred[3] = False
    batched = segmentation_scores(pred, gt)
    from_tensors = segmentation_scores(torch.from_numpy(pred), torch.from_numpy(gt))
    for name in ("IoU", "Dice", "PA"):
        per_item = [segmentation_scores(pred[index], gt[index])[name] for index in range(4)]
        assert batched[name].shape == (4,)
        assert np.allclose(batched[name], per_item)
        assert isinstance(from_tensors[name], torch.Tensor)
        assert np.allclose(from_tensors[name].numpy(), per_item)
    assert batched["IoU"][3] == 1.0


def test_ignore_removes_pixels():
    # Ignoring columns 8..12 removes the whole overlap (rows 5..9) plus
    # FIRST's rows 2..4 and SECOND's rows 10..14 in those columns:
    # FIRST keeps 80 - 8*5 = 40 px, SECOND keeps 120 - 10*5 = 70 px, no overlap.
    ignore = np.zeros(SHAPE, dtype=bool)
    ignore[:, 8:13] = True
    assert mask_iou(FIRST, SECOND, ignore=ignore) == 0.0
    assert pixel_accuracy(FIRST, SECOND, ignore=ignore) == pytest.approx(1 - 110 / (600 - 100))
    # Ignoring only what FIRST adds beyond SECOND leaves IoU = 25 / 120.
    only_first = FIRST & ~SECOND
    assert mask_iou(FIRST, SECOND, ignore=only_first) == pytest.approx(25 / 120)
    stacked = mask_iou(np.stack([FIRST, FIRST]), np.stack([SECOND, SECOND]), ignore=np.stack([ignore, only_first]))
    assert stacked == pytest.approx([0.0, 25 / 120])


def test_metrics_reject_non_boolean_and_mismatched_masks():
    with pytest.raises(ValueError, match="boolean"):
        mask_iou(FIRST.astype(np.float32), SECOND)
    with pytest.raises(ValueError):
        mask_iou(FIRST, SECOND[:10])


def instance_masks() -> list[np.ndarray]:
    """Two images with two and one non-overlapping rectangular instances."""
    return [
        np.stack([rectangle_mask((1, 9), (1, 11)), rectangle_mask((11, 19), (14, 28))]),
        np.stack([rectangle_mask((4, 16), (5, 25))]),
    ]


def test_box_prompt_ap_perfect_predictions():
    ground_truth = instance_masks()
    predictions = [ImagePredictions(masks, np.linspace(0.9, 0.5, len(masks))) for masks in ground_truth]
    assert box_prompt_ap(predictions, ground_truth) == {"AP": 1.0, "AP50": 1.0, "AP75": 1.0}


def test_box_prompt_ap_by_hand():
    ground_truth = instance_masks()
    # Image 0, instance 0 (8 x 10) predicted shifted right by 3 columns: IoU = 56 / 104 = 0.538,
    # a true positive at the 0.50 threshold only.  Everything else is perfect.
    shifted = np.roll(ground_truth[0][0], 3, axis=1)
    assert mask_iou(shifted, ground_truth[0][0]) == pytest.approx(56 / 104)
    predictions = [
        ImagePredictions(np.stack([shifted, ground_truth[0][1]]), [0.2, 0.9]),
        ImagePredictions(ground_truth[1], [0.8]),
    ]
    result = box_prompt_ap(predictions, ground_truth)
    assert result["AP50"] == 1.0
    # At IoU 0.75 the two confident predictions are hits and the least confident one a miss:
    # precision 1 up to recall 2/3, so 67 of the 101 recall points (0 .. 0.66) have precision 1.
    assert result["AP75"] == pytest.approx(67 / RECALL_POINTS)
    # Threshold 0.50 counts all three instances (AP 1); the other nine give 67/101.
    assert result["AP"] == pytest.approx((1.0 + 9 * 67 / RECALL_POINTS) / 10)


def test_box_prompt_ap_score_order_matters_and_crowd_is_ignored():
    ground_truth = instance_masks()
    wrong = np.zeros_like(ground_truth[1])
    wrong[0, 0:3, 0:5] = True  # misses the instance entirely
    confident_miss = [
        ImagePredictions(ground_truth[0], [0.5, 0.4]),
        ImagePredictions(wrong, [0.99]),
    ]
    # Ranked: miss (precision 0), hit, hit -> precision 2/3 up to recall 2/3 (67 recall points).
    assert box_prompt_ap(confident_miss, ground_truth)["AP50"] == pytest.approx(67 / RECALL_POINTS * 2 / 3)
    ignore = [None, wrong[0]]
    assert box_prompt_ap(confident_miss, ground_truth, ignore=ignore)["AP50"] == pytest.approx(67 / RECALL_POINTS)


def test_meter_table_on_hand_numbers():
    meter = SegmentationMeter(clear_kind="identity")
    empty = np.zeros(SHAPE, dtype=bool)
    meter.update("identity", np.stack([FIRST, SECOND]), np.stack([FIRST, SECOND]))  # IoU 1, 1
    meter.update("blur", FIRST, SECOND)  # IoU 25/175
    meter.update("blur", SECOND, SECOND)  # IoU 1
    meter.update("noise", torch.from_numpy(empty), torch.from_numpy(FIRST))  # IoU 0
    blur = (25 / 175 + 1) / 2
    table = meter.table()
    assert table["Clear"]["IoU"] == pytest.approx(1.0)
    assert table["Degrade"]["IoU"] == pytest.approx((blur + 0.0) / 2)
    assert table["Average"]["IoU"] == pytest.approx((1.0 + blur + 0.0) / 3)
    assert table["Degrade"]["Dice"] == pytest.approx(((2 * 25 / 200 + 1) / 2 + 0.0) / 2)
    assert table["Clear"]["PA"] == 1.0
    assert meter.per_kind()["blur"]["count"] == 2 and meter.per_kind()["identity"]["count"] == 2
    assert meter.to_dict()["table"] == table
    markdown = meter.to_markdown(include_kinds=True).splitlines()
    assert markdown[0] == "| | IoU (%) | Dice (%) | PA (%) |"
    assert "| Clear | 100.00 | 100.00 | 100.00 |" in markdown
    assert any(line.startswith("| blur | 57.14 |") for line in markdown)  # (25/175 + 1) / 2 = 0.5714
    meter.reset()
    assert all(math.isnan(value) for value in meter.table()["Clear"].values())
