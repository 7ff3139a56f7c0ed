"""The ``robustprior`` command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

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


def _input_images(spec: str) -> list[str]:
    """The image files of ``spec``: itself (a file or ``skimage:NAME``), or a folder's images (sorted)."""
    from robustprior.data.scenes import PHOTO_EXTENSIONS

    folder = Path(spec)
    if not folder.is_dir():
        return [spec]
    images = sorted(str(path) for path in folder.iterdir() if path.is_file() and path.suffix.lower() in PHOTO_EXTENSIONS)
    if not images:
        raise ValueError(f"folder {folder} holds no images ({', '.join(sorted(PHOTO_EXTENSIONS))})")
    return images


def _stem(spec: str) -> str:
    return spec.split(":", 1)[1] if spec.startswith("skimage:") else Path(spec).stem


def _generator_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The automatic-mask settings given on the command line (validated)."""
    from robustprior.io.amg_settings import validate_settings

    given = {"points_per_side": args.points_per_side, "pred_iou_thresh": args.pred_iou_thresh,
             "stability_score_thresh": args.stability_thresh, "box_nms_thresh": args.box_nms_thresh,
             "min_mask_region_area": args.min_area}
    given = {name: value for name, value in given.items() if value is not None}
    validate_settings(given, "command-line settings")
    return given


def _planned_outputs(args: argparse.Namespace, stems: list[str], automatic: bool) -> list[Path]:
    output = Path(args.output)
    paths: list[Path] = []
    for stem in stems:
        paths.append(output / f"{stem}_overlay.png")
        if automatic:
            paths.append(output / (stem if args.output_mode == "binary_mask" else f"{stem}.json"))
        else:
            paths.append(output / f"{stem}_mask.png")
            if args.multimask:
                paths += [output / f"{stem}_mask_{index}.png" for index in range(3)] + [output / f"{stem}_scores.csv"]
    return paths


def command_segment(args: argparse.Namespace) -> int:
    """Segment an image or a folder: point / box prompts, or automatic masks when none are given."""
    import torch

    from robustprior.data.image_io import load_image
    from .load import load_model
    from .predictor import check_box_prompt, check_point_prompt
    from .training.run_folder import check_output_folder

    if args.labels is not None and args.points is None:
        raise ValueError("--labels go with --points (one label per point); without --points nothing is prompted "
                         "and automatic masks would be made instead")
    automatic = args.points is None and args.box is None
    inputs = _input_images(args.image)
    if not automatic and len(inputs) > 1:
        raise ValueError(f"point / box prompts are for one image; {args.image} is a folder of {len(inputs)} images")
    stems = [_stem(spec) for spec in inputs]
    repeated = sorted({stem for stem in stems if stems.count(stem) > 1})
    if repeated:
        raise ValueError(f"images with the same name stem would write the same outputs: {', '.join(repeated)}")
    # everything the user typed is checked before the model loads
    overrides = _generator_overrides(args) if automatic else {}
    image = labels = None
    if not automatic:
        image = load_image(inputs[0])[0]
        if args.points is not None:
            labels = args.labels if args.labels is not None else np.ones(len(args.points))
            if len(labels) != len(args.points):
                raise ValueError(f"{len(args.points)} points but {len(labels)} labels")
            check_point_prompt(args.points, labels, image.shape[:2])
        if args.box is not None:
            check_box_prompt(args.box, image.shape[:2])
    check_output_folder(args.output, "--output")  # a file or a read-only folder: an error before the model runs
    existing = [path for path in _planned_outputs(args, stems, automatic) if path.exists()]
    if existing and not args.overwrite:
        shown = ", ".join(map(str, existing[:4])) + (f" and {len(existing) - 4} more" if len(existing) > 4 else "")
        print(f"error: {shown} already exist; pass --overwrite to replace them", file=sys.stderr)
        return 2

    torch.manual_seed(args.seed)
    path = "sam" if args.sam_baseline else "robust"
    model, source = load_model(args.checkpoint, args.model_type, decoder_path=path, device=args.device,
                               allow_untrained_robust=args.allow_untrained_robust)
    source.warn_outside_domain(path, [None if spec.startswith("skimage:") else spec for spec in inputs])
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    if automatic:
        return _segment_automatically(args, inputs, stems, model, source, path, overrides)
    return _segment_with_prompts(args, image, stems[0], labels, model, source, path)


def _segment_automatically(args, inputs, stems, model, source, path, overrides) -> int:
    from tqdm.auto import tqdm

    from robustprior.io.amg_settings import describe_thresholds
    from .automatic_mask_generator import RobustSAMAutomaticMaskGenerator
    from robustprior.data.image_io import load_image
    from robustprior.io.mask_outputs import clear_mask_folder, record_mask, write_coco_rle, write_mask_folder, write_png
    from robustprior.evaluation.visualize import overlay_masks

    settings = {**source.generator_settings(path), **overrides}
    print(f"[robustprior] automatic masks with {describe_thresholds(settings)}"
          + ("" if overrides else " (the model's own settings)"), file=sys.stderr)
    generator = RobustSAMAutomaticMaskGenerator(model, path=path, progress=not args.no_progress, output_mode=args.output_mode,
                                             points_per_batch=args.points_per_batch, **settings)
    output = Path(args.output)
    for spec, stem in tqdm(list(zip(inputs, stems)), desc="images", unit="image", disable=args.no_progress or len(inputs) == 1):
        image = load_image(spec)[0]
        records = sorted(generator.generate(image), key=lambda record: record["area"], reverse=True)
        if args.output_mode == "binary_mask":
            clear_mask_folder(output / stem)
            written = write_mask_folder(output / stem, records).parent
        else:
            written = write_coco_rle(output / f"{stem}.json", records)
        masks = np.array([record_mask(record) for record in records], dtype=bool).reshape(-1, *image.shape[:2])
        overlay_path = output / f"{stem}_overlay.png"
        write_png(overlay_path, overlay_masks(image, masks))
        print(f"{len(records)} masks ({source.label(path)}) -> {written}, {overlay_path}")
        if not records:
            print(f"warning: no masks for {spec} with {describe_thresholds(settings)}: lower --pred-iou-thresh / "
                  "--stability-thresh (or raise --points-per-side)", file=sys.stderr)
    return 0


def _segment_with_prompts(args, image, stem, labels, model, source, path) -> int:
    from robustprior.io.mask_outputs import write_png
    from .predictor import RobustSAMPredictor
    from robustprior.evaluation.visualize import overlay_masks

    predictor = RobustSAMPredictor(model, path=path)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(args.points, labels, args.box, multimask_output=args.multimask)
    best = int(np.argmax(scores))
    output = Path(args.output)
    mask_path, overlay_path = output / f"{stem}_mask.png", output / f"{stem}_overlay.png"
    write_png(mask_path, masks[best].astype(np.uint8) * 255)
    write_png(overlay_path, overlay_masks(image, masks[best : best + 1], points=args.points, labels=labels, box=args.box))
    if args.multimask:
        from robustprior.io.atomic import write_text_atomically

        rows = ["id,predicted_iou,area,best"]
        for index, (mask, score) in enumerate(zip(masks, scores)):
            write_png(output / f"{stem}_mask_{index}.png", mask.astype(np.uint8) * 255)
            rows.append(f"{index},{float(score)},{int(mask.sum())},{int(index == best)}")
        write_text_atomically(output / f"{stem}_scores.csv", "\n".join(rows) + "\n")
        print(f"{len(masks)} masks ({source.label(path)}; predicted IoU "
              + ", ".join(f"{float(score):.3f}" for score in scores)
              + f") -> {output / (stem + '_mask_{0,1,2}.png')}, {output / (stem + '_scores.csv')}; best {best} -> {mask_path}")
    else:
        print(f"mask ({source.label(path)}, predicted IoU {scores[best]:.3f}) -> {mask_path}, {overlay_path}")
    return 0


def command_train(args: argparse.Namespace) -> int:
    """Train RobustSAM's robust parts (DDP under torchrun)."""
    from .training.robustsam import RobustSAMTrainer, load_config

    config = None if args.config is None else load_config(args.config)
    with RobustSAMTrainer(config, args.output, resume=args.resume, overwrite=args.overwrite,
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
    from robustprior.evaluation.evaluate import load_eval_config, run_evaluation
    from .training.run_folder import check_output_folder

    config = load_eval_config(args.config)
    check_output_folder(args.output, "--output")  # a file or a read-only folder: an error before the model runs
    result = run_evaluation(config, args.checkpoint, Path(args.output), overwrite=args.overwrite)
    print(result.to_markdown())
    print(f"report written to {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robustprior", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser(
        "segment", help="segment an image or a folder with RobustSAM (or SAM), prompted or automatically",
        description="Prompted masks (--points / --box), or automatic masks in segment-anything's scripts/amg.py "
                    "layout: OUTPUT/STEM/N.png + metadata.csv (or OUTPUT/STEM.json with --output-mode coco_rle), "
                    "plus a colour overlay OUTPUT/STEM_overlay.png.")
    segment.add_argument("image", help="image file, a folder of images (automatic mode), or skimage:NAME "
                                       "(a scikit-image sample, e.g. skimage:astronaut)")
    segment.add_argument("--checkpoint", default=None,
                         help="file path or name: bundled tiny / robustsam_tiny / sam_tiny (generated scenes only), "
                              "downloadable robustsam_vit_b/_l/_h, sam_vit_b/_l/_h, mobile_sam; default: bundled tiny")
    segment.add_argument("--model-type", default=None,
                         help="vit_b/vit_l/vit_h/vit_t/tiny; inferred from the checkpoint (an error if it contradicts it)")
    segment.add_argument("--points", type=_parse_points, default=None, help="'x,y;x,y' in pixels")
    segment.add_argument("--labels", type=_parse_numbers, default=None, help="'1,0' (1 foreground, 0 background)")
    segment.add_argument("--box", type=_parse_numbers, default=None, help="'x0,y0,x1,y1' in pixels")
    segment.add_argument("--multimask", action="store_true",
                         help="prompted: predict 3 masks, write all three (STEM_mask_N.png) with their scores "
                              "(STEM_scores.csv); STEM_mask.png is the best-scored one")
    segment.add_argument("--sam-baseline", action="store_true", help="use the plain SAM decoder of the same weights")
    segment.add_argument("--allow-untrained-robust", action="store_true",
                         help="run the RobustSAM path of a model whose robust parts are untrained (SAM-only checkpoint)")
    amg = segment.add_argument_group("automatic masks (no prompt); unset: the model's own settings, else SAM's")
    amg.add_argument("--points-per-side", type=int, default=None, help="point grid per image side")
    amg.add_argument("--points-per-batch", type=int, default=64, help="prompts per decoder forward")
    amg.add_argument("--pred-iou-thresh", type=float, default=None, help="keep masks whose predicted IoU exceeds this")
    amg.add_argument("--stability-thresh", "--stability-score-thresh", dest="stability_thresh", type=float,
                     default=None, help="keep masks whose stability score reaches this")
    amg.add_argument("--box-nms-thresh", type=float, default=None, help="box IoU above which duplicates are dropped")
    amg.add_argument("--min-area", "--min-mask-region-area", dest="min_area", type=int, default=None,
                     help="remove islands and holes smaller than this many pixels")
    amg.add_argument("--output-mode", choices=("binary_mask", "coco_rle"), default="binary_mask",
                     help="binary_mask: a PNG per mask + metadata.csv; coco_rle: one COCO RLE JSON per image")
    segment.add_argument("--output", default="outputs/segment", help="output folder")
    segment.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    segment.add_argument("--no-progress", action="store_true", help="no progress bars")
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
    train.add_argument("--iterations", type=int, default=None, help="override train.total_iter (also on --resume)")
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
    from .io.allocator import keep_freed_memory
    from .training.errors import RunSetupError  # after parsing: --help needs no torch

    keep_freed_memory()  # freed tensors stay in the process: no page faults on every decoder batch

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
