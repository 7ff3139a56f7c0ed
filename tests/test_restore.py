"""restoration.restore: a user's images restored with a trained run and its own prior, as the trainer's
evaluation restores them; folders, tiling, overwrite refusal, one-line errors, input conversions and the
bundled-model warning."""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pytest

import robustprior.load
from restoration.paired_data import locate_dataset
from restoration.paired_data import read_rgb
import restoration.restore
from restoration.restore import TILED_TOLERANCE, RestoreError, add_restore_arguments, restore_paths, run_restore
from restoration.train import RestorationTrainer
from robustprior.data.scenes import SceneConfig, write_sots_dataset

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py

HONESTY = "was trained on generated scenes"


def tiny_options(data: Path, total_iter: int = 2) -> dict:
    """A 4-wide two-level SAM-guided dehazing network on the bundled RobustSAM-tiny prior (4 point prompts)."""
    return {
        "name": "dehaze_robustsam",
        "manual_seed": 5,
        "network_g": {"type": "SAMGuidedDehazeNet", "prior": "grayscale", "width": 4, "enc_blk_nums": [1, 1],
                      "middle_blk_num": 1, "dec_blk_nums": [1, 1]},
        "datasets": {"train": {**locate_dataset("sots", data / "train"), "gt_size": 32, "use_flip": True,
                               "batch_size_per_gpu": 2},
                     "val": locate_dataset("sots", data / "test", "outdoor")},
        "train": {"total_iter": total_iter},
        "logger": {"print_freq": 1},
        "prior": {"kind": "robustsam", "checkpoint": "tiny", "points_per_side": 2, "pred_iou_thresh": 0.0,
                  "stability_score_thresh": 0.0, "num_segments": 40},
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A recipe-like output folder ``out/runs/robustsam/seed0`` trained 2 iterations on generated 48 x 48
    SOTS-like data (2 train, 2 test images), its evaluation images written; plus a 96 x 96 generated image."""
    root = tmp_path_factory.mktemp("restore")
    data = root / "data"
    config = SceneConfig(image_size=(48, 48), object_count_range=(2, 3))
    write_sots_dataset(data / "train", 2, seed=3, config=config, progress=False)
    write_sots_dataset(data / "test", 2, seed=4, config=config, progress=False)
    write_sots_dataset(root / "large", 1, seed=6, config=SceneConfig(image_size=(96, 96)), progress=False)
    output = root / "out"
    run_dir = output / "runs" / "robustsam" / "seed0"
    results = RestorationTrainer(tiny_options(data), run_dir, device="cpu", progress=False).run()
    return {"root": root, "data": data, "output": output, "run": run_dir, "results": results,
            "large": next((root / "large" / "outdoor" / "hazy").iterdir())}


def parse(argv: list[str]) -> argparse.Namespace:
    """A recipe-like command line: the recipe's own --output/--overwrite/--device/--no-progress plus the restore options."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", default="outputs/dehaze")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true")
    add_restore_arguments(parser)
    return parser.parse_args([*argv, "--no-progress", "--device", "cpu"])


@pytest.fixture()
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundled-model warning prints once per process: start each test with none printed yet."""
    monkeypatch.setattr(robustprior.load, "_warned_domains", set())


def evaluation_image(trained: dict, lq_path: str | Path) -> np.ndarray:
    """What the trainer's own evaluation wrote for a test image."""
    record = next(r for r in trained["results"]["metrics"]["per_image"] if Path(r["lq_path"]) == Path(lq_path))
    return read_rgb(trained["run"] / record["output"])


def max_difference(first: np.ndarray, second: np.ndarray) -> int:
    return int(np.abs(first.astype(np.int16) - second.astype(np.int16)).max())


def test_a_test_image_restores_as_the_trainer_evaluated_it(trained: dict, tmp_path: Path, fresh_warnings: None,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    lq_path = Path(trained["results"]["metrics"]["per_image"][0]["lq_path"])
    restored_dir = tmp_path / "restored"
    status = run_restore(parse(["--restore", str(lq_path), "--output", str(trained["output"]),
                                "--restored", str(restored_dir)]), "dehaze")
    captured = capsys.readouterr()
    assert status == 0, captured.err
    output = restored_dir / f"{lq_path.stem}.png"
    restored = read_rgb(output)
    assert restored.shape == read_rgb(lq_path).shape
    assert max_difference(restored, evaluation_image(trained, lq_path)) <= 1
    lines = captured.out.strip().splitlines()
    assert lines[0].startswith(f"{lq_path} (48x48, ") and lines[0].endswith(f"-> {output}")
    assert lines[-1].startswith(f"restored 1 image(s) with {trained['run']} (iteration 2")
    assert HONESTY not in captured.err  # a generated scene: the bundled model's own domain

    # the prior computed afresh from the run's options (not read from its cache) gives the same image
    fresh = restore_paths(trained["run"], lq_path, tmp_path / "fresh", cache_dir=tmp_path / "fresh_cache")
    assert any((tmp_path / "fresh_cache").rglob("*.safetensors"))
    assert max_difference(read_rgb(fresh[0]), evaluation_image(trained, lq_path)) <= 1


def test_a_folder_restores_every_image(trained: dict, tmp_path: Path) -> None:
    folder = trained["data"] / "test" / "outdoor" / "hazy"
    inputs = sorted(folder.iterdir())
    written = restore_paths(trained["run"], folder, tmp_path / "restored")
    assert written == [tmp_path / "restored" / f"{path.stem}.png" for path in inputs] and len(written) == 2
    for lq_path, output in zip(inputs, written):
        assert max_difference(read_rgb(output), evaluation_image(trained, lq_path)) <= 1


def test_tiled_and_untiled_agree_within_the_documented_tolerance(trained: dict, tmp_path: Path) -> None:
    lines: list[str] = []
    whole = read_rgb(restore_paths(trained["run"], trained["large"], tmp_path / "whole", tile=0, log=lines.append)[0])
    tiled = read_rgb(restore_paths(trained["run"], trained["large"], tmp_path / "tiled", tile=64, overlap=32,
                                   log=lines.append)[0])
    assert "whole) ->" in lines[0] and "tiled 64/32) ->" in lines[2]  # 2 x 2 windows did run
    assert whole.shape == tiled.shape == (96, 96, 3)
    difference = np.abs(whole.astype(np.float64) - tiled.astype(np.float64))
    assert difference.max() <= TILED_TOLERANCE and difference.mean() <= 0.05
    automatic = read_rgb(restore_paths(trained["run"], trained["large"], tmp_path / "auto")[0])
    assert np.array_equal(automatic, whole)  # no val.tile in the run: automatic tiling starts above 1024 px
    with pytest.raises(RestoreError, match=r"multiples of 4"):
        restore_paths(trained["run"], trained["large"], tmp_path / "odd", tile=30)


def test_an_existing_output_is_refused_unless_overwrite(trained: dict, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    lq_path = trained["large"]
    argv = ["--restore", str(lq_path), "--run", str(trained["run"]), "--restored", str(tmp_path)]
    output = tmp_path / f"{lq_path.stem}.png"
    output.write_bytes(b"the user's own file")
    assert run_restore(parse(argv), "dehaze") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(output) in error and "--overwrite" in error
    assert output.read_bytes() == b"the user's own file"
    assert run_restore(parse([*argv, "--overwrite"]), "dehaze") == 0
    assert read_rgb(output).shape == (96, 96, 3)
    assert not [path for path in tmp_path.iterdir() if ".partial" in path.name]


def test_problems_are_one_line_errors(trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = str(trained["large"])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(trained["large"].read_bytes()[:40])
    (tmp_path / "empty").mkdir()
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "file.txt").write_text("x")
    cases = [
        (["--restore", image, "--output", str(tmp_path / "nowhere")], "runs/robustsam/seed0 does not exist"),
        (["--restore", image, "--run", str(tmp_path / "plain")], "is not a run folder"),
        (["--restore", str(tmp_path / "missing.png"), "--run", str(trained["run"])], "missing.png does not exist"),
        (["--restore", str(tmp_path / "notes.txt"), "--run", str(trained["run"])], "notes.txt is not a readable image"),
        (["--restore", str(tmp_path / "broken.png"), "--run", str(trained["run"])], "broken.png is not a readable image"),
        (["--restore", str(tmp_path / "empty"), "--run", str(trained["run"])], "no images"),
    ]
    for argv, message in cases:
        assert run_restore(parse([*argv, "--restored", str(tmp_path / "out")]), "dehaze") == 2, message
        error = capsys.readouterr().err
        assert error.startswith("error: ") and error.count("\n") == 1 and message in error, error
    assert not (tmp_path / "out").exists()
    # a --restored that is a file is named before any prior is computed or PNG written
    assert run_restore(parse(["--restore", image, "--run", str(trained["run"]),
                              "--restored", str(tmp_path / "notes.txt")]), "dehaze") == 2
    error = capsys.readouterr().err
    assert error == f"error: --restored {tmp_path / 'notes.txt'} is a file, not a folder: choose a folder for the restored PNGs\n"


def test_an_unwritable_restored_folder_or_a_nan_image_is_refused_before_any_model_runs(
        trained: dict, tmp_path: Path, unwritable_folder: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(restoration.restore, "load_final_run", lambda *a, **k: pytest.fail("the run was loaded"))
    image = str(trained["large"])
    for restored in (unwritable_folder, unwritable_folder / "new"):
        assert run_restore(parse(["--restore", image, "--run", str(trained["run"]), "--restored", str(restored)]),
                           "dehaze") == 2
        error = capsys.readouterr().err
        assert error.startswith("error: --restored") and error.count("\n") == 1 and "is not writable" in error
    hdr = np.full((16, 16, 3), 0.5, np.float32)
    hdr[3, 3] = np.nan
    assert cv2.imwrite(str(tmp_path / "nan.tiff"), hdr)
    assert run_restore(parse(["--restore", str(tmp_path / "nan.tiff"), "--run", str(trained["run"]),
                              "--restored", str(tmp_path / "out")]), "dehaze") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "nan.tiff has 3 NaN or infinite float sample(s)" in error
    assert not (tmp_path / "out").exists()


def test_a_run_without_its_final_checkpoint_is_refused(trained: dict, tmp_path: Path) -> None:
    options = tiny_options(trained["data"], total_iter=2)
    options["prior"]["cache_dir"] = str(trained["run"] / "prior_cache")  # the priors are computed already
    trainer = RestorationTrainer(options, tmp_path / "run", device="cpu", progress=False)
    trainer.fit(until=1)
    trainer.close()
    with pytest.raises(RestoreError, match="stopped at iteration 1 of 2"):
        restore_paths(tmp_path / "run", trained["large"], tmp_path / "restored")


def test_grayscale_rgba_and_16_bit_inputs_restore_as_their_rgb(trained: dict, tmp_path: Path) -> None:
    rgb = read_rgb(trained["large"])
    grey = np.rint(rgb.mean(axis=2)).astype(np.uint8)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "rgb.png"), rgb[..., ::-1])
    cv2.imwrite(str(inputs / "rgba.png"), np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 128, np.uint8)]))
    cv2.imwrite(str(inputs / "deep.png"), rgb[..., ::-1].astype(np.uint16) * 257)
    cv2.imwrite(str(inputs / "grey.png"), grey)
    cv2.imwrite(str(inputs / "grey_as_rgb.png"), np.repeat(grey[..., None], 3, axis=2))
    lines: list[str] = []
    restored = {path.stem: read_rgb(path) for path in restore_paths(trained["run"], inputs, tmp_path / "out", log=lines.append)}
    assert np.array_equal(restored["rgba"], restored["rgb"]) and np.array_equal(restored["deep"], restored["rgb"])
    assert np.array_equal(restored["grey"], restored["grey_as_rgb"])
    notes = [line for line in lines if line.startswith("note: ")]
    assert any("rgba.png: alpha channel dropped" in line for line in notes)
    assert any("deep.png: 16-bit" in line for line in notes)
    assert any("grey.png: grayscale" in line for line in notes)
    assert len(notes) == 3


def test_the_bundled_prior_warns_on_an_image_that_is_not_a_generated_scene(
        trained: dict, tmp_path: Path, fresh_warnings: None, capsys: pytest.CaptureFixture[str]) -> None:
    photo = tmp_path / "photo.png"
    noise = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    cv2.imwrite(str(photo), noise)
    assert run_restore(parse(["--restore", str(photo), "--run", str(trained["run"]),
                              "--restored", str(tmp_path / "out")]), "dehaze") == 0
    error = capsys.readouterr().err
    assert [line for line in error.splitlines() if HONESTY in line] == [
        f"warning: the bundled RobustSAM-tiny model {HONESTY}; {robustprior.load.REAL_PHOTO_ADVICE}"]
    assert read_rgb(tmp_path / "out" / "photo.png").shape == (40, 56, 3)


def test_more_regions_than_the_runs_grey_levels_is_refused(trained: dict, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    restore_paths(trained["run"], trained["large"], tmp_path / "counted", log=lines.append)
    regions = int(lines[0].split(" regions")[0].rsplit(" ", 1)[1])
    assert regions >= 2
    load = restoration.restore.load_trained_run

    def with_fewer_grey_levels(run_dir: Path, device: str):  # a run whose images all had fewer regions
        run = load(run_dir, device)
        run.grey_scale = regions - 1
        return run

    monkeypatch.setattr(restoration.restore, "load_trained_run", with_fewer_grey_levels)
    with pytest.raises(RestoreError, match=f"has {regions} regions, but .* codes at most {regions - 1} grey levels"):
        restore_paths(trained["run"], trained["large"], tmp_path / "refused")
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").glob("*.png"))


def test_a_run_of_the_other_task_is_named(trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_restore(parse(["--restore", str(trained["large"]), "--run", str(trained["run"]),
                              "--restored", str(tmp_path)]), "deblur") == 0
    assert f"warning: {trained['run']} is a dehaze run (dehaze_robustsam), used here to deblur" in capsys.readouterr().err
