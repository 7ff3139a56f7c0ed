"""Checkpoint formats, strict loading with named keys, corrupt files, the verified download cache."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustprior.io.checkpoint import (
    OFFICIAL_KEY_MAP,
    CheckpointError,
    load_checkpoint,
    map_official_keys,
    save_checkpoint,
)
from robustprior.io.hub import CheckpointSource, download_checkpoint, file_sha256
from robustprior.load import build_robust_sam, load_model
from robustprior.load import load_robust_sam


@pytest.fixture()
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_robust_sam("tiny", random_init=True)


def _decode(model, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        features = model.encode_image(model.preprocess(255 * torch.rand(1, 3, 256, 256, generator=generator)))
        sparse, dense = model.encode_prompts(points=(torch.tensor([[[60.0, 70.0]]]), torch.ones(1, 1)))
        return model.decode(features, sparse, dense, multimask_output=True).mask_logits


def test_safetensors_round_trip(tiny, tmp_path: Path) -> None:
    path = save_checkpoint(tiny, tmp_path / "model.safetensors")
    loaded, source = load_model(path)
    assert source.kind == "trained" and source.path == path
    assert loaded.config == tiny.config
    torch.testing.assert_close(_decode(loaded), _decode(tiny), rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # the atomic write left nothing behind


def test_sam_checkpoint_loads_base_and_copies_tokens(tiny, tmp_path: Path) -> None:
    sam_state = {k: v for k, v in tiny.state_dict().items() if not k.startswith("robust.")}
    torch.save(sam_state, tmp_path / "sam.pth")
    fresh = build_robust_sam("tiny", random_init=True)
    assert load_checkpoint(fresh, tmp_path / "sam.pth") == "sam"
    for key, value in sam_state.items():
        assert torch.equal(fresh.state_dict()[key], value)
    assert torch.equal(fresh.robust.output_tokens.weight, tiny.mask_decoder.mask_tokens.weight)


def test_official_key_map_covers_every_robust_tensor() -> None:
    from robust_segment_anything.build_sam import _build_sam

    official = _build_sam(encoder_embed_dim=96, encoder_depth=2, encoder_num_heads=3, encoder_global_attn_indexes=[1])
    ours = build_robust_sam("vit_b", random_init=True, token_mode="release", encoder_dim=96, encoder_depth=2, encoder_heads=3,
                            global_attention_indexes=(1,))
    mapped = map_official_keys(official.state_dict())
    assert set(mapped) == set(ours.state_dict())
    assert all(prefix.startswith("mask_decoder.") for prefix in OFFICIAL_KEY_MAP)


def test_missing_and_unexpected_keys_are_named(tiny, tmp_path: Path) -> None:
    state = dict(tiny.state_dict())
    del state["robust.robust_mlp.layers.0.weight"]
    state["robust.extra.weight"] = torch.zeros(1)
    save_path = tmp_path / "broken.pth"
    torch.save(state, save_path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(build_robust_sam("tiny", random_init=True), save_path)
    assert "robust.robust_mlp.layers.0.weight" in str(error.value)
    assert "robust.extra.weight" in str(error.value)


def test_checkpoint_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    small_vit_b = build_robust_sam("vit_b", random_init=True, encoder_depth=1, global_attention_indexes=(0,))
    torch.save(small_vit_b.state_dict(), tmp_path / "vit_b.pth")
    with pytest.raises(CheckpointError, match="model type 'tiny' contradicts .* holds model type 'vit_b'"):
        build_robust_sam("tiny", tmp_path / "vit_b.pth")
    load_checkpoint(small_vit_b, tmp_path / "vit_b.pth")
    with pytest.raises(CheckpointError, match="looks like a vit_b model"):
        load_checkpoint(build_robust_sam("tiny", random_init=True), tmp_path / "vit_b.pth")


def test_truncated_checkpoint_is_a_clear_error(tiny, tmp_path: Path) -> None:
    full = tmp_path / "full.pth"
    torch.save(tiny.state_dict(), full)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        build_robust_sam("tiny", truncated)
    safetensors_path = save_checkpoint(tiny, tmp_path / "model.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(safetensors_path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(cut)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "absent.safetensors")


def test_official_checkpoint_requires_release_tokens(tmp_path: Path) -> None:
    from robust_segment_anything.build_sam import _build_sam

    official = _build_sam(encoder_embed_dim=96, encoder_depth=2, encoder_num_heads=3, encoder_global_attn_indexes=[1])
    torch.save({f"module.{k}": v for k, v in official.state_dict().items()}, tmp_path / "official.pth")
    with pytest.raises(ValueError, match="token_mode='release'"):
        build_robust_sam("vit_b", tmp_path / "official.pth", token_mode="paper", encoder_dim=96, encoder_depth=2,
                         encoder_heads=3, global_attention_indexes=(1,))


def test_download_verifies_and_caches(tmp_path: Path) -> None:
    payload = tmp_path / "source" / "weights.pth"
    payload.parent.mkdir()
    payload.write_bytes(b"robustprior test payload" * 100)
    good = CheckpointSource(payload.as_uri(), "tiny", sha256=file_sha256(payload))
    cache = tmp_path / "cache"
    path = download_checkpoint("test", cache, progress=False, source=good)
    assert path.read_bytes() == payload.read_bytes()
    payload.unlink()  # the second call must be served from the cache
    assert download_checkpoint("test", cache, progress=False, source=good) == path

    payload.write_bytes(b"tampered")
    bad = CheckpointSource(payload.as_uri().replace("weights", "weights"), "tiny", sha256="0" * 64)
    with pytest.raises(ValueError, match="SHA-256"):
        download_checkpoint("test", tmp_path / "other", progress=False, source=bad)
    assert not any((tmp_path / "other").iterdir())  # nothing unverified is kept


def test_unpublished_hash_is_recorded_on_first_download(tmp_path: Path) -> None:
    payload = tmp_path / "w.pth"
    payload.write_bytes(b"abc" * 50)
    source = CheckpointSource(payload.as_uri(), "tiny")
    path = download_checkpoint("x", tmp_path / "cache", progress=False, source=source)
    assert (path.parent / "w.pth.sha256").read_text().strip() == file_sha256(payload)
    path.write_bytes(b"corrupted later")
    with pytest.raises(ValueError, match="delete it"):
        download_checkpoint("x", tmp_path / "cache", progress=False, source=source)


def test_unknown_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown checkpoint"):
        download_checkpoint("sam_vit_z")
    with pytest.raises(FileNotFoundError, match="does not exist") as error:
        load_robust_sam("no/such/file.pth")
    assert "sam_tiny" in str(error.value) and "robustsam_vit_b" in str(error.value)


def test_mobile_sam_checkpoint_loads_into_vit_t(tmp_path: Path) -> None:
    """A MobileSAM state dict (mobile_sam.pt format) loads strictly into the vit_t base."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mobile_sam import sam_model_registry as mobile_sam_registry

    torch.manual_seed(0)
    mobile = mobile_sam_registry["vit_t"]()
    torch.save(mobile.state_dict(), tmp_path / "mobile_sam.pt")
    ours = load_robust_sam(tmp_path / "mobile_sam.pt", decoder_path="sam")
    assert ours.config["model_type"] == "vit_t"
    for key, value in mobile.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key


def test_bundled_tiny_default_names_the_file_used(capsys: pytest.CaptureFixture) -> None:
    """No checkpoint -> the bundled RobustSAM-tiny, said in one line naming the file; by name: silent."""
    from robustprior.load import BUNDLED

    loaded = load_robust_sam()
    notice = capsys.readouterr().err
    assert notice.count("\n") == 1 and str(BUNDLED["tiny"]) in notice and "RobustSAM-tiny" in notice
    named = load_robust_sam("tiny")
    assert capsys.readouterr().err == ""
    assert all(torch.equal(named.state_dict()[k], v) for k, v in loaded.state_dict().items())


def test_missing_bundled_weights_are_an_error_not_a_random_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from robustprior import load

    monkeypatch.setitem(load.BUNDLED, "tiny", tmp_path / "robustsam_tiny.safetensors")
    with pytest.raises(FileNotFoundError, match="random_init=True"):
        load_robust_sam()


def test_update_metadata_keeps_the_tensors_byte_for_byte(tiny, tmp_path: Path) -> None:
    from safetensors import safe_open

    from robustprior.io.checkpoint import update_metadata

    path = save_checkpoint(tiny, tmp_path / "half.safetensors", {"note": "old"}, dtype=torch.float16)
    data_before = path.read_bytes()
    update_metadata(path, {"note": "new", "amg_settings": "{}"})
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        assert handle.get_tensor("robust.robust_mlp.layers.0.weight").dtype == torch.float16
    assert metadata["note"] == "new" and metadata["amg_settings"] == "{}" and metadata["format"] == "robustprior"
    header = 8 + int.from_bytes(data_before[:8], "little")
    assert path.read_bytes()[-(len(data_before) - header):] == data_before[header:]
