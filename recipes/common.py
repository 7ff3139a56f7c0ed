"""Shared code of the Table-8 recipes ``recipes/dehaze.py`` and ``recipes/deblur.py``.

A recipe trains the same restoration network three times on the same data (no prior, SAM prior,
RobustSAM prior), evaluates each on the full test images and writes ``report.md``, ``report.json``
and ``grid.png`` (:mod:`restoration.report`).

Recipe config (YAML): the :mod:`restoration.train` options (``name``, ``manual_seed``, ``network_g``
with the prior rows' ``prior``, ``datasets``, ``train``, ``val``, ``prior`` with the automatic-mask
settings shared by both prior rows) plus

* ``task``: dehaze | deblur;  ``threads``: torch CPU threads (a number, null = torch's default,
  or auto: see :func:`resolve_threads`);
* ``recipe.roots``: ``{train: TEMPLATE, test: TEMPLATE}``, the datasets' ``dataroot`` made from
  ``--data-root`` (``{data_root}`` is replaced), or from ``<output>/data`` for generated data;
* ``recipe.generate``: the generated data set (absent: ``--data-root`` is required);
* ``recipe.checkpoints``: ``{sam: ..., robustsam: ...}`` prior models ("tiny" = bundled);
* ``recipe.grid_images``: test images in ``grid.png``.

Output folder: ``data/`` (generated; reused while its settings match), ``prior_cache/`` (content
keyed, reused), ``runs/{none,sam,robustsam}/`` (:mod:`restoration.train` run folders),
``recipe_config.yaml`` and the report files.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python recipes/dehaze.py` from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from restoration.datasets import describe_prior_model  # noqa: E402
from restoration.report import ROWS, format_table, write_report  # noqa: E402
from restoration.train import RestorationTrainer, RunExistsError, load_options, setup_distributed  # noqa: E402
from robustprior.io.atomic import write_text_atomically  # noqa: E402
from robustprior.load import BUNDLED  # noqa: E402
from robustprior.data.scenes import SceneConfig, write_gopro_dataset, write_sots_dataset  # noqa: E402
from robustprior.training import merge_config  # noqa: E402

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
RECIPE_KEYS = ("task", "threads", "recipe")  # config keys that are not restoration.train options
DATA_MARKER = "recipe_data.json"
REPORT_FILES = ("report.md", "report.json", "grid.png")
DATA_DESCRIPTIONS = {"dehaze": "RESIDE OTS/ITS-style hazy/ + gt|clear/ under DATA_ROOT/train, SOTS under DATA_ROOT/test",
                     "deblur": "GoPro: DATA_ROOT/train/SEQUENCE/{blur,sharp}/ and DATA_ROOT/test/SEQUENCE/{blur,sharp}/"}


# ----------------------------------------------------------------------------- data
SCENE_KEYS = ("object_count_range", "max_object_speed", "max_camera_speed")  # optional SceneConfig fields of recipe.generate


def _scene_config(spec: dict[str, Any]) -> SceneConfig:
    extra = {key: tuple(spec[key]) if isinstance(spec[key], list) else spec[key] for key in SCENE_KEYS if key in spec}
    return SceneConfig(image_size=tuple(spec["image_size"]), **extra)


def generate_sots(root: Path, spec: dict[str, Any], progress: bool) -> str:
    """SOTS-like train and test sets (``root/{train,test}/outdoor/{hazy,gt}``) from the scene world; returns a description."""
    seed, config = int(spec["seed"]), _scene_config(spec)
    write_sots_dataset(root / "train", spec["train_images"], seed, config=config, overwrite=True, progress=progress)
    write_sots_dataset(root / "test", spec["test_images"], seed + 1, config=config, overwrite=True, progress=progress)
    height, width = spec["image_size"]
    return (f"generated SOTS-like data (robustprior.data.scenes, atmospheric scattering with RESIDE's airlight/beta grid; "
            f"{width}x{height} px, seeds {seed}/{seed + 1}; NOT the real SOTS)")


def generate_gopro(root: Path, spec: dict[str, Any], progress: bool) -> str:
    """GoPro-like train and test sets (``root/{train,test}/GOPRxxxx_11_00/{blur,sharp}``); returns a description."""
    seed, config = int(spec["seed"]), _scene_config(spec)
    common = {"blur_frames": spec["blur_frames"], "camera_shake": spec["camera_shake"],
              "camera_pan": spec.get("camera_pan", 0.0), "camera_pan_angle": spec.get("camera_pan_angle"), "config": config, "overwrite": True, "progress": progress}
    write_gopro_dataset(root, spec["train_sequences"], spec["train_frames"], seed, split="train", **common)
    write_gopro_dataset(root, spec["test_sequences"], spec["test_frames"], seed + 1, split="test", **common)
    height, width = spec["image_size"]
    return (f"generated GoPro-like data (robustprior.data.scenes, moving layered scenes averaged over {spec['blur_frames']} "
            f"sub-frames; {width}x{height} px, seeds {seed}/{seed + 1}; NOT the real GoPro)")


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
    """The recipe config: ``path``, or the embedded default ``recipes/configs/<task>_default.yaml``."""
    config = load_options(path or CONFIG_DIR / f"{task}_default.yaml")
    if config.get("task") != task:
        raise ValueError(f"{path} is a config for task {config.get('task')!r}, not {task!r}")
    return config


def variant_options(
    config: dict[str, Any], row: str, roots: dict[str, str] | None, prior_cache: Path
) -> dict[str, Any]:
    """The :mod:`restoration.train` options of one table row (``none``, ``sam`` or ``robustsam``).

    ``roots``: the train / test ``dataroot`` (None: keep the config's own).
    """
    options = {key: copy.deepcopy(value) for key, value in config.items() if key not in RECIPE_KEYS}
    options["name"] = f"{config['task']}_{row}"
    for phase in ("train", "test"):
        if roots is not None:
            options["datasets"][phase]["dataroot"] = roots[phase]
        if not options["datasets"][phase].get("dataroot"):
            raise ValueError(f"datasets.{phase}.dataroot is not set: pass --data-root")
    if row == "none":
        options["network_g"]["prior"] = "none"
        options["prior"] = {"kind": "none"}
    else:
        checkpoint = config["recipe"]["checkpoints"][row]
        options["prior"] = {**options.get("prior", {}), "kind": row, "checkpoint": checkpoint, "cache_dir": str(prior_cache)}
    return options


def build_parser(task: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", help=f"real data instead of generated ({DATA_DESCRIPTIONS[task]})")
    parser.add_argument("--sam-checkpoint", help="SAM prior model: a file or a name (sam_vit_h, ...); default: bundled tiny")
    parser.add_argument("--robustsam-checkpoint",
                        help="RobustSAM prior model: a file or a name (robustsam_vit_h, ...); default: bundled tiny")
    parser.add_argument("--config", help=f"recipe config YAML (default: the embedded recipes/configs/{task}_default.yaml; "
                                         f"full scale: restoration/options/{'dehaze_sots' if task == 'dehaze' else 'deblur_gopro'}.yaml)")
    parser.add_argument("--output", default=f"outputs/{task}", help="output folder (default: %(default)s)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the runs in the output folder")
    group.add_argument("--overwrite", action="store_true",
                       help="replace the runs and report in the output folder (generated data and prior cache are kept)")
    parser.add_argument("--iterations", type=int, help="override train.total_iter (e.g. 3 for a smoke test)")
    parser.add_argument("--device", default="auto", help="auto (default: CUDA when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


# ----------------------------------------------------------------------------- recipe
def _load_average() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def resolve_threads(setting: int | str | None) -> int | None:
    """The ``threads`` config: a number, None (torch's default) or ``"auto"``: the CPU cores not already
    busy (core count minus the rounded 1-minute load average), at least 1. On a shared CPU, more
    OpenMP threads than idle cores make training several times slower, not faster."""
    if setting is None or isinstance(setting, int):
        return setting
    if setting != "auto":
        raise ValueError(f"threads must be a number, null or 'auto', got {setting!r}")
    cores = os.cpu_count() or 1
    busy = round(_load_average() or 0.0)
    return max(1, min(cores, cores - busy))


def check_output(output: Path, resume: bool, overwrite: bool) -> None:
    """Refuse an output folder that holds a previous run unless resuming or overwriting; clear it for overwrite."""
    previous = [output / name for name in ("runs", *REPORT_FILES) if (output / name).exists()]
    if previous and not (resume or overwrite):
        raise RunExistsError(f"{output} already holds a previous run ({', '.join(p.name for p in previous)}); "
                             "pass --resume to continue it or --overwrite to replace it")
    if overwrite:
        for path in previous:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def run_recipe(task: str, description: str, argv: Sequence[str] | None = None) -> int:
    """The whole recipe (module docstring); returns the process exit status."""
    args = build_parser(task, description).parse_args(argv)
    started, load_start = time.perf_counter(), _load_average()
    config = load_recipe_config(task, args.config)
    overrides: dict[str, Any] = {"recipe": {"checkpoints": {}}}
    if args.sam_checkpoint:
        overrides["recipe"]["checkpoints"]["sam"] = args.sam_checkpoint
    if args.robustsam_checkpoint:
        overrides["recipe"]["checkpoints"]["robustsam"] = args.robustsam_checkpoint
    if args.iterations is not None:
        overrides["train"] = {"total_iter": args.iterations}
    config = merge_config(config, overrides)
    output = Path(args.output)
    context = setup_distributed(args.device)  # under torchrun: rank 0 prepares folders and data, the others wait
    progress = not args.no_progress and context.is_main
    refusal = None
    if context.is_main:
        try:
            check_output(output, args.resume, args.overwrite)
        except RunExistsError as error:
            refusal = str(error)
    refusal = context.all_gather(refusal)[0]
    if refusal is not None:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    threads = resolve_threads(config.get("threads"))
    if threads is not None:
        torch.set_num_threads(threads)

    embedded = args.config is None and args.data_root is None and not (args.sam_checkpoint or args.robustsam_checkpoint)
    if embedded and context.is_main:
        print(f"Using the embedded defaults: bundled tiny SAM/RobustSAM models ({BUNDLED['tiny'].name}) on generated "
              f"{'SOTS' if task == 'dehaze' else 'GoPro'}-like data (recipes/configs/{task}_default.yaml); "
              "see --help for real data, real models and the full-scale config.")
    for row, checkpoint in config["recipe"]["checkpoints"].items():
        model = describe_prior_model(row, checkpoint)
        if context.is_main and ("RANDOMLY INITIALISED" in model or "UNTRAINED" in model):
            print(f"warning: {dict(ROWS)[row]}: {model} (the report says so)", file=sys.stderr)

    roots: dict[str, str] | None = None
    if args.data_root or config["recipe"].get("generate"):
        if args.data_root:
            data_root, data_description = Path(args.data_root), f"real data at {args.data_root}"
        else:
            data_root, data_description = output / "data", "generated data"
            if context.is_main:
                data_description = ensure_generated_data(task, data_root, config["recipe"]["generate"], progress)
        roots = {phase: template.format(data_root=data_root) for phase, template in config["recipe"]["roots"].items()}
    else:
        datasets = config["datasets"]
        data_description = f"real data: train {datasets['train'].get('dataroot')}, test {datasets['test'].get('dataroot')}"
    if context.is_main:
        output.mkdir(parents=True, exist_ok=True)
        write_text_atomically(output / "recipe_config.yaml", yaml.safe_dump(config, sort_keys=False))
    context.barrier()

    run_dirs: dict[str, Path] = {}
    for row, label in ROWS:
        if context.is_main:
            print(f"== {label} ==", flush=True)
        run_dirs[row] = output / "runs" / row
        trainer = RestorationTrainer(variant_options(config, row, roots, output / "prior_cache"), run_dirs[row],
                                     resume=args.resume, overwrite=args.overwrite, device=args.device, progress=progress)
        trainer.run()
        del trainer
    if context.is_main:
        setup = {"data": data_description, "embedded_defaults": embedded, "threads": torch.get_num_threads(),
                 "wall_seconds": round(time.perf_counter() - started, 1), "command": " ".join(sys.argv),
                 "load_average": {"start": load_start, "end": _load_average()}}
        paths = write_report(task, output, run_dirs, setup, int(config["recipe"].get("grid_images", 4)))
        report = json.loads(paths["report.json"].read_text())
        print(format_table(report))
        print(f"Outputs: {', '.join(str(path) for path in paths.values())} (runs in {output / 'runs'}); "
              f"wall time {setup['wall_seconds'] / 60:.1f} min")
    return 0
