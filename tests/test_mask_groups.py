"""Grouping of overlapping masks into regions and mask dropout, against hand-made masks."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from restoration.archs import SAMDeblurNet
from restoration.datasets import PriorIndex, PriorPairedDataset
from restoration.mask_groups import drop_mask_groups, group_masks, summed_grey_codes
from robustprior.data.structure import drop_masks
from robustprior.priors import StructurePrior

pytestmark = pytest.mark.usefixtures("single_thread")

# Three overlapping masks on a 3 x 4 image (largest first, as a prior stores them):
M0 = [[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
M1 = [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
M2 = [[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
MASKS = np.array([M0, M1, M2], dtype=bool)


def test_smallest_mask_wins_is_the_earlier_rule() -> None:
    expected = [[1, 2, 2, 0], [1, 2, 3, 3], [0, 0, 3, 3]]  # equal areas of M1 / M2: the later mask wins
    np.testing.assert_array_equal(group_masks(MASKS, "smallest"), expected)


def test_summed_grey_codes_merge_equal_sums_as_sam_deblur_does() -> None:
    # grey codes 2, 4, 6: M0 + M1 = 6 = M2, so M0-and-M1 pixels and M2-only pixels are one region.
    # sums: [[2, 6, 6, 0], [2, 6, 12, 6], [0, 0, 6, 6]] -> values 0, 2, 6, 12 -> labels 0, 1, 2, 3
    expected = [[1, 2, 2, 0], [1, 2, 3, 2], [0, 0, 2, 2]]
    np.testing.assert_array_equal(group_masks(MASKS, "summed_grey"), expected)


def test_summed_grey_codes_above_126_and_the_8_bit_clip() -> None:
    codes = summed_grey_codes(256)
    assert codes[:3].tolist() == [2, 4, 6] and codes[126] == 254
    assert codes[127] == 255 and codes[128] == 253 and codes[254] == 1
    masks = np.zeros((128, 2, 2), bool)
    masks[126, 0, :] = True            # code 254
    masks[127, :, 0] = True            # code 255; the overlap sums to 509, clipped to 255
    expected = [[2, 1], [2, 0]]        # values 0, 254, 255 -> labels 0, 1, 2; overlap joins mask 127
    np.testing.assert_array_equal(group_masks(masks, "summed_grey"), expected)


def test_bit_codes_give_each_covering_set_its_own_region() -> None:
    # codes 4 * M0 + 2 * M1 + M2: {M2} = 1, {M0} = 4, {M0, M1} = 6, {M0, M1, M2} = 7
    expected = [[2, 3, 3, 0], [2, 3, 4, 1], [0, 0, 1, 1]]
    np.testing.assert_array_equal(group_masks(MASKS, "bit_codes"), expected)
    full = np.ones((1, 2, 2), bool)  # no uncovered pixel: labels start at 1
    np.testing.assert_array_equal(group_masks(full, "bit_codes"), [[1, 1], [1, 1]])
    many = np.zeros((70, 1, 70), bool)  # more masks than one byte holds
    for k in range(70):
        many[k, 0, k] = True
    assert len(np.unique(group_masks(many, "bit_codes"))) == 70


def test_no_masks_is_one_uncovered_region() -> None:
    for rule in ("smallest", "summed_grey", "bit_codes"):
        assert not group_masks(np.zeros((0, 3, 4), bool), rule).any()
    with pytest.raises(ValueError, match="grouping must be one of"):
        group_masks(MASKS, "largest")


def test_exact_dropout_drops_int_half_of_the_groups_into_one_pool() -> None:
    label_map = torch.tensor([[[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]])  # M = 5 groups, uncovered included
    dropped_counts = torch.zeros(5)
    generator = torch.Generator().manual_seed(0)
    for _ in range(400):
        dropped = drop_mask_groups(label_map, 0.5, "exact", generator)[0]
        gone = [label for label in range(5) if not (dropped == label).any()]
        assert len(gone) == 2  # exactly int(0.5 * 5)
        pooled = torch.isin(label_map[0], torch.tensor(gone))
        assert (dropped[pooled] == 5).all()  # the dropped pixels: one new region of their own
        assert torch.equal(dropped[~pooled], label_map[0][~pooled])  # the kept groups unchanged
        dropped_counts[gone] += 1
    assert dropped_counts[0] > 0  # the uncovered group can be dropped too
    assert ((dropped_counts / 400 - 0.4).abs() < 0.1).all()  # each group with probability 2 / 5
    single = torch.zeros(1, 2, 2, dtype=torch.long)  # one group: int(0.5) = 0 dropped
    assert torch.equal(drop_mask_groups(single, 0.5, "exact"), single)
    assert (drop_mask_groups(label_map, 1.0, "exact") == 5).all()


def test_exact_dropout_is_per_sample_and_independent_is_the_earlier_rule() -> None:
    label_map = torch.stack([torch.arange(4).repeat(3, 1), torch.tensor([[0, 0, 7, 7]] * 3)])
    dropped = drop_mask_groups(label_map, 0.5, "exact", torch.Generator().manual_seed(3))
    assert len(torch.unique(dropped[0])) == 3  # 4 groups: 2 kept + the pool
    assert len(torch.unique(dropped[1])) == 2  # 2 groups: 1 kept + the pool
    generator_a, generator_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(drop_mask_groups(label_map, 0.5, "independent", generator_a),
                       drop_masks(label_map, 0.5, generator_b))


def test_deblur_network_drops_exactly_with_the_global_rng() -> None:
    small = {"width": 8, "enc_blocks": (1, 1), "middle_blocks": 1, "dec_blocks": (1, 1)}
    model = SAMDeblurNet(mask_dropout=0.5, mask_dropout_mode="exact", **small)
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    label_map = torch.randint(0, 6, (2, 16, 16), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(4)
    trained = model.train()(image, {"label_map": label_map})
    torch.manual_seed(4)
    dropped = drop_mask_groups(label_map, 0.5, "exact")
    torch.testing.assert_close(model.eval()(image, {"label_map": dropped}), trained)


def test_the_dataset_groups_the_prior_masks(tmp_path: Path) -> None:
    image = np.zeros((3, 4, 3), np.uint8)
    for folder in ("blur", "sharp"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "000001.png"), image)
    prior = StructurePrior(masks=MASKS, label_map=group_masks(MASKS, "smallest"), structure_map=image,
                           embedding=torch.zeros(2, 2, 2), mask_feature=torch.zeros(2, 2, 2),
                           scores=np.ones(3, np.float32))
    files = {str(tmp_path / "blur" / "000001.png"): prior.save(tmp_path / "prior.safetensors")}
    for rule in ("smallest", "summed_grey", "bit_codes"):
        index = PriorIndex("sam", files, grouping=rule, grey_scale=9)
        item = PriorPairedDataset({"dataroot_lq": str(tmp_path / "blur"), "dataroot_gt": str(tmp_path / "sharp")}, index)[0]
        np.testing.assert_array_equal(item["prior"]["label_map"].numpy(), group_masks(MASKS, rule))
        assert int(item["prior"]["grey_scale"]) == 9
        assert index.max_segments() == group_masks(MASKS, rule).max()
