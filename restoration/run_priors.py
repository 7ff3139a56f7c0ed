"""A training run's priors, settled before its network is built: computed once for its data sets, the
run-wide grey-level scale of the grayscale coding, and a 'features' network's input channels.

Called by :class:`restoration.train.RestorationTrainer` when it opens a run; a finished run keeps the
results (its prior fingerprint, grey-level scale and network options are in its checkpoint,
:mod:`restoration.trained_run`).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from restoration.config import dataset_options, network_prior
from restoration.datasets import PriorIndex, PriorPairedDataset, prepare_priors
from restoration.trained_run import PRIOR_CACHE_NAME
from robustprior.training.errors import ConfigError

__all__ = ["GREY_CODED", "grey_level_scale", "network_with_prior_channels", "prepare_run_priors"]

GREY_CODED = {"SAMGuidedDehazeNet": ("grayscale", "features")}  # networks (and priors) that read prior["grey_scale"]


def prepare_run_priors(options: Mapping[str, Any], run_dir: str | Path, device: torch.device,
                       progress: bool = True) -> PriorIndex | None:
    """The lq priors of the train and test sets of validated ``options``, computed once (rank-sharded)
    through the prior's cache (``prior.cache_dir``, else ``run_dir / prior_cache``); None without a prior."""
    prior_options = options["prior"]
    if prior_options["kind"] == "none":
        return None
    lq_paths = [lq for phase in ("train", "val") if options["datasets"][phase]
                for lq, _ in PriorPairedDataset(dataset_options(options, phase)).pairs]
    cache_dir = prior_options["cache_dir"] or Path(run_dir) / PRIOR_CACHE_NAME
    return prepare_priors(prior_options, lq_paths, cache_dir, device, progress=progress)


def network_with_prior_channels(network_options: Mapping[str, Any], priors: PriorIndex | None) -> dict[str, Any]:
    """``network_g`` with a 'features' network's ``prior_channels`` taken from the prior's latent map
    (a different number given in the options is a :class:`ConfigError`); a new dict."""
    options = dict(network_options)
    if network_prior(options) != "features" or priors is None:
        return options
    channels = priors.feature_channels()
    given = options.get("prior_channels")
    if given is not None and given != channels:
        raise ConfigError(f"network_g.prior_channels is {given}, but the prior's {priors.feature} has "
                          f"{channels} channels; leave prior_channels out to take it from the prior")
    options["prior_channels"] = channels
    return options


def grey_level_scale(options: Mapping[str, Any], priors: PriorIndex | None, progress: bool = True) -> int | None:
    """The run-wide grey-level scale of the grayscale coding (None for networks without it).

    One scale for all images, crops, tiles and batches keeps a region's grey level fixed; a
    number in ``prior.num_segments`` is also the same for every prior row; ``auto`` takes the
    most regions of any train or test image of this run."""
    network_options = options["network_g"]
    if network_prior(network_options) not in GREY_CODED.get(network_options["type"], ()):
        return None
    configured = options["prior"]["num_segments"]
    assert priors is not None
    most = priors.max_segments(progress=progress)
    if configured == "auto":
        return max(1, most)
    if most > configured:
        raise ConfigError(f"prior.num_segments is {configured}, but an image of this run has {most} regions: "
                          f"raise prior.num_segments to at least {most} (the same for every prior row)")
    return int(configured)
