"""Forward time and peak memory of the SAM-prior restoration networks, full image vs tiled.

Cases: SAMDeblurNet (structure prior, MAP unit) and SAMGuidedDehazeNet on a ``--size`` image in one
forward, and on a ``--tiled-size`` image through :func:`restoration.tiling.tiled_forward` (``--tile``).
Each case runs in its own subprocess so that peak memory is per case: on CPU the peak resident set
during the timed forwards above the resident set before them (Linux: the peak is reset through
``/proc/self/clear_refs`` and read from ``VmHWM``; elsewhere the growth of ``resource.getrusage``'s
max RSS, which misses peaks lower than the setup's), on CUDA ``torch.cuda.max_memory_allocated``
above what was allocated before them. Inputs are synthetic
(random image, blocky random label map, random prior features); SAM itself is not timed.

    python benchmarks/bench_restoration.py              # paper widths (32), CPU or CUDA
    python benchmarks/bench_restoration.py --width 8    # shrunk networks
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restoration.archs import SAMDeblurNet, SAMGuidedDehazeNet  # noqa: E402
from restoration.tiling import tiled_forward  # noqa: E402

MODELS = ("SAMDeblurNet", "SAMGuidedDehazeNet")
MODES = ("full", "tiled")
NETWORK_MULTIPLE = 16  # both networks downsample 4 times


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _start_rss_peak() -> tuple[int, bool]:
    """Reset the peak resident set where Linux allows it; returns (baseline bytes, whether reset)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return _proc_status_bytes("VmRSS"), True
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, False  # Linux reports KiB


def _rss_peak(reset: bool) -> int:
    return _proc_status_bytes("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _synthetic_inputs(
    size: int, prior_channels: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1 x 3 x size x size image, 1 x size x size label map (random 32-px blocks, labels 0..40),
    1 x C x 256 x 256 prior features."""
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, size, size, generator=generator)
    blocks = torch.randint(0, 41, (1, 1, -(-size // 32), -(-size // 32)), generator=generator).float()
    label_map = torch.nn.functional.interpolate(blocks, scale_factor=32, mode="nearest")[0, :, :size, :size].long()
    prior_features = torch.randn(1, prior_channels, 256, 256, generator=generator)
    return image.to(device), label_map.to(device), prior_features.to(device)


def run_case(model_name: str, mode: str, args: argparse.Namespace) -> dict[str, object]:
    """Build one network, time ``args.repeats`` forwards in ``mode`` and measure their peak memory."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    if model_name == "SAMDeblurNet":
        model = SAMDeblurNet(prior="structure", width=args.width)
    else:
        model = SAMGuidedDehazeNet(prior=args.dehaze_prior, width=args.width)
    model = model.eval().to(device)
    size = args.size if mode == "full" else args.tiled_size
    image, label_map, prior_features = _synthetic_inputs(size, 32, device)
    num_segments = int(label_map.max())

    calls = []

    def model_fn(tile: torch.Tensor, tile_labels: torch.Tensor, tile_features: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(tile.shape[-2:]))
        grey_scale = torch.full((tile.shape[0],), num_segments, device=tile.device)
        return model(tile, {"label_map": tile_labels, "features": tile_features, "grey_scale": grey_scale})

    def forward() -> torch.Tensor:
        if mode == "full":
            with torch.no_grad():
                return model_fn(image, label_map, prior_features)
        return tiled_forward(model_fn, image, label_map, prior_features, tile=args.tile, overlap=args.overlap,
                             multiple=NETWORK_MULTIPLE, device=device)

    with torch.no_grad():  # warm-up on a small crop: kernel selection, lazy initialisation
        model_fn(image[..., :64, :64], label_map[..., :64, :64], prior_features)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    else:
        baseline, reset = _start_rss_peak()
    calls.clear()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        output = forward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        del output
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _rss_peak(reset)
    return {
        "model": model_name,
        "mode": mode,
        "size": size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": min(times),
        "peak_mb": (peak - baseline) / 2**20,
        "tiles": len(calls) // args.repeats,
    }


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=32, help="network width (32 in both papers' settings)")
    parser.add_argument("--size", type=int, default=512, help="full-image side")
    parser.add_argument("--tiled-size", type=int, default=2048, help="tiled-image side")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1, help="timed forwards per case (the fastest is reported)")
    parser.add_argument("--dehaze-prior", default="features", choices=("none", "grayscale", "structure", "features"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of full,tiled")
    # Internal: run one case in this process and print its JSON.
    parser.add_argument("--case", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps(run_case(args.case[0], args.case[1], args)))
        return
    modes = [mode for mode in args.modes.split(",") if mode]
    forwarded = list(argv if argv is not None else sys.argv[1:])
    results: dict[tuple[str, str], dict[str, object]] = {}
    for model_name in MODELS:
        for mode in modes:
            command = [sys.executable, __file__, *forwarded, "--case", model_name, mode]
            completed = subprocess.run(command, capture_output=True, text=True, check=False)
            if completed.returncode:
                raise RuntimeError(f"{model_name} {mode} failed:\n{completed.stderr}")
            results[(model_name, mode)] = json.loads(completed.stdout.strip().splitlines()[-1])

    header = f"{'model':<22}{'params':>9}"
    for mode in modes:
        size = args.size if mode == "full" else args.tiled_size
        label = f"{size}x{size} " + ("full" if mode == "full" else f"tiled {args.tile}/{args.overlap}")
        header += f" | {label:^30}"
    memory = "CUDA max_memory_allocated above start" if args.device.startswith("cuda") else "peak RSS above start"
    print(f"device={args.device} width={args.width} threads={torch.get_num_threads()} "
          f"dehaze prior={args.dehaze_prior} memory={memory}")
    print(header)
    print(f"{'':<31}" + "".join(f" | {'time s':>9} {'peak MB':>9} {'tiles':>8}" for _ in modes))
    for model_name in MODELS:
        row = f"{model_name:<22}{results[(model_name, modes[0])]['parameters'] / 1e6:>8.2f}M"
        for mode in modes:
            result = results[(model_name, mode)]
            row += f" | {result['seconds']:>9.2f} {result['peak_mb']:>9.1f} {result['tiles']:>8}"
        print(row)


if __name__ == "__main__":
    main()
