"""The one-command GPU run of RobustSAM-tiny (``recipes/train_robustsam_tiny_gpu.py``): scenes, training for a
wall-clock budget, the held-out evaluation against SAM-tiny, one output folder.

The command for the lent GPU machine (the device tool, ``$OUT``, the wheels it needs) is at the top of
the recipe and in ``docs/results/robustsam_tiny_gpu/README.md``; ``--small`` runs the same steps at
toy size on the CPU (the CI check, ``tests/test_train_robustsam_tiny_gpu.py``).

Steps: (1) generate the training scenes, the learning curve's held-out scenes (seed 7000) and the two
evaluation sets (seeds 1000 and 5000, 40 scenes each as ``robustprior/configs/eval_tiny.yaml`` and
``eval_tiny_fresh.yaml``) with every CPU core; (2) train ``robustprior/configs/robustsam_tiny_gpu_fresh.yaml``
(frozen encoder on the device every step, no feature cache, fresh degraded images made ahead by
``data.workers`` processes, bfloat16 autocast) for ``--fit-minutes`` of training (``train.fit_minutes``:
the length is fixed from the first steps' times), measuring the held-out learning curve as it goes;
(3) write the final weights (float16, the bundled file's format) and evaluate them against SAM-tiny
(the frozen ``sam`` path of the same weights) with the Table 2 evaluation
(:func:`robustprior.evaluation.evaluate.run_evaluation`: every kind, point and box prompts, paired 95 %
bootstrap intervals over instances) on both seed sets; (4) write the report with the issue's target.

The output folder gets at most 8 files (the device tool brings back 8 of at most 16 MiB each):
``robustsam_tiny_gpu.safetensors``, ``curve.csv``, ``curve.png``, ``log.csv``, ``config.yaml`` (the
run's config, fitted length included), ``report.md``, ``report.json``. Everything else (scenes, the
run folder with its checkpoints, the evaluation folders) goes to ``--work`` (default: a new folder
under the system's temporary directory), which is kept: ``robustprior train --resume`` continues
the run there. The weights, curve, log and config are copied into the output before the
evaluation starts, so a run stopped during the evaluation still brings them back.

With ``--device cuda`` (the default) and no GPU the command stops with an error before any work;
``--small`` implies ``--device cpu``.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from robustprior.data.sources import build_instance_source
from robustprior.evaluation.evaluate import SUMMARY_ROWS, run_evaluation
from robustprior.io.atomic import write_text_atomically
from robustprior.io.checkpoint import save_checkpoint
from robustprior.load import ROBUST_PARTS_KEY
from ..config import read_config_file, validate_config
from ..provenance import git_commit
from ..run_folder import read_run_config
from .config import SCHEMA
from .curve import CURVE_LOG, CURVE_PLOT
from .trainer import TRAIN_LOG, RobustSAMTrainer

REPO_ROOT = Path(__file__).resolve().parents[3]  # the checkout: relative paths of the config start here
DEFAULT_CONFIG = REPO_ROOT / "robustprior" / "configs" / "robustsam_tiny_gpu_fresh.yaml"
WEIGHTS_NAME = "robustsam_tiny_gpu.safetensors"
OUTPUT_FILES = (WEIGHTS_NAME, CURVE_LOG, CURVE_PLOT, TRAIN_LOG, "config.yaml", "report.md", "report.json")
MAX_FILE_BYTES = 16 * 2**20  # what the device tool brings back per file
EVAL_SEEDS = (1000, 5000)  # robustprior/configs/eval_tiny.yaml and eval_tiny_fresh.yaml
EVAL_SCENES = 40
# the issue's target (IoU points, robust minus SAM, point prompts, on each held-out seed set)
TARGET = {"degrade_gain": 4.0, "degrade_low": 2.0, "clear_within": 0.5}
SMALL_KINDS = ["identity", "gauss_noise", "motion_blur"]
SMALL_EVAL_SCENES = 1  # per seed set: two scenes in all


def small_config(config: dict) -> dict:
    """``--small``: the same recipe at toy size on the CPU (a few scenes and iterations, two batch workers)."""
    config = copy.deepcopy(config)
    config["device"] = "cpu"
    config["data"]["train"]["n_images"] = 4
    config["data"]["workers"] = 2  # the batch makers run as separate processes, as on the GPU
    config["degradations"]["kinds"] = SMALL_KINDS
    config["train"].update(total_iter=2, fit_minutes=None, batch_size_per_gpu=2, prompts_per_image=2, warmup_iter=1,
                           log_every=1, checkpoint_every=1)
    config["curve"].update(every=2, kinds=SMALL_KINDS)
    config["curve"]["data"]["n_images"] = 1
    return config


def run_config(config_path: Path, work: Path, device: str, workers: int, fit_minutes: float | None,
               iterations: int | None, small: bool) -> dict:
    """The training config: the YAML file with the data folders under ``work``, the checkpoint path
    made absolute, the device, the worker count and the length (``fit_minutes`` or ``iterations``)."""
    config = read_config_file(config_path)
    checkpoint = config["model"].get("checkpoint")
    if checkpoint and not Path(checkpoint).is_absolute() and (REPO_ROOT / checkpoint).exists():
        config["model"]["checkpoint"] = str(REPO_ROOT / checkpoint)
    config["device"] = device
    config.setdefault("data", {})["workers"] = workers
    if small:
        config = small_config(config)
    elif iterations is not None:
        config["train"].update(total_iter=iterations, fit_minutes=None)
    elif fit_minutes is not None:
        config["train"]["fit_minutes"] = fit_minutes
    train_data, curve = config["data"]["train"], config.setdefault("curve", {})
    train_data["root"] = str(work / "data" / f"train-{train_data['n_images']}-{train_data['seed']}")
    if curve.get("data"):
        curve["data"]["root"] = str(work / "data" / f"curve-{curve['data']['n_images']}-{curve['data']['seed']}")
    return validate_config(config, SCHEMA)


def eval_sections(work: Path, scenes: int) -> dict[int, dict]:
    """The held-out data sections per evaluation seed, written under ``work``."""
    return {seed: {"format": "scenes", "n_images": scenes, "seed": seed,
                   "root": str(work / "data" / f"eval-{scenes}-{seed}")} for seed in EVAL_SEEDS}


def eval_config(weights: Path, section: Mapping[str, Any], device: str, kinds: str | list[str]) -> dict:
    """The Table 2 evaluation config (``eval_tiny.yaml``'s protocol) of ``weights`` on one held-out set."""
    return {"model": {"type": "tiny", "checkpoint": str(weights)}, "data": {"test": dict(section)},
            "eval": {"kinds": kinds, "prompts": ["point", "box"], "paths": ["sam", "robust"], "seed": 0,
                     "severity": 1.0, "reference_size": None, "min_area": 1, "max_instances_per_image": None,
                     "device": device}}


def verdict(paired: Mapping[int, Mapping[str, Mapping[str, Mapping[str, float]]]]) -> dict[str, Any]:
    """Whether the issue's target held on every seed set: point prompts, robust minus SAM (IoU points)
    Degrade gain >= ``TARGET["degrade_gain"]`` with the 95 % interval's lower end above
    ``TARGET["degrade_low"]`` and Clear within ``TARGET["clear_within"]`` of SAM-tiny (a margin of
    non-inferiority: a Clear gain is no failure); box prompts' Degrade gain in the same direction (above 0).
    ``paired``: ``{seed: {prompt: {row: {"diff", "low", "high"}}}}`` in points."""
    checks = {}
    for seed, prompts in paired.items():
        point, box = prompts["point"], prompts.get("box")
        checks[str(seed)] = {
            "point_degrade_gain": point["Degrade"]["diff"] >= TARGET["degrade_gain"],
            "point_degrade_low": point["Degrade"]["low"] > TARGET["degrade_low"],
            "point_clear_within": point["Clear"]["diff"] >= -TARGET["clear_within"],
            "box_degrade_positive": box is None or box["Degrade"]["diff"] > 0,
        }
    return {"target": dict(TARGET), "checks": checks,
            "met": bool(checks) and all(all(seed_checks.values()) for seed_checks in checks.values())}


def _points(rows: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """A paired-difference table (fractions) in IoU points."""
    return {row: {key: (100 * value if key in ("diff", "low", "high") else value) for key, value in cells.items()}
            for row, cells in rows.items()}


def report_markdown(report: Mapping[str, Any]) -> str:
    """``report.md`` of a finished run (``report`` is report.json's content)."""
    training, timing = report["training"], report["seconds"]
    lines = [
        "# RobustSAM-tiny trained on one GPU for a wall-clock budget",
        "",
        f"Command: `{report['command']}` (git commit `{report['git_commit']}`; device {report['device']}, "
        f"torch {report['torch']}).",
        "",
        f"Training: `{report['config_file']}` (the run's config: `config.yaml`), {training['iterations']} iterations "
        f"of {training['batch_size']} images x up to {training['prompts_per_image']} prompts"
        + (f", length fixed by train.fit_minutes {training['fit_minutes']:g}" if training["fit_minutes"] else "")
        + f"; {training['seconds'] / 60:.1f} min of training ({training['batch_seconds']:.0f} s of it getting the "
        "batches: waiting for the workers, moving and encoding the images), "
        f"{training['train_scenes']} training scenes, "
        f"fresh degraded images every step ({training['variants_per_image']} variants per image, "
        f"{training['workers']} batch workers). The weights are the final iteration's "
        f"(`{WEIGHTS_NAME}`, float16).",
        "",
        f"Times (s): scenes {timing['scenes']:.0f}, training {timing['training']:.0f} (set-up included), "
        f"evaluation {timing['evaluation']:.0f}, total {timing['total']:.0f}.",
        "",
        "## Held-out evaluation: RobustSAM minus SAM-tiny (IoU points, 95 % paired bootstrap interval over instances)",
        "",
        f"The Table 2 protocol of `robustprior/configs/eval_tiny.yaml` (kinds: {report['eval_kinds']}, "
        "identity = Clear; one centre point or the tight box per instance; single-mask output) on "
        + ", ".join(f"seed {seed} ({info['images']} scenes, {info['instances']} instances)"
                    for seed, info in report["evaluation"].items())
        + "; SAM-tiny is the frozen `sam` path of the same weights.",
        "",
        "| Seed set | Prompt | " + " | ".join(f"{row}" for row in SUMMARY_ROWS) + " |",
        "|---|---|" + "---|" * len(SUMMARY_ROWS),
    ]
    for seed, info in report["evaluation"].items():
        for prompt, rows in info["paired"].items():
            lines.append(f"| {seed} | {prompt} | " + " | ".join(
                f"{rows[row]['diff']:+.2f} [{rows[row]['low']:+.2f}, {rows[row]['high']:+.2f}]" for row in SUMMARY_ROWS)
                + " |")
    lines += ["", "| Seed set | Prompt | SAM-tiny Degrade / Clear IoU | RobustSAM-tiny Degrade / Clear IoU |",
              "|---|---|---|---|"]
    for seed, info in report["evaluation"].items():
        for prompt, tables in info["iou"].items():
            lines.append(f"| {seed} | {prompt} | {tables['sam']['Degrade']:.2f} / {tables['sam']['Clear']:.2f} | "
                         f"{tables['robust']['Degrade']:.2f} / {tables['robust']['Clear']:.2f} |")
    target, result = report["verdict"]["target"], report["verdict"]
    lines += [
        "",
        f"Target (issue 21, point prompts, each seed set): Degrade gain >= +{target['degrade_gain']:g} with the "
        f"interval's lower end above +{target['degrade_low']:g}, Clear no more than {target['clear_within']:g} "
        "below SAM-tiny; box "
        f"prompts' Degrade gain above 0. **{'Met' if result['met'] else 'Not met'}**: "
        + "; ".join(f"seed {seed}: " + ", ".join(f"{name} {'yes' if ok else 'no'}" for name, ok in checks.items())
                    for seed, checks in result["checks"].items()) + ".",
        "",
        "Learning curve (`curve.csv`, `curve.png`): robust minus SAM point IoU on "
        f"{report['curve']['images']} held-out scenes (seed {report['curve']['seed']}) every "
        f"{report['curve']['every']} iterations; last point: Degrade {report['curve']['last']['gain_degrade']:+.2f} "
        f"[{report['curve']['last']['gain_degrade_low']:+.2f}, {report['curve']['last']['gain_degrade_high']:+.2f}], "
        f"Clear {report['curve']['last']['gain_clear']:+.2f} at iteration {report['curve']['last']['iteration']:.0f}.",
    ]
    if report["small"]:
        lines += ["", "`--small`: a CPU check of the command at toy size; its numbers mean nothing."]
    return "\n".join(lines) + "\n"


def _check_output(output: Path) -> None:
    """The output folder must be new or empty: nothing a user made is overwritten."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise SystemExit(f"error: --output {output} exists and is not an empty folder; name a new one")


def _resolve_device(name: str) -> str:
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); "
                         "run on a GPU machine, or use --small (or --device cpu) for the CPU check")
    return name


def _read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python recipes/train_robustsam_tiny_gpu.py ARGS`` (the module docstring); returns report.json's content."""
    parser = argparse.ArgumentParser(prog="recipes/train_robustsam_tiny_gpu.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="new or empty folder for the (at most 8) results")
    parser.add_argument("--work", type=Path, help="scratch folder (scenes, run folder); default: a new temporary one")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="training config (robustsam schema)")
    parser.add_argument("--fit-minutes", type=float,
                        help="minutes of training (default: the config's train.fit_minutes)")
    parser.add_argument("--iterations", type=int, help="a fixed train.total_iter instead of --fit-minutes")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="training and evaluation device")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="processes writing scenes and making batches (default: CPU count - 1)")
    parser.add_argument("--eval-scenes", type=int, default=EVAL_SCENES, help="scenes per held-out seed set")
    parser.add_argument("--small", action="store_true", help="the same steps at toy size on the CPU (the CI check)")
    arguments = parser.parse_args(argv)
    if arguments.fit_minutes is not None and arguments.iterations is not None:
        parser.error("give --fit-minutes or --iterations, not both")
    started = time.time()
    device = _resolve_device("cpu" if arguments.small else arguments.device)
    output = arguments.output
    _check_output(output)
    work = arguments.work or Path(tempfile.mkdtemp(prefix="robustsam_tiny_gpu-"))
    config = run_config(arguments.config, work, device, arguments.workers, arguments.fit_minutes,
                        arguments.iterations, arguments.small)
    eval_scenes = SMALL_EVAL_SCENES if arguments.small else arguments.eval_scenes
    eval_kinds: str | list[str] = SMALL_KINDS if arguments.small else "all"
    run_folder = work / "run"
    print(f"[robustprior] work folder {work}; output {output}; device {device}", flush=True)

    # 1. every scene set, with every core
    sections = {"train": config["data"]["train"], "curve": config["curve"]["data"],
                **{f"eval {seed}": section for seed, section in eval_sections(work, eval_scenes).items()}}
    for name, section in sections.items():
        build_instance_source(section, None, section=name, workers=max(1, arguments.workers), progress=False)
    scenes_done = time.time()

    # 2. training (set-up, the curve's held-out features, the fitted length, the curve itself)
    trainer = RobustSAMTrainer(config, run_folder)
    trainer.train()
    trained = trainer.model
    training_done = time.time()
    output.mkdir(parents=True, exist_ok=True)
    weights = output / WEIGHTS_NAME
    run_config_saved = read_run_config(run_folder, SCHEMA)
    iterations = trainer.state.iteration
    save_checkpoint(trained, weights, {"trained_by": "recipes/train_robustsam_tiny_gpu.py", "git_commit": git_commit(),
                                       "iterations": str(iterations), ROBUST_PARTS_KEY: "trained"}, dtype=torch.float16)
    for name in (CURVE_LOG, CURVE_PLOT, TRAIN_LOG, "config.yaml"):
        if (run_folder / name).is_file():
            shutil.copyfile(run_folder / name, output / name)
    del trainer, trained
    if device == "cuda":
        torch.cuda.empty_cache()

    # 3. the Table 2 evaluation of the written weights on both held-out seed sets
    evaluation = {}
    for seed, section in eval_sections(work, eval_scenes).items():
        result = run_evaluation(eval_config(weights, section, device, eval_kinds), None, work / f"eval_{seed}",
                                overwrite=True, progress=False)
        evaluation[seed] = {
            "images": result.protocol["images"], "instances": result.protocol["instances"],
            "paired": {prompt: _points(result.paired_difference(prompt)) for prompt in result.prompt_types},
            "iou": {prompt: {path: {row: 100 * result.meters[(path, prompt)].table()[row]["IoU"]
                                    for row in SUMMARY_ROWS} for path in result.paths}
                    for prompt in result.prompt_types},
            "report": str(work / f"eval_{seed}" / "report.md"),
        }
    evaluation_done = time.time()

    # 4. the report
    curve_rows = _read_rows(output / CURVE_LOG) if (output / CURVE_LOG).is_file() else []
    train = run_config_saved["train"]
    metrics = json.loads((run_folder / "metrics.json").read_text())
    report = {
        "command": "python recipes/train_robustsam_tiny_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "git_commit": git_commit(), "torch": torch.__version__, "small": arguments.small,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "config_file": str(arguments.config.resolve().relative_to(REPO_ROOT)
                           if arguments.config.resolve().is_relative_to(REPO_ROOT) else arguments.config),
        "training": {"iterations": iterations, "fit_minutes": train["fit_minutes"], "batch_size": train["batch_size_per_gpu"],
                     "prompts_per_image": train["prompts_per_image"], "lr": train["lr"], "schedule": train["schedule"],
                     "seconds": metrics["seconds"], "batch_seconds": metrics["batch_seconds"],
                     "train_scenes": run_config_saved["data"]["train"]["n_images"],
                     "variants_per_image": run_config_saved["degradations"]["variants_per_image"],
                     "workers": run_config_saved["data"]["workers"], "run_folder": str(run_folder)},
        "curve": {"every": run_config_saved["curve"]["every"], "images": run_config_saved["curve"]["data"]["n_images"],
                  "seed": run_config_saved["curve"]["data"]["seed"],
                  "last": {key: float(value) for key, value in curve_rows[-1].items()} if curve_rows else None},
        "eval_kinds": eval_kinds,
        "evaluation": {str(seed): info for seed, info in evaluation.items()},
        "verdict": verdict({seed: info["paired"] for seed, info in evaluation.items()}),
        "seconds": {"scenes": scenes_done - started, "training": training_done - scenes_done,
                    "evaluation": evaluation_done - training_done, "total": time.time() - started},
        "work": str(work),
    }
    write_text_atomically(output / "report.json", json.dumps(report, indent=1) + "\n")
    write_text_atomically(output / "report.md", report_markdown(report))
    written = sorted(path.name for path in output.iterdir())
    too_big = [path.name for path in output.iterdir() if path.stat().st_size > MAX_FILE_BYTES]
    if len(written) > 8 or too_big:
        raise SystemExit(f"error: {output} holds {len(written)} files ({', '.join(too_big) or 'none'} over 16 MiB): "
                         "more than the device tool brings back")
    print(f"[robustprior] wrote {', '.join(written)} into {output} in {report['seconds']['total']:.0f} s; "
          f"target {'met' if report['verdict']['met'] else 'not met'}", flush=True)
    return report
