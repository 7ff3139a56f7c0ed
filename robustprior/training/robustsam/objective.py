"""The RobustSAM training objective for one batch: SAM on the clear image (teacher) and the robust
path on the degraded image (student), every loss term of :mod:`robustprior.training.losses`."""
from __future__ import annotations

import torch
from torch import nn

from ...modeling.robust_sam import ImageFeatures, RobustSAM
from ..losses import (CONSISTENCY_MODES, LossWeights, distillation_loss, paper_consistency, relative_mse,
                      release_consistency, segmentation_losses, weighted_total)
from .samples import PromptBatch


class RobustTrainingStep(nn.Module):
    """One forward of the training objective; wrapped in DDP so gradients are averaged.

    Every prompt group (one prompt kind each, :meth:`SamplePreparer.prompt_groups`) is decoded on the
    clear image by SAM (teacher, no gradient) and on the degraded image by the robust path, all four
    output tokens; the loss terms are computed once over all prompts (:mod:`robustprior.training.losses`)."""

    def __init__(self, model: RobustSAM, weights: LossWeights, consistency: str = "paper") -> None:
        super().__init__()
        if consistency not in CONSISTENCY_MODES:
            raise ValueError(f"train.consistency must be one of {CONSISTENCY_MODES}, got {consistency!r}")
        self.model = model
        self.weights = weights
        self.consistency = consistency

    def image_stage(self, clear: ImageFeatures, degraded: ImageFeatures) -> dict[str, torch.Tensor]:
        """The cheap first stage: the per-image AMFGs of the degraded image's ``B x D x h x w`` embedding
        and ``B x C x h x w`` early feature towards the clear image's frozen-SAM features (the two
        per-image terms of Eq. 1, relative MSE), with no prompt and no decoder pass."""
        embedding, complementary = self.model.robust.fusion.refine_image_features(degraded.embedding,
                                                                                 degraded.complementary)
        parts = {"mfc_embedding": relative_mse(embedding.float(), clear.embedding.float()),
                 "mfc_complementary": relative_mse(complementary.float(), clear.complementary.float())}
        terms = {"mask_feature": sum(parts.values()), **parts}
        terms["total"] = weighted_total(terms, self.weights)
        return terms

    def forward(self, clear: ImageFeatures, degraded: ImageFeatures, groups: list[PromptBatch],
                image_stage: bool = False) -> dict[str, torch.Tensor]:
        """All loss terms of one batch (``image_stage``: only :meth:`image_stage`'s)."""
        if image_stage:
            if self.consistency != "paper":
                raise ValueError("train.image_stage_iterations needs train.consistency: paper (the per-image terms)")
            return self.image_stage(clear, degraded)
        model, paper = self.model, self.consistency == "paper"
        fusion = model.robust.fusion
        image_part, refined_images = None, {}
        if paper:  # the per-image AMFG outputs, once for all groups
            embedding, complementary = fusion.refine_image_features(degraded.embedding, degraded.complementary)
            image_part = fusion.upsample_image_features(embedding, complementary)
            refined_images = {"embedding": embedding, "complementary": complementary}
        parts: dict[str, list[torch.Tensor]] = {}
        for prompts in groups:
            points = (prompts.point_coords, prompts.point_labels) if prompts.point_coords is not None else None
            sparse, dense = model.encode_prompts(points=points, boxes=prompts.boxes)
            with torch.no_grad():
                teacher = model.decode(clear, sparse, dense, prompts.image_index, multimask_output=None, path="sam",
                                       fused=not paper)
            student = model.decode(degraded, sparse, dense, prompts.image_index, multimask_output=None, path="robust",
                                   image_part=image_part, keep_refined=paper)
            group = {
                "logits": student.mask_logits.float(), "teacher_logits": teacher.mask_logits.float(),
                "targets": prompts.targets, "pixel_weights": prompts.pixel_weights,
                "multimask": torch.full((len(prompts),), prompts.multimask, dtype=torch.bool),
                "clear_tokens": teacher.mask_tokens.float(),
            }
            if paper:
                group.update(robust_tokens=student.refined["robust_tokens"].float(),
                             refined_mask_feature=student.refined["mask_feature"].float(),
                             clear_mask_feature=teacher.mask_feature.float())
            else:
                group.update(robust_tokens=student.mask_tokens.float(), robust_feature=student.mask_feature.float(),
                             clear_feature=teacher.fused_feature.float())
            for name, value in group.items():
                parts.setdefault(name, []).append(value)
        batch = {name: torch.cat(values) for name, values in parts.items()}
        if paper:
            terms = paper_consistency(
                {"mask_feature": batch["refined_mask_feature"],
                 **{name: value.float() for name, value in refined_images.items()}},
                {"mask_feature": batch["clear_mask_feature"], "embedding": clear.embedding.float(),
                 "complementary": clear.complementary.float()},
                batch["robust_tokens"], batch["clear_tokens"])
        else:
            terms = release_consistency(batch["robust_feature"], batch["clear_feature"], batch["robust_tokens"],
                                        batch["clear_tokens"])
        terms.update(segmentation_losses(batch["logits"], batch["targets"], batch["multimask"], self.weights,
                                         batch["pixel_weights"]))
        if self.weights.distill:
            terms["distill"] = distillation_loss(batch["logits"], batch["teacher_logits"])
        terms["total"] = weighted_total(terms, self.weights)
        terms["logits"] = batch["logits"][:, 0].detach()
        return terms
