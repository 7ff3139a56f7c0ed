"""restoration.verdict: the paired seed x image analysis and the three-way verdict on constructed numbers."""
from __future__ import annotations

import math

import pytest

from restoration.verdict import paired_seed_verdict, verdict_of, verdict_sentence

IMAGES = ("a", "b", "c", "d")


def _scores(per_seed_offsets: dict[int, float], base: dict[str, float] | None = None) -> dict[int, dict[str, float]]:
    base = base or {"a": 20.0, "b": 25.0, "c": 30.0, "d": 18.0}
    return {seed: {name: value + offset for name, value in base.items()} for seed, offset in per_seed_offsets.items()}


def test_interval_is_student_t_over_the_per_seed_means() -> None:
    baseline = _scores({0: 0.0, 1: 0.0, 2: 0.0})
    candidate = _scores({0: 1.0, 1: 2.0, 2: 3.0})  # d = [1, 2, 3]: mean 2, sd 1, t(0.975, 2) = 4.302653
    result = paired_seed_verdict(baseline, candidate)
    assert result["per_seed"] == pytest.approx({0: 1.0, 1: 2.0, 2: 3.0})
    half = 4.302653 / math.sqrt(3)
    assert result["mean"] == pytest.approx(2.0)
    assert result["interval"] == pytest.approx([2 - half, 2 + half], abs=1e-5)
    assert result["verdict"] == "inconclusive"  # 2 - 2.484 < 0
    assert result["images"] == 4


def test_held_reversed_and_inconclusive() -> None:
    baseline = _scores({0: 0.0, 1: 0.3, 2: -0.2})
    held = paired_seed_verdict(baseline, _scores({0: 0.5, 1: 0.9, 2: 0.35}))  # d = 0.5, 0.6, 0.55
    assert held["verdict"] == "held" and held["interval"][0] > 0
    reversed_ = paired_seed_verdict(baseline, _scores({0: -0.5, 1: -0.3, 2: -0.8}))  # d = -0.5, -0.6, -0.6
    assert reversed_["verdict"] == "reversed" and reversed_["interval"][1] < 0
    noisy = paired_seed_verdict(baseline, _scores({0: 0.4, 1: 0.0, 2: -0.3}))  # d = 0.4, -0.3, -0.1
    assert noisy["verdict"] == "inconclusive" and noisy["interval"][0] < 0 < noisy["interval"][1]
    assert "**held**" in verdict_sentence(held) and "**reversed**" in verdict_sentence(reversed_)
    assert "**inconclusive**" in verdict_sentence(noisy)


def test_one_seed_gives_no_interval_and_no_claim_however_large_the_gain() -> None:
    result = paired_seed_verdict(_scores({0: 0.0}), _scores({0: 5.0}))
    assert result["interval"] is None and result["verdict"] == "inconclusive"
    assert "one training seed" in result["reason"]
    assert "no interval (one seed)" in verdict_sentence(result)


def test_pairing_uses_common_seeds_and_images_only() -> None:
    baseline = {0: {"a": 10.0, "b": 12.0}, 1: {"a": 11.0, "b": 13.0}, 7: {"a": 99.0}}
    candidate = {0: {"a": 11.0, "b": 12.0, "z": 50.0}, 1: {"a": 12.0, "b": 14.0}}
    result = paired_seed_verdict(baseline, candidate)
    assert result["seeds"] == [0, 1]
    assert result["per_seed"] == pytest.approx({0: 0.5, 1: 1.0})
    assert result["images"] == 2


def test_bootstrap_is_seeded_and_brackets_the_mean() -> None:
    baseline, candidate = _scores({0: 0.0, 1: 0.0, 2: 0.0}), _scores({0: 0.2, 1: 0.5, 2: 0.1})
    first = paired_seed_verdict(baseline, candidate, seed=3)
    assert first["bootstrap_interval"] == paired_seed_verdict(baseline, candidate, seed=3)["bootstrap_interval"]
    low, high = first["bootstrap_interval"]
    assert low <= first["mean"] <= high


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no training seed in common"):
        paired_seed_verdict({0: {"a": 1.0}}, {1: {"a": 1.0}})
    with pytest.raises(ValueError, match="seed 0: no test image scored by both"):
        paired_seed_verdict({0: {"a": 1.0}}, {0: {"b": 1.0}})
    with pytest.raises(ValueError, match="non-finite PSNR for a"):
        paired_seed_verdict({0: {"a": math.inf}}, {0: {"a": 1.0}})
    assert verdict_of([0.1, 0.3]) == "held" and verdict_of([-0.3, -0.1]) == "reversed" and verdict_of(None) == "inconclusive"


def test_mdd_on_constructed_numbers_against_tables_and_the_noncentral_t() -> None:
    """MDD = (t(0.975, n-1) + t(0.8, n-1)) * sd / sqrt(n): hand values from printed t tables, the
    normal limit for many replicates, and the exact noncentral-t power at the MDD close to 0.8."""
    from scipy import stats

    from restoration.verdict import minimal_detectable_difference

    # t(0.975, 4) = 2.7764, t(0.80, 4) = 0.9410 (printed tables): (2.7764 + 0.9410) * 0.5 / sqrt(5)
    assert minimal_detectable_difference(0.5, 5) == pytest.approx(3.7174 * 0.5 / math.sqrt(5), abs=2e-4)
    # t(0.975, 2) = 4.3027, t(0.80, 2) = 1.0607
    assert minimal_detectable_difference(0.88, 3) == pytest.approx(5.3634 * 0.88 / math.sqrt(3), abs=2e-4)
    # many replicates: the normal formula (1.95996 + 0.84162) * sd / sqrt(n)
    assert minimal_detectable_difference(2.0, 20000) == pytest.approx(2.80158 * 2.0 / math.sqrt(20000), rel=1e-4)
    for replicates in (3, 5, 8, 16, 64):
        sd = 0.7
        mdd = minimal_detectable_difference(sd, replicates)
        df, noncentrality = replicates - 1, mdd * math.sqrt(replicates) / sd
        critical = stats.t.ppf(0.975, df)
        power = stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality)
        assert 0.76 < power < 0.82 if replicates < 8 else abs(power - 0.8) < 0.005
    assert minimal_detectable_difference(1.0, 1) is None and minimal_detectable_difference(None, 5) is None
    with pytest.raises(ValueError, match="sd must be"):
        minimal_detectable_difference(-1.0, 5)


def test_seed_verdict_carries_its_sd_and_mdd() -> None:
    from restoration.verdict import minimal_detectable_difference

    result = paired_seed_verdict(_scores({0: 0.0, 1: 0.0, 2: 0.0}), _scores({0: 1.0, 1: 2.0, 2: 3.0}))
    assert result["design"] == "retrain" and result["replicates"] == 3
    assert result["sd"] == pytest.approx(1.0)
    assert result["mdd"] == pytest.approx(minimal_detectable_difference(1.0, 3))
    assert paired_seed_verdict(_scores({0: 0.0}), _scores({0: 5.0}))["mdd"] is None


def test_image_verdict_is_student_t_over_images() -> None:
    from restoration.verdict import paired_image_verdict, power_sentence

    baseline = {"a": 20.0, "b": 25.0, "c": 30.0, "d": 18.0}
    candidate = {"a": 21.0, "b": 25.8, "c": 30.7, "d": 18.9, "z": 99.0}  # d = 1.0, 0.8, 0.7, 0.9
    result = paired_image_verdict(baseline, candidate)
    differences = [1.0, 0.8, 0.7, 0.9]
    mean = sum(differences) / 4
    sd = math.sqrt(sum((value - mean) ** 2 for value in differences) / 3)
    half = 3.182446 * sd / math.sqrt(4)  # t(0.975, 3)
    assert result["images"] == 4 and result["mean"] == pytest.approx(mean)
    assert result["interval"] == pytest.approx([mean - half, mean + half], abs=1e-5)
    assert result["verdict"] == "held" and result["design"] == "swap"
    assert result["mdd"] == pytest.approx((3.182446 + 0.978472) * sd / 2, abs=1e-5)  # t(0.8, 3) = 0.978472
    sentence = verdict_sentence(result)
    assert "4 paired test images" in sentence and "**held**" in sentence
    ceiling = {"mean": 3 * result["mdd"] + 0.01, "interval": [1.0, 2.0], "design": "retrain"}
    assert ">= 3: powered" in power_sentence(result, ceiling)
    assert "below 3: underpowered" in power_sentence(result, {**ceiling, "mean": result["mdd"]})
    with pytest.raises(ValueError, match="no test image scored by both"):
        paired_image_verdict({"a": 1.0}, {"b": 1.0})
