"""What every restoration network's ``prior`` argument holds (:class:`PriorBatch`), and two helpers to move
and read it."""
from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict

import torch


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
