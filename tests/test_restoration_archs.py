"""NAFNet, SAM-Deblur (MAP unit) and SAM-guided dehazing networks, at width 8 on small odd-sized images."""
from __future__ import annotations

import pytest
import torch

from restoration.archs import (NETWORKS, MaskAveragePooling, NAFNet, SAMDeblurNet, SAMGuidedDehazeNet,
                               build_network)
from restoration.archs.nafnet import local_average_pool
from robustprior.data.structure import drop_masks
from robustprior.training import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")


SMALL = {"width": 8, "enc_blocks": (1, 1), "middle_blocks": 1, "dec_blocks": (1, 1)}
HEIGHT, WIDTH = 37, 45


def _inputs(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, HEIGHT, WIDTH, generator=generator)
    label_map = torch.randint(0, 6, (batch, HEIGHT, WIDTH), generator=generator)
    prior_features = torch.randn(batch, 4, 9, 11, generator=generator)
    return image, label_map, prior_features


def _randomise_residual_scales(model: torch.nn.Module, seed: int = 0) -> None:
    """NAFBlocks start as identities (beta = gamma = 0); give them weight so the blocks matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("beta", "gamma")):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


ALL_MODELS = [
    ("NAFNet", lambda: NAFNet(**SMALL)),
    ("SAMDeblurNet-structure", lambda: SAMDeblurNet(prior="structure", **SMALL)),
    ("SAMDeblurNet-none", lambda: SAMDeblurNet(prior="none", **SMALL)),
    ("SAMDeblurNet-features", lambda: SAMDeblurNet(prior="features", prior_channels=4, **SMALL)),
    *[(f"dehaze-{prior}", (lambda prior=prior: SAMGuidedDehazeNet(prior=prior, prior_channels=4, **SMALL)))
      for prior in ("none", "grayscale", "structure", "features")],
]


def P(label_map: torch.Tensor | None = None, features: torch.Tensor | None = None, **rest) -> dict:
    """A prior batch (restoration.archs.PriorBatch) of the given entries."""
    entries = {"label_map": label_map, "features": features, **rest}
    return {name: value for name, value in entries.items() if value is not None}


def _run(
    name: str, model: torch.nn.Module, image: torch.Tensor, label_map: torch.Tensor, prior_features: torch.Tensor
) -> torch.Tensor:
    return model(image, P(label_map, prior_features))  # one contract: every network reads what it needs


@pytest.mark.parametrize("name,build", ALL_MODELS, ids=[name for name, _ in ALL_MODELS])
def test_odd_size_shape_and_gradients(name: str, build) -> None:
    torch.manual_seed(0)
    model = build()
    _randomise_residual_scales(model)
    image, label_map, prior_features = _inputs()
    image.requires_grad_(True)
    output = _run(name, model, image, label_map, prior_features)
    assert output.shape == image.shape
    output.square().mean().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None and bool(torch.isfinite(parameter.grad).all()), parameter_name
    intro = model.intro if isinstance(model, NAFNet) else model.backbone.intro
    assert intro.weight.grad.abs().sum() > 0
    if name == "SAMDeblurNet-structure":
        assert model.mask_average_pooling.spatial_conv.weight.grad.abs().sum() > 0
    if name.endswith("-features"):  # zero-initialised injections still receive gradient
        assert all(conv.weight.grad.abs().sum() > 0 for conv in model.prior_injections)


def test_nafnet_default_is_sam_deblur_configuration() -> None:
    model = SAMDeblurNet()
    assert [len(stage) for stage in model.backbone.encoders] == [1, 1, 1, 28]
    assert len(model.backbone.middle) == 1 and [len(stage) for stage in model.backbone.decoders] == [1, 1, 1, 1]
    assert model.backbone.intro.in_channels == 5 and model.backbone.intro.out_channels == 32
    assert model.mask_dropout == 0.5
    # NAFNet-width32 (GoPro) has 17.11 M parameters; the MAP unit adds 3*2*9+2 + 2*2+2 = 62 and the
    # 5-channel intro 2*32*9.
    plain = sum(p.numel() for p in SAMDeblurNet(prior="none").parameters())
    assert abs(plain - 17.11e6) < 0.01e6
    assert sum(p.numel() for p in model.parameters()) - plain == 62 + 2 * 32 * 9


@pytest.mark.parametrize("build", [lambda: NAFNet(**SMALL), lambda: SAMGuidedDehazeNet(prior="structure", **SMALL)])
def test_zeroed_last_conv_returns_input_exactly(build) -> None:
    model = build()
    ending = model.ending if isinstance(model, NAFNet) else model.backbone.ending
    _randomise_residual_scales(model)
    with torch.no_grad():
        ending.weight.zero_()
        ending.bias.zero_()
    image, label_map, _ = _inputs()
    output = model(image, P(label_map))
    assert torch.equal(output, image)


def test_prior_none_ignores_label_maps() -> None:
    image, label_map, _ = _inputs()
    deblur = SAMDeblurNet(prior="none", **SMALL)
    dehaze = SAMGuidedDehazeNet(prior="none", **SMALL)
    assert deblur.backbone.intro.in_channels == 3 and dehaze.backbone.intro.in_channels == 3
    for model in (deblur, dehaze):
        _randomise_residual_scales(model)
        reference = model(image)
        assert torch.equal(model(image, P(label_map)), reference)
        assert torch.equal(model(image, P(torch.zeros_like(label_map))), reference)


def test_structure_priors_use_label_maps() -> None:
    image, label_map, _ = _inputs()
    models = (SAMDeblurNet(**SMALL), SAMGuidedDehazeNet(prior="structure", **SMALL),
              SAMGuidedDehazeNet(prior="grayscale", **SMALL))
    for model in models:
        model.eval()
        assert not torch.allclose(model(image, P(label_map)), model(image, P(torch.zeros_like(label_map))))
        with pytest.raises(ValueError, match="label_map"):
            model(image)


def test_mask_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    model = SAMDeblurNet(mask_dropout=0.5, **SMALL)
    image, label_map, _ = _inputs()
    label_map = label_map + 6 * torch.arange(2)[:, None, None]  # more regions per sample
    model.eval()
    torch.manual_seed(1)
    eval_first = model(image, P(label_map))
    torch.manual_seed(2)
    assert torch.equal(model(image, P(label_map)), eval_first)
    model.train()
    torch.manual_seed(1)
    train_first = model(image, P(label_map))
    torch.manual_seed(2)
    train_second = model(image, P(label_map))
    assert not torch.allclose(train_first, train_second)
    assert not torch.allclose(train_first, eval_first)
    # Training mode == eval mode on the label map dropped with the same RNG state.
    torch.manual_seed(1)
    dropped = drop_masks(label_map, 0.5)
    model.eval()
    torch.testing.assert_close(model(image, P(dropped)), train_first)
    no_dropout = SAMDeblurNet(mask_dropout=0.0, **SMALL).train()
    assert torch.equal(no_dropout(image, P(label_map)), no_dropout.eval()(image, P(label_map)))


def test_feature_injection_starts_as_grayscale_variant() -> None:
    image, label_map, prior_features = _inputs()
    torch.manual_seed(0)
    grayscale = SAMGuidedDehazeNet(prior="grayscale", **SMALL)
    torch.manual_seed(0)
    features = SAMGuidedDehazeNet(prior="features", prior_channels=4, **SMALL)
    _randomise_residual_scales(grayscale)
    _randomise_residual_scales(features)
    reference = grayscale(image, P(label_map))
    torch.testing.assert_close(features(image, P(label_map, prior_features)), reference, atol=0, rtol=0)
    with torch.no_grad():
        for conv in features.prior_injections:
            conv.weight.normal_(0.0, 0.1)
    perturbed = features(image, P(label_map, prior_features))
    assert (perturbed - reference).abs().max() > 1e-4
    assert not torch.allclose(perturbed, features(image, P(label_map, prior_features.flip(-1))))
    with pytest.raises(ValueError, match="features"):
        features(image, P(label_map))


def test_map_unit_outputs_region_constant_channels() -> None:
    image, label_map, _ = _inputs()
    pooled = MaskAveragePooling()(image, label_map)
    assert pooled.shape == (2, 2, HEIGHT, WIDTH)
    for sample in range(2):
        for label in range(6):
            inside = pooled[sample][:, label_map[sample] == label]
            torch.testing.assert_close(inside, inside[:, :1].expand_as(inside))


def test_local_average_pool_matches_brute_force() -> None:
    x = torch.randn(1, 2, 7, 9, generator=torch.Generator().manual_seed(4))
    window = 4
    expected = torch.empty_like(x)
    for row in range(7):
        top = min(max(row - (window - 1) // 2, 0), 7 - window)
        for column in range(9):
            left = min(max(column - (window - 1) // 2, 0), 9 - window)
            expected[..., row, column] = x[..., top : top + window, left : left + window].mean(dim=(-2, -1))
    torch.testing.assert_close(local_average_pool(x, window), expected)
    torch.testing.assert_close(local_average_pool(x, 9), x.mean(dim=(2, 3), keepdim=True))


def test_local_pool_option() -> None:
    torch.manual_seed(0)
    global_net = NAFNet(**SMALL)
    _randomise_residual_scales(global_net)
    local_net = NAFNet(**SMALL, local_pool=True, train_size=16)
    local_net.load_state_dict(global_net.state_dict())
    windows = {m.downscale: m.pool_window for m in local_net.modules() if hasattr(m, "pool_window")}
    assert windows == {1: 24, 2: 12, 4: 6}  # int(1.5 * 16) // 2**level
    image = _inputs()[0]
    assert not torch.allclose(local_net(image), global_net(image))
    local_net.set_local_pool(True, train_size=64)  # windows 96/48/24 cover every level: global again
    torch.testing.assert_close(local_net(image), global_net(image))
    local_net.set_local_pool(False)
    assert torch.equal(local_net(image), global_net(image))


def test_networks_are_built_by_name_with_checked_arguments() -> None:
    assert NETWORKS == {"NAFNet": NAFNet, "SAMDeblurNet": SAMDeblurNet, "SAMGuidedDehazeNet": SAMGuidedDehazeNet}
    built = build_network({"type": "SAMGuidedDehazeNet", "prior": "structure", **SMALL})
    assert isinstance(built, SAMGuidedDehazeNet) and built.prior == "structure"
    with pytest.raises(ConfigError, match="did you mean 'network_g.mask_dropout'"):
        build_network({"type": "SAMDeblurNet", "mask_dropuot": 0.5})
    with pytest.raises(ConfigError, match="did you mean 'SAMDeblurNet'"):
        build_network({"type": "SAMDeblurNett"})
    with pytest.raises(ConfigError, match="mask_dropout must lie in"):
        build_network({"type": "SAMDeblurNet", "mask_dropout": 2.0})


def test_grey_scale_of_the_prior_batch_sets_the_coding() -> None:
    """prior["grey_scale"] is the grayscale coding's num_segments: the same regions read the same
    whatever other labels a crop holds."""
    image, label_map, _ = _inputs()
    model = SAMGuidedDehazeNet(prior="grayscale", **SMALL).eval()
    _randomise_residual_scales(model)
    scale = torch.full((2,), 40)
    from robustprior.data.structure import grayscale_segment_coding
    expected = model.backbone.restore(torch.cat([image, grayscale_segment_coding(label_map, 40)], dim=1))
    torch.testing.assert_close(model(image, P(label_map, grey_scale=scale)), expected, atol=0, rtol=0)
    assert not torch.allclose(model(image, P(label_map)), expected)  # default: each sample's largest label


def test_latent_features_are_normalised_and_their_channels_checked() -> None:
    image, label_map, prior_features = _inputs()
    for model in (SAMDeblurNet(prior="features", prior_channels=4, **SMALL).eval(),
                  SAMGuidedDehazeNet(prior="features", prior_channels=4, **SMALL)):
        _randomise_residual_scales(model)
        with torch.no_grad():
            for conv in model.prior_injections:
                conv.weight.normal_(0.0, 0.1)
        reference = model(image, P(label_map, prior_features))
        # per-position normalisation over channels: an affine change of the features' scale is invisible
        scaled = model(image, P(label_map, 1000.0 * prior_features + 3.0))
        assert (scaled - reference).abs().max() < 2e-3  # (up to LayerNorm's eps and float32 rounding)
        assert (model(image, P(label_map, prior_features.flip(1))) - reference).abs().max() > 1e-2
        with pytest.raises(ValueError, match="B x 4 x h x w"):
            model(image, P(label_map, prior_features[:, :3]))
    with pytest.raises(ValueError, match="prior_channels must be"):
        SAMDeblurNet(prior="features", **SMALL)
