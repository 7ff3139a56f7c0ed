"""Smoke runs of the Table-8 recipes (recipes/dehaze.py, recipes/deblur.py) at toy scale."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from recipes.common import check_output, load_recipe_config, run_recipe  # noqa: E402
from restoration.train import RunExistsError  # noqa: E402

TOY_DATA = {
    "dehaze": {"image_size": [48, 48], "train_images": 4, "test_images": 2, "seed": 5},
    "deblur": {"image_size": [48, 48], "train_sequences": 2, "train_frames": 2, "test_sequences": 1,
               "test_frames": 2, "blur_frames": 3, "camera_shake": 0.3, "seed": 5},
}


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def toy_config(task: str, folder: Path) -> Path:
    """The embedded default shrunk to seconds: toy data, a 4-wide two-level network, 4 point prompts."""
    config = load_recipe_config(task, None)
    config["threads"] = 1
    config["recipe"]["generate"] = TOY_DATA[task]
    config["recipe"]["grid_images"] = 2
    config["network_g"].update(width=4, enc_blocks=[1, 1], dec_blocks=[1, 1])
    config["datasets"]["train"]["crop_size"] = 32
    config["train"]["batch_size"] = 2
    config["prior"].update(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0)  # some masks even untrained
    path = folder / f"{task}_toy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("task", ["dehaze", "deblur"])
def test_recipe_smoke_run_and_refusal(task: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out"
    argv = ["--config", str(toy_config(task, tmp_path)), "--output", str(output), "--iterations", "3", "--no-progress"]
    assert run_recipe(task, task, argv) == 0
    for name in ("report.md", "report.json", "grid.png"):
        assert (output / name).is_file() and (output / name).stat().st_size > 0
    report = json.loads((output / "report.json").read_text())
    assert list(report["rows"]) == ["none", "sam", "robustsam"]
    for row in report["rows"].values():
        assert math.isfinite(row["psnr"]) and math.isfinite(row["ssim"]) and row["iterations"] == 3
    assert "Our protocol" in (output / "report.md").read_text()
    assert f"Outputs: {output / 'report.md'}" in capsys.readouterr().out

    assert run_recipe(task, task, argv) != 0  # a second run into the same folder is refused
    assert str(output) in capsys.readouterr().err


def test_the_script_exits_nonzero_on_an_occupied_output(tmp_path: Path) -> None:
    output = tmp_path / "out"
    (output / "runs").mkdir(parents=True)
    completed = subprocess.run([sys.executable, str(REPO_ROOT / "recipes" / "dehaze.py"), "--output", str(output)],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode != 0
    assert str(output) in completed.stderr and "--overwrite" in completed.stderr


def test_overwrite_clears_runs_and_report_but_keeps_data(tmp_path: Path) -> None:
    for name in ("runs/sam", "data/train", "prior_cache/abc"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "report.md").write_text("old")
    with pytest.raises(RunExistsError, match=str(tmp_path)):
        check_output(tmp_path, resume=False, overwrite=False)
    check_output(tmp_path, resume=False, overwrite=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data", "prior_cache"]


def test_deblur_generate_settings_reach_the_generator(tmp_path: Path) -> None:
    from recipes.common import generate_gopro

    spec = {**TOY_DATA["deblur"], "camera_shake": 0.0, "camera_pan": 1.0, "camera_pan_angle": 90.0, "object_count_range": [3, 3],
            "max_object_speed": 0.0, "max_camera_speed": 0.0}
    generate_gopro(tmp_path, spec, progress=False)
    record = json.loads((tmp_path / "train" / "generation.json").read_text())
    assert (record["camera_pan"], record["camera_pan_angle"], record["camera_shake"], record["blur_frames"]) == (1.0, 90.0, 0.0, 3)
    from robustprior.data.scenes import SceneConfig, generate_scene

    config = SceneConfig(image_size=(48, 48), object_count_range=(3, 3), max_object_speed=0.0, max_camera_speed=0.0)
    scene = generate_scene(record["sequences"]["GOPR0001_11_00"]["scene_seed"], config)
    assert scene.object_count == 3 and not scene.motion.any() and scene.camera_motion == (0.0, 0.0)
    default = load_recipe_config("deblur", None)["recipe"]["generate"]
    assert default["camera_pan"] > 0 and default["camera_shake"] == 0  # the learnable default blur: a steady pan
