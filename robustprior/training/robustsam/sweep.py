"""RobustSAM-tiny learning curves (the library side of ``recipes/robustsam_tiny_curve.py``): short runs at several learning rates, one figure, one table.

Each run trains ``robustprior/configs/robustsam_tiny_curve.yaml`` (or ``--config``) with one learning rate,
measuring the held-out robust-minus-SAM point IoU every ``curve.every`` iterations; all runs share one
feature cache (the frozen encoder's outputs are encoded once). Runs are resumable run folders
(``robustprior train --resume``), so an interrupted sweep continues where it stopped.

    python recipes/robustsam_tiny_curve.py --output runs/curve_sweep --lrs 3e-4 1e-3 3e-3 --iterations 120
    python recipes/robustsam_tiny_curve.py --output runs/curve_sweep --summary-only   # redraw from the runs
    python recipes/robustsam_tiny_curve.py --output runs/ceiling --ceiling --ceiling-images 24

``--ceiling`` measures what restoring each of SAM-tiny's per-prompt decoder inputs could give at most on
held-out degraded scenes (:meth:`robustprior.training.robustsam.curve.LearningCurve.ceiling`) into
``OUTPUT/ceiling.md`` / ``ceiling.json``.

Writes ``OUTPUT/lr_<lr>/`` (each run, with its curve.csv / curve.png), ``OUTPUT/curves.png`` and
``OUTPUT/summary.md``.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

import yaml

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_CONFIG = CONFIGS / "robustsam_tiny_curve.yaml"
PACKAGE_PARENT = Path(__file__).resolve().parents[3]  # relative checkpoint paths of the configs resolve here


def run_name(lr: float) -> str:
    return f"lr_{lr:g}"


def write_run_config(config_path: Path, lr: float, iterations: int, output: Path) -> Path:
    """The sweep's config for one learning rate (shared feature cache under ``output``)."""
    from robustprior.training.config import read_config_file

    config = read_config_file(config_path)
    if str(config["model"].get("checkpoint", "")).startswith("robustprior/"):
        config["model"]["checkpoint"] = str(PACKAGE_PARENT / config["model"]["checkpoint"])
    config["train"].update(lr=lr, total_iter=iterations)
    config["feature_cache"] = {"enabled": True, "dir": str(output / "feature_cache")}
    path = output / "configs" / f"{run_name(lr)}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def train_all(config_path: Path, lrs: list[float], iterations: int, output: Path, parallel: int) -> None:
    """Fill the shared cache once, then train the runs ``parallel`` at a time (one thread each)."""
    configs = {lr: write_run_config(config_path, lr, iterations, output) for lr in lrs}
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = configs[lrs[0]]
    subprocess.run([sys.executable, "-m", "robustprior.cli", "cache", str(first), "--output", str(output / "cache_run")],
                   check=True, env={**os.environ, "OMP_NUM_THREADS": str(parallel)})
    pending = list(lrs)
    running: list[tuple[float, subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < parallel:
            lr = pending.pop(0)
            folder = output / run_name(lr)
            mode = ["--resume"] if (folder / "checkpoints").is_dir() else []
            log = open(output / f"{run_name(lr)}.log", "a")
            command = [sys.executable, "-m", "robustprior.cli", "train", str(configs[lr]), "--output", str(folder), *mode]
            running.append((lr, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)))
        lr, process = running[0]
        if process.wait() != 0:
            raise SystemExit(f"error: the run at lr {lr:g} failed; see {output / (run_name(lr) + '.log')}")
        running.pop(0)


def read_curve(folder: Path) -> list[dict[str, float]]:
    with open(folder / "curve.csv") as handle:
        return [{key: float(value) for key, value in row.items() if value != ""} for row in csv.DictReader(handle)]


def summarize(output: Path) -> str:
    """``curves.png`` and ``summary.md`` from every run folder with a ``curve.csv`` in ``output``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(folder for folder in output.iterdir() if (folder / "curve.csv").is_file())
    if not runs:
        raise SystemExit(f"error: no run with a curve.csv in {output}")
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    lines = ["| run | iteration | robust − SAM Degrade [95 % CI] | robust − SAM Clear [95 % CI] |",
             "|---|---:|---|---|"]
    for folder in runs:
        rows = read_curve(folder)
        steps = [row["iteration"] for row in rows]
        for axis, part in zip(axes, ("degrade", "clear")):
            axis.plot(steps, [row[f"gain_{part}"] for row in rows], "-o", markersize=3, label=folder.name)
        for row in rows:
            lines.append(f"| {folder.name} | {row['iteration']:.0f} | {row['gain_degrade']:+.2f} "
                         f"[{row['gain_degrade_low']:+.2f}, {row['gain_degrade_high']:+.2f}] | {row['gain_clear']:+.2f} "
                         f"[{row['gain_clear_low']:+.2f}, {row['gain_clear_high']:+.2f}] |")
    for axis, part in zip(axes, ("Degrade", "Clear")):
        axis.axhline(0.0, color="black", linewidth=0.8)
        axis.set(xlabel="iteration", title=f"{part}: robust − SAM point IoU (held-out)")
        axis.legend(fontsize=8)
    axes[0].set_ylabel("IoU points")
    figure.tight_layout()
    figure.savefig(output / "curves.png", dpi=100)
    plt.close(figure)
    text = "# RobustSAM-tiny learning-rate sweep\n\n" + "\n".join(lines) + "\n"
    (output / "summary.md").write_text(text)
    return text


def measure_ceiling(config_path: Path, output: Path, images: int, seed: int) -> str:
    """``ceiling.md`` / ``ceiling.json``: SAM-tiny's Degrade IoU with its clear-image decoder inputs."""
    import json

    from robustprior.training.robustsam import load_base_model
    from robustprior.training.robustsam.config import load_config
    from robustprior.training.robustsam.curve import LearningCurve

    config = load_config(config_path)
    model_config = dict(config["model"])
    if str(model_config.get("checkpoint", "")).startswith("robustprior/"):
        model_config["checkpoint"] = str(PACKAGE_PARENT / model_config["checkpoint"])
    spec = dict(config["curve"], data={"format": "scenes", "n_images": images, "seed": seed})
    curve = LearningCurve(load_base_model(model_config).eval(), spec, progress=True)
    ceiling = curve.ceiling()
    clear = 100 * float(curve.scores("sam")["identity"].mean())
    labels = {"sam": "SAM-tiny as it is (degraded mask feature and tokens)",
              "clear_tokens": "output tokens from the clear image",
              "clear_mask_feature": "mask feature from the clear image",
              "both": "both from the clear image"}
    lines = ["# What restoring SAM-tiny's per-prompt decoder inputs can give at most\n",
             f"{len(curve.images)} held-out scenes (seed {seed}), {curve.instance_count} instances, "
             f"{len(curve.kinds) - 1} degradations; one centre point per instance, single-mask output; "
             f"Degrade point IoU in percent. SAM-tiny on the clear images: {clear:.2f}.\n",
             "| decoder inputs | Degrade IoU | gain over SAM-tiny |", "|---|---:|---:|"]
    lines += [f"| {labels[name]} | {value:.2f} | {value - ceiling['sam']:+.2f} |" for name, value in ceiling.items()]
    text = "\n".join(lines) + "\n"
    (output / "ceiling.md").write_text(text)
    (output / "ceiling.json").write_text(json.dumps({"ceiling": ceiling, "clear": clear, "images": len(curve.images),
                                                     "instances": curve.instance_count, "seed": seed}, indent=1))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True, help="sweep folder (run folders, cache, figure)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="training YAML of every run")
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3])
    parser.add_argument("--iterations", type=int, default=120, help="train.total_iter of every run")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--summary-only", action="store_true", help="only redraw the figure and table")
    parser.add_argument("--ceiling", action="store_true", help="only measure the ceiling (see above)")
    parser.add_argument("--ceiling-images", type=int, default=24, help="held-out scenes of the ceiling")
    parser.add_argument("--ceiling-seed", type=int, default=1000, help="their seed (the Table 2 evaluation's)")
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    if args.ceiling:
        print(measure_ceiling(args.config, args.output, args.ceiling_images, args.ceiling_seed))
        return 0
    if not args.summary_only:
        train_all(args.config, args.lrs, args.iterations, args.output, args.parallel)
    print(summarize(args.output))
    return 0

