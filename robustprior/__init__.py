"""robustprior: RobustSAM on segment-anything, and SAM/RobustSAM structure priors for restoration."""
from __future__ import annotations

__version__ = "0.4.0"

_LAZY_EXPORTS = {
    "RobustSAMPrior": ".priors",
    "SAMPrior": ".priors",
    "StructurePrior": ".priors",
    "build_robust_sam": ".load",
    "robust_sam_model_registry": ".load",
    "load_model": ".load",
    "ModelSource": ".load",
    "RobustSAM": ".modeling.robust_sam",
    "RobustSam": ".modeling.robust_sam",  # old spellings, kept for one release
    "RobustSamPredictor": ".predictor",
    "RobustAutomaticMaskGenerator": ".automatic_mask_generator",
    "RobustSAMPredictor": ".predictor",
    "RobustSAMAutomaticMaskGenerator": ".automatic_mask_generator",
    "load_robust_sam": ".load",
}
__all__ = sorted(_LAZY_EXPORTS)


def __getattr__(name: str):
    """Import the public API on first use (``from robustprior import RobustSAMPrior``): it pulls in
    torch and segment_anything, which a bare ``import robustprior`` does not."""
    if name in _LAZY_EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_LAZY_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
