"""robustprior: RobustSAM on segment-anything, and SAM/RobustSAM structure priors for restoration."""
from __future__ import annotations

__version__ = "0.1.0"
