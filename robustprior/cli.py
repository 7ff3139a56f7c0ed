"""The ``robustprior`` command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def _parse_points(text: str) -> np.ndarray:
    try:
        points = np.array([[float(v) for v in pair.split(",")] for pair in text.split(";") if pair.strip()])
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"points must look like 'x,y;x,y', got {text!r}") from error
    if points.ndim != 2 or points.shape[1] != 2:
        raise argparse.ArgumentTypeError(f"points must look like 'x,y;x,y', got {text!r}")
    return points


def _parse_numbers(text: str) -> np.ndarray:
    try:
        return np.array([float(v) for v in text.split(",")])
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from error


def _write_png(path: Path, image: np.ndarray) -> None:
    import cv2

    if image.ndim == 3:
        image = image[:, :, ::-1]
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


def command_segment(args: argparse.Namespace) -> int:
    """Segment one image with point/box prompts, or automatically when none are given."""
    import torch

    from .automatic_mask_generator import RobustAutomaticMaskGenerator
    from .image_io import load_image
    from .predictor import RobustSamPredictor
    from .pretrained import load_robust_sam
    from .visualize import overlay_masks

    image, stem = load_image(args.image)
    output = Path(args.output)
    mask_path, overlay_path = output / f"{stem}_mask.png", output / f"{stem}_overlay.png"
    existing = [p for p in (mask_path, overlay_path) if p.exists()]
    if existing and not args.overwrite:
        print(f"error: {', '.join(map(str, existing))} already exist; pass --overwrite to replace them", file=sys.stderr)
        return 2
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    model = load_robust_sam(args.checkpoint, args.model_type, device=args.device)
    path = "sam" if args.sam_baseline else "robust"
    if args.points is None and args.box is None:
        generator = RobustAutomaticMaskGenerator(model, path=path, points_per_side=args.points_per_side)
        records = sorted(generator.generate(image), key=lambda r: r["area"], reverse=True)
        masks = np.array([r["segmentation"] for r in records], dtype=bool).reshape(-1, *image.shape[:2])
        label_map = np.zeros(image.shape[:2], dtype=np.uint16)
        for index, mask in enumerate(masks, start=1):
            label_map[mask] = index
        _write_png(mask_path, label_map if len(masks) > 255 else label_map.astype(np.uint8))
        _write_png(overlay_path, overlay_masks(image, masks))
        print(f"{len(masks)} masks ({'SAM' if args.sam_baseline else 'RobustSAM'}) -> {mask_path} (label map), {overlay_path}")
        return 0
    predictor = RobustSamPredictor(model, path=path)
    predictor.set_image(image)
    labels = None
    if args.points is not None:
        labels = args.labels if args.labels is not None else np.ones(len(args.points))
        if len(labels) != len(args.points):
            print(f"error: {len(args.points)} points but {len(labels)} labels", file=sys.stderr)
            return 2
    masks, scores, _ = predictor.predict(args.points, labels, args.box, multimask_output=args.multimask)
    best = int(np.argmax(scores))
    _write_png(mask_path, masks[best].astype(np.uint8) * 255)
    _write_png(overlay_path, overlay_masks(image, masks[best : best + 1], points=args.points, labels=labels, box=args.box))
    print(f"mask {best} of {len(masks)} (predicted IoU {scores[best]:.3f}) -> {mask_path}, {overlay_path}")
    return 0


def command_train(args: argparse.Namespace) -> int:
    """Train RobustSAM's robust parts (DDP under torchrun)."""
    from .training.robustsam import RobustSamTrainer, load_config

    config = None if args.config is None else load_config(args.config)
    with RobustSamTrainer(config, args.output, resume=args.resume, overwrite=args.overwrite,
                          allow_config_change=args.allow_config_change, iterations=args.iterations) as trainer:
        trainer.train()
    return 0


def command_cache(args: argparse.Namespace) -> int:
    """Fill the encoder feature cache for a training config (the config is not saved anywhere)."""
    from .training.robustsam import fill_feature_cache, load_config

    directory, counts = fill_feature_cache(load_config(args.config), args.output)
    print(f"feature cache {directory}: {counts['misses']} encoded, {counts['hits']} already cached")
    return 0


def command_eval(args: argparse.Namespace) -> int:
    """Evaluate SAM vs RobustSAM per degradation (the paper's Table 2 layout)."""
    from .evaluate import load_eval_config, run_evaluation

    result = run_evaluation(load_eval_config(args.config), args.checkpoint, Path(args.output), overwrite=args.overwrite)
    print(result.to_markdown())
    print(f"report written to {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robustprior", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment an image with RobustSAM (or SAM)")
    segment.add_argument("image", help="image file, or skimage:NAME for a scikit-image sample (e.g. skimage:astronaut)")
    segment.add_argument("--checkpoint", default=None,
                         help="file path or known name (sam_vit_b, robustsam_vit_b, ...); default: bundled tiny model")
    segment.add_argument("--model-type", default=None, help="vit_b/vit_l/vit_h/vit_t/tiny (inferred when omitted)")
    segment.add_argument("--points", type=_parse_points, default=None, help="'x,y;x,y' in pixels")
    segment.add_argument("--labels", type=_parse_numbers, default=None, help="'1,0' (1 foreground, 0 background)")
    segment.add_argument("--box", type=_parse_numbers, default=None, help="'x0,y0,x1,y1' in pixels")
    segment.add_argument("--multimask", action="store_true", help="predict 3 masks and keep the best-scored one")
    segment.add_argument("--sam-baseline", action="store_true", help="use the plain SAM decoder of the same weights")
    segment.add_argument("--points-per-side", type=int, default=32, help="grid for automatic masks (no prompts)")
    segment.add_argument("--output", default="outputs/segment", help="output folder")
    segment.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    segment.add_argument("--device", default="cpu")
    segment.add_argument("--seed", type=int, default=0)
    segment.set_defaults(handler=command_segment)

    train = commands.add_parser("train", help="train RobustSAM (torchrun --nproc_per_node N for DDP)")
    train.add_argument("config", nargs="?", default=None,
                       help="training YAML (see robustprior/configs/); with --resume it may be left out (the run's own)")
    train.add_argument("--output", required=True, help="run folder (config, logs, checkpoints, weights)")
    mode = train.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    mode.add_argument("--overwrite", action="store_true",
                      help="start the run in --output again (only a RobustSAM run folder; its feature cache is kept)")
    train.add_argument("--allow-config-change", action="store_true",
                       help="with --resume and a config: continue with a config that differs from the run's "
                            "(recorded in OUTPUT/config_changes.yaml)")
    train.add_argument("--iterations", type=int, default=None, help="override train.iterations (also on --resume)")
    train.set_defaults(handler=command_train)

    cache = commands.add_parser("cache", help="precompute the encoder feature cache of a training config")
    cache.add_argument("config")
    cache.add_argument("--output", required=True,
                       help="run folder (the cache goes to feature_cache.dir or OUTPUT/feature_cache); its config is "
                            "neither read nor written")
    cache.set_defaults(handler=command_cache)

    evaluate = commands.add_parser("eval", help="evaluate SAM vs RobustSAM per degradation")
    evaluate.add_argument("config", help="evaluation YAML (model, data.test, eval)")
    evaluate.add_argument("--checkpoint", default=None, help="file path or known name; default: the config's or bundled tiny")
    evaluate.add_argument("--output", default="outputs/eval", help="report folder")
    evaluate.add_argument("--overwrite", action="store_true")
    evaluate.set_defaults(handler=command_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .training.errors import RunSetupError  # after parsing: --help needs no torch

    if args.command == "train":
        if args.config is None and not args.resume:
            parser.error("train: a config is needed (only --resume may leave it out)")
        if args.allow_config_change and not (args.resume and args.config):
            parser.error("train: --allow-config-change goes with --resume and a config")
    try:
        return args.handler(args)
    except (RunSetupError, ValueError, FileNotFoundError, FileExistsError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
