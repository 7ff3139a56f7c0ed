"""Benchmark of structure-prior extraction (robustprior.priors): SAMPrior and RobustSAMPrior side by
side in one run, on the same model, images and point grid, each with this library's decoder and
with the straightforward computation it replaces, plus the disk cache.

    python benchmarks/bench_priors.py [--checkpoint tiny] [--images 4] [--size 256] [--points-per-side 16]
        [--pred-iou-thresh 0.88] [--stability-score-thresh 0.95] [--threads 1] [--default-malloc]
        [--out results.json]

"reference" is what the library did before: segment-anything's batch step of the automatic mask
generator (every mask of every grid point drawn and upsampled, then filtered) and segment-anything's
own two-way transformer (one copy of the image per prompt, plain attention). "library" draws masks
only where the predicted IoU passes and shares the first transformer block's image-only work. Both
give the same masks (checked here). Times are CPU seconds of this process (``time.process_time``),
which the other jobs of a shared machine disturb less than wall time.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from robustprior.io.allocator import keep_freed_memory  # noqa: E402
from robustprior.modeling.robust_sam import RobustSAM  # noqa: E402
from robustprior.priors import RobustSAMPrior, SAMPrior, StructurePrior  # noqa: E402

SAMPLE_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


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


def _reference_transformer(self: RobustSAM, features, image_index, sparse, dense, mask_tokens):
    """segment-anything's own two-way transformer on one copy of the image per prompt."""
    decoder = self.mask_decoder
    output_tokens = torch.cat((decoder.iou_token.weight, mask_tokens), dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse), dim=1)
    source = features.embedding.index_select(0, image_index) + dense
    hidden, image_tokens = decoder.transformer(source, self.prompt_encoder.get_dense_pe(), tokens)
    return hidden[:, 0], hidden[:, 1 : 1 + decoder.num_mask_tokens], image_tokens


@contextlib.contextmanager
def reference_implementation(prior) -> Iterator[None]:
    """Run ``prior`` with the computation the library replaced (module docstring)."""
    generator = prior.generator
    original = RobustSAM._run_transformer
    generator._process_batch = lambda *args: SamAutomaticMaskGenerator._process_batch(generator, *args)
    RobustSAM._run_transformer = _reference_transformer
    try:
        yield
    finally:
        del generator._process_batch
        RobustSAM._run_transformer = original


def timed_pass(extract: Callable[[np.ndarray], StructurePrior], images: list[np.ndarray]) -> tuple[float, list[StructurePrior]]:
    """CPU seconds of this process to extract the priors of all ``images`` one after the other, and the priors."""
    start = time.process_time()
    priors = [extract(image) for image in images]
    return time.process_time() - start, priors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="tiny", help="'tiny' (default), a known model name or a checkpoint file")
    parser.add_argument("--images", type=int, default=4, help="number of test images")
    parser.add_argument("--size", type=int, default=256, help="long side of the test images in px")
    parser.add_argument("--points-per-side", type=int, default=16, help="automatic mask generator grid")
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's allocator settings (the command line keeps freed memory: "
                             "robustprior.io.allocator)")
    parser.add_argument("--out", type=Path, help="optional path of a JSON file for the results")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    tuned = False if arguments.default_malloc else keep_freed_memory()
    print(f"allocator: {'freed memory kept (as the command line)' if tuned else 'glibc defaults'}")

    images = benchmark_images(arguments.images, arguments.size)
    settings = {"points_per_side": arguments.points_per_side, "pred_iou_thresh": arguments.pred_iou_thresh,
                "stability_score_thresh": arguments.stability_score_thresh}
    priors = {"SAMPrior": SAMPrior.from_pretrained(arguments.checkpoint, device=arguments.device, **settings)}
    priors["RobustSAMPrior"] = RobustSAMPrior(priors["SAMPrior"].model, device=arguments.device, **settings)
    rows: dict[str, dict[str, float]] = {}
    masks_per_image: dict[str, float] = {}
    for name, prior in priors.items():
        prior(images[0])  # warm-up (allocator, kernels), not timed
        with reference_implementation(prior):
            reference_seconds, reference_priors = timed_pass(prior, images)
        library_seconds, library_priors = timed_pass(prior, images)
        if not all(np.array_equal(a.label_map, b.label_map) for a, b in zip(reference_priors, library_priors)):
            raise RuntimeError(f"{name}: the library's masks differ from the reference computation's")
        with tempfile.TemporaryDirectory(prefix="bench_priors_") as cache_dir:
            cached = type(prior)(prior.model, cache_dir=cache_dir, device=arguments.device, **settings)
            cold_seconds, _ = timed_pass(cached, images)
            warm_seconds, _ = timed_pass(cached, images)
        rows[name] = {"reference": reference_seconds, "library": library_seconds, "cache, cold": cold_seconds,
                      "cache, warm": warm_seconds}
        masks_per_image[name] = float(np.mean([prior.num_masks for prior in library_priors]))

    count = len(images)
    print(f"{arguments.checkpoint!r} ({priors['SAMPrior'].model.config.get('model_type', '?')}), {count} images of long "
          f"side {arguments.size} px, {arguments.points_per_side}^2 points, thresholds pred IoU "
          f"{arguments.pred_iou_thresh} / stability {arguments.stability_score_thresh}, {torch.get_num_threads()} torch "
          f"thread(s), {os.cpu_count()} CPUs, torch {torch.__version__}; CPU seconds per image")
    print(f"{'prior':<16} {'reference':>10} {'library':>10} {'speed-up':>9} {'cache cold':>11} {'cache warm':>11} {'masks':>6}")
    for name, row in rows.items():
        print(f"{name:<16} {row['reference'] / count:>10.3f} {row['library'] / count:>10.3f} "
              f"{row['reference'] / row['library']:>8.2f}x {row['cache, cold'] / count:>11.3f} "
              f"{row['cache, warm'] / count:>11.4f} {masks_per_image[name]:>6.1f}")
    ratio = rows["RobustSAMPrior"]["library"] / rows["SAMPrior"]["library"]
    reference_ratio = rows["RobustSAMPrior"]["reference"] / rows["SAMPrior"]["reference"]
    print(f"RobustSAMPrior / SAMPrior cost: library {ratio:.2f}x (target <= 1.5x), reference {reference_ratio:.2f}x; "
          f"SAMPrior library vs reference: {rows['SAMPrior']['reference'] / rows['SAMPrior']['library']:.2f}x less "
          "(target >= 3x)")
    if arguments.out is not None:
        results = {"checkpoint": str(arguments.checkpoint), "images": count, "size": arguments.size,
                   "settings": settings, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                   "torch": torch.__version__, "python": platform.python_version(), "cpu_seconds": rows,
                   "masks_per_image": masks_per_image, "robust_over_sam": ratio,
                   "reference_robust_over_sam": reference_ratio}
        arguments.out.parent.mkdir(parents=True, exist_ok=True)
        arguments.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
