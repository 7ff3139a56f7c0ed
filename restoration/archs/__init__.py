"""Restoration networks with segmentation structure priors, all behind one call contract.

Every network is ``network(lq, prior=None) -> restored``: ``lq`` B x 3 x H x W in [0, 1], ``prior``
a :data:`PriorBatch` (a plain dict, made by :class:`restoration.datasets.PriorPairedDataset` and
batched by the default collate) or None for networks without a prior. Each network says what it
reads in its ``prior`` attribute (``"none"``, ``"structure"``, ``"grayscale"``, ``"features"``) and
ignores the entries it does not need.

:data:`NETWORKS` maps the ``network_g.type`` names of an options file to the classes;
:func:`build_network` builds one from a ``network_g`` section (unknown arguments are a
:class:`~robustprior.training.ConfigError` naming the closest valid one). Released NAFNet and
SAM-Deblur weights: :func:`released_network`, :func:`load_released_weights`
(:mod:`restoration.archs.released`).
"""
from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from restoration.archs.dehaze import SAMGuidedDehazeNet
from restoration.archs.nafnet import MaskAveragePooling, NAFNet, SAMDeblurNet
from restoration.archs.prior_batch import PriorBatch, prior_to, required_entry
from restoration.archs.released import ReleasedWeightsError, load_released_weights, released_network
from robustprior.training.errors import ConfigError

NETWORKS: dict[str, type[nn.Module]] = {"NAFNet": NAFNet, "SAMDeblurNet": SAMDeblurNet,
                                        "SAMGuidedDehazeNet": SAMGuidedDehazeNet}


def network_arguments(network_type: str) -> list[str]:
    """The constructor arguments of a network type."""
    return [name for name in inspect.signature(NETWORKS[network_type]).parameters]


def check_network_options(options: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the problem (and the closest valid name) for a bad ``network_g`` section."""
    network_type = options.get("type")
    if network_type not in NETWORKS:
        close = difflib.get_close_matches(str(network_type), list(NETWORKS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"type must be one of {', '.join(NETWORKS)}, got {network_type!r}{hint}")
    valid = network_arguments(network_type)
    for key in options:
        if key != "type" and key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean 'network_g.{close[0]}'?)" if close else f" (valid: {', '.join(valid)})"
            raise ValueError(f"unknown key 'network_g.{key}' for {network_type}{hint}")


def build_network(options: Mapping[str, Any]) -> nn.Module:
    """``NETWORKS[type](**rest)`` of a ``network_g`` section; a bad argument value is a ConfigError."""
    try:
        check_network_options(options)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    arguments = {key: value for key, value in options.items() if key != "type"}
    try:
        return NETWORKS[options["type"]](**arguments)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"network_g ({options['type']}): {error}") from None


__all__ = ["NETWORKS", "PriorBatch", "NAFNet", "MaskAveragePooling", "ReleasedWeightsError", "SAMDeblurNet",
           "SAMGuidedDehazeNet", "build_network", "check_network_options", "load_released_weights", "network_arguments",
           "prior_to", "released_network", "required_entry"]
