"""Inference benchmarks for the RobustSAM model (numbers for the closing notes; not a test).

0. FLOPs of the robust path vs plain SAM (image encoding + one point), counted with
   torch.utils.flop_counter for vit_t / vit_b / vit_h: deterministic, unaffected by machine load.
1. The paper's Table 1: overhead of the robust path over plain SAM on the same backbone and prompt:
   one image set + one point prompt, per decoder path, run in separate subprocesses (so peak RSS is
   per path) and interleaved over rounds; the time ratio is the median of the rounds' CPU-time
   ratios. Default: vit_t and vit_b at 1024 on CPU, random weights (paper, vit_h on GPU: 1.036x time,
   1.047x memory).
2. Prompts per second for 64 prompts on one image: our batched decoder (one forward) vs the official
   release (PyPI robust-segment-anything) decoding one prompt at a time on the same weights; the
   image encoding is done once beforehand for both and not timed.

    python benchmarks/bench_inference.py [--parts flops,table1,prompts] [--models vit_t,vit_b] [--repeats 3]
        [--rounds 3] [--prompts 64] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _image(size: int) -> np.ndarray:
    from skimage import data
    import cv2

    return cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_LINEAR)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux ``/proc/self/clear_refs``); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """Peak resident memory since the last reset (VmHWM), else since the process started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_path(model_type: str, path: str, repeats: int, threads: int) -> dict:
    """Time of set_image + predict (one point) and the process's peak RSS, for one decoder path."""
    from robustprior.load import build_robust_sam
    from robustprior.predictor import RobustSAMPredictor

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_robust_sam(model_type, random_init=True)
    predictor = RobustSAMPredictor(model, path=path)
    image = _image(model.image_size)
    point = (np.array([[model.image_size * 0.4, model.image_size * 0.5]]), np.array([1]))
    rss_after_build = _peak_rss_mb()
    reset = _reset_peak_rss()  # from here on, the peak covers inference (model weights included)
    predictor.set_image(image)  # warm-up
    predictor.predict(*point, multimask_output=False)
    times, cpu_times = [], []
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        predictor.set_image(image)
        predictor.predict(*point, multimask_output=False)
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu_started)
    return {"seconds": statistics.median(times), "all_seconds": times, "cpu_seconds": statistics.median(cpu_times),
            "peak_rss_mb": _peak_rss_mb(), "peak_reset": reset, "rss_after_build_mb": rss_after_build}


def flop_ratios(model_types: tuple[str, ...] = ("vit_t", "vit_b", "vit_h")) -> dict:
    """GFLOPs of encoding + one-point decoding per path. Large encoders are built on the meta device;
    the decoder is counted on a one-block copy with the same decoder shapes (prompt encoding needs
    real tensors)."""
    from torch.utils.flop_counter import FlopCounterMode

    from robustprior.modeling.build import MODEL_CONFIGS
    from robustprior.load import build_robust_sam
    from robustprior.modeling.robust_sam import ImageFeatures

    def count(function) -> float:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            function()
        return counter.get_total_flops() / 1e9

    results = {}
    for model_type in model_types:
        config = MODEL_CONFIGS[model_type]
        device = "cpu" if config.encoder == "tiny_vit" else "meta"  # TinyViT's constructor needs real tensors
        with torch.device(device):
            model = build_robust_sam(model_type, random_init=True)
        size = model.image_size
        encoder = count(lambda: model.encode_image(model.preprocess(torch.zeros(1, 3, size, size, device=device))))
        decoder_model = model if device == "cpu" else build_robust_sam(model_type, random_init=True, encoder_depth=1, global_attention_indexes=(0,))
        side = config.embedding_size
        features = ImageFeatures(torch.zeros(1, config.transformer_dim, side, side), torch.zeros(1, config.encoder_dim, side, side))
        sparse, dense = decoder_model.encode_prompts(points=(torch.zeros(1, 1, 2), torch.ones(1, 1, dtype=torch.int)))
        decoders = {path: count(lambda: decoder_model.decode(features, sparse, dense, path=path)) for path in ("sam", "robust")}
        results[model_type] = {"encoder_gflops": encoder, "sam_decoder_gflops": decoders["sam"],
                               "robust_decoder_gflops": decoders["robust"],
                               "ratio": (encoder + decoders["robust"]) / (encoder + decoders["sam"])}
    return results


def overhead(model_type: str, repeats: int, threads: int, rounds: int = 3) -> dict:
    """Both paths in fresh processes, interleaved ``rounds`` times; the time ratio is the median of the
    per-round ratios (CPU seconds of the process, which a shared machine's other jobs disturb less than
    wall time), the memory ratio that of the lowest peaks."""
    results: dict[str, list[dict]] = {"sam": [], "robust": []}
    for _ in range(rounds):  # interleave the two paths so load changes hit both
        for path in ("sam", "robust"):
            output = subprocess.run([sys.executable, __file__, "--worker", path, "--model", model_type,
                                     "--repeats", str(repeats), "--threads", str(threads)],
                                    capture_output=True, text=True, check=True)
            results[path].append(json.loads(output.stdout.strip().splitlines()[-1]))
    summary = {path: {"seconds": statistics.median(r["seconds"] for r in runs),
                      "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs),
                      "peak_rss_mb": min(r["peak_rss_mb"] for r in runs)}
               for path, runs in results.items()}
    summary["time_ratios"] = [robust["cpu_seconds"] / sam["cpu_seconds"]
                              for sam, robust in zip(results["sam"], results["robust"])]
    summary["time_ratio"] = statistics.median(summary["time_ratios"])
    summary["memory_ratio"] = summary["robust"]["peak_rss_mb"] / summary["sam"]["peak_rss_mb"]
    return summary


def prompts_per_second(prompts: int, threads: int) -> dict:
    """Ours batched vs the official decoder looping one prompt at a time (vit_b decoder shapes)."""
    from robust_segment_anything.build_sam import _build_sam

    from robustprior.load import build_robust_sam

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    official = _build_sam(encoder_embed_dim=768, encoder_depth=1, encoder_num_heads=12,
                          encoder_global_attn_indexes=[0], opt=object()).eval()
    official.mask_decoder.opt = object()
    path = Path("/tmp/robustprior_bench_official.pth")
    torch.save(official.state_dict(), path)
    ours = build_robust_sam("vit_b", path, fourier_mode="identity", encoder_depth=1, global_attention_indexes=(0,))
    generator = torch.Generator().manual_seed(0)
    coords = torch.rand(prompts, 1, 2, generator=generator) * 1024
    labels = torch.ones(prompts, 1, dtype=torch.int)
    with torch.no_grad():
        images = ours.preprocess(255 * torch.rand(1, 3, 1024, 1024, generator=generator))
        features = ours.encode_image(images)
        embedding, early = official.image_encoder(images)
        image_pe = official.prompt_encoder.get_dense_pe()

        started = time.perf_counter()
        sparse, dense = ours.encode_prompts(points=(coords, labels))
        batched = ours.decode(features, sparse, dense, multimask_output=False).mask_logits
        ours_seconds = time.perf_counter() - started

        started = time.perf_counter()
        looped = []
        for i in range(prompts):
            sparse_i, dense_i = official.prompt_encoder(points=(coords[i : i + 1], labels[i : i + 1]), boxes=None, masks=None)
            masks, _, _, _ = official.mask_decoder(
                image_embeddings=embedding, image_pe=image_pe, sparse_prompt_embeddings=sparse_i,
                dense_prompt_embeddings=dense_i, multimask_output=False,
                encoder_features=early[0].unsqueeze(0), clear=False)
            looped.append(masks)
        official_seconds = time.perf_counter() - started
    difference = float((torch.cat(looped) - batched).abs().max())
    return {"prompts": prompts, "ours_seconds": ours_seconds, "official_seconds": official_seconds,
            "ours_prompts_per_s": prompts / ours_seconds, "official_prompts_per_s": prompts / official_seconds,
            "speedup": official_seconds / ours_seconds, "max_abs_logit_difference": difference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vit_t,vit_b", help="comma-separated backbones for part 1")
    parser.add_argument("--model", default="vit_t", help=argparse.SUPPRESS)  # the worker's backbone
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved fresh-process rounds per path (part 1)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", choices=("sam", "robust"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument("--parts", default="flops,table1,prompts",
                        help="comma-separated parts to run: flops (0), table1 (1), prompts (2)")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure_path(args.model, args.worker, args.repeats, args.threads)))
        return
    parts = set(args.parts.split(","))
    unknown = parts - {"flops", "table1", "prompts"}
    if unknown:
        parser.error(f"unknown part(s) {sorted(unknown)}; choose from flops, table1, prompts")
    print(f"torch {torch.__version__}, {args.threads} threads, CPU")
    result: dict = {}
    if "flops" in parts:
        result["flops"] = flop_ratios()
        print("\n0. GFLOPs, image encoding + one point prompt (FFT not counted)")
        print(f"{'model':<8}{'encoder':>10}{'SAM decoder':>13}{'robust decoder':>16}{'robust/SAM':>12}")
        for model_type, row in result["flops"].items():
            print(f"{model_type:<8}{row['encoder_gflops']:>10.1f}{row['sam_decoder_gflops']:>13.1f}"
                  f"{row['robust_decoder_gflops']:>16.1f}{row['ratio']:>11.3f}x")
    if "table1" in parts:
        result["overhead"] = {}
        print(f"\n1. Table 1: robust-path overhead at the input size, set_image + 1 point, median of {args.repeats}")
        print(f"{'model':<8}{'path':<10}{'seconds':>10}{'CPU s':>10}{'peak RSS MB':>14}   "
              "(peak over inference; weights included)")
        for model_type in args.models.split(","):
            o = result["overhead"][model_type] = overhead(model_type, args.repeats, args.threads, args.rounds)
            for path in ("sam", "robust"):
                print(f"{model_type:<8}{path:<10}{o[path]['seconds']:>10.3f}{o[path]['cpu_seconds']:>10.3f}"
                      f"{o[path]['peak_rss_mb']:>14.0f}")
            rounds = ", ".join(f"{r:.3f}" for r in o["time_ratios"])
            flops = result.get("flops", {}).get(model_type)
            bound = f"; FLOP ratio {flops['ratio']:.3f}x" if flops else ""
            print(f"{model_type:<8}ratio robust/sam: CPU time {o['time_ratio']:.3f}x (rounds {rounds}{bound}; "
                  f"target <= 1.05), peak memory {o['memory_ratio']:.3f}x (target <= 1.05)")
    if "prompts" in parts:
        result["prompts"] = prompts_per_second(args.prompts, args.threads)
        p = result["prompts"]
        print(f"\n2. {p['prompts']} prompts on one image (vit_b decoder shapes, encoder excluded)")
        print(f"{'decoder':<34}{'seconds':>10}{'prompts/s':>12}")
        print(f"{'robustprior, one batched forward':<34}{p['ours_seconds']:>10.3f}{p['ours_prompts_per_s']:>12.2f}")
        print(f"{'official release, one at a time':<34}{p['official_seconds']:>10.3f}{p['official_prompts_per_s']:>12.2f}")
        print(f"speed-up {p['speedup']:.2f}x (target >= 5x); outputs agree to {p['max_abs_logit_difference']:.2e}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
