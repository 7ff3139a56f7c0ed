"""How a prior's overlapping masks become regions, and how training drops regions (mask dropout).

A SAM automatic mask generator returns ``K`` binary masks that may overlap. A restoration network
reads them as a **label map** (H x W int64; every distinct label one region, 0 = the pixels no mask
covers). Three grouping rules turn the masks into a label map (``prior.grouping``):

==================  =================================================================================
rule                region of a pixel
==================  =================================================================================
``smallest``        the smallest mask covering it (:func:`robustprior.data.structure.masks_to_label_map`);
                    this project's earlier behaviour
``summed_grey``     SAM-Deblur's: mask ``k`` (0-based, in the prior's order: largest first) adds the
                    grey code ``2 (k + 1)`` for ``k < 127`` and ``2 (255 - k) - 1`` otherwise; the sums
                    are clipped to 0..255 as in an 8-bit mask image, and each distinct value is one
                    region (0: uncovered). Different mask sets may share a sum (e.g. masks 0 + 1 and
                    mask 2 both give 6): those pixels form one region, as in SAM-Deblur
``bit_codes``       the exact version of the same idea: mask ``k`` of ``K`` adds the bit code
                    ``2 ** (K - 1 - k)``, so each distinct *set* of covering masks is one region
                    and no two mask sets ever merge
==================  =================================================================================

Labels of ``summed_grey`` / ``bit_codes`` are numbered 1..G in increasing order of the code.

Mask dropout (training only; ``network_g.mask_dropout`` = ``p``, ``network_g.mask_dropout_mode``):

* ``independent``: each labelled region of a sample is dropped with probability ``p`` (Bernoulli per
  region); its pixels join the uncovered pixels (label 0). This project's earlier behaviour.
* ``exact`` (SAM-Deblur): of the ``M`` groups present in the sample, *including the uncovered one*,
  exactly ``int(p * M)`` are chosen uniformly without replacement and dropped; all dropped pixels form
  one new region of their own (pooled together, apart from any kept uncovered pixels).
"""
from __future__ import annotations

import numpy as np
import torch

from robustprior.data.structure import drop_masks, masks_to_label_map

GROUPINGS: tuple[str, ...] = ("smallest", "summed_grey", "bit_codes")
DROPOUT_MODES: tuple[str, ...] = ("independent", "exact")


def summed_grey_codes(num_masks: int) -> np.ndarray:
    """SAM-Deblur's grey code of each of ``num_masks`` masks (module docstring): int64 ``(num_masks,)``."""
    index = np.arange(num_masks, dtype=np.int64)
    return np.where(index < 127, 2 * (index + 1), 2 * (255 - index) - 1)


def _relabel(codes: np.ndarray) -> np.ndarray:
    """Distinct codes of an H x W (or N x ... row-coded) array -> labels: 0 for code 0, else 1..G by code order."""
    values, inverse = np.unique(codes, return_inverse=True)
    labels = inverse.reshape(codes.shape)
    return labels if values[0] == 0 else labels + 1


def group_masks(masks: np.ndarray, rule: str = "smallest") -> np.ndarray:
    """The H x W int64 label map of ``K x H x W`` binary masks under a grouping ``rule`` (module docstring).

    ``K = 0`` gives all zeros (one uncovered region)."""
    if rule not in GROUPINGS:
        raise ValueError(f"grouping must be one of {', '.join(GROUPINGS)}, got {rule!r}")
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape K x H x W, got {masks.shape}")
    binary = masks != 0
    num_masks, height, width = binary.shape
    if rule == "smallest":
        return masks_to_label_map(binary)
    if num_masks == 0:
        return np.zeros((height, width), np.int64)
    if rule == "summed_grey":
        summed = np.tensordot(summed_grey_codes(num_masks), binary.astype(np.int64), axes=(0, 0))
        return _relabel(np.clip(summed, 0, 255)).astype(np.int64)
    # bit_codes: the covering set of each pixel as packed bits; equal rows = one region.
    packed = np.packbits(binary.reshape(num_masks, height * width).T, axis=1)  # (H*W) x ceil(K/8) uint8
    values, inverse = np.unique(packed, axis=0, return_inverse=True)
    labels = inverse.reshape(height, width).astype(np.int64)
    uncovered_first = not values[0].any()  # the all-zero row sorts first when present
    return labels if uncovered_first else labels + 1


def drop_mask_groups(label_map: torch.Tensor, p: float, mode: str = "independent",
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Mask dropout of a B x H x W integer label map (module docstring); returns a new B x H x W long tensor.

    ``generator``: a seeded generator for reproducible draws (the global torch RNG when None)."""
    if mode not in DROPOUT_MODES:
        raise ValueError(f"mask dropout mode must be one of {', '.join(DROPOUT_MODES)}, got {mode!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop probability must lie in [0, 1], got {p}")
    if mode == "independent":
        return drop_masks(label_map, p, generator)
    if label_map.ndim != 3:
        raise ValueError(f"label_map must have shape B x H x W, got {tuple(label_map.shape)}")
    labels = label_map.long()
    dropped_maps = []
    draw_device = generator.device if generator is not None else torch.device("cpu")
    for sample in labels:
        present = torch.unique(sample)
        count = int(p * len(present))
        if count == 0:
            dropped_maps.append(sample.clone())
            continue
        chosen = present[torch.randperm(len(present), generator=generator, device=draw_device)[:count].to(sample.device)]
        pool = int(present.max()) + 1  # a label no group has: the dropped pixels' own region
        dropped_maps.append(torch.where(torch.isin(sample, chosen), torch.full_like(sample, pool), sample))
    return torch.stack(dropped_maps)
