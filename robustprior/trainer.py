"""Moved: the RobustSAM trainer is :mod:`robustprior.training.robustsam`, ``merge_config`` is
:func:`robustprior.training.merge_config`. These names stay here for one release."""
from __future__ import annotations

from .training.config import merge_config
from .training.robustsam import RobustSamTrainer, RobustTrainingStep, load_base_model, load_config

__all__ = ["RobustSamTrainer", "RobustTrainingStep", "load_base_model", "load_config", "merge_config"]
