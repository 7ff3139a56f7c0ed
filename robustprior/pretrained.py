"""One entry point for getting a model: bundled, cached-by-name, or a file on disk."""
from __future__ import annotations

import sys
from pathlib import Path

from .build import build_robust_sam
from .checkpoint import ENCODER_WIDTH_TO_MODEL, detect_format, load_model, read_state_dict
from .hub import CHECKPOINTS, resolve_checkpoint
from .modeling.robust_sam import RobustSam

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
BUNDLED = {
    "tiny": WEIGHTS_DIR / "robustsam_tiny.safetensors",  # RobustSAM-tiny (its "sam" path is SAM-tiny)
    "sam_tiny": WEIGHTS_DIR / "sam_tiny.safetensors",  # SAM-tiny base, robust parts untrained
}


def _notice(message: str) -> None:
    print(f"[robustprior] {message}", file=sys.stderr)


def _model_type_of(state: dict) -> str:
    weight = state.get("image_encoder.patch_embed.proj.weight")
    if weight is not None and weight.shape[0] in ENCODER_WIDTH_TO_MODEL:
        return ENCODER_WIDTH_TO_MODEL[weight.shape[0]]
    if any(key.startswith("image_encoder.layers.") for key in state):
        return "vit_t"
    raise ValueError("cannot tell the model size from the checkpoint; pass model_type")


def load_robust_sam(checkpoint: str | Path | None = None, model_type: str | None = None,
                    fourier_mode: str = "paper", device: str = "cpu") -> RobustSam:
    """A ready-to-use :class:`RobustSam` in eval mode.

    ``checkpoint``: None (the bundled ``tiny`` model), ``"tiny"``, a known name from
    :data:`robustprior.hub.CHECKPOINTS` (downloaded once into the cache), or a file path (SAM,
    MobileSAM, official RobustSAM or robustprior safetensors). ``model_type`` is inferred from the
    checkpoint when not given.
    """
    if checkpoint is None or str(checkpoint) in BUNDLED:
        name = "tiny" if checkpoint is None else str(checkpoint)
        path = BUNDLED[name]
        if path.is_file():
            if checkpoint is None:
                _notice(f"no --checkpoint given: using the bundled {name} RobustSAM ({path.name})")
            return load_model(path).to(device).eval()
        if name == "tiny" and BUNDLED["sam_tiny"].is_file():
            _notice(f"no bundled RobustSAM-tiny yet ({path.name}): using the bundled SAM-tiny base, whose robust "
                    "parts are UNTRAINED (use the SAM path, e.g. --sam-baseline, for meaningful masks)")
            return load_model(BUNDLED["sam_tiny"]).to(device).eval()
        _notice(f"no bundled {name} weights at {path}: "
                "using a RANDOMLY INITIALISED tiny model (its masks are meaningless)")
        return build_robust_sam("tiny", fourier_mode=fourier_mode).to(device).eval()
    path = resolve_checkpoint(checkpoint)
    state, metadata = read_state_dict(path)
    if detect_format(state, metadata) == "robustprior" and "config" in metadata:
        return load_model(path).to(device).eval()
    if model_type is None:
        known = CHECKPOINTS.get(str(checkpoint))
        model_type = known.model_type if known else _model_type_of(state)
    return build_robust_sam(model_type, path, fourier_mode=fourier_mode).to(device).eval()
