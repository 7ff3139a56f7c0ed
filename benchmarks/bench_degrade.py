"""Benchmark of robustprior.data.degrade: time per image for each kind, and the vectorised frosted glass
against the release-style per-pixel Python loop.

    python benchmarks/bench_degrade.py [--size 1024] [--repeats 3] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from robustprior.data.degrade import DEGRADATIONS, degrade, displace_pixels  # noqa: E402

GLASS_SIGMA = 0.7
GLASS_MAX_DISPLACEMENT = 3


def benchmark_image(size: int) -> np.ndarray:
    """skimage's astronaut resized to size x size RGB uint8."""
    return cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_CUBIC)


def best_seconds(function: Callable[[], object], repeats: int) -> float:
    """Shortest wall time of ``repeats`` calls after one warm-up call (robust to a busy machine)."""
    function()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return min(timings)


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB."""
    mean_squared_error = np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mean_squared_error))


def blur(image: np.ndarray) -> np.ndarray:
    """The frosted-glass Gaussian blur, shared by both implementations."""
    return cv2.GaussianBlur(image, (0, 0), sigmaX=GLASS_SIGMA, borderType=cv2.BORDER_REFLECT_101)


def reference_glass_blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The release's way, one iteration: blur, visit every pixel and swap it with a random
    neighbour at most 3 px away (clipped at the borders) in a Python loop, blur again."""
    glass = blur(image.astype(np.float32))
    height, width = glass.shape[:2]
    max_offset = GLASS_MAX_DISPLACEMENT
    for row in range(height):
        for column in range(width):
            row_offset, column_offset = rng.integers(-max_offset, max_offset + 1, size=2)
            neighbour_row = min(max(row + row_offset, 0), height - 1)
            neighbour_column = min(max(column + column_offset, 0), width - 1)
            pixel = glass[row, column].copy()
            glass[row, column] = glass[neighbour_row, neighbour_column]
            glass[neighbour_row, neighbour_column] = pixel
    return np.clip(np.rint(blur(glass)), 0, 255).astype(np.uint8)


def vectorised_glass_blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Same settings and one iteration, with robustprior's vectorised displacement."""
    glass = displace_pixels(blur(image.astype(np.float32)), rng, GLASS_MAX_DISPLACEMENT)
    return np.clip(np.rint(blur(glass)), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="side of the square test image in px")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per kind (the best is reported)")
    parser.add_argument("--out", type=Path, help="optional path of a JSON file for the results")
    arguments = parser.parse_args()

    image = benchmark_image(arguments.size)
    print(
        f"image {arguments.size}x{arguments.size}x3 uint8, best of {arguments.repeats} runs, "
        f"{os.cpu_count()} CPUs, OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads), "
        f"numpy {np.__version__}"
    )
    print(f"{'kind':<20} {'ms/image':>10} {'images/s':>10}")
    per_kind = {}
    for kind in DEGRADATIONS:
        seconds = best_seconds(lambda: degrade(image, kind, seed=0), arguments.repeats)
        per_kind[kind] = {"ms_per_image": 1000 * seconds, "images_per_second": 1 / seconds}
        print(f"{kind:<20} {1000 * seconds:>10.1f} {1 / seconds:>10.1f}")

    print(
        f"\nfrosted glass, one displacement iteration (sigma {GLASS_SIGMA}, "
        f"up to {GLASS_MAX_DISPLACEMENT} px):"
    )
    vectorised_seconds = best_seconds(
        lambda: vectorised_glass_blur(image, np.random.default_rng(0)), arguments.repeats
    )
    start = time.perf_counter()
    reference_output = reference_glass_blur(image, np.random.default_rng(0))
    reference_seconds = time.perf_counter() - start
    vectorised_output = vectorised_glass_blur(image, np.random.default_rng(0))
    speed_up = reference_seconds / vectorised_seconds
    print(f"{'method':<28} {'time':>12}     PSNR vs clean")
    print(
        f"{'per-pixel Python loop':<28} {1000 * reference_seconds:>9.1f} ms  "
        f"{psnr(reference_output, image):>8.2f} dB  (single run)"
    )
    print(
        f"{'vectorised (displace_pixels)':<28} {1000 * vectorised_seconds:>9.1f} ms  "
        f"{psnr(vectorised_output, image):>8.2f} dB"
    )
    print(f"{'speed-up':<28} {speed_up:>12.0f} x")

    if arguments.out is not None:
        results = {
            "size": arguments.size,
            "repeats": arguments.repeats,
            "cpu_count": os.cpu_count(),
            "opencv_threads": cv2.getNumThreads(),
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "python": platform.python_version(),
            "kinds": per_kind,
            "frosted_glass_one_iteration": {
                "reference_loop_ms": 1000 * reference_seconds,
                "vectorised_ms": 1000 * vectorised_seconds,
                "reference_loop_psnr_db": psnr(reference_output, image),
                "vectorised_psnr_db": psnr(vectorised_output, image),
                "speed_up": speed_up,
            },
        }
        arguments.out.parent.mkdir(parents=True, exist_ok=True)
        arguments.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {arguments.out}")


if __name__ == "__main__":
    main()
