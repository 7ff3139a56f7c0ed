"""Benchmark of structure-prior extraction (robustprior.priors): images/s without a cache, filling a
cache (cold) and reading it back (warm), side by side in one run.

    python benchmarks/bench_priors.py [--checkpoint tiny] [--prior robust|sam] [--images 8] [--size 256]
                                      [--points-per-side 16] [--threads N] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from robustprior.priors import RobustSAMPrior, SAMPrior, StructurePrior  # noqa: E402

SAMPLE_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
PRIOR_CLASSES = {"robust": RobustSAMPrior, "sam": SAMPrior}


def benchmark_images(count: int, long_side: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` distinct RGB uint8 images: random crops (half to all of each side) of scikit-image's
    bundled samples, in turn, resized to ``long_side`` px on the long side."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        sample = getattr(data, SAMPLE_NAMES[index % len(SAMPLE_NAMES)])()
        height, width = sample.shape[:2]
        crop_height, crop_width = (int(rng.uniform(0.5, 1.0) * side) for side in (height, width))
        top, left = int(rng.integers(0, height - crop_height + 1)), int(rng.integers(0, width - crop_width + 1))
        crop = sample[top : top + crop_height, left : left + crop_width]
        scale = long_side / max(crop_height, crop_width)
        size = (max(1, round(crop_width * scale)), max(1, round(crop_height * scale)))
        images.append(cv2.resize(crop, size, interpolation=cv2.INTER_AREA))
    return images


def timed_pass(extract: Callable[[np.ndarray], StructurePrior], images: list[np.ndarray]) -> tuple[float, list[StructurePrior]]:
    """Wall seconds to extract the priors of all ``images`` one after the other, and the priors."""
    start = time.perf_counter()
    priors = [extract(image) for image in images]
    return time.perf_counter() - start, priors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="tiny", help="'tiny' (default), a known model name or a checkpoint file")
    parser.add_argument("--prior", choices=sorted(PRIOR_CLASSES), default="robust", help="decoder path")
    parser.add_argument("--images", type=int, default=8, help="number of test images")
    parser.add_argument("--size", type=int, default=256, help="long side of the test images in px")
    parser.add_argument("--points-per-side", type=int, default=16, help="automatic mask generator grid")
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="optional path of a JSON file for the results")
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)

    images = benchmark_images(arguments.images, arguments.size)
    prior_class = PRIOR_CLASSES[arguments.prior]
    settings = {
        "points_per_side": arguments.points_per_side,
        "pred_iou_thresh": arguments.pred_iou_thresh,
        "stability_score_thresh": arguments.stability_score_thresh,
    }
    uncached = prior_class.from_pretrained(arguments.checkpoint, device=arguments.device, **settings)
    uncached(images[0])  # warm-up (allocator, kernels), not timed
    with tempfile.TemporaryDirectory(prefix="bench_priors_") as cache_dir:
        cached = prior_class(uncached.model, cache_dir=cache_dir, **settings)
        timings = {}
        timings["no cache"], priors = timed_pass(uncached, images)
        timings["cache, cold (compute + write)"], _ = timed_pass(cached, images)
        timings["cache, warm (read)"], cached_priors = timed_pass(cached, images)
        cache_bytes = sum(path.stat().st_size for path in Path(cache_dir).rglob("*.safetensors"))
    if not all(np.array_equal(a.label_map, b.label_map) for a, b in zip(priors, cached_priors)):
        raise RuntimeError("cached priors differ from computed ones")

    mean_masks = np.mean([prior.num_masks for prior in priors])
    print(
        f"{prior_class.__name__} on {arguments.checkpoint!r} ({uncached.model.config.get('model_type', '?')}), "
        f"{arguments.images} images of long side {arguments.size} px, {arguments.points_per_side}^2 points, "
        f"{mean_masks:.1f} masks/image, device {arguments.device}, {torch.get_num_threads()} torch threads, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}"
    )
    print(f"{'mode':<32} {'seconds':>9} {'images/s':>10} {'ms/image':>10}")
    for mode, seconds in timings.items():
        print(f"{mode:<32} {seconds:>9.2f} {len(images) / seconds:>10.2f} {1000 * seconds / len(images):>10.1f}")
    speed_up = timings["no cache"] / timings["cache, warm (read)"]
    overhead = timings["cache, cold (compute + write)"] / timings["no cache"] - 1
    print(f"speed-up of a warm cache over no cache: {speed_up:.0f} x; cold-cache overhead {100 * overhead:+.1f} %; "
          f"{cache_bytes / len(images) / 1024:.0f} KiB per cached image")

    if arguments.out is not None:
        results = {
            "prior": prior_class.__name__,
            "checkpoint": str(arguments.checkpoint),
            "images": arguments.images,
            "size": arguments.size,
            "settings": settings,
            "mean_masks_per_image": float(mean_masks),
            "device": arguments.device,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "seconds": timings,
            "images_per_second": {mode: len(images) / seconds for mode, seconds in timings.items()},
            "warm_cache_speed_up": speed_up,
            "cache_bytes_per_image": cache_bytes / len(images),
        }
        arguments.out.parent.mkdir(parents=True, exist_ok=True)
        arguments.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
