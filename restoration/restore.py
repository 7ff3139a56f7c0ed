"""Restore a user's images with a trained restoration run and its prior (the recipes' ``--restore``).

::

    python recipes/dehaze.py --restore photo.png                  # run <output>/runs/robustsam/seed0
    python recipes/deblur.py --restore frames/ --row sam --seed 2 --restored out/ --tile 512

Each input image (a file, or every image file directly inside a folder) is restored by the run's
network (:func:`restoration.trained_run.load_trained_run`: its final checkpoint, read without opening the
run for training) with the prior of that image computed exactly as training computed priors: the
run's own prior model, checkpoint, generator settings, grouping, latent features and grey-level scale
(:meth:`restoration.trained_run.TrainedRun.prepare_priors`, which refuses a prior model whose fingerprint is
not the run's). The result is ``<restored>/<stem>.png`` (8-bit RGB, written atomically), the size of
the input.

Prior cache: the run's own prior cache (``prior.cache_dir``, else ``<run>/prior_cache``) when that
folder exists, so images the run has seen are not computed again and get exactly the prior the run
was evaluated with; else ``<restored>/prior_cache``. Cache files are content-keyed and written
atomically, so adding new images' priors to a run's cache changes nothing the run relies on.

Tiling (``--tile N``): an image with a side above ``N`` runs as overlapping ``N x N`` windows
(:mod:`restoration.tiling`), ``--tile-overlap`` pixels apart (default: the run's ``val.overlap``);
both must be multiples of the network's size multiple (2**levels). ``--tile 0`` never tiles. Default
(automatic): the run's ``val.tile`` when it has one (what its evaluation used), else
:data:`AUTO_TILE` (images with a side above 1024 px run as 1024-px windows, bounding memory). Tiled
and untiled outputs differ where a network looks beyond a window (global channel attention, region
averages of the prior): on the test suite's tiny dehazing network (2 levels, 2 iterations), three
generated 96 x 96 scenes in 64-px windows with a 32-px overlap differ from the untiled output by at
most 1 level (mean 0.0003 levels); 32-px windows with an 8-px overlap by at most 3 (mean 0.12). The
tests allow :data:`TILED_TOLERANCE` levels at 64/32.

Inputs are read as :func:`restoration.paired_data.read_rgb_float` reads them (the trainer's reader):
grayscale is tripled, alpha dropped, 16-bit samples kept at full precision for the network (the prior
model sees them at 8 bits, :func:`restoration.paired_data.read_rgb`), each with a one-line note. A
run whose prior uses a bundled tiny model prints the prior's one-line warning when an input is not a
generated scene (:meth:`robustprior.load.ModelSource.warn_outside_domain`).

Every problem is one :class:`RestoreError` line (exit status 2 from :func:`run_restore`), found before
any output is written where it can be: a missing run folder, a folder that is not a restoration run,
a run without its final checkpoint, a missing input, a file that is not a readable image, a float
image with NaN / Inf or samples outside [0, 1], a folder without images, two inputs writing the same
output, an existing output (unless ``overwrite``), a ``--restored`` that is a file or cannot be
written to (checked before any model runs), a tile size off the network's grid, an image with more
regions than the run's grey-level scale.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from restoration.datasets import PRIOR_CLASSES, PriorIndex
from restoration.paired_data import IMAGE_EXTENSIONS
from restoration.inference import size_multiple
from restoration.trained_run import PRIOR_CACHE_NAME, RUN_KIND, TrainedRun, load_trained_run
from robustprior.data.image_io import check_float_samples
from robustprior.io.mask_outputs import write_png
from robustprior.training.errors import RunSetupError
from robustprior.training.run_folder import RUN_MARKER, check_output_folder

__all__ = ["AUTO_TILE", "TILED_TOLERANCE", "RestoreError", "InputImage", "add_restore_arguments", "default_run_dir",
           "list_inputs", "restore_paths", "run_restore"]

AUTO_TILE = 1024  # automatic tiling without a run val.tile: windows of this side for images with a larger side
TILED_TOLERANCE = 2  # max |tiled - untiled| in 8-bit levels the tests allow at 64/32 (module docstring)
DEFAULT_ROW = "robustsam"
TASKS = ("dehaze", "deblur")


class RestoreError(RunSetupError, ValueError):
    """A restore cannot run as asked (run, inputs or outputs); ``str(error)`` is one line saying why."""


@dataclass
class InputImage:
    """One image to restore: its ``path``, ``size`` (H, W) and conversion ``notes``."""

    path: Path
    size: tuple[int, int]
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- inputs
def _image_files(folder: Path) -> list[Path]:
    """Visible files with an image extension directly inside ``folder``, sorted by name."""
    return sorted(path for path in folder.iterdir()
                  if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS)


def inspect_image(path: Path) -> InputImage:
    """Decode ``path`` once to check it and describe the conversion to RGB (one note per change)."""
    try:
        encoded = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise RestoreError(f"cannot read {path}: {error.strerror or error}") from None
    image = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED) if encoded.size else None
    if image is None:
        raise RestoreError(f"{path} is not a readable image (corrupt, or not an image: "
                           f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if image.dtype not in (np.uint8, np.uint16, np.float32) or channels not in (1, 2, 3, 4):
        raise RestoreError(f"{path} has {channels} channel(s) of {image.dtype}; expected 1-4 channels of 8 or 16 bits")
    notes = []
    if channels in (1, 2):
        notes.append("grayscale, restored as RGB (the grey channel tripled)")
    if channels in (2, 4):
        notes.append("alpha channel dropped (restored as opaque RGB)")
    if image.dtype == np.uint16:
        notes.append("16-bit: the network reads all 16 bits, the prior model 8, the PNG is 8-bit")
    if image.dtype == np.float32:
        try:
            check_float_samples(image, str(path))
        except ValueError as error:
            raise RestoreError(str(error)) from None
        notes.append("float samples in [0, 1]; the PNG is 8-bit")
    return InputImage(path, (int(image.shape[0]), int(image.shape[1])), notes)


def list_inputs(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """The image files of ``inputs`` (files, or folders: every image file directly inside, sorted);
    a missing path or a folder without images is a :class:`RestoreError`."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not items:
        raise RestoreError("no input given: pass an image or a folder of images")
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = _image_files(item)
            if not found:
                raise RestoreError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in folder {item}")
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise RestoreError(f"input {item} does not exist")
    return list(dict.fromkeys(files))


def output_paths(images: Sequence[Path], output_dir: Path, overwrite: bool) -> list[Path]:
    """``output_dir / <stem>.png`` per image: two inputs with one stem, an output that is its own input,
    an existing output without ``overwrite``, or an ``output_dir`` that is a file is a :class:`RestoreError`."""
    if output_dir.exists() and not output_dir.is_dir():
        raise RestoreError(f"--restored {output_dir} is a file, not a folder: choose a folder for the restored PNGs")
    outputs: dict[Path, Path] = {}
    for image in images:
        output = output_dir / f"{image.stem}.png"
        if output in outputs:
            raise RestoreError(f"{outputs[output]} and {image} would both be written to {output}: "
                               "restore them into different --restored folders")
        if output.exists() and output.resolve() == image.resolve():
            raise RestoreError(f"{image} would be replaced by its own restoration: choose another --restored folder")
        outputs[output] = image
    existing = [output for output in outputs if output.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise RestoreError(f"{existing[0]}{more} already exists; pass --overwrite to replace it, or choose "
                           "another --restored folder")
    return list(outputs)


# ----------------------------------------------------------------------------- run
def check_run_folder(run_dir: Path) -> None:
    """``run_dir`` exists and is a restoration run folder (its marker names the kind), else a :class:`RestoreError`."""
    if not run_dir.exists():
        raise RestoreError(f"run folder {run_dir} does not exist: train it first, or pass --run DIR")
    if not run_dir.is_dir():
        raise RestoreError(f"run folder {run_dir} is a file, not a folder")
    marker = run_dir / RUN_MARKER
    if not marker.is_file():
        raise RestoreError(f"{run_dir} is not a run folder (it has no {RUN_MARKER} file)")
    try:
        kind = json.loads(marker.read_text()).get("kind")
    except (OSError, ValueError, AttributeError) as error:
        raise RestoreError(f"{marker} is damaged ({error})") from None
    if kind != RUN_KIND:
        raise RestoreError(f"{run_dir} holds a {kind} run, not a {RUN_KIND} run")


def load_final_run(run_dir: Path, device: str) -> TrainedRun:
    """The trained run at its final checkpoint (iteration ``train.total_iter``); a run without any
    checkpoint, or stopped before the end, is a :class:`RestoreError`."""
    check_run_folder(run_dir)
    trained = load_trained_run(run_dir, device)  # no checkpoint: a CheckpointError (one line)
    total = trained.options["train"]["total_iter"]
    if trained.iteration < total:
        raise RestoreError(f"{run_dir} stopped at iteration {trained.iteration} of {total}: it has no final "
                           "checkpoint (finish it with --resume)")
    kind = trained.options["prior"]["kind"]
    if kind != "none" and kind not in PRIOR_CLASSES:
        raise RestoreError(f"{run_dir} uses the {kind} prior, made from a generator's instance maps that a user's "
                           f"image does not have: restore with a run of prior kind none, {' or '.join(PRIOR_CLASSES)}")
    return trained


def prior_cache_dir(trained: TrainedRun, output_dir: Path) -> Path:
    """The run's own prior cache when that folder exists, else ``output_dir / prior_cache`` (module docstring)."""
    configured = trained.options["prior"]["cache_dir"]
    own = Path(configured) if configured else trained.folder / PRIOR_CACHE_NAME
    return own if own.is_dir() else output_dir / PRIOR_CACHE_NAME


def choose_tiling(trained: TrainedRun, tile: int | None, overlap: int | None) -> tuple[int, int]:
    """``(tile, overlap)`` to use (tile 0: never tiled; module docstring); values off the network's
    grid are a :class:`RestoreError`."""
    if tile is None:
        tile = trained.options["val"]["tile"] or AUTO_TILE
    overlap = trained.options["val"]["overlap"] if overlap is None else overlap
    if tile < 0 or overlap < 0:
        raise RestoreError(f"--tile ({tile}) and --tile-overlap ({overlap}) must not be negative")
    if tile == 0:
        return 0, overlap
    multiple = size_multiple(trained.network)
    if tile % multiple or overlap % multiple:
        raise RestoreError(f"--tile ({tile}) and --tile-overlap ({overlap}) must be multiples of {multiple}, "
                           f"the input-size multiple of {trained.folder}'s network")
    if overlap >= tile:
        raise RestoreError(f"--tile-overlap ({overlap}) must be smaller than --tile ({tile})")
    return tile, overlap


def check_regions(trained: TrainedRun, priors: PriorIndex | None, images: Sequence[InputImage]) -> dict[Path, int]:
    """The region count of every image's prior; more regions than the run's grey-level scale (which the
    grayscale coding cannot express) is a :class:`RestoreError`."""
    if priors is None:
        return {}
    counts = {image.path: int(priors.label_map(priors.load(image.path)).max(initial=0)) for image in images}
    if trained.grey_scale is not None:
        for path, count in counts.items():
            if count > trained.grey_scale:
                raise RestoreError(
                    f"the prior of {path} has {count} regions, but {trained.folder} codes at most {trained.grey_scale} "
                    "grey levels (prior.num_segments; auto: the most regions of its images): restore with a run "
                    "trained with a fixed prior.num_segments of at least that (e.g. 255)")
    return counts


# ----------------------------------------------------------------------------- restore
def restore_paths(
    run_dir: str | Path,
    inputs: str | Path | Sequence[str | Path],
    output_dir: str | Path,
    tile: int | None = None,
    overlap: int | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = False,
    *,
    cache_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    task: str | None = None,
) -> list[Path]:
    """Restore every image of ``inputs`` with the trained run ``run_dir``; returns the written PNGs
    (``output_dir / <stem>.png``, H x W x 3 uint8 RGB of each input's H x W), in input order.

    ``tile`` / ``overlap``: see the module docstring (None: automatic / the run's ``val.overlap``; tile
    0: never tiled). ``overwrite``: replace existing outputs (else a :class:`RestoreError` before any
    work). ``device``: as :func:`restoration.trained_run.load_trained_run`. ``progress``: the prior's progress
    bar. ``cache_dir``: the prior cache (None: :func:`prior_cache_dir`). ``log``: called with one line
    per restored image, the notes of converted inputs and the summary. ``task`` (dehaze | deblur): a run
    named for the other task (the recipes name runs ``<task>_<row>``) gets a warning line. Raises
    :class:`RestoreError` or another :class:`~robustprior.training.RunSetupError` (e.g. a prior model
    that is not the run's)."""
    started = time.perf_counter()
    say = log or (lambda line: None)
    run_dir, output_dir = Path(run_dir), Path(output_dir)
    check_run_folder(run_dir)
    images = [inspect_image(path) for path in list_inputs(inputs)]
    outputs = output_paths([image.path for image in images], output_dir, overwrite)
    check_output_folder(output_dir, "--restored")  # a read-only folder: an error before any model runs
    trained = load_final_run(run_dir, device)
    tile, overlap = choose_tiling(trained, tile, overlap)
    trained_for = trained.options["name"].split("_")[0]
    if task is not None and trained_for in TASKS and trained_for != task:
        say(f"warning: {run_dir} is a {trained_for} run ({trained.options['name']}), used here to {task}")
    cache = Path(cache_dir) if cache_dir is not None else prior_cache_dir(trained, output_dir)
    try:
        priors = trained.prepare_priors([image.path for image in images], cache, progress=progress)
    except RunSetupError:
        raise
    except (FileNotFoundError, ValueError) as error:  # e.g. the run's prior checkpoint file is gone
        raise RestoreError(f"the prior model of {run_dir} is not available: {error}") from None
    regions = check_regions(trained, priors, images)
    for image, output in zip(images, outputs):
        for note in image.notes:
            say(f"note: {image.path}: {note}")
        restored = trained.restore_file(image.path, priors, tile=tile, overlap=overlap)
        write_png(output, restored)
        height, width = image.size
        parts = [f"{width}x{height}"]
        if image.path in regions:
            parts.append(f"{regions[image.path]} regions")
        parts.append(f"tiled {tile}/{overlap}" if tile and max(image.size) > tile else "whole")
        say(f"{image.path} ({', '.join(parts)}) -> {output}")
    say(f"restored {len(images)} image(s) with {run_dir} (iteration {trained.iteration}, prior: "
        f"{describe_run_prior(trained)}) in {time.perf_counter() - started:.1f} s -> {output_dir}")
    return outputs


def describe_run_prior(trained: TrainedRun) -> str:
    """``none``, or the run's prior kind and model (as its checkpoint recorded them)."""
    if trained.options["prior"]["kind"] == "none":
        return "none"
    return f"{trained.prior.get('kind')}, {trained.prior.get('model', 'unknown model')}"


# ----------------------------------------------------------------------------- command line
def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    """The restore options of a recipe command line (which already has ``--output``, ``--overwrite``,
    ``--device`` and ``--no-progress``, read by :func:`run_restore`)."""
    group = parser.add_argument_group("restore images with a trained run (instead of training)")
    group.add_argument("--restore", metavar="PATH", help="restore this image, or every image in this folder")
    group.add_argument("--run", metavar="DIR", help="the trained run folder (default: <output>/runs/<row>/seed<seed>)")
    group.add_argument("--row", default=DEFAULT_ROW, help="with the default --run: the table row (default: %(default)s)")
    group.add_argument("--seed", type=int, default=0, help="with the default --run: the seed (default: %(default)s)")
    group.add_argument("--restored", metavar="DIR", help="where the PNGs go (default: <output>/restored)")
    group.add_argument("--tile", type=int, metavar="N",
                       help=f"restore images with a side above N px as overlapping N x N tiles; 0: never; default: "
                            f"the run's val.tile, else {AUTO_TILE}")
    group.add_argument("--tile-overlap", type=int, metavar="N", help="tile overlap in px (default: the run's val.overlap)")


def default_run_dir(output: str | Path, row: str, seed: int) -> Path:
    """The recipe's run folder of ``row`` and ``seed``: ``<output>/runs/<row>/seed<seed>``."""
    return Path(output) / "runs" / row / f"seed{seed}"


def print_line(line: str) -> None:
    """A restore line on stdout; notes and warnings on stderr."""
    print(line, file=sys.stderr if line.startswith(("note: ", "warning: ")) else sys.stdout, flush=True)


def run_restore(args: argparse.Namespace, task: str) -> int:
    """``--restore`` of a recipe (:func:`add_restore_arguments` plus the recipe's ``--output``,
    ``--overwrite``, ``--device``, ``--no-progress``): restores, prints one line per image and a summary
    on stdout (notes and warnings on stderr); returns 0, or 2 after one ``error: ...`` line on stderr."""
    run_dir = Path(args.run) if args.run else default_run_dir(args.output, args.row, args.seed)
    output_dir = Path(args.restored) if args.restored else Path(args.output) / "restored"
    try:
        if args.restore is None:
            raise RestoreError("--restore needs an image or a folder of images")
        if not args.run and not run_dir.exists():
            raise RestoreError(f"run folder {run_dir} does not exist: train it first (python recipes/{task}.py "
                               f"--output {args.output}), or pass --run DIR")
        restore_paths(run_dir, args.restore, output_dir, tile=args.tile, overlap=args.tile_overlap,
                      overwrite=args.overwrite, device=args.device, progress=not args.no_progress,
                      log=print_line, task=task)
    except RunSetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
