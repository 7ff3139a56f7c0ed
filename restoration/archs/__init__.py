"""Restoration networks with segmentation structure priors, all behind one call contract.

Every network is ``network(lq, prior=None) -> restored``: ``lq`` B x 3 x H x W in [0, 1], ``prior``
a :data:`PriorBatch` (a plain dict, made by :class:`restoration.datasets.PriorPairedDataset` and
batched by the default collate) or None for networks without a prior. Each network says what it
reads in its ``prior`` attribute (``"none"``, ``"structure"``, ``"grayscale"``, ``"features"``) and
ignores the entries it does not need.

:data:`NETWORKS` maps the ``network_g.type`` names of an options file to the classes;
:func:`build_network` builds one from a ``network_g`` section (unknown arguments are a
:class:`~robustprior.training.ConfigError` naming the closest valid one).
"""
from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any, TypedDict

import torch
from torch import nn

from robustprior.training.errors import ConfigError


class PriorBatch(TypedDict, total=False):
    """What a network's ``prior`` argument holds (every entry batched over B).

    ``label_map``: B x H x W int64 regions of the lq image (0 = uncovered), at the image's size;
    ``features``: B x C x h x w float latent map of the prior covering the image (any h, w);
    ``grey_scale``: B int64, the grey-level scale of the grayscale coding (the same for a whole run).
    """

    label_map: torch.Tensor
    features: torch.Tensor
    grey_scale: torch.Tensor


def prior_to(prior: Mapping[str, torch.Tensor] | None, device: torch.device | str) -> PriorBatch | None:
    """``prior`` with every tensor moved to ``device`` (None stays None)."""
    if prior is None:
        return None
    return {name: value.to(device, non_blocking=True) for name, value in prior.items()}  # type: ignore[return-value]


def required_entry(prior: Mapping[str, torch.Tensor] | None, name: str, network: str, kind: str) -> torch.Tensor:
    """``prior[name]``, or a ``ValueError`` saying which network and prior kind need it."""
    if prior is None or name not in prior or prior[name] is None:
        raise ValueError(f"{network}(prior={kind!r}) needs prior['{name}'] (see restoration.archs.PriorBatch)")
    return prior[name]


# Imported after the helpers: the submodules use them.
from restoration.archs.nafnet import NAFNet, MaskAveragePooling, SAMDeblurNet  # noqa: E402
from restoration.archs.dehaze import SAMGuidedDehazeNet  # noqa: E402

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


__all__ = ["NETWORKS", "PriorBatch", "NAFNet", "MaskAveragePooling", "SAMDeblurNet", "SAMGuidedDehazeNet",
           "build_network", "check_network_options", "network_arguments", "prior_to", "required_entry"]
