"""The one model loader: what it resolves, what it says, and the traps it closes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustprior import load
from robustprior.io.checkpoint import read_state_dict, save_checkpoint
from robustprior.load import (
    BUNDLED,
    UntrainedRobustPartsError,
    build_robust_sam,
    describe_checkpoint,
    inspect_checkpoint,
    load_model,
)

TINY = {"image_size": 128, "encoder_depth": 2, "global_attention_indexes": (1,)}  # a small random tiny model


@pytest.fixture()
def sam_only_checkpoint(tmp_path: Path) -> Path:
    """A SAM-only state dict (no robust keys), as ``sam_vit_*.pth`` files hold, for the full tiny size."""
    torch.manual_seed(0)
    model = build_robust_sam("tiny", random_init=True)
    path = tmp_path / "sam_tiny_only.pth"
    torch.save({k: v for k, v in model.state_dict().items() if not k.startswith("robust.")}, path)
    return path


def test_default_is_the_bundled_robustsam_tiny_and_the_notice_names_the_file(capsys) -> None:
    model, source = load_model()
    notice = capsys.readouterr().err
    assert source.kind == "bundled" and source.path == BUNDLED["tiny"] and source.robust_trained
    assert notice.count("\n") == 1 and str(BUNDLED["tiny"]) in notice and "RobustSAM-tiny" in notice
    assert not model.training and all(not p.requires_grad for p in model.image_encoder.parameters())


def test_sam_path_default_says_sam_tiny_not_robustsam(capsys) -> None:
    _, source = load_model(decoder_path="sam")
    notice = capsys.readouterr().err
    assert source.path == BUNDLED["sam_tiny"] and "SAM-tiny" in notice and str(BUNDLED["sam_tiny"]) in notice
    assert "RobustSAM" not in notice


def test_the_file_is_read_once(sam_only_checkpoint: Path, monkeypatch) -> None:
    reads = []
    monkeypatch.setattr(load, "read_state_dict", lambda path, **kw: reads.append(path) or read_state_dict(path, **kw))
    _, source = load_model(sam_only_checkpoint, decoder_path="sam")
    assert reads == [sam_only_checkpoint] and source.kind == "sam-only" and source.model_type == "tiny"


def test_sam_only_checkpoint_is_refused_for_the_robust_path_unless_allowed(sam_only_checkpoint: Path) -> None:
    with pytest.raises(UntrainedRobustPartsError, match="UNTRAINED") as error:
        load_model(sam_only_checkpoint)
    assert "--sam-baseline" in str(error.value) and "allow_untrained_robust" in str(error.value)
    model, source = load_model(sam_only_checkpoint, allow_untrained_robust=True)
    assert not source.robust_trained and "UNTRAINED" in source.describe("robust")
    assert torch.equal(model.robust.output_tokens.weight, model.mask_decoder.mask_tokens.weight)
    assert load_model(sam_only_checkpoint, decoder_path="sam")[1].describe("sam").startswith("SAM tiny")


def test_our_checkpoint_with_untouched_robust_parts_counts_as_untrained(tmp_path: Path) -> None:
    """A SAM checkpoint converted to safetensors without training: the Robust Output Tokens are still
    SAM's mask tokens bit for bit, so the robust path is refused; the bundled SAM-tiny is such a file."""
    model = build_robust_sam("tiny", random_init=True, **TINY)
    with torch.no_grad():
        model.robust.output_tokens.weight.copy_(model.mask_decoder.mask_tokens.weight)
    path = save_checkpoint(model, tmp_path / "converted.safetensors")
    with pytest.raises(UntrainedRobustPartsError):
        load_model(path)
    with pytest.raises(UntrainedRobustPartsError):
        load_model("sam_tiny")
    with torch.no_grad():
        model.robust.output_tokens.weight.add_(0.01)  # "trained"
    assert load_model(save_checkpoint(model, tmp_path / "trained.safetensors"))[1].kind == "trained"


def test_a_model_without_weights_needs_random_init() -> None:
    with pytest.raises(ValueError, match="random_init=True"):
        build_robust_sam("tiny")
    with pytest.raises(ValueError, match="random_init=True"):
        load.robust_sam_model_registry["tiny"]()
    model, source = load_model(None, "tiny", random_init=True, announce=False, **TINY)
    assert source.kind == "random" and "RANDOMLY INITIALISED" in source.describe()
    assert model.image_size == 128
    with pytest.raises(ValueError, match="WITHOUT weights"):
        load_model("tiny", "tiny", random_init=True)


def test_a_model_built_on_the_meta_device_stays_there() -> None:
    """Shapes without memory (the FLOP benchmark counts vit_h this way): the parameter counts the README
    lists, and no attempt to copy meta tensors to the CPU."""
    with torch.device("meta"):
        model = build_robust_sam("vit_b", random_init=True, token_mode="release")
    parameters = list(model.parameters())
    assert all(parameter.is_meta for parameter in parameters)
    total = sum(parameter.numel() for parameter in parameters)
    robust = sum(parameter.numel() for parameter in model.robust.parameters())
    assert round(total / 1e6, 1) == 153.2 and round(robust / 1e6, 1) == 59.4


def test_unknown_names_list_bundled_and_downloadable_names() -> None:
    with pytest.raises(ValueError) as error:
        load_model("robustsam_vit_z")
    message = str(error.value)
    assert all(name in message for name in ("tiny", "sam_tiny", "robustsam_vit_b", "sam_vit_h", "mobile_sam"))
    with pytest.raises(FileNotFoundError, match="sam_tiny"):
        load_model("missing/weights.pth")


def test_explicit_model_type_or_mode_contradicting_the_file_is_an_error(sam_only_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="contradicts"):
        load_model("tiny", "vit_b")
    with pytest.raises(ValueError, match="contradicts"):
        load_model(sam_only_checkpoint, "vit_l", decoder_path="sam")
    with pytest.raises(ValueError, match="fourier_mode"):
        load_model("tiny", fourier_mode="identity")
    assert load_model("tiny", "tiny", fourier_mode="paper")[1].model_type == "tiny"


def test_inspection_builds_nothing_and_downloads_nothing(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ROBUSTPRIOR_CACHE", str(tmp_path))
    monkeypatch.setattr(load, "build_from_config", lambda *a, **k: pytest.fail("inspection built a model"))
    assert inspect_checkpoint("robustsam_vit_b") is None  # not cached: not downloaded
    assert describe_checkpoint("robustsam_vit_b") == (
        "official RobustSAM vit_b (robustsam_vit_b, downloaded on first use, RobustSAM decoder path)")
    assert "UNTRAINED robust path" in describe_checkpoint("sam_vit_h", "robust")
    assert describe_checkpoint("sam_vit_h", "sam").startswith("SAM vit_h (sam_vit_h, downloaded on first use")
    assert describe_checkpoint("tiny", "sam") == "SAM-tiny (bundled robustsam_tiny.safetensors, SAM decoder path)"
    described = describe_checkpoint("sam_tiny", "robust")
    assert "UNTRAINED robust path" in described and "not RobustSAM" in described
    assert not any(tmp_path.iterdir())


def test_restoration_describes_priors_with_the_loader() -> None:
    from restoration.datasets import describe_prior_model

    assert describe_prior_model("robustsam", "tiny") == describe_checkpoint("tiny", "robust")
    assert describe_prior_model("sam", None) == describe_checkpoint(None, "sam")
    assert describe_prior_model("none", "tiny") == "none"


def test_domain_warning_is_one_line_once_and_only_off_domain(monkeypatch, tmp_path: Path, capsys) -> None:
    from robustprior.data.scenes import SceneConfig, write_instance_dataset

    monkeypatch.setattr(load, "_warned_domains", set())
    _, source = load_model("tiny")
    root = write_instance_dataset(tmp_path / "scenes", 1, seed=5, config=SceneConfig(image_size=(64, 64)), progress=False)
    assert not source.warn_outside_domain("robust", [root / "images" / "000001.png"])
    assert capsys.readouterr().err == ""
    photo = tmp_path / "photo.png"
    photo.write_bytes((root / "images" / "000001.png").read_bytes())  # same pixels, outside a scenes folder
    assert source.warn_outside_domain("robust", [photo]) and source.warn_outside_domain("robust", [None])
    assert capsys.readouterr().err == ("warning: the bundled RobustSAM-tiny model was trained on generated scenes; "
                                       "on real photos use --checkpoint robustsam_vit_b (or _l / _h; downloaded once)\n")
    _, other = load_model(Path(BUNDLED["tiny"]).parent / "robustsam_tiny.safetensors")
    assert other.kind == "bundled"  # the bundled file by path is still the scene-world model
    _, random_model = load_model(None, "tiny", random_init=True, announce=False, **TINY)
    assert not random_model.warn_outside_domain("robust", [photo])
