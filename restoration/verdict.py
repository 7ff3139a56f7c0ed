"""Is one prior better than another? A paired analysis over training seeds and test images.

Each method is trained once per seed and evaluated on the same test images. For every seed ``s``
present in both, ``d_s`` is the mean over the images both scored of (candidate PSNR minus baseline
PSNR): pairing by seed removes what the seed does to both rows, pairing by image removes how hard
each image is. The seeds are the replicates: the 95 % interval is Student's t over the ``d_s``
(``n - 1`` degrees of freedom), so seed-to-seed noise widens it honestly; with one seed there is no
interval. A two-level bootstrap (seeds, then images within each seed, with replacement) is reported
beside it. The verdict is "held" only when the interval lies above 0, "reversed" when below,
otherwise "inconclusive".
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import stats

VERDICTS: tuple[str, ...] = ("held", "reversed", "inconclusive")


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
    if interval is None:
        reason = "one training seed: seed-to-seed noise cannot be measured, so no interval and no claim"
    elif verdict == "inconclusive":
        reason = f"the {confidence:.0%} interval contains 0"
    else:
        reason = f"the {confidence:.0%} interval lies {'above' if verdict == 'held' else 'below'} 0"
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
    }


def verdict_sentence(result: Mapping[str, Any], what: str = "RobustSAM prior minus SAM prior") -> str:
    """One Markdown sentence stating the verdict with its numbers."""
    per_seed = ", ".join(f"seed {seed}: {value:+.3f}" for seed, value in result["per_seed"].items())
    interval = result["interval"]
    interval_text = ("no interval (one seed)" if interval is None else
                     f"{result['confidence']:.0%} interval [{interval[0]:+.3f}, {interval[1]:+.3f}] dB")
    bootstrap = result["bootstrap_interval"]
    return (f"{what}: {result['mean']:+.3f} dB PSNR on average over {len(result['seeds'])} training seed(s) "
            f"({per_seed}; {result['images']} paired test images per seed), {interval_text}; bootstrap "
            f"[{bootstrap[0]:+.3f}, {bootstrap[1]:+.3f}] dB. Verdict: **{result['verdict']}** ({result['reason']}).")
