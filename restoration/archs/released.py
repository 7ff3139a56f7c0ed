"""Released NAFNet and SAM-Deblur weights (BasicSR ``.pth`` files) in this project's networks.

NAFNet's released checkpoints (e.g. ``NAFNet-GoPro-width32.pth``) and SAM-Deblur's
(``SegNAFNet-GoPro.pth``) are BasicSR files: ``torch.save({"params": state_dict})`` (``params_ema``
beside it when training kept an EMA copy) of the ``NAFNet`` / ``SegNAFNet`` (``...Local``: the same
weights) classes. Their names differ from ours only by the one key map below (every other name is the
same on both sides: ``intro``, ``ending``, ``encoders``, ``downs``, ``ups``, ``decoders``, and in a
block ``norm1``, ``norm2``, ``beta``, ``gamma``):

=======================================  ===========================================================
released name                            ours (:mod:`restoration.archs.nafnet`)
=======================================  ===========================================================
``middle_blks.``                         ``middle.``
block ``conv1.``                         block ``expand.``
block ``conv2.``                         block ``depthwise.``
block ``sca.1.``                         block ``channel_attention.conv.``
block ``conv3.``                         block ``project.``
block ``conv4.``                         block ``ffn_expand.``
block ``conv5.``                         block ``ffn_project.``
``pre_seg.`` (SegNAFNet)                 ``mask_average_pooling.spatial_conv.`` (:class:`SAMDeblurNet`)
``pre_seg_in.`` (SegNAFNet)              ``mask_average_pooling.pointwise_conv.``
=======================================  ===========================================================

and, in a :class:`SAMDeblurNet`, every NAFNet name under ``backbone.``. The released classes list
``dec_blk_nums`` in decoding order (coarsest level first); ours counts ``dec_blocks`` per level like
``enc_blocks`` (finest first): the reverse list.

:func:`load_released_weights` loads such a file strictly into one of our networks (a
:class:`ReleasedWeightsError` names every missing, unexpected and mis-shaped key);
:func:`released_network` builds the network a file describes (width and block counts read from its
shapes) with the released zero padding, so its outputs equal the released code's at any image size;
:func:`to_released_state_dict` goes the other way, for BasicSR code. Files are read with
``torch.load(weights_only=True)``: nothing in them is ever unpickled as code.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from restoration.archs.nafnet import NAFNet, SAMDeblurNet
from robustprior.io.checkpoint import CheckpointError

BLOCK_KEYS: dict[str, str] = {
    "conv1": "expand",
    "conv2": "depthwise",
    "sca.1": "channel_attention.conv",
    "conv3": "project",
    "conv4": "ffn_expand",
    "conv5": "ffn_project",
}
"""Released NAFBlock part -> ours (the parts of a block; ``norm1``, ``norm2``, ``beta``, ``gamma`` keep their names)."""
STAGE_KEYS: dict[str, str] = {"middle_blks": "middle"}
"""Released NAFNet stage -> ours (``intro``, ``ending``, ``encoders``, ``downs``, ``ups``, ``decoders`` keep theirs)."""
SEGMENTATION_KEYS: dict[str, str] = {
    "pre_seg": "mask_average_pooling.spatial_conv",
    "pre_seg_in": "mask_average_pooling.pointwise_conv",
}
"""SegNAFNet's Mask Average Pooling convs -> ours (:class:`~restoration.archs.nafnet.MaskAveragePooling`)."""
PARAM_KEYS: tuple[str, ...] = ("params", "params_ema")
_BLOCK_PART = re.compile(r"^((?:encoders|decoders)\.\d+\.\d+|middle_blks\.\d+)\.(conv[1-5]|sca\.1)\.(weight|bias)$")


class ReleasedWeightsError(CheckpointError):
    """A released checkpoint that cannot be read, or whose weights do not fit the network."""


def released_to_ours(key: str, network: nn.Module) -> str:
    """Our name of the released parameter ``key`` in ``network`` (a :class:`NAFNet` or :class:`SAMDeblurNet`)."""
    stage, _, rest = key.partition(".")
    if stage in SEGMENTATION_KEYS:
        return f"{SEGMENTATION_KEYS[stage]}.{rest}"
    match = _BLOCK_PART.match(key)
    if match:
        key = f"{match[1]}.{BLOCK_KEYS[match[2]]}.{match[3]}"
    stage, _, rest = key.partition(".")
    key = f"{STAGE_KEYS.get(stage, stage)}.{rest}" if rest else key
    return f"backbone.{key}" if isinstance(network, SAMDeblurNet) else key


def ours_to_released(key: str) -> str:
    """The released name of our parameter ``key`` (the inverse of :func:`released_to_ours`)."""
    key = key.removeprefix("backbone.")
    for released, ours in SEGMENTATION_KEYS.items():
        if key.startswith(f"{ours}."):
            return f"{released}.{key[len(ours) + 1:]}"
    inverse_stages = {ours: released for released, ours in STAGE_KEYS.items()}
    stage, _, rest = key.partition(".")
    key = f"{inverse_stages.get(stage, stage)}.{rest}" if rest else key
    inverse_parts = {ours: released for released, ours in BLOCK_KEYS.items()}
    for ours, released in sorted(inverse_parts.items(), key=lambda item: -len(item[0])):
        match = re.match(rf"^((?:encoders|decoders)\.\d+\.\d+|middle_blks\.\d+)\.{re.escape(ours)}\.(weight|bias)$", key)
        if match:
            return f"{match[1]}.{released}.{match[2]}"
    return key


def to_released_state_dict(network: nn.Module) -> dict[str, torch.Tensor]:
    """``network``'s weights under the released names (``torch.save({"params": ...})`` gives a BasicSR file).

    Only a :class:`NAFNet` or a ``prior="structure"`` / ``"none"`` :class:`SAMDeblurNet` has a released
    counterpart (``NAFNet`` / ``SegNAFNet``)."""
    _check_network(network)
    return {ours_to_released(key): value.detach().clone() for key, value in network.state_dict().items()}


def read_released_state_dict(path: str | Path, param_key: str = "params") -> dict[str, torch.Tensor]:
    """The weights in a BasicSR checkpoint: ``file[param_key]`` (``"params"``, BasicSR's default, or
    ``"params_ema"``), or the file itself when it is a bare state dict; a leading ``module.`` is dropped.

    Read with ``torch.load(weights_only=True)``; anything else (a file that would run code when
    unpickled, a corrupt file, a wrong ``param_key``) is a :class:`ReleasedWeightsError` naming it."""
    path = Path(path)
    if param_key not in PARAM_KEYS:
        raise ReleasedWeightsError(f"param_key must be one of {', '.join(PARAM_KEYS)}, got {param_key!r}")
    if not path.is_file():
        raise ReleasedWeightsError(f"released checkpoint not found: {path}")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # never retried with unpickling enabled
        raise ReleasedWeightsError(
            f"refusing to load {path}: torch.load(weights_only=True) cannot read it (Python objects that unpickling "
            "would run, which is never done here, or not a checkpoint at all)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise ReleasedWeightsError(f"cannot read {path}: corrupt or truncated ({type(error).__name__}: {error})") from None
    if isinstance(content, Mapping) and any(key in content for key in PARAM_KEYS):
        if param_key not in content:
            present = [key for key in PARAM_KEYS if key in content]
            raise ReleasedWeightsError(f"{path} has no {param_key!r} weights (it has {', '.join(present)}): "
                                       f"use param_key={present[0]!r}")
        content = content[param_key]
    if not isinstance(content, Mapping) or not content or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in content.items()):
        raise ReleasedWeightsError(f"{path} holds no state dict of tensors (BasicSR files hold one under 'params')")
    return {key.removeprefix("module."): value for key, value in content.items()}


def _check_network(network: nn.Module) -> None:
    if isinstance(network, SAMDeblurNet) and network.prior == "features":
        raise ReleasedWeightsError("SAMDeblurNet(prior='features') has no released counterpart (its feature "
                                   "injection is this project's); use prior='structure' (SegNAFNet) or 'none' (NAFNet)")
    if not isinstance(network, (NAFNet, SAMDeblurNet)):
        raise ReleasedWeightsError(f"released NAFNet / SAM-Deblur weights fit NAFNet or SAMDeblurNet, not "
                                   f"{type(network).__name__}")


def _listed(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def load_released_weights(network: nn.Module, source: str | Path | Mapping[str, torch.Tensor],
                          param_key: str = "params") -> nn.Module:
    """Load released weights (a BasicSR file, or its state dict) strictly into ``network``; returns it.

    Keys go through the key map (module docstring). Every missing, unexpected and mis-shaped key is
    named in one :class:`ReleasedWeightsError`; nothing is loaded then. Note: outputs equal the
    released code's at every image size only with ``pad_mode="zeros"`` (:func:`released_network`)."""
    _check_network(network)
    where = str(source) if isinstance(source, (str, Path)) else "the given state dict"
    released = read_released_state_dict(source, param_key) if isinstance(source, (str, Path)) else source
    mapped = {released_to_ours(key, network): value for key, value in released.items()}
    expected = network.state_dict()
    missing = [ours_to_released(key) for key in expected if key not in mapped]
    unexpected = [key for key, value in released.items() if released_to_ours(key, network) not in expected]
    misshaped = [f"{key} {tuple(value.shape)} (network: {tuple(expected[ours].shape)})"
                 for key, value in released.items()
                 if (ours := released_to_ours(key, network)) in expected and value.shape != expected[ours].shape]
    if missing or unexpected or misshaped:
        problems = [f"{label} {_listed(keys)}" for label, keys in
                    (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", misshaped)) if keys]
        raise ReleasedWeightsError(f"{where} does not fit {type(network).__name__}: " + "; ".join(problems)
                                   + " (names as in the released file)")
    network.load_state_dict(mapped, strict=True)
    return network


def released_architecture(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The ``network_g`` section (``type`` and our arguments) of the network a released state dict holds:
    width and channels from the shapes, block counts from the names (``dec_blocks`` reversed)."""
    def count(stage: str) -> int:
        return len({key.split(".")[1] for key in state_dict if key.startswith(f"{stage}.")})

    def blocks(stage: str) -> list[int]:
        return [len({key.split(".")[2] for key in state_dict if key.startswith(f"{stage}.{index}.")})
                for index in range(count(stage))]

    if "intro.weight" not in state_dict or "ending.weight" not in state_dict:
        raise ReleasedWeightsError("not a NAFNet / SegNAFNet state dict: it has no intro.weight / ending.weight")
    width = int(state_dict["intro.weight"].shape[0])
    section: dict[str, Any] = {"width": width, "enc_blocks": blocks("encoders"), "middle_blocks": count("middle_blks"),
                               "dec_blocks": blocks("decoders")[::-1], "pad_mode": "zeros"}
    if "pre_seg.weight" in state_dict:  # SAM-Deblur drops exactly int(p * M) mask groups when training
        return {"type": "SAMDeblurNet", "prior": "structure", "mask_dropout_mode": "exact",
                "structure_channels": int(state_dict["pre_seg.weight"].shape[0]), **section}
    return {"type": "NAFNet", "in_channels": int(state_dict["intro.weight"].shape[1]),
            "out_channels": int(state_dict["ending.weight"].shape[0]), **section}


def released_network(path: str | Path, param_key: str = "params", **arguments: Any) -> nn.Module:
    """The network a released NAFNet / SegNAFNet file holds, its weights loaded strictly, in eval mode.

    A SegNAFNet file gives a ``SAMDeblurNet(prior="structure", mask_dropout_mode="exact")``, a NAFNet
    file a ``NAFNet``; both pad with zeros as the released code does. ``arguments`` override the constructor arguments (e.g.
    ``local_pool=True, train_size=256`` for SAM-Deblur's ``SegNAFNetLocal`` test-time pooling)."""
    state_dict = read_released_state_dict(path, param_key)
    section = {**released_architecture(state_dict), **arguments}
    network_class = SAMDeblurNet if section.pop("type") == "SAMDeblurNet" else NAFNet
    network = network_class(**section)
    return load_released_weights(network, state_dict).eval()
