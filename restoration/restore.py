"""Restore a user's image (or a folder of images) with a trained run and its own prior.

    python recipes/dehaze.py --restore hazy.jpg                         # the recipe's RobustSAM-prior run, seed 0
    python recipes/deblur.py --restore photos/ --row sam --seed 2 --tile 512
    python recipes/dehaze.py --restore hazy.jpg --run outputs/dehaze/runs/gt_masks/seed0   # any run folder

The prior of each image is computed with the run's prior model and settings (the fingerprint must match
the one the run was trained with), cached under ``<restored>/prior_cache``; images larger than ``--tile``
run as overlapping tiles (:mod:`restoration.tiling`). Outputs are ``<restored>/<stem>.png``, written
atomically; an existing output is kept unless ``--overwrite``. Grayscale, RGBA and 16-bit inputs are
read as RGB (:func:`restoration.paired_data.read_rgb_float`). Control-row runs (``gt_masks``,
``shuffled_masks``) cannot restore new images: those images have no ground-truth instances.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from restoration.control_priors import CONTROL_PRIOR_KINDS
from restoration.paired_data import read_rgb_float
from restoration.train import load_trained_run, write_rgb_png
from robustprior.io.atomic import atomic_path
from robustprior.training.errors import CheckpointError, RunSetupError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class RestoreError(RunSetupError):
    """A restore request that cannot be served (one line for the user)."""


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--restore`` options of a recipe's command line (the recipe has ``--output`` / ``--overwrite`` /
    ``--device`` / ``--no-progress`` already)."""
    group = parser.add_argument_group("restore your own images with a trained run (instead of running the recipe)")
    group.add_argument("--restore", metavar="PATH", help="an image or a folder of images to restore")
    group.add_argument("--run", metavar="DIR", help="trained run folder (default: <output>/runs/<row>/seed<seed>)")
    group.add_argument("--row", default="robustsam", help="the recipe row whose run restores (default: %(default)s)")
    group.add_argument("--seed", type=int, default=0, help="the training seed of that run (default: %(default)s)")
    group.add_argument("--restored", metavar="DIR", help="where the PNGs go (default: <output>/restored)")
    group.add_argument("--tile", type=int, default=None, help="tile size for large images (default: the run's val.tile)")
    group.add_argument("--tile-overlap", type=int, default=32, help="tile overlap in pixels (default: %(default)s)")


def input_files(path: str | Path) -> list[Path]:
    """The image(s) at ``path``: the file itself, or the image files of a folder (sorted)."""
    path = Path(path)
    if not path.exists():
        raise RestoreError(f"{path} does not exist")
    if path.is_dir():
        files = sorted(child for child in path.iterdir() if child.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise RestoreError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return files
    return [path]


def restore_paths(run_dir: str | Path, inputs: Sequence[str | Path], output_dir: str | Path, tile: int | None = None,
                  overlap: int = 32, overwrite: bool = False, device: str = "cpu",
                  progress: bool = False) -> list[Path]:
    """Restore every image of ``inputs`` with the trained run in ``run_dir``; returns the written PNGs."""
    run_dir, output_dir = Path(run_dir), Path(output_dir)
    if not run_dir.is_dir():
        raise RestoreError(f"run folder {run_dir} does not exist (train the recipe first, or pass --run)")
    try:
        run = load_trained_run(run_dir, device)
    except CheckpointError as error:
        raise RestoreError(str(error)) from None
    if run.options["prior"]["kind"] in CONTROL_PRIOR_KINDS:
        raise RestoreError(f"{run_dir} is a control run ({run.options['prior']['kind']}): it needs ground-truth instance "
                           "maps that new images do not have; restore with a none / sam / robustsam run")
    files = [Path(path) for path in inputs]
    targets = [output_dir / f"{path.stem}.png" for path in files]
    if len(set(targets)) != len(targets):
        raise RestoreError("two inputs share a file stem; their outputs would collide")
    existing = [target for target in targets if target.exists()]
    if existing and not overwrite:
        raise RestoreError(f"{existing[0]} already exists ({len(existing)} output(s) in all); pass --overwrite to replace")
    for path in files:
        try:
            image = read_rgb_float(path)
        except (ValueError, OSError) as error:
            raise RestoreError(f"{path} is not a readable image ({error})") from None
        if min(image.shape[:2]) < 1:
            raise RestoreError(f"{path} is empty")
    if tile is not None:
        run.options["val"]["tile"], run.options["val"]["overlap"] = tile, overlap
    priors = run.prepare_priors([str(path) for path in files], output_dir / "prior_cache", progress=progress)
    written = []
    for path, target in tqdm(list(zip(files, targets)), desc="restoring", unit="image", disable=not progress):
        restored = run.restore_file(path, priors)
        with atomic_path(target, suffix=".png") as temporary:
            write_rgb_png(Path(temporary), restored)
        written.append(target)
    return written


def run_restore(args: argparse.Namespace, task: str) -> int:
    """``--restore`` of a recipe's command line; returns the exit status (2 with one line on a bad request)."""
    output = Path(args.output)
    run_dir = Path(args.run) if args.run else output / "runs" / args.row / f"seed{args.seed}"
    restored = Path(args.restored) if args.restored else output / "restored"
    try:
        files = input_files(args.restore)
        written = restore_paths(run_dir, files, restored, tile=args.tile, overlap=args.tile_overlap,
                                overwrite=args.overwrite, device=args.device,
                                progress=not args.no_progress)
    except RunSetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for source, target in zip(files, written):
        print(f"{source} -> {target}")
    print(f"restored {len(written)} image(s) with the {task} run {run_dir}")
    return 0
