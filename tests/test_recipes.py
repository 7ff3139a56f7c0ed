"""The Table-8 recipes (recipes/dehaze.py, recipes/deblur.py -> restoration.table8) at toy scale: seeds,
control rows, parallel jobs, the report, the config schema and the restore command."""
from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from restoration.table8 import job_list, load_recipe_config, open_output, run_recipe  # noqa: E402
from robustprior.training import RUN_MARKER, ConfigError, RunExistsError, RunFolderError  # noqa: E402

TOY_DATA = {
    "dehaze": {"image_size": [48, 48], "train_images": 4, "test_images": 2, "seed": 5},
    "deblur": {"image_size": [48, 48], "train_sequences": 2, "train_frames": 2, "test_sequences": 2,
               "test_frames": 2, "blur_frames": 3, "camera_shake": 0.3, "seed": 5},
}


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def toy_config(task: str, folder: Path) -> Path:
    """The embedded default shrunk to seconds: toy data, a 4-wide two-level network, 4 point prompts."""
    config = load_recipe_config(task, None)
    config["threads"] = 1
    config["recipe"].update(generate=TOY_DATA[task], grid_images=2, seeds=[0, 1], parallel=1,
                            swap_rows=["gt_masks", "sam"])
    config["network_g"].update(width=4, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])
    config["datasets"]["train"].update(gt_size=32, batch_size_per_gpu=2)
    config["prior"].update(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0)  # some masks even untrained
    path = folder / f"{task}_toy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("task", ["dehaze", "deblur"])
def test_recipe_smoke_run_and_refusal(task: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out"
    argv = ["--config", str(toy_config(task, tmp_path)), "--output", str(output), "--iterations", "2", "--no-progress"]
    assert run_recipe(task, task, argv) == 0
    for name in ("report.md", "report.json", "grid.png"):
        assert (output / name).is_file() and (output / name).stat().st_size > 0
    report = json.loads((output / "report.json").read_text())
    assert list(report["rows"]) == ["none", "sam", "robustsam", "gt_masks", "shuffled_masks"]
    assert sorted(path.relative_to(output / "runs").as_posix() for path in (output / "runs").glob("*/seed*")
                  if path.is_dir()) == ["gt_masks/seed0", "none/seed0", "robustsam/seed0", "robustsam/seed1",
                                         "sam/seed0", "sam/seed1", "shuffled_masks/seed0"]
    for key, row in report["rows"].items():
        assert math.isfinite(row["psnr"]) and row["iterations"] == 2
        assert sorted(row["seeds"]) == (["0", "1"] if key in ("sam", "robustsam") else ["0"])
        if key != "none":
            assert row["quality"]["masks_per_image"] >= 0 and "cost_db" in row["reliance"]
    assert report["rows"]["gt_masks"]["quality"]["mean_best_iou"] == pytest.approx(1.0)
    verdict = report["verdict"]
    assert verdict["seeds"] == [0, 1] and verdict["verdict"] in ("held", "reversed", "inconclusive")
    text = (output / "report.md").read_text()
    assert f"Verdict: **{verdict['verdict']}**" in text and "Our protocol" in text and "Smoke scale" in text
    assert "gt_masks_zeroing_cost_db" in report["targets"]
    assert ("no_prior_gain_db" in report["targets"]) == (task == "deblur")
    # power: the ceiling (one gt_masks seed: images as replicates) and the retrain verdict's MDD
    ceiling = report["power"]["ceiling"]
    gt, sam = ({r["name"]: r["psnr"] for r in json.loads((output / "runs" / row / "seed0" / "results.json").read_text())
                ["metrics"]["per_image"]} for row in ("gt_masks", "sam"))
    assert ceiling["mean"] == pytest.approx(sum(gt[name] - sam[name] for name in gt) / len(gt))
    assert ceiling["replicates"] == len(gt) >= 2 and ceiling["mdd"] is not None and verdict["mdd"] is not None
    assert "minimal detectable difference (MDD)" in text and "MDD = (t(1 - alpha/2, n - 1)" in text
    # the test-time swap: the SAM-trained networks swapped to SAM's priors score what the trainer measured
    swap = report["swap"]
    assert set(swap) == {"gt_masks", "sam"} and swap["sam"]["seeds"] == [0, 1] and swap["gt_masks"]["seeds"] == [0]
    assert swap["sam"]["psnr"]["sam"] == pytest.approx(swap["sam"]["psnr"]["own"], abs=0.05)
    assert swap["sam"]["ceiling"] is None and swap["gt_masks"]["ceiling"]["design"] == "swap"
    assert swap["gt_masks"]["verdict"]["mean"] == pytest.approx(
        swap["gt_masks"]["psnr"]["robustsam"] - swap["gt_masks"]["psnr"]["sam"])
    assert "Design: test-time prior swap" in text and "Design: retrain per prior" in text
    assert f"Outputs: {output / 'report.md'}" in capsys.readouterr().out

    assert run_recipe(task, task, argv) != 0  # a second run into the same folder is refused
    assert str(output) in capsys.readouterr().err

    restored = tmp_path / "restored"  # --restore with the trained RobustSAM-prior run, seed 1
    image = sorted((output / "data").rglob("hazy/*.jpg" if task == "dehaze" else "test/*/blur/*.png"))[0]
    assert run_recipe(task, task, ["--output", str(output), "--restore", str(image), "--seed", "1",
                                   "--restored", str(restored), "--no-progress"]) == 0
    assert (restored / f"{image.stem}.png").is_file()
    capsys.readouterr()
    assert run_recipe(task, task, ["--output", str(output), "--restore", str(image), "--seed", "1",
                                   "--restored", str(restored)]) == 2  # an existing output is kept
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert run_recipe(task, task, ["--output", str(output), "--restore", str(tmp_path / "broken.png"),
                                   "--restored", str(restored)]) == 2
    assert "broken.png is not a readable image" in capsys.readouterr().err


def test_control_rows_are_dropped_on_data_without_instance_maps(tmp_path: Path, capsys) -> None:
    config_path = toy_config("dehaze", tmp_path)
    config = yaml.safe_load(config_path.read_text())
    config["recipe"].update(rows=["none", "gt_masks"], seeds=[0])
    config_path.write_text(yaml.safe_dump(config))
    assert run_recipe("dehaze", "dehaze", ["--config", str(config_path), "--output", str(tmp_path / "first"),
                                           "--iterations", "1", "--no-progress"]) == 0
    for instances in (tmp_path / "first" / "data").rglob("instances"):  # the same data without the generator's maps
        for file in instances.iterdir():
            file.unlink()
        instances.rmdir()
    assert run_recipe("dehaze", "dehaze", ["--config", str(config_path), "--output", str(tmp_path / "real"),
                                           "--data-root", str(tmp_path / "first" / "data"), "--iterations", "1",
                                           "--no-progress"]) == 0
    report = json.loads((tmp_path / "real" / "report.json").read_text())
    assert list(report["rows"]) == ["none"] and "gt_masks" in report["setup"]["dropped_rows"]
    assert "Ground-truth masks (control) left out: the data has no ground-truth instance maps" in (
        tmp_path / "real" / "report.md").read_text()


def test_recipe_config_schema_and_jobs(tmp_path: Path) -> None:
    config = load_recipe_config("deblur", None)
    assert job_list(config, config["recipe"]["rows"]) == [
        ("none", 0), ("sam", 0), ("sam", 1), ("sam", 2), ("robustsam", 0), ("robustsam", 1), ("robustsam", 2),
        ("gt_masks", 0), ("shuffled_masks", 0)]
    text = (REPO_ROOT / "restoration" / "options" / "deblur_default.yaml").read_text()
    (tmp_path / "typo.yaml").write_text(text.replace("  seeds: [0, 1, 2]", "  sedes: [0, 1, 2]"))
    with pytest.raises(ConfigError, match=r"unknown key 'recipe.sedes' \(did you mean 'recipe.seeds'\?\)"):
        load_recipe_config("deblur", tmp_path / "typo.yaml")
    (tmp_path / "rows.yaml").write_text(text.replace("  rows: [none, sam, robustsam, gt_masks, shuffled_masks]",
                                                     "  rows: [none, sam, oracle]"))
    with pytest.raises(ConfigError, match="rows must be distinct names"):
        load_recipe_config("deblur", tmp_path / "rows.yaml")
    (tmp_path / "scene.yaml").write_text(text.replace("    seed: 2024", "    seed: 2024\n    scene: {colour: 3}"))
    with pytest.raises(ConfigError, match="not a SceneConfig setting"):
        load_recipe_config("deblur", tmp_path / "scene.yaml")
    with pytest.raises(Exception, match="not 'dehaze'"):
        load_recipe_config("dehaze", REPO_ROOT / "restoration" / "options" / "deblur_default.yaml")


def small_config(folder: Path, rows: list[str], parallel: int = 1, **prior: float) -> Path:
    """:func:`toy_config` (dehaze) with only ``rows``, one seed and ``parallel`` jobs at a time."""
    config = yaml.safe_load(toy_config("dehaze", folder).read_text())
    config["recipe"].update(rows=rows, seeds=[0], parallel=parallel)
    config.setdefault("logger", {})["print_freq"] = 1
    config["prior"].update(prior)
    path = folder / f"small_{'_'.join(rows)}_{parallel}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_overwrite_refuses_a_folder_the_recipe_did_not_make(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The data-loss case, the issue's command line (run_recipe is what recipes/dehaze.py runs with its
    arguments; the script itself runs in the interrupt test): a folder without the marker loses nothing."""
    output = tmp_path / "U"
    (output / "runs").mkdir(parents=True)
    (output / "runs" / "mystuff.txt").write_text("mine")
    (output / "report.md").write_text("r")
    assert run_recipe("dehaze", "dehaze", ["--output", str(output), "--overwrite", "--iterations", "3",
                                           "--seeds", "0"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: ")
    assert str(output) in error and "not a robustprior run folder" in error
    assert (output / "runs" / "mystuff.txt").read_text() == "mine" and (output / "report.md").read_text() == "r"
    assert sorted(path.name for path in output.iterdir()) == ["report.md", "runs"]  # nothing added either


def _fake_recipe_folder(output: Path) -> None:
    """What a finished recipe leaves: data, priors, a run of restoration.train with its logs, the report."""
    run = output / "runs" / "sam" / "seed0"
    for folder in ("data/train", "prior_cache/abc", "restored", run / "checkpoints", run / "images"):
        (output / folder).mkdir(parents=True, exist_ok=True)
    (run / RUN_MARKER).write_text(json.dumps({"kind": "restoration"}))
    for name in ("config.yaml", "train_log.csv", "results.json"):
        (run / name).write_text("x")
    for name in ("runs/sam/seed0.yaml", "runs/sam/seed0.log", "report.md", "report.json", "grid.png",
                 "recipe_config.yaml", "restored/photo.png", ".report.md.a1b2c3d4.partial"):  # a killed write's
        (output / name).write_text("x")


def test_overwrite_deletes_only_what_the_recipe_wrote(tmp_path: Path) -> None:
    output = tmp_path / "out"
    open_output(output, "dehaze", resume=False, overwrite=False).close()  # a new recipe folder: its marker
    _fake_recipe_folder(output)
    with pytest.raises(RunExistsError, match="pass --resume to continue it or --overwrite"):
        open_output(output, "dehaze", resume=False, overwrite=False)
    with pytest.raises(RunFolderError, match="holds a dehaze_recipe run, not a deblur_recipe run"):
        open_output(output, "deblur", resume=False, overwrite=True)
    planted = [output / "notes.txt", output / "runs" / "mine.txt", output / "runs" / "sam" / "todo.md",
               output / "runs" / "sam" / "seed0" / "plot.png"]
    for path in planted:
        path.write_text("mine")
    before = sorted(path.relative_to(output) for path in output.rglob("*"))
    with pytest.raises(RunFolderError) as refusal:
        open_output(output, "dehaze", resume=False, overwrite=True)
    message = str(refusal.value)
    assert "\n" not in message and "nothing was changed or deleted" in message
    assert all(str(path.relative_to(output)) in message for path in planted)
    assert sorted(path.relative_to(output) for path in output.rglob("*")) == before
    for path in planted:
        path.unlink()
    open_output(output, "dehaze", resume=False, overwrite=True).close()
    assert sorted(path.name for path in output.iterdir()) == [RUN_MARKER, "data", "prior_cache", "recipe_config.yaml",
                                                              "restored"]
    assert (output / "restored" / "photo.png").is_file() and (output / "prior_cache" / "abc").is_dir()


def test_resume_refuses_changed_settings_unless_allowed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "C"
    argv = ["--config", str(small_config(tmp_path, ["none"])), "--output", str(output), "--seeds", "0", "--no-progress"]
    assert run_recipe("dehaze", "dehaze", [*argv, "--iterations", "2"]) == 0
    capsys.readouterr()
    assert run_recipe("dehaze", "dehaze", [*argv, "--iterations", "3", "--resume"]) == 2
    error = capsys.readouterr().err
    assert "train.total_iter: 2 -> 3" in error and "--allow-config-change" in error
    assert yaml.safe_load((output / "recipe_config.yaml").read_text())["train"]["total_iter"] == 2
    assert not (output / "config_changes.yaml").exists()
    assert run_recipe("dehaze", "dehaze", [*argv, "--iterations", "2", "--resume"]) == 0  # the same settings
    assert "1 training jobs (1 already finished)" in capsys.readouterr().out
    assert run_recipe("dehaze", "dehaze", [*argv, "--iterations", "3", "--resume", "--allow-config-change"]) == 0
    assert "1 training jobs (0 already finished)" in capsys.readouterr().out
    assert yaml.safe_load((output / "recipe_config.yaml").read_text())["train"]["total_iter"] == 3
    changes = yaml.safe_load((output / "config_changes.yaml").read_text())
    assert len(changes) == 1 and changes[0]["allowed_by"] == "--allow-config-change"
    assert changes[0]["changes"] == {"train.total_iter": {"from": 2, "to": 3}}
    run = output / "runs" / "none" / "seed0"
    assert json.loads((run / "results.json").read_text())["iterations"] == 3  # the runs did what the config says
    assert json.loads((output / "report.json").read_text())["rows"]["none"]["iterations"] == 3


def test_interrupted_recipe_stops_every_job_with_a_checkpoint_and_holds_its_lock(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "S"
    config = small_config(tmp_path, ["none", "gt_masks"], parallel=2)
    arguments = ["--config", str(config), "--output", str(output), "--iterations", "100000", "--no-progress"]
    recipe = subprocess.Popen([sys.executable, str(REPO_ROOT / "recipes" / "dehaze.py"), *arguments],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs = [output / "runs" / row / "seed0" / "train_log.csv" for row in ("none", "gt_masks")]
    try:
        deadline = time.monotonic() + 150  # a bound for a crowded CPU; about 25 s on 2 idle cores
        while not all(log.is_file() for log in logs) and recipe.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(log.is_file() for log in logs), "the jobs did not start training"
        children = [int(pid) for pid in Path(f"/proc/{recipe.pid}/task/{recipe.pid}/children").read_text().split()]
        assert len(children) == 2
        # a second recipe on the folder is refused before any work: the lock is taken first
        assert run_recipe("dehaze", "dehaze", [*arguments, "--resume"]) == 2
        assert "another process is using" in capsys.readouterr().err
        recipe.send_signal(signal.SIGTERM)
        _, stderr = recipe.communicate(timeout=120)
    finally:
        if recipe.poll() is None:
            recipe.kill()
    assert recipe.returncode == 143
    assert stderr.strip().splitlines()[-1] == "interrupted; resume with --resume" and "Traceback" not in stderr
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]  # no job outlived its recipe
    for row in ("none", "gt_masks"):
        run = output / "runs" / row / "seed0"
        pointer = json.loads((run / "checkpoints" / "latest.json").read_text())  # written on the way out
        assert pointer["iteration"] > 0
        assert "interrupted (SIGTERM); resume with --resume" in (output / "runs" / row / "seed0.log").read_text()


def test_output_file_unwritable_folder_and_bad_config_fail_before_any_work(
        tmp_path: Path, unwritable_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = small_config(tmp_path, ["none"])
    (tmp_path / "a_file").write_text("mine")
    cases = [(tmp_path / "a_file", "is a file, not a folder"), (unwritable_folder / "out", "is not writable"),
             (unwritable_folder, "is not writable")]
    for output, message in cases:
        for extra in ([], ["--overwrite"]):
            assert run_recipe("dehaze", "dehaze", ["--config", str(config), "--output", str(output), *extra]) == 2
            error = capsys.readouterr().err
            assert error.startswith("error: ") and error.count("\n") == 1 and message in error, error
    assert (tmp_path / "a_file").read_text() == "mine" and not list(unwritable_folder.iterdir())
    bad = yaml.safe_load(config.read_text())
    bad["train"]["optim_g"]["lr"] = -1.0  # only the training options' schema knows this is wrong
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert run_recipe("dehaze", "dehaze", ["--config", str(tmp_path / "bad.yaml"), "--output", str(tmp_path / "new")]) == 2
    assert "train.optim_g.lr" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # no data/ written before the config error
    assert run_recipe("dehaze", "dehaze", ["--config", str(config), "--output", str(tmp_path / "new"),
                                           "--seeds", "0,x"]) == 2
    assert "--seeds must be comma-separated integers" in capsys.readouterr().err
    assert run_recipe("dehaze", "dehaze", ["--config", str(small_config(tmp_path, ["none", "sam"])), "--output",
                                           str(tmp_path / "new"), "--sam-checkpoint", "nonsense"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--sam-checkpoint / recipe.checkpoints.sam: unknown checkpoint name" in error
    assert not (tmp_path / "new").exists()


def test_the_no_masks_warning_is_given_once_per_prior(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    config = small_config(tmp_path, ["none", "sam"], pred_iou_thresh=0.999, stability_score_thresh=0.999)
    assert run_recipe("dehaze", "dehaze", ["--config", str(config), "--output", str(tmp_path / "out"),
                                           "--iterations", "1", "--no-progress"]) == 0
    no_masks = [str(warning.message) for warning in recwarn if "no masks" in str(warning.message)]
    assert len(no_masks) == 1 and no_masks[0].startswith("SAMPrior: no masks for 6 of 6 images"), no_masks


def test_a_failing_parallel_job_stops_the_recipe_naming_its_log(tmp_path: Path) -> None:
    from restoration.table8 import _run_jobs_in_processes
    from robustprior.training import RunSetupError

    run_dir = tmp_path / "runs" / "sam" / "seed0"
    run_dir.parent.mkdir(parents=True)
    options = run_dir.parent / "seed0.yaml"
    options.write_text("name: broken\ntrain: {total_itr: 3}\n")  # a typo: the trainer refuses it
    with pytest.raises(RunSetupError, match=r"job sam seed 0 failed \(exit \d+\).*log .*seed0.log"):
        _run_jobs_in_processes([("sam", 0, options, run_dir)], parallel=2, threads=1, device="cpu", resume=False)
    assert "total_itr" in (run_dir.parent / "seed0.log").read_text()


def test_deblur_generate_settings_reach_the_generator(tmp_path: Path) -> None:
    from restoration.table8 import generate_gopro

    spec = {**TOY_DATA["deblur"], "camera_shake": 0.0, "camera_pan": 1.0, "camera_pan_angle": 90.0,
            "scene": {"object_count_range": [3, 3], "max_object_speed": 0.0, "max_camera_speed": 0.0}}
    generate_gopro(tmp_path, spec, progress=False)
    record = json.loads((tmp_path / "train" / "generation.json").read_text())
    assert (record["camera_pan"], record["camera_pan_angle"], record["camera_shake"], record["blur_frames"]) == (1.0, 90.0, 0.0, 3)
    from robustprior.data.scenes import SceneConfig, generate_scene

    config = SceneConfig(image_size=(48, 48), object_count_range=(3, 3), max_object_speed=0.0, max_camera_speed=0.0)
    scene = generate_scene(record["sequences"]["GOPR0001_11_00"]["scene_seed"], config)
    assert scene.object_count == 3 and not scene.motion.any() and scene.camera_motion == (0.0, 0.0)
    default = load_recipe_config("deblur", None)["recipe"]["generate"]
    assert default["camera_pan"] > 0 and default["camera_shake"] == 0  # the learnable default blur: a steady pan


def test_per_path_operating_point_is_the_generator_at_each_rows_own_thresholds(tmp_path: Path) -> None:
    """recipe.amg_operating_point: per_path: each prior row gets the thresholds chosen on degraded training
    images (never a test image), its runs use them, the report states the rule, and a generator run at the
    chosen thresholds keeps exactly the masks the choice scored."""
    from restoration.control_priors import instance_map_path, instance_masks, read_instance_map
    from restoration.paired_data import read_rgb
    from robustprior.automatic_mask_generator import RobustSAMAutomaticMaskGenerator
    from robustprior.evaluation.amg_settings import score_setting
    from robustprior.load import load_model

    config_path = toy_config("dehaze", tmp_path)
    config = yaml.safe_load(config_path.read_text())
    config["recipe"].update(rows=["sam", "robustsam"], seeds=[0], amg_operating_point="per_path", swap_rows=[])
    config_path.write_text(yaml.safe_dump(config))
    output = tmp_path / "out"
    assert run_recipe("dehaze", "dehaze", ["--config", str(config_path), "--output", str(output), "--iterations", "1",
                                           "--no-progress"]) == 0
    report = json.loads((output / "report.json").read_text())
    chosen = report["setup"]["amg_operating_point"]
    assert chosen["images"] and all("/train/" in path for path in chosen["images"])
    for row, path in (("sam", "sam"), ("robustsam", "robust")):
        settings = report["protocol"]["prior_settings_per_row"][row]
        assert {key: settings[key] for key in chosen["settings"][row]} == chosen["settings"][row]
        model, _ = load_model("tiny", decoder_path=path)
        generator = RobustSAMAutomaticMaskGenerator(model, path=path, points_per_side=settings["points_per_side"],
                                                    box_nms_thresh=settings["box_nms_thresh"], **chosen["settings"][row])
        images = [read_rgb(file) for file in chosen["images"]]
        kept = [[record["segmentation"] for record in generator.generate(image)] for image in images]
        objects = [instance_masks(read_instance_map(instance_map_path(file))) for file in chosen["images"]]
        score = chosen["scores"][row]
        assert [len(masks) for masks in kept] == list(score["counts"]) and min(score["counts"]) > 0
        again = score_setting(kept, objects, settings["points_per_side"], **chosen["settings"][row])
        assert again.f1 == pytest.approx(score["f1"]) and again.mean_best_iou == pytest.approx(score["mean_best_iou"])
    assert "thresholds chosen per row" in (output / "report.md").read_text()


@pytest.mark.parametrize("task", ["dehaze", "deblur"])
def test_the_evidence_preset_is_the_powered_design(task: str) -> None:
    """docs/results/table8_design.md: >= 64 test images, >= 5 seeds for the rows that enter a verdict or the
    ceiling, each prior row at its own operating point, the swap on the ground-truth-mask networks."""
    from restoration.table8 import CONFIG_DIR, build_parser

    config = load_recipe_config(task, CONFIG_DIR / f"{task}_evidence.yaml")
    generate, recipe = config["recipe"]["generate"], config["recipe"]
    tests = generate["test_images"] if task == "dehaze" else generate["test_sequences"] * generate["test_frames"]
    assert tests >= 64 and len(recipe["seeds"]) >= 5
    assert {"sam", "robustsam", "gt_masks"} <= set(recipe["seeded_rows"])
    assert recipe["amg_operating_point"] == "per_path" and recipe["swap_rows"] == ["gt_masks"]
    assert len(job_list(config, recipe["rows"])) == 17
    assert build_parser(task, task).parse_args(["--preset", "evidence"]).preset == "evidence"


def test_the_confirm_preset_is_the_evidence_design_with_more_replicates() -> None:
    """dehaze --preset confirm (docs/results/table8_design.md): the evidence design with 10 seeds, 192 test
    images and fresh scenes, nothing else changed; sized so that the evidence run's noise (its committed
    report) gives ceiling >= 3 MDD in both designs."""
    from restoration.table8 import CONFIG_DIR, PRESETS, build_parser
    from restoration.verdict import minimal_detectable_difference

    evidence = load_recipe_config("dehaze", CONFIG_DIR / "dehaze_evidence.yaml")
    confirm = load_recipe_config("dehaze", CONFIG_DIR / "dehaze_confirm.yaml")
    seeds, generate = confirm["recipe"]["seeds"], confirm["recipe"]["generate"]
    assert len(seeds) == 10 and not set(seeds) & set(evidence["recipe"]["seeds"])
    assert generate["test_images"] == 192 and generate["seed"] not in (evidence["recipe"]["generate"]["seed"] + d
                                                                       for d in (-1, 0, 1))
    for config in (evidence, confirm):  # everything else is the evidence design
        del config["recipe"]["seeds"], config["recipe"]["generate"]["test_images"], config["recipe"]["generate"]["seed"]
    assert confirm == evidence
    assert len(job_list(load_recipe_config("dehaze", CONFIG_DIR / "dehaze_confirm.yaml"), evidence["recipe"]["rows"])) == 32

    report = json.loads((Path(__file__).resolve().parents[1] / "docs/results/dehaze_evidence/report.json").read_text())
    swap = report["swap"]["gt_masks"]
    retrain_ratio = report["power"]["ceiling"]["mean"] / minimal_detectable_difference(report["verdict"]["sd"], len(seeds))
    swap_ratio = swap["ceiling"]["mean"] / minimal_detectable_difference(swap["verdict"]["sd"], 192)
    assert retrain_ratio == pytest.approx(3.77, abs=0.01) and swap_ratio == pytest.approx(3.49, abs=0.01)

    assert build_parser("dehaze", "dehaze").parse_args(["--preset", "confirm"]).preset == "confirm"
    assert "confirm" not in PRESETS["deblur"]
    with pytest.raises(SystemExit):
        build_parser("deblur", "deblur").parse_args(["--preset", "confirm"])
