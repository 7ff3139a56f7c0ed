"""The model the tiny-SAM recipe trains: a fresh RobustSAM whose SAM parts train from scratch."""
from __future__ import annotations

import torch
from segment_anything.modeling.transformer import Attention

from ...load import build_robust_sam
from ...modeling.robust_sam import RobustSAM


def parameter_groups(model: RobustSAM, weight_decay: float) -> list[dict]:
    """SAM parameters, without weight decay for biases, norms and position embeddings."""
    decayed, plain = [], []
    for name, parameter in model.named_parameters():
        if name.startswith("robust.") or not parameter.requires_grad:
            continue
        no_decay = parameter.ndim <= 1 or "pos_embed" in name or "rel_pos" in name or "point_embeddings" in name
        (plain if no_decay else decayed).append(parameter)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def align_decoder_attention(model: RobustSAM) -> None:
    """Initialise every key projection of SAM's two-way transformer as a copy of its query projection.

    With ``W_k = W_q`` the attention score between a prompt token and an image position contains
    ``PE(point)^T W^T W PE(position)``, a bump at the prompt's location, so the decoder starts with a
    locality prior. From the default independent initialisation that bilinear form must first be
    learned, and the from-scratch model sat in the all-background minimum (dice flat) for hundreds of
    iterations."""
    with torch.no_grad():
        for module in model.mask_decoder.transformer.modules():
            if isinstance(module, Attention):
                module.k_proj.weight.copy_(module.q_proj.weight)
                module.k_proj.bias.copy_(module.q_proj.bias)


def trainable_model(model_type: str, aligned_attention: bool = False, overrides: dict | None = None) -> RobustSAM:
    """A fresh model whose SAM parameters train (the robust parts stay frozen and untouched);
    ``aligned_attention`` applies :func:`align_decoder_attention`; ``overrides`` change single
    :class:`robustprior.modeling.build.ModelConfig` fields (architecture experiments)."""
    model = build_robust_sam(model_type, random_init=True, **(overrides or {}))
    for parameter in model.sam_parameters():
        parameter.requires_grad_(True)
    if aligned_attention:
        align_decoder_attention(model)
    return model

