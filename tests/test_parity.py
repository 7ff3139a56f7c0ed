"""Parity with the official release (PyPI ``robust-segment-anything`` 1.0.0) on the same weights.

The package is the oracle: it builds a vit_b-shaped RobustSAM (random init, seeded, with randomised
BatchNorm statistics so those paths are exercised), saves it in its own format, and our model
loads that file strictly. The image encoder is cut to 3 blocks (global attention at block 2, the
complementary feature) to keep CI fast; the decoder side has the real vit_b shapes. Each encoder
runs once per module (the official one memoised on its exact input, ours in one predictor): the
encoders dominate the cost, and every test reads the same image.
Its ``SamPredictor`` is broken, so it is driven through ``Sam.predict`` as SPEC section 4 says.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustprior.load import build_robust_sam

robust_segment_anything = pytest.importorskip("robust_segment_anything")
from robust_segment_anything.build_sam import _build_sam  # noqa: E402
from robust_segment_anything.utils.transforms import ResizeLongestSide  # noqa: E402

ORIGINAL_SIZE = (600, 800)


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    official = _build_sam(encoder_embed_dim=768, encoder_depth=3, encoder_num_heads=12,
                          encoder_global_attn_indexes=[2], opt=object())
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in official.state_dict().items():
            if name.endswith("running_mean"):
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
            elif name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif ".BN." in name and tensor.is_floating_point():
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))
            elif "custom_robust_token" in name or "robust_mlp" in name:
                tensor.mul_(3.0)  # larger classifier weights: logits far from zero
    official.eval()
    path = tmp_path_factory.mktemp("official") / "robustsam_vit_b_random.pth"
    torch.save(official.state_dict(), path)
    official.image_encoder.forward = _memoised(official.image_encoder.forward)
    return official, path


def _memoised(forward):
    """``forward`` that recomputes only for an input not exactly equal to the last one."""
    last: dict[str, object] = {}

    def copy(value):  # a fresh copy each call: a caller changing its outputs in place changes no other's
        return value.clone() if isinstance(value, torch.Tensor) else type(value)(copy(item) for item in value)

    def call(images: torch.Tensor):
        if "input" not in last or not torch.equal(last["input"], images):
            last.update(input=images.clone(), output=forward(images))
        return copy(last["output"])

    return call


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 30, 40, generator=generator), ORIGINAL_SIZE,
                                             mode="bilinear")
    return (255 * smooth).round()


@pytest.fixture(scope="module")
def our_predictor(official_checkpoint, image):
    """Our model on the official file (the package's no-op Fourier block), the image encoded once."""
    from robustprior.predictor import RobustSAMPredictor

    _, path = official_checkpoint
    ours = build_robust_sam("vit_b", path, fourier_mode="identity", encoder_depth=3, global_attention_indexes=(2,))
    assert ours.config["token_mode"] == "release"
    predictor = RobustSAMPredictor(ours)
    predictor.set_torch_image(ResizeLongestSide(1024).apply_image_torch(image), ORIGINAL_SIZE)
    return predictor


def _official_predict(official, image, prompt: dict, multimask: bool) -> dict:
    transform = ResizeLongestSide(1024)
    record = {"image": transform.apply_image_torch(image), "original_size": ORIGINAL_SIZE}
    if "points" in prompt:
        record["point_coords"] = transform.apply_coords_torch(prompt["points"], ORIGINAL_SIZE)
        record["point_labels"] = prompt["labels"]
    if "box" in prompt:
        record["boxes"] = transform.apply_boxes_torch(prompt["box"], ORIGINAL_SIZE)
    return official.predict(object(), [record], multimask_output=multimask)[0]


PROMPTS = {
    "point": {"points": torch.tensor([[[300.0, 200.0]]]), "labels": torch.ones(1, 1)},
    "box": {"box": torch.tensor([[150.0, 100.0, 520.0, 430.0]])},
}


@pytest.mark.parametrize("prompt_name", sorted(PROMPTS))
def test_matches_official_release(official_checkpoint, our_predictor, image, prompt_name: str) -> None:
    official, _ = official_checkpoint
    predictor = our_predictor
    prompt = PROMPTS[prompt_name]
    for multimask in (False, True):
        reference = _official_predict(official, image, prompt, multimask)
        points = prompt.get("points")
        coords = None if points is None else predictor.transform.apply_coords_torch(points, ORIGINAL_SIZE)
        boxes = prompt.get("box")
        boxes = None if boxes is None else predictor.transform.apply_boxes_torch(boxes, ORIGINAL_SIZE)
        _, iou, logits = predictor.predict_torch(coords, prompt.get("labels"), boxes, multimask_output=multimask)
        expected_logits = reference["low_res_logits"][:, :3] if multimask else reference["low_res_logits"]
        assert expected_logits.abs().max() > 0.5  # a meaningful signal, not near-zero noise
        assert (logits - expected_logits).abs().max() < 1e-4
        assert (iou - reference["iou_predictions"]).abs().max() < 1e-4


def test_paper_fourier_departs_from_the_pypi_package(official_checkpoint, our_predictor, image) -> None:
    """Our default (paper) Fourier block really differs from the package's no-op."""
    official, path = official_checkpoint
    ours = build_robust_sam("vit_b", path, encoder_depth=3, global_attention_indexes=(2,))
    encoder, identity_encoder = ours.image_encoder.state_dict(), our_predictor.model.image_encoder.state_dict()
    assert encoder.keys() == identity_encoder.keys()
    assert all(torch.equal(tensor, identity_encoder[name]) for name, tensor in encoder.items())  # same encoder:
    features = our_predictor.features  # its features of the same image are the predictor's
    transform = ResizeLongestSide(1024)
    prompt = PROMPTS["point"]
    reference = _official_predict(official, image, prompt, multimask=False)
    with torch.no_grad():
        sparse, dense = ours.encode_prompts(points=(transform.apply_coords_torch(prompt["points"], ORIGINAL_SIZE),
                                                    prompt["labels"]))
        logits = ours.decode(features, sparse, dense).mask_logits
    assert (logits - reference["low_res_logits"]).abs().max() > 1e-2
