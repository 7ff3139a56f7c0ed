"""One prepared GPU check of the full-scale path: six guarded parts, one report (issue 25).

On the lent GPU machine (run from the repository root; the wheels of segment-anything, basicsr and
pycocotools travel in .whl/, see docs/results/gpu/README.md)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; python3 benchmarks/gpu_check.py --output $OUT/gpu

On a CPU (CI: tests/test_gpu_check.py), tiny sizes and a couple of iterations::

    python benchmarks/gpu_check.py --small --output /tmp/gpu_check_small

Parts (``--parts`` picks some; each is guarded: an error or an overrun is recorded and the others run):

1. ``table1``: the paper's Table 1 on the device. vit_b and vit_h (``--small``: tiny), one point prompt
   including the image encoder (``RobustSAMPredictor.set_torch_image`` + ``predict_torch``), RobustSAM
   path vs SAM path of the same official-format checkpoint: median of >= 20 warm runs (CUDA events;
   the two paths interleaved), peak memory (``torch.cuda.max_memory_allocated``, weights included, and
   above the weights), ratios side by side, fp32 and bf16 autocast. Paper (vit_h): 1.036x time, 1.047x memory.
2. ``priors``: ``SAMPrior`` / ``RobustSAMPrior`` with vit_h on 1280x720 frames, SAM's default 32x32 grid
   and thresholds, ``points_per_batch`` 256: seconds per frame, peak memory, cache bytes per frame,
   masks per frame, robust / SAM ratio; then the same with every mask kept (thresholds 0) while
   the budget lasts, since random weights may leave no mask above SAM's thresholds.
3. ``training``: the robust trainer (``RobustSAMTrainer``), vit_b and vit_h, bf16 AMP (``train.amp``),
   generated 1280x720 scenes: seconds per step and peak memory with the encoder every step vs the
   feature cache (filled first, timed apart).
4. ``restoration``: ``restoration/options/deblur_gopro.yaml`` (SAMDeblurNet width 32, SAM-Deblur's
   blocks, batch 32, 256 px crops) and ``dehaze_sots.yaml`` in :class:`restoration.train.RestorationTrainer`
   on generated full-size GoPro (1280x720) / SOTS-outdoor (550x413) data: the trainer's own
   optimisation step on prefetched batches, fp32 then bf16 autocast, iterations per second and
   peak memory; the loading cost of one batch; one pass of the trainer's loop; a full-frame and a
   tiled (:mod:`restoration.tiling`, 512 px tiles) restore of a 1280x720 frame. The restoration
   priors come from the bundled RobustSAM-tiny (part 2 prices vit_h priors).
5. ``ddp``: the robust trainer under ``torchrun --nproc_per_node 1`` for a few steps, its step module
   in ``DistributedDataParallel`` over an NCCL group of one (gloo on the CPU). The library itself
   joins a group only for world sizes above 1, so the worker joins it and wraps the step module.
6. ``correctness``: RobustSAM-tiny / SAM-tiny (bundled) logits and IoU predictions, and the two
   restoration networks' outputs, on the device vs the CPU for the same inputs (fp32, TF32 off:
   max |difference| <= 1e-3), each also against a CPU float64 run where the model runs in float64.

Checkpoints are random weights written in the official formats (RobustSAM ``.pth`` with the
release's key names; SAM ``.pth``), loaded back through :func:`robustprior.load.load_model`; no
downloads. Data are generated at full size (:mod:`robustprior.data.scenes`). Everything written
goes to ``--work`` (default: a temporary folder, removed at the end unless ``--keep-work``); the
output folder gets ``report.json`` and ``report.md`` only, rewritten after every part, and the
summary table is printed at the end. Exit status 0 when every part passed, 1 otherwise.

Budgets: ``--max-minutes`` (8) for the whole run, imports included; each part has
its own budget (:data:`FULL` / :data:`SMALL`), shrunk to what is left. Parts stop measuring when
their budget is spent and say so; with ``--isolate`` (the default on a GPU) each part runs in its own
process, killed at its budget plus a grace period, and what it had measured until then is kept.
The DDP part's ``torchrun`` is killed at the part's budget in either mode. ``--budget-scale`` stretches
every budget on a slow or shared machine (the CI test uses 4; ``--small`` itself costs about 30 CPU seconds).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

PARTS = ("table1", "priors", "training", "restoration", "ddp", "correctness")
PRECISIONS = ("fp32", "bf16")
PAPER_TABLE1 = {"model": "vit_h", "time_ratio": 1.036, "memory_ratio": 1.047}
CORRECTNESS_TOLERANCE = 1e-3
REQUIRED_MODULES = ("segment_anything", "basicsr", "pycocotools", "safetensors", "cv2", "skimage", "yaml", "scipy")
SAM_THRESHOLDS = {"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95, "box_nms_thresh": 0.7,
                  "min_mask_region_area": 0}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What each part measures at one scale (:data:`FULL` on a GPU, :data:`SMALL` with ``--small``)."""

    table1_models: tuple[str, ...]
    table1_runs: int
    table1_warmup: int
    priors_model: str
    frame: tuple[int, int]  # (H, W) of the generated GoPro frames
    gopro_frames: tuple[int, int, int]  # train sequences, frames per train sequence, test frames
    sots_train: int  # generated SOTS training pairs
    points_per_side: int
    points_per_batch: int
    prior_frames: int
    training_models: tuple[str, ...]
    scene_size: tuple[int, int]
    training_batch: int
    training_steps: int
    training_warmup: int
    restoration_batch: int
    crop: int
    restoration_iterations: int  # timed steps per precision
    restoration_warmup: int
    sots_size: tuple[int, int]
    tile: int
    network_overrides: Mapping[str, Mapping[str, Any]]  # task -> network_g entries replaced
    ddp_model: str
    ddp_steps: int
    correctness_size: int
    budgets: Mapping[str, float]  # part -> seconds
    grace: float  # seconds past its budget before an isolated part is killed


FULL = Sizes(
    table1_models=("vit_b", "vit_h"), table1_runs=20, table1_warmup=3,
    priors_model="vit_h", frame=(720, 1280), gopro_frames=(2, 2, 2), sots_train=4, points_per_side=32, points_per_batch=256, prior_frames=2,
    training_models=("vit_b", "vit_h"), scene_size=(720, 1280), training_batch=2, training_steps=4,
    training_warmup=1,
    restoration_batch=32, crop=256, restoration_iterations=45, restoration_warmup=5, sots_size=(413, 550),
    tile=512, network_overrides={}, ddp_model="vit_b", ddp_steps=3, correctness_size=256,
    budgets={"table1": 90, "priors": 70, "training": 90, "restoration": 100, "ddp": 50, "correctness": 25},
    grace=20,
)
SMALL = Sizes(
    table1_models=("tiny",), table1_runs=2, table1_warmup=0,
    priors_model="tiny", frame=(72, 128), gopro_frames=(1, 2, 1), sots_train=2, points_per_side=2, points_per_batch=16, prior_frames=1,
    training_models=("tiny",), scene_size=(96, 128), training_batch=1, training_steps=1, training_warmup=0,
    restoration_batch=2, crop=32, restoration_iterations=2, restoration_warmup=1, sots_size=(48, 64),
    tile=64, network_overrides={"deblur": {"width": 8, "enc_blk_nums": [1, 1, 1, 1], "train_size": 32},
                                "dehaze": {"width": 8, "enc_blk_nums": [1, 1, 1, 1], "middle_blk_num": 1}},
    ddp_model="tiny", ddp_steps=2, correctness_size=64,
    # generous: on a CPU the budgets only exercise the mechanism (a shared CI machine can be several times slower)
    budgets={"table1": 60, "priors": 60, "training": 60, "restoration": 60, "ddp": 90, "correctness": 60},
    grace=30,
)


# ----------------------------------------------------------------------------- small helpers
def write_json_atomically(path: Path, content: Any) -> None:
    """Pretty JSON to ``path`` through a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temporary.write_text(json.dumps(content, indent=2, default=str) + "\n")
    os.replace(temporary, path)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2e}" if 0 < abs(value) < 10 ** -digits else f"{value:.{digits}f}"
    return str(value)


def smooth_image(size: tuple[int, int], seed: int) -> torch.Tensor:
    """1 x 3 x H x W float in [0, 255]: bilinear upsampling of a coarse random grid (image-like, seeded)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, size[0] // 32), max(2, size[1] // 32), generator=generator)
    return (255 * torch.nn.functional.interpolate(coarse, size, mode="bilinear", align_corners=False)).round()


def block_labels(size: tuple[int, int], regions: int, seed: int) -> torch.Tensor:
    """1 x H x W int64 label map of random 16-px blocks with labels 0..regions."""
    generator = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, regions + 1, (1, 1, -(-size[0] // 16), -(-size[1] // 16)), generator=generator)
    return torch.nn.functional.interpolate(blocks.float(), scale_factor=16, mode="nearest")[0, :, :size[0], :size[1]].long()


class PartTimeout(Exception):
    """A part's budget was spent before it could finish."""


# ----------------------------------------------------------------------------- the context of one part
class Check:
    """What one part measures with: device, sizes, work folder, budget, and its recorded results.

    Results are written to ``result_file`` after every :meth:`record`, so that a part killed at its
    hard limit still leaves what it had measured."""

    def __init__(self, part: str, device: torch.device, sizes: Sizes, small: bool, work: Path, deadline: float,
                 result_file: Path | None = None) -> None:
        self.part, self.device, self.sizes, self.small, self.work = part, device, sizes, small, work
        self.deadline = deadline  # time.time() at which the part's budget is spent
        self.result_file = result_file
        self.results: dict[str, Any] = {}
        self.checks: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.headline = ""
        self.stopped_by_budget = False

    # ------------------------------------------------------------------ results
    def record(self, key: str, value: Any) -> None:
        """``results[key] = value`` (a dotted key makes nested dicts), saved at once."""
        target = self.results
        *parents, last = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[last] = value
        self.save()

    def expect(self, name: str, value: float | None, limit: float) -> None:
        """A pass/fail item: ``value <= limit`` (None fails)."""
        self.checks.append({"name": name, "value": value, "limit": limit,
                            "passed": value is not None and value <= limit})
        self.save()

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.save()

    def payload(self) -> dict[str, Any]:
        return {"results": self.results, "checks": self.checks, "notes": self.notes, "headline": self.headline,
                "stopped_by_budget": self.stopped_by_budget}

    def save(self) -> None:
        if self.result_file is not None:
            write_json_atomically(self.result_file, self.payload())

    # ------------------------------------------------------------------ budget
    def left(self) -> float:
        return self.deadline - time.time()

    def has_time(self, needed: float = 0.0, what: str = "") -> bool:
        """Whether ``needed`` seconds are left; when not, says so once in the notes."""
        if self.left() > needed:
            return True
        if what:
            self.note(f"budget spent: {what} not measured")
        self.stopped_by_budget = True
        return False

    # ------------------------------------------------------------------ device
    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def autocast(self, precision: str) -> contextlib.AbstractContextManager:
        """bf16 autocast on the device for ``"bf16"``, nothing for ``"fp32"``."""
        if precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def time(self, function: Callable[[], Any]) -> float:
        """Seconds of one call: CUDA events on a GPU, ``perf_counter`` on the CPU."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            function()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000.0
        started = time.perf_counter()
        function()
        return time.perf_counter() - started

    def reset_peak(self) -> float:
        """Start a peak-memory window; returns the MB in use now (CUDA allocated, else resident set)."""
        if self.cuda:
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device) / 2**20
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM
        return _proc_status_mb("VmRSS")

    def peak(self) -> float:
        """Peak MB since :meth:`reset_peak` (``max_memory_allocated``, else VmHWM)."""
        if self.cuda:
            self.sync()
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return _proc_status_mb("VmHWM")

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    @property
    def memory_kind(self) -> str:
        return "CUDA max_memory_allocated" if self.cuda else "process peak RSS (VmHWM)"

    # ------------------------------------------------------------------ shared inputs (made once per work folder)
    def checkpoint(self, model_type: str, checkpoint_format: str) -> Path:
        """A random-weight checkpoint of ``model_type`` in an official format, written once into the work
        folder: ``robustsam`` (the official RobustSAM ``.pth``: release token mode, release key names)
        or ``sam`` (a SAM ``.pth``: no robust keys)."""
        path = self.work / "checkpoints" / f"{checkpoint_format}_{model_type}_random.pth"
        if path.is_file():
            return path
        from robustprior.io.checkpoint import OFFICIAL_KEY_MAP, map_official_keys
        from robustprior.load import build_robust_sam

        torch.manual_seed(0)
        model = build_robust_sam(model_type, random_init=True, token_mode="release")
        state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
        del model
        if checkpoint_format == "sam":
            official = {key: value for key, value in state.items() if not key.startswith("robust.")}
        else:
            ours_to_official = sorted(((ours, theirs) for theirs, ours in OFFICIAL_KEY_MAP.items()),
                                      key=lambda item: len(item[0]), reverse=True)
            official = {}
            for key, value in state.items():
                prefix = next((ours for ours, _ in ours_to_official if key.startswith(ours)), None)
                official[dict(ours_to_official)[prefix] + key[len(prefix):] if prefix else key] = value
            if set(map_official_keys(official)) != set(state):
                raise RuntimeError("the official key names written do not map back onto the model's")
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        torch.save(official, temporary)
        os.replace(temporary, path)
        return path

    def _generated(self, name: str, write: Callable[[Path], None]) -> Path:
        """``work/data/<name>``, written once by ``write(root)`` (a ``.complete`` marker; a partial folder is redone)."""
        root = self.work / "data" / name
        if not (root / ".complete").is_file():
            shutil.rmtree(root, ignore_errors=True)
            write(root)
            (root / ".complete").write_text("")
        return root

    def gopro_root(self) -> Path:
        """Generated GoPro data at ``sizes.frame`` (``sizes.gopro_frames``: train sequences x frames, test frames)."""
        from robustprior.data.scenes import SceneConfig, write_gopro_dataset

        def write(root: Path) -> None:
            config = SceneConfig(image_size=tuple(self.sizes.frame))
            sequences, frames, test_frames = self.sizes.gopro_frames
            write_gopro_dataset(root, sequences, frames, seed=0, split="train", config=config, progress=False)
            write_gopro_dataset(root, 1, test_frames, seed=1, split="test", config=config, progress=False)

        return self._generated("GoPro", write)

    def sots_root(self) -> Path:
        """Generated RESIDE data at ``sizes.sots_size``: ``train/outdoor`` (``sizes.sots_train`` pairs), ``test/outdoor`` 1."""
        from robustprior.data.scenes import SceneConfig, write_sots_dataset

        def write(root: Path) -> None:
            config = SceneConfig(image_size=tuple(self.sizes.sots_size))
            write_sots_dataset(root / "train", self.sizes.sots_train, seed=0, split="outdoor", config=config, progress=False)
            write_sots_dataset(root / "test", 1, seed=1, split="outdoor", config=config, progress=False)

        return self._generated("RESIDE", write)

    def training_config(self, model_type: str, checkpoint: Path, iterations: int, cached: bool,
                        batch_size: int) -> dict[str, Any]:
        """A robust-trainer config (robustprior.training.robustsam.config.SCHEMA) on generated scenes."""
        height, width = self.sizes.scene_size
        return {
            "manual_seed": 0, "device": "cuda" if self.cuda else "cpu",
            "model": {"type": model_type, "checkpoint": str(checkpoint)},
            "data": {"train": {"format": "scenes", "n_images": max(4, 2 * batch_size), "seed": 5,
                               "root": str(self.work / "data" / f"scenes_{height}x{width}"),
                               "scene": {"image_size": [height, width]}},
                     "val": None, "min_area": 64, "instances_per_image": 1},
            "degradations": {"variants_per_image": 1},
            "feature_cache": {"enabled": cached, "dir": str(self.work / f"feature_cache_{model_type}")},
            "train": {"total_iter": iterations, "batch_size_per_gpu": batch_size, "log_every": 1,
                      "checkpoint_every": 1_000_000, "val_every": 1_000_000, "amp": True},
        }


def _proc_status_mb(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- part 1: Table 1
def part_table1(check: Check) -> None:
    from robustprior.load import load_model
    from robustprior.predictor import RobustSAMPredictor

    sizes, device = check.sizes, check.device
    headline = []
    for model_type in sizes.table1_models:
        if not check.has_time(10, f"{model_type} and later models"):
            break
        path = check.checkpoint(model_type, "robustsam")
        model, source = load_model(path, device=device, announce=False)
        check.record(f"{model_type}.checkpoint", {"file": path.name, "bytes": path.stat().st_size,
                                                  "format": source.checkpoint_format, "kind": source.kind})
        size = model.image_size
        image = smooth_image((size, size), seed=0).to(device)
        coords = torch.tensor([[[0.4 * size, 0.5 * size]]], device=device)
        labels = torch.ones(1, 1, dtype=torch.int, device=device)
        predictors = {path_name: RobustSAMPredictor(model, path=path_name) for path_name in ("sam", "robust")}

        def run(path_name: str) -> None:
            predictor = predictors[path_name]
            predictor.set_torch_image(image, (size, size))
            predictor.predict_torch(coords, labels, multimask_output=False)

        for precision in PRECISIONS:
            if not check.has_time(5, f"{model_type} {precision}"):
                break
            row: dict[str, Any] = {}
            with check.autocast(precision):
                for path_name in predictors:
                    for _ in range(sizes.table1_warmup):
                        run(path_name)
                for path_name in predictors:  # memory: one run per path in its own window
                    before = check.reset_peak()
                    run(path_name)
                    peak = check.peak()
                    row[path_name] = {"peak_mb": peak, "peak_above_start_mb": peak - before, "start_mb": before}
                times: dict[str, list[float]] = {"sam": [], "robust": []}
                for index in range(sizes.table1_runs):  # interleaved, alternating which path goes first
                    order = ("sam", "robust") if index % 2 == 0 else ("robust", "sam")
                    for path_name in order:
                        times[path_name].append(check.time(lambda: run(path_name)))
                    if not check.has_time(2):
                        check.note(f"{model_type} {precision}: budget spent after {index + 1} runs per path")
                        break
            for path_name, values in times.items():
                row[path_name].update(median_ms=1000 * median(values), runs=len(values),
                                      all_ms=[round(1000 * value, 3) for value in values])
            row["time_ratio"] = ratio(row["robust"]["median_ms"], row["sam"]["median_ms"])
            row["memory_ratio"] = ratio(row["robust"]["peak_mb"], row["sam"]["peak_mb"])
            row["memory_ratio_above_start"] = ratio(row["robust"]["peak_above_start_mb"],
                                                    row["sam"]["peak_above_start_mb"])
            check.record(f"{model_type}.{precision}", row)
            headline.append(f"{model_type} {precision} {_fmt(row['time_ratio'])}x/{_fmt(row['memory_ratio'])}x")
        predictors.clear()
        del model
        check.free()
    check.record("paper", PAPER_TABLE1)
    check.record("memory", check.memory_kind)
    check.headline = "time/memory robust/SAM: " + ", ".join(headline)


# ----------------------------------------------------------------------------- part 2: priors
def _read_frames(root: Path, count: int) -> list[np.ndarray]:
    from restoration.paired_data import list_pairs, read_rgb

    pairs = list_pairs("gopro", root / "test", root / "test") + list_pairs("gopro", root / "train", root / "train")
    return [read_rgb(lq) for lq, _ in pairs[:count]]


def part_priors(check: Check) -> None:
    from robustprior.load import load_model
    from robustprior.priors import RobustSAMPrior, SAMPrior

    sizes = check.sizes
    frames = _read_frames(check.gopro_root(), sizes.prior_frames + 1)
    warmup, frames = frames[0], frames[1:]
    path = check.checkpoint(sizes.priors_model, "robustsam")
    model, source = load_model(path, device=check.device, announce=False)
    check.record("setup", {"model": sizes.priors_model, "checkpoint": path.name, "format": source.checkpoint_format,
                           "frame": f"{frames[0].shape[1]}x{frames[0].shape[0]}", "frames": len(frames),
                           "points_per_side": sizes.points_per_side, "points_per_batch": sizes.points_per_batch,
                           "memory": check.memory_kind})
    variants = {"sam_thresholds": dict(SAM_THRESHOLDS),
                "every_mask": {**SAM_THRESHOLDS, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}}
    headline = []
    for variant, thresholds in variants.items():
        if not check.has_time(30 if check.cuda and variant == "every_mask" else 5, f"priors with {variant}"):
            break
        rows: dict[str, Any] = {}
        for name, prior_class in (("SAMPrior", SAMPrior), ("RobustSAMPrior", RobustSAMPrior)):
            settings = {"points_per_side": sizes.points_per_side, "points_per_batch": sizes.points_per_batch,
                        **thresholds}
            cache_dir = check.work / "prior_cache" / variant / name
            if variant == "sam_thresholds":  # warm-up (kernels, allocator) on a frame that is not timed
                prior_class(model, **settings)(warmup)
            prior = prior_class(model, cache_dir=cache_dir, **settings)
            before = check.reset_peak()
            seconds, masks = [], []
            for frame in frames:
                check.sync()
                started = time.perf_counter()
                result = prior(frame)
                check.sync()
                seconds.append(time.perf_counter() - started)
                masks.append(result.num_masks)
                if not check.has_time(5):
                    break
            peak = check.peak()
            cache_files = list(prior.cache_folder.glob("*.safetensors"))
            rows[name] = {"seconds_per_frame": median(seconds), "all_seconds": seconds, "frames": len(seconds),
                          "masks_per_frame": float(np.mean(masks)), "peak_mb": peak, "peak_above_start_mb": peak - before,
                          "cache_bytes_per_frame": sum(f.stat().st_size for f in cache_files) / max(1, len(cache_files))}
            check.record(f"{variant}.{name}", rows[name])
            check.free()
        if len(rows) == 2:
            rows["robust_over_sam"] = ratio(rows["RobustSAMPrior"]["seconds_per_frame"], rows["SAMPrior"]["seconds_per_frame"])
            check.record(f"{variant}.robust_over_sam", rows["robust_over_sam"])
            headline.append(f"{variant}: {_fmt(rows['RobustSAMPrior']['seconds_per_frame'])} s/frame robust, "
                            f"{_fmt(rows['robust_over_sam'])}x SAM, "
                            f"{rows['RobustSAMPrior']['masks_per_frame']:.0f} masks")
    if any(check.results.get("sam_thresholds", {}).get(name, {}).get("masks_per_frame") == 0
           for name in ("SAMPrior", "RobustSAMPrior")):
        check.note("random weights left no mask above SAM's thresholds: that row prices the encoder, the grid's "
                   "transformer passes and the IoU filter only; the every_mask row draws every mask")
    check.headline = "; ".join(headline)


# ----------------------------------------------------------------------------- part 3: robust training step
def part_training(check: Check) -> None:
    from robustprior.training.robustsam import RobustSAMTrainer

    sizes = check.sizes
    steps, warmup = sizes.training_steps, sizes.training_warmup
    headline = []
    for model_type in sizes.training_models:
        # vit_b starts from a SAM checkpoint (the paper's recipe); vit_h reuses the official RobustSAM file of parts 1-2
        checkpoint_format = "robustsam" if model_type == "vit_h" else "sam"
        checkpoint = check.checkpoint(model_type, checkpoint_format)
        row: dict[str, Any] = {"checkpoint_format": checkpoint_format, "batch_size": sizes.training_batch,
                               "scene_size": list(sizes.scene_size), "amp": "bf16" if check.cuda else "off (CPU)"}
        for cached in (False, True):
            label = "feature_cache" if cached else "encoder_every_step"
            if not check.has_time(15, f"{model_type} {label}"):
                break
            config = check.training_config(model_type, checkpoint, warmup + steps + 1, cached, sizes.training_batch)
            folder = check.work / f"train_{model_type}_{label}"
            shutil.rmtree(folder, ignore_errors=True)
            trainer = RobustSAMTrainer(config, folder)
            try:
                entry: dict[str, Any] = {}
                if cached:
                    check.sync()
                    started = time.perf_counter()
                    counts = trainer.fill_cache(progress=False)
                    check.sync()
                    entry["fill_cache_seconds"] = time.perf_counter() - started
                    entry["fill_cache_counts"] = counts
                    cache_dir = Path(config["feature_cache"]["dir"])
                    entry["cache_bytes"] = sum(f.stat().st_size for f in cache_dir.rglob("*") if f.is_file())
                if warmup:
                    trainer.train(stop_after=warmup)
                before = check.reset_peak()
                check.sync()
                started = time.perf_counter()
                trainer.train(stop_after=warmup + steps)
                check.sync()
                peak = check.peak()
                entry.update(seconds_per_step=(time.perf_counter() - started) / steps, steps=steps, peak_mb=peak,
                             peak_above_start_mb=peak - before)
                row[label] = entry
            finally:
                trainer.close()
                del trainer
                check.free()
            check.record(model_type, row)
        if "encoder_every_step" in row and "feature_cache" in row:
            row["cache_speedup"] = ratio(row["encoder_every_step"]["seconds_per_step"],
                                         row["feature_cache"]["seconds_per_step"])
            check.record(model_type, row)
            headline.append(f"{model_type} {_fmt(row['encoder_every_step']['seconds_per_step'])} -> "
                            f"{_fmt(row['feature_cache']['seconds_per_step'])} s/step ({_fmt(row['cache_speedup'], 2)}x)")
    check.record("memory", check.memory_kind)
    check.note("seconds per step are wall time around trainer.train() (one small checkpoint of the robust parts "
               "included); scenes are generated at the frame size, SAM resizes them to its input size")
    check.headline = "; ".join(headline)


# ----------------------------------------------------------------------------- part 4: restoration
def _restoration_options(check: Check, task: str, prior_settings: Mapping[str, Any]) -> dict[str, Any]:
    from restoration.config import load_options_file
    from restoration.paired_data import locate_dataset

    sizes = check.sizes
    option_file = REPO / "restoration" / "options" / ("deblur_gopro.yaml" if task == "deblur" else "dehaze_sots.yaml")
    options = load_options_file(option_file, validate=False)
    options = copy.deepcopy(options)
    datasets = options["datasets"]
    if task == "deblur":
        root = check.gopro_root()
        datasets["train"].update(locate_dataset("gopro", root, split="train"))
        datasets["val"].update(locate_dataset("gopro", root, split="test"))
    else:
        root = check.sots_root()
        datasets["train"].update(locate_dataset("sots", root / "train"))
        datasets["val"].update(locate_dataset("sots", root / "test", split="outdoor"))
    datasets["train"].update(gt_size=sizes.crop, num_worker_per_gpu=0, batch_size_per_gpu=sizes.restoration_batch)
    options["network_g"].update(sizes.network_overrides.get(task, {}))
    options["train"].update(total_iter=1_000_000)
    options["logger"].update(save_checkpoint_freq=None, print_freq=1)
    options["val"].update(val_freq=None, save_img=False)
    options["prior"].update(checkpoint="tiny", cache_dir=str(check.work / "restoration_prior_cache"),
                            points_per_side=sizes.points_per_side, **prior_settings)
    return options


def part_restoration(check: Check) -> None:
    from torch.utils.data import default_collate

    from restoration.inference import restore_image
    from restoration.train import RestorationTrainer
    from robustprior.load import load_model

    sizes = check.sizes
    _, tiny = load_model("tiny", announce=False)
    tiny_settings = {key: value for key, value in tiny.generator_settings("robust").items()
                     if key in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh")}
    headline = []
    for task in ("deblur", "dehaze"):
        if not check.has_time(15, f"restoration {task}"):
            break
        options = _restoration_options(check, task, tiny_settings)
        folder = check.work / f"restoration_{task}"
        shutil.rmtree(folder, ignore_errors=True)
        started = time.perf_counter()
        trainer = RestorationTrainer(options, folder, device=check.device, progress=False)
        row: dict[str, Any] = {"setup_seconds": time.perf_counter() - started}
        try:
            network_options = trainer.network_options
            row["network"] = {**network_options,
                              "parameters": sum(p.numel() for p in trainer.network.parameters())}
            row["batch_size"], row["crop"] = sizes.restoration_batch, sizes.crop
            check.record(task, row)
            train_set = trainer.train_set
            train_set.set_epoch(0)
            started = time.perf_counter()
            batches = [default_collate([train_set[(b * sizes.restoration_batch + i) % len(train_set)]
                                        for i in range(sizes.restoration_batch)]) for b in range(2)]
            row["load_seconds_per_batch"] = (time.perf_counter() - started) / len(batches)
            check.record(task, row)
            for precision in PRECISIONS:
                if not check.has_time(5, f"{task} {precision} steps"):
                    break
                with check.autocast(precision):
                    for index in range(sizes.restoration_warmup):
                        trainer._step(batches[index % 2])
                    before = check.reset_peak()
                    seconds: list[float] = []
                    for index in range(sizes.restoration_iterations):
                        check.sync()
                        began = time.perf_counter()
                        loss = trainer._step(batches[index % 2])  # returns float(loss): synchronised
                        seconds.append(time.perf_counter() - began)
                        if not check.has_time(3):
                            check.note(f"{task} {precision}: budget spent after {index + 1} iterations")
                            break
                    peak = check.peak()
                row[precision] = {"iterations": len(seconds), "iterations_per_second": len(seconds) / sum(seconds),
                                  "median_step_seconds": median(seconds), "peak_mb": peak,
                                  "peak_above_start_mb": peak - before, "last_loss": loss}
                check.record(task, row)
            if check.has_time(5, f"{task} trainer loop"):
                started = time.perf_counter()
                trainer.fit(until=1)  # the trainer's own loop: DataLoader, step, log, checkpoint
                row["trainer_loop_one_iteration_seconds"] = time.perf_counter() - started
                check.record(task, row)
            if task == "deblur" and check.has_time(5, "tiled restore"):
                row["restore"] = _restore_frame(check, trainer, restore_image)
                check.record(task, row)
        finally:
            trainer.close()
            del trainer
            check.free()
        steps = "/".join(_fmt(row.get(p, {}).get("iterations_per_second"), 2) for p in PRECISIONS)
        headline.append(f"{task} {steps} it/s fp32/bf16 at batch {sizes.restoration_batch}")
    check.record("memory", check.memory_kind)
    check.note("the trainer has no AMP option: bf16 rows run its optimisation step (RestorationTrainer._step) "
               "under torch.autocast; steps run on prefetched batches, the loading cost is load_seconds_per_batch "
               "(one process)")
    check.headline = "; ".join(headline)


def _restore_frame(check: Check, trainer: Any, restore_image: Callable[..., torch.Tensor]) -> dict[str, Any]:
    """A full-frame and a tiled restore of the first test frame (fp32, eval mode)."""
    item = trainer.test_set[0]
    image = item["lq"][None]
    label_map = item["prior"]["label_map"][None] if "prior" in item else None
    network = trainer.network.eval()
    result: dict[str, Any] = {"frame": f"{image.shape[-1]}x{image.shape[-2]}", "tile": check.sizes.tile, "overlap": 32}
    try:
        for mode, tile in (("full_frame", None), ("tiled", check.sizes.tile)):
            restore_image(network, image, label_map, grey_scale=trainer.grey_scale, tile=tile, overlap=32,
                          device=check.device)  # warm-up
            before = check.reset_peak()
            started = time.perf_counter()
            output = restore_image(network, image, label_map, grey_scale=trainer.grey_scale, tile=tile, overlap=32,
                                   device=check.device)
            check.sync()
            peak = check.peak()
            result[mode] = {"seconds": time.perf_counter() - started, "peak_mb": peak, "peak_above_start_mb": peak - before,
                            "output_finite": bool(torch.isfinite(output).all())}
    finally:
        network.train()
    return result


# ----------------------------------------------------------------------------- part 5: DDP smoke
def part_ddp(check: Check) -> None:
    sizes = check.sizes
    backend = "nccl" if check.cuda else "gloo"
    folder = check.work / "ddp"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    checkpoint = check.checkpoint(sizes.ddp_model, "sam")
    config = check.training_config(sizes.ddp_model, checkpoint, sizes.ddp_steps, False, 1)
    config_file, result_file = folder / "config.json", folder / "result.json"
    write_json_atomically(config_file, config)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               str(Path(__file__).resolve()), "--ddp-worker", str(config_file), str(result_file), "--backend", backend]
    check.record("command", " ".join(command[1:]))
    started = time.perf_counter()
    completed = _run_with_timeout(command, max(5.0, check.left()))
    check.record("seconds", time.perf_counter() - started)
    check.record("returncode", completed["returncode"])
    if completed["returncode"] != 0 or not result_file.is_file():
        check.record("output_tail", completed["output"][-3000:])
        errors = [line for line in completed["output"].splitlines() if "Error" in line or "error:" in line]
        raise RuntimeError(f"torchrun exited with {completed['returncode']}"
                           + (" (killed at the budget)" if completed["timed_out"] else "")
                           + (f"; first error: {errors[0].strip()}" if errors else "") + " (output_tail in report.json)")
    result = json.loads(result_file.read_text())
    check.record("worker", result)
    check.expect("all_reduce error over the group", result["all_reduce_error"], 0.0)
    check.expect("steps short of the config", float(sizes.ddp_steps - result["metrics"]["iterations"]), 0.0)
    check.headline = (f"{result['backend']} world {result['world_size']}, DDP-wrapped step, "
                      f"{result['metrics']['iterations']} steps in {_fmt(result['train_seconds'], 1)} s")


def ddp_worker(config_file: Path, result_file: Path, backend: str) -> None:
    """One ``torchrun`` rank: join the group, train with the step module in DDP, write the result."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from robustprior.training.robustsam import RobustSAMTrainer

    config = json.loads(config_file.read_text())
    if config["device"] == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    try:
        trainer = RobustSAMTrainer(config, result_file.parent / "run")
        device = trainer.device
        trainer.wrapped = DistributedDataParallel(trainer.step_module,
                                                  device_ids=[device.index] if device.type == "cuda" else None)
        started = time.perf_counter()
        metrics = trainer.train()
        train_seconds = time.perf_counter() - started
        value = torch.full((1,), float(dist.get_rank() + 1), device=device)
        dist.all_reduce(value)
        expected = sum(range(1, dist.get_world_size() + 1))
        nccl = None
        if backend == "nccl":
            with contextlib.suppress(Exception):
                nccl = ".".join(map(str, torch.cuda.nccl.version()))
        if dist.get_rank() == 0:
            write_json_atomically(result_file, {
                "backend": dist.get_backend(), "world_size": dist.get_world_size(), "device": str(device),
                "nccl_version": nccl, "train_seconds": train_seconds, "metrics": metrics,
                "all_reduce_error": abs(float(value.item()) - expected)})
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- part 6: correctness
def _max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double().cpu() - b.double().cpu()).abs().max())


def part_correctness(check: Check) -> None:
    from restoration.archs import build_network
    from restoration.config import network_options as translated_network
    from robustprior.training.config import read_config_file
    from robustprior.load import load_model
    from robustprior.predictor import RobustSAMPredictor

    device = check.device
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    check.record("tf32", "off for these comparisons (torch.backends.cuda.matmul / cudnn allow_tf32 = False)")
    worst = 0.0
    try:
        for name, path_name in (("tiny", "robust"), ("sam_tiny", "sam")):
            model, source = load_model(name, decoder_path=path_name, announce=False)
            size = model.image_size
            image = smooth_image((size, size), seed=3)
            coords = torch.tensor([[[0.3 * size, 0.4 * size]], [[0.7 * size, 0.6 * size]]])
            labels = torch.ones(2, 1, dtype=torch.int)

            def logits(on: torch.device, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
                copy_ = copy.deepcopy(model).to(on, dtype)
                predictor = RobustSAMPredictor(copy_, path=path_name)
                predictor.set_torch_image(image.to(on, dtype), (size, size))
                _, iou, low_res = predictor.predict_torch(coords.to(on, dtype), labels.to(on), multimask_output=True)
                return low_res.cpu(), iou.cpu()

            reference = logits(torch.device("cpu"))
            on_device = logits(device)
            row = {"model": source.label(path_name), "logit_scale": float(reference[0].abs().max()),
                   "device_vs_cpu_logits": _max_difference(on_device[0], reference[0]),
                   "device_vs_cpu_iou": _max_difference(on_device[1], reference[1])}
            try:
                double = logits(torch.device("cpu"), torch.float64)
                row["device_vs_cpu_float64_logits"] = _max_difference(on_device[0], double[0])
            except (RuntimeError, TypeError) as error:
                row["cpu_float64"] = f"unavailable: {type(error).__name__}: {str(error).splitlines()[0]}"
            check.record(name, row)
            check.expect(f"{name} logits, device vs CPU", row["device_vs_cpu_logits"], CORRECTNESS_TOLERANCE)
            check.expect(f"{name} IoU predictions, device vs CPU", row["device_vs_cpu_iou"], CORRECTNESS_TOLERANCE)
            worst = max(worst, row["device_vs_cpu_logits"], row["device_vs_cpu_iou"])

        side = check.sizes.correctness_size
        for task, option_file in (("deblur", "deblur_gopro.yaml"), ("dehaze", "dehaze_sots.yaml")):
            network_g = dict(read_config_file(REPO / "restoration" / "options" / option_file)["network_g"])
            network_g.update(check.sizes.network_overrides.get(task, {}))
            torch.manual_seed(0)
            network_options = translated_network(network_g)
            network = build_network(network_options).eval()
            generator = torch.Generator().manual_seed(4)
            lq = torch.rand(1, 3, side, side, generator=generator)
            prior = {"label_map": block_labels((side, side), 12, seed=5), "grey_scale": torch.tensor([255])}

            def restored(on: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
                copy_ = copy.deepcopy(network).to(on, dtype)
                with torch.no_grad():
                    return copy_(lq.to(on, dtype), {key: value.to(on) for key, value in prior.items()}).cpu()

            reference, on_device = restored(torch.device("cpu")), restored(device)
            row = {"network": network_options["type"], "input": f"{side}x{side}",
                   "device_vs_cpu": _max_difference(on_device, reference)}
            try:
                row["device_vs_cpu_float64"] = _max_difference(on_device, restored(torch.device("cpu"), torch.float64))
            except (RuntimeError, TypeError) as error:
                row["cpu_float64"] = f"unavailable: {type(error).__name__}: {str(error).splitlines()[0]}"
            check.record(task, row)
            check.expect(f"{network_options['type']} output, device vs CPU", row["device_vs_cpu"], CORRECTNESS_TOLERANCE)
            worst = max(worst, row["device_vs_cpu"])
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    if not check.cuda:
        check.note("no GPU: the device is the CPU, so device vs CPU is 0 by construction; the float64 columns "
                   "are the informative ones here")
    check.headline = f"worst max abs difference device vs CPU {worst:.2e} (limit {CORRECTNESS_TOLERANCE:g})"


PART_FUNCTIONS: dict[str, Callable[[Check], None]] = {
    "table1": part_table1, "priors": part_priors, "training": part_training,
    "restoration": part_restoration, "ddp": part_ddp, "correctness": part_correctness,
}


# ----------------------------------------------------------------------------- running parts
def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux ``/proc``; empty elsewhere), also those in other sessions
    (``torchrun`` starts its workers in new sessions, out of reach of a process-group kill)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _run_with_timeout(command: list[str], timeout: float) -> dict[str, Any]:
    """Run ``command`` (output to a temporary file, never a pipe a stray process could hold open); after
    ``timeout`` seconds kill it and every process below it."""
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                   cwd=str(REPO))
        timed_out = False
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            for pid in [process.pid, *_descendants(process.pid)]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            process.wait()
        log.seek(0)
        output = log.read()
    return {"returncode": process.returncode, "output": output, "timed_out": timed_out}


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its finished children."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_part_here(part: str, device: torch.device, sizes: Sizes, small: bool, work: Path, budget: float,
                  result_file: Path | None = None) -> dict[str, Any]:
    """Run one part in this process, guarded: returns its entry (status ok / failed / over budget)."""
    check = Check(part, device, sizes, small, work, time.time() + budget, result_file)
    started, cpu_started = time.time(), _cpu_seconds()
    status, error = "ok", None
    try:
        PART_FUNCTIONS[part](check)
    except Exception as raised:  # noqa: BLE001 (a part's failure is recorded; the other parts run)
        status = "failed"
        error = "".join(traceback.format_exception_only(type(raised), raised)).strip()
        check.results["traceback"] = traceback.format_exc()[-4000:]
    finally:
        check.free()
    if status == "ok" and not all(item["passed"] for item in check.checks):
        status, error = "failed", "; ".join(f"{item['name']}: {item['value']} > {item['limit']}"
                                            for item in check.checks if not item["passed"])
    entry = {"status": status, "error": error, "seconds": time.time() - started, "budget_s": budget,
             "cpu_seconds": _cpu_seconds() - cpu_started, **check.payload()}
    if result_file is not None:
        write_json_atomically(result_file, entry)
    return entry


def run_part_isolated(part: str, args: argparse.Namespace, work: Path, budget: float, grace: float) -> dict[str, Any]:
    """Run one part in a child process, killed after ``budget + grace`` seconds; what it recorded is kept."""
    result_file = work / "parts" / f"{part}.json"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--run-part", part, "--part-file", str(result_file),
               "--budget", str(budget), "--work", str(work), "--device", args.device]
    if args.small:
        command.append("--small")
    started = time.time()
    completed = _run_with_timeout(command, budget + grace)
    entry: dict[str, Any] = {}
    if result_file.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            entry = json.loads(result_file.read_text())
    if completed["timed_out"]:
        entry.update(status="killed", error=f"killed at its hard limit ({budget:.0f} s budget + {grace:.0f} s grace)")
    elif "status" not in entry:
        last = completed["output"].strip().splitlines()[-1:] or [""]
        entry.update(status="failed", error=f"the part's process exited with {completed['returncode']}: {last[0]}")
    entry.update(seconds=time.time() - started, budget_s=budget, isolated=True)
    if entry["status"] != "ok":
        entry["output_tail"] = completed["output"][-3000:]
    return entry


# ----------------------------------------------------------------------------- report
def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda_runtime": torch.version.cuda, "cpu_count": os.cpu_count(), "device": str(device),
                            "platform": platform.platform()}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                    multiprocessors=properties.multi_processor_count,
                    cudnn=torch.backends.cudnn.version(), matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
                    cudnn_tf32=torch.backends.cudnn.allow_tf32)
    try:
        from robustprior.training.provenance import git_commit

        info["git_commit"] = git_commit()
    except Exception:  # noqa: BLE001 (provenance is informative only)
        info["git_commit"] = "unknown"
    return info


def summary_rows(report: Mapping[str, Any]) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for part, entry in report["parts"].items():
        headline = entry.get("headline") or ""
        if entry.get("error"):
            headline = (headline + " | " if headline else "") + entry["error"].splitlines()[0][:200]
        rows.append((part, entry["status"], f"{entry.get('seconds', 0):.1f}", f"{entry.get('budget_s', 0):.0f}", headline))
    return rows


def summary_table(report: Mapping[str, Any]) -> str:
    lines = ["| part | status | seconds | budget s | result |", "|---|---|---:|---:|---|"]
    lines += [f"| {' | '.join(cell.replace('|', '/') for cell in row)} |" for row in summary_rows(report)]
    return "\n".join(lines)


def _table1_markdown(results: Mapping[str, Any]) -> list[str]:
    lines = ["| model | precision | SAM ms | RobustSAM ms | time ratio | SAM peak MB | RobustSAM peak MB | memory ratio "
             "| ratio above start | runs |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model_type, by_precision in results.items():
        if not isinstance(by_precision, dict):
            continue
        for precision in PRECISIONS:
            row = by_precision.get(precision)
            if not row:
                continue
            lines.append(f"| {model_type} | {precision} | {_fmt(row['sam']['median_ms'], 1)} | "
                         f"{_fmt(row['robust']['median_ms'], 1)} | {_fmt(row['time_ratio'])} | "
                         f"{_fmt(row['sam']['peak_mb'], 0)} | {_fmt(row['robust']['peak_mb'], 0)} | "
                         f"{_fmt(row['memory_ratio'])} | {_fmt(row['memory_ratio_above_start'])} | {row['sam']['runs']} |")
    lines.append(f"\nPaper (vit_h, GPU): time {PAPER_TABLE1['time_ratio']}x, memory {PAPER_TABLE1['memory_ratio']}x.")
    return lines


def _flatten(values: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of nested results; lists of numbers and long text (in report.json) left out."""
    if isinstance(values, Mapping):
        for key, value in values.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(values, list):
        if len(values) <= 4 and not any(isinstance(value, (dict, list)) for value in values):
            yield prefix, ", ".join(_fmt(value, 4) for value in values)
    elif not (isinstance(values, str) and len(values) > 300):
        yield prefix, values


def report_markdown(report: Mapping[str, Any]) -> str:
    env = report["environment"]
    device = env.get("gpu", env["device"])
    lines = [f"# GPU check of the full-scale path ({'small, ' if report['small'] else ''}{device})", "",
             f"Command: `{report['command']}`  ", f"Started {report['started']}, {report['total_seconds']:.0f} s in all "
             f"(limit {report['max_minutes']} min); torch {env['torch']} (CUDA {env['cuda_runtime']}), Python "
             f"{env['python']}, {env['cpu_count']} CPUs, commit {env.get('git_commit', 'unknown')}.", "",
             "Random weights in the official checkpoint formats; generated data (see benchmarks/gpu_check.py).", "",
             summary_table(report), ""]
    for part, entry in report["parts"].items():
        lines += [f"## {part}: {entry['status']}", ""]
        if entry.get("error"):
            lines += ["```", entry["error"], "```", ""]
        results = entry.get("results", {})
        if part == "table1" and results:
            lines += _table1_markdown(results) + [""]
        for item in entry.get("checks", []):
            lines.append(f"- check {'passed' if item['passed'] else 'FAILED'}: {item['name']} = {_fmt(item['value'], 6)} "
                         f"(limit {item['limit']})")
        for note in entry.get("notes", []):
            lines.append(f"- note: {note}")
        flat = [(key, value) for key, value in _flatten(results) if key != "traceback"]
        if flat:
            lines += ["", "| measurement | value |", "|---|---|"]
            lines += [f"| {key} | {_fmt(value, 4).replace('|', '/')} |" for key, value in flat]
        lines.append("")
    return "\n".join(lines)


def write_report(output: Path, report: Mapping[str, Any]) -> None:
    write_json_atomically(output / "report.json", report)
    temporary = output / ".report.md.tmp"
    temporary.write_text(report_markdown(report) + "\n")
    os.replace(temporary, output / "report.md")


# ----------------------------------------------------------------------------- command line
def _missing_modules() -> list[str]:
    import importlib.util

    return [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]


def _resolve_device(name: str, small: bool) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"gpu_check: --device {name}, but PyTorch sees no CUDA device here; use --small on a CPU")
    if device.type == "cpu" and not small:
        raise SystemExit("gpu_check: the full-scale checks need a GPU (vit_h at 1280x720 would take hours on a CPU); "
                         "pass --small for the CPU version")
    return device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, help="folder for report.json and report.md (required)")
    parser.add_argument("--small", action="store_true", help="tiny sizes, a couple of iterations (CPU, CI)")
    parser.add_argument("--device", default="auto", help="auto (GPU when there is one), cuda, cuda:N or cpu")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--max-minutes", type=float, default=None, help="wall-clock limit of the whole run (8; --small: 8)")
    parser.add_argument("--budget-scale", type=float, default=1.0,
                        help="multiply every part's budget and grace (a slow or shared machine; mind --max-minutes)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own; --small: 1, tiny models gain nothing from more)")
    parser.add_argument("--isolate", choices=("auto", "yes", "no"), default="auto",
                        help="each part in its own process, killed at its budget + grace (auto: yes on a GPU)")
    parser.add_argument("--work", type=Path, default=None, help="folder for checkpoints, data and runs (default: temporary)")
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report in --output")
    # internal: one part in this process (--isolate), or one torchrun rank of the DDP part
    parser.add_argument("--run-part", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--part-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--ddp-worker", nargs=2, type=Path, metavar=("CONFIG", "RESULT"), help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="nccl", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    parts = [part for part in args.parts.split(",") if part]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        parser.error(f"--parts: unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    args.part_list = parts
    if args.output is None and not (args.ddp_worker or args.run_part):
        parser.error("--output FOLDER is required (report.json and report.md go there)")
    return args


def main(argv: list[str] | None = None) -> int:
    began = time.time()
    args = parse_args(argv)
    if args.ddp_worker:
        ddp_worker(args.ddp_worker[0], args.ddp_worker[1], args.backend)
        return 0
    sizes = SMALL if args.small else FULL
    device = _resolve_device(args.device, args.small)
    threads = args.threads if args.threads is not None else (1 if args.small else None)
    if threads:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # for the part processes and torchrun's worker
    if args.run_part:  # a child of run_part_isolated
        run_part_here(args.run_part, device, sizes, args.small, args.work, args.budget, args.part_file)
        return 0
    missing = _missing_modules()
    if missing:
        raise SystemExit(f"gpu_check: missing Python packages {', '.join(missing)} (on the GPU machine they travel as "
                         "wheels: docs/results/gpu/README.md)")
    output: Path = args.output
    if (output / "report.json").exists() and not args.overwrite:
        raise SystemExit(f"gpu_check: {output / 'report.json'} exists; pass --overwrite to replace it or another --output")
    output.mkdir(parents=True, exist_ok=True)
    max_minutes = args.max_minutes if args.max_minutes is not None else 8.0
    deadline = began + 60 * max_minutes - 10  # 10 s kept for the report
    isolate = args.isolate == "yes" or (args.isolate == "auto" and device.type == "cuda")
    work = args.work or Path(tempfile.mkdtemp(prefix="robustprior_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, str(Path(__file__).relative_to(REPO)),
                             *(sys.argv[1:] if argv is None else argv)]), "small": args.small, "isolated": isolate,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(began)), "max_minutes": max_minutes,
        "environment": environment(device), "sizes": dataclasses.asdict(sizes), "parts": {}, "total_seconds": 0.0}
    try:
        for index, part in enumerate(args.part_list):
            remaining_parts = len(args.part_list) - index - 1
            budget = min(args.budget_scale * sizes.budgets[part], deadline - time.time() - 5 * remaining_parts)
            if budget < 3:
                entry = {"status": "skipped", "error": "no time left in --max-minutes", "seconds": 0.0, "budget_s": 0.0}
            elif isolate:
                grace = min(args.budget_scale * sizes.grace, max(1.0, deadline - time.time() - budget))
                entry = run_part_isolated(part, args, work, budget, grace)
            else:
                entry = run_part_here(part, device, sizes, args.small, work, budget)
            report["parts"][part] = entry
            report["total_seconds"] = time.time() - began
            write_report(output, report)
            print(f"[gpu_check] {part}: {entry['status']} in {entry.get('seconds', 0):.1f} s "
                  f"{'- ' + entry['error'].splitlines()[0] if entry.get('error') else ''}", flush=True)
    finally:
        if args.work is None and not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    report["total_seconds"] = time.time() - began
    write_report(output, report)
    print(f"\n{report['environment'].get('gpu', report['environment']['device'])}, torch {torch.__version__}, "
          f"{report['total_seconds']:.0f} s in all -> {output / 'report.md'}")
    print(summary_table(report))
    return 0 if all(entry["status"] == "ok" for entry in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
