"""Training step time with the encoder feature cache vs without, side by side (not a test).

The frozen SAM encoder's outputs for the clear image and each degraded copy are cached, so a cached
step runs only the decoder side (two decoder passes, the robust modules' backward). Default: vit_t at
1024 on CPU, batch 1, a few generated scenes.

One step of each kind is also counted in FLOPs (``torch.utils.flop_counter``; FFTs not counted): their
ratio bounds what the cache can give on hardware whose time follows the arithmetic.

    python benchmarks/bench_training.py [--model vit_t] [--iterations 3] [--batch-size 1] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(model_type: str, iterations: int, batch_size: int, cached: bool, work: Path) -> tuple[float, float]:
    """Seconds per training iteration (cache filled beforehand when ``cached``) and the FLOPs of one."""
    from torch.utils.flop_counter import FlopCounterMode

    from robustprior.training.robustsam import RobustSAMTrainer

    output = work / ("cached" if cached else "uncached")
    config = {
        "manual_seed": 0, "device": "cpu",
        "model": {"type": model_type, "checkpoint": None},
        "data": {"train": {"format": "scenes", "n_images": 4, "seed": 5, "root": str(work / "scenes")}, "val": None,
                 "min_area": 64, "instances_per_image": 1},
        "degradations": {"variants_per_image": 1},
        "feature_cache": {"enabled": cached, "dir": str(work / "feature_cache")},
        "train": {"total_iter": 2 + iterations, "batch_size_per_gpu": batch_size, "log_every": 1, "checkpoint_every": 10_000},
    }
    trainer = RobustSAMTrainer(config, output)
    if cached:
        trainer.fill_cache(progress=False)
    trainer.train(stop_after=1)  # warm-up step (allocations, first-call overheads)
    with FlopCounterMode(display=False) as counter:
        trainer.train(stop_after=2)  # one step counted, not timed
    started = time.perf_counter()
    trainer.train()
    return (time.perf_counter() - started) / iterations, counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_t")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="robustprior_bench_training_"))
    try:
        uncached, uncached_flops = run(args.model, args.iterations, args.batch_size, cached=False, work=work)
        cached, cached_flops = run(args.model, args.iterations, args.batch_size, cached=True, work=work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.model}, batch {args.batch_size}, {args.iterations} timed iterations each, CPU, {args.threads} threads")
    print(f"{'step':<28}{'s/iteration':>12}{'GFLOPs/iteration':>18}")
    print(f"{'encoder every step':<28}{uncached:>12.2f}{uncached_flops / 1e9:>18.1f}")
    print(f"{'feature cache (all hits)':<28}{cached:>12.2f}{cached_flops / 1e9:>18.1f}")
    print(f"speed-up with the cache: {uncached / cached:.2f}x (target >= 5x); "
          f"FLOP ratio {uncached_flops / cached_flops:.2f}x (the most the cache can give where time follows FLOPs)")
    if args.out:
        args.out.write_text(json.dumps({"uncached_s": uncached, "cached_s": cached, "speedup": uncached / cached,
                                        "uncached_flops": uncached_flops, "cached_flops": cached_flops}))


if __name__ == "__main__":
    main()
