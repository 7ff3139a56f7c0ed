"""Released NAFNet / SAM-Deblur weights (BasicSR files) in our networks: the key map, strict loading
with errors that name the bad keys, no unpickling, and output parity with the released classes.

The parity oracle is ``../shared/oracles/sam_deblur/reference_archs.py`` (NAFNet and SAM-Deblur's
SegNAFNet as released; tests only, never copied into the package): random weights saved the BasicSR
way (``torch.save({"params": state_dict})``) must give our networks the reference's outputs within
1e-5 in eval mode, at odd image sizes too. Those tests skip where ../shared is absent.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from restoration.archs import NAFNet, SAMDeblurNet, build_network
from restoration.archs.released import (ReleasedWeightsError, load_released_weights, ours_to_released,
                                        read_released_state_dict, released_architecture, released_network,
                                        released_to_ours, to_released_state_dict)

REPO_ROOT = Path(__file__).resolve().parents[1]
ORACLE = REPO_ROOT.parent / "shared" / "oracles" / "sam_deblur" / "reference_archs.py"
# Small networks with uneven block counts, so a reversed decoder order would not fit.
ENC, MIDDLE, DEC = [1, 2, 1], 2, [2, 1, 1]  # released order: dec_blk_nums lists the coarsest level first


@pytest.fixture(scope="module")
def reference():
    """The released classes (module ``reference_archs``), or a skip without ../shared."""
    if not ORACLE.is_file():
        pytest.skip(f"reference architectures not found at {ORACLE}")
    spec = importlib.util.spec_from_file_location("reference_archs", ORACLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _randomise(network: nn.Module, seed: int) -> nn.Module:
    """Every parameter drawn at random (released init leaves beta / gamma at zero: blocks would be identities)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            scale = 0.3 if name.endswith(("beta", "gamma")) or "norm" in name else 0.1  # outputs of order 1
            centre = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            parameter.copy_(centre + scale * torch.randn(parameter.shape, generator=generator))
    return network.eval()


def _grouped_masks(height: int, width: int, groups: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM-Deblur's grouped masks (M x 1 x H x W, disjoint binary groups, some pixels in none) and our
    label map of the same regions (H x W, group k -> label k + 1, 0 uncovered)."""
    generator = np.random.default_rng(seed)
    coarse = generator.integers(0, groups + 1, size=(height // 4 + 1, width // 4 + 1))
    labels = np.kron(coarse, np.ones((4, 4), dtype=np.int64))[:height, :width]  # blocky regions
    labels[generator.random((height, width)) < 0.05] = 0  # scattered uncovered pixels
    masks = np.stack([labels == group for group in range(1, groups + 1)])[:, None]
    return torch.from_numpy(masks.astype(np.float32)), torch.from_numpy(labels)


def _save_basicsr(network: nn.Module, path: Path, **extra) -> Path:
    torch.save({"params": network.state_dict(), **extra}, path)
    return path


# ----------------------------------------------------------------------------- key map (no oracle needed)
def test_key_map_names_every_part_and_inverts() -> None:
    network = SAMDeblurNet(width=4, enc_blocks=ENC, middle_blocks=MIDDLE, dec_blocks=DEC[::-1])
    assert released_to_ours("encoders.1.0.conv1.weight", network) == "backbone.encoders.1.0.expand.weight"
    assert released_to_ours("middle_blks.1.sca.1.bias", network) == "backbone.middle.1.channel_attention.conv.bias"
    assert released_to_ours("decoders.0.1.conv5.weight", network) == "backbone.decoders.0.1.ffn_project.weight"
    assert released_to_ours("decoders.0.1.norm2.weight", network) == "backbone.decoders.0.1.norm2.weight"
    assert released_to_ours("pre_seg_in.bias", network) == "mask_average_pooling.pointwise_conv.bias"
    assert released_to_ours("ups.2.0.weight", NAFNet(width=4, enc_blocks=ENC, dec_blocks=DEC)) == "ups.2.0.weight"
    released = to_released_state_dict(network)
    assert {"pre_seg.weight", "middle_blks.1.conv4.weight", "encoders.1.1.sca.1.weight", "decoders.0.1.beta"} <= set(released)
    assert not any(part in key for key in released for part in ("expand", "depthwise", "project", "backbone", "middle."))
    assert {released_to_ours(key, network) for key in released} == set(network.state_dict())
    assert all(ours_to_released(released_to_ours(key, network)) == key for key in released)


def test_architecture_is_read_from_the_weights_and_the_decoder_order_reversed(tmp_path: Path) -> None:
    network = _randomise(SAMDeblurNet(width=4, enc_blocks=ENC, middle_blocks=MIDDLE, dec_blocks=[1, 1, 2],
                                      structure_channels=3), seed=0)
    released = to_released_state_dict(network)
    assert len({key.split(".")[2] for key in released if key.startswith("decoders.0.")}) == 2  # coarsest first
    assert released_architecture(released) == {"type": "SAMDeblurNet", "prior": "structure", "structure_channels": 3,
                                               "mask_dropout_mode": "exact",
                                               "width": 4, "enc_blocks": ENC, "middle_blocks": MIDDLE,
                                               "dec_blocks": [1, 1, 2], "pad_mode": "zeros"}
    loaded = released_network(_save_basicsr_dict(released, tmp_path / "seg.pth"))
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in network.state_dict().items())
    plain = NAFNet(width=4, enc_blocks=ENC, middle_blocks=1, dec_blocks=[1, 1, 1], in_channels=4)
    assert released_architecture(to_released_state_dict(plain))["in_channels"] == 4
    assert type(build_network(released_architecture(to_released_state_dict(plain)))) is NAFNet


def _save_basicsr_dict(state_dict: dict, path: Path, key: str = "params") -> Path:
    torch.save({key: state_dict}, path)
    return path


def test_a_misfit_names_its_missing_unexpected_and_misshaped_keys_and_loads_nothing(tmp_path: Path) -> None:
    network = SAMDeblurNet(width=4, enc_blocks=ENC, middle_blocks=MIDDLE, dec_blocks=DEC[::-1])
    released = to_released_state_dict(_randomise(SAMDeblurNet(width=4, enc_blocks=ENC, middle_blocks=MIDDLE,
                                                              dec_blocks=DEC[::-1]), seed=1))
    del released["middle_blks.1.conv2.bias"]
    released["encoders.0.0.conv9.weight"] = torch.zeros(1)
    released["ending.weight"] = torch.zeros(3, 8, 3, 3)
    before = {key: value.clone() for key, value in network.state_dict().items()}
    with pytest.raises(ReleasedWeightsError) as error:
        load_released_weights(network, _save_basicsr_dict(released, tmp_path / "bad.pth"))
    message = str(error.value)
    assert "\n" not in message and "bad.pth does not fit SAMDeblurNet" in message
    assert "missing keys middle_blks.1.conv2.bias" in message
    assert "unexpected keys encoders.0.0.conv9.weight" in message
    assert "mis-shaped keys ending.weight (3, 8, 3, 3) (network: (3, 4, 3, 3))" in message
    assert all(torch.equal(network.state_dict()[key], value) for key, value in before.items())
    # A NAFNet file in a SAMDeblurNet: its MAP convs are missing and the intro conv has 3 inputs, not 5.
    nafnet = to_released_state_dict(NAFNet(width=4, enc_blocks=ENC, middle_blocks=MIDDLE, dec_blocks=DEC[::-1]))
    with pytest.raises(ReleasedWeightsError, match=r"missing keys pre_seg.weight, pre_seg.bias, pre_seg_in.*"
                                                   r"mis-shaped keys intro.weight \(4, 3, 3, 3\) \(network: \(4, 5, 3, 3\)\)"):
        load_released_weights(network, nafnet)
    with pytest.raises(ReleasedWeightsError, match="prior='features'"):
        load_released_weights(SAMDeblurNet(prior="features", prior_channels=2, width=4, enc_blocks=[1], dec_blocks=[1]),
                              released)


def test_params_or_params_ema_and_files_that_are_refused(tmp_path: Path) -> None:
    first = _randomise(NAFNet(width=4, enc_blocks=[1], dec_blocks=[1]), seed=2)
    second = _randomise(NAFNet(width=4, enc_blocks=[1], dec_blocks=[1]), seed=3)
    path = tmp_path / "ema.pth"
    torch.save({"params": to_released_state_dict(first), "params_ema": to_released_state_dict(second)}, path)
    for key, expected in (("params", first), ("params_ema", second)):
        loaded = released_network(path, param_key=key)
        assert all(torch.equal(loaded.state_dict()[name], value) for name, value in expected.state_dict().items())
    only_params = _save_basicsr_dict(to_released_state_dict(first), tmp_path / "params.pth")
    with pytest.raises(ReleasedWeightsError, match="no 'params_ema' weights .*use param_key='params'"):
        read_released_state_dict(only_params, "params_ema")
    # BasicSR's DataParallel prefix is dropped; a bare state dict is read as it is.
    torch.save({f"module.{key}": value for key, value in to_released_state_dict(first).items()}, tmp_path / "bare.pth")
    assert set(read_released_state_dict(tmp_path / "bare.pth")) == set(to_released_state_dict(first))
    # A planted file whose unpickling would run code is refused, and the code never runs.
    planted = tmp_path / "planted.pth"
    torch.save({"params": to_released_state_dict(first), "hook": _Planted(tmp_path / "ran")}, planted)
    with pytest.raises(ReleasedWeightsError, match="refusing to load .*weights_only=True"):
        released_network(planted)
    assert not (tmp_path / "ran").exists()
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ReleasedWeightsError, match="garbage.pth"):
        read_released_state_dict(tmp_path / "garbage.pth")
    with pytest.raises(ReleasedWeightsError, match="not found"):
        read_released_state_dict(tmp_path / "absent.pth")


class _Planted:
    """Unpickling this runs ``touch MARK``."""

    def __init__(self, mark: Path) -> None:
        self.mark = mark

    def __reduce__(self):
        return (os.system, (f"touch {self.mark}",))


# ----------------------------------------------------------------------------- parity with the released classes
@pytest.mark.parametrize("size", [(32, 40), (37, 29)])
def test_nafnet_release_gives_the_reference_outputs(reference, tmp_path: Path, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    released = _randomise(reference.NAFNet(img_channel=3, width=8, middle_blk_num=MIDDLE, enc_blk_nums=ENC,
                                           dec_blk_nums=DEC), seed=4)
    ours = released_network(_save_basicsr(released, tmp_path / "nafnet.pth"))
    assert isinstance(ours, NAFNet) and not ours.training
    lq = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected, result = released(lq), ours(lq)
    assert result.shape == expected.shape == lq.shape
    assert (expected - lq).abs().max() > 0.1  # the random blocks do change the image
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(32, 24), (37, 29), (21, 50)])
def test_sam_deblur_release_gives_the_reference_outputs_for_the_same_grouped_masks(reference, tmp_path: Path,
                                                                                     size: tuple[int, int]) -> None:
    released = _randomise(reference.SegNAFNet(img_channel=3, seg_channel=2, width=8, middle_blk_num=MIDDLE,
                                              enc_blk_nums=ENC, dec_blk_nums=DEC), seed=6)
    ours = released_network(_save_basicsr(released, tmp_path / "segnafnet.pth"))
    assert isinstance(ours, SAMDeblurNet) and ours.prior == "structure" and not ours.training
    lq = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(7))
    grouped = [_grouped_masks(*size, groups=5 + index, seed=8 + index) for index in range(2)]
    masks = [group[0] for group in grouped]
    label_map = torch.stack([group[1] for group in grouped])
    with torch.no_grad():
        expected = released(lq, masks)
        result = ours(lq, {"label_map": label_map})
        without_masks = ours(lq, {"label_map": torch.zeros_like(label_map)})
    assert (result - without_masks).abs().max() > 1e-3  # the masks matter to this network
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=0)


def test_loading_into_a_network_built_from_options(reference, tmp_path: Path) -> None:
    """``load_released_weights`` into a ``network_g``-built SAMDeblurNet (SAM-Deblur's option values, here
    small): with ``pad_mode: zeros`` the outputs are the reference's at an odd size, replicate padding
    differs from them only near the padded border."""
    released = _randomise(reference.SegNAFNet(img_channel=3, seg_channel=2, width=8, middle_blk_num=1,
                                              enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]), seed=9)
    path = _save_basicsr(released, tmp_path / "SegNAFNet.pth")
    options = {"type": "SAMDeblurNet", "width": 8, "enc_blocks": [1, 1], "middle_blocks": 1, "dec_blocks": [1, 1],
               "structure_channels": 2}
    zeros = load_released_weights(build_network({**options, "pad_mode": "zeros"}), path).eval()
    replicate = load_released_weights(build_network(options), path).eval()
    lq = torch.rand(1, 3, 23, 17, generator=torch.Generator().manual_seed(10))
    masks, label_map = _grouped_masks(23, 17, groups=4, seed=11)
    with torch.no_grad():
        expected = released(lq, [masks])
        torch.testing.assert_close(zeros(lq, {"label_map": label_map[None]}), expected, atol=1e-5, rtol=0)
        assert not torch.allclose(replicate(lq, {"label_map": label_map[None]}), expected, atol=1e-3)
