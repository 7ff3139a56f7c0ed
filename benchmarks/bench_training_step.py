"""One CPU training step of the RobustSAM-tiny recipe, before and after the cheaper step, side by side.

The recipe is ``robustprior/configs/robustsam_tiny_curve.yaml`` (4 images x 4 prompts, mixed prompts, paper
consistency, every feature cached) on the bundled SAM-tiny. "before" is the float32 step; "after" the same
step under ``train.cpu_amp`` (bfloat16 autocast; the loss terms stay float32). Both run in ONE trainer,
alternating rounds of ``--steps`` steps, so machine load hits both alike; the ratio printed is the median of
the per-round ratios. The loss of the same batch is printed for both (what the change costs in precision).

    python benchmarks/bench_training_step.py [--rounds 4] [--steps 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round and variant")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from robustprior.training.config import read_config_file
    from robustprior.training.robustsam import RobustSAMTrainer

    config = read_config_file(REPO_ROOT / "robustprior" / "configs" / "robustsam_tiny_curve.yaml")
    work = Path(tempfile.mkdtemp(prefix="robustprior_bench_step_"))
    config["model"]["checkpoint"] = str(REPO_ROOT / config["model"]["checkpoint"])
    config["data"]["train"] = {"format": "scenes", "n_images": 8, "seed": 0, "root": str(work / "scenes")}
    config["degradations"]["variants_per_image"] = 1
    config["feature_cache"] = {"enabled": True, "dir": str(work / "cache")}
    config["curve"]["every"] = 0
    total = 2 + 2 * args.rounds * args.steps
    config["train"].update(total_iter=total + 1, checkpoint_every=10 * total, log_every=10 * total, cpu_amp=False)
    try:
        trainer = RobustSAMTrainer(config, work / "run")
        trainer.fill_cache(progress=False)
        trainer.train(stop_after=2)  # warm-up: allocations, first-call overheads
        clear, degraded, groups, _ = trainer.data.batch(trainer.data.train_set, trainer.data.rank_indices(
            copy.deepcopy(trainer.state)), 0)
        losses = {}
        for amp in (False, True):
            trainer.config["train"]["cpu_amp"] = amp
            with torch.no_grad(), trainer._autocast():
                losses[amp] = float(trainer.wrapped(clear, degraded, groups)["total"])
        seconds: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for amp in (False, True):
                trainer.config["train"]["cpu_amp"] = amp
                started = time.perf_counter()
                trainer.train(stop_after=trainer.state.iteration + args.steps)
                seconds[amp].append((time.perf_counter() - started) / args.steps)
        trainer.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios = [before / after for before, after in zip(seconds[False], seconds[True])]
    print(f"RobustSAM-tiny training step (robustsam_tiny_curve.yaml: 4 images x 4 prompts, cached features), CPU, "
          f"{args.threads} thread(s), {args.rounds} interleaved rounds of {args.steps} steps")
    print(f"{'step':<34}{'s/step (median)':>16}{'loss of one batch':>20}")
    print(f"{'before: float32':<34}{statistics.median(seconds[False]):>16.3f}{losses[False]:>20.5f}")
    print(f"{'after: bf16 autocast (cpu_amp)':<34}{statistics.median(seconds[True]):>16.3f}{losses[True]:>20.5f}")
    print(f"speed-up: {statistics.median(ratios):.2f}x (median of per-round ratios {', '.join(f'{r:.2f}' for r in ratios)}; "
          f"target >= 2x)")


if __name__ == "__main__":
    main()
