"""``load_robust_sam``: the model-only form of :func:`robustprior.load.load_model` (kept for its users)."""
from __future__ import annotations

from pathlib import Path

from .load import BUNDLED, WEIGHTS_DIR, load_model
from .modeling.robust_sam import RobustSam

__all__ = ["BUNDLED", "WEIGHTS_DIR", "load_robust_sam"]


def load_robust_sam(checkpoint: str | Path | None = None, model_type: str | None = None,
                    fourier_mode: str | None = None, device: str = "cpu", *,
                    decoder_path: str | None = "robust", allow_untrained_robust: bool = False) -> RobustSam:
    """A ready-to-use :class:`RobustSam` in eval mode: ``load_model(...)[0]`` (see :func:`robustprior.load.load_model`).

    ``checkpoint``: None (the bundled model, said in one line), ``"tiny"`` / ``"sam_tiny"``, a known
    name from :data:`robustprior.hub.CHECKPOINTS` (downloaded once into the cache), or a file path.
    """
    return load_model(checkpoint, model_type, decoder_path=decoder_path, allow_untrained_robust=allow_untrained_robust,
                      fourier_mode=fourier_mode, device=device)[0]
