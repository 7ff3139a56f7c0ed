"""RobustSAM modules: closed forms, an independent FFT computation, gradients, freezing, batching."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from robustprior.load import build_robust_sam
from robustprior.modeling import (
    AntiDegradationMaskFeatures,
    AntiDegradationOutputTokens,
    FourierDegradationSuppression,
)


def _set_amplitude_conv(block: FourierDegradationSuppression, scale: float) -> None:
    channels = block.amplitude_conv.weight.shape[0]
    with torch.no_grad():
        block.amplitude_conv.weight.copy_(scale * torch.eye(channels)[:, :, None, None])
        block.amplitude_conv.bias.zero_()


@pytest.mark.parametrize("scale", [1.0, 2.5, -0.5])
def test_fourier_suppression_closed_form(scale: float) -> None:
    block = FourierDegradationSuppression(6)
    _set_amplitude_conv(block, scale)
    x = torch.randn(2, 6, 16, 12, dtype=torch.float32)
    torch.testing.assert_close(block(x), scale * x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("height, width", [(8, 10), (7, 9), (6, 1)])
def test_fourier_suppression_matches_numpy(height: int, width: int) -> None:
    torch.manual_seed(0)
    block = FourierDegradationSuppression(4)
    x = torch.randn(1, 4, height, width)
    weight = block.amplitude_conv.weight.detach().numpy()[:, :, 0, 0]
    bias = block.amplitude_conv.bias.detach().numpy()
    spectrum = np.fft.fft2(x.numpy()[0], axes=(-2, -1))
    amplitude = np.einsum("oc,chw->ohw", weight, np.abs(spectrum)) + bias[:, None, None]
    expected = np.real(np.fft.ifft2(amplitude * np.exp(1j * np.angle(spectrum)), axes=(-2, -1)))
    np.testing.assert_allclose(block(x)[0].detach().numpy(), expected, atol=1e-4, rtol=1e-4)


def test_fourier_identity_mode_is_the_pypi_no_op() -> None:
    x = torch.randn(1, 4, 8, 8)
    assert torch.equal(FourierDegradationSuppression(4, mode="identity")(x), x)
    with pytest.raises(ValueError, match="unknown Fourier mode"):
        FourierDegradationSuppression(4, mode="fft")


def test_fourier_changes_output_and_receives_gradients() -> None:
    torch.manual_seed(0)
    paper = AntiDegradationMaskFeatures(16, fourier_mode="paper").eval()
    identity = AntiDegradationMaskFeatures(16, fourier_mode="identity").eval()
    identity.load_state_dict(paper.state_dict())
    x = torch.randn(2, 16, 16, 16)
    assert (paper(x) - identity(x)).abs().max() > 1e-3
    paper(x).square().mean().backward()
    grad = paper.fourier_suppression.amplitude_conv.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_amfg_keeps_shape_and_channels() -> None:
    block = AntiDegradationMaskFeatures(32)
    assert block(torch.randn(2, 32, 20, 24)).shape == (2, 32, 20, 24)


def test_output_token_release_mode_uses_first_quarter_of_normalised_token() -> None:
    torch.manual_seed(0)
    release = AntiDegradationOutputTokens(16, num_tokens=4, token_mode="release")
    tokens = torch.randn(3, 4, 16)
    normalised = tokens
    for _ in range(2):  # two instance norms over the features, as the release stacks
        normalised = (normalised - normalised.mean(-1, keepdim=True)) / torch.sqrt(
            normalised.var(-1, unbiased=False, keepdim=True) + 1e-5
        )
    expected = release.mlp(normalised[..., :4])
    torch.testing.assert_close(release(tokens), expected)
    paper = AntiDegradationOutputTokens(16, token_mode="paper")
    assert paper.mlp[0].in_features == 16 and release.mlp[0].in_features == 4


def test_frozen_sam_is_bit_identical_after_a_step() -> None:
    torch.manual_seed(0)
    model = build_robust_sam("tiny", random_init=True)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("robust.")}
    robust_before = {k: v.clone() for k, v in model.robust.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(n.startswith("robust.") for n, p in model.named_parameters() if p.requires_grad)
    optimizer = torch.optim.Adam(trainable, lr=1e-2)
    images = model.preprocess(torch.rand(2, 3, 256, 256) * 255)
    with torch.no_grad():
        features = model.encode_image(images)
    sparse, dense = model.encode_prompts(points=(torch.rand(2, 3, 2) * 256, torch.ones(2, 3)))
    output = model.decode(features, sparse, dense, image_index=torch.tensor([0, 1]))
    output.mask_logits.sigmoid().mean().backward()
    optimizer.step()
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"SAM tensor {key} changed"
    changed = [k for k, v in robust_before.items() if not torch.equal(v, model.robust.state_dict()[k])]
    assert len(changed) > 10


def test_parameter_counts_match_the_official_package() -> None:
    from robust_segment_anything.build_sam import build_sam_vit_b

    official = build_sam_vit_b(opt=object())
    ours = build_robust_sam("vit_b", random_init=True, token_mode="release")
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(ours) == count(official)
    sam_names = ("image_encoder", "prompt_encoder")
    official_robust = count(official) - sum(count(getattr(official, n)) for n in sam_names) - sum(
        p.numel() for n, p in official.mask_decoder.named_parameters()
        if n.split(".")[0] in ("transformer", "iou_token", "mask_tokens", "output_upscaling",
                               "output_hypernetworks_mlps", "iou_prediction_head")
    )
    assert count(ours.robust) == official_robust
    assert abs(count(ours) / 1e6 - 153.2) < 0.2 and abs(count(ours.robust) / 1e6 - 59.4) < 0.2  # SPEC section 5


def test_batched_prompts_equal_single_prompt_forwards() -> None:
    torch.manual_seed(0)
    model = build_robust_sam("tiny", random_init=True)
    with torch.no_grad():
        features = model.encode_image(model.preprocess(torch.rand(2, 3, 256, 200) * 255))
        points = torch.rand(5, 2, 2) * 200
        labels = torch.tensor([[1, 1], [1, 0], [1, 1], [0, 1], [1, 1]])
        boxes = torch.tensor([[10.0, 20, 100, 120], [0, 0, 50, 60], [30, 30, 200, 250], [5, 5, 6, 6], [60, 10, 90, 200]])
        image_index = torch.tensor([0, 1, 1, 0, 1])
        for path in ("robust", "sam"):
            sparse, dense = model.encode_prompts(points=(points, labels), boxes=boxes)
            batched = model.decode(features, sparse, dense, image_index, multimask_output=None, path=path)
            for i in range(5):
                sparse_i, dense_i = model.encode_prompts(points=(points[i : i + 1], labels[i : i + 1]), boxes=boxes[i : i + 1])
                single_features = type(features)(features.embedding[image_index[i] : image_index[i] + 1],
                                                 features.complementary[image_index[i] : image_index[i] + 1])
                single = model.decode(single_features, sparse_i, dense_i, None, multimask_output=None, path=path)
                torch.testing.assert_close(batched.mask_logits[i : i + 1], single.mask_logits, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(batched.iou_predictions[i : i + 1], single.iou_predictions, atol=1e-5, rtol=1e-5)


def test_sam_path_is_segment_anything_itself() -> None:
    """The plain-SAM baseline path equals segment_anything's own Sam on the same modules."""
    from segment_anything.modeling import Sam

    torch.manual_seed(0)
    model = build_robust_sam("tiny", random_init=True)
    sam = Sam(model.image_encoder, model.prompt_encoder, model.mask_decoder).eval()
    images = torch.rand(1, 3, 256, 256) * 255
    points = (torch.tensor([[[40.0, 50.0], [120.0, 90.0]]]), torch.tensor([[1, 0]]))
    with torch.no_grad():
        reference = sam([{"image": images[0], "original_size": (256, 256), "point_coords": points[0],
                          "point_labels": points[1]}], multimask_output=True)[0]
        features = model.encode_image(model.preprocess(images))
        sparse, dense = model.encode_prompts(points=points)
        ours = model.decode(features, sparse, dense, multimask_output=True, path="sam")
    torch.testing.assert_close(ours.mask_logits, reference["low_res_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.iou_predictions, reference["iou_predictions"], atol=1e-5, rtol=1e-5)


def test_teacher_fused_feature_skips_amfg() -> None:
    torch.manual_seed(0)
    model = build_robust_sam("tiny", random_init=True)
    with torch.no_grad():
        features = model.encode_image(model.preprocess(torch.rand(1, 3, 256, 256) * 255))
        sparse, dense = model.encode_prompts(boxes=torch.tensor([[10.0, 10, 100, 100]]))
        teacher = model.decode(features, sparse, dense, path="sam", fused=True)
        fusion = model.robust.fusion
        expected = fusion.mask_feature_conv(teacher.mask_feature) + fusion.embedding_upsample(
            features.embedding) + fusion.complementary_upsample(features.complementary)
    torch.testing.assert_close(teacher.fused_feature, expected)


def test_tiny_vit_early_feature_shape() -> None:
    model = build_robust_sam("vit_t", random_init=True)
    with torch.no_grad():
        features = model.encode_image(model.preprocess(torch.rand(1, 3, 1024, 1024) * 255))
    assert features.embedding.shape == (1, 256, 64, 64)
    assert features.complementary.shape == (1, 160, 64, 64)


def test_amfg_started_as_identity_returns_its_input_and_still_learns() -> None:
    torch.manual_seed(0)
    block = AntiDegradationMaskFeatures(32)
    block.start_as_identity()
    x = torch.randn(2, 32, 12, 10, requires_grad=True)
    out = block(x)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=1e-5)
    (out * torch.randn_like(out)).sum().backward()
    for name in ("output_conv.weight", "channel_attention.excitation.2.weight", "fourier_suppression.amplitude_conv.weight"):
        grad = dict(block.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_fusion_started_as_mask_feature_is_the_rms_normalised_mask_feature() -> None:
    from robustprior.modeling import RobustFeatureFusion

    torch.manual_seed(0)
    fusion = RobustFeatureFusion(transformer_dim=128, encoder_dim=96)
    fusion.start_as_mask_feature()
    mask_feature = torch.randn(3, 16, 20, 20)
    expected = mask_feature / torch.sqrt(mask_feature.pow(2).mean(1, keepdim=True) + 1e-6)
    with torch.no_grad():
        for robust in (True, False):
            torch.testing.assert_close(fusion.mask_features(mask_feature, robust), expected, atol=1e-5, rtol=1e-5)
            image_part = fusion.image_features(torch.randn(2, 128, 5, 5), torch.randn(2, 96, 5, 5), robust)
            assert image_part.shape == (2, 16, 20, 20) and not image_part.any()


def test_output_tokens_started_as_affine_equal_a_layer_norm() -> None:
    torch.manual_seed(0)
    block = AntiDegradationOutputTokens(16)
    weight, bias = torch.rand(16) + 0.5, torch.randn(16)
    block.start_as_affine(weight, bias)
    tokens = 5 * torch.randn(3, 4, 16) + 2
    with torch.no_grad():
        torch.testing.assert_close(block(tokens), torch.nn.functional.layer_norm(tokens, (16,), weight, bias),
                                   atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="token_mode='paper'"):
        AntiDegradationOutputTokens(16, token_mode="release").start_as_affine(weight, bias)
    with pytest.raises(ValueError, match="shape"):
        block.start_as_affine(torch.ones(8), torch.zeros(8))


def test_robust_path_started_from_sam_gives_sams_single_mask() -> None:
    """With SAM's final LayerNorm at its identity init, AOTG returns SAM's token, so the robust
    classifier is SAM's token-0 classifier and the robust logits are SAM's divided by the mask
    feature's per-pixel RMS: the same masks."""
    torch.manual_seed(0)
    model = build_robust_sam("tiny", random_init=True).start_robust_path_from_sam()
    with torch.no_grad():
        features = model.encode_image(model.preprocess(torch.rand(2, 3, 256, 256) * 255))
        sparse, dense = model.encode_prompts(points=(torch.rand(3, 2, 2) * 255, torch.tensor([[1, 0], [1, 1], [1, 0]])))
        index = torch.tensor([0, 1, 1])
        sam = model.decode(features, sparse, dense, index, multimask_output=False, path="sam")
        robust = model.decode(features, sparse, dense, index, multimask_output=False, path="robust")
    torch.testing.assert_close(robust.mask_tokens, sam.mask_tokens)
    rms = torch.sqrt(sam.mask_feature.pow(2).mean(1, keepdim=True) + 1e-6)
    torch.testing.assert_close(robust.mask_logits * rms, sam.mask_logits, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("shared_dense, images", [(True, 1), (True, 2), (False, 2)])
def test_two_way_transformer_with_shared_image_work_equals_segment_anythings(shared_dense: bool, images: int) -> None:
    from robustprior.modeling.two_way_transformer import run_two_way_transformer

    torch.manual_seed(0)
    model = build_robust_sam("tiny", random_init=True)
    transformer = model.mask_decoder.transformer
    embedding = torch.randn(images, 128, 32, 32)
    image_index = torch.tensor([1, 0, 1, 1, 0]) if images == 2 else torch.zeros(5, dtype=torch.long)
    tokens = torch.randn(5, 7, 128)
    dense = (model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(5, -1, 32, 32) if shared_dense
             else torch.randn(5, 128, 32, 32))
    position = model.prompt_encoder.get_dense_pe()
    with torch.no_grad():
        queries, keys = run_two_way_transformer(transformer, embedding, image_index, dense, position, tokens)
        expected_queries, expected_keys = transformer(embedding[image_index] + dense, position, tokens)
    torch.testing.assert_close(queries, expected_queries, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(keys, expected_keys, rtol=1e-5, atol=2e-5)


def test_channel_layer_norm_and_block_attention_merge_equal_the_plain_formulas() -> None:
    import torch.nn.functional as F
    from segment_anything.modeling.common import LayerNorm2d

    from robustprior.modeling.layer_norm import ChannelLayerNorm2d, is_channels_last
    from robustprior.modeling.selective_convolution import BranchAttention

    torch.manual_seed(0)
    plain, fast = LayerNorm2d(12), ChannelLayerNorm2d(12)
    torch.nn.init.normal_(plain.weight)
    torch.nn.init.normal_(plain.bias)
    fast.load_state_dict(plain.state_dict())
    x = 3 * torch.randn(2, 12, 9, 7) + 1
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)
    attention = BranchAttention(12, reduction=4)
    a, b = torch.randn(2, 12, 16, 20), torch.randn(2, 12, 16, 20)
    weight_bn, weight_in = attention(a + b)  # nearest-upsampled maps, as F.interpolate gives them
    coarse = attention.coarse(a + b)
    torch.testing.assert_close(weight_bn, F.interpolate(coarse[0], size=(16, 20), mode="nearest"))
    torch.testing.assert_close(attention.merge(a, b), a * weight_bn + b * weight_in)
    last = attention.merge(a.contiguous(memory_format=torch.channels_last), b.contiguous(memory_format=torch.channels_last))
    assert is_channels_last(last)  # the inference layout is kept, with the same numbers
    torch.testing.assert_close(last, attention.merge(a, b), rtol=0, atol=0)


def test_inference_layout_gives_the_training_layouts_masks() -> None:
    """At inference (eval mode, autograd off) the decoder runs its per-prompt maps channels-last (faster
    convolutions on the CPU); the masks, scores and fused features equal the standard layout's within
    1e-4. A training step's no-grad teacher pass (train mode) keeps the standard layout."""
    from robustprior.modeling.layer_norm import is_channels_last

    torch.manual_seed(0)
    model = build_robust_sam("tiny", random_init=True).eval()
    for module in model.robust.modules():  # give BatchNorm non-trivial running statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    images = model.preprocess(torch.rand(2, 3, 256, 256) * 255)
    points = (torch.rand(6, 2, 2) * 256, torch.tensor([[1, 0]] * 6))
    image_index = torch.tensor([0, 1, 1, 0, 1, 0])
    with torch.no_grad():
        features = model.encode_image(images)
        sparse, dense = model.encode_prompts(points=points)
    for path in ("robust", "sam"):
        with torch.no_grad():
            fast = model.decode(features, sparse, dense, image_index, multimask_output=None, path=path, fused=True)
            one_image = model.decode(type(features)(features.embedding[:1], features.complementary[:1]),
                                     sparse, dense, None, multimask_output=None, path=path)
        with torch.enable_grad():
            standard = model.decode(features, sparse, dense, image_index, multimask_output=None, path=path, fused=True)
            standard_one = model.decode(type(features)(features.embedding[:1], features.complementary[:1]),
                                        sparse, dense, None, multimask_output=None, path=path)
        assert is_channels_last(fast.mask_feature) and not is_channels_last(standard.mask_feature)
        with torch.no_grad():
            teacher = model.train().decode(features, sparse, dense, image_index, path=path)
        model.eval()
        assert not is_channels_last(teacher.mask_feature)
        scale = float(standard.mask_logits.abs().max())
        for ours, reference in ((fast, standard), (one_image, standard_one)):
            torch.testing.assert_close(ours.mask_logits, reference.mask_logits.detach(), atol=1e-4 * scale, rtol=0)
            torch.testing.assert_close(ours.iou_predictions, reference.iou_predictions.detach())
        if path == "sam":
            torch.testing.assert_close(fast.fused_feature, standard.fused_feature.detach(), atol=1e-4, rtol=1e-4)
