"""Checkpoint files: reading, key mapping, checking and writing (file I/O only; building models is
:mod:`robustprior.load`'s job).

Formats recognised (``peek_checkpoint_format``):

* ``"robustprior"``: our safetensors files; the model config travels in the metadata.
* ``"robustsam-official"``: the official RobustSAM ``.pth`` (``robustsam_checkpoint_{b,l,h}.pth``,
  or a state dict saved by the ``robust-segment-anything`` package); a leading ``module.`` is stripped.
* ``"sam"``: a SAM (``sam_vit_*.pth``) or MobileSAM (``mobile_sam.pt``) checkpoint: SAM parts only;
  the robust parts stay fresh and the Robust Output Tokens start as a copy of SAM's mask tokens.

Official RobustSAM key names -> ours (the one table; every other key keeps its name):

==========================================================================  =====================================================
official prefix (``mask_decoder.`` + ...)                                    robustprior prefix
==========================================================================  =====================================================
``custom_robust_token.``                                                     ``robust.output_tokens.``
``robust_mlp.``                                                              ``robust.robust_mlp.``
``custom_token_block.mlp.``                                                  ``robust.token_generation.mlp.``
``fourier_mask_features.downsample_layer.``                                  ``robust.fusion.mask_feature_conv.``
``fourier_first_layer_features.upsample_layer.``                             ``robust.fusion.complementary_upsample.``
``fourier_last_layer_features.upsample_layer.``                              ``robust.fusion.embedding_upsample.``
``{block}.dnc_block_combined.SEMBlock.maxpool_conv.0.conv1.``                ``{amfg}.selective_convolution.batch_norm_conv.``
``{block}.dnc_block_combined.SEMBlock.maxpool_conv.0.conv2.``                ``{amfg}.selective_convolution.instance_norm_conv.``
``{block}.dnc_block_combined.SEMBlock.maxpool_conv.0.BN.``                   ``{amfg}.selective_convolution.batch_norm.``
``{block}.dnc_block_combined.SEMBlock.maxpool_conv.0.selector.fc.0.``        ``{amfg}.selective_convolution.attention.squeeze.``
``{block}.dnc_block_combined.SEMBlock.maxpool_conv.0.selector.att_conv1.``   ``{amfg}.selective_convolution.attention.batch_norm_logits.``
``{block}.dnc_block_combined.SEMBlock.maxpool_conv.0.selector.att_conv2.``   ``{amfg}.selective_convolution.attention.instance_norm_logits.``
``{block}.dnc_block_combined.channel_attention.excitation.``                 ``{amfg}.channel_attention.excitation.``
``{block}.fgm_block.conv_layer.``                                            ``{amfg}.fourier_suppression.amplitude_conv.``
``{block}.conv_layer.``                                                      ``{amfg}.output_conv.``
==========================================================================  =====================================================

with ``{block} -> {amfg}``: ``fourier_mask_features -> robust.fusion.mask_feature_amfg``,
``fourier_first_layer_features -> robust.fusion.complementary_amfg``,
``fourier_last_layer_features -> robust.fusion.embedding_amfg``.
"""
from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open

from robustprior.io.atomic import save_safetensors_atomically
from robustprior.modeling.robust_sam import RobustSAM

OFFICIAL_BLOCKS: dict[str, str] = {
    "fourier_mask_features": "robust.fusion.mask_feature_amfg",
    "fourier_first_layer_features": "robust.fusion.complementary_amfg",
    "fourier_last_layer_features": "robust.fusion.embedding_amfg",
}
OFFICIAL_AMFG_PARTS: dict[str, str] = {
    "dnc_block_combined.SEMBlock.maxpool_conv.0.conv1.": "selective_convolution.batch_norm_conv.",
    "dnc_block_combined.SEMBlock.maxpool_conv.0.conv2.": "selective_convolution.instance_norm_conv.",
    "dnc_block_combined.SEMBlock.maxpool_conv.0.BN.": "selective_convolution.batch_norm.",
    "dnc_block_combined.SEMBlock.maxpool_conv.0.selector.fc.0.": "selective_convolution.attention.squeeze.",
    "dnc_block_combined.SEMBlock.maxpool_conv.0.selector.att_conv1.": "selective_convolution.attention.batch_norm_logits.",
    "dnc_block_combined.SEMBlock.maxpool_conv.0.selector.att_conv2.": "selective_convolution.attention.instance_norm_logits.",
    "dnc_block_combined.channel_attention.excitation.": "channel_attention.excitation.",
    "fgm_block.conv_layer.": "fourier_suppression.amplitude_conv.",
    "conv_layer.": "output_conv.",
}
OFFICIAL_KEY_MAP: dict[str, str] = {
    "mask_decoder.custom_robust_token.": "robust.output_tokens.",
    "mask_decoder.robust_mlp.": "robust.robust_mlp.",
    "mask_decoder.custom_token_block.mlp.": "robust.token_generation.mlp.",
    "mask_decoder.fourier_mask_features.downsample_layer.": "robust.fusion.mask_feature_conv.",
    "mask_decoder.fourier_first_layer_features.upsample_layer.": "robust.fusion.complementary_upsample.",
    "mask_decoder.fourier_last_layer_features.upsample_layer.": "robust.fusion.embedding_upsample.",
    **{
        f"mask_decoder.{block}.{part}": f"{amfg}.{ours}"
        for block, amfg in OFFICIAL_BLOCKS.items()
        for part, ours in OFFICIAL_AMFG_PARTS.items()
    },
}
ENCODER_WIDTH_TO_MODEL = {768: "vit_b", 1024: "vit_l", 1280: "vit_h", 96: "tiny"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def _torch_load(path: Path, mmap: bool = False) -> Mapping[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:  # never retried with unpickling enabled, whatever torch suggests
        raise CheckpointError(
            f"refusing to load {path}: torch.load(weights_only=True) cannot read it (Python objects that unpickling "
            "would run, which is never done here, or not a checkpoint at all)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        if mmap:  # an old (non-zip) torch.save file cannot be memory-mapped: read it whole
            return _torch_load(path)
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is corrupt or truncated ({type(error).__name__}: {error})"
        ) from error
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
    return {key.removeprefix("module."): value for key, value in state.items()}


def _as_float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


class _LazySafetensors(Mapping):
    """The tensors of a safetensors file, each read (as float32) only when looked up."""

    def __init__(self, path: Path) -> None:
        self._handle = safe_open(str(path), framework="pt")
        self._keys = list(self._handle.keys())

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._keys:
            raise KeyError(key)
        return _as_float32(self._handle.get_tensor(key))

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def read_state_dict(path: str | Path, mmap: bool = False) -> tuple[Mapping[str, torch.Tensor], dict[str, str]]:
    """The tensors of a ``.safetensors`` / ``.pth`` / ``.pt`` file and its metadata (safetensors only).

    Half-precision tensors are returned as float32. ``mmap=True`` reads tensors only when they are
    looked up (to inspect a large file's keys and a few tensors)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
            if mmap:
                return _LazySafetensors(path), metadata
            state = load_file(str(path))
            return {k: _as_float32(v) for k, v in state.items()}, metadata
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"cannot read checkpoint {path}: the file is corrupt or truncated ({error})") from error
    return dict(_torch_load(path, mmap)), {}


def detect_format(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> str:
    """``"robustprior"``, ``"robustsam-official"`` or ``"sam"`` (see the module docstring)."""
    if metadata and metadata.get("format") == "robustprior":
        return "robustprior"
    if any(key.startswith("robust.") for key in state):
        return "robustprior"
    if any(key.startswith("mask_decoder.custom_robust_token") for key in state):
        return "robustsam-official"
    if any(key.startswith("image_encoder.") for key in state) and any(key.startswith("mask_decoder.") for key in state):
        return "sam"
    raise CheckpointError("unrecognised checkpoint: expected SAM, MobileSAM, official RobustSAM or robustprior keys")


def map_official_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename official RobustSAM keys to ours with :data:`OFFICIAL_KEY_MAP` (longest prefix wins)."""
    prefixes = sorted(OFFICIAL_KEY_MAP, key=len, reverse=True)
    mapped = {}
    for key, value in state.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        mapped[OFFICIAL_KEY_MAP[prefix] + key[len(prefix):] if prefix else key] = value
    return mapped


def guess_model_type(state: Mapping[str, torch.Tensor]) -> str | None:
    """The registry size a state dict's image encoder looks like (by its width), or None."""
    weight = state.get("image_encoder.patch_embed.proj.weight")
    if weight is not None:
        return ENCODER_WIDTH_TO_MODEL.get(weight.shape[0])
    if "image_encoder.patch_embed.seq.0.c.weight" in state or any(k.startswith("image_encoder.layers.") for k in state):
        return "vit_t"
    return None


def check_state_dict(model: RobustSAM, state: Mapping[str, torch.Tensor], base_only: bool = False) -> None:
    """Raise :class:`CheckpointError` naming every missing, unexpected and mis-shaped key."""
    expected = {k: v for k, v in model.state_dict().items() if not (base_only and k.startswith("robust."))}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if not (missing or unexpected or mis_shaped):
        return
    lines = [f"checkpoint does not match the {model.config.get('model_type', '?')} model:"]
    for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mis_shaped)):
        if keys:
            lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys))
    guessed = guess_model_type(state)
    if guessed and guessed != model.config.get("model_type"):
        lines.append(f"  the checkpoint looks like a {guessed} model")
    raise CheckpointError("\n".join(lines))


def load_checkpoint(model: RobustSAM, path: str | Path, strict: bool = True) -> str:
    """Load any supported checkpoint file into ``model``; returns its format.

    Strict by default: any missing, unexpected or mis-shaped key raises a :class:`CheckpointError`
    listing them all. A SAM/MobileSAM checkpoint only has to cover the SAM parts.
    """
    state, metadata = read_state_dict(path)
    return load_state(model, state, detect_format(state, metadata), strict=strict)


def load_state(model: RobustSAM, state: Mapping[str, torch.Tensor], checkpoint_format: str, strict: bool = True) -> str:
    """Load an already-read state dict of the given format (see :func:`load_checkpoint`)."""
    if checkpoint_format == "robustsam-official":
        state = map_official_keys(state)
    base_only = checkpoint_format == "sam"
    if strict:
        check_state_dict(model, state, base_only=base_only)
    else:
        own = model.state_dict()
        state = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(state, strict=False)
    if base_only:
        with torch.no_grad():
            model.robust.output_tokens.weight.copy_(model.mask_decoder.mask_tokens.weight)
    return checkpoint_format


def save_checkpoint(model: RobustSAM, path: str | Path, extra_metadata: Mapping[str, str] | None = None,
                    dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` as safetensors with its config in the metadata, atomically.

    ``dtype=torch.float16`` halves the file (bundled weights); loading casts back to float32.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "robustprior", "config": json.dumps(model.config), **(extra_metadata or {})}
    tensors = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    save_safetensors_atomically(tensors, path, metadata)
    return path


def update_metadata(path: str | Path, entries: Mapping[str, str]) -> Path:
    """Rewrite a safetensors file with ``entries`` added to (or replacing) its metadata; its tensors
    are written back byte for byte (same dtypes: a float16 file stays float16), atomically."""
    path = Path(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    tensors = load_file(str(path))
    save_safetensors_atomically(tensors, path, {**metadata, **entries})
    return path
