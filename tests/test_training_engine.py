"""The run engine (robustprior.training): config schemas, run-folder policy, safe checkpoints, logs,
schedules, RNG capture and devices; each run-safety defect of issue 14 as a test."""
from __future__ import annotations

import json
import math
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from robustprior.io.atomic import is_temporary
from robustprior.io.hub import file_sha256
from robustprior.training import (REQUIRED, SCHEDULE_KINDS, CheckpointError, ConfigChangeError, ConfigError,
                                  DeviceError, Field, LearningRateSchedule, Run, RunExistsError, RunFolderError,
                                  ScheduleSpec, Section, capture_rng_state, load_config, load_state_file,
                                  load_training_checkpoint, merge_config, migrate_config, read_run_config,
                                  resolve_device, restore_rng_state, save_training_checkpoint, setup_distributed,
                                  validate_config)
from robustprior.training.config import apply_overrides
from robustprior.training.checkpoints import CHECKPOINT_FOLDER
from robustprior.training.run_folder import CONFIG_CHANGES_NAME, CONFIG_NAME, RUN_MARKER

REPO_ROOT = Path(__file__).resolve().parents[1]

SCHEMA = Section({
    "seed": Field(int, 0, at_least=0),
    "device": Field(str, "cpu"),
    "datasets": {"crop_size": Field(int, None, at_least=8), "use_flip": Field(bool, True)},
    "train": {
        "total_iter": Field(int, 10, at_least=1),
        "batch_size": Field(int, 2, at_least=1),
        "lr": Field(float, 1e-3, above=0),
        "betas": Field(list, [0.9, 0.999], items=float, length=2),
        "schedule": Field(str, "cosine", choices=SCHEDULE_KINDS),
        "log_every": Field(int, 10, at_least=1),
    },
    "history": Field(list, [], internal=True),
})


def open_run(folder: Path, config: dict | None = None, **options) -> Run:
    options.setdefault("logs", {"log.csv": ("iteration", "loss")})
    return Run.open(folder, kind="test", schema=SCHEMA, config=validate_config(config or {}, SCHEMA)
                    if config is not None or not options.get("resume") else None, **options)


def logged_iterations(path: Path) -> list[int]:
    return [int(line.split(",")[0]) for line in path.read_text().splitlines()[1:]]


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize("section, typo, valid", [
    ("train", "total_itr", "train.total_iter"), ("train", "log_evry", "train.log_every"),
    ("datasets", "crop_sise", "datasets.crop_size"),
])
def test_typo_key_is_refused_with_the_closest_valid_key(section: str, typo: str, valid: str) -> None:
    with pytest.raises(ConfigError, match=rf"unknown key '{section}\.{typo}' \(did you mean '{valid}'\?\)"):
        validate_config({section: {typo: 2}}, SCHEMA)


def test_key_in_the_wrong_section_points_to_its_section() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'lr' \(did you mean 'train.lr'\?\)"):
        validate_config({"lr": 0.1}, SCHEMA)


def test_every_problem_is_named_in_one_error() -> None:
    with pytest.raises(ConfigError) as error:
        validate_config({"train": {"log_every": 0, "batch_size": 0, "lr": "fast", "total_iter": 2.5,
                                   "betas": [0.9], "schedule": "linear"}, "seed": True}, SCHEMA, source="run.yaml")
    message = str(error.value)
    assert message.startswith("run.yaml: 7 problems:")
    for expected in ("'train.log_every' must be >= 1, got 0", "'train.batch_size' must be >= 1, got 0",
                     "'train.lr' must be a number, got fast (a string)", "'train.total_iter' must be an integer, got 2.5",
                     "'train.betas' must have 2 entries, got 1", "'seed' must be an integer, got true (a boolean)",
                     "'train.schedule' must be one of constant, cosine, step; got linear"):
        assert expected in message


def test_defaults_are_filled_and_yaml_float_strings_read_as_numbers() -> None:
    config = validate_config({"train": {"lr": "1e-3", "betas": [0, 1]}}, SCHEMA)
    assert config["train"]["lr"] == 0.001
    assert config["train"]["betas"] == [0.0, 1.0]
    assert config["datasets"] == {"crop_size": None, "use_flip": True}
    assert config["history"] == []


def test_a_field_of_several_kinds_takes_the_first_that_fits() -> None:
    schema = Section({"kinds": Field((str, list), "all", items=str),
                      "severity": Field((float, list), 1.0, items=float, length=2, at_least=0)})
    assert validate_config({"kinds": ["fog"], "severity": "5e-1"}, schema) == {"kinds": ["fog"], "severity": 0.5}
    assert validate_config({"severity": [0, 1]}, schema) == {"kinds": "all", "severity": [0.0, 1.0]}
    with pytest.raises(ConfigError) as error:
        validate_config({"kinds": 3, "severity": -1}, schema)
    assert "'kinds' must be a string or a list, got 3 (an integer)" in str(error.value)
    assert "'severity' must be >= 0, got -1" in str(error.value)
    with pytest.raises(ConfigError, match="'severity' must have 2 entries, got 1"):
        validate_config({"severity": [1.0]}, schema)


def test_merge_config_overrides_nested_values_and_copies() -> None:
    base = {"train": {"lr": 0.1, "betas": [0.9, 0.99]}, "seed": 0}
    override = {"train": {"lr": 0.2}, "extra": {"a": [1]}}
    merged = merge_config(base, override)
    assert merged == {"train": {"lr": 0.2, "betas": [0.9, 0.99]}, "seed": 0, "extra": {"a": [1]}}
    merged["train"]["betas"].append(1.0)
    merged["extra"]["a"].append(2)
    assert base["train"]["betas"] == [0.9, 0.99] and override["extra"]["a"] == [1]


def test_config_file_errors_are_messages(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml", SCHEMA)
    (tmp_path / "broken.yaml").write_text("train: {lr: [\n")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML"):
        load_config(tmp_path / "broken.yaml", SCHEMA)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(tmp_path / "list.yaml", SCHEMA)


def test_shipped_tiny_sam_configs_validate_and_a_typo_in_one_is_refused(tmp_path: Path) -> None:
    from robustprior.training.tiny_sam import load_config as load_recipe_config

    for path in sorted((REPO_ROOT / "robustprior" / "configs").glob("tiny_sam*.yaml")):
        assert load_recipe_config(path)["train"]["total_iter"] == yaml.safe_load(path.read_text())["train"][
            "total_iter"]
    text = (REPO_ROOT / "robustprior" / "configs" / "tiny_sam.yaml").read_text()
    (tmp_path / "typo.yaml").write_text(text.replace("  total_iter: 1300", "  total_itr: 2"))
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown key 'train.total_itr' \(did you mean "
                                          r"'train.total_iter'\?\)"):
        load_recipe_config(tmp_path / "typo.yaml")
    # the recipe as written before BasicSR's names: refused, each earlier key named with its new name
    old = text.replace("manual_seed: 0", "seed: 0").replace("\ntrain:\n", "\noptimizer:\n")
    (tmp_path / "old.yaml").write_text(old)
    with pytest.raises(ConfigError) as error:
        load_recipe_config(tmp_path / "old.yaml")
    assert str(error.value).splitlines()[1:] == [
        "  unknown key 'seed' (renamed: use 'manual_seed')",
        "  unknown key 'optimizer' (renamed: use 'train' with its keys renamed, 'iterations' -> 'total_iter', "
        "'warmup_iterations' -> 'warmup_iter')"]


RENAMED_SCHEMA = Section({  # keys renamed (Section.former): a field, a required field, a section and a key in it
    "manual_seed": Field(int, 0, at_least=0),
    "total_iter": Field(int, REQUIRED, at_least=1),
    "train": Section({"warmup_iter": Field(int, 0, at_least=0), "lr": Field(float, 1e-3, above=0)},
                     former={"warmup": "warmup_iter"}),
    "data": {"seed": Field(int, 0, at_least=0, doc="a seed that is not the run's: not renamed")},
    "history": Field(list, [], internal=True),
}, former={"seed": "manual_seed", "iterations": "total_iter", "optimizer": "train"})


def test_a_renamed_key_is_refused_in_one_line_naming_its_new_name() -> None:
    cases = [({"seed": 1, "total_iter": 5}, "unknown key 'seed' (renamed: use 'manual_seed')"),
             ({"iterations": 5}, "unknown key 'iterations' (renamed: use 'total_iter')"),  # not also "required"
             ({"total_iter": 5, "train": {"warmup": 2}},
              "unknown key 'train.warmup' (renamed: use 'train.warmup_iter')"),
             ({"total_iter": 5, "optimizer": {"warmup": 2}},
              "unknown key 'optimizer' (renamed: use 'train' with its keys renamed, 'warmup' -> 'warmup_iter')")]
    for values, message in cases:
        with pytest.raises(ConfigError) as error:
            validate_config(values, RENAMED_SCHEMA, source="run.yaml")
        assert str(error.value) == f"run.yaml: {message}"
    assert validate_config({"total_iter": 5, "data": {"seed": 7}}, RENAMED_SCHEMA)["data"]["seed"] == 7
    config = validate_config({"total_iter": 5}, RENAMED_SCHEMA)  # a dotted override (a command-line option)
    for key, new in (("iterations", "total_iter"), ("optimizer.warmup", "train.warmup_iter"),
                     ("optimizer.lr", "train.lr"), ("train.warmup", "train.warmup_iter")):
        with pytest.raises(ConfigError) as error:
            apply_overrides(config, {key: 1}, RENAMED_SCHEMA)
        assert str(error.value) == f"command line: unknown key '{key}' (renamed: use '{new}')"
    assert apply_overrides(config, {"train.warmup_iter": 1}, RENAMED_SCHEMA)["train"]["warmup_iter"] == 1


def test_migrate_config_renames_the_earlier_keys_at_every_depth_and_only_them() -> None:
    old = {"seed": 4, "iterations": 5, "optimizer": {"warmup": 2, "lr": 0.1}, "data": {"seed": 7}}
    migrated, renamed = migrate_config(old, RENAMED_SCHEMA)
    assert migrated == {"manual_seed": 4, "total_iter": 5, "train": {"warmup_iter": 2, "lr": 0.1}, "data": {"seed": 7}}
    assert renamed == ["seed -> manual_seed", "iterations -> total_iter", "optimizer -> train",
                       "train.warmup -> train.warmup_iter"]
    assert old == {"seed": 4, "iterations": 5, "optimizer": {"warmup": 2, "lr": 0.1}, "data": {"seed": 7}}  # untouched
    assert migrate_config(migrated, RENAMED_SCHEMA) == (migrated, [])
    both = {"seed": 1, "manual_seed": 2, "total_iter": 5}  # both names: left as given, and validation refuses it
    assert migrate_config(both, RENAMED_SCHEMA) == (both, [])
    with pytest.raises(ConfigError, match=r"unknown key 'seed' \(renamed: use 'manual_seed'\)"):
        validate_config(both, RENAMED_SCHEMA)


def test_a_run_saved_with_the_earlier_key_names_resumes_with_the_names_of_now(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "run"

    def open_renamed(config: dict | None, **options) -> Run:
        return Run.open(folder, kind="renamed", schema=RENAMED_SCHEMA, **options,
                        config=None if config is None else validate_config(config, RENAMED_SCHEMA))

    given = {"manual_seed": 4, "total_iter": 5, "train": {"warmup_iter": 2}}
    with open_renamed(given) as run:
        run.save_checkpoint(3, {"w": torch.zeros(1)}, {})
    now = yaml.safe_load((folder / CONFIG_NAME).read_text())
    old = {"seed": 4, "iterations": 5, "optimizer": {"warmup": 2, "lr": 0.001}, "data": {"seed": 0}, "history": []}
    (folder / CONFIG_NAME).write_text(yaml.safe_dump(old))  # as the version before the rename wrote them
    checkpoint = load_training_checkpoint(folder)
    save_training_checkpoint(folder, 3, checkpoint.weights, {**checkpoint.state, "config": old})
    assert read_run_config(folder, RENAMED_SCHEMA) == now  # read with the names of now ...
    assert yaml.safe_load((folder / CONFIG_NAME).read_text()) == old  # ... and reading changes nothing
    capsys.readouterr()
    with open_renamed(None, resume=True) as run:
        assert run.start_iteration == 3 and run.config == now
    assert "rewritten with the names of now: seed -> manual_seed, iterations -> total_iter" in capsys.readouterr().err
    assert yaml.safe_load((folder / CONFIG_NAME).read_text()) == now and not (folder / CONFIG_CHANGES_NAME).exists()
    with open_renamed(given, resume=True) as run:  # the same values under the names of now: no change
        assert run.config == now
    assert not (folder / CONFIG_CHANGES_NAME).exists()
    with pytest.raises(ConfigError, match=r"unknown key 'seed' \(renamed: use 'manual_seed'\)"):
        open_renamed({"seed": 4, "total_iter": 5}, resume=True)


# ----------------------------------------------------------------------------- schedules
def _optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _rates(schedule: LearningRateSchedule, steps: int) -> list[float]:
    rates = []
    for _ in range(steps):
        rates.append(schedule.lr)
        schedule.optimizer.step()
        schedule.step()
    return rates


def test_warmup_cosine_schedule_matches_its_closed_form() -> None:
    warmup, total, ratio, lr = 5, 25, 0.1, 0.1
    rates = _rates(LearningRateSchedule(_optimizer(lr), ScheduleSpec("cosine", warmup, ratio), total), total)
    expected = [lr * (s + 1) / warmup if s < warmup else
                lr * (ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))))
                for s in range(total)]
    np.testing.assert_allclose(rates, expected, rtol=1e-12)


def test_step_and_constant_schedules() -> None:
    rates = _rates(LearningRateSchedule(_optimizer(1.0), ScheduleSpec("step", 2, step_size=3, gamma=0.5), 20), 9)
    np.testing.assert_allclose(rates, [0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25])
    assert _rates(LearningRateSchedule(_optimizer(0.3), ScheduleSpec("constant"), 5), 4) == [0.3] * 4


def test_schedule_resumes_bit_exactly_and_a_new_length_is_a_warm_restart() -> None:
    spec = ScheduleSpec("cosine", 3, 0.02)
    full = _rates(LearningRateSchedule(_optimizer(), spec, 40), 40)
    first = LearningRateSchedule(_optimizer(), spec, 40)
    _rates(first, 17)
    resumed = LearningRateSchedule(_optimizer(), spec, 40)
    resumed.load_state_dict(first.state_dict())
    assert _rates(resumed, 23) == full[17:]
    longer = LearningRateSchedule(_optimizer(), spec, 40)
    longer.load_state_dict(first.state_dict(), total_iterations=80)
    assert _rates(longer, 63) == _rates(LearningRateSchedule(_optimizer(), spec, 80), 80)[17:]


def test_unknown_schedule_is_refused_before_any_step() -> None:
    with pytest.raises(ConfigError, match="constant, cosine, step"):
        ScheduleSpec("linear")


# ----------------------------------------------------------------------------- RNG and devices
def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(np.random.randn()), float(torch.rand(1))


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path: Path) -> None:
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    state = capture_rng_state()
    expected = _draws()
    torch.save(state, tmp_path / "rng.pt")
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert _draws() == expected


def test_device_names_and_missing_gpus_are_errors() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="auto, cpu or cuda"):
        resolve_device("tpu")
    with pytest.raises(DeviceError):
        resolve_device("cuda:99" if torch.cuda.is_available() else "cuda")
    context = setup_distributed("cpu")
    assert (context.rank, context.world_size, context.is_main, context.device) == (0, 1, True, torch.device("cpu"))


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_is_exact_and_replaces_the_previous_one(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    save_training_checkpoint(tmp_path, 1, model.state_dict(), {"optimizer": optimizer.state_dict()})
    save_training_checkpoint(tmp_path, 2, model.state_dict(), {"optimizer": optimizer.state_dict(), "note": "x"})
    assert len(list((tmp_path / CHECKPOINT_FOLDER).iterdir())) == 3  # weights, state, pointer of iteration 2
    loaded = load_training_checkpoint(tmp_path)
    assert loaded.iteration == 2 and loaded.state["note"] == "x"
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.weights[name], tensor)
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    fresh.load_state_dict(loaded.state["optimizer"])
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_state_that_would_not_load_safely_is_refused_when_saving(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"state\['extra'\]\['path'\] is a pathlib"):
        save_training_checkpoint(tmp_path, 1, {}, {"extra": {"path": tmp_path}})


class _PlantedCode:
    """Unpickling this runs ``touch MARK``."""

    def __init__(self, mark: Path) -> None:
        self.mark = mark

    def __reduce__(self):
        return (os.system, (f"touch {self.mark}",))


def test_planted_checkpoint_with_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    save_training_checkpoint(run, 5, {"w": torch.ones(2)}, {"optimizer": {}})
    assert load_training_checkpoint(run).iteration == 5
    state_file = next((run / CHECKPOINT_FOLDER).glob("state-*.pt"))
    mark = tmp_path / "code_ran"
    torch.save({"format": "robustprior-training-checkpoint", "iteration": 5, "payload": _PlantedCode(mark)},
               state_file)
    with pytest.raises(CheckpointError, match="SHA-256"):  # the pointer's hash does not match the swapped file
        load_training_checkpoint(run)
    pointer_path = run / CHECKPOINT_FOLDER / "latest.json"  # a planter who also rewrites the pointer
    pointer = json.loads(pointer_path.read_text())
    pointer["state"].update(bytes=state_file.stat().st_size, sha256=file_sha256(state_file))
    pointer_path.write_text(json.dumps(pointer))
    with pytest.raises(CheckpointError, match=r"Python objects \(posix.system\) that would run code"):
        load_training_checkpoint(run)
    with pytest.raises(CheckpointError, match="would run code"):
        load_state_file(state_file)
    with open(tmp_path / "plain.pkl", "wb") as handle:  # a bare pickle, not even a torch file
        pickle.dump(_PlantedCode(mark), handle)
    with pytest.raises(CheckpointError, match="refusing to load .*plain.pkl: torch.load.weights_only=True. cannot"):
        load_state_file(tmp_path / "plain.pkl")
    assert not mark.exists()


def test_files_that_are_not_checkpoints_get_messages(tmp_path: Path) -> None:
    (tmp_path / "noise.pth").write_bytes(bytes(range(256)))
    with pytest.raises(CheckpointError, match="noise.pth: torch.load.weights_only=True. cannot read it"):
        load_state_file(tmp_path / "noise.pth")
    torch.save({"weight": torch.ones(2)}, tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match="not a robustprior training checkpoint"):
        load_state_file(tmp_path / "weights.pth")
    (tmp_path / CHECKPOINT_FOLDER).mkdir()
    (tmp_path / CHECKPOINT_FOLDER / "latest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a robustprior checkpoint pointer"):
        load_training_checkpoint(tmp_path)


# ----------------------------------------------------------------------------- run folders
def test_overwrite_of_a_folder_that_is_not_a_run_is_refused_and_nothing_is_lost(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    (folder / "photos").mkdir(parents=True)
    (folder / "notes.md").write_text("my notes")
    (folder / "photos" / "a.jpg").write_bytes(b"jpeg")
    for options in ({"overwrite": True}, {"resume": True}, {}):
        with pytest.raises(RunFolderError, match="not a robustprior run folder.*nothing in it was changed"):
            open_run(folder, {}, **options)
    assert sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")) == [
        "notes.md", "photos", "photos/a.jpg"]
    assert (folder / "notes.md").read_text() == "my notes"


def test_output_that_is_a_file_another_kind_or_read_only_is_a_message(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file, not a folder"):
        open_run(tmp_path / "file", {})
    open_run(tmp_path / "run", {}).close()
    with pytest.raises(RunFolderError, match="holds a test run, not a other run"):
        Run.open(tmp_path / "run", kind="other", schema=SCHEMA, config={}, overwrite=True)
    with pytest.raises(RunFolderError, match="there is no run in .* to resume"):
        open_run(tmp_path / "new", resume=True)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "locked"))

    monkeypatch.setattr("robustprior.training.run_folder.write_text_atomically", refuse)
    with pytest.raises(RunFolderError, match="cannot write to .*Permission denied"):
        open_run(tmp_path / "locked", {})


def test_a_run_is_not_replaced_without_overwrite_and_overwrite_keeps_caches(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    with open_run(folder, {}, keep=("cache_*",)) as run:
        run.log("log.csv").append([{"iteration": 1, "loss": 0.5}])
    (folder / "cache_scenes.npz").write_bytes(b"cache")
    with pytest.raises(RunExistsError, match="already holds a test run; pass --resume .* or --overwrite"):
        open_run(folder, {})
    with open_run(folder, {"seed": 3}, overwrite=True, keep=("cache_*",)) as run:
        assert run.config["seed"] == 3 and not run.resumed
    assert sorted(path.name for path in folder.iterdir()) == sorted([RUN_MARKER, CONFIG_NAME, "cache_scenes.npz"])


def test_a_run_that_stopped_before_training_can_start_again(tmp_path: Path) -> None:
    open_run(tmp_path / "run", {"seed": 1}).close()  # e.g. the device was missing: only marker and config
    with open_run(tmp_path / "run", {"seed": 2}) as run:
        assert run.config["seed"] == 2


def test_a_second_process_cannot_open_a_run_in_use(tmp_path: Path) -> None:
    with open_run(tmp_path / "run", {}):
        with pytest.raises(RunFolderError, match="another process is using the run"):
            open_run(tmp_path / "run", resume=True)
    open_run(tmp_path / "run", resume=True).close()  # released


def test_resume_with_another_config_is_refused_unless_allowed_and_then_recorded(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    with open_run(folder, {"seed": 0, "train": {"lr": 0.001}}) as run:
        run.save_config({**run.config, "history": [{"start": 0}]})
        run.save_checkpoint(4, {"w": torch.zeros(1)}, {})
    saved_yaml = (folder / CONFIG_NAME).read_text()
    changed = {"seed": 1, "train": {"lr": 0.01}}
    with pytest.raises(ConfigChangeError, match=r"seed: 0 -> 1\n  train.lr: 0.001 -> 0.01\n.*--allow-config-change"):
        open_run(folder, changed, resume=True)
    assert (folder / CONFIG_NAME).read_text() == saved_yaml, "a refused resume must not touch the run's config"
    with open_run(folder, {"seed": 0, "train": {"lr": 0.001}}, resume=True) as run:  # the same config: fine
        assert run.start_iteration == 4 and run.config["history"] == [{"start": 0}]
    with open_run(folder, resume=True, overrides={"train.total_iter": 20}) as run:  # command line: allowed
        assert run.config["train"]["total_iter"] == 20
    with open_run(folder, changed, resume=True, allow_config_change=True) as run:
        assert run.config["seed"] == 1 and run.config["train"]["lr"] == 0.01
        assert run.config["history"] == [{"start": 0}]  # written by training, kept
    changes = yaml.safe_load((folder / CONFIG_CHANGES_NAME).read_text())
    assert [entry["allowed_by"] for entry in changes] == ["command line", "--allow-config-change"]
    assert changes[0]["changes"] == {"train.total_iter": {"from": 10, "to": 20}}
    assert changes[1]["changes"]["seed"] == {"from": 0, "to": 1} and changes[1]["iteration"] == 4
    assert yaml.safe_load((folder / CONFIG_NAME).read_text())["seed"] == 1


def test_log_after_a_kill_before_the_first_checkpoint_has_no_repeated_rows(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    with open_run(folder, {}) as run:
        run.log("log.csv").append([{"iteration": i, "loss": 1.0 / i} for i in (1, 2, 3)])
    # killed here: no checkpoint. The resumed run starts at iteration 0 and redoes 1-3.
    with open_run(folder, resume=True) as run:
        assert run.start_iteration == 0
        run.log("log.csv").append([{"iteration": i, "loss": 1.0 / i} for i in (1, 2, 3, 4)])
        run.save_checkpoint(2, {"w": torch.zeros(1)}, {})
    assert logged_iterations(folder / "log.csv") == [1, 2, 3, 4]
    with open_run(folder, resume=True) as run:  # from the checkpoint at 2: rows 3 and 4 are redone
        assert run.start_iteration == 2
    assert logged_iterations(folder / "log.csv") == [1, 2]


def test_files_left_by_a_process_killed_while_writing_are_cleaned_on_the_next_start(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    with open_run(folder, {}) as run:
        run.save_checkpoint(1, {"w": torch.zeros(1)}, {})
    script = textwrap.dedent(f"""
        import os, signal
        from robustprior.io.atomic import atomic_path
        with atomic_path({str(folder / CHECKPOINT_FOLDER / "weights-00000002-abcdef.safetensors")!r}) as temporary:
            with open(temporary, "wb") as handle:
                handle.write(b"x" * 1_000_000)
                handle.flush()
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    process = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert process.returncode == -signal.SIGKILL
    leftovers = [path for path in (folder / CHECKPOINT_FOLDER).iterdir() if is_temporary(path.name)]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size == 1_000_000
    (folder / CHECKPOINT_FOLDER / "state-00000002-abcdef.pt").write_bytes(b"never committed")
    with open_run(folder, resume=True) as run:
        assert run.start_iteration == 1
    names = sorted(path.name for path in (folder / CHECKPOINT_FOLDER).iterdir())
    assert len(names) == 3 and not any(is_temporary(name) or "00000002" in name for name in names)


DISTRIBUTED_SCRIPT = """
import json, sys
from pathlib import Path
import torch
from robustprior.training import Field, Run, RunFolderError, Section, seed_everything, setup_distributed

schema = Section({"seed": Field(int, 0)})
folder = Path(sys.argv[1])
context = setup_distributed("cpu")
try:
    Run.open(folder / "mine", kind="test", schema=schema, config={}, overwrite=True, context=context)
    outcome = "opened"
except RunFolderError:
    outcome = "refused"
seed_everything(100 + context.rank)  # one stream per rank
with Run.open(folder / "run", kind="test", schema=schema, config={}, context=context) as run:
    torch.rand(3)
    run.save_checkpoint(1, {"w": torch.ones(1)}, {})
    expected = torch.rand(2).tolist()
seed_everything(0)
with Run.open(folder / "run", kind="test", schema=schema, config=None, resume=True, context=context) as run:
    run.restore_rng(reseed=0)
    again = torch.rand(2).tolist()
    start = run.start_iteration
rows = context.all_gather({"outcome": outcome, "expected": expected, "again": again, "start": start,
                           "backend": torch.distributed.get_backend()})
if context.is_main:
    (folder / "result.json").write_text(json.dumps(rows))
"""


def test_two_gloo_ranks_share_refusals_and_resume_their_own_rng_streams(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.md").write_text("keep")
    (tmp_path / "script.py").write_text(DISTRIBUTED_SCRIPT)
    torchrun = Path(sys.executable).with_name("torchrun")
    process = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(tmp_path / "script.py"),
                              str(tmp_path)], env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"},
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr[-3000:]
    rows = json.loads((tmp_path / "result.json").read_text())
    assert [row["outcome"] for row in rows] == ["refused", "refused"]
    assert [row["backend"] for row in rows] == ["gloo", "gloo"]
    assert all(row["again"] == row["expected"] and row["start"] == 1 for row in rows)
    assert rows[0]["expected"] != rows[1]["expected"]
    assert (tmp_path / "mine" / "notes.md").read_text() == "keep"
    assert len(load_training_checkpoint(tmp_path / "run").state["rng"]) == 2


@pytest.mark.parametrize("environment, threads", [("2", "2 2"), (None, "1 1")])
def test_the_test_suite_takes_its_thread_count_from_the_environment(environment: str | None, threads: str) -> None:
    """Importing tests/conftest.py leaves torch at the environment's OMP_NUM_THREADS (it used to force 2),
    and without one sets 1 thread, for itself and the processes it starts."""
    script = textwrap.dedent("""
        import importlib.util, os
        spec = importlib.util.spec_from_file_location("conftest_copy", "tests/conftest.py")
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        import torch
        print(torch.get_num_threads(), os.environ["OMP_NUM_THREADS"])
    """)
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    if environment is not None:
        env["OMP_NUM_THREADS"] = environment
    output = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                            env=env, check=True).stdout
    assert output.strip() == threads
