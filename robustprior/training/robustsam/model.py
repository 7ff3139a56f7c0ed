"""The model RobustSAM training starts from."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...load import load_model
from ...modeling.robust_sam import RobustSAM
from ..config import validate_config
from .config import MODEL_SCHEMA


def load_base_model(model_config: Mapping[str, Any]) -> RobustSAM:
    """The model to train: a RobustSAM built from ``model.type`` with ``model.checkpoint`` (SAM /
    MobileSAM / official / ours) loaded; SAM frozen. ``model_config`` is a config's ``model``
    section (checked against :data:`~.config.MODEL_SCHEMA`, defaults filled in).

    ``model.robust_init``: ``"default"`` keeps the robust parts as built or loaded (ROT copied from
    SAM's tokens, the rest random); ``"sam"`` starts the whole robust path as SAM's decoder
    (:meth:`RobustSAM.start_robust_path_from_sam`)."""
    model_config = validate_config(model_config, MODEL_SCHEMA, source="model")
    checkpoint = model_config["checkpoint"]
    model, _ = load_model(checkpoint, model_config["type"], decoder_path=None, allow_untrained_robust=True,
                          random_init=checkpoint is None, fourier_mode=model_config["fourier_mode"],
                          token_mode=model_config["token_mode"])
    if model_config["robust_init"] == "sam":
        model.start_robust_path_from_sam()
    return model.freeze_sam()
