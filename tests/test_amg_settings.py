"""Automatic-mask settings: the offline filter equals the generator, scoring by hand, the stored defaults."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from robustprior.evaluation.amg_settings import (
    METADATA_KEY,
    SAM_DEFAULTS,
    SettingsScore,
    apply_thresholds,
    capture_candidates,
    choose_setting,
    iou_matrix,
    replace_card_section,
    score_setting,
    settings_from_metadata,
    settings_metadata,
    validate_settings,
)
from robustprior.automatic_mask_generator import RobustSAMAutomaticMaskGenerator
from robustprior.load import build_robust_sam, load_model


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return build_robust_sam("tiny", random_init=True, image_size=128, encoder_depth=2, global_attention_indexes=(1,))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return cv2.resize(data.astronaut(), (128, 96), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("min_area", [0, 40])
def test_offline_thresholds_equal_a_generator_run_with_them(small_model, image, min_area) -> None:
    generator = RobustSAMAutomaticMaskGenerator(small_model, path="sam", points_per_side=3)
    candidates = capture_candidates(generator, image)
    assert len(candidates["rles"]) == 27  # every point's three masks, nothing filtered
    assert (generator.pred_iou_thresh, generator.stability_score_thresh) == (0.88, 0.95)  # restored
    iou_thresh = float(np.median(candidates["iou_preds"]))
    stability = float(np.nanmedian(candidates["stability_score"]))
    offline = apply_thresholds(candidates, iou_thresh, stability, 0.5, min_area)
    real = RobustSAMAutomaticMaskGenerator(small_model, path="sam", points_per_side=3, pred_iou_thresh=iou_thresh,
                                        stability_score_thresh=stability, box_nms_thresh=0.5,
                                        min_mask_region_area=min_area).generate(image)
    assert 0 < len(offline) < 27
    assert len(offline) == len(real)
    assert all(np.array_equal(mask, record["segmentation"]) for mask, record in zip(offline, real))


def test_scores_by_hand() -> None:
    objects = np.zeros((2, 4, 4), bool)
    objects[0, :2, :2] = True  # 4 pixels
    objects[1, 2:, :] = True  # 8 pixels
    exact = objects[0].copy()
    half = np.zeros((4, 4), bool)
    half[2:, :2] = True  # IoU 4/8 = 0.5 with object 1: a match (>= 0.5)
    stray = np.zeros((4, 4), bool)
    stray[0, 3] = True
    np.testing.assert_allclose(iou_matrix([exact, half, stray], objects), [[1, 0], [0, 0.5], [0, 0]])
    score = score_setting([[exact, half, stray], []], [objects, objects[:1]], 8, 0.5, 0.6)
    assert score.counts == (3, 0) and score.min_masks == 0
    assert score.precision == pytest.approx(2 / 3) and score.recall == pytest.approx(2 / 3)
    assert score.f1 == pytest.approx(2 / 3) and score.mean_best_iou == pytest.approx((1 + 0.5 + 0) / 3)


def test_choice_needs_masks_everywhere_and_prefers_the_coarser_grid() -> None:
    def score(points, iou, f1, counts=(1, 1)):
        return SettingsScore(points, iou, 0.5, counts, f1, f1, f1, f1)

    best_everywhere = score(16, 0.8, 0.80)
    assert choose_setting([score(16, 0.9, 0.95, counts=(0, 3)), best_everywhere]) == best_everywhere
    coarse = score(8, 0.7, 0.795)
    assert choose_setting([best_everywhere, coarse, score(8, 0.6, 0.70)]) == coarse  # within 0.01, 4x cheaper
    assert choose_setting([best_everywhere, score(8, 0.7, 0.70)]) == best_everywhere
    assert choose_setting([score(8, 0.7, 0.8), score(8, 0.75, 0.8)]).pred_iou_thresh == 0.75  # ties: stricter
    with pytest.raises(ValueError, match="no setting"):
        choose_setting([score(8, 0.9, 0.9, counts=(0, 1))])


def test_settings_metadata_round_trip_and_validation() -> None:
    stored = settings_metadata({"robust": {"points_per_side": 8, "pred_iou_thresh": 0.7}})
    assert json.loads(stored[METADATA_KEY])["robust"]["stability_score_thresh"] == SAM_DEFAULTS["stability_score_thresh"]
    assert settings_from_metadata(stored)["robust"]["points_per_side"] == 8
    assert settings_from_metadata({}) == {}
    with pytest.raises(ValueError, match="unknown key"):
        validate_settings({"pred_iou": 0.5})
    with pytest.raises(ValueError, match="stability_score_thresh"):
        validate_settings({"stability_score_thresh": 1.5})
    with pytest.raises(ValueError, match="'sam' / 'robust'"):
        settings_from_metadata({METADATA_KEY: json.dumps({"fast": {}})})


def test_card_section_is_replaced_not_repeated() -> None:
    card = "# model\n\ntext\n\n## Automatic mask settings\n\nold\n\n## Held-out\n\nnumbers\n"
    updated = replace_card_section(card, "## Automatic mask settings\n\nnew\n")
    assert updated.count("## Automatic mask settings") == 1 and "new" in updated and "old" not in updated
    assert updated.endswith("## Held-out\n\nnumbers\n")
    assert replace_card_section("# model\n", "## Automatic mask settings\n\nx\n").endswith("\n\n## Automatic mask settings\n\nx\n")


# ---------------------------------------------------------------------- the bundled models' stored settings
def test_bundled_models_carry_settings_that_differ_from_sams() -> None:
    source = load_model("tiny", announce=False)[1]
    assert set(source.amg_settings) == {"sam", "robust"}
    for path in ("sam", "robust"):
        settings = source.generator_settings(path)
        assert settings != SAM_DEFAULTS and settings["pred_iou_thresh"] < SAM_DEFAULTS["pred_iou_thresh"]
    base = load_model("sam_tiny", decoder_path="sam")[1]
    assert set(base.amg_settings) == {"sam"} and base.generator_settings("sam") == source.generator_settings("sam")


def test_priors_default_to_the_stored_settings_and_give_masks_on_generated_scenes() -> None:
    from robustprior import RobustSAMPrior, SAMPrior
    from robustprior.data.scenes import TextureBank, derive_seed, generate_scene

    textures = TextureBank.load(None)
    scenes = [generate_scene(derive_seed(4000, index), textures=textures) for index in range(2)]
    for prior_class, path in ((SAMPrior, "sam"), (RobustSAMPrior, "robust")):
        prior = prior_class.from_pretrained("tiny", generated_scenes=True)
        stored = prior.source.generator_settings(path)
        assert {name: prior.settings[name] for name in stored} == stored
        counts = [prior(scene.image).num_masks for scene in scenes]
        assert all(count > 0 for count in counts), (prior_class.__name__, counts)
        overridden = prior_class.from_pretrained("tiny", pred_iou_thresh=0.95, points_per_side=None)
        assert overridden.settings["pred_iou_thresh"] == 0.95
        assert overridden.settings["points_per_side"] == stored["points_per_side"]
