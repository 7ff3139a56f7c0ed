"""CPU cost of making RobustSAM training batches without the feature cache, and the batch workers' rate.

    python benchmarks/bench_batches.py                      # the GPU recipe's batches on 40 generated scenes
    python benchmarks/bench_batches.py --workers 4 --batches 40

Prints the CPU seconds of :func:`robustprior.training.robustsam.loader.prepare_batch` per batch (reading each
image and its masks once, degrading, resizing, drawing the prompts; ``time.process_time`` in this process)
and, with ``--workers`` > 1, the batches per second that many worker processes deliver after their start
(:class:`~robustprior.training.robustsam.loader.BatchLoader`). The encoder is not run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from robustprior.training.config import read_config_file, validate_config  # noqa: E402
from robustprior.training.distributed import DistributedContext  # noqa: E402
from robustprior.training.robustsam import SCHEMA, TrainingData, TrainingState, load_base_model  # noqa: E402
from robustprior.training.robustsam.loader import BatchJob, BatchLoader, prepare_batch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "robustprior/configs/robustsam_tiny_gpu_fresh.yaml")
    parser.add_argument("--scenes", type=int, default=40, help="generated training scenes (seed 0)")
    parser.add_argument("--batches", type=int, default=8, help="batches timed")
    parser.add_argument("--workers", type=int, default=1, help="also time this many worker processes")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "robustprior_bench_batches")
    arguments = parser.parse_args()
    config = read_config_file(arguments.config)
    config["device"] = "cpu"
    config["model"]["checkpoint"] = None  # the batches do not depend on the weights
    config["data"]["train"] = {"format": "scenes", "n_images": arguments.scenes, "seed": 0,
                               "root": str(arguments.work / f"scenes-{arguments.scenes}")}
    config = validate_config(config, SCHEMA)
    data = TrainingData(config, load_base_model(config["model"]), None, DistributedContext(0, 1, torch.device("cpu")))
    variants = config["degradations"]["variants_per_image"]

    def jobs():
        ahead = TrainingState()
        while True:
            indices = data.rank_indices(ahead)
            yield BatchJob(indices, ahead.epoch % variants, ahead.epoch, ahead.position)

    seconds, items = [], []
    for job, _ in zip(jobs(), range(arguments.batches)):
        data.train_set.set_epoch(job.epoch)
        started = time.process_time()
        prepare_batch(data.train_set, data.degradation, data.preparer, job.indices, job.variant)
        seconds.append(time.process_time() - started)
        items.append(len(job.indices))
    print(f"prepare_batch: {np.median(seconds):.3f} CPU s per batch (median of {len(seconds)}; "
          f"{config['train']['batch_size']} images, {np.mean(items):.0f} items on average)")
    if arguments.workers > 1:
        loader = iter(BatchLoader(data.train_set, data.degradation, data.preparer, jobs(), arguments.workers))
        next(loader)  # the workers' start (spawned processes import the package)
        started = time.perf_counter()
        for _ in range(arguments.batches):
            next(loader)
        rate = arguments.batches / (time.perf_counter() - started)
        loader.close()
        print(f"{arguments.workers} workers: {rate:.1f} batches per second after their start")


if __name__ == "__main__":
    main()
