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
import torch
from tqdm.auto import tqdm

from restoration.datasets import image_covering_features
from restoration.metrics import psnr, tensor_to_uint8
from restoration.paired_data import read_pair, read_rgb_float
from restoration.train import PRIOR_CACHE_NAME, RESULTS_NAME, load_trained_run, restore_image


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
    options = run.options["val"]
    with_prior, zeroed = [], []
    for record in tqdm(records, desc=f"prior reliance {run_dir.name}", disable=not progress):
        gt = read_pair(record["lq_path"], record["gt_path"])[1]
        image = torch.from_numpy(np.ascontiguousarray(read_rgb_float(record["lq_path"]).transpose(2, 0, 1)))[None]
        stored = priors.load(record["lq_path"])
        labels = priors.label_map(stored)
        label_map = torch.from_numpy(labels)[None]
        features = None
        if priors.feature is not None:
            features = image_covering_features(getattr(stored, priors.feature).float(), labels.shape)[None]
        for target, (labels_in, features_in) in ((with_prior, (label_map, features)),
                                                 (zeroed, (torch.zeros_like(label_map),
                                                           None if features is None else torch.zeros_like(features)))):
            restored = restore_image(run.network, image, labels_in, features_in, grey_scale=run.grey_scale,
                                     tile=options["tile"], overlap=options["overlap"], device=run.device)
            target.append(psnr(tensor_to_uint8(restored), gt))
    score, score_zeroed = float(np.mean(with_prior)), float(np.mean(zeroed))
    return {"images": len(records), "psnr": score, "psnr_zeroed": score_zeroed, "cost_db": score - score_zeroed}
