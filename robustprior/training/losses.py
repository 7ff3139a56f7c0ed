"""RobustSAM's training losses (paper Sec. 3.2.4), the release's variant, and our distillation term.

total = w_mf * MaskFeatureConsistency + w_tok * TokenConsistency + w_dice * Dice + w_focal * Focal
        (+ w_distill * Distillation, our addition, off by default)

Consistency, ``consistency="paper"`` (Eq. 1 and the token term), targets from the ORIGINAL frozen
SAM on the CLEAR image, never through a trainable module, detached:

* Mask Feature Consistency ``||F^_CFD - F_CFC|| + ||F^_MFD - F_MFC||``: each AMFG output on the
  degraded image against the feature it refines, taken from the clear image: the complementary
  features (the early-block feature, and the final image embedding, which RobustSAM's figure also
  refines with an AMFG) and the mask feature (SAM decoder's upscaled embedding for the same prompt).
* Token Consistency ``||T^_RO - T_OC||``: the robust output tokens after AOTG (what the robust MLP
  reads) against SAM's clear output tokens after its two-way transformer (what SAM's MLPs read).

Every consistency term is a *relative* mean squared error ``mean((s - t)^2) / mean(t^2)``:
independent of the feature's size and magnitude (a ViT's early feature has a far larger scale than
the decoder's mask feature), so one weight means the same thing for every term and model size.

``consistency="release"`` keeps the official release's definitions (plain MSE): the robust fused
mask feature against the clear path's fused feature (computed with the same, trainable, fusion
convolutions, so that target moves with the student), and the robust tokens after the two-way
transformer (before AOTG) against SAM's clear tokens.

Segmentation: Dice + sigmoid Focal (gamma 2, alpha 0.25) against the ground truth, per prompt (the
same two functions serve the SAM-tiny recipe, :func:`focal_and_dice`). A
prompt marked ``multimask`` (a single ambiguous point) is scored by its best of SAM's three
multimask outputs (SAM's minimum-over-masks loss); the others by the single-mask output (token 0).

Distillation (our addition): the robust logits of every output token on the degraded image against
SAM's logits for the same prompt on the clear image, as binary cross-entropy with the teacher's
probabilities as soft targets; off unless ``distill`` has a weight.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

CONSISTENCY_MODES: tuple[str, ...] = ("paper", "release")
TERM_NAMES: tuple[str, ...] = ("mask_feature", "token", "dice", "focal", "distill")


@dataclass(frozen=True)
class LossWeights:
    mask_feature: float = 100.0
    token: float = 2.0
    dice: float = 1.0
    focal: float = 20.0
    distill: float = 0.0


def _per_prompt_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``P x ...`` values -> ``P`` means over each prompt's pixels (weighted by ``weights`` if given)."""
    if weights is None:
        return values.flatten(1).mean(1)
    return (values * weights).flatten(1).sum(1) / weights.flatten(1).sum(1).clamp_min(1.0)


def _focal_terms(probabilities: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, alpha: float | None,
                 gamma: float) -> torch.Tensor:
    """Per-pixel focal loss ``alpha_t (1 - p_t)^gamma CE`` (``alpha=None``: no class weighting)."""
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_true = probabilities * targets + (1 - probabilities) * (1 - targets)
    if alpha is None:
        return (1 - p_true) ** gamma * cross_entropy
    alpha_factor = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_factor * (1 - p_true) ** gamma * cross_entropy


def _dice_terms(probabilities: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None,
                smooth: float) -> torch.Tensor:
    """``1 - (2|p t| + s) / (|p| + |t| + s)`` per prompt."""
    if weights is not None:
        probabilities, targets = probabilities * weights, targets * weights
    intersection = (probabilities * targets).flatten(1).sum(1)
    total = probabilities.flatten(1).sum(1) + targets.flatten(1).sum(1)
    return 1 - (2 * intersection + smooth) / (total + smooth)


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
                       alpha: float | None = 0.25, gamma: float = 2.0, reduction: str = "mean") -> torch.Tensor:
    """Focal loss of ``P x H x W`` logits against {0, 1} (or soft) targets: each prompt's mean over
    its pixels (``weights``, same shape, masks out ignored pixels), then the mean over prompts
    (``reduction="none"``: the ``P`` per-prompt values). ``alpha=None``: no class weighting."""
    focal = _focal_terms(logits.sigmoid(), logits, targets, alpha, gamma)
    per_prompt = _per_prompt_mean(focal, weights)
    return per_prompt if reduction == "none" else per_prompt.mean()


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
              smooth: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """``1 - (2|p t| + s) / (|p| + |t| + s)`` per prompt for ``P x H x W`` inputs; mean over prompts
    (``reduction="none"``: the ``P`` values)."""
    per_prompt = _dice_terms(logits.sigmoid(), targets, weights, smooth)
    return per_prompt if reduction == "none" else per_prompt.mean()


def focal_and_dice(logits: torch.Tensor, targets: torch.Tensor, alpha: float | None = 0.25, gamma: float = 2.0,
                   smooth: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sigmoid_focal_loss` and :func:`dice_loss` of the same ``P x H x W`` logits, per prompt
    (two ``P`` tensors), from one sigmoid (both terms back-propagate through it together)."""
    probabilities = logits.sigmoid()
    focal = _per_prompt_mean(_focal_terms(probabilities, logits, targets, alpha, gamma), None)
    return focal, _dice_terms(probabilities, targets, None, smooth)


def relative_mse(student: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``mean((student - target)^2) / mean(target^2)``, the target detached: a scale-free distance."""
    target = target.detach()
    return F.mse_loss(student, target) / target.pow(2).mean().clamp_min(eps)


def segmentation_losses(
    logits: torch.Tensor,
    targets: torch.Tensor,
    multimask: torch.Tensor,
    weights: LossWeights,
    pixel_weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Dice and focal (means over prompts) of ``P x 4 x H x W`` logits (all four output tokens).

    ``multimask`` (``P`` bool): those prompts are scored by the output among tokens 1..3 with the
    lowest ``w_dice * dice + w_focal * focal`` (SAM's minimum over its three masks); the others by
    token 0. ``targets`` and ``pixel_weights`` are ``P x H x W``."""
    prompts, outputs = logits.shape[:2]
    expand = lambda t: None if t is None else t[:, None].expand(-1, outputs, -1, -1).flatten(0, 1)  # noqa: E731
    flat_logits = logits.flatten(0, 1)
    dice = dice_loss(flat_logits, expand(targets), expand(pixel_weights), reduction="none").view(prompts, outputs)
    focal = sigmoid_focal_loss(flat_logits, expand(targets), expand(pixel_weights), reduction="none").view(prompts, outputs)
    combined = weights.dice * dice + weights.focal * focal
    best = combined[:, 1:].argmin(dim=1) + 1 if outputs > 1 else torch.zeros(prompts, dtype=torch.long, device=logits.device)
    chosen = torch.where(multimask.to(logits.device), best, torch.zeros_like(best))
    rows = torch.arange(prompts, device=logits.device)
    return {"dice": dice[rows, chosen].mean(), "focal": focal[rows, chosen].mean()}


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of ``student_logits`` against ``sigmoid(teacher_logits)`` (same
    shape, teacher detached)."""
    return F.binary_cross_entropy_with_logits(student_logits, teacher_logits.detach().sigmoid())


def paper_consistency(
    refined: dict[str, torch.Tensor], clear: dict[str, torch.Tensor], robust_tokens: torch.Tensor,
    clear_tokens: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Eq. 1 and the token term (module docstring). ``refined`` and ``clear`` map each refined feature
    (``"complementary"``, ``"embedding"``, ``"mask_feature"``) to the degraded image's AMFG output
    and to the clear image's frozen-SAM feature of the same shape; tokens are ``P x T x D``.
    Returns ``mask_feature`` (sum of the feature terms) and ``token``, plus each feature's own
    ``mfc_<name>`` term for logging."""
    parts = {f"mfc_{name}": relative_mse(refined[name], clear[name]) for name in refined}
    return {"mask_feature": sum(parts.values()), "token": relative_mse(robust_tokens, clear_tokens), **parts}


def release_consistency(robust_feature: torch.Tensor, clear_feature: torch.Tensor, robust_tokens: torch.Tensor,
                        clear_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """The release's consistency terms (plain MSE, targets detached): fused robust mask feature vs
    the clear path's fused feature (``P x C x H x W``), robust tokens after the transformer vs SAM's
    clear tokens (``P x T x D``)."""
    return {"mask_feature": F.mse_loss(robust_feature, clear_feature.detach()),
            "token": F.mse_loss(robust_tokens, clear_tokens.detach())}


def weighted_total(terms: dict[str, torch.Tensor], weights: LossWeights) -> torch.Tensor:
    """``sum(weight * term)`` over :data:`TERM_NAMES` present in ``terms`` (zero weights skipped)."""
    parts = [getattr(weights, name) * terms[name] for name in TERM_NAMES if name in terms and getattr(weights, name)]
    return sum(parts) if parts else next(iter(terms.values())) * 0


def robust_sam_losses(
    mask_logits: torch.Tensor,
    targets: torch.Tensor,
    robust_feature: torch.Tensor,
    clear_feature: torch.Tensor,
    robust_tokens: torch.Tensor,
    clear_tokens: torch.Tensor,
    weights: LossWeights = LossWeights(),
    pixel_weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The release's objective on single-mask logits (``P x H x W``): all loss terms (unweighted) and
    ``total`` (weighted). Features ``P x C x H x W``, tokens ``P x T x D``."""
    terms = {
        **release_consistency(robust_feature, clear_feature, robust_tokens, clear_tokens),
        "dice": dice_loss(mask_logits, targets, pixel_weights),
        "focal": sigmoid_focal_loss(mask_logits, targets, pixel_weights),
    }
    terms["total"] = weighted_total(terms, weights)
    return terms
