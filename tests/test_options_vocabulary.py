"""One options vocabulary (BasicSR's) and one schema checker for every config kind: unknown keys name the
closest valid key, keys of BasicSR files that are not used are listed once, and a SAM-Deblur GoPro option
file with only its paths edited trains (20 iterations) and evaluates."""
from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path

import pytest
import yaml

from restoration.config import load_options_file, network_options, parse_forced_options, validate_options
from restoration.train import main as train_main
from robustprior.training import ConfigError
from robustprior.training.config import (Field, Ignored, Section, UnusedKeysWarning, read_config_file,
                                         validate_config)

REPO_ROOT = Path(__file__).resolve().parents[1]
SAM_DEBLUR_OPTIONS = REPO_ROOT / "restoration" / "options" / "sam_deblur_gopro.yml"
ORACLE_OPTIONS = Path(os.environ.get("ROBUSTPRIOR_SHARED", REPO_ROOT.parent / "shared")) / "oracles" / "sam_deblur" / "options"

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


# ----------------------------------------------------------------------------- the shared checker
SCHEMA = Section({
    "name": Field(str, "x"),
    "train": Section({"total_iter": Field(int, 10, at_least=1)}, renamed={"iterations": "'train.total_iter'"}),
    "datasets": Section({"val": Section({"dataroot_lq": Field(str, None)})}, aliases={"test": "val"}),
    "model_type": Ignored("one model"),
    "logger": Section({"print_freq": Field(int, 1), "wandb": Ignored("CSV logs")}),
})


def test_ignored_keys_are_dropped_and_listed_once() -> None:
    values = {"model_type": "ImageRestorationModel", "logger": {"wandb": {"project": None}}, "train": {"total_iter": 3}}
    with pytest.warns(UnusedKeysWarning) as caught:
        result = validate_config(values, SCHEMA, source="opts.yml")
    assert len(caught) == 1
    assert str(caught[0].message) == "opts.yml: keys not used by this project (ignored): model_type, logger.wandb"
    assert "model_type" not in result and "wandb" not in result["logger"] and result["train"]["total_iter"] == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the validated config validates again without a second warning
        assert validate_config(result, SCHEMA) == result


def test_aliases_renamed_keys_and_whole_floats() -> None:
    assert validate_config({"datasets": {"test": {"dataroot_lq": "a"}}}, SCHEMA)["datasets"]["val"]["dataroot_lq"] == "a"
    with pytest.raises(ConfigError, match="'datasets.test' and 'datasets.val' are the same key"):
        validate_config({"datasets": {"test": {}, "val": {}}}, SCHEMA)
    with pytest.raises(ConfigError, match=r"unknown key 'train.iterations' \(renamed: use 'train.total_iter'\)"):
        validate_config({"train": {"iterations": 3}}, SCHEMA)
    with pytest.raises(ConfigError, match=r"unknown key 'train.total_itr' \(did you mean 'train.total_iter'\?\)"):
        validate_config({"train": {"total_itr": 3}}, SCHEMA)
    assert validate_config({"train": {"total_iter": 1e4}}, SCHEMA)["train"]["total_iter"] == 10000  # !!float 1e4
    with pytest.raises(ConfigError, match="'train.total_iter' must be an integer"):
        validate_config({"train": {"total_iter": 2.5}}, SCHEMA)


def test_one_reader_for_every_config_file(tmp_path: Path) -> None:
    (tmp_path / "list.yml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping of keys, got a list"):
        read_config_file(tmp_path / "list.yml")
    (tmp_path / "bad.yml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yml is not valid YAML"):
        read_config_file(tmp_path / "bad.yml")
    with pytest.raises(ConfigError, match="missing.yml does not exist"):
        read_config_file(tmp_path / "missing.yml")
    (tmp_path / "empty.yml").write_text("")
    assert read_config_file(tmp_path / "empty.yml") == {}


def _typo(source: Path, target: Path, key: str, typo: str) -> Path:
    text = source.read_text()
    assert re.search(rf"^\s*{key}:", text, flags=re.M), key
    target.write_text(re.sub(rf"^(\s*){key}:", rf"\g<1>{typo}:", text, count=1, flags=re.M))
    return target


@pytest.mark.parametrize("kind", ["restoration options", "recipe config", "RobustSAM training", "RobustSAM ablation",
                                  "tiny-SAM training", "segmentation evaluation"])
def test_every_config_kind_names_the_closest_key(kind: str, tmp_path: Path) -> None:
    """Each kind of config goes through the one checker: a misspelt key is refused, naming the valid one."""
    from restoration.table8 import load_recipe_config
    from robustprior.evaluation.evaluate import load_eval_config
    from robustprior.training.config import load_config
    from robustprior.training.robustsam.ablation import ABLATION_SCHEMA
    from robustprior.training.robustsam import load_config as load_robustsam_config
    from robustprior.training.tiny_sam import load_config as load_tiny_sam_config

    cases = {
        "restoration options": (REPO_ROOT / "restoration" / "options" / "deblur_gopro.yaml", "total_iter",
                                "total_itr", load_options_file, "train.total_iter"),
        "recipe config": (REPO_ROOT / "restoration" / "options" / "dehaze_default.yaml", "grid_images", "grid_image",
                          lambda path: load_recipe_config("dehaze", path), "recipe.grid_images"),
        "RobustSAM training": (REPO_ROOT / "robustprior" / "configs" / "robustsam_tiny.yaml", "manual_seed",
                               "manual_sed", load_robustsam_config, "manual_seed"),
        "RobustSAM ablation": (REPO_ROOT / "robustprior" / "configs" / "robustsam_tiny_ablation.yaml", "ablation_sets",
                               "ablation_set", lambda path: load_config(path, ABLATION_SCHEMA), "evaluation.ablation_sets"),
        "tiny-SAM training": (REPO_ROOT / "robustprior" / "configs" / "tiny_sam.yaml", "manual_seed", "manual_sed",
                              load_tiny_sam_config, "manual_seed"),
        "segmentation evaluation": (REPO_ROOT / "robustprior" / "configs" / "eval_tiny.yaml", "severity", "severty",
                                    load_eval_config, "eval.severity"),
    }
    source, key, typo, load, suggestion = cases[kind]
    load(source)  # the shipped file is valid
    with pytest.raises(ConfigError, match=rf"unknown key '.*{typo}' \(did you mean '.*{re.escape(suggestion)}'\?\)"):
        load(_typo(source, tmp_path / source.name, key, typo))


# ----------------------------------------------------------------------------- BasicSR's vocabulary
def _schema_paths(section: Section, prefix: str = "") -> set[str]:
    paths = set()
    for name, entry in section.entries():
        if not isinstance(entry, Ignored):
            paths.add(prefix + name)
            if isinstance(entry, Section):
                paths |= _schema_paths(entry, f"{prefix}{name}.")
    return paths


def test_the_sam_training_configs_use_basicsrs_names_and_refuse_their_earlier_ones() -> None:
    """The RobustSAM and tiny-SAM trainers (and the ablation) name the run's seed and length as BasicSR
    does; each earlier name is refused in one line naming the new key."""
    from robustprior.training.robustsam.ablation import ABLATION_SCHEMA
    from robustprior.training.robustsam.config import SCHEMA as ROBUSTSAM
    from robustprior.training.tiny_sam.config import SCHEMA as TINY_SAM

    ablation = {"base": "b.yaml", "variants": {},
                "evaluation": {"sets": {}, "reference_sizes": {}, "ablation_sets": [], "ablation_scales": []}}
    for schema, valid, basicsr, earlier in (
            (ROBUSTSAM, {"data": {"train": {"format": "scenes", "n_images": 1, "seed": 0}}},
             {"manual_seed", "train.total_iter", "train.warmup_iter", "train.batch_size_per_gpu"},
             {"seed": "manual_seed", "train.iterations": "train.total_iter", "train.warmup": "train.warmup_iter",
              "train.batch_size": "train.batch_size_per_gpu"}),
            (TINY_SAM, {"batch": {"prompt_mix": {"box": 1.0}}},
             {"manual_seed", "train.total_iter", "train.warmup_iter"},
             {"seed": "manual_seed", "optimizer": "train"}),
            (ABLATION_SCHEMA, ablation, {"total_iter"}, {"iterations": "total_iter"})):
        paths = _schema_paths(schema)
        assert basicsr <= paths and not set(earlier) & paths
        assert not any(path.rsplit(".", 1)[-1] in ("iterations", "warmup_iterations") for path in paths)
        validate_config({**valid, "total_iter": 1} if schema is ABLATION_SCHEMA else valid, schema)
        for old, new in earlier.items():
            *parents, leaf = old.split(".")
            values = json.loads(json.dumps(valid))
            target = values
            for parent in parents:
                target = target.setdefault(parent, {})
            target[leaf] = 1
            with pytest.raises(ConfigError) as error:
                validate_config(values, schema, source="c.yaml")
            message = str(error.value)
            assert "\n" not in message, message
            assert message.startswith(f"c.yaml: unknown key '{old}' (renamed: use '{new}'"), message


def test_nafnet_and_sam_deblur_network_names_translate() -> None:
    assert network_options({"type": "SegNAFNetLocal", "width": 32, "seg_channel": 2, "enc_blk_nums": [1, 28],
                            "middle_blk_num": 1, "dec_blk_nums": [1, 1]}) == {
        "type": "SAMDeblurNet", "prior": "structure", "mask_dropout_mode": "exact", "local_pool": True, "width": 32,
        "structure_channels": 2, "enc_blocks": [1, 28], "middle_blocks": 1, "dec_blocks": [1, 1]}
    assert network_options({"type": "NAFNetLocal", "img_channel": 3}) == {"type": "NAFNet", "local_pool": True}
    with pytest.raises(ValueError, match="img_channel must be 3"):
        network_options({"type": "NAFNet", "img_channel": 1})
    with pytest.raises(ConfigError, match=r"unknown key 'network_g.enc_blk_num' for SAMDeblurNet \(did you mean"):
        validate_options({"network_g": {"type": "SegNAFNet", "enc_blk_num": [1]},
                          "datasets": {"val": {"dataroot_lq": "a", "dataroot_gt": "b"}}})


def test_the_shipped_sam_deblur_file_reads_as_sam_deblur_trains() -> None:
    with pytest.warns(UnusedKeysWarning, match=r"model_type, num_gpu, grouped_masks, dist_params, path.strict_load_g, "
                                               r"datasets.train.dataroot_mask, .*train.scheduler.T_max, val.metrics, "
                                               r"logger.use_tb_logger, logger.wandb$"):
        options = load_options_file(SAM_DEBLUR_OPTIONS)
    train = options["datasets"]["train"]
    assert (train["gt_size"], train["batch_size_per_gpu"], train["num_worker_per_gpu"]) == (256, 32, 16)
    assert options["network_g"]["type"] == "SAMDeblurNet" and options["network_g"]["enc_blocks"] == [1, 1, 1, 28]
    assert options["train"]["pixel_opt"]["type"] == "PSNRLoss" and options["train"]["total_iter"] == 200000
    assert (options["val"]["val_freq"], options["logger"]["save_checkpoint_freq"]) == (10000, 5000)  # !!float 1e4
    assert options["prior"]["kind"] == "sam" and options["prior"]["grouping"] == "summed_grey"


def test_force_yml_overrides_in_basicsr_form() -> None:
    assert parse_forced_options(["train:total_iter=20", "network_g:enc_blk_nums=[1, 1]", "val:val_freq=~"]) == {
        "train": {"total_iter": 20}, "network_g": {"enc_blk_nums": [1, 1]}, "val": {"val_freq": None}}
    with pytest.raises(ConfigError, match="KEY:SUBKEY=VALUE"):
        parse_forced_options(["train:total_iter"])


def test_pretrained_weights_in_path_are_refused_not_dropped() -> None:
    with pytest.raises(ConfigError, match="'path.pretrain_network_g': starting a training run from weights is not supported"):
        validate_options({"path": {"pretrain_network_g": "SegNAFNet-GoPro.pth"},
                          "datasets": {"val": {"dataroot_lq": "a", "dataroot_gt": "b"}}})


@pytest.fixture(scope="module")
def gopro_sequences(small_gopro) -> Path:
    """Generated GoPro-layout data: one train sequence of 4 frames, one test sequence of 2, 48 x 48."""
    return small_gopro(1, 4)


def _edit_paths(source: Path, target: Path, data: Path) -> Path:
    """``source`` with only its data paths edited: SAM-Deblur's crop folders become a generated sequence's
    blur/ and sharp/ folders (BasicSR's paired folders)."""
    sequence = {split: next((data / split).iterdir()) for split in ("train", "test")}
    paths = {"train/sharp_crops": sequence["train"] / "sharp", "train/blur_crops": sequence["train"] / "blur",
             "test/target": sequence["test"] / "sharp", "test/input": sequence["test"] / "blur"}
    lines = []
    for line in source.read_text().splitlines():
        if re.match(r"\s*dataroot_(gt|lq):", line):
            folder = next(paths[key] for key in paths if line.rstrip().endswith(key))
            line = f"{line.split(':')[0]}: {folder}"
        lines.append(line)
    target.write_text("\n".join(lines) + "\n")
    changed = [(a, b) for a, b in zip(source.read_text().splitlines(), lines) if a != b]
    assert len(changed) == 4 and all("dataroot_" in a for a, _ in changed)
    return target


# The command line shrinks the run to a CPU test; the file itself is SAM-Deblur's with its paths edited.
SMALL = ["train:total_iter=20", "datasets:train:batch_size_per_gpu=2", "datasets:train:num_worker_per_gpu=0",
         "datasets:train:gt_size=32", "network_g:width=4", "network_g:enc_blk_nums=[1, 1]",
         "network_g:dec_blk_nums=[1, 1]", "network_g:train_size=32", "prior:checkpoint=tiny",
         "prior:points_per_side=2", "prior:pred_iou_thresh=0.0", "prior:stability_score_thresh=0.0",
         "val:val_freq=10", "logger:save_checkpoint_freq=10"]


@pytest.mark.parametrize("source", ["ours", "SAM-Deblur's own"])
def test_a_sam_deblur_option_file_with_its_paths_edited_trains_20_iterations(
        source: str, gopro_sequences: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    original = SAM_DEBLUR_OPTIONS if source == "ours" else ORACLE_OPTIONS / "train_GoPro_SegNAFNet.yml"
    if not original.is_file():
        pytest.skip(f"{original} not found (../shared is not in this checkout)")
    options_file = _edit_paths(original, tmp_path / original.name, gopro_sequences)
    assert train_main(["-opt", str(options_file), "--output", str(tmp_path / "run"), "--device", "cpu",
                       "--no-progress", "--force_yml", *SMALL]) == 0
    captured = capsys.readouterr()
    unused = [line for line in captured.err.splitlines() if "keys not used by this project" in line]
    assert len(unused) == 1 and unused[0].startswith(f"warning: {options_file}: ")
    assert "datasets.train.dataroot_mask" in unused[0] and "dist_params" in unused[0]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["iterations"] == 20 and results["train"]["loss"] == "PSNRLoss"
    assert results["network"]["type"] == "SAMDeblurNet" and results["network"]["local_pool"] is True
    assert results["prior"]["kind"] == "sam" and results["test"]["num_pairs"] == 2
    assert math.isfinite(results["metrics"]["psnr"]) and len(results["metrics"]["per_image"]) == 2
    log = (tmp_path / "run" / "train_log.csv").read_text().splitlines()
    assert int(log[-1].split(",")[0]) == 20
    assert len((tmp_path / "run" / "val_log.csv").read_text().splitlines()) == 2  # at iteration 10 (20: the final test)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["total_iter"] == 20 and saved["datasets"]["train"]["dataroot_lq"].endswith("blur")
    assert "PSNR" in captured.out
