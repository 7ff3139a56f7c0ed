"""Where the cached prior of every lq image lives, and how a restoration network reads it (:class:`PriorIndex`).

Made by :func:`restoration.datasets.prepare_priors` (SAM / RobustSAM priors) and
:func:`restoration.control_priors.prepare_control_priors` (control rows); read by
:class:`restoration.datasets.PriorPairedDataset`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from restoration.mask_groups import group_masks
from robustprior.priors import StructurePrior


@dataclass
class PriorIndex:
    """Where the cached prior of every lq image lives, and how the restoration network reads it.

    ``files``: lq image path (as ``str(path)``) -> the prior's cache file. ``feature``: which latent
    map items carry (None: none). ``description``: model, checkpoint, fingerprint and settings, for
    checkpoints and reports. ``grouping``: how masks become regions (:mod:`restoration.mask_groups`).
    ``grey_scale``: the grey-level scale items carry (None: none; set by the trainer).
    """

    kind: str
    files: dict[str, Path]
    feature: str | None = None
    description: dict[str, Any] = field(default_factory=dict)
    grouping: str = "smallest"
    grey_scale: int | None = None

    def load(self, lq_path: str | Path) -> StructurePrior:
        """The stored prior of the lq image at ``lq_path``."""
        try:
            return StructurePrior.load(self.files[str(lq_path)])
        except KeyError:
            raise KeyError(f"no {self.kind} prior was prepared for {lq_path}") from None

    def label_map(self, prior: StructurePrior) -> np.ndarray:
        """The H x W int64 regions of a prior under this index's grouping rule."""
        if self.grouping == "smallest":
            return prior.label_map
        return group_masks(prior.masks, self.grouping)

    def feature_channels(self) -> int | None:
        """The channel count of the latent map items carry (None without one; read from one prior)."""
        if self.feature is None or not self.files:
            return None
        return int(getattr(StructurePrior.load(next(iter(self.files.values()))), self.feature).shape[0])

    def max_segments(self, progress: bool = False) -> int:
        """The largest region label of any indexed image (reads every prior file once)."""
        counts = (int(self.label_map(StructurePrior.load(path)).max(initial=0)) for path in self.files.values())
        return max(tqdm(counts, total=len(self.files), desc="scanning priors", disable=not progress), default=0)
