"""Model sizes and construction: :data:`MODEL_CONFIGS` and :func:`build_from_config`.

Getting a model WITH weights (a checkpoint, a known name, the bundled default) is
:func:`robustprior.load.load_model`'s job; :func:`robustprior.load.build_robust_sam` and
``robust_sam_model_registry`` are the ``segment_anything.sam_model_registry``-style entry points.

=========  ==============================  =====  ==========  ======================================
name       image encoder                   input  C_enc       early (complementary) feature
=========  ==============================  =====  ==========  ======================================
``vit_b``  SAM ViT-B (12 blocks, 768)      1024   768         output of block 2 (first global block)
``vit_l``  SAM ViT-L (24 blocks, 1024)     1024   1024        output of block 5
``vit_h``  SAM ViT-H (32 blocks, 1280)     1024   1280        output of block 7
``vit_t``  MobileSAM TinyViT               1024   160         output of ``layers[1]`` (64 x 64 grid)
``tiny``   small SAM ViT (4 blocks, 96)    256    96          output of block 1; decoder width 128
=========  ==============================  =====  ==========  ======================================

``tiny`` is this project's own miniature SAM (same architecture, few parameters) for unit tests
and the bundled CPU models. Every size takes ``fourier_mode`` ("paper" or "identity", the PyPI
package's no-op) and ``token_mode`` ("paper" or "release"; see
:mod:`robustprior.modeling.anti_degradation_output_tokens`).
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

from robustprior.modeling.early_features import first_global_attention_block
from robustprior.modeling.layer_norm import use_channel_layer_norm
from robustprior.modeling.robust_sam import RobustComponents, RobustSAM


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; stored in our checkpoints."""

    model_type: str
    encoder: str = "vit"  # "vit" (segment_anything) or "tiny_vit" (MobileSAM)
    image_size: int = 1024
    patch_size: int = 16
    encoder_dim: int = 768
    encoder_depth: int = 12
    encoder_heads: int = 12
    global_attention_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    transformer_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_head_hidden_dim: int = 256
    amfg_reduction: int = 16
    fourier_mode: str = "paper"
    token_mode: str = "paper"
    num_instance_norms: int = 2

    @property
    def embedding_size(self) -> int:
        return self.image_size // self.patch_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        values = dict(values)
        values["global_attention_indexes"] = tuple(values.get("global_attention_indexes", ()))
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**values)


MODEL_CONFIGS: dict[str, ModelConfig] = {
    "vit_b": ModelConfig("vit_b"),
    "vit_l": ModelConfig("vit_l", encoder_dim=1024, encoder_depth=24, encoder_heads=16,
                         global_attention_indexes=(5, 11, 17, 23)),
    "vit_h": ModelConfig("vit_h", encoder_dim=1280, encoder_depth=32, encoder_heads=16,
                         global_attention_indexes=(7, 15, 23, 31)),
    "vit_t": ModelConfig("vit_t", encoder="tiny_vit", encoder_dim=160, encoder_depth=0, encoder_heads=0,
                         global_attention_indexes=(), window_size=0),
    "tiny": ModelConfig("tiny", image_size=256, patch_size=8, encoder_dim=96, encoder_depth=4, encoder_heads=3,
                        global_attention_indexes=(1, 3), window_size=8, transformer_dim=128,
                        decoder_mlp_dim=512, decoder_heads=4, iou_head_hidden_dim=128),
}


def _build_image_encoder(config: ModelConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The image encoder and the layer whose output is the complementary feature."""
    if config.encoder == "vit":
        encoder = ImageEncoderViT(
            img_size=config.image_size,
            patch_size=config.patch_size,
            embed_dim=config.encoder_dim,
            depth=config.encoder_depth,
            num_heads=config.encoder_heads,
            mlp_ratio=4.0,
            out_chans=config.transformer_dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=config.window_size,
            global_attn_indexes=config.global_attention_indexes,
        )
        return encoder, first_global_attention_block(encoder)
    if config.encoder == "tiny_vit":
        with warnings.catch_warnings():  # mobile_sam uses deprecated timm paths and re-registers models
            warnings.simplefilter("ignore")
            from mobile_sam.modeling import TinyViT  # imported lazily: it pulls in timm

        if config.image_size != 1024:
            raise ValueError("MobileSAM's TinyViT only runs at 1024 x 1024 input")
        encoder = TinyViT(
            img_size=1024, in_chans=3, num_classes=1000, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
            num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
            drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
            layer_lr_decay=0.8,
        )
        return encoder, encoder.layers[1]
    raise ValueError(f"unknown encoder kind {config.encoder!r}")


def build_from_config(config: ModelConfig) -> RobustSAM:
    """A randomly initialised :class:`RobustSAM` for ``config`` (SAM frozen, robust parts trainable)."""
    image_encoder, early_layer = _build_image_encoder(config)
    size = config.embedding_size
    prompt_encoder = PromptEncoder(
        embed_dim=config.transformer_dim,
        image_embedding_size=(size, size),
        input_image_size=(config.image_size, config.image_size),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=config.decoder_depth,
            embedding_dim=config.transformer_dim,
            mlp_dim=config.decoder_mlp_dim,
            num_heads=config.decoder_heads,
        ),
        transformer_dim=config.transformer_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=config.iou_head_hidden_dim,
    )
    robust = RobustComponents(
        transformer_dim=config.transformer_dim,
        encoder_dim=config.encoder_dim,
        num_mask_tokens=mask_decoder.num_mask_tokens,
        reduction=config.amfg_reduction,
        fourier_mode=config.fourier_mode,
        token_mode=config.token_mode,
        num_instance_norms=config.num_instance_norms,
    )
    model = RobustSAM(image_encoder, prompt_encoder, mask_decoder, robust, early_layer,
                      image_size=config.image_size, config=config.to_dict())
    use_channel_layer_norm(model)  # SAM's LayerNorm2d modules (encoder neck, prompt encoder, upscaling), same weights
    model.freeze_sam()
    model.eval()
    return model
