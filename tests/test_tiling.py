"""Overlapping-tile inference: equal to the untiled forward for networks with a bounded receptive field."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from restoration.archs import SAMGuidedDehazeNet
from robustprior.data.structure import resample_prior_features
from restoration.tiling import tiled_forward


pytestmark = pytest.mark.usefixtures("single_thread")


def _image(height: int = 70, width: int = 90, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _conv_net(num_layers: int) -> nn.Sequential:
    """``num_layers`` 3x3 convs: receptive-field radius ``num_layers``."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for index in range(num_layers):
        layers += [nn.Conv2d(3 if index == 0 else 8, 8 if index < num_layers - 1 else 3, 3, padding=1), nn.GELU()]
    return nn.Sequential(*layers[:-1])


def test_per_pixel_network_with_label_map() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, kernel_size=1)
    embedding = nn.Embedding(5, 4)

    def model_fn(image: torch.Tensor, label_map: torch.Tensor) -> torch.Tensor:
        return conv(image) + embedding(label_map).permute(0, 3, 1, 2)

    image = _image()
    label_map = torch.randint(0, 5, (1, 70, 90), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model_fn(image, label_map)
    tiled = tiled_forward(model_fn, image, label_map, tile=32, overlap=8, multiple=8)
    assert tiled.shape == (1, 4, 70, 90)
    torch.testing.assert_close(tiled, expected, atol=1e-5, rtol=0)


def test_conv_net_exact_when_overlap_covers_receptive_field() -> None:
    net = _conv_net(3)  # radius 3: needs overlap // 4 >= 3
    image = _image()
    with torch.no_grad():
        expected = net(image)
    torch.testing.assert_close(tiled_forward(net, image, tile=32, overlap=12, multiple=4), expected, atol=1e-5, rtol=0)
    # Control: a discarded band narrower than the receptive field lets tile-edge errors through.
    too_narrow = tiled_forward(net, image, tile=32, overlap=8, multiple=4)
    assert (too_narrow - expected).abs().max() > 1e-3


def test_image_smaller_than_tile_and_none_aux() -> None:
    net = _conv_net(2)
    image = _image(21, 27)
    calls: list[tuple[int, ...]] = []

    def model_fn(tile: torch.Tensor, aux: None) -> torch.Tensor:
        assert aux is None
        calls.append(tuple(tile.shape))
        return net(tile)

    with torch.no_grad():
        expected = net(image)
    assert torch.equal(tiled_forward(model_fn, image, None, tile=32, overlap=8, multiple=8), expected)
    assert calls == [(1, 3, 21, 27)]


def test_unet_on_its_downsampling_grid_is_exact() -> None:
    # At initialisation NAFBlocks are identities, so the U-Net is a local network (intro 3x3, 2x2 stride-2
    # downs, 1x1 ups, ending 3x3: an output pixel sees its aligned 4x4 block grown by 2 pixels, radius
    # <= 5); tiles on its grid, with the border tile cut, reproduce it exactly once overlap // 4 >= 5.
    torch.manual_seed(0)
    net = SAMGuidedDehazeNet(prior="grayscale", width=8, enc_blocks=(1, 1), middle_blocks=1, dec_blocks=(1, 1)).eval()
    image = _image(50, 70)
    label_map = torch.randint(0, 4, (1, 50, 70), generator=torch.Generator().manual_seed(2))

    def model_fn(tile: torch.Tensor, tile_labels: torch.Tensor) -> torch.Tensor:
        return net(tile, {"label_map": tile_labels, "grey_scale": torch.tensor([3])})

    with torch.no_grad():
        expected = model_fn(image, label_map)
    tiled = tiled_forward(model_fn, image, label_map, tile=40, overlap=24, multiple=4)
    torch.testing.assert_close(tiled, expected, atol=1e-5, rtol=0)
    # Tiles off the network's grid (start 6 is not a multiple of 4) differ, as does a narrower overlap.
    off_grid = tiled_forward(model_fn, image, label_map, tile=30, overlap=24, multiple=2)
    assert (off_grid - expected).abs().max() > 1e-4


def test_low_resolution_prior_features_follow_the_tile() -> None:
    # A smooth prior (ramps plus a low frequency) covering the image at 1/8 resolution.
    rows, columns = torch.meshgrid(torch.linspace(0, 1, 9), torch.linspace(0, 1, 12), indexing="ij")
    features = torch.stack([rows, columns, torch.sin(3 * rows + 2 * columns)])[None]

    def model_fn(image: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        return image + resample_prior_features(prior, tuple(image.shape[-2:]), tuple(image.shape[-2:]))

    image = _image(72, 96)
    with torch.no_grad():
        expected = model_fn(image, features)
    tiled = tiled_forward(model_fn, image, features, tile=32, overlap=16, multiple=8)
    # Two bilinear resamplings instead of one: close for a smooth prior, far from a misaligned one.
    assert (tiled - expected).abs().max() < 0.02
    shifted = tiled_forward(model_fn, image, features.roll(1, dims=-1), tile=32, overlap=16, multiple=8)
    assert (shifted - expected).abs().max() > 0.05


def test_argument_validation() -> None:
    image = _image(40, 40)
    identity = lambda tile: tile  # noqa: E731
    with pytest.raises(ValueError, match="multiples"):
        tiled_forward(identity, image, tile=30, overlap=8, multiple=16)
    with pytest.raises(ValueError, match="overlap"):
        tiled_forward(identity, image, tile=32, overlap=32, multiple=16)
    with pytest.raises(ValueError, match="neither matches"):
        small_labels = torch.zeros(1, 10, 10, dtype=torch.long)
        tiled_forward(lambda tile, aux: tile, image, small_labels, tile=16, overlap=8, multiple=8)
    with pytest.raises(ValueError, match="does not match the tile"):
        tiled_forward(lambda tile: tile[..., :-1], image, tile=16, overlap=8, multiple=8)
    torch.testing.assert_close(tiled_forward(identity, image, tile=16, overlap=8, multiple=8), image)
