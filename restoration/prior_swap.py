"""The test-time prior swap: one trained network, evaluated with SAM's and with RobustSAM's masks.

The paper's design (Table 8) trains one restoration network per prior, so the RobustSAM-minus-SAM
difference carries the seed-to-seed noise of two trainings, which on small data is larger than any
prior's effect. The swap design trains a network once with a prior (the recipe row ``source``, e.g.
``gt_masks``: the generator's true instances, or ``sam``) and evaluates the *same weights* on the
degraded test inputs twice, once with the SAM prior and once with the RobustSAM prior, computed
exactly as those rows compute them (model, checkpoint, automatic-mask settings) but coded the way the
trained network reads masks (its grouping rule and grey-level scale). The per-image paired
difference has no training-seed noise; the test images are the replicates
(:func:`restoration.verdict.paired_image_verdict`). With several seeds of the source row, each
image's PSNR is first averaged over the networks.

It answers a narrower question than Table 8: given a network that has learnt to use masks, which
model's masks on the degraded inputs serve it better. A network trained with ground-truth masks
has seen clean masks only, so it measures how close each prior comes to the truth as this network
uses it; its ceiling (its own ground-truth masks minus SAM's, same weights) is reported beside it.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from restoration.datasets import PRIOR_CLASSES, prepare_priors
from restoration.metrics import psnr
from restoration.paired_data import read_pair
from restoration.trained_run import RESULTS_NAME, TrainedRun, load_trained_run
from restoration.verdict import paired_image_verdict

SWAP_KINDS: tuple[str, str] = ("sam", "robustsam")


def _swap_index(run: TrainedRun, options: Mapping[str, Any], lq_paths: Sequence[str], cache_dir: str | Path):
    """The priors of ``options`` (a sam / robustsam row's prior options) for ``lq_paths``, coded as ``run``
    codes masks (its grouping rule and grey-level scale); more regions than that scale is a ``ValueError``."""
    coded = {**options, "grouping": run.options["prior"]["grouping"], "features": None}
    index = prepare_priors(coded, lq_paths, cache_dir, progress=False)
    index.grey_scale = run.grey_scale
    if run.grey_scale is not None:
        worst = max((int(index.label_map(index.load(path)).max(initial=0)), path) for path in lq_paths)
        if worst[0] > run.grey_scale:
            raise ValueError(f"prior swap: the {options['kind']} prior of {worst[1]} has {worst[0]} regions, more than "
                             f"the {run.grey_scale} grey levels {run.folder} codes: give the recipe a fixed "
                             "prior.num_segments large enough for every prior row")
    return index


def per_image_psnr(run: TrainedRun, records: Sequence[Mapping[str, Any]], index) -> dict[str, float]:
    """``{image name: PSNR}`` of ``run`` restoring each test record's input with the priors of ``index``."""
    scores = {}
    for record in records:
        target = read_pair(record["lq_path"], record["gt_path"])[1]
        scores[record["name"]] = float(psnr(run.restore_file(record["lq_path"], index), target))
    return scores


def prior_swap(run_dirs: Sequence[str | Path], prior_options: Mapping[str, Mapping[str, Any]],
               cache_dir: str | Path, device: str = "cpu") -> dict[str, Any]:
    """The swap of the finished runs ``run_dirs`` (one row, one folder per seed; each with its
    ``results.json``) between the priors ``prior_options`` (``{"sam": ..., "robustsam": ...}``: the prior
    options of those recipe rows), on the test images each run was evaluated on.

    Returns ``source`` (the runs' prior kind), ``seeds`` (their ``manual_seed``), ``images``, ``psnr``
    (mean PSNR with the run's own prior, with SAM's and with RobustSAM's), ``verdict`` (RobustSAM minus
    SAM, :func:`~restoration.verdict.paired_image_verdict`, design ``swap``) and ``ceiling`` (own prior
    minus SAM's, same weights; only when the runs were trained with ground-truth masks, else None)."""
    if not run_dirs:
        raise ValueError("prior swap: no trained run given")
    if set(prior_options) != set(SWAP_KINDS):
        raise ValueError(f"prior swap needs the prior options of {list(SWAP_KINDS)}, got {sorted(prior_options)}")
    own_scores: list[dict[str, float]] = []
    swapped: dict[str, list[dict[str, float]]] = {kind: [] for kind in SWAP_KINDS}
    sources, seeds = set(), []
    for run_dir in map(Path, run_dirs):
        results_file = run_dir / RESULTS_NAME
        if not results_file.is_file():
            raise FileNotFoundError(f"{run_dir} has no {RESULTS_NAME}: train and evaluate the run first")
        run = load_trained_run(run_dir, device)
        kind = run.options["prior"]["kind"]
        if kind == "none":
            raise ValueError(f"{run_dir} was trained without a prior: there is no prior to swap")
        if run.options["prior"].get("features") or run.options["network_g"].get("prior") == "features":
            raise ValueError(f"{run_dir}'s network reads a latent feature map of one prior model: a swap needs a "
                             "network that reads masks only")
        sources.add(kind)
        seeds.append(int(run.options["manual_seed"]))
        records = json.loads(results_file.read_text())["metrics"]["per_image"]
        own_scores.append({record["name"]: float(record["psnr"]) for record in records})
        lq_paths = [record["lq_path"] for record in records]
        for swap_kind in SWAP_KINDS:
            if prior_options[swap_kind].get("kind") != swap_kind or swap_kind not in PRIOR_CLASSES:
                raise ValueError(f"prior swap: the {swap_kind} options name kind {prior_options[swap_kind].get('kind')!r}")
            index = _swap_index(run, prior_options[swap_kind], lq_paths, cache_dir)
            swapped[swap_kind].append(per_image_psnr(run, records, index))
    if len(sources) != 1:
        raise ValueError(f"prior swap: the runs were trained with different priors {sorted(sources)}")
    source = sources.pop()

    def mean_over_runs(scores: list[dict[str, float]]) -> dict[str, float]:
        names = sorted(set.intersection(*(set(score) for score in scores)))
        return {name: float(np.mean([score[name] for score in scores])) for name in names}

    own, sam, robust = mean_over_runs(own_scores), mean_over_runs(swapped["sam"]), mean_over_runs(swapped["robustsam"])
    verdict = paired_image_verdict(sam, robust, design="swap")
    ceiling = paired_image_verdict(sam, own, design="swap") if source == "gt_masks" else None
    return {
        "source": source,
        "seeds": seeds,
        "images": len(sam),
        "psnr": {"own": float(np.mean(list(own.values()))), "sam": float(np.mean(list(sam.values()))),
                 "robustsam": float(np.mean(list(robust.values())))},
        "verdict": verdict,
        "ceiling": ceiling,
    }
