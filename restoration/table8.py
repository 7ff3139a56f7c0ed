"""The Table 8 recipes (``recipes/dehaze.py``, ``recipes/deblur.py``): one restoration network trained per
row and seed, evaluated on the full test images, compared with a paired analysis over seeds.

Rows (``recipe.rows``): ``none`` (no prior), ``sam`` (SAM prior), ``robustsam`` (RobustSAM prior) and two
controls on generated data, ``gt_masks`` (the generator's true instances: what masks can give at best)
and ``shuffled_masks`` (another image's true instances: what a wrong prior costs;
:mod:`restoration.control_priors`). The rows in ``recipe.seeded_rows`` train once per seed of
``recipe.seeds``, the others with the first seed. Rows run as separate processes, ``recipe.parallel``
at a time (each with ``threads`` torch threads); priors are computed once, before the jobs.
The report (:mod:`restoration.report`) gives per-seed numbers, the RobustSAM-vs-SAM verdict
(:mod:`restoration.verdict`), the priors' quality (:mod:`restoration.prior_quality`) and how much each
trained network relies on its prior (:mod:`restoration.prior_reliance`).
Beside the paper's retrain-per-prior verdict, the networks of ``recipe.swap_rows`` are evaluated with SAM's
and with RobustSAM's test priors (:mod:`restoration.prior_swap`), every verdict with its power (ceiling, seed
sd, MDD); ``recipe.amg_operating_point: per_path`` gives each prior row its own automatic-mask thresholds
(:mod:`restoration.operating_point`). ``--preset evidence`` is the powered design (docs/results/table8_design.md).

Recipe config (YAML): the :mod:`restoration.train` options (``name``, ``manual_seed``, ``network_g`` with
the prior rows' ``prior``, ``datasets``, ``train``, ``val``, ``prior`` with the automatic-mask settings
shared by the prior rows) plus the keys of :data:`RECIPE_SCHEMA`: ``task``, ``threads`` and ``recipe``
(``roots``, ``generate``, ``checkpoints``, ``grid_images``, ``rows``, ``seeds``, ``seeded_rows``, ``parallel``).

Output folder: a run folder of the run engine (:mod:`robustprior.training.run_folder`, kind
``<task>_recipe``): ``.robustprior-run`` (the marker, locked while a recipe works in the folder: a
second recipe on it is refused before any work), ``data/`` (generated; reused while its settings
match), ``prior_cache/`` (content keyed, reused), ``runs/<row>/seed<k>/`` (:mod:`restoration.train` run
folders; ``seed<k>.yaml`` and ``.log`` beside them), ``recipe_config.yaml`` (the settings the runs were
made with), ``config_changes.yaml``, ``report.md``, ``report.json``, ``grid.png``; ``restored/`` for
``--restore``. A folder without the marker (and not empty) is never used; ``--overwrite`` deletes the
runs, the report and the change record only, and refuses (deleting nothing) when they hold anything the
recipe did not write (:func:`foreign_entries`); ``data/``, ``prior_cache/`` and ``restored/`` are kept.

Before anything is written: the config with its command-line overrides (every row's training
options, the data layout of real data), the output folder (a file or a folder that cannot be written
is a one-line error). ``--resume`` compares the settings with ``recipe_config.yaml`` and refuses a
difference unless ``--allow-config-change`` (recorded in ``config_changes.yaml``; every run then
continues with the new settings, so the recorded config always describes the runs); ``threads``,
``recipe.parallel`` and ``recipe.grid_images`` change no run and are only recorded.

Jobs run as child processes, each in its own process group, and die with the recipe: SIGINT (Ctrl-C)
or SIGTERM stops every job (each writes a checkpoint on the way out: :mod:`restoration.train`), the
recipe prints ``interrupted; resume with --resume`` and exits with 130 / 143; a recipe killed outright
takes its jobs with it (``PR_SET_PDEATHSIG`` on Linux).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from restoration.config import (check_data, check_options, check_options_agree, dataset_options,
                                split_recipe_keys, validate_options)
from restoration.control_priors import CONTROL_PRIOR_KINDS, has_instance_maps
from restoration.datasets import NO_MASKS_WARNING, PriorPairedDataset, describe_prior_model, prepare_priors
from restoration.operating_point import OPERATING_POINTS, choose_operating_points
from restoration.prior_quality import prior_quality
from restoration.prior_reliance import prior_reliance
from restoration.prior_swap import prior_swap
from restoration.report import ROW_LABELS, format_table, write_report
from restoration.restore import add_restore_arguments, run_restore
from restoration.paired_data import locate_dataset
from restoration.train import RestorationTrainer
from restoration.trained_run import PRIOR_CACHE_NAME, RESULTS_NAME, RUN_KIND, TRAIN_LOG, VAL_LOG
from robustprior.data.scenes import SceneConfig, write_gopro_dataset, write_sots_dataset
from robustprior.io.allocator import keep_freed_memory
from robustprior.io.atomic import is_temporary, write_text_atomically
from robustprior.io.peak_memory import peak_rss_gb
from robustprior.load import BUNDLED
from robustprior.training import merge_config
from robustprior.training.checkpoints import CHECKPOINT_FOLDER
from robustprior.training.config import REQUIRED, Field, Section, read_config_file, validate_config
from robustprior.training.distributed import setup_distributed
from robustprior.training.errors import ConfigError, RunSetupError
from robustprior.training.interrupt import PARENT_VARIABLE, Interrupted, stop_on_signals
from robustprior.training.run_folder import (CONFIG_CHANGES_NAME, CONFIG_NAME, RUN_MARKER, check_output_folder,
                                             config_change_error, prepare_run_folder, record_config_changes)

CONFIG_DIR = Path(__file__).resolve().parent / "options"  # recipe configs ship inside the package
PACKAGE_PARENT = Path(__file__).resolve().parents[1]  # the folder holding the restoration package (jobs import it)
ROWS: tuple[str, ...] = ("none", "sam", "robustsam", *CONTROL_PRIOR_KINDS)
PRESETS: dict[str, tuple[str, ...]] = {  # restoration/options/<task>_<preset>.yaml
    "dehaze": ("default", "evidence", "confirm"),
    "deblur": ("default", "evidence"),
}
PRESET_HELP: dict[str, str] = {
    "dehaze": "evidence: the powered design; confirm: its rerun with more replicates on fresh scenes; "
              "docs/results/table8_design.md",
    "deblur": "evidence: the powered design, docs/results/table8_design.md",
}
DATA_MARKER = "recipe_data.json"
REPORT_FILES = ("report.md", "report.json", "grid.png")
RECIPE_CONFIG = "recipe_config.yaml"
KEPT_BY_OVERWRITE = ("data", PRIOR_CACHE_NAME, "restored", RECIPE_CONFIG)  # RECIPE_CONFIG: rewritten at once
RUN_OUTPUTS = frozenset({RUN_MARKER, CONFIG_NAME, CONFIG_CHANGES_NAME, CHECKPOINT_FOLDER, TRAIN_LOG, VAL_LOG,
                         RESULTS_NAME, "images", PRIOR_CACHE_NAME})  # what restoration.train writes in a run folder
UNCHANGING_KEYS = ("threads", "recipe.parallel", "recipe.grid_images")  # settings that change no run
STOP_GRACE_SECONDS = 60.0  # how long an interrupted job may take to write its checkpoint before it is killed
DATA_DESCRIPTIONS = {"dehaze": "RESIDE OTS/ITS-style hazy/ + gt|clear/ under DATA_ROOT/train, SOTS under DATA_ROOT/test",
                     "deblur": "GoPro: DATA_ROOT/train/SEQUENCE/{blur,sharp}/ and DATA_ROOT/test/SEQUENCE/{blur,sharp}/"}


# ----------------------------------------------------------------------------- schema
def _check_threads(value: int | str) -> None:
    if isinstance(value, str) and value != "auto":
        raise ValueError(f"must be a number of threads or auto, got {value!r}")
    if isinstance(value, int) and value < 1:
        raise ValueError(f"must be >= 1, got {value}")


def _check_rows(rows: list[str]) -> None:
    unknown = [row for row in rows if row not in ROWS]
    if unknown or len(set(rows)) != len(rows):
        raise ValueError(f"rows must be distinct names among {list(ROWS)}, got {rows}")


def _check_swap_rows(rows: list[str]) -> None:
    _check_rows(rows)
    if "none" in rows:
        raise ValueError("the no-prior row has no prior to swap")


def _check_seeds(seeds: list[int]) -> None:
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"seeds must be distinct non-negative integers (at least one), got {seeds}")


def _check_scene(scene: dict) -> None:
    try:
        SceneConfig(**{key: tuple(value) if isinstance(value, list) else value for key, value in scene.items()})
    except TypeError as error:
        raise ValueError(f"not a SceneConfig setting: {error}") from None


_SIZE = Field(list, REQUIRED, items=int, length=2, doc="(H, W)")
_SCENE = Field(dict, {}, check=_check_scene, doc="robustprior.data.scenes.SceneConfig settings (image_size excluded)")
GENERATE_SCHEMAS: dict[str, Section] = {
    "dehaze": Section({"image_size": _SIZE, "train_images": Field(int, REQUIRED, at_least=1),
                       "test_images": Field(int, REQUIRED, at_least=1), "seed": Field(int, 0), "scene": _SCENE}),
    "deblur": Section({"image_size": _SIZE, "train_sequences": Field(int, REQUIRED, at_least=1),
                       "train_frames": Field(int, REQUIRED, at_least=1), "test_sequences": Field(int, REQUIRED, at_least=1),
                       "test_frames": Field(int, REQUIRED, at_least=1), "blur_frames": Field(int, 7, at_least=1),
                       "camera_shake": Field(float, 0.3, at_least=0), "camera_pan": Field(float, 0.0, at_least=0),
                       "camera_pan_angle": Field(float, None), "seed": Field(int, 0), "scene": _SCENE}),
}
RECIPE_SCHEMA = Section({
    "task": Field(str, REQUIRED, choices=("dehaze", "deblur")),
    "threads": Field((int, str), "auto", check=_check_threads, nullable=True,
                     doc="torch threads per job: auto = the idle cores (1-minute load) shared by the parallel jobs"),
    "recipe": Section({
        "data_root": Field(str, None, doc="real data (--data-root), filling the roots' {data_root}; null: the "
                                          "generated data, else the datasets' own dataroot"),
        "roots": Section({"train": Field(str, "{data_root}/train"), "test": Field(str, "{data_root}/test")}),
        "generate": Field(dict, None, doc="the generated data set (null: --data-root is required)"),
        "checkpoints": Section({"sam": Field(str, "tiny"), "robustsam": Field(str, "tiny")}),
        "grid_images": Field(int, 4, at_least=1),
        "rows": Field(list, list(ROWS), items=str, check=_check_rows),
        "seeds": Field(list, [0, 1, 2], items=int, check=_check_seeds),
        "seeded_rows": Field(list, ["sam", "robustsam"], items=str, check=_check_rows),
        "parallel": Field(int, 2, at_least=1, doc="row jobs at a time (separate processes)"),
        "amg_operating_point": Field(str, "config", choices=OPERATING_POINTS,
                                     doc="config: the prior section's thresholds for both prior rows; per_path: "
                                         "each row's own, chosen on degraded training images (restoration.operating_point)"),
        "swap_rows": Field(list, ["gt_masks"], items=str, check=_check_swap_rows,
                           doc="rows whose trained networks are also evaluated with SAM's and RobustSAM's test "
                               "priors (restoration.prior_swap)"),
    }),
})


# ----------------------------------------------------------------------------- data
def _scene_config(spec: dict[str, Any]) -> SceneConfig:
    scene = {key: tuple(value) if isinstance(value, list) else value for key, value in (spec.get("scene") or {}).items()}
    return SceneConfig(image_size=tuple(spec["image_size"]), **scene)


def generate_sots(root: Path, spec: dict[str, Any], progress: bool) -> str:
    """SOTS-like train and test sets (``root/{train,test}/outdoor/{hazy,gt,instances}``); returns a description."""
    seed, config = int(spec["seed"]), _scene_config(spec)
    write_sots_dataset(root / "train", spec["train_images"], seed, config=config, overwrite=True, progress=progress)
    write_sots_dataset(root / "test", spec["test_images"], seed + 1, config=config, overwrite=True, progress=progress)
    height, width = spec["image_size"]
    return (f"generated SOTS-like data (robustprior.data.scenes, atmospheric scattering with RESIDE's airlight/beta grid; "
            f"{width}x{height} px, seeds {seed}/{seed + 1}; NOT the real SOTS)")


def generate_gopro(root: Path, spec: dict[str, Any], progress: bool) -> str:
    """GoPro-like train and test sets (``root/{train,test}/GOPRxxxx_11_00/{blur,sharp,instances}``); returns a description."""
    seed, config = int(spec["seed"]), _scene_config(spec)
    common = {"blur_frames": spec["blur_frames"], "camera_shake": spec["camera_shake"],
              "camera_pan": spec.get("camera_pan", 0.0), "camera_pan_angle": spec.get("camera_pan_angle"),
              "config": config, "overwrite": True, "progress": progress}
    write_gopro_dataset(root, spec["train_sequences"], spec["train_frames"], seed, split="train", **common)
    write_gopro_dataset(root, spec["test_sequences"], spec["test_frames"], seed + 1, split="test", **common)
    height, width = spec["image_size"]
    pan = f", a steady {spec['camera_pan']:g} px/sub-frame camera pan" if spec.get("camera_pan") else ""
    return (f"generated GoPro-like data (robustprior.data.scenes, moving layered scenes averaged over {spec['blur_frames']} "
            f"sub-frames{pan}; {width}x{height} px, seeds {seed}/{seed + 1}; NOT the real GoPro)")


GENERATORS: dict[str, Callable[[Path, dict[str, Any], bool], str]] = {"dehaze": generate_sots, "deblur": generate_gopro}


def ensure_generated_data(task: str, root: Path, spec: dict[str, Any], progress: bool = True) -> str:
    """Generate the recipe's data into ``root`` unless it already holds data made with the same ``spec``."""
    marker = root / DATA_MARKER
    wanted = {"task": task, "generate": spec}
    if marker.is_file():
        found = json.loads(marker.read_text())
        if {key: found.get(key) for key in wanted} == wanted:
            return found["description"]
    marker.unlink(missing_ok=True)
    description = GENERATORS[task](root, spec, progress)
    write_text_atomically(marker, json.dumps({**wanted, "description": description}, indent=2) + "\n")
    return description


# ----------------------------------------------------------------------------- config
def load_recipe_config(task: str, path: str | Path | None) -> dict[str, Any]:
    """The recipe config (``path``, or the embedded ``restoration/options/<task>_default.yaml``), its recipe keys
    validated against :data:`RECIPE_SCHEMA` (defaults filled in; the training options are checked per row
    by :func:`restoration.config.check_options`)."""
    source = Path(path or CONFIG_DIR / f"{task}_default.yaml")
    config = read_config_file(source)
    recipe_part = validate_config(split_recipe_keys(config)[1], RECIPE_SCHEMA, source=str(source))
    if recipe_part["task"] != task:
        raise RunSetupError(f"{source} is a config for task {recipe_part['task']!r}, not {task!r}")
    generate = recipe_part["recipe"]["generate"]
    if generate is not None:
        recipe_part["recipe"]["generate"] = validate_config(generate, GENERATE_SCHEMAS[task],
                                                            source=f"{source} recipe.generate")
    return {**config, **recipe_part}


def job_list(config: dict[str, Any], rows: Sequence[str]) -> list[tuple[str, int]]:
    """``(row, seed)`` of every training job: seeded rows once per seed, the others with the first seed."""
    recipe = config["recipe"]
    seeds = recipe["seeds"]
    return [(row, seed) for row in rows for seed in (seeds if row in recipe["seeded_rows"] else seeds[:1])]


def row_options(config: dict[str, Any], row: str, seed: int, roots: dict[str, str] | None,
                prior_cache: Path) -> dict[str, Any]:
    """The :mod:`restoration.train` options of one job (``roots``: the train / test dataset folders, found
    in their release layout by :func:`restoration.paired_data.locate_dataset`; None: keep the config's
    ``dataroot_lq`` / ``dataroot_gt``)."""
    options, _ = split_recipe_keys(config)
    options["name"] = f"{config['task']}_{row}_seed{seed}"
    options["manual_seed"] = seed
    datasets = options["datasets"]
    if "test" in datasets and "val" not in datasets:
        datasets["val"] = datasets.pop("test")
    for phase, root_name in (("train", "train"), ("val", "test")):
        if not isinstance(datasets.get(phase), dict):
            raise RunSetupError(f"the recipe config has no datasets.{phase} section (layout, and the training options)")
        if roots is not None:
            datasets[phase].update(locate_dataset(datasets[phase].get("layout", "folders"), roots[root_name],
                                                  blur_dir=datasets[phase].get("blur_dir", "blur")))
        if not (datasets[phase].get("dataroot_lq") and datasets[phase].get("dataroot_gt")):
            raise RunSetupError(f"datasets.{phase}.dataroot_lq / dataroot_gt are not set: pass --data-root")
    prior = {**options.get("prior", {}), "kind": row, "cache_dir": str(prior_cache)}
    if row == "none":
        options["network_g"]["prior"] = "none"
        options["prior"] = {"kind": "none"}
    elif row in CONTROL_PRIOR_KINDS:
        options["prior"] = {key: value for key, value in prior.items() if key in ("kind", "cache_dir", "num_segments",
                                                                                  "grouping")}
        options["prior"]["shuffle_seed"] = seed
        if options["network_g"].get("prior") == "features":
            raise RunSetupError("control rows have masks only: a 'features' network cannot run them; "
                                "leave gt_masks / shuffled_masks out of recipe.rows")
    else:
        options["prior"] = {**prior, "checkpoint": config["recipe"]["checkpoints"][row]}
    return options


def lq_paths(options: dict[str, Any], phases: Sequence[str] = ("train", "val")) -> list[str]:
    """The degraded inputs of the (validated) options' data sections, as :class:`PriorPairedDataset` pairs them."""
    return [str(lq) for phase in phases for lq, _ in PriorPairedDataset(dataset_options(options, phase)).pairs]


def apply_operating_points(config: dict[str, Any], rows: Sequence[str], options: dict[tuple[str, int], dict[str, Any]],
                           train_paths: Sequence[str]) -> dict[str, Any] | None:
    """With ``recipe.amg_operating_point: per_path``, each prior row's thresholds chosen on the degraded
    training images (:func:`restoration.operating_point.choose_operating_points`) and written into its jobs'
    prior options; returns the choice for the report (None: the prior section's thresholds for both rows)."""
    if config["recipe"]["amg_operating_point"] != "per_path":
        return None
    prior_rows = [row for row in ("sam", "robustsam") if row in rows]
    if not prior_rows:
        return None
    first_seed = config["recipe"]["seeds"][0]
    print("== automatic-mask operating point per prior row (degraded training images) ==", flush=True)
    chosen = choose_operating_points({row: options[(row, first_seed)]["prior"] for row in prior_rows}, train_paths)
    for (row, _), job_options in options.items():
        if row in chosen["settings"]:
            job_options["prior"].update(chosen["settings"][row])
    return chosen


def swap_verdicts(config: dict[str, Any], rows: Sequence[str], run_dirs: dict[tuple[str, int], Path],
                  options: dict[tuple[str, int], dict[str, Any]], prior_cache: Path) -> dict[str, dict[str, Any]]:
    """The test-time prior swap (:func:`restoration.prior_swap.prior_swap`) of each ``recipe.swap_rows`` row
    that ran, over all its seeds, between the SAM and RobustSAM rows' priors (both rows must have run)."""
    if "sam" not in rows or "robustsam" not in rows:
        return {}
    first_seed = config["recipe"]["seeds"][0]
    priors = {kind: options[(kind, first_seed)]["prior"] for kind in ("sam", "robustsam")}
    swaps = {}
    for row in config["recipe"]["swap_rows"]:
        folders = [folder for (job_row, _), folder in sorted(run_dirs.items()) if job_row == row]
        if folders:
            swaps[row] = prior_swap(folders, priors, prior_cache)
    return swaps


# ----------------------------------------------------------------------------- command line
def build_parser(task: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", help=f"real data instead of generated ({DATA_DESCRIPTIONS[task]})")
    parser.add_argument("--sam-checkpoint", help="SAM prior model: a file or a name (sam_vit_h, ...); default: bundled tiny")
    parser.add_argument("--robustsam-checkpoint",
                        help="RobustSAM prior model: a file or a name (robustsam_vit_h, ...); default: bundled tiny")
    configs = parser.add_mutually_exclusive_group()
    configs.add_argument("--config", help=f"recipe config YAML (default: the embedded restoration/options/{task}_default.yaml; "
                                          f"full scale: restoration/options/{'dehaze_sots' if task == 'dehaze' else 'deblur_gopro'}.yaml)")
    configs.add_argument("--preset", choices=PRESETS[task],
                         help=f"an embedded config: restoration/options/{task}_PRESET.yaml ({PRESET_HELP[task]})")
    parser.add_argument("--output", default=f"outputs/{task}", help="output folder (default: %(default)s)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the runs in the output folder")
    group.add_argument("--overwrite", action="store_true",
                       help="replace the runs and report in the output folder (generated data and prior cache are kept; "
                            "only a folder this recipe made, holding nothing else)")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="with --resume: continue with settings that differ from the recorded ones (every run "
                             "continues with them; recorded in OUTPUT/config_changes.yaml)")
    parser.add_argument("--iterations", type=int, help="override train.total_iter (e.g. 3 for a smoke test)")
    parser.add_argument("--seeds", help="override recipe.seeds, e.g. 0,1,2,3,4")
    parser.add_argument("--parallel", type=int, help="override recipe.parallel (row jobs at a time)")
    parser.add_argument("--device", default="auto", help="auto (default: CUDA when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_restore_arguments(parser)
    return parser


def _load_average() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def resolve_threads(setting: int | str | None, parallel: int = 1) -> int | None:
    """The ``threads`` config: a number, None (torch's default) or ``"auto"``: the CPU cores not already
    busy (core count minus the rounded 1-minute load average) shared by ``parallel`` jobs, at least 1. On
    a shared CPU, more OpenMP threads than idle cores make training several times slower, not faster."""
    if setting is None or isinstance(setting, int):
        return setting
    if setting != "auto":
        raise ValueError(f"threads must be a number, null or 'auto', got {setting!r}")
    cores = os.cpu_count() or 1
    busy = round(_load_average() or 0.0)
    return max(1, (cores - busy) // max(1, parallel))


def foreign_entries(folder: Path, entries: Sequence[Path]) -> list[Path]:
    """Of the top-level ``entries`` of a recipe output folder that ``--overwrite`` would delete, every
    path the recipe did not write (at any depth it looks): anything but ``runs/``, the report files,
    ``config_changes.yaml``; inside ``runs/``: a row folder (a name of :data:`ROWS`) holding only
    ``seed<k>/`` run folders of :mod:`restoration.train` (with its marker and only its outputs) and
    their ``seed<k>.yaml`` / ``seed<k>.log``. Temporary files of interrupted writes count as the recipe's."""
    foreign: list[Path] = []
    for entry in entries:
        if is_temporary(entry.name) or (entry.name in (*REPORT_FILES, CONFIG_CHANGES_NAME) and entry.is_file()
                                        and not entry.is_symlink()):
            continue
        if entry.name != "runs" or not entry.is_dir() or entry.is_symlink():
            foreign.append(entry)
            continue
        for row in sorted(entry.iterdir()):
            if row.name not in ROWS or not row.is_dir() or row.is_symlink():
                foreign.append(row)
                continue
            for item in sorted(row.iterdir()):
                if is_temporary(item.name):
                    continue
                if item.is_file() and not item.is_symlink() and re.fullmatch(r"seed\d+\.(yaml|log)", item.name):
                    continue
                if not (re.fullmatch(r"seed\d+", item.name) and item.is_dir() and not item.is_symlink()
                        and _is_training_run(item)):
                    foreign.append(item)
                    continue
                foreign += [path for path in sorted(item.iterdir())
                            if path.name not in RUN_OUTPUTS and not is_temporary(path.name)]
    return foreign


def _is_training_run(folder: Path) -> bool:
    """Whether ``folder`` carries the marker of a :mod:`restoration.train` run."""
    try:
        return json.loads((folder / RUN_MARKER).read_text()).get("kind") == RUN_KIND
    except (OSError, ValueError, AttributeError):
        return False


def open_output(output: Path, task: str, resume: bool, overwrite: bool):
    """Open the recipe output folder as a run folder of kind ``<task>_recipe`` (module docstring):
    created, resumed, or cleared for ``overwrite`` (keeping :data:`KEPT_BY_OVERWRITE`, refusing
    :func:`foreign_entries`); returns the handle holding its lock (close it when the recipe ends).
    Every refusal is a one-line :class:`~robustprior.training.RunSetupError`; nothing is changed then."""
    check_output_folder(output, "--output")
    return prepare_run_folder(output, f"{task}_recipe", resume, overwrite, keep=KEPT_BY_OVERWRITE,
                              foreign=foreign_entries)


def _differences(old: Any, new: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old, new)}`` of every leaf value that differs between two nested mappings
    (a key missing on one side: None there)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return {} if old == new else {prefix.rstrip("."): (old, new)}
    found: dict[str, tuple[Any, Any]] = {}
    for key in list(old) + [key for key in new if key not in old]:
        found.update(_differences(old.get(key), new.get(key), f"{prefix}{key}."))
    return found


def record_settings(output: Path, config: dict[str, Any], resume: bool, allow_change: bool) -> bool:
    """Write ``recipe_config.yaml``; with ``resume``, first compare ``config`` with the recorded one: a
    difference in a setting that changes the runs is a :class:`~robustprior.training.ConfigChangeError`
    unless ``allow_change``; accepted differences go to ``config_changes.yaml``. Returns whether the
    runs' settings changed (every run must then continue with the new ones)."""
    path = output / RECIPE_CONFIG
    changed = False
    if resume and path.is_file():
        recorded = yaml.safe_load(path.read_text()) or {}
        differences = _differences(recorded, config)
        changes_runs = {key: values for key, values in differences.items() if key not in UNCHANGING_KEYS}
        if changes_runs and not allow_change:
            raise config_change_error(changes_runs, "resume with the recorded settings (see "
                                      f"{path}; drop the options that differ)")
        if differences:
            record_config_changes(output, differences, "--allow-config-change" if changes_runs else
                                  "command line (settings that change no run)")
        changed = bool(changes_runs)
    write_text_atomically(path, yaml.safe_dump(config, sort_keys=False))
    return changed


# ----------------------------------------------------------------------------- jobs
def _job_environment(threads: int | None) -> dict[str, str]:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")]))}
    if threads is not None:
        environment.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    environment[PARENT_VARIABLE] = str(os.getpid())  # restoration.train stops when this process dies
    return environment


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a job's whole process group (the job and its data-loader workers); the job must not
    have been reaped yet (its id then still names its group)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stop_jobs(processes: Sequence[subprocess.Popen], grace: float = STOP_GRACE_SECONDS) -> None:
    """Stop running jobs: SIGTERM to each (a job writes a checkpoint and exits), then SIGKILL to the
    process group of any job still running after ``grace`` seconds (or at a second stop signal)."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        try:
            process.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    try:
        for process in running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(process)
    except Interrupted:  # a second Ctrl-C: no more waiting
        for process in running:
            if process.poll() is None:
                _kill_group(process)
    for process in running:
        process.wait()


def _run_jobs_in_processes(jobs: list[tuple[str, int, Path, Path]], parallel: int, threads: int | None,
                           device: str, resume: bool, allow_config_change: bool = False) -> None:
    """Run ``(row, seed, options file, run folder)`` jobs as ``python -m restoration.train`` processes,
    ``parallel`` at a time, each in its own process group; a failed job stops the recipe, naming its log;
    any exception here (a stop signal: :class:`~robustprior.training.interrupt.Interrupted`) stops
    every running job first (:func:`stop_jobs`)."""
    environment = _job_environment(threads)
    pending, running, done = list(jobs), [], 0
    try:
        while pending or running:
            while pending and len(running) < parallel:
                row, seed, options_file, run_dir = pending.pop(0)
                command = [sys.executable, "-m", "restoration.train", "--opt", str(options_file), "--output",
                           str(run_dir), "--device", device, "--no-progress"]
                command += (["--resume"] if resume else []) + (["--allow-config-change"] if allow_config_change else [])
                log = run_dir.parent / f"seed{seed}.log"
                with open(log, "w") as handle:  # the child holds its own copy
                    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=environment,
                                               start_new_session=True)
                running.append((row, seed, log, time.perf_counter(), process))
            time.sleep(0.2)
            for entry in list(running):
                row, seed, log, started, process = entry
                if process.poll() is None:
                    continue
                running.remove(entry)
                done += 1
                if process.returncode != 0:
                    stop_jobs([other for *_, other in running])
                    running = []
                    tail = log.read_text().strip().splitlines()[-1:] or ["(empty log)"]
                    raise RunSetupError(f"job {row} seed {seed} failed (exit {process.returncode}): {tail[0]}; log {log}")
                print(f"[{done}/{len(jobs)}] {ROW_LABELS[row]}, seed {seed}: done in "
                      f"{(time.perf_counter() - started) / 60:.1f} min", flush=True)
    except BaseException:
        stop_jobs([process for *_, process in running])
        raise


# ----------------------------------------------------------------------------- the recipe
def run_recipe(task: str, description: str, argv: Sequence[str] | None = None) -> int:
    """The whole recipe (module docstring); returns the process exit status: 0, 2 after a one-line
    ``error: ...``, 130 / 143 after SIGINT / SIGTERM (``interrupted; resume with --resume``)."""
    parser = build_parser(task, description)
    args = parser.parse_args(argv)
    if args.allow_config_change and not args.resume:
        parser.error("--allow-config-change goes with --resume")
    keep_freed_memory()  # robustprior.io.allocator: freed tensors stay in the process
    if args.restore:
        return run_restore(args, task)
    with stop_on_signals():
        try:
            return _run_recipe(task, args)
        except RunSetupError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except Interrupted as stop:
            print("interrupted; resume with --resume", file=sys.stderr, flush=True)
            return stop.exit_status


def requested_config(task: str, args: argparse.Namespace) -> dict[str, Any]:
    """The recipe config (``--config``, or the ``--preset``) with the command line's overrides, its recipe
    keys validated (defaults filled)."""
    if args.preset and args.preset != "default":
        args.config = str(CONFIG_DIR / f"{task}_{args.preset}.yaml")
    config = load_recipe_config(task, args.config)
    overrides: dict[str, Any] = {"recipe": {"checkpoints": {}}}
    for row in ("sam", "robustsam"):
        if getattr(args, f"{row}_checkpoint"):
            overrides["recipe"]["checkpoints"][row] = getattr(args, f"{row}_checkpoint")
    if args.data_root:
        overrides["recipe"]["data_root"] = args.data_root
    if args.iterations is not None:
        overrides["train"] = {"total_iter": args.iterations}
    if args.seeds:
        try:
            overrides["recipe"]["seeds"] = [int(value) for value in args.seeds.split(",")]
        except ValueError:
            raise ConfigError(f"--seeds must be comma-separated integers, e.g. 0,1,2; got {args.seeds!r}") from None
    if args.parallel is not None:
        overrides["recipe"]["parallel"] = args.parallel
    config = merge_config(config, overrides)
    recipe_part = validate_config(split_recipe_keys(config)[1], RECIPE_SCHEMA, source="the recipe with its overrides")
    return {**config, **recipe_part}


def data_roots(config: dict[str, Any], output: Path) -> tuple[Path | None, dict[str, str] | None]:
    """``(generated data folder or None, the train / test roots or None: the datasets' own dataroot)``."""
    recipe = config["recipe"]
    if recipe["data_root"]:
        data_root, generated = Path(recipe["data_root"]), None
    elif recipe.get("generate"):
        data_root = generated = output / "data"
    else:
        return None, None
    return generated, {phase: template.format(data_root=data_root) for phase, template in recipe["roots"].items()}


def check_recipe(config: dict[str, Any], roots: dict[str, str] | None, prior_cache: Path, data_exists: bool) -> None:
    """Every row's training options, validated before anything is written (one
    :class:`~robustprior.training.ConfigError` naming the first problem); the data layout too when the
    data already exists (real data)."""
    checked = copy.deepcopy(config)
    if roots is not None:  # the dataset roots stand in for their folders (located per row once the data exists)
        for phase, root_name in (("train", "train"), ("val", "test"), ("test", "test")):
            section = checked.get("datasets", {}).get(phase) if isinstance(checked.get("datasets"), dict) else None
            if isinstance(section, dict):
                section.update(dataroot_lq=roots[root_name], dataroot_gt=roots[root_name])
    validate_options(split_recipe_keys(checked)[0], source="the training options of the recipe config")
    for index, (row, seed) in enumerate(job_list(config, config["recipe"]["rows"])):
        options = validate_options(row_options(checked, row, seed, roots if data_exists else None, prior_cache),
                                   source=f"the training options of row {row}, seed {seed}")
        check_options_agree(options)
        if data_exists and index == 0:
            check_data(options)


def prior_models(config: dict[str, Any]) -> dict[str, str]:
    """The description of each prior row's model (nothing is built); an unknown name or an unreadable
    checkpoint file is one :class:`~robustprior.training.ConfigError` line naming the setting."""
    models = {}
    for row, checkpoint in config["recipe"]["checkpoints"].items():
        if row in config["recipe"]["rows"]:
            try:
                models[row] = describe_prior_model(row, checkpoint)
            except (ValueError, OSError) as error:
                option = f"--{row}-checkpoint / recipe.checkpoints.{row}"
                raise ConfigError(f"{option}: {str(error).splitlines()[0]}") from None
    return models


def _run_recipe(task: str, args: argparse.Namespace) -> int:
    started, cpu_started, load_start = time.perf_counter(), time.process_time(), _load_average()
    config = requested_config(task, args)
    output = Path(args.output)
    context = setup_distributed(args.device)  # under torchrun: rank 0 prepares folders and data, the others wait
    progress = not args.no_progress and context.is_main
    generated, roots = data_roots(config, output)
    prior_cache = output / PRIOR_CACHE_NAME
    check_recipe(config, roots, prior_cache, data_exists=generated is None)
    models = prior_models(config)
    lock = context.run_on_main(open_output, output, task, args.resume, args.overwrite)  # before any work
    try:
        return _run_in_folder(task, args, config, output, context, progress, generated, roots, prior_cache, models,
                              (started, cpu_started, load_start))
    finally:
        if lock is not None:
            lock.close()


def _run_in_folder(task: str, args: argparse.Namespace, config: dict[str, Any], output: Path, context, progress: bool,
                   generated: Path | None, roots: dict[str, str] | None, prior_cache: Path, models: dict[str, str],
                   clock: tuple[float, float, float | None]) -> int:
    """The recipe inside its locked output folder (:func:`_run_recipe` checked everything before)."""
    started, cpu_started, load_start = clock
    changed = context.run_on_main(record_settings, output, config, args.resume, args.allow_config_change)
    changed = context.all_gather(changed)[0]
    in_processes = context.world_size == 1 and config["recipe"]["parallel"] > 1
    threads = resolve_threads(config.get("threads"), config["recipe"]["parallel"] if in_processes else 1)
    if threads is not None:
        torch.set_num_threads(threads)

    embedded = args.config is None and args.data_root is None and not (args.sam_checkpoint or args.robustsam_checkpoint)
    if embedded and context.is_main:
        print(f"Using the embedded defaults: bundled tiny SAM/RobustSAM models ({BUNDLED['tiny'].name}) on generated "
              f"{'SOTS' if task == 'dehaze' else 'GoPro'}-like data (restoration/options/{task}_default.yaml); "
              "see --help for real data, real models and the full-scale config.")
    for row, model in models.items():
        if context.is_main and ("RANDOMLY INITIALISED" in model or "UNTRAINED" in model):
            print(f"warning: {ROW_LABELS[row]}: {model} (the report says so)", file=sys.stderr)

    if generated is not None:
        data_description = "generated data"
        if context.is_main:
            data_description = ensure_generated_data(task, generated, config["recipe"]["generate"], progress)
    elif roots is not None:
        data_description = f"real data at {config['recipe']['data_root']}"
    else:
        datasets = config["datasets"]
        evaluation = datasets.get("val", datasets.get("test", {}))
        data_description = f"real data: train {datasets['train'].get('dataroot_lq')}, test {evaluation.get('dataroot_lq')}"
    context.barrier()
    first_seed = config["recipe"]["seeds"][0]
    reference = check_options(row_options(config, "none", first_seed, roots, prior_cache))
    rows, dropped = list(config["recipe"]["rows"]), {}
    if not has_instance_maps(lq_paths(reference)):
        for row in CONTROL_PRIOR_KINDS:
            if row in rows:
                rows.remove(row)
                dropped[row] = "the data has no ground-truth instance maps (real data): control rows need generated data"
    jobs = job_list(config, rows)
    options = {(row, seed): check_options(row_options(config, row, seed, roots, prior_cache)) for row, seed in jobs}
    operating_point = apply_operating_points(config, rows, options, lq_paths(reference, ("train",)))
    if context.is_main:
        for row in rows:  # priors once, before the jobs: parallel jobs then only read the cache
            if row != "none":
                prior_options = options[(row, first_seed)]["prior"]
                print(f"== priors: {ROW_LABELS[row]} ==", flush=True)
                prepare_priors(prior_options, lq_paths(reference), prior_cache, progress=progress)
    context.barrier()

    run_dirs = {(row, seed): output / "runs" / row / f"seed{seed}" for row, seed in jobs}
    finished = [job for job in jobs if args.resume and not changed and (run_dirs[job] / RESULTS_NAME).is_file()]
    todo = [job for job in jobs if job not in finished]
    if context.is_main:
        print(f"{len(jobs)} training jobs ({len(finished)} already finished), "
              f"{config['recipe']['parallel'] if in_processes else 1} at a time, {threads or 'default'} torch threads each",
              flush=True)
    if in_processes:
        files = []
        for row, seed in todo:
            run_dirs[(row, seed)].parent.mkdir(parents=True, exist_ok=True)
            options_file = run_dirs[(row, seed)].parent / f"seed{seed}.yaml"
            write_text_atomically(options_file, yaml.safe_dump(options[(row, seed)], sort_keys=False))
            files.append((row, seed, options_file, run_dirs[(row, seed)]))
        _run_jobs_in_processes(files, config["recipe"]["parallel"], threads, args.device, args.resume, changed)
    else:
        for row, seed in todo:
            if context.is_main:
                print(f"== {ROW_LABELS[row]}, seed {seed} ==", flush=True)
            with warnings.catch_warnings():  # "no masks" was told when the priors were computed (above)
                warnings.filterwarnings("ignore", message=NO_MASKS_WARNING, category=RuntimeWarning)
                trainer = RestorationTrainer(options[(row, seed)], run_dirs[(row, seed)], resume=args.resume,
                                             device=args.device, progress=progress, allow_config_change=changed)
            trainer.run()
            del trainer
    if not context.is_main:
        return 0
    test_paths = lq_paths(reference, ("val",))
    quality, reliance = {}, {}
    with warnings.catch_warnings():  # "no masks" was told when the priors were computed (above)
        warnings.filterwarnings("ignore", message=NO_MASKS_WARNING, category=RuntimeWarning)
        for row in rows:
            if row == "none":
                continue
            index = prepare_priors(options[(row, first_seed)]["prior"], test_paths, prior_cache, progress=False)
            quality[row] = prior_quality(index, test_paths)
            reliance[row] = prior_reliance(run_dirs[(row, first_seed)], device="cpu")
        swap = swap_verdicts(config, rows, run_dirs, options, prior_cache)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = time.process_time() - cpu_started + children.ru_utime + children.ru_stime
    wall = time.perf_counter() - started
    setup = {"data": data_description, "embedded_defaults": embedded, "threads": threads,
             "parallel": config["recipe"]["parallel"] if in_processes else 1, "wall_seconds": round(wall, 1),
             "cpu_seconds": round(cpu_seconds, 1), "idle_two_core_estimate_seconds": round(cpu_seconds / 2, 1),
             "command": " ".join(sys.argv), "load_average": {"start": load_start, "end": _load_average()},
             "dropped_rows": dropped, "seeds": config["recipe"]["seeds"],
             "augment": {key: bool(reference["datasets"]["train"].get(key)) for key in ("use_flip", "use_rot")},
             "amg_operating_point": operating_point,
             "peak_memory_gb": {"recipe": peak_rss_gb(resource.RUSAGE_SELF),
                                "largest_job": peak_rss_gb(resource.RUSAGE_CHILDREN)}}
    paths = write_report(task, output, run_dirs, setup, quality, reliance, int(config["recipe"]["grid_images"]), swap)
    report = json.loads(paths["report.json"].read_text())
    print(format_table(report))
    print(f"Outputs: {', '.join(str(path) for path in paths.values())} (runs in {output / 'runs'}); "
          f"wall time {wall / 60:.1f} min, {cpu_seconds / 60:.1f} CPU minutes")
    return 0
