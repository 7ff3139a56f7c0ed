"""RobustSAM: frozen SAM plus the paper's robust modules.

The SAM parts are the installed ``segment_anything`` modules, unchanged and under their usual
state-dict names (``image_encoder``, ``prompt_encoder``, ``mask_decoder``), so any SAM or MobileSAM
checkpoint loads into them directly. Everything RobustSAM adds lives under ``robust``:

* ``robust.output_tokens``: the Robust Output Tokens (ROT), ``T x D`` (T = 4 mask tokens);
* ``robust.fusion``: three AMFG blocks and the HQ-SAM-style fusion (:class:`RobustFeatureFusion`);
* ``robust.token_generation``: AOTG (:class:`AntiDegradationOutputTokens`);
* ``robust.robust_mlp``: the 3-layer MLP turning a robust token into a mask classifier (D -> D -> D/8).

Two decoding paths share the frozen transformer: ``"robust"`` (RobustSAM, used at inference) and
``"sam"`` (the untouched SAM decoder: the plain-SAM baseline and the clear teacher in training).
Prompts are batched: P prompts, each pointing at one of B encoded images through ``image_index``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, PromptEncoder
from segment_anything.modeling.mask_decoder import MLP
from torch import nn

from .anti_degradation_output_tokens import AntiDegradationOutputTokens, TokenMode
from .early_features import EarlyFeatureHook
from .feature_fusion import RobustFeatureFusion
from .fourier_degradation_suppression import FourierMode
from .layer_norm import is_channels_last
from .two_way_transformer import per_prompt, run_two_way_transformer

DecoderPath = Literal["robust", "sam"]


@dataclass
class ImageFeatures:
    """Encoder outputs for B images."""

    embedding: torch.Tensor  # B x D x h x w, the final image embedding
    complementary: torch.Tensor  # B x C_enc x h x w, the early (first global block) feature

    def __len__(self) -> int:
        return self.embedding.shape[0]

    def to(self, *args, **kwargs) -> "ImageFeatures":
        return ImageFeatures(self.embedding.to(*args, **kwargs), self.complementary.to(*args, **kwargs))


@dataclass
class DecoderOutput:
    """Decoder outputs for P prompts and M returned masks (1, 3 or all 4 tokens)."""

    mask_logits: torch.Tensor  # P x M x 4h x 4w low-resolution logits
    iou_predictions: torch.Tensor  # P x M, from SAM's IoU head
    mask_tokens: torch.Tensor  # P x T x D output tokens after the two-way transformer (ROT or SAM's)
    mask_feature: torch.Tensor  # P x D/8 x 4h x 4w: robust path, the fused robust mask feature;
    #                             sam path, SAM's upscaled embedding that its classifiers read
    fused_feature: torch.Tensor | None = None  # sam path with fused=True: the teacher's fused feature
    refined: dict[str, torch.Tensor] | None = None  # robust path with keep_refined=True: the AMFG outputs
    #   "mask_feature" P x D/8 x 4h x 4w, "embedding" B x D x h x w and "complementary" B x C_enc x h x w
    #   (unless image_part was given),
    #   and "robust_tokens" P x T x D, the AOTG output (what the paper's consistency losses compare)


@dataclass
class TransformerOutput:
    """What the two-way transformer gives for P prompts on one decoder path, before any mask is drawn."""

    path: str  # "robust" or "sam"
    image_index: torch.Tensor  # P long: the image of each prompt
    iou_predictions: torch.Tensor  # P x T, SAM's IoU head on the IoU token (all four mask tokens)
    mask_tokens: torch.Tensor  # P x T x D output tokens after the transformer
    image_tokens: torch.Tensor  # P x hw x D image tokens after the transformer (RobustSAM.upscale -> mask feature)

    def select(self, keep: torch.Tensor) -> "TransformerOutput":
        """The prompts picked by ``keep`` (a ``P`` bool mask or indices), in order."""
        return TransformerOutput(self.path, self.image_index[keep], self.iou_predictions[keep], self.mask_tokens[keep],
                                 self.image_tokens[keep])


class RobustComponents(nn.Module):
    """The five trainable parts RobustSAM adds to SAM."""

    def __init__(
        self,
        transformer_dim: int,
        encoder_dim: int,
        num_mask_tokens: int = 4,
        reduction: int = 16,
        fourier_mode: FourierMode = "paper",
        token_mode: TokenMode = "paper",
        num_instance_norms: int = 2,
    ) -> None:
        super().__init__()
        self.output_tokens = nn.Embedding(num_mask_tokens, transformer_dim)
        self.fusion = RobustFeatureFusion(transformer_dim, encoder_dim, reduction, fourier_mode)
        self.token_generation = AntiDegradationOutputTokens(
            transformer_dim, num_mask_tokens, num_instance_norms, token_mode
        )
        self.robust_mlp = MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)


class RobustSAM(nn.Module):
    """SAM + RobustSAM. Images in: ``B x 3 x S x S`` from :meth:`preprocess`."""

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        robust: RobustComponents,
        early_feature_layer: nn.Module,
        image_size: int,
        config: dict | None = None,
        pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53),
        pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375),
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.robust = robust
        self.image_size = image_size
        self.config = dict(config or {})
        self._early_feature = EarlyFeatureHook(early_feature_layer)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    # ------------------------------------------------------------------ parameters
    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def sam_parameters(self) -> list[nn.Parameter]:
        """Parameters of the frozen SAM (encoder, prompt encoder, SAM decoder)."""
        return [p for name, p in self.named_parameters() if not name.startswith("robust.")]

    def freeze_sam(self) -> "RobustSAM":
        """Freeze every SAM parameter; only ``robust`` stays trainable (the paper's recipe)."""
        for parameter in self.sam_parameters():
            parameter.requires_grad_(False)
        return self

    @torch.no_grad()
    def start_robust_path_from_sam(self) -> "RobustSAM":
        """Initialise the robust parts so the robust path starts out as SAM's decoder.

        The Robust Output Tokens become copies of SAM's mask tokens (the paper's definition), the
        robust MLP a copy of SAM's first hypernetwork MLP (the single-mask classifier), AOTG an
        affine map with the transformer's final LayerNorm weights (so it returns a token in SAM's
        token scale), and the fusion the per-pixel normalised mask feature (see
        :meth:`RobustFeatureFusion.start_as_mask_feature`). Training then only has to learn what
        degradations change. Paper token mode only."""
        self.robust.output_tokens.weight.copy_(self.mask_decoder.mask_tokens.weight)
        self.robust.robust_mlp.load_state_dict(self.mask_decoder.output_hypernetworks_mlps[0].state_dict())
        final_norm = self.mask_decoder.transformer.norm_final_attn
        self.robust.token_generation.start_as_affine(final_norm.weight, final_norm.bias)
        self.robust.fusion.start_as_mask_feature()
        return self

    def train(self, mode: bool = True) -> "RobustSAM":
        """Like ``nn.Module.train``, but SAM stays in eval mode (it is frozen)."""
        super().train(mode)
        for part in (self.image_encoder, self.prompt_encoder, self.mask_decoder):
            part.eval()
        return self

    # ------------------------------------------------------------------ images
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``B x 3 x H x W`` RGB in [0, 255] (long side already resized to ``image_size``) ->
        normalised and zero-padded ``B x 3 x S x S``."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape B x 3 x H x W, got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if max(h, w) > self.image_size:
            raise ValueError(f"image side {max(h, w)} exceeds the model's input size {self.image_size}; resize first")
        images = (images - self.pixel_mean) / self.pixel_std
        return F.pad(images, (0, self.image_size - w, 0, self.image_size - h))

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        """Preprocessed ``B x 3 x S x S`` -> :class:`ImageFeatures` (embedding + early feature)."""
        embedding = self.image_encoder(images)
        return ImageFeatures(embedding=embedding, complementary=self._early_feature.pop())

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """Low-res ``P x M x 4h x 4w`` logits -> ``P x M x H x W`` at the original image size."""
        masks = F.interpolate(masks, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)

    # ------------------------------------------------------------------ prompts and decoding
    def encode_prompts(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's prompt encoder: points ``(P x N x 2, P x N)``, boxes ``P x 4``, masks
        ``P x 1 x 4h x 4w`` (model input frame) -> sparse ``P x K x D``, dense ``P x D x h x w``."""
        return self.prompt_encoder(points=points, boxes=boxes, masks=masks)

    def robust_image_part(self, features: ImageFeatures) -> torch.Tensor:
        """The per-image part of the robust mask feature, ``B x D/8 x 4h x 4w``: upsampled AMFG of
        the complementary feature plus upsampled AMFG of the final embedding."""
        return self.robust.fusion.image_features(features.embedding, features.complementary, robust=True)

    def _run_transformer(
        self,
        features: ImageFeatures,
        image_index: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        mask_tokens: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SAM's two-way transformer with the given ``T x D`` mask tokens
        (:func:`~robustprior.modeling.two_way_transformer.run_two_way_transformer`).

        Returns the IoU token ``P x D``, the mask tokens ``P x T x D`` and the image tokens
        ``P x hw x D`` (:meth:`upscale` turns them into the mask feature SAM's classifiers read)."""
        decoder = self.mask_decoder
        prompts = sparse.shape[0]
        output_tokens = torch.cat((decoder.iou_token.weight, mask_tokens), dim=0)
        tokens = torch.cat((output_tokens.unsqueeze(0).expand(prompts, -1, -1), sparse), dim=1)
        hidden, image_tokens = run_two_way_transformer(decoder.transformer, features.embedding, image_index, dense,
                                                       self.prompt_encoder.get_dense_pe(), tokens)
        return hidden[:, 0], hidden[:, 1 : 1 + decoder.num_mask_tokens], image_tokens

    def upscale(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """The decoder's output upscaling: image tokens ``P x hw x D`` -> ``P x D/8 x 4h x 4w``.

        At inference (eval mode, autograd off) the maps are stored channels-last, and every per-prompt layer
        after this keeps that layout: oneDNN's small-channel convolutions run faster in it on the CPU, and
        the results move by float rounding only. In train mode (including the no-grad teacher pass of a
        training step) or with autograd on, the standard layout is kept, whose results are bit-reproducible
        (see :class:`~robustprior.modeling.layer_norm.ChannelLayerNorm2d`)."""
        prompts, _, channels = image_tokens.shape
        h, w = self.prompt_encoder.image_embedding_size
        grid = image_tokens.reshape(prompts, h, w, channels).permute(0, 3, 1, 2)  # a channels-last view
        if self.training or torch.is_grad_enabled():
            grid = grid.contiguous()
        return self.mask_decoder.output_upscaling(grid)

    def run_transformer(
        self,
        features: ImageFeatures,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        image_index: torch.Tensor | None = None,
        path: DecoderPath = "robust",
    ) -> TransformerOutput:
        """The first, cheaper half of :meth:`decode`: SAM's two-way transformer with the path's output
        tokens (ROT or SAM's) and SAM's IoU predictions of all four tokens, before any mask is drawn
        (the automatic mask generator filters on these scores first)."""
        prompts = sparse.shape[0]
        if image_index is None:
            image_index = torch.zeros(prompts, dtype=torch.long, device=sparse.device)
        if image_index.shape != (prompts,):
            raise ValueError(f"image_index must have shape ({prompts},), got {tuple(image_index.shape)}")
        if path == "robust":
            output_tokens = self.robust.output_tokens.weight
        elif path == "sam":
            output_tokens = self.mask_decoder.mask_tokens.weight
        else:
            raise ValueError(f"unknown decoder path {path!r}; expected 'robust' or 'sam'")
        iou_token, mask_tokens, image_tokens = self._run_transformer(features, image_index, sparse, dense, output_tokens)
        return TransformerOutput(path, image_index, self.mask_decoder.iou_prediction_head(iou_token), mask_tokens,
                                 image_tokens)

    def draw_masks(
        self,
        features: ImageFeatures,
        transformer: TransformerOutput,
        fused: bool = False,
        image_part: torch.Tensor | None = None,
        keep_refined: bool = False,
    ) -> DecoderOutput:
        """The second half of :meth:`decode`: the mask logits of all four tokens (``P x 4 x 4h x 4w``)
        from :meth:`run_transformer`'s output, by the path's classifiers and mask feature. Every
        prompt is computed on its own, so drawing a subset (:meth:`TransformerOutput.select`) gives
        exactly those prompts' masks. Arguments as in :meth:`decode`."""
        path, image_index = transformer.path, transformer.image_index
        mask_tokens, upscaled = transformer.mask_tokens, self.upscale(transformer.image_tokens)
        fused_feature, refined = None, None
        if path == "robust" or fused:
            robust = path == "robust"
            fusion = self.robust.fusion
            if keep_refined and robust:
                refined = {}
                if image_part is None:
                    embedding, complementary = fusion.refine_image_features(features.embedding, features.complementary)
                    image_part = fusion.upsample_image_features(embedding, complementary)
                    refined.update(embedding=embedding, complementary=complementary)
                refined["mask_feature"] = fusion.mask_feature_amfg(upscaled)
                fused_feature = fusion.mask_feature_conv(refined["mask_feature"]) + per_prompt(image_part, image_index)
            else:
                if image_part is None or not robust:
                    image_part = fusion.image_features(features.embedding, features.complementary, robust)
                fused_feature = fusion.mask_features(upscaled, robust) + per_prompt(image_part, image_index)
        if path == "robust":
            robust_tokens = self.robust.token_generation(mask_tokens)  # P x T x D
            classifiers = self.robust.robust_mlp(robust_tokens)  # P x T x D/8
            mask_feature = fused_feature
            if refined is not None:
                refined["robust_tokens"] = robust_tokens
        else:
            classifiers = torch.stack(
                [mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.mask_decoder.output_hypernetworks_mlps)], dim=1
            )
            mask_feature = upscaled
        b, c, h, w = mask_feature.shape
        if is_channels_last(mask_feature):  # inference: P x hw x C is a view, only the T logits are copied
            pixels = mask_feature.permute(0, 2, 3, 1).reshape(b, h * w, c)
            mask_logits = (pixels @ classifiers.transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)
        else:
            mask_logits = (classifiers @ mask_feature.reshape(b, c, h * w)).view(b, -1, h, w)
        return DecoderOutput(
            mask_logits=mask_logits,
            iou_predictions=transformer.iou_predictions,
            mask_tokens=mask_tokens,
            mask_feature=mask_feature,
            fused_feature=fused_feature if path == "sam" else None,
            refined=refined,
        )

    def decode(
        self,
        features: ImageFeatures,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        image_index: torch.Tensor | None = None,
        multimask_output: bool | None = False,
        path: DecoderPath = "robust",
        fused: bool = False,
        image_part: torch.Tensor | None = None,
        keep_refined: bool = False,
    ) -> DecoderOutput:
        """Decode P prompts against B encoded images (:meth:`run_transformer`, then :meth:`draw_masks`).

        ``image_index`` (``P`` long) says which image each prompt belongs to; None means all
        prompts belong to image 0. ``multimask_output``: False -> token 0 (1 mask), True ->
        tokens 1..3 (3 masks), None -> all 4. ``fused`` (sam path) also returns the teacher's
        fused feature for the mask-feature consistency loss. ``image_part`` (robust path): the
        per-image part of the fusion (:meth:`robust_image_part`) when already computed, so
        repeated prompts on one image do not recompute it. ``keep_refined`` (robust path) also returns
        the AMFG outputs and the AOTG tokens in ``refined`` (the per-image ones only when
        ``image_part`` is computed here).
        """
        transformer = self.run_transformer(features, sparse, dense, image_index, path)
        output = self.draw_masks(features, transformer, fused=fused, image_part=image_part, keep_refined=keep_refined)
        if multimask_output is not None:
            selected = slice(1, None) if multimask_output else slice(0, 1)
            output.mask_logits, output.iou_predictions = output.mask_logits[:, selected], output.iou_predictions[:, selected]
        return output


RobustSam = RobustSAM  # the name before 0.2 (one spelling for public classes); kept for one release
