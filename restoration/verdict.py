"""Is one prior better than another? A paired analysis over training seeds and test images.

Each method is trained once per seed and evaluated on the same test images. For every seed ``s``
present in both, ``d_s`` is the mean over the images both scored of (candidate PSNR minus baseline
PSNR): pairing by seed removes what the seed does to both rows, pairing by image removes how hard
each image is. The seeds are the replicates: the 95 % interval is Student's t over the ``d_s``
(``n - 1`` degrees of freedom), so seed-to-seed noise widens it honestly; with one seed there is no
interval. A two-level bootstrap (seeds, then images within each seed, with replacement) is reported
beside it. The verdict is "held" only when the interval lies above 0, "reversed" when below,
otherwise "inconclusive".

:func:`paired_image_verdict` is the same analysis with the test images as the replicates, for one
trained network (or the per-image mean over a few) evaluated twice: the test-time prior swap, whose
difference has no training-seed noise, and a ceiling measured on one seed.

Power (:func:`minimal_detectable_difference`): beside every verdict the reports print the minimal
detectable difference of the design, :data:`MDD_FORMULA`: the true difference that a two-sided test
at alpha = 0.05 finds with probability 0.8, given the replicates' sd and number. An "inconclusive"
with an MDD above the largest effect a prior could have (the ceiling: ground-truth masks minus SAM
prior) says the design could not see the effect, not that there is none.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import stats

VERDICTS: tuple[str, ...] = ("held", "reversed", "inconclusive")
POWER = 0.8
MDD_FORMULA = ("MDD = (t(1 - alpha/2, n - 1) + t(power, n - 1)) * sd / sqrt(n), alpha = 0.05 two-sided, power 0.8; "
               "sd: the sd of the n paired differences (seeds, or images for the swap)")


def minimal_detectable_difference(sd: float | None, replicates: int, confidence: float = 0.95,
                                  power: float = POWER) -> float | None:
    """The minimal detectable difference of a paired Student-t analysis (:data:`MDD_FORMULA`).

    ``sd``: the sample sd of the ``replicates`` paired differences; returns None when it cannot be
    known (fewer than 2 replicates, or no sd). This is the usual closed-form approximation of the
    noncentral-t power calculation (exact power at this difference is close to ``power``; tested)."""
    if sd is None or replicates < 2:
        return None
    if not 0 < confidence < 1 or not 0 < power < 1:
        raise ValueError(f"confidence and power must lie in (0, 1), got {confidence} and {power}")
    if not math.isfinite(sd) or sd < 0:
        raise ValueError(f"sd must be a finite non-negative number, got {sd}")
    df = replicates - 1
    return float((stats.t.ppf(0.5 + confidence / 2, df) + stats.t.ppf(power, df)) * sd / math.sqrt(replicates))


def _check_finite(scores: Mapping[int, Mapping[str, float]], name: str) -> None:
    for seed, per_image in scores.items():
        bad = [image for image, value in per_image.items() if not math.isfinite(float(value))]
        if bad:
            raise ValueError(f"{name} seed {seed}: non-finite PSNR for {', '.join(sorted(bad)[:3])}")


def verdict_of(interval: tuple[float, float] | list[float] | None) -> str:
    """``held`` (interval above 0), ``reversed`` (below 0) or ``inconclusive`` (covers 0, or no interval)."""
    if interval is None:
        return "inconclusive"
    low, high = interval
    return "held" if low > 0 else "reversed" if high < 0 else "inconclusive"



def _verdict_reason(verdict: str, confidence: float, no_interval: bool, no_interval_reason: str) -> str:
    """Why a verdict is what it is, in one phrase (``no_interval_reason`` when there is no interval)."""
    if no_interval:
        return no_interval_reason
    if verdict == "inconclusive":
        return f"the {confidence:.0%} interval contains 0"
    return f"the {confidence:.0%} interval lies {'above' if verdict == 'held' else 'below'} 0"

def paired_seed_verdict(
    baseline: Mapping[int, Mapping[str, float]],
    candidate: Mapping[int, Mapping[str, float]],
    confidence: float = 0.95,
    bootstrap_samples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Candidate minus baseline, paired by training seed and by test image (module docstring).

    ``baseline`` / ``candidate``: ``{training seed: {image name: PSNR}}``. Returns ``seeds`` (paired),
    ``per_seed`` (``d_s``), ``images`` (paired images per seed, the smallest), ``mean``, ``interval``
    (Student-t, None for one seed), ``bootstrap_interval``, ``confidence``, ``method``, ``verdict``,
    ``reason``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    _check_finite(baseline, "baseline")
    _check_finite(candidate, "candidate")
    seeds = sorted(set(baseline) & set(candidate))
    if not seeds:
        raise ValueError(f"no training seed in common: baseline has {sorted(baseline)}, candidate {sorted(candidate)}")
    differences: dict[int, np.ndarray] = {}
    for training_seed in seeds:
        images = sorted(set(baseline[training_seed]) & set(candidate[training_seed]))
        if not images:
            raise ValueError(f"seed {training_seed}: no test image scored by both methods")
        differences[training_seed] = np.array(
            [float(candidate[training_seed][name]) - float(baseline[training_seed][name]) for name in images])
    per_seed = {training_seed: float(values.mean()) for training_seed, values in differences.items()}
    means = np.array(list(per_seed.values()))
    mean = float(means.mean())
    interval: list[float] | None = None
    if len(seeds) >= 2:
        spread = float(means.std(ddof=1)) / math.sqrt(len(seeds))
        quantile = float(stats.t.ppf(0.5 + confidence / 2, df=len(seeds) - 1))
        interval = [mean - quantile * spread, mean + quantile * spread]
    rng = np.random.default_rng(seed)
    arrays = [differences[training_seed] for training_seed in seeds]
    draws = np.empty(bootstrap_samples)
    for draw in range(bootstrap_samples):
        chosen = rng.integers(len(arrays), size=len(arrays))
        draws[draw] = np.mean([arrays[index][rng.integers(len(arrays[index]), size=len(arrays[index]))].mean()
                               for index in chosen])
    tail = (1 - confidence) / 2
    bootstrap = [float(np.quantile(draws, tail)), float(np.quantile(draws, 1 - tail))]
    verdict = verdict_of(interval)
    sd = float(means.std(ddof=1)) if len(seeds) >= 2 else None
    reason = _verdict_reason(verdict, confidence, interval is None,
                             "one training seed: seed-to-seed noise cannot be measured, so no interval and no claim")
    return {
        "seeds": seeds,
        "per_seed": per_seed,
        "images": int(min(len(values) for values in arrays)),
        "mean": mean,
        "interval": interval,
        "bootstrap_interval": bootstrap,
        "confidence": confidence,
        "method": (f"per seed, the mean over test images of the paired PSNR difference; Student-t {confidence:.0%} "
                   f"interval over the {len(seeds)} seeds ({len(seeds) - 1} degrees of freedom); bootstrap over "
                   "seeds and images beside it"),
        "verdict": verdict,
        "reason": reason,
        "design": "retrain",
        "replicates": len(seeds),
        "sd": sd,
        "mdd": minimal_detectable_difference(sd, len(seeds), confidence),
    }


def paired_image_verdict(
    baseline: Mapping[str, float],
    candidate: Mapping[str, float],
    confidence: float = 0.95,
    bootstrap_samples: int = 2000,
    seed: int = 0,
    design: str = "swap",
) -> dict[str, Any]:
    """Candidate minus baseline, paired by test image, the images being the replicates.

    ``baseline`` / ``candidate``: ``{image name: PSNR}`` of the same trained network(s) evaluated two
    ways (for several networks, their per-image means). The interval is Student's t over the per-image
    differences (``n - 1`` degrees of freedom); it says how the result would vary over test images
    drawn from the same world, for these trained weights (no training-seed noise enters). Returns the
    keys of :func:`paired_seed_verdict` with ``per_image`` in place of ``per_seed``."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    _check_finite({0: baseline}, "baseline")
    _check_finite({0: candidate}, "candidate")
    images = sorted(set(baseline) & set(candidate))
    if not images:
        raise ValueError("no test image scored by both")
    differences = np.array([float(candidate[name]) - float(baseline[name]) for name in images])
    mean = float(differences.mean())
    interval: list[float] | None = None
    sd = float(differences.std(ddof=1)) if len(images) >= 2 else None
    if sd is not None:
        quantile = float(stats.t.ppf(0.5 + confidence / 2, df=len(images) - 1))
        half = quantile * sd / math.sqrt(len(images))
        interval = [mean - half, mean + half]
    rng = np.random.default_rng(seed)
    draws = differences[rng.integers(len(images), size=(bootstrap_samples, len(images)))].mean(axis=1)
    tail = (1 - confidence) / 2
    verdict = verdict_of(interval)
    reason = _verdict_reason(verdict, confidence, interval is None, "one test image: no interval and no claim")
    return {
        "images": len(images),
        "per_image": {name: float(value) for name, value in zip(images, differences)},
        "mean": mean,
        "interval": interval,
        "bootstrap_interval": [float(np.quantile(draws, tail)), float(np.quantile(draws, 1 - tail))],
        "confidence": confidence,
        "method": (f"the paired per-image PSNR difference of the same trained weights; Student-t {confidence:.0%} "
                   f"interval over the {len(images)} test images ({len(images) - 1} degrees of freedom); bootstrap "
                   "over images beside it"),
        "verdict": verdict,
        "reason": reason,
        "design": design,
        "replicates": len(images),
        "sd": sd,
        "mdd": minimal_detectable_difference(sd, len(images), confidence),
    }


def power_sentence(result: Mapping[str, Any], ceiling: Mapping[str, Any] | None = None) -> str:
    """One Markdown sentence on a verdict's power: its MDD (formula named) and, when a ``ceiling``
    (ground-truth masks minus SAM prior, a verdict dict) is known, the ceiling with its interval and
    the ratio ceiling / MDD (a design resolves what it looks for only when the ratio is >= 3)."""
    what = "seeds" if result.get("design") == "retrain" else "test images"
    mdd = result.get("mdd")
    sd = result.get("sd")
    parts = [f"Power: {result.get('replicates')} {what} as replicates, sd of the paired difference "
             f"{'—' if sd is None else f'{sd:.3f}'} dB, minimal detectable difference (MDD) "
             f"{'— (fewer than 2 replicates)' if mdd is None else f'{mdd:.3f} dB'}"]
    if ceiling is not None:
        interval = ceiling.get("interval")
        interval_text = "no interval" if interval is None else f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"
        over = ("over seeds" if "seeds" in ceiling else
                "over test images" + ("" if ceiling.get("design") == "swap" else ", one seed: no seed noise in it"))
        parts.append(f"ceiling (ground-truth masks minus SAM prior, {ceiling.get('design')} design) "
                     f"{ceiling['mean']:+.3f} dB {interval_text} ({over})")
        if mdd:
            ratio = ceiling["mean"] / mdd
            parts.append(f"ceiling / MDD = {ratio:.2f} ({'>= 3: powered' if ratio >= 3 else 'below 3: underpowered'})")
    return "; ".join(parts) + f". {MDD_FORMULA}."


def verdict_sentence(result: Mapping[str, Any], what: str = "RobustSAM prior minus SAM prior") -> str:
    """One Markdown sentence stating the verdict with its numbers (either design)."""
    interval = result["interval"]
    bootstrap = result["bootstrap_interval"]
    if "per_seed" not in result:  # paired_image_verdict: the images are the replicates
        interval_text = ("no interval (one image)" if interval is None else
                         f"{result['confidence']:.0%} interval over images [{interval[0]:+.3f}, {interval[1]:+.3f}] dB")
        return (f"{what}: {result['mean']:+.3f} dB PSNR on average over {result['images']} paired test images "
                f"(same trained weights), {interval_text}; bootstrap [{bootstrap[0]:+.3f}, {bootstrap[1]:+.3f}] dB. "
                f"Verdict: **{result['verdict']}** ({result['reason']}).")
    per_seed = ", ".join(f"seed {seed}: {value:+.3f}" for seed, value in result["per_seed"].items())
    interval_text = ("no interval (one seed)" if interval is None else
                     f"{result['confidence']:.0%} interval [{interval[0]:+.3f}, {interval[1]:+.3f}] dB")
    return (f"{what}: {result['mean']:+.3f} dB PSNR on average over {len(result['seeds'])} training seed(s) "
            f"({per_seed}; {result['images']} paired test images per seed), {interval_text}; bootstrap "
            f"[{bootstrap[0]:+.3f}, {bootstrap[1]:+.3f}] dB. Verdict: **{result['verdict']}** ({result['reason']}).")
