"""Does a trained network read its prior? Evaluate it on its test set with the prior, and with the
prior zeroed (label map all 0: one region covering the image; latent features all 0).

A network that ignores its prior scores the same both ways; ``cost_db`` (PSNR with the prior minus
PSNR with it zeroed) measures how much the trained network relies on the structure it is given.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from restoration.metrics import psnr
from restoration.paired_data import read_pair
from restoration.trained_run import PRIOR_CACHE_NAME, RESULTS_NAME, load_trained_run


def prior_reliance(run_dir: str | Path, device: str = "cpu", progress: bool = False) -> dict[str, Any]:
    """``images``, ``psnr`` (with the prior), ``psnr_zeroed`` and ``cost_db`` of a finished run (one with a
    ``results.json``) on the test images that run was evaluated on."""
    run_dir = Path(run_dir)
    results_file = run_dir / RESULTS_NAME
    if not results_file.is_file():
        raise FileNotFoundError(f"{run_dir} has no {RESULTS_NAME}: train and evaluate the run first")
    run = load_trained_run(run_dir, device)
    if run.options["prior"]["kind"] == "none":
        raise ValueError(f"{run_dir} was trained without a prior: there is nothing to zero")
    records = json.loads(results_file.read_text())["metrics"]["per_image"]
    priors = run.prepare_priors([record["lq_path"] for record in records],
                                run.options["prior"]["cache_dir"] or run_dir / PRIOR_CACHE_NAME, progress=False)
    with_prior, zeroed = [], []
    for record in tqdm(records, desc=f"prior reliance {run_dir.name}", disable=not progress):
        gt = read_pair(record["lq_path"], record["gt_path"])[1]
        with_prior.append(psnr(run.restore_file(record["lq_path"], priors), gt))
        zeroed.append(psnr(run.restore_file(record["lq_path"], priors, zero_prior=True), gt))
    score, score_zeroed = float(np.mean(with_prior)), float(np.mean(zeroed))
    return {"images": len(records), "psnr": score, "psnr_zeroed": score_zeroed, "cost_db": score - score_zeroed}
